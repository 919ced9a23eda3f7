"""Training-speed and energy benchmark of the four trials against reference implementations.

One command on a GPU node measures, for each trial's model (U-Net, SegFormer, DeepLab v3+,
Segmenter) as its ``experiment_configs/<model>/single_gpu.yaml`` builds it (150 classes):

* the training step alone: ``SegmentationTrial.train_batch``'s step (the loader's uint8 batch
  augmented and normalised on the device, autocast, logits upsampled to the labels,
  cross-entropy ignoring 255, the trial's AdamW, channels_last on CUDA) on random 512x512
  inputs, batch 16: img/s, J/img from the NVML energy counter (read through the energy
  library's ``EnergyMeter``), GPU utilisation sampled every 50 ms, peak memory, and MFU (FLOPs
  of one forward+backward counted by ``torch.utils.flop_counter.FlopCounterMode``, over the
  bf16 matmul peak measured in the same run);
* reference implementations of the same architectures, stepped by the same step in the same
  process when their packages are installed (transformers, segmentation_models_pytorch,
  torchvision, timm), and the ratios ours/reference against the project's targets;
* optionally each model under ``torch.compile`` (``--compile``), to show per model whether it
  helps;
* optionally the implementation ablation (``--ablation``): each model's step from the
  MMCV-era implementation (fp32, eager attention, NCHW, per-parameter optimiser loop, no cuDNN
  benchmark, not compiled) with each switch flipped alone, all of them, and compiled: which
  variant is fastest, by how much, and its J/img (``specs.ablation_specs``);
* the whole local training loop through the real command line (``trials/<m>/train.py``) on a
  synthetic JPEG data set: img/s from ``metrics.jsonl`` and the fraction of wall time the GPU
  is busy.

Run ``python -m benchmarks.bench --help``; BENCHMARKS.md describes every column and holds the
results (``--markdown``).

The code is split by job: ``specs`` (what is measured: models, references, targets,
settings, loading a trial), ``step`` (the training step and its step rows), ``gpu_monitor``
(utilisation and power sampling; energy through ``shared.energy``'s ``EnergyMeter``), ``e2e``
(the end-to-end runs), ``render`` (targets, torch.compile's effect, Markdown); this module is
the command line and the order of a run.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import math
import os
import pathlib
import platform
import shlex
import shutil
import signal
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # ``python benchmarks/bench.py`` as well as ``-m``
    sys.path.insert(0, str(ROOT))

from benchmarks.e2e import E2EData, run_e2e  # noqa: E402
from benchmarks.gpu_monitor import open_monitor  # noqa: E402
from benchmarks.render import (DEFAULT_MARKDOWN, _fmt, _status, append_markdown, mfu_text,  # noqa: E402
                               compile_effects, evaluate_targets, markdown_section)
from benchmarks.specs import (REFERENCES, BenchConfig, BenchError, ModelSpec,  # noqa: E402
                              ReferenceSpec, ablation_specs, error_text, our_models)
from benchmarks.step import (Context, bench_ours, bench_reference, compiled_name,  # noqa: E402
                             measure_device_prep, measure_matmul_peak)
from shared import hparams as hpmod  # noqa: E402

log = logging.getLogger("benchmarks.bench")


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = ""
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU {model or platform.machine()} ({os.cpu_count()} logical cores)"


def _json_default(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return str(v)


class Results:
    """The run's results, rewritten to ``--out`` after every row, so that a run killed by a
    time limit still leaves what it measured."""

    def __init__(self, meta: Dict[str, Any], out: Optional[pathlib.Path]) -> None:
        self.data: Dict[str, Any] = {"meta": meta, "steps": [], "e2e": [], "targets": [],
                                     "compile": []}
        self.out = out

    def add(self, kind: str, row: Dict[str, Any]) -> None:
        self.data[kind].append(row)
        self.data["targets"] = evaluate_targets(self.data["steps"], self.data["e2e"],
                                                device_type=self.data["meta"]["device_type"])
        self.data["compile"] = compile_effects(self.data["steps"])
        _print_row(kind, row)
        self.save()

    def save(self) -> None:
        if self.out is None:
            return
        tmp = self.out.with_name(self.out.name + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=_json_default) + "\n")
        tmp.replace(self.out)


def _print_row(kind: str, row: Mapping[str, Any]) -> None:
    if row.get("status") != "ok":
        print(f"[{kind}] {row['name']}: {_status(row)}", flush=True)
    elif kind == "steps":
        print(f"[step] {row['name']}: {row['img_s']:.1f} img/s, {row['step_ms']:.2f} ms/step, "
              f"J/img {_fmt(row['j_per_img'], 3)}, MFU {mfu_text(row['mfu_pct'], ' %')}", flush=True)
    else:
        print(f"[e2e] {row['name']}: {_fmt(row['img_s_loop'])} img/s, GPU busy "
              f"{_fmt(row['gpu_busy_pct'])} %", flush=True)


# ============================================================================ command line
def _positive_int(name: str, lo: int = 1) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            v = int(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {raw!r}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"{name} must be >= {lo}, got {v}")
        return v
    return parse


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.bench",
        description="Training-step and end-to-end speed and energy of the trials, against "
                    "reference implementations (see BENCHMARKS.md).")
    ap.add_argument("--res", type=_positive_int("--res", 32), default=512,
                    help="square input side, a multiple of 32 (default 512)")
    ap.add_argument("--batch", type=_positive_int("--batch"), default=16,
                    help="images per step, one GPU (default 16)")
    ap.add_argument("--steps", type=_positive_int("--steps"), default=30,
                    help="timed steps (default 30)")
    ap.add_argument("--warmup", type=_positive_int("--warmup", 0), default=8,
                    help="untimed steps before (default 8)")
    ap.add_argument("--only", nargs="+", metavar="TEXT",
                    help="run only the models whose name, or whose pair's name, contains one of "
                         "these (case-insensitive)")
    ap.add_argument("--device", choices=("cpu", "cuda"),
                    help="default: cuda when available, else cpu")
    ap.add_argument("--out", type=pathlib.Path, help="write the results as JSON here "
                                                     "(rewritten after every row)")
    ap.add_argument("--markdown", nargs="?", type=pathlib.Path, const=DEFAULT_MARKDOWN,
                    help=f"append a dated section to this file (default {DEFAULT_MARKDOWN.name})")
    ap.add_argument("--no-e2e", action="store_true", help="skip the end-to-end training runs")
    ap.add_argument("--no-reference", action="store_true", help="skip the reference rows")
    ap.add_argument("--compile", nargs="*", metavar="MODEL",
                    help="also time our models under torch.compile: all of them, or those "
                         "named (e.g. --compile unet segformer)")
    ap.add_argument("--compile-modes", nargs="+", choices=hpmod.COMPILE_MODES, default=["default"],
                    metavar="MODE", help="torch.compile modes of the --compile rows, each a row "
                    f"(default: default; {', '.join(hpmod.COMPILE_MODES)})")
    ap.add_argument("--skip", nargs="+", default=[], metavar="TEXT",
                    help="leave out the models and references whose name contains one of these "
                         "(case-insensitive), e.g. --skip smp torchvision")
    ap.add_argument("--cudnn-benchmark", action="store_true",
                    help="set torch.backends.cudnn.benchmark (the segmentation trials leave it off: "
                         "hyperparameter cudnn_benchmark)")
    ap.add_argument("--ablation", nargs="*", metavar="MODEL",
                    help="also time the implementation ablation of our models: all of them, or "
                         "those named (e.g. --ablation segformer unet); see BENCHMARKS.md")
    ap.add_argument("--ablation-steps", type=_positive_int("--ablation-steps"),
                    help="timed steps of each ablation row (default: --steps)")
    ap.add_argument("--ablation-warmup", type=_positive_int("--ablation-warmup", 0),
                    help="untimed steps before each ablation row (default: --warmup)")
    ap.add_argument("--ablation-only", action="store_true",
                    help="with --ablation: leave out the other step rows of our models")
    ap.add_argument("--ablation-eager-only", action="store_true",
                    help="leave out the ablation's two compiled rows per model (the --compile "
                         "rows measure torch.compile)")
    ap.add_argument("--e2e-batches", type=_positive_int("--e2e-batches", 4), default=120,
                    help="batches of each end-to-end run (default 120)")
    ap.add_argument("--e2e-images", type=_positive_int("--e2e-images"), default=256,
                    help="training images of the synthetic set (default 256)")
    ap.add_argument("--e2e-set", nargs="+", default=[], action="extend", metavar="KEY=VALUE",
                    help="extra --set overrides for the end-to-end runs (e.g. workers_per_slot=4)")
    ap.add_argument("--e2e-timeout", type=float, default=300.0,
                    help="seconds before an end-to-end run is killed (default 300)")
    ap.add_argument("--work-dir", type=pathlib.Path,
                    help="keep the synthetic data and the runs here (default: a temporary "
                         "directory, removed at the end)")
    ap.add_argument("--time-budget", type=float,
                    help="seconds: parts not started by then are skipped and recorded as such")
    ap.add_argument("--render", type=pathlib.Path, metavar="RESULTS_JSON",
                    help="measure nothing: print (and with --markdown append) the section of a "
                         "results file written by --out")
    args = ap.parse_args(argv)
    return args


def validate_args(args: argparse.Namespace) -> None:
    """Option checks argparse cannot make; raises BenchError naming the option."""
    if args.res % 32:
        raise BenchError(f"--res {args.res}: must be a multiple of 32 (the models downsample by "
                         f"up to 32 and ViT patches are 16)")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise BenchError("--device cuda: torch.cuda.is_available() is False on this machine")
    if args.e2e_timeout <= 0:
        raise BenchError(f"--e2e-timeout {args.e2e_timeout:g}: must be > 0 seconds")
    if args.time_budget is not None and args.time_budget <= 0:
        raise BenchError(f"--time-budget {args.time_budget:g}: must be > 0 seconds")
    for opt, path in (("--out", args.out), ("--markdown", args.markdown)):
        if path is not None and not path.parent.is_dir():
            raise BenchError(f"{opt} {path}: directory {path.parent} does not exist")
    if args.render is not None and not args.render.is_file():
        raise BenchError(f"--render {args.render}: no such file")
    for item in args.e2e_set:
        if "=" not in item:
            raise BenchError(f"--e2e-set {item!r}: expected KEY=VALUE")
    for opt, names in (("--compile", args.compile), ("--ablation", args.ablation)):
        unknown = [n for n in (names or []) if n not in {s.name for s in our_models()}]
        if unknown:
            raise BenchError(f"{opt} {' '.join(unknown)}: no such model; names: "
                             f"{', '.join(s.name for s in our_models())}")
    if args.only is not None and select(args.only) == ([], []):
        names = [s.name for s in our_models()] + [r.name for r in REFERENCES]
        raise BenchError(f"--only {' '.join(map(repr, args.only))} matches no model; names: "
                         f"{', '.join(names)}")


def select(only: Optional[Sequence[str] | str], skip: Sequence[str] = ()
           ) -> Tuple[List[ModelSpec], List[ReferenceSpec]]:
    """Our models and references named by ``--only`` (a reference also by its pair's name),
    less those ``--skip`` names."""
    ours, refs = list(our_models()), list(REFERENCES)
    if only:
        keys = [k.lower() for k in ([only] if isinstance(only, str) else only)]
        ours = [s for s in ours if any(k in s.name.lower() for k in keys)]
        refs = [r for r in refs if any(k in r.name.lower() or k in r.pair.lower() for k in keys)]
    drop = [k.lower() for k in skip]
    ours = [s for s in ours if not any(k in s.name.lower() for k in drop)]
    refs = [r for r in refs if not any(k in r.name.lower() for k in drop)]
    return ours, refs


def compile_selection(ours: Sequence[ModelSpec], names: Sequence[str]) -> List[ModelSpec]:
    """The models ``--compile`` names (all of ``ours`` when it names none), in run order."""
    if not names:
        return list(ours)
    return [s for s in ours if s.name in names]


def load_results(path: pathlib.Path) -> Dict[str, Any]:
    """A results file written by ``--out``; BenchError naming the file if it is not one."""
    try:
        data = json.loads(pathlib.Path(path).read_text())
    except OSError as e:
        raise BenchError(f"{path}: cannot read ({e})") from None
    except json.JSONDecodeError as e:
        raise BenchError(f"{path}: not JSON ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("meta"), dict) \
            or not isinstance(data.get("steps"), list):
        raise BenchError(f"{path}: not a results file of benchmarks.bench (no 'meta' and 'steps')")
    data.setdefault("e2e", [])
    data["targets"] = evaluate_targets(data["steps"], data["e2e"],
                                       device_type=data["meta"].get("device_type", "cuda"))
    data["compile"] = compile_effects(data["steps"])
    return data


#: environment variables that change what is measured, shown in front of the command
RECORDED_ENV = ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "PYTORCH_CUDA_ALLOC_CONF", "PYTHONPATH")


def build_meta(args: argparse.Namespace, argv: Sequence[str], cfg: BenchConfig) -> Dict[str, Any]:
    device = cfg.device
    env = [f"{k}={shlex.quote(os.environ[k])}" for k in RECORDED_ENV if k in os.environ]
    return {
        "command": " ".join(env + [shlex.join(["python", "-m", "benchmarks.bench", *argv])]),
        "torch_threads": torch.get_num_threads(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device_type": device.type, "device_name": _device_name(device),
        "torch": torch.__version__, "cuda": torch.version.cuda if device.type == "cuda" else None,
        "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
        "python": platform.python_version(),
        "settings": {"res": cfg.res, "batch": cfg.batch, "steps": cfg.steps, "warmup": cfg.warmup,
                     "num_classes": cfg.num_classes, "cudnn_benchmark": args.cudnn_benchmark,
                     "compile": (None if args.compile is None
                                                     else list(args.compile) or "all"),
                     "compile_modes": list(args.compile_modes),
                     "e2e_batches": cfg.e2e_batches,
                     "e2e_images": cfg.e2e_images, "e2e_set": list(cfg.e2e_set)},
    }


def run(args: argparse.Namespace, argv: Sequence[str]) -> Dict[str, Any]:
    """Every measurement the options ask for, in the order that keeps the most important
    results if a time limit cuts the run short: our step rows, the references, end to end,
    then torch.compile (its compilations are the slowest part)."""
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cfg = BenchConfig(res=args.res, batch=args.batch, steps=args.steps, warmup=args.warmup,
                      device=device, e2e_batches=args.e2e_batches, e2e_images=args.e2e_images,
                      e2e_set=tuple(args.e2e_set), e2e_timeout_s=args.e2e_timeout,
                      overrides=(("cudnn_benchmark", True),) if args.cudnn_benchmark else ())
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = bool(args.cudnn_benchmark)
    start = time.monotonic()
    ours, refs = select(args.only, args.skip)
    by_name = {s.name: s for s in our_models()}
    meta = build_meta(args, argv, cfg)
    results = Results(meta, args.out)
    monitor, nvml_status = open_monitor(device)
    ctx = Context(cfg, monitor, nvml_status)
    meta["nvml"] = f"{monitor.name}: {nvml_status}" if monitor else nvml_status

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        ctx.peak_flops = (measure_matmul_peak(device, dtype) if device.type == "cuda"
                          else measure_matmul_peak(device, dtype, n=1024, iters=2, repeats=2))
        ctx.peak_dtype = str(dtype).replace("torch.", "")
        meta.update(peak_flops=ctx.peak_flops, peak_dtype=ctx.peak_dtype)
    except Exception as e:
        log.error("matmul peak failed: %s", e)
        meta["peak_error"] = error_text(e)

    try:
        meta["device_prep_ms"] = measure_device_prep(cfg)
    except Exception as e:
        log.error("batch preparation timing failed: %s", e)
        meta["device_prep_error"] = error_text(e)

    def budget_left(what: str) -> Optional[str]:
        if args.time_budget is not None and time.monotonic() - start > args.time_budget:
            return f"not started: --time-budget {args.time_budget:g} s spent before {what}"
        return None

    work_tmp = None
    e2e_specs = [] if args.no_e2e else [s for s in ours if s.e2e]
    e2e_data: Any = None
    if e2e_specs:
        if args.work_dir is not None:
            work = args.work_dir
            work.mkdir(parents=True, exist_ok=True)
        else:
            work = work_tmp = pathlib.Path(tempfile.mkdtemp(prefix="bench-"))
        try:  # generated in the background while the step rows run
            e2e_data = E2EData(cfg, work)
        except BenchError as e:
            e2e_data = e
    try:
        for spec in ([] if args.ablation is not None and args.ablation_only else ours):
            why = budget_left(spec.name)
            results.add("steps", bench_ours(spec, ctx) if why is None else
                        {"name": spec.name, "kind": "ours", "base": spec.name, "compile": False,
                         "status": "skipped", "error": why})
        if not args.no_reference:
            for ref in refs:
                why = budget_left(ref.name)
                results.add("steps", bench_reference(ref, ctx, by_name) if why is None else
                            {"name": ref.name, "kind": "reference", "base": ref.pair,
                             "compile": False, "status": "skipped", "error": why})
        if e2e_specs:
            for spec in e2e_specs:
                why = budget_left(f"end to end {spec.name}")
                if why is None:
                    try:
                        if isinstance(e2e_data, BaseException):
                            raise e2e_data
                        data = e2e_data.wait()
                        row = run_e2e(spec, ctx, data, work)
                    except Exception as e:
                        row = {"name": spec.name, "status": "error", "error": error_text(e)}
                else:
                    row = {"name": spec.name, "status": "skipped", "error": why}
                results.add("e2e", row)
        if args.compile is not None:
            # every model in the first mode, then the next mode: a time budget that runs out
            # leaves whole modes measured
            for mode in args.compile_modes:
                for spec in compile_selection(ours, args.compile):
                    label = compiled_name(spec.name, mode)
                    why = budget_left(label)
                    results.add("steps", bench_ours(spec, ctx, compile=True, compile_mode=mode)
                                if why is None else
                                {"name": label, "kind": "ours", "base": spec.name, "compile": True,
                                 "compile_mode": mode, "status": "skipped", "error": why})
        if args.ablation is not None:
            names = args.ablation or [s.name for s in ours if s.e2e]  # the four configs' models
            short = dataclasses.replace(cfg, steps=args.ablation_steps or cfg.steps,
                                        warmup=(cfg.warmup if args.ablation_warmup is None
                                                else args.ablation_warmup))
            actx = dataclasses.replace(ctx, cfg=short)
            for name in names:
                for spec, compiled in ablation_specs(name):
                    if compiled and args.ablation_eager_only:
                        continue
                    label = spec.name + ("+compile" if compiled else "")
                    why = budget_left(label)
                    results.add("steps", bench_ours(spec, actx, compile=compiled) if why is None
                                else {"name": label, "kind": "ours", "base": spec.name,
                                      "compile": compiled, "status": "skipped", "error": why})
    finally:
        if isinstance(e2e_data, E2EData):
            e2e_data.cancel()
        if monitor is not None:
            monitor.close()
        if work_tmp is not None:
            shutil.rmtree(work_tmp, ignore_errors=True)
    meta["wall_s"] = round(time.monotonic() - start, 1)
    results.save()
    return results.data


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; returns the exit status (2 on a bad option or file)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    args = parse_args(argv)
    try:
        validate_args(args)
        data = load_results(args.render) if args.render is not None else run(args, argv)
        section = markdown_section(data)
        print("\n" + section, flush=True)
        if args.markdown is not None:
            append_markdown(args.markdown, section)
            print(f"appended to {args.markdown}", flush=True)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    # SIGTERM (a time limit, a scheduler) unwinds like Ctrl-C: end-to-end runs and the data
    # generator are stopped and the results file keeps what was measured
    signal.signal(signal.SIGTERM, _terminate)
    sys.exit(main())
