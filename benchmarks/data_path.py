"""How fast the CPU side of the segmentation data path runs, per core and through a DataLoader.

A GPU is only as busy as its data loader lets it be. This measures, on the machine it runs on,
the training data path exactly as a segmentation trial builds it (``shared.data.build_dataset``
from the common hyperparameter defaults: ADE20K's 512 crop of a (2048, 512) keep-ratio rescale
with ratio 0.5-2.0, cat-max crop, flip, photometric parameters):

* **reference**: the Pillow probe of the reference script (docs/references.md) (decode a JPEG from
  memory, resize, crop, flip) on the same files, one core. It calibrates machines: the anchors
  (docs/references.md) give its rate on the lent GPU machine's CPU, so
  ``ours / reference`` here times that rate estimates ours there;
* **per stage**: one core, each step of the sample path on its own (decode and checks, then
  each transform), and the whole ``dataset[i]``;
* **loader**: a ``torch.utils.data.DataLoader`` as the trial builds it (batch, workers,
  ``drop_last``), images per second and bytes per batch handed to the training step.

    python -m benchmarks.data_path                      # 512 crop, ADE20K-sized JPEGs
    python -m benchmarks.data_path --markdown           # ... and append a section to BENCHMARKS.md

Timings are wall clock on whatever else the machine is doing; run it on an idle machine.
"""
from __future__ import annotations

import argparse
import datetime
import io
import json
import pathlib
import platform
import shlex
import shutil
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # ``python benchmarks/data_path.py`` as well as ``-m``
    sys.path.insert(0, str(ROOT))

from benchmarks.bench import _device_name, _positive_int  # noqa: E402
from benchmarks.e2e import prepare_e2e_data  # noqa: E402
from benchmarks.render import DEFAULT_MARKDOWN, _fmt, append_markdown  # noqa: E402
from benchmarks.specs import NUM_CLASSES, BenchConfig, BenchError  # noqa: E402
from shared import hparams as hpmod  # noqa: E402
from shared.mdtable import markdown_table  # noqa: E402

#: img/s per core of the reference probe on the lent H100 machine's CPU (anchors.md)
ANCHOR_REFERENCE_IMG_S = 268.0


def _rate(fn: Callable[[int], Any], count: int, seconds: float) -> float:
    """Calls of ``fn(i)`` (i cycling over ``count``) per second, over at least ``seconds``
    after one untimed pass over the first item."""
    fn(0)
    n, start = 0, time.perf_counter()
    while True:
        fn(n % count)
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and n >= count:
            return n / elapsed


def reference_rate(paths: Sequence[pathlib.Path], seconds: float) -> float:
    """reference_bench.py's CPU probe, on our files: Pillow decode from memory, resize to the
    same size, crop 512x512 at the corner, mirror, to an array."""
    from PIL import Image
    blobs = [p.read_bytes() for p in paths]

    def one(i: int) -> None:
        im = Image.open(io.BytesIO(blobs[i])).convert("RGB")
        w, h = im.size
        im = im.resize((w, h)).crop((0, 0, min(512, w), min(512, h))).transpose(
            Image.Transpose.FLIP_LEFT_RIGHT)
        np.asarray(im)
    return _rate(one, len(blobs), seconds)


def stage_rates(dataset: Any, seconds: float) -> List[Dict[str, Any]]:
    """ms per image of loading and of each training transform, one core. Each stage is timed
    on the outputs of the stage before, so every stage sees the sizes it sees in training."""
    count = len(dataset)
    rows = [{"stage": "decode + checks (dataset.load)",
             "ms": 1e3 / _rate(dataset.load, count, seconds)}]
    inputs = [dataset.load(i) for i in range(count)]
    for t in getattr(dataset.transform, "transforms", []):
        rows.append({"stage": type(t).__name__,
                     "ms": 1e3 / _rate(lambda i: t(*inputs[i][:2]), count, seconds)})
        inputs = [t(*x[:2]) for x in inputs]
    rows.append({"stage": "whole dataset[i]",
                 "ms": 1e3 / _rate(dataset.__getitem__, count, seconds)})
    return rows


def _batch_bytes(batch: Any) -> int:
    if isinstance(batch, torch.Tensor):
        return batch.numel() * batch.element_size()
    if isinstance(batch, (list, tuple)):
        return sum(_batch_bytes(b) for b in batch)
    return 0


def loader_rate(dataset: Any, batch: int, workers: int, batches: int) -> Dict[str, Any]:
    """Images per second out of a DataLoader built as the trial builds it (shuffle,
    drop_last, persistent workers), timed from the second batch (the first pays the
    workers' start), and the bytes of one batch."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, drop_last=True,
                                         num_workers=workers, persistent_workers=workers > 0)
    per_epoch = len(loader)
    if per_epoch == 0:
        raise BenchError(f"{len(dataset)} images make no batch of {batch}: raise --images")
    got, size, start = 0, 0, None
    while got <= batches:
        for b in loader:
            if start is None:
                start, size = time.perf_counter(), _batch_bytes(b)
            else:
                got += 1
                if got > batches:
                    break
    elapsed = time.perf_counter() - start
    return {"workers": workers, "batches": batches, "img_s": batches * batch / elapsed,
            "mib_per_batch": size / 2 ** 20}


def build(args: argparse.Namespace, data_dir: pathlib.Path) -> Any:
    from shared.data import build_dataset
    hp = hpmod.resolve({"data_dir": str(data_dir), "num_classes": NUM_CLASSES,
                        "crop_size": args.crop, "scale": [4 * args.crop, args.crop],
                        "global_batch_size": args.batch}, {}, where="benchmarks.data_path")
    return build_dataset(hp, "training")


def run(args: argparse.Namespace, argv: Sequence[str]) -> Dict[str, Any]:
    torch.set_num_threads(1)  # per core, as each DataLoader worker runs
    work_tmp = None
    if args.work_dir is not None:
        work = args.work_dir
        work.mkdir(parents=True, exist_ok=True)
    else:
        work = work_tmp = pathlib.Path(tempfile.mkdtemp(prefix="data-path-"))
    try:
        data = prepare_e2e_data(BenchConfig(res=args.crop, e2e_images=args.images), work)
        dataset = build(args, data)
        ref = reference_rate([p for p, _ in dataset.samples], args.seconds)
        stages = stage_rates(dataset, args.seconds)
        ours = 1e3 / stages[-1]["ms"]
        loaders = [loader_rate(dataset, args.batch, w, args.loader_batches) for w in args.workers]
    finally:
        if work_tmp is not None:
            shutil.rmtree(work_tmp, ignore_errors=True)
    return {
        "meta": {"command": shlex.join(["python", "-m", "benchmarks.data_path", *argv]),
                 "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                 "device_name": _device_name(torch.device("cpu")), "torch": torch.__version__,
                 "python": platform.python_version(), "crop": args.crop, "images": args.images,
                 "batch": args.batch},
        "reference_img_s": ref, "ours_img_s": ours, "ratio": ours / ref,
        "ours_on_anchor_cpu_img_s": ours / ref * ANCHOR_REFERENCE_IMG_S,
        "stages": stages, "loaders": loaders,
    }


def markdown_section(r: Dict[str, Any]) -> str:
    m = r["meta"]
    lines = [f"### {m['date']}: data path on {m['device_name']}", "",
             f"- command: `{m['command']}`",
             f"- torch {m['torch']}, Python {m['python']}; {m['images']} synthetic JPEGs with sides "
             f"in [{m['crop']}, {round(m['crop'] * 683 / 512)}], crop {m['crop']}", "",
             markdown_table(("one core", "img/s"), [
                 ["reference probe (Pillow decode, resize, crop, flip)", _fmt(r["reference_img_s"])],
                 ["ours: dataset[i] of the training split", _fmt(r["ours_img_s"])],
                 ["ours / reference", f"{r['ratio']:.3f}"],
                 [f"ours estimated on the lent GPU machine's CPU (ratio x {ANCHOR_REFERENCE_IMG_S:g})",
                  _fmt(r["ours_on_anchor_cpu_img_s"])]]), "",
             markdown_table(("stage (one core)", "ms/img"), [[s["stage"], _fmt(s["ms"], 2)] for s in r["stages"]]),
             ""]
    if r["loaders"]:
        lines += [markdown_table(("DataLoader workers", "img/s", f"MiB per batch of {m['batch']}"),
                         [[str(x["workers"]), _fmt(x["img_s"]), _fmt(x["mib_per_batch"], 2)]
                          for x in r["loaders"]]), ""]
    return "\n".join(lines) + "\n"


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.data_path",
                                 description="CPU throughput of the segmentation training data path.")
    ap.add_argument("--crop", type=_positive_int("--crop", 16), default=512,
                    help="crop side; images are generated with sides in [crop, crop*683/512] (default 512)")
    ap.add_argument("--images", type=_positive_int("--images"), default=48,
                    help="synthetic training images (default 48)")
    ap.add_argument("--seconds", type=float, default=2.0,
                    help="minimum seconds per one-core measurement (default 2)")
    ap.add_argument("--batch", type=_positive_int("--batch"), default=16,
                    help="DataLoader batch (default 16)")
    ap.add_argument("--workers", type=int, nargs="*", default=[0, 2],
                    help="DataLoader worker counts to time (default: 0 2; none: skip)")
    ap.add_argument("--loader-batches", type=_positive_int("--loader-batches"), default=6,
                    help="timed batches per DataLoader (default 6)")
    ap.add_argument("--work-dir", type=pathlib.Path,
                    help="keep the synthetic data here (default: a temporary directory)")
    ap.add_argument("--out", type=pathlib.Path, help="write the results as JSON here")
    ap.add_argument("--markdown", nargs="?", type=pathlib.Path, const=DEFAULT_MARKDOWN,
                    help=f"append a dated section to this file (default {DEFAULT_MARKDOWN.name})")
    args = ap.parse_args(argv)
    if args.seconds <= 0:
        ap.error(f"--seconds {args.seconds:g}: must be > 0")
    if any(w < 0 for w in args.workers):
        ap.error(f"--workers {' '.join(map(str, args.workers))}: counts must be >= 0")
    for opt, path in (("--out", args.out), ("--markdown", args.markdown)):
        if path is not None and not path.parent.is_dir():
            ap.error(f"{opt} {path}: directory {path.parent} does not exist")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    try:
        results = run(args, argv)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    section = markdown_section(results)
    print(section, flush=True)
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=1) + "\n")
    if args.markdown is not None:
        append_markdown(args.markdown, section)
        print(f"appended to {args.markdown}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
