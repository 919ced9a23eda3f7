"""End to end: the whole local training loop through the real command line
(``trials/<m>/train.py``) on a synthetic JPEG data set, timed from its ``metrics.jsonl`` while
the GPU monitor samples the GPU; the synthetic set itself; and the analysis of a run's records
and samples (img/s of the loop, the fraction of wall time the GPU is busy, J/img).
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import pathlib
import shlex
import signal
import subprocess
import sys
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from benchmarks.gpu_monitor import NA_NO_NVML, Sample, sample_mean
from benchmarks.specs import ROOT, BenchConfig, BenchError, ModelSpec, error_text, trial_available
from benchmarks.step import Context

log = logging.getLogger("benchmarks.bench")

E2E_VAL_IMAGES = 16
#: synthetic images are drawn with sides in [res, res * 683 / 512], ADE20K's usual 4:3 frame
E2E_MAX_SIDE_RATIO = 683 / 512


def e2e_periods(batches: int) -> Tuple[int, int]:
    """(report_period, validation_period) of an end-to-end run: up to 10 batches a report, so
    the timing window opens after the start-up batches, and two validations, one inside the
    window and one at its end."""
    report = max(1, min(10, batches // 4))
    return report, max(report, batches // 2)


def e2e_command(spec: ModelSpec, cfg: BenchConfig, data_dir: pathlib.Path,
                out_dir: pathlib.Path) -> List[str]:
    report, validation = e2e_periods(cfg.e2e_batches)
    sets = [f"crop_size={cfg.res}", f"scale=[{4 * cfg.res},{cfg.res}]",
            f"global_batch_size={cfg.batch}", f"num_classes={cfg.num_classes}",
            f"report_period={report}", f"validation_period={validation}",
            # no periodic checkpoint: its write would land in the timed window
            f"checkpoint_period={10 * cfg.e2e_batches}", "stop_at_target=false"]
    sets += [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in spec.overrides]
    if cfg.device.type == "cpu":
        sets.append("energy.enabled=false")  # no GPU energy to measure; keeps the smoke run quiet
    sets += list(cfg.e2e_set)
    return [sys.executable, str(ROOT / "trials" / spec.trial / "train.py"),
            "--config", str(ROOT / "experiment_configs" / spec.trial / "single_gpu.yaml"),
            "--data-dir", str(data_dir), "--output-dir", str(out_dir),
            "--batches", str(cfg.e2e_batches), "--set", *sets]


def analyse_e2e(records: Sequence[Mapping[str, Any]],
                samples: Sequence[Sample],
                global_batch: int, na: str = NA_NO_NVML) -> Dict[str, Any]:
    """Throughput, GPU busy fraction and energy of a run from its metrics.jsonl records and the
    GPU monitor's samples (utilisation, and the energy meter's cumulative joules).

    The window runs from the first training report to the last: the batches before the
    first report (process start, worker start, cuDNN autotuning) are left out. Validations
    inside it count in the loop's img/s and busy fraction; ``img_s_train`` and
    ``gpu_busy_train_pct`` leave them out (a validation spans from the training report at
    its step to its own report).
    """
    train = sorted(((int(r["steps_completed"]), float(r["time"])) for r in records
                    if r.get("group") == "training"), key=lambda x: x[0])
    if len(train) < 2:
        raise BenchError(f"metrics.jsonl holds {len(train)} training report(s); two are needed "
                         f"to time the loop: raise --e2e-batches")
    (s0, t0), (s1, t1) = train[0], train[-1]
    if s1 <= s0 or t1 <= t0:
        raise BenchError(f"training reports at steps {s0}..{s1}, times {t0}..{t1}: no window")
    report_time = dict(train)
    intervals = []
    for r in records:
        if r.get("group") != "validation":
            continue
        ts = report_time.get(int(r["steps_completed"]))
        if ts is not None and t0 <= ts < t1:
            intervals.append((ts, float(r["time"])))
    window = t1 - t0
    validation_s = sum(b - a for a, b in intervals)
    imgs = (s1 - s0) * global_batch
    out: Dict[str, Any] = {"timed_batches": s1 - s0, "window_s": window,
                           "validation_s": validation_s, "img_s_loop": imgs / window,
                           "img_s_train": imgs / (window - validation_s)
                           if window > validation_s else "n/a (validation filled the window)"}
    out.update(validation_warmup(records))
    inside = [s for s in samples if t0 <= s.time <= t1]
    if not samples:
        out.update(gpu_busy_pct=na, gpu_busy_train_pct=na, j_per_img=na)
        return out
    in_val = [any(a <= s.time <= b for a, b in intervals) for s in inside]
    busy = sample_mean([s.util_pct for s in inside])
    busy_train = sample_mean([s.util_pct for s, v in zip(inside, in_val) if not v])
    out["gpu_busy_pct"] = busy if busy is not None else "n/a (no utilisation sample in the window)"
    out["gpu_busy_train_pct"] = busy_train if busy_train is not None else out["gpu_busy_pct"]
    counted = [s for s in inside if s.energy_j is not None]
    if len(counted) >= 2 and counted[-1].time > counted[0].time:
        joules = counted[-1].energy_j - counted[0].energy_j
        # the energy samples bracket most of the window: scale by the images in their span
        out["j_per_img"] = joules / ((counted[-1].time - counted[0].time) * out["img_s_loop"])
    else:
        out["j_per_img"] = "n/a (NVML energy counter unreadable)"
    return out


def _e2e_data_params(cfg: BenchConfig) -> Dict[str, Any]:
    return {"num_train": cfg.e2e_images, "num_val": E2E_VAL_IMAGES,
            "num_classes": cfg.num_classes, "min_size": cfg.res,
            "max_size": int(round(cfg.res * E2E_MAX_SIDE_RATIO)), "seed": 0}


class E2EData:
    """The synthetic JPEG set of the end-to-end runs, generated once per work directory.

    Generation takes about 0.1 s of one core per ADE20K-sized image (half a minute for the
    default 256), so ``run`` starts it in a background process before the step rows (which
    keep the GPU, and one core, busy) and :meth:`wait` collects it before the first
    end-to-end run. A set already there with the same parameters is reused.

    Raises:
        BenchError: the directory holds another data set.
    """

    def __init__(self, cfg: BenchConfig, work: pathlib.Path) -> None:
        self.params = _e2e_data_params(cfg)
        self.path = work / f"data-{cfg.res}"
        self.marker = self.path / "bench-params.json"
        self.proc: Optional[subprocess.Popen] = None
        self._started = time.perf_counter()
        if self.marker.is_file():
            if json.loads(self.marker.read_text()) == self.params:
                return
            raise BenchError(f"{self.path} holds a different data set (see {self.marker.name}); "
                             f"remove it or choose another --work-dir")
        if self.path.exists() and any(self.path.iterdir()):
            raise BenchError(f"{self.path} holds an incomplete or foreign data set (no "
                             f"{self.marker.name}: an interrupted generation?); remove it or "
                             f"choose another --work-dir")
        self.path.mkdir(parents=True, exist_ok=True)
        p = self.params
        cmd = [sys.executable, "-m", "shared.data.synthetic", "--out", str(self.path),
               "--num-train", str(p["num_train"]), "--num-val", str(p["num_val"]),
               "--num-classes", str(p["num_classes"]), "--min-size", str(p["min_size"]),
               "--max-size", str(p["max_size"]), "--seed", str(p["seed"])]
        self._log = self.path.parent / f"{self.path.name}.log"
        with self._log.open("w") as logf:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=logf, stderr=subprocess.STDOUT)

    def wait(self) -> pathlib.Path:
        """The data directory, once complete (blocks until then).

        Raises:
            BenchError: the generator failed (its log's last lines in the message).
        """
        if self.proc is not None:
            rc = self.proc.wait()
            self.proc = None
            if rc != 0:
                tail = self._log.read_text(errors="replace").strip().splitlines()[-5:]
                raise BenchError(f"generating the end-to-end data set failed (exit {rc}); "
                                 f"{self._log} ends:\n" + "\n".join(tail))
            self.marker.write_text(json.dumps(self.params))
            log.info("synthetic data: %d+%d images ready %.1f s after the start, under %s",
                     self.params["num_train"], self.params["num_val"],
                     time.perf_counter() - self._started, self.path)
        if not self.marker.is_file():
            raise BenchError(f"{self.path}: the data set is incomplete (no {self.marker.name})")
        return self.path

    def cancel(self) -> None:
        """Stop a generation still running (the run ended before it was needed)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


def validation_durations(records: Sequence[Mapping[str, Any]]) -> List[float]:
    """Seconds of every validation of a run, in order: from the training report at its step
    (the last thing before it) to its own report; validations with no training report at the
    same step are left out."""
    report_time = {int(r["steps_completed"]): float(r["time"]) for r in records
                   if r.get("group") == "training"}
    out = []
    for r in records:
        if r.get("group") == "validation":
            ts = report_time.get(int(r["steps_completed"]))
            if ts is not None:
                out.append(float(r["time"]) - ts)
    return out


def validation_warmup(records: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
    """The first validation (which meets every image shape for the first time) against the
    later ones over the same images: seconds of each and their ratio (the 2x target)."""
    d = validation_durations(records)
    if len(d) < 2:
        return {"validation_first_s": d[0] if d else "n/a (no validation)",
                "validation_later_s": "n/a (one validation)", "validation_first_over_later": None}
    later = sum(d[1:]) / len(d[1:])
    return {"validation_first_s": d[0], "validation_later_s": later,
            "validation_first_over_later": d[0] / later if later > 0 else None}


def prepare_e2e_data(cfg: BenchConfig, work: pathlib.Path) -> pathlib.Path:
    """The synthetic JPEG set of the end-to-end runs, generated now (or reused)."""
    return E2EData(cfg, work).wait()


def run_e2e(spec: ModelSpec, ctx: Context, data_dir: pathlib.Path, work: pathlib.Path
            ) -> Dict[str, Any]:
    """One row: ``trials/<m>/train.py`` through the CLI, timed from its metrics.jsonl, the GPU
    sampled meanwhile. Never raises."""
    cfg = ctx.cfg
    row: Dict[str, Any] = {"name": spec.name, "batches": cfg.e2e_batches}
    missing = trial_available(spec.trial)
    if missing:
        return {**row, "status": "skipped", "error": missing}
    if cfg.device.type == "cpu" and torch.cuda.is_available():
        return {**row, "status": "skipped",
                "error": "--device cpu on a GPU host: Determined's local mode would train on the "
                         "GPU anyway (it counts GPUs with nvidia-smi); use --no-e2e"}
    out = work / "e2e" / f"{spec.name}-{datetime.datetime.now():%H%M%S%f}"
    out.parent.mkdir(parents=True, exist_ok=True)
    log_path = out.parent / f"{out.name}.log"
    cmd = e2e_command(spec, cfg, data_dir, out)
    row["command"] = shlex.join(cmd)
    monitor = ctx.monitor
    try:
        if monitor is not None:
            monitor.start()
        try:
            with log_path.open("w") as logf:
                # its own session, so a timeout ends the trainer and its loader workers together
                proc = subprocess.Popen(cmd, cwd=ROOT, stdout=logf, stderr=subprocess.STDOUT,
                                        start_new_session=True)
                try:
                    rc = proc.wait(timeout=cfg.e2e_timeout_s)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    raise BenchError(f"{spec.name}: the run took more than --e2e-timeout "
                                     f"{cfg.e2e_timeout_s:g} s (log: {log_path})") from None
                except BaseException:
                    # the benchmark itself is stopped (SIGTERM, Ctrl-C): its own session would
                    # leave the run training on the GPU after the benchmark has gone
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    raise
        finally:
            samples = monitor.stop() if monitor is not None else []
        if rc != 0:
            # the last lines, each clipped: an error line's cause comes first, long lists after
            tail = [line if len(line) <= 240 else line[:240] + " [...]"
                    for line in log_path.read_text(errors="replace").strip().splitlines()[-15:]]
            raise BenchError(f"{spec.name}: train.py exited with {rc}; log {log_path} ends:\n"
                             + "\n".join(tail))
        from shared import runlog
        records = runlog.read(out / "metrics.jsonl")
        run = next((r["metrics"] for r in records if r.get("group") == "run"), {})
        row.update(analyse_e2e(records, samples, cfg.batch, ctx.nvml_status),
                   device=run.get("device"), precision=run.get("precision"), status="ok")
    except Exception as e:
        log.error("end to end %s failed: %s", spec.name, e)
        row.update(status="error", error=error_text(e))
    return row

