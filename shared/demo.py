"""The demo: a synthetic ADE20K-format set, U-Net and SegFormer trained locally to a target
mIoU with the real recipes (the same train.py and configs as on a cluster, scaled down with
--set), and the comparison table of the source study's Table 2.

    make demo                      (or: python -m shared.demo [--out demo_runs] [--models unet segformer])

Sized to finish in a few minutes on 2 CPU cores; on a GPU the same commands use it.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import time
from typing import List

from shared.summary import comparison_table, summarize_run

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Small enough for 2 CPU cores, big enough that the models must learn appearance and shape.
DATA = {"num_train": 240, "num_val": 40, "num_classes": 6, "min_size": 56, "max_size": 112, "seed": 7}
COMMON_SET = [
    "crop_size=64", "scale=[128,64]", f"num_classes={DATA['num_classes']}", "global_batch_size=8",
    "workers_per_slot=1", "warmup_batches=20", "validation_period=10", "checkpoint_period=100",
    "report_period=10", "stop_at_target=true", "lr=2e-3",
]
# The study's model sizes (U-Net 6.8M, SegFormer-B0 3.7M parameters), not shrunk versions.
MODELS = {
    "unet": [],
    "segformer": ["segformer_variant=b0", "drop_path_rate=0.0"],
}


def main(argv: List[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=pathlib.Path, default=ROOT / "demo_runs")
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--target-miou", type=float, default=85.0,
                    help="target for this synthetic set (the study's 16 is for ADE20K)")
    ap.add_argument("--max-batches", type=int, default=300)
    args = ap.parse_args(argv)

    out: pathlib.Path = args.out.resolve()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    data = out / "data"
    if not (data / "images").is_dir():
        from shared.data.synthetic import generate
        generate(data, **DATA)
    summaries = []
    for model in args.models:
        run_dir = out / f"{model}-{stamp}"
        cmd = [sys.executable, str(ROOT / "trials" / model / "train.py"),
               "--config", str(ROOT / "experiment_configs" / model / "single_gpu.yaml"),
               "--data-dir", str(data), "--output-dir", str(run_dir), "--batches", str(args.max_batches),
               "--set", *COMMON_SET, *MODELS[model], f"target_miou={args.target_miou}"]
        print(f"\n$ {' '.join(cmd[1:])}", flush=True)
        rc = subprocess.call(cmd, cwd=ROOT)
        if rc != 0:
            print(f"demo: {model} failed with exit code {rc}", file=sys.stderr)
            return rc
        summaries.append(summarize_run(run_dir))

    table = comparison_table(summaries)
    (out / f"comparison-{stamp}.md").write_text(table + "\n")
    (out / f"comparison-{stamp}.json").write_text(json.dumps(summaries, indent=2) + "\n")
    print(f"\nTime (and energy, where a source was available) to {args.target_miou} mIoU on the "
          f"synthetic set:\n\n{table}\n\nwritten to {out}/comparison-{stamp}.md", flush=True)

    # The full report (tables, plots, one self-contained HTML page) of this demo's runs.
    from shared.report import build_report, load_local
    runs = [r for model in args.models for r in load_local(out / f"{model}-{stamp}")]
    report_dir = out / f"report-{stamp}"
    build_report(runs, report_dir, target_miou=args.target_miou,
                 title="Demo: U-Net vs SegFormer on a synthetic ADE20K-format set")
    print(f"report: {report_dir}/index.html", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
