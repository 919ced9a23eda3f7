"""What a new input shape costs the first time a model sees it, under each validation kernel
choice (the hyperparameter ``val_kernels``) and in NCHW.

The first GPU campaign (BENCHMARKS.md, 2026-11-29) found every first validation slow and the
second, over the same images, fast: SegFormer 14.25 s then 0.23 s for 16 images on an H200,
DeepLab v3+ 6.0 s then 0.22 s, U-Net 0.71 s then 0.15 s. Validation images keep their aspect
ratio, so each brings a new shape; cuDNN builds an execution plan per new shape, seconds for
depthwise convolutions since cuDNN 9.10 (NVIDIA/cudnn-frontend issue 1066).

This measures it directly, model by model: whole-image evaluation forwards (``eval()``,
``no_grad``, the trial's autocast precision) at ``--shapes`` ADE20K-like sizes never seen
before, each run twice; the first call's time less the second's is the warm-up. One forward at
a square shape comes first, so the first variant does not pay the process's one-off loading.
Each variant has its own set of shapes (cuDNN caches plans per shape, so a shape measured in
one variant would be warm in the next):

* ``as trained`` (``val_kernels: cudnn``): the trial's own settings (channels_last on CUDA,
  cuDNN everywhere);
* ``native depthwise`` (``val_kernels: native_depthwise``): cuDNN switched off inside grouped
  convolutions only, so PyTorch's own depthwise kernels run there;
* ``plan free`` (``val_kernels: plan_free``): no cuDNN at all, convolutions or attention;
* ``nchw``: channels_last off (cuDNN picks other engines for the contiguous layout).

    python -m benchmarks.shape_warmup [--models segformer deeplabv3plus unet segmenter]
                                      [--shapes 8] [--device cuda|cpu] [--out FILE]

Per variant: mean first-call ms, mean second-call ms, and the total warm-up over the shapes.
On a CPU the figures only show that it runs (no cuDNN there).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.render import _fmt  # noqa: E402
from benchmarks.specs import BenchConfig, BenchError, load_trial, our_models  # noqa: E402
from benchmarks.step import _sync  # noqa: E402
from shared.engine import AUTOCAST_DTYPES, autocast, pick_precision, resolve_channels_last  # noqa: E402
from shared.inference import grouped_convs, validation_kernels  # noqa: E402
from shared.mdtable import markdown_table  # noqa: E402

VARIANTS = ("as trained", "native depthwise", "plan free", "nchw")
#: the ``val_kernels`` value of each variant that is one (nchw is a layout, not a choice)
VAL_KERNELS_OF = {"as trained": "cudnn", "native depthwise": "native_depthwise",
                  "plan free": "plan_free"}
#: the short side of a validation image after the (2048, 512) keep-ratio resize
SHORT_SIDE = 512


def shapes_for(variant_index: int, count: int, short: int = SHORT_SIDE) -> List[Tuple[int, int]]:
    """``count`` (height, width) sizes, landscape and portrait in turn, the short side
    ``short`` as after the validation resize, the long side growing by 8 px per shape so that
    no size repeats, within a variant or between variants."""
    out = []
    for i in range(count):
        long = short + 8 * (1 + variant_index + len(VARIANTS) * i)
        out.append((short, long) if i % 2 == 0 else (long, short))
    return out


def measure(model: nn.Module, shapes: Sequence[Tuple[int, int]], device: torch.device,
            dtype: Optional[torch.dtype], channels_last: bool) -> Dict[str, Any]:
    """First and second forward at each shape, in ms."""
    firsts, seconds = [], []
    for h, w in shapes:
        x = torch.randn(1, 3, h, w, device=device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        times = []
        for _ in range(2):
            _sync(device)
            t = time.perf_counter()
            with torch.no_grad(), autocast(device, dtype):
                model(x)
            _sync(device)
            times.append(1000.0 * (time.perf_counter() - t))
        firsts.append(times[0])
        seconds.append(times[1])
    n = len(shapes)
    return {"shapes": [list(s) for s in shapes], "first_ms": sum(firsts) / n,
            "second_ms": sum(seconds) / n,
            "warmup_total_s": sum(a - b for a, b in zip(firsts, seconds)) / 1000.0,
            "first_ms_each": firsts, "second_ms_each": seconds}


def run_model(name: str, count: int, device: torch.device, short: int = SHORT_SIDE) -> Dict[str, Any]:
    """One model's row: every variant, or the error that stopped it."""
    spec = next(s for s in our_models() if s.name == name)
    row: Dict[str, Any] = {"model": name}
    try:
        loaded = load_trial(spec, BenchConfig(device=device))
        torch.manual_seed(0)
        model = loaded.build().to(device).eval()
        precision = pick_precision(loaded.hp["precision"], device)
        dtype = AUTOCAST_DTYPES.get(precision)
        trained_cl = resolve_channels_last(loaded.hp["channels_last"], device)
        row.update(precision=precision, channels_last=trained_cl,
                   grouped_convs=len(grouped_convs(model)))
        # one forward at a shape no variant uses (square), so that the first variant's first
        # call does not also pay the process's one-off library and kernel loading
        warm = model.to(memory_format=torch.channels_last if trained_cl else torch.contiguous_format)
        measure(warm, [(short, short)], device, dtype, trained_cl)
        for i, variant in enumerate(VARIANTS):
            use_cl = trained_cl and variant != "nchw"
            m = model.to(memory_format=torch.channels_last if use_cl else torch.contiguous_format)
            with validation_kernels(m, VAL_KERNELS_OF.get(variant, "cudnn"), device):
                row[variant] = measure(m, shapes_for(i, count, short), device, dtype, use_cl)
        row["status"] = "ok"
    except Exception as e:  # one model's failure must not hide the others
        row.update(status="error", error=f"{type(e).__name__}: {e}"[:400])
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


def markdown(rows: Sequence[Dict[str, Any]]) -> str:
    lines = []
    for r in rows:
        if r.get("status") != "ok":
            lines.append([r["model"], "-", "-", "-", "-", f"error: {r.get('error')}"])
            continue
        for v in (v for v in VARIANTS if v in r):  # results of before a variant lack it
            m = r[v]
            lines.append([r["model"], v, _fmt(m["first_ms"]), _fmt(m["second_ms"]),
                          _fmt(m["warmup_total_s"], 2), "ok"])
    n = len(rows[0][VARIANTS[0]]["shapes"]) if rows and rows[0].get("status") == "ok" else "?"
    return markdown_table(("model", "variant", "first call ms", "second call ms",
                   f"warm-up s over {n} new shapes", "status"), lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.shape_warmup", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    names = [s.name for s in our_models() if s.e2e]
    ap.add_argument("--models", nargs="+", default=names, choices=names)
    ap.add_argument("--shapes", type=int, default=8, help="new shapes per variant (default 8)")
    ap.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available")
    ap.add_argument("--short-side", type=int, default=SHORT_SIDE,
                    help=f"short side of every shape, px (default {SHORT_SIDE}, as validation)")
    ap.add_argument("--out", type=pathlib.Path, help="results as JSON here")
    args = ap.parse_args(argv)
    if args.short_side < 32:
        ap.error(f"--short-side {args.short_side}: must be >= 32")
    if args.shapes < 1:
        ap.error(f"--shapes {args.shapes}: must be >= 1")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: torch.cuda.is_available() is False on this machine")
    if args.out is not None and not args.out.parent.is_dir():
        ap.error(f"--out {args.out}: directory {args.out.parent} does not exist")
    rows = []
    for name in args.models:
        rows.append(run_model(name, args.shapes, device, args.short_side))
        if args.out is not None:
            args.out.write_text(json.dumps({"device": str(device), "rows": rows}, indent=1) + "\n")
        print(f"[shape warm-up] {name}: {rows[-1]['status']}", flush=True)
    print(markdown(rows), end="")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
