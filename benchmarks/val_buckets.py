"""What the validation shape buckets (``val_pad_multiple``) do to mIoU: the same trained models
scored on the same images at their exact shapes and padded to each multiple.

Each model is trained in this process by the trials' own engine (``shared.engine.Engine``,
its configs' hyperparameters) on a synthetic ADE20K-format set at a quarter of ADE20K's scale
(images with sides in 128-171 px, as ADE20K's 512-683, rescaled keeping the ratio to a short
side of 128, 128 px training crops), then validated once per multiple with the trial's
validation step (``SegmentationTask``) over the same loader. A multiple ``m`` here pads as ``4m``
does at ADE20K's 512 px short side. Printed per model and multiple: mIoU, its difference from the
exact shapes, the distinct input shapes and the share of padded pixels.

    python -m benchmarks.val_buckets [--models unet segformer deeplabv3plus segmenter]
                                     [--multiples 0 8 16 32] [--batches 150] [--out FILE]

CPU only is fine (minutes on 2 cores); the GPU measurement of what the buckets save is
``benchmarks.shape_warmup`` and the campaign's end-to-end runs.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.render import _fmt  # noqa: E402
from benchmarks.specs import BenchConfig, load_trial, our_models  # noqa: E402
from shared.data import build_dataset  # noqa: E402
from shared.data.transforms import val_collate  # noqa: E402
from shared.engine import Engine, LocalRuntime, SegmentationTask  # noqa: E402
from shared.mdtable import markdown_table  # noqa: E402
from shared.metrics import summarize  # noqa: E402

#: the synthetic set: ADE20K's 512-683 px sides at a quarter of the scale
DATA = {"num_train": 240, "num_val": 40, "num_classes": 8, "min_size": 128, "max_size": 171, "seed": 3}
#: the scale factor from this set to ADE20K's protocol (short side 512 there, 128 here)
SCALE_TO_ADE20K = 4
SETTINGS = {"crop_size": 128, "scale": [512, 128], "global_batch_size": 8, "lr": 2e-3,
            "warmup_batches": 20, "workers_per_slot": 0, "compile": False,
            "energy": {"enabled": False}}
SMALL_MODELS = {"segformer": {"drop_path_rate": 0.0}}


def train(name: str, data: pathlib.Path, batches: int, seed: int = 0) -> Dict[str, Any]:
    """A model of ``name`` trained ``batches`` batches; returns its engine and hyperparameters."""
    spec = next(s for s in our_models() if s.name == name)
    loaded = load_trial(spec, BenchConfig(batch=SETTINGS["global_batch_size"],
                                          num_classes=DATA["num_classes"]),
                        {**SETTINGS, **SMALL_MODELS.get(name, {}), "data_dir": str(data),
                         "max_batches": batches, "seed": seed})
    hp = loaded.hp
    torch.manual_seed(seed)
    device = torch.device("cpu")
    runtime = LocalRuntime(device, hp["global_batch_size"])
    task = SegmentationTask(hp["num_classes"], hp["val_mode"], hp["val_crop_size"] or hp["crop_size"],
                            hp["val_stride"])
    engine = Engine(loaded.build(), hp, runtime, task, device=device, max_batches=batches)
    g = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(build_dataset(hp, "training"), batch_size=hp["global_batch_size"],
                                         shuffle=True, drop_last=True, generator=g)
    engine.model.train()
    done, t = 0, time.perf_counter()
    while done < batches:
        for batch in loader:
            engine.train_batch(batch)
            runtime.end_batch()
            done += 1
            if done == batches:
                break
    return {"engine": engine, "hp": hp, "train_s": time.perf_counter() - t,
            "last_loss": float(engine.last_loss)}


def score(engine: Engine, hp: Dict[str, Any], multiple: int) -> Dict[str, Any]:
    """One validation over the set with images padded to ``multiple`` (0: exact shapes)."""
    task = SegmentationTask(hp["num_classes"], hp["val_mode"], hp["val_crop_size"] or hp["crop_size"],
                            hp["val_stride"])
    task.attach(LocalRuntime(engine.device, 1))
    ds = build_dataset(hp, "validation")
    shapes, real_px, padded_px = set(), 0, 0
    engine.model.eval()
    with torch.no_grad():
        for i in range(len(ds)):
            batch = val_collate([ds[i]], pad_multiple=multiple)
            h, w = batch[2][0, :2].tolist()
            shapes.add(tuple(batch[0].shape[-2:]))
            real_px += h * w
            padded_px += batch[0].shape[-2] * batch[0].shape[-1]
            task.evaluate(engine, batch)
    metrics = summarize(task.confusion.per_slot_reduce())
    return {"multiple": multiple, "miou": metrics["miou"], "shapes": len(shapes),
            "padded_share": padded_px / real_px - 1.0, "validation_mode": hp["val_mode"]}


def run(models: Sequence[str], multiples: Sequence[int], batches: int, work: pathlib.Path
        ) -> Dict[str, Any]:
    from shared.data.synthetic import generate
    data = work / "data"
    if not (data / "images").is_dir():
        generate(data, **DATA)
    rows: List[Dict[str, Any]] = []
    for name in models:
        trained = train(name, data, batches)
        exact: Optional[float] = None
        for m in multiples:
            r = {"model": name, **score(trained["engine"], trained["hp"], m),
                 "train_s": round(trained["train_s"], 1), "last_loss": trained["last_loss"]}
            if m == 0:
                exact = r["miou"]
            r["delta_miou"] = None if exact is None else r["miou"] - exact
            rows.append(r)
            print(f"[val buckets] {name} multiple {m}: mIoU {r['miou']:.3f} "
                  f"({r['shapes']} shapes)", flush=True)
    return {"data": DATA, "settings": {k: v for k, v in SETTINGS.items() if k != "energy"},
            "batches": batches, "torch": torch.__version__, "rows": rows}


def markdown(result: Dict[str, Any]) -> str:
    rows = [[r["model"], str(r["multiple"]), str(r["multiple"] * SCALE_TO_ADE20K),
             _fmt(r["miou"], 3), "-" if r["delta_miou"] is None else f"{r['delta_miou']:+.3f}",
             str(r["shapes"]), f"{100 * r['padded_share']:.1f}", r["validation_mode"]]
            for r in result["rows"]]
    return markdown_table(("model", "multiple (px)", "same at ADE20K scale (px)", "mIoU",
                   "vs exact shapes", "distinct shapes", "padded pixels %", "val_mode"), rows) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.val_buckets", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    names = [s.name for s in our_models() if s.e2e]
    ap.add_argument("--models", nargs="+", default=names, choices=names)
    ap.add_argument("--multiples", nargs="+", type=int, default=[0, 8, 16, 32],
                    help="pad multiples, px at this set's scale (0 = exact shapes, always "
                         "measured first)")
    ap.add_argument("--batches", type=int, default=150, help="training batches per model")
    ap.add_argument("--work-dir", type=pathlib.Path, help="keep the data here (default: temporary)")
    ap.add_argument("--out", type=pathlib.Path, help="results as JSON here")
    args = ap.parse_args(argv)
    if any(m < 0 for m in args.multiples):
        ap.error("--multiples: each must be >= 0")
    if args.batches < 1:
        ap.error(f"--batches {args.batches}: must be >= 1")
    multiples = [0] + sorted(set(m for m in args.multiples if m > 0))
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if args.work_dir is not None:
        args.work_dir.mkdir(parents=True, exist_ok=True)
        result = run(args.models, multiples, args.batches, args.work_dir)
    else:
        with tempfile.TemporaryDirectory(prefix="val-buckets-") as tmp:
            result = run(args.models, multiples, args.batches, pathlib.Path(tmp))
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(markdown(result), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
