"""Everything that waits for a GPU, in one prepared call: the GPU campaign.

(One job, in one file: the campaign's plan and the running of its parts, in order, within
the budget; each part runs the project's own commands and modules, none is reimplemented
here. What the results say and their Markdown are ``benchmarks/campaign_report.py``'s.)

On a GPU machine (one call, a fixed time budget) this runs, in order of importance, and writes
every result into one folder:

1. device, driver, power limit, software versions (``summary.json``, which also holds each
   part's status and duration) and the real-NVML read cost of the energy hook;
2. ``shape_warmup.json``: ``python -m benchmarks.shape_warmup``, each model's first forward at
   new validation shapes under each implementation (cuDNN's depthwise plans, PyTorch's own
   depthwise kernels, no cuDNN at all, NCHW); the campaign picks ``val_kernels`` from it for
   every later training run (``summary.json``: ``val_kernels`` and why);
3. ``bench.json``: ``python -m benchmarks.bench``: our step rows, the reference
   implementations, the end-to-end runs through ``train.py`` (GPU busy, first validation
   against a later one), and U-Net and SegFormer-B0 under ``torch.compile`` in each mode;
4. ``study.json`` and ``runs.tar.gz``: the study in miniature, ``python -m shared.demo --size
   ade20k`` (U-Net and SegFormer-B0 from scratch on ADE20K-sized JPEGs at 512x512 to a target
   mIoU, validating often, energy from NVML), with an NVML monitor of its own running
   alongside: the hook's ``gpu_wh`` between the first and last report against the counter's own
   difference between the same instants (the cross-check), and each run's GPU-busy fraction;
5. ``bench-ablation.json``: the implementation ablation's rows (``benchmarks.bench
   --ablation``);
6. the study again with a second seed (its spread), if time is left.

``ablation_target`` (U-Net and SegFormer-B0 to the study's target as the MMCV-era baseline
and with every fast switch, then the report's implementation table), ``hook_ab`` (the same
U-Net run with the energy hook on and off) and ``reference_bench`` (a script of reference
figures, ``--reference-bench PATH``) run only when named in ``--parts``.
A part is started only if the time left covers its estimate; what was skipped says why.
``--smoke`` runs the same plan at toy size on a CPU (no NVML: those figures are "n/a").

    python -m benchmarks.campaign --out OUT [--budget 540] [--parts ...]
    python -m benchmarks.campaign --render OUT           # print the BENCHMARKS.md section

BENCHMARKS.md ("Running it on a GPU") gives the commands and what each file holds.
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import pathlib
import platform
import shlex
import signal
import subprocess
import sys
import tarfile
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

if TYPE_CHECKING:  # only annotations: the campaign imports torch when a part needs it
    from benchmarks.gpu_monitor import Sample

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.campaign_report import (  # noqa: E402  (pure functions, nothing that measures)
    CampaignError, analyse_study, render)

log = logging.getLogger("benchmarks.campaign")

#: seconds each part is expected to take on an H200 (start-up included); a part starts only
#: when the time left covers its estimate. A study seed took 169 s on 2026-12-04 (one model
#: to the 300-batch cap, 30 validations each): started with less, its second run is cut short
ESTIMATE_S = {"shape_warmup": 45.0, "bench": 250.0, "study": 160.0, "ablation": 60.0,
              "study_seed2": 160.0, "reference_bench": 60.0, "hook_ab": 70.0,
              # four training runs to the study's target, two of them compiled (20-45 s each)
              "ablation_target": 300.0}
#: the study's models, in the order they run
STUDY_MODELS = ("unet", "segformer")
#: the study: a target both models reach at different batches on the 24-class set, validations
#: close enough to tell them apart, and a cap that bounds a run that never gets there
STUDY_TARGET_MIOU = 60.0
STUDY_VALIDATION_PERIOD = 10
STUDY_MAX_BATCHES = 300
#: the seeds of the study (the second only if time is left)
STUDY_SEEDS = (0, 1)
#: per model run, for process and loader start-up and the final checkpoint
RUN_OVERHEAD_S = 15.0
#: validations after the first in a run of the configs (160,000 batches, one every 4,000):
#: how often a validation image's shape comes back warm (choose_val_kernels)
LATER_VALIDATIONS = 39


#: the parts, in the order they run (device information is always collected first)
PARTS = ("nvml_read_cost", "shape_warmup", "bench", "study", "ablation", "study_seed2",
         "ablation_target", "hook_ab", "reference_bench")
#: the parts run when --parts is not given
DEFAULT_PARTS = ("nvml_read_cost", "shape_warmup", "bench", "study", "ablation", "study_seed2")



# ============================================================================ time keeping
class Clock:
    """The campaign's budget: seconds since start, left, and whether a part fits."""

    def __init__(self, budget_s: float) -> None:
        self.budget_s = budget_s
        self.t0 = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def left(self) -> float:
        return self.budget_s - self.elapsed()

    def why_not(self, part: str, need_s: float) -> Optional[str]:
        left = self.left()
        if left < need_s:
            return f"skipped: {left:.0f} s left of the {self.budget_s:g} s budget, {part} needs ~{need_s:.0f} s"
        return None


def run_logged(cmd: Sequence[str], log_path: pathlib.Path, timeout_s: float,
               env: Optional[Mapping[str, str]] = None) -> Tuple[int, float]:
    """Run ``cmd`` in its own session with its output in ``log_path``; kill the whole group
    after ``timeout_s``. Returns (exit status, seconds); 124 means killed at the timeout."""
    t = time.monotonic()
    with log_path.open("w") as logf:
        proc = subprocess.Popen(list(cmd), cwd=ROOT, stdout=logf, stderr=subprocess.STDOUT,
                                start_new_session=True, env=dict(env) if env is not None else None)
        try:
            rc = proc.wait(timeout=max(1.0, timeout_s))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            rc = 124
    return rc, time.monotonic() - t


def log_tail(path: pathlib.Path, lines: int = 8) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


# ============================================================================ environment
def environment() -> Dict[str, Any]:
    """What the figures were measured on."""
    import importlib

    import torch
    env: Dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(), "torch": torch.__version__,
        "cuda": torch.version.cuda, "cpus": os.cpu_count(),
        "cuda_available": torch.cuda.is_available(),
    }
    if env["cuda_available"]:
        env["cudnn"] = torch.backends.cudnn.version()
        env["device_name"] = torch.cuda.get_device_name(0)
    for module in ("torchvision", "timm", "determined", "transformers",
                   "segmentation_models_pytorch", "numpy", "PIL", "pynvml"):
        try:
            m = importlib.import_module(module)
            env[f"{module}_version"] = str(getattr(m, "__version__", "?"))
        except Exception as e:  # a missing reference package is a fact, not an error
            env[f"{module}_version"] = f"not importable: {type(e).__name__}"
    try:
        q = "name,driver_version,power.limit,power.max_limit,clocks.max.sm,memory.total"
        res = subprocess.run(["nvidia-smi", f"--query-gpu={q}", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        env["nvidia_smi"] = res.stdout.strip() or res.stderr.strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        env["nvidia_smi"] = f"n/a ({e})"
    env["cpu_model"] = cpu_model()
    return env


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else the machine type."""
    try:
        return next(line.split(":", 1)[1].strip() for line in
                    pathlib.Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.machine()


# ============================================================================ hook read cost
def nvml_read_cost(reads: int = 200) -> Dict[str, Any]:
    """Wall time of one ``EnergyMeter.read()`` over the real ``NvmlSource`` of GPU 0 (what the
    hook calls at every report), and of the bare counter call. "n/a" without NVML."""
    from shared.energy.meter import EnergyMeter
    from shared.energy.sources.base import SourceUnavailable
    from shared.energy.sources.nvml import NvmlSource
    source = NvmlSource([0])
    try:
        source.open()
    except SourceUnavailable as e:
        return {"status": f"n/a ({e})"}
    source.close()
    meter = EnergyMeter([NvmlSource([0])]).start()
    try:
        for _ in range(10):
            meter.read()
        t = time.perf_counter()
        for _ in range(reads):
            meter.read()
        meter_us = 1e6 * (time.perf_counter() - t) / reads
    finally:
        meter.close()
    import pynvml
    pynvml.nvmlInit()
    try:
        h = pynvml.nvmlDeviceGetHandleByIndex(0)
        t = time.perf_counter()
        for _ in range(reads):
            pynvml.nvmlDeviceGetTotalEnergyConsumption(h)
        counter_us = 1e6 * (time.perf_counter() - t) / reads
    finally:
        pynvml.nvmlShutdown()
    return {"status": "ok", "reads": reads, "meter_read_us": meter_us,
            "counter_call_us": counter_us}



# ============================================================================ the study
def choose_val_kernels(path: pathlib.Path) -> Tuple[str, str]:
    """``val_kernels`` for the campaign's training runs, from ``shape_warmup.json``: the choice
    whose cost over the measured models is least, a shape's first call plus
    ``LATER_VALIDATIONS`` warm calls (a validation image's shape comes back at every later
    validation of a run). Returns (value, why)."""
    from benchmarks.shape_warmup import VAL_KERNELS_OF
    try:
        rows = json.loads(path.read_text())["rows"]
    except (OSError, ValueError, KeyError) as e:
        return "plan_free", f"the default: no shape warm-up result ({type(e).__name__})"
    ok = [r for r in rows if r.get("status") == "ok"]
    costs: Dict[str, float] = {}
    for variant, value in VAL_KERNELS_OF.items():
        if all(variant in r for r in ok) and ok:
            costs[value] = sum(r[variant]["first_ms"] + LATER_VALIDATIONS * r[variant]["second_ms"]
                               for r in ok)
    if not costs:
        return "plan_free", "the default: no model was measured"
    best = min(costs, key=lambda k: costs[k])
    why = ", ".join(f"{k} {v / 1000:.2f} s" for k, v in costs.items())
    return best, (f"per image shape, first call + {LATER_VALIDATIONS} warm calls, summed over "
                  f"{', '.join(r['model'] for r in ok)}: {why}")


# ============================================================================ the campaign
class Campaign:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out: pathlib.Path = args.out
        self.work: pathlib.Path = args.work_dir
        self.clock = Clock(args.budget)
        self.summary: Dict[str, Any] = {"budget_s": args.budget, "smoke": args.smoke, "parts": {}}
        self.py = sys.executable
        #: chosen by the shape_warmup part, used by every later training run
        self.val_kernels = "plan_free"

    # -- bookkeeping --------------------------------------------------------------------------
    def save(self) -> None:
        self.summary["elapsed_s"] = round(self.clock.elapsed(), 1)
        tmp = self.out / "summary.json.tmp"
        tmp.write_text(json.dumps(self.summary, indent=1, default=str) + "\n")
        tmp.replace(self.out / "summary.json")

    def part(self, name: str, fn: Callable[[], Dict[str, Any]], need_s: float) -> None:
        why = self.clock.why_not(name, need_s)
        if why is not None:
            self.summary["parts"][name] = {"status": why}
            print(f"[campaign] {name}: {why}", flush=True)
            self.save()
            return
        start = self.clock.elapsed()
        print(f"[campaign] {name}: start at {start:.0f} s ({self.clock.left():.0f} s left)", flush=True)
        try:
            result = fn()
        except Exception as e:  # one part's failure must not cost the others
            log.exception("%s failed", name)
            result = {"status": f"error: {type(e).__name__}: {e}"}
        result["seconds"] = round(self.clock.elapsed() - start, 1)
        self.summary["parts"][name] = result
        print(f"[campaign] {name}: {result.get('status')} in {result['seconds']:.0f} s", flush=True)
        self.save()

    def later(self, *parts: str) -> float:
        """Seconds the wanted parts after this one are expected to need (what a part leaves)."""
        return sum(ESTIMATE_S[p] for p in parts if p in self.args.parts)

    # -- parts --------------------------------------------------------------------------------
    def sizes(self) -> Dict[str, Any]:
        if self.args.smoke:
            tiny = ["--device", "cpu", "--res", "64", "--batch", "2", "--steps", "2", "--warmup", "1"]
            return {"bench": [*tiny, "--e2e-batches", "8", "--e2e-images", "16",
                              "--e2e-set", "workers_per_slot=0", "--compile", "unet",
                              "--only", "unet", "segformer"],
                    "ablation": [*tiny, "--only", "unet"],
                    "shape_warmup": ["--device", "cpu", "--shapes", "1", "--short-side", "64",
                                     "--models", "unet", "segformer"],
                    "demo": ["--size", "small"], "study": ["--max-batches", "20",
                                                           "--validation-period", "10"],
                    "batch": 8, "ablation_target_models": ("unet",),
                    "ab": ["crop_size=64", "scale=[128,64]", "global_batch_size=2",
                           "workers_per_slot=0", "num_classes=150"], "ab_batches": 12}
        return {"bench": ["--steps", "20", "--warmup", "6", "--skip", "smp.unet", "smp.segformer",
                          "torchvision", "--e2e-batches", "40", "--compile", *STUDY_MODELS,
                          "--compile-modes", "default", "reduce-overhead"],
                "ablation": ["--only", *STUDY_MODELS, "--steps", "12", "--warmup", "4"],
                "shape_warmup": ["--shapes", "6"],
                "demo": ["--size", "ade20k"],
                "study": ["--max-batches", str(STUDY_MAX_BATCHES), "--validation-period",
                          str(STUDY_VALIDATION_PERIOD), "--target-miou", f"{STUDY_TARGET_MIOU:g}"],
                "batch": 16, "ablation_target_models": STUDY_MODELS,
                "ab": ["global_batch_size=16", "num_classes=150"], "ab_batches": 100}

    def start_study_data(self) -> subprocess.Popen:
        log_path = self.work / "study-data.log"
        cmd = [self.py, "-m", "shared.demo", *self.sizes()["demo"], "--out", str(self.work / "study"),
               "--data-only"]
        logf = log_path.open("w")
        return subprocess.Popen(cmd, cwd=ROOT, stdout=logf, stderr=subprocess.STDOUT)

    def shape_warmup(self) -> Dict[str, Any]:
        """The cost of a model's first forward at a new shape, per implementation variant
        (benchmarks/shape_warmup.py), and the ``val_kernels`` the later runs use."""
        cmd = [self.py, "-m", "benchmarks.shape_warmup", *self.sizes()["shape_warmup"],
               "--out", str(self.out / "shape_warmup.json")]
        rc, secs = run_logged(cmd, self.work / "shape_warmup.log",
                              timeout_s=min(self.clock.left() - 10, 2 * ESTIMATE_S["shape_warmup"]))
        self.val_kernels, why = choose_val_kernels(self.out / "shape_warmup.json")
        self.summary["val_kernels"] = {"value": self.val_kernels, "why": why}
        return {"status": "ok" if rc == 0 else f"exit {rc}", "command": shlex.join(cmd[1:]),
                "val_kernels": self.val_kernels, "why": why,
                "log_tail": log_tail(self.work / "shape_warmup.log", 20)}

    def bench(self) -> Dict[str, Any]:
        budget = max(30.0, min(ESTIMATE_S["bench"], self.clock.left() - self.later("study")) - 40.0)
        cmd = [self.py, "-m", "benchmarks.bench", *self.sizes()["bench"],
               "--e2e-set", f"val_kernels={self.val_kernels}",
               "--out", str(self.out / "bench.json"), "--work-dir", str(self.work / "bench"),
               "--time-budget", f"{budget:.0f}"]
        rc, secs = run_logged(cmd, self.work / "bench.log",
                              timeout_s=self.clock.left() - self.later("study") * 0.8)
        return {"status": "ok" if rc == 0 else f"exit {rc}", "command": shlex.join(cmd[1:]),
                "log_tail": log_tail(self.work / "bench.log", 4 if rc == 0 else 25)}

    def ablation(self) -> Dict[str, Any]:
        """The implementation ablation's step rows (baseline, each switch alone, all fast),
        eager: the compiled rows are the bench part's."""
        budget = max(20.0, min(ESTIMATE_S["ablation"], self.clock.left() - 10) - 15.0)
        cmd = [self.py, "-m", "benchmarks.bench", *self.sizes()["ablation"], "--no-reference",
               "--no-e2e", "--ablation", *STUDY_MODELS, "--ablation-only", "--ablation-eager-only",
               "--out", str(self.out / "bench-ablation.json"), "--time-budget", f"{budget:.0f}"]
        rc, secs = run_logged(cmd, self.work / "bench-ablation.log",
                              timeout_s=self.clock.left() - 5)
        return {"status": "ok" if rc == 0 else f"exit {rc}", "command": shlex.join(cmd[1:]),
                "log_tail": log_tail(self.work / "bench-ablation.log", 4 if rc == 0 else 25)}

    def study_data(self, data_proc: subprocess.Popen, out_dir: pathlib.Path) -> Optional[str]:
        """Wait for the study's data set (generated once, in the background) and link it into
        ``out_dir``, a ``shared.demo --out`` folder; the reason when it is not there."""
        try:
            data_proc.wait(timeout=max(1.0, self.clock.left() - 60))
        except subprocess.TimeoutExpired:
            data_proc.kill()
            return ("error: the study's data set was not ready in time "
                    f"({log_tail(self.work / 'study-data.log')})")
        if data_proc.returncode != 0:
            return f"error: generating the study's data failed: {log_tail(self.work / 'study-data.log')}"
        out_dir.mkdir(parents=True, exist_ok=True)
        data_name = "data" if self.args.smoke else "data-ade20k"
        link = out_dir / data_name
        if not link.exists():
            link.symlink_to(self.work / "study" / data_name, target_is_directory=True)
        return None

    def study(self, data_proc: subprocess.Popen, seed: int) -> Dict[str, Any]:
        from benchmarks.gpu_monitor import open_monitor
        import torch
        sizes = self.sizes()
        out_dir = self.work / "study" / f"seed{seed}"
        problem = self.study_data(data_proc, out_dir)  # one data set for every seed
        if problem:
            return {"status": problem}
        cmd = [self.py, "-m", "shared.demo", *sizes["demo"], *sizes["study"], "--seed", str(seed),
               "--out", str(out_dir), "--set", f"val_kernels={self.val_kernels}"]
        env = dict(os.environ, ENERGY_SOURCES="nvml") if not self.args.smoke else None
        device = torch.device("cuda") if torch.cuda.is_available() and not self.args.smoke \
            else torch.device("cpu")
        monitor, nvml_status = open_monitor(device)
        samples: List[Sample] = []
        if monitor is not None:
            monitor.start()
        try:
            rc, secs = run_logged(cmd, self.work / f"study-seed{seed}.log",
                                  timeout_s=self.clock.left() - 10, env=env)
        finally:
            if monitor is not None:
                samples = monitor.stop()
                monitor.close()
        runs = analyse_study(out_dir, samples, sizes["batch"])
        result = {"status": "ok" if rc == 0 else f"exit {rc}", "command": shlex.join(cmd[1:]),
                  "seed": seed, "energy_sources_env": "nvml" if env else None,
                  "val_kernels": self.val_kernels, "nvml": nvml_status,
                  "monitor_samples": len(samples), "runs": runs,
                  "log_tail": log_tail(self.work / f"study-seed{seed}.log", 6 if rc == 0 else 30)}
        path = self.out / "study.json"
        studies = json.loads(path.read_text()) if path.is_file() else {"seeds": []}
        studies["seeds"].append(result)
        path.write_text(json.dumps(studies, indent=1, default=str) + "\n")
        return {k: v for k, v in result.items() if k != "runs"} | {
            "cross_checks": {k: v["cross_check"].get("status") for k, v in runs.items()}}

    def ablation_target(self, data_proc: subprocess.Popen) -> Dict[str, Any]:
        """The implementation ablation to a target: each study model trained to the study's
        target as the MMCV-era baseline and with every fast switch (``ablation_to_target.yaml``'s
        two variants), on the study's data, seed 0, energy from NVML; then ``shared.report``'s
        implementation table over the four runs."""
        from shared import hparams as hpmod, recipes
        from shared.energy.schema import value_text
        sizes = self.sizes()
        root = self.work / "ablation_target"
        commands: List[str] = []
        runs: Dict[str, Any] = {}
        env = dict(os.environ, ENERGY_SOURCES="nvml") if not self.args.smoke else None
        for model in sizes["ablation_target_models"]:
            switches = hpmod.implementation_switches(recipes.get(model, ROOT).trial_class())
            for variant, values in (("baseline", hpmod.ABLATION_BASELINE),
                                    ("fastest", hpmod.ABLATION_FASTEST)):
                key = f"{model}@{variant}"
                if self.clock.left() < 40:
                    runs[key] = {"status": "skipped: out of time"}
                    continue
                out_dir = root / variant
                problem = self.study_data(data_proc, out_dir)
                if problem:
                    return {"status": problem, "runs": runs}
                impl = "{" + ", ".join(f"{k}: {value_text(values[k])}" for k in switches) + "}"
                cmd = [self.py, "-m", "shared.demo", *sizes["demo"], *sizes["study"], "--seed", "0",
                       "--models", model, "--out", str(out_dir),
                       "--set", f"val_kernels={self.val_kernels}", f"implementation={impl}"]
                commands.append(shlex.join(cmd[1:]))
                log_path = self.work / f"ablation-target-{model}-{variant}.log"
                rc, secs = run_logged(cmd, log_path, timeout_s=self.clock.left() - 20, env=env)
                summaries = sorted(out_dir.glob(f"{model}-*/summary.json"))
                if rc != 0 or not summaries:
                    runs[key] = {"status": f"exit {rc}", "log_tail": log_tail(log_path, 25)}
                    continue
                summary = json.loads(summaries[-1].read_text())
                runs[key] = {"status": "ok", "seconds": round(secs, 1), **{
                    k: summary.get(k) for k in ("batches", "reached_target", "batches_to_target",
                                                "time_to_target_s", "energy_to_target_wh",
                                                "energy_wh", "best_miou")}}
        result: Dict[str, Any] = {"status": "ok" if runs and all(
            r.get("status") == "ok" for r in runs.values()) else "partial", "commands": commands,
            "runs": runs}
        dirs = [str(root / v) for v in ("baseline", "fastest") if (root / v).is_dir()]
        if dirs:
            report = root / "report"
            cmd = [self.py, "-m", "shared.report", *dirs, "--out", str(report)]
            rc, _ = run_logged(cmd, self.work / "ablation-target-report.log",
                               timeout_s=max(10.0, self.clock.left() - 5))
            table = report / "implementation.md"
            result["implementation_md"] = table.read_text() if rc == 0 and table.is_file() else None
            if result["implementation_md"] is None:
                result["report_log_tail"] = log_tail(self.work / "ablation-target-report.log", 15)
        return result

    def reference_bench(self) -> Dict[str, Any]:
        script = self.args.reference_bench
        if script is None or not script.is_file():
            return {"status": f"skipped: {script} not found (--reference-bench PATH: a script "
                              f"that prints the reference figures)"}
        out = self.out / "reference_bench.txt"
        timeout = min(self.clock.left() - 15, ESTIMATE_S["reference_bench"])
        rc, secs = run_logged([self.py, str(script)], out, timeout_s=timeout)
        status = "ok" if rc == 0 else ("cut at its time limit (the rows printed before are "
                                       "complete)" if rc == 124 else f"exit {rc}")
        return {"status": status, "timeout_s": timeout}

    def hook_ab(self) -> Dict[str, Any]:
        """The same U-Net run twice, the energy hook on (NVML) and off, on the bench's data:
        training img/s of each from its own metrics.jsonl."""
        from benchmarks.e2e import E2EData, analyse_e2e
        from benchmarks.specs import BenchConfig
        from shared import runlog
        sizes = self.sizes()
        # the bench's end-to-end set when the bench ran, else generated now
        res = 64 if self.args.smoke else 512
        data = E2EData(BenchConfig(res=res, e2e_images=16 if self.args.smoke else 256),
                       self.work / "bench").wait()
        rows: Dict[str, Any] = {}
        for label, energy in (("on", "energy.enabled=true"), ("off", "energy.enabled=false"),
                              ("on-again", "energy.enabled=true")):
            if self.clock.left() < 25:
                rows[label] = {"status": "skipped: out of time"}
                continue
            out = self.work / f"hook-{label}"
            cmd = [self.py, str(ROOT / "trials" / "unet" / "train.py"),
                   "--config", str(ROOT / "experiment_configs" / "unet" / "single_gpu.yaml"),
                   "--data-dir", str(data), "--output-dir", str(out),
                   "--batches", str(sizes["ab_batches"]), "--set", *sizes["ab"],
                   "report_period=10", f"validation_period={10 * sizes['ab_batches']}",
                   f"checkpoint_period={10 * sizes['ab_batches']}", "stop_at_target=false", energy]
            env = dict(os.environ, ENERGY_SOURCES="nvml") if not self.args.smoke else None
            rc, secs = run_logged(cmd, self.work / f"hook-{label}.log",
                                  timeout_s=self.clock.left() - 5, env=env)
            if rc != 0:
                rows[label] = {"status": f"exit {rc}", "log_tail": log_tail(self.work / f"hook-{label}.log")}
                continue
            rec = runlog.read(out / "metrics.jsonl")
            rows[label] = {"status": "ok", **analyse_e2e(rec, [], sizes["batch"])}
        ok = {k: v for k, v in rows.items() if v.get("status") == "ok"}
        result: Dict[str, Any] = {"status": "ok" if len(ok) == len(rows) else "partial", "runs": rows}
        if "on" in ok and "off" in ok:
            ons = [ok[k]["img_s_train"] for k in ("on", "on-again") if k in ok]
            result["on_over_off"] = (sum(ons) / len(ons)) / ok["off"]["img_s_train"]
            if len(ons) == 2:
                result["on_spread"] = abs(ons[0] - ons[1]) / min(ons)
        return result

    def pack(self) -> Dict[str, Any]:
        """The runs' records, logs and reports (no data, checkpoints or tensorboard files)."""
        path = self.out / "runs.tar.gz"

        def keep(info: tarfile.TarInfo) -> Optional[tarfile.TarInfo]:
            parts = pathlib.PurePath(info.name).parts
            if any(p.startswith("data") or p in ("checkpoints", "tensorboard") for p in parts[1:]):
                return None
            return info

        with tarfile.open(path, "w:gz") as tar:
            for sub in ("study", "bench", "ablation_target"):
                if (self.work / sub).is_dir():
                    tar.add(self.work / sub, arcname=sub, filter=keep)
            for p in sorted(self.work.glob("*.log")) + sorted(self.work.glob("hook-*")):
                tar.add(p, arcname=f"logs/{p.name}", filter=keep)
        for stale in self.out.glob("*.tmp"):  # a results file cut mid-write: the last whole one stays
            stale.unlink()
        return {"status": "ok", "bytes": path.stat().st_size}

    def run(self) -> int:
        self.out.mkdir(parents=True, exist_ok=True)
        self.work.mkdir(parents=True, exist_ok=True)
        wanted = set(self.args.parts)
        studies = {"study", "study_seed2", "ablation_target"} & wanted
        data_proc = self.start_study_data() if studies else None
        self.part("env", lambda: {"status": "ok", **environment()}, 5)
        plan: List[Tuple[str, Callable[[], Dict[str, Any]], float]] = [
            ("nvml_read_cost", nvml_read_cost, 5),
            ("shape_warmup", self.shape_warmup, ESTIMATE_S["shape_warmup"]),
            ("bench", self.bench, ESTIMATE_S["bench"] * 0.6),
            ("study", lambda: self.study(data_proc, STUDY_SEEDS[0]), ESTIMATE_S["study"] * 0.8),
            ("ablation", self.ablation, ESTIMATE_S["ablation"] * 0.6),
            ("study_seed2", lambda: self.study(data_proc, STUDY_SEEDS[1]), ESTIMATE_S["study_seed2"]),
            ("ablation_target", lambda: self.ablation_target(data_proc),
             ESTIMATE_S["ablation_target"]),
            ("hook_ab", self.hook_ab, ESTIMATE_S["hook_ab"]),
            ("reference_bench", self.reference_bench, 30),
        ]
        try:
            for name, fn, need in plan:
                if name in wanted:
                    self.part(name, fn, need)
        finally:
            if data_proc is not None and data_proc.poll() is None:
                data_proc.kill()
            self.part("pack", self.pack, 0)
        return 0



def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.campaign", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=pathlib.Path, help="result folder (created)")
    ap.add_argument("--work-dir", type=pathlib.Path,
                    help="data and runs (default: OUT/../campaign-work, outside the results)")
    ap.add_argument("--budget", type=float, default=540.0,
                    help="seconds for the whole campaign (default 540)")
    ap.add_argument("--reference-bench", type=pathlib.Path,
                    help="the reference_bench part's script (it prints reference figures)")
    ap.add_argument("--smoke", action="store_true", help="toy sizes on a CPU: does it all run?")
    ap.add_argument("--parts", nargs="+", choices=PARTS, default=list(DEFAULT_PARTS), metavar="PART",
                    help=f"run only these parts, in the campaign's order ({', '.join(PARTS)}; "
                         f"default {' '.join(DEFAULT_PARTS)}): a second call reruns what the "
                         f"first could not")
    ap.add_argument("--render", type=pathlib.Path, metavar="FOLDER",
                    help="measure nothing: print the Markdown of a campaign's result folder")
    args = ap.parse_args(argv)
    if args.render is None and args.out is None:
        ap.error("--out is required (or --render FOLDER)")
    if args.budget <= 0:
        ap.error(f"--budget {args.budget:g}: must be > 0 seconds")
    if args.out is not None and args.work_dir is None:
        args.work_dir = args.out.resolve().parent / f"{args.out.name}-work"
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    args = parse_args(argv)
    try:
        if args.render is not None:
            print(render(args.render), end="")
            return 0
        return Campaign(args).run()
    except CampaignError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
