"""The source study's result in miniature, on CPU (docs/rare_objects.md, "The miniature"):

    python -m shared.objects.demo --out demo_runs/rare_objects

writes a synthetic set (``shared.data.synthetic_rare``) and trains the rare-objects recipe on
it three times with the same seed, the same number of batches and the same network, through
its real command line (Determined's local mode), in OUT/random-tiles, OUT/balanced and
OUT/balanced-mining:

1. ``positive_fraction: 0``: plain random tiles, objects only as often as they fall;
2. ``positive_fraction: 0.5``: balanced batches, no mining;
3. the same with ``hard_negative_fraction: 0.25``: hard-negative mining every
   ``--mine-period`` batches;

validating four times along the way, and prints the last validation of each (object recall
and precision, false positives per image, average precision, validation loss, the time
spent mining), then writes the comparison report of the three (OUT/report/index.html: the
object metrics against batches, runs named by what differs between them).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from shared.mdtable import markdown_table

__all__ = ["RUNS", "run_demo", "main"]

#: (name, directory, --set overrides) of the three runs
RUNS: Tuple[Tuple[str, str, Tuple[str, ...]], ...] = (
    ("random tiles", "random-tiles", ("positive_fraction=0", "hard_negative_fraction=0")),
    ("balanced", "balanced", ("positive_fraction=0.5", "hard_negative_fraction=0")),
    ("balanced + mining", "balanced-mining", ("positive_fraction=0.5", "hard_negative_fraction=0.25")),
)
#: validations per run (the last at the last batch): enough for a curve in the report
VALIDATIONS = 4
COLUMNS = ("object_recall", "object_precision", "false_positives_per_image", "average_precision",
           "validation_loss")


def _last(path: Path, group: str) -> Dict[str, float]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("group") == group]
    return rows[-1]["metrics"] if rows else {}


def run_demo(out: Path, batches: int = 240, tile: int = 32, mine_period: int = 40,
             images: int = 16, size: int = 384, seed: int = 0,
             extra: Sequence[str] = ()) -> List[Dict[str, object]]:
    """Generate the data under ``out/data`` and train the three runs under
    ``out/<directory>`` (``RUNS``); returns one row per run (its name, the last validation's
    metrics, mining seconds)."""
    from shared import recipes
    from shared.data.synthetic_rare import generate
    from shared.launch import main as launch

    out = Path(out).resolve()  # the launcher may change the working directory (Determined's local mode)
    data = generate(out / "data", num_train=images, num_val=max(4, images // 2), size=size, seed=seed)
    trial_cls = recipes.get("rare_objects").trial_class()
    config = recipes.get("rare_objects").configs_dir / "single_gpu.yaml"
    common = (f"tile_size={tile}", "global_batch_size=16", "base_batch_size=16", "workers_per_slot=0",
              "unet_base_channels=8", "unet_depth=2", "dropout=0.1", "lr=0.003", "warmup_batches=20",
              f"validation_period={max(1, batches // VALIDATIONS)}", f"checkpoint_period={batches}",
              "report_period=25",
              f"mine_period={mine_period}", "mine_tiles=128", "hard_negative_pool=64",
              "early_stop_patience=null", "stop_at_target=false", f"seed={seed}",
              f"tile_cache_dir={out / 'cache'}", "energy.enabled=false", *extra)
    rows = []
    for name, directory, sets in RUNS:
        run_dir = out / directory
        start = time.monotonic()
        code = launch(trial_cls, ["--config", str(config), "--data-dir", str(data), "--batches",
                                  str(batches), "--output-dir", str(run_dir), "--set", *common, *sets])
        if code:
            raise SystemExit(f"run {name!r} failed (exit status {code})")
        metrics = _last(run_dir / "metrics.jsonl", "validation")
        mining = _last(run_dir / "metrics.jsonl", "mining")
        rows.append({"run": name, **{k: metrics.get(k) for k in COLUMNS},
                     "mining_s": mining.get("mining_s", 0.0), "seconds": time.monotonic() - start})
    return rows


def table(rows: Sequence[Dict[str, object]]) -> str:
    head = ["run", "object recall %", "object precision %", "false positives / image",
            "average precision %", "validation loss", "mining s", "run s"]
    return markdown_table(head, [
        [r["run"], *(f"{r[k]:.2f}" if isinstance(r[k], float) else str(r[k]) for k in COLUMNS),
         f"{r['mining_s']:.1f}", f"{r['seconds']:.0f}"] for r in rows])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m shared.objects.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("demo_runs/rare_objects"),
                        help="where the data, the three runs and the report go (default: "
                             "demo_runs/rare_objects)")
    parser.add_argument("--batches", type=int, default=240, help="batches per run (default 240)")
    parser.add_argument("--tile", type=int, default=32, help="tile side, px (default 32)")
    parser.add_argument("--mine-period", type=int, default=40,
                        help="batches between two minings of hard negatives (default 40)")
    parser.add_argument("--images", type=int, default=16, help="training images (validation: half)")
    parser.add_argument("--size", type=int, default=384, help="image side, px")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and the runs")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: the documented figures were measured "
                             "with one, and other counts change their last digits)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="more hyperparameters for all three runs")
    args = parser.parse_args(argv)
    import os
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # what the local runner uses, and states
    rows = run_demo(args.out, args.batches, args.tile, args.mine_period, args.images, args.size,
                    args.seed, args.set)
    print(table(rows))
    from shared.report import build_report, load_inputs
    out = Path(args.out).resolve()
    runs = load_inputs([str(out / directory) for _, directory, _ in RUNS])  # named by their differences
    report = build_report(runs, out / "report",
                          title="Rare small objects: random tiles, balanced batches, hard-negative mining")
    print(f"report: {report.out_dir}/index.html")


if __name__ == "__main__":
    main()
