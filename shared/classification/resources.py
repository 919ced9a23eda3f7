"""What the trial's own processes use, recorded beside training (source document 001 recorded
CPU, RAM and thread counts of each framework over a run).

Determined's profiler (``profiling.enabled`` in the experiment config) already records the
*system*: GPU utilisation and memory, CPU, memory, network and disk of each agent. What it
cannot tell apart is the share of the trial: its training processes against their data-loader
workers, and how much GPU memory PyTorch holds. ``ResourceCallback`` reports that, as the custom
metric group ``resources``:

======================  ======================================================  ===========
key                     what                                                    over ranks
======================  ======================================================  ===========
``cpu_percent``         CPU time of the training process / wall time, x100       sum
                        (100 = one core busy), since the previous sample
``threads``             threads of the training process                          sum
``rss_mb``              resident memory of the training process (MB)             sum
``workers``             child processes (the data-loader workers)                sum
``workers_cpu_percent`` their CPU time / wall time, x100, since the last sample  sum
``workers_rss_mb``      their resident memory (MB; pages shared with the         sum
                        parent by fork are counted in each)
``gpu_allocated_mb``    ``torch.cuda.memory_allocated`` now (CUDA only)          max
``gpu_reserved_mb``     ``torch.cuda.memory_reserved`` now (CUDA only)           max
``gpu_peak_mb``         ``torch.cuda.max_memory_allocated`` since the last       max
                        sample (CUDA only; the peak counter is reset each time)
``ranks``               processes that reported                                  count
======================  ======================================================  ===========

Sums are the trial's total (every rank on every node); GPU figures are the largest rank's,
per GPU, the number that says whether a batch fits. A sample is taken at each training report
(covering the training since the previous sample) and at each validation end (covering the
validation; the same keys prefixed ``val_``, since Determined refuses two reports of one
group at one step with overlapping keys).

psutil is used directly: ``determined`` itself depends on it, so it is present wherever a
trial runs, and it reads the same ``/proc`` files a hand-written reader would.

The module also holds ``saved_tensor_bytes``, the activation-memory meter behind the gradient
checkpointing figures in docs/classification.md.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import psutil
import torch
from determined import pytorch as det_pytorch

from shared import determined_compat as compat

__all__ = ["ResourceCallback", "ResourceSampler", "combine", "saved_tensor_bytes"]

log = logging.getLogger("shared.classification.resources")

MB = 1024 * 1024
#: keys summed over ranks; the GPU keys take the maximum
#: the custom group ``resources``: name -> meaning (sampled at each training report and, with
#: the keys prefixed ``val_``, at each validation end)
RESOURCES_GROUP = {
    "cpu_percent": "CPU time of the training processes / wall time x 100 (100 = one core), summed over ranks",
    "threads": "threads of the training processes, summed",
    "rss_mb": "resident memory of the training processes, summed",
    "workers": "data-loader worker processes, summed",
    "workers_cpu_percent": "their CPU time / wall time x 100, summed",
    "workers_rss_mb": "their resident memory (pages shared by fork counted in each), summed",
    "gpu_allocated_mb": "torch.cuda.memory_allocated, largest rank (CUDA only)",
    "gpu_reserved_mb": "torch.cuda.memory_reserved, largest rank (CUDA only)",
    "gpu_peak_mb": "peak allocated since the previous sample, largest rank (CUDA only)",
    "ranks": "ranks that reported",
}
SUMMED = ("cpu_percent", "threads", "rss_mb", "workers", "workers_cpu_percent", "workers_rss_mb")
MAXED = ("gpu_allocated_mb", "gpu_reserved_mb", "gpu_peak_mb")


def _cpu_seconds(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


class ResourceSampler:
    """Samples one process and its children; each ``sample()`` covers the time since the last.

    CPU percentages are computed from CPU-time deltas rather than psutil's ``cpu_percent``,
    whose first call per process returns a meaningless 0.0: a data-loader worker that appeared
    since the last sample is charged its whole CPU time over its own lifetime.
    """

    def __init__(self, pid: Optional[int] = None, cuda_device: Optional[torch.device] = None) -> None:
        self.proc = psutil.Process(pid or os.getpid())
        self.cuda_device = cuda_device
        self._last_wall = time.time()
        self._last_cpu = _cpu_seconds(self.proc)
        self._children_cpu: Dict[int, float] = {}

    def sample(self) -> Dict[str, float]:
        now = time.time()
        wall = max(now - self._last_wall, 1e-6)
        cpu = _cpu_seconds(self.proc)
        out: Dict[str, float] = {
            "cpu_percent": round(100.0 * (cpu - self._last_cpu) / wall, 2),
            "threads": float(self.proc.num_threads()),
            "rss_mb": round(self.proc.memory_info().rss / MB, 2),
        }
        seen: Dict[int, float] = {}
        child_cpu_delta, child_rss, count = 0.0, 0, 0
        for child in self.proc.children(recursive=True):
            try:
                with child.oneshot():
                    c_cpu = _cpu_seconds(child)
                    rss = child.memory_info().rss
                    started = child.create_time()
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue  # a worker that exited between listing and reading
            previous = self._children_cpu.get(child.pid)
            if previous is None:
                # Not seen before: charge the part of its lifetime CPU that falls in this window
                # (all of it if it started inside the window), assuming a steady rate.
                life = max(now - started, 1e-6)
                inside = max(now - max(started, self._last_wall), 0.0)
                child_cpu_delta += c_cpu * min(1.0, inside / life)
            else:
                child_cpu_delta += max(0.0, c_cpu - previous)
            seen[child.pid] = c_cpu
            child_rss += rss
            count += 1
        out.update(workers=float(count), workers_rss_mb=round(child_rss / MB, 2),
                   workers_cpu_percent=round(100.0 * child_cpu_delta / wall, 2))
        self._children_cpu = seen
        self._last_wall, self._last_cpu = now, cpu
        if self.cuda_device is not None:
            out.update(gpu_allocated_mb=round(torch.cuda.memory_allocated(self.cuda_device) / MB, 2),
                       gpu_reserved_mb=round(torch.cuda.memory_reserved(self.cuda_device) / MB, 2),
                       gpu_peak_mb=round(torch.cuda.max_memory_allocated(self.cuda_device) / MB, 2))
            torch.cuda.reset_peak_memory_stats(self.cuda_device)
        return out


def combine(per_rank: List[Mapping[str, float]], prefix: str = "") -> Dict[str, float]:
    """One trial-wide report from the ranks' samples: sums of ``SUMMED``, maxima of ``MAXED``.
    Empty samples (a rank whose sampling failed) are left out and not counted in ``ranks``."""
    reports = [r for r in per_rank if r]
    out: Dict[str, float] = {}
    for key in SUMMED:
        values = [r[key] for r in reports if key in r]
        if values:
            out[prefix + key] = round(sum(values), 2)
    for key in MAXED:
        values = [r[key] for r in reports if key in r]
        if values:
            out[prefix + key] = max(values)
    out[prefix + "ranks"] = float(len(reports))
    return out


class ResourceCallback(det_pytorch.PyTorchCallback):
    """Reports the ``resources`` group (see the module docstring) at each training report and
    validation end.

    Collective rule (as the energy callback): every rank calls ``allgather`` exactly once per
    workload end and per validation end; a rank whose sampling failed sends an empty dict.
    """

    def __init__(self, context: Any, steps_completed: Callable[[], int]) -> None:
        self._context = context
        self._steps_completed = steps_completed
        self._sampler: Optional[ResourceSampler] = None
        self._failure_logged = False

    def on_trial_startup(self, first_batch_idx: int, checkpoint_uuid: Optional[str]) -> None:
        device = getattr(self._context, "device", None)
        cuda = device if device is not None and device.type == "cuda" else None
        try:
            self._sampler = ResourceSampler(cuda_device=cuda)
        except Exception as err:  # psutil refused (a sandbox without /proc): training goes on
            self._failed("starting", err)

    def _failed(self, what: str, err: BaseException) -> None:
        if not self._failure_logged:
            self._failure_logged = True
            log.warning("resources: %s failed (%s: %s); training continues without the resources "
                        "group", what, type(err).__name__, err)

    def _sample_and_report(self, prefix: str) -> None:
        local: Dict[str, float] = {}
        if self._sampler is not None:
            try:
                local = self._sampler.sample()
            except Exception as err:
                self._failed("sampling", err)
        reports = self._context.distributed.allgather(local)
        if self._context.distributed.rank != 0:
            return
        metrics = combine(reports, prefix)
        if metrics.get(prefix + "ranks"):
            compat.report_group(self._context, "resources", int(self._steps_completed()), metrics)

    def on_training_workload_end(self, avg_metrics: Dict[str, Any], batch_metrics: Any) -> None:
        self._sample_and_report("")

    def on_validation_end(self, metrics: Dict[str, Any]) -> None:
        self._sample_and_report("val_")


# ----------------------------------------------------------------------------- activation memory
def saved_tensor_bytes(step: Callable[[], torch.Tensor],
                       exclude: Tuple[torch.Tensor, ...] = ()) -> Tuple[int, torch.Tensor]:
    """Bytes autograd keeps for the backward pass of ``step()`` (a forward returning a loss).

    Every tensor saved for backward passes through ``saved_tensors_hooks``; the distinct
    storages among them are summed once each (a tensor saved by two ops, or a view of another,
    is one allocation), leaving out ``exclude`` (the parameters: they exist anyway). Inside a
    ``torch.utils.checkpoint`` region (non-reentrant) the checkpoint's own hook takes the
    tensors and keeps nothing, and the region's inputs are saved through this hook, so the sum
    is what checkpointing really keeps. On CPU this is the measurable part of training memory
    that gradient checkpointing changes (``torch.cuda.max_memory_allocated`` is CUDA only).

    Returns:
        The byte count and the loss (call ``backward`` on it, or drop it, afterwards).
    """
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    storages: Dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.device.type != "meta":
            s = t.untyped_storage()
            if s.data_ptr() not in skip and s.data_ptr() != 0:
                storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = step()
    return sum(storages.values()), loss
