"""GPU energy from NVML: the energy counter when the GPU has one, sampled power otherwise.

Only the GPUs this process trains on are read (the trial's own GPUs: on a shared node the
other GPUs belong to someone else). The trainer passes *CUDA* device indices; NVML numbers
devices in PCI bus order and ignores ``CUDA_VISIBLE_DEVICES``, so the CUDA index is mapped to
an NVML device here (``cuda_to_nvml_index``).
"""
from __future__ import annotations

import importlib
import math
import os
import re
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from ..redact import energy_logger
from ..schema import Param, Positive
from .base import RawCounter, SourceHealth, SourceUnavailable
from .counters import counter_step
from .sampling import PowerSampler, SampledPowerSource

log = energy_logger()

#: Default period of the power-sampling fallback. NVML's power figure is refreshed every
#: 20-100 ms depending on the GPU; sampling slower than 100 ms misses load changes.
DEFAULT_POWER_PERIOD_S = 0.1
#: Period of the utilisation samples (``gpu_util_pct``). NVML's utilisation is itself the
#: share of the last 1/6 s to 1 s (by GPU) in which a kernel ran, so sampling every 0.5 s
#: sees every part of the run without re-reading the same window many times.
UTIL_PERIOD_S = 0.5

_INT_RE = re.compile(r"^\d+$")


def parse_cuda_visible_devices(value: Optional[str]) -> Optional[List[str]]:
    """Split ``CUDA_VISIBLE_DEVICES`` into its entries, CUDA's way.

    Returns None when the variable is unset (every GPU visible, in order). Like the CUDA
    runtime, the list stops at the first entry that is neither an index nor a GPU/MIG UUID
    (``"0,2,-1,1"`` makes GPUs 0 and 2 visible), and an empty value hides every GPU.
    """
    if value is None:
        return None
    entries: List[str] = []
    for raw in value.split(","):
        entry = raw.strip()
        if _INT_RE.match(entry) or entry.upper().startswith(("GPU-", "MIG-")):
            entries.append(entry)
        else:
            break
    return entries


def cuda_to_nvml_index(cuda_index: int, visible: Optional[Sequence[str]],
                       nvml_uuids: Sequence[str], *, env_value: str = "") -> int:
    """Map a CUDA device index (as this process sees it) to an NVML device index.

    Args:
        cuda_index: the index torch uses (``torch.cuda.current_device()``).
        visible: ``parse_cuda_visible_devices(os.environ.get("CUDA_VISIBLE_DEVICES"))``.
        nvml_uuids: the UUID of every NVML device, in NVML index order.
        env_value: the raw variable, only to make error messages precise.

    Raises:
        ValueError: the index is not visible, an entry names no GPU of this node, or it
            names a MIG instance (NVML energy is per physical GPU, shared by its instances).
    """
    if cuda_index < 0:
        raise ValueError(f"CUDA device index must be >= 0, got {cuda_index}")
    if visible is None:
        # Every GPU visible. CUDA's default order (FASTEST_FIRST) equals NVML's PCI order
        # on nodes with identical GPUs; NvmlSource warns on mixed nodes.
        if cuda_index >= len(nvml_uuids):
            raise ValueError(f"CUDA device {cuda_index} does not exist: NVML sees "
                             f"{len(nvml_uuids)} GPU(s) and CUDA_VISIBLE_DEVICES is unset")
        return cuda_index
    # CUDA drops an entry that names a missing GPU, and every entry after it.
    resolved: List[int] = []
    for entry in visible:
        if _INT_RE.match(entry):
            idx = int(entry)
            if idx >= len(nvml_uuids):
                break
            resolved.append(idx)
        elif entry.upper().startswith("MIG-"):
            resolved.append(-1)  # placeholder: only an error if it is the one asked for
        else:
            # CUDA accepts any unambiguous prefix of a GPU UUID.
            want = entry.lower()
            matches = [i for i, u in enumerate(nvml_uuids) if u.lower().startswith(want)]
            if len(matches) != 1:
                break
            resolved.append(matches[0])
    if cuda_index >= len(resolved):
        raise ValueError(
            f"CUDA device {cuda_index} is not visible: CUDA_VISIBLE_DEVICES={env_value!r} "
            f"makes {len(resolved)} GPU(s) visible")
    if resolved[cuda_index] < 0:
        raise ValueError(
            f"CUDA device {cuda_index} is a MIG instance ({visible[cuda_index]!r} in "
            f"CUDA_VISIBLE_DEVICES): NVML energy and power are per physical GPU, shared by all "
            f"its MIG instances, so they cannot be charged to this process")
    return resolved[cuda_index]


@dataclass
class _Gpu:
    nvml_index: int
    handle: Any
    name: str
    uuid: str
    has_counter: bool
    base_mj: int = 0      # counter value at the last rebase
    last_mj: int = 0      # last good counter value
    acc_j: float = 0.0    # joules accumulated before the last rebase


#: the most one GPU draws, watts (an H200 SXM's limit is 700 W; B200 1000 W): a counter step
#: between two processes implying more is not counted (``counters.counter_step``)
GPU_MAX_POWER_W = 2000.0


def _plausible_percent(value: float) -> Optional[str]:
    """A utilisation reading's check: 0-100 %, 0 included (an idle GPU)."""
    if not math.isfinite(value) or not 0.0 <= value <= 100.0:
        return f"{value!r} % is not a utilisation"
    return None


class NvmlSource(SampledPowerSource):
    """Energy of the GPUs this process owns, from NVML (component "gpu").

    The energy counter where the GPU has one; the power of the others is sampled and
    integrated (``SampledPowerSource``) and added to the counters' total.

    Args:
        gpu_indices: CUDA device indices used by this process (usually one).
        env: where ``CUDA_VISIBLE_DEVICES`` is read (default ``os.environ``).
        power_period_s: sampling period of the power fallback (<= 0.1 s advised).
        clock: monotonic clock for the power fallback; tests inject a fake one.
    """

    name = "nvml"
    covers = ("gpu",)
    scope = "device"
    priority = 10  # a GPU's own counter is the best figure there is for it
    summary = ("NVML energy counter (`nvmlDeviceGetTotalEnergyConsumption`) of each GPU the "
               "rank trains on, read at report time; power sampled every "
               f"{DEFAULT_POWER_PERIOD_S * 1000:g} ms and integrated where the counter is "
               "unsupported. CUDA indices are mapped through `CUDA_VISIBLE_DEVICES` (indices "
               "or UUIDs); MIG instances are refused (energy is per physical GPU). Also "
               "samples `nvmlDeviceGetUtilizationRates` every "
               f"{UTIL_PERIOD_S:g} s for `gpu_util_pct`")
    options = (
        Param(None, name="nvml_power_period_s",
              help="NVML power sampling period on GPUs without an energy counter, seconds "
                   f"(default {DEFAULT_POWER_PERIOD_S:g}, at most 10)", check=Positive()),
    )

    def __init__(self, gpu_indices: Sequence[int], *, env: Optional[Mapping[str, str]] = None,
                 power_period_s: float = DEFAULT_POWER_PERIOD_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.gpu_indices = [int(i) for i in gpu_indices]
        if not self.gpu_indices:
            raise ValueError("NvmlSource needs at least one CUDA device index")
        if not (isinstance(power_period_s, (int, float)) and 0 < power_period_s <= 10):
            raise ValueError(f"nvml_power_period_s must be in (0, 10] seconds, "
                             f"got {power_period_s!r}")
        self._env = os.environ if env is None else env
        self._power_period_s = float(power_period_s)
        self._clock = clock
        self._nvml: Any = None
        self._gpus: List[_Gpu] = []
        self._lock = threading.Lock()
        self._resets = 0
        #: utilisation samples (mean % of this process's GPUs), integrated over time by the
        #: same integrator as power; its own health, so that a GPU without a utilisation
        #: counter does not lower the energy's coverage
        self._util: Optional[PowerSampler] = None
        self._util_first = 0.0
        self.device_count = 0  # GPUs NVML sees on the node (it ignores CUDA_VISIBLE_DEVICES)

    @classmethod
    def from_env(cls, env: Mapping[str, str], options: Mapping[str, Any],
                 gpu_indices: Sequence[int] = ()) -> "NvmlSource":
        """Build from the energy options (``nvml_power_period_s``)."""
        period = options.get("nvml_power_period_s", DEFAULT_POWER_PERIOD_S)
        return cls(gpu_indices, env=env, power_period_s=period)

    # -- lifecycle --------------------------------------------------------------------------
    def open(self) -> None:
        try:
            nvml = importlib.import_module("pynvml")
        except ImportError as err:
            raise SourceUnavailable(f"nvml: cannot import pynvml ({err}); install nvidia-ml-py")
        try:
            nvml.nvmlInit()
        except Exception as err:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
            raise SourceUnavailable(f"nvml: nvmlInit failed: {err}")
        self._nvml = nvml
        try:
            self._open_devices(nvml)
        except SourceUnavailable:
            self._shutdown()
            raise
        except Exception as err:
            self._shutdown()
            raise SourceUnavailable(f"nvml: cannot open the GPUs: {err}")

    def _open_devices(self, nvml: Any) -> None:
        self.device_count = int(nvml.nvmlDeviceGetCount())
        handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(self.device_count)]
        uuids = [_text(nvml.nvmlDeviceGetUUID(h)) for h in handles]
        raw = self._env.get("CUDA_VISIBLE_DEVICES")
        visible = parse_cuda_visible_devices(raw)
        try:
            indices = [cuda_to_nvml_index(c, visible, uuids, env_value=raw or "")
                       for c in self.gpu_indices]
        except ValueError as err:
            raise SourceUnavailable(f"nvml: {err}")
        if len(set(indices)) != len(indices):
            raise SourceUnavailable(f"nvml: CUDA devices {self.gpu_indices} map to the same "
                                    f"GPU twice (NVML {indices}); it would be counted twice")
        names = [_text(nvml.nvmlDeviceGetName(h)) for h in handles]
        if (visible is None or all(_INT_RE.match(e) for e in visible)) \
                and len(set(names)) > 1 \
                and self._env.get("CUDA_DEVICE_ORDER", "FASTEST_FIRST") != "PCI_BUS_ID":
            log.warning("nvml: this node mixes GPU models (%s) and CUDA_DEVICE_ORDER is not "
                        "PCI_BUS_ID: CUDA may number GPUs differently from NVML; set "
                        "CUDA_DEVICE_ORDER=PCI_BUS_ID or list UUIDs in CUDA_VISIBLE_DEVICES",
                        ", ".join(sorted(set(names))))
        for idx in indices:
            handle = handles[idx]
            gpu = _Gpu(nvml_index=idx, handle=handle, name=names[idx], uuid=uuids[idx],
                       has_counter=True)
            try:
                gpu.base_mj = gpu.last_mj = int(nvml.nvmlDeviceGetTotalEnergyConsumption(handle))
            except nvml.NVMLError_NotSupported:
                gpu.has_counter = False  # pre-Volta: fall back to power
            self._gpus.append(gpu)
        power_only = [g for g in self._gpus if not g.has_counter]
        if power_only:
            try:  # fail now, at open, if power is not readable either
                for g in power_only:
                    nvml.nvmlDeviceGetPowerUsage(g.handle)
            except Exception as err:
                raise SourceUnavailable(f"nvml: GPU {g.nvml_index} ({g.name}) has neither an "
                                        f"energy counter nor a readable power figure: {err}")
            self.start_sampling(self._power_period_s, clock=self._clock)
        self._start_utilisation(nvml)

    def _start_utilisation(self, nvml: Any) -> None:
        """Sample ``nvmlDeviceGetUtilizationRates`` every UTIL_PERIOD_S when every GPU has
        it; a GPU without it (some vGPU and MIG set-ups) leaves ``gpu_util_pct`` out, and
        the energy is measured all the same."""
        try:
            self._util_first = self._read_utilisation()
        except Exception as err:
            log.info("nvml: no GPU utilisation counter (%s); gpu_util_pct is not reported", err)
            return
        self._util = PowerSampler(UTIL_PERIOD_S, self._read_utilisation, SourceHealth(),
                                  "nvml-utilisation", clock=self._clock,
                                  plausible=_plausible_percent)
        self._util.start(first_watts=self._util_first)

    @property
    def lags(self) -> bool:
        # Only when every GPU is sampled: a reading that adds counters read now to sampled
        # power has no single instant.
        return self._sampler is not None and not any(g.has_counter for g in self._gpus)

    def _read_utilisation(self) -> float:
        gpus = self._gpus
        return sum(float(self._nvml.nvmlDeviceGetUtilizationRates(g.handle).gpu)
                   for g in gpus) / len(gpus)

    def utilisation_pct(self) -> Optional[float]:
        """Mean GPU utilisation since open(), %: the time integral of the samples over their
        span (the one sample when there is only one); None when not sampled."""
        u = self._util
        if u is None:
            return None
        first, last = u.first_sample_time(), u.last_sample_time()
        if first is None or last is None:
            return None
        if last <= first:
            return self._util_first
        return u.energy_j() / (last - first)

    def read_watts(self) -> float:
        # One sample covers every power-only GPU: a failure on any skips the whole sample.
        return sum(self._nvml.nvmlDeviceGetPowerUsage(g.handle)
                   for g in self._gpus if not g.has_counter) / 1000.0

    def _shutdown(self) -> None:
        if self._util is not None:
            self._util.stop()  # its mean stays readable
        if self._sampler is not None:
            self.stop_sampling()
            self._sampler = None  # NVML is shut down: nothing of it is read after close()
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception:  # already shut down, or the driver went away: nothing to release
                pass
            self._nvml = None

    def close(self) -> None:
        self._shutdown()

    # -- reading ----------------------------------------------------------------------------
    def read(self) -> Dict[str, float]:
        total = 0.0
        with self._lock:
            for gpu in self._gpus:
                if gpu.has_counter:
                    self._update_counter(gpu)
                    total += gpu.acc_j + (gpu.last_mj - gpu.base_mj) / 1000.0
        return {"gpu": total + self.sampled_energy_j()}

    def _update_counter(self, gpu: _Gpu) -> None:
        # A window shorter than the counter's 20-100 ms refresh can read no change; the
        # totals are cumulative, so the energy appears at the next read.
        try:
            now_mj = int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(gpu.handle))
        except Exception as err:  # transient NVML error: keep the last good value
            self.health.record_failure(self.name, f"GPU {gpu.nvml_index}: {err}")
            return
        # NVML's counter is 64-bit mJ since driver load: it never wraps (modulus None), so a
        # decrease is always a reset (driver reload); counter_step decides, as for RAPL.
        step = counter_step(gpu.last_mj, now_mj, elapsed_s=0.0, joules_per_unit=1e-3,
                            max_power_w=None, modulus=None)
        if not step.counted:
            # Keep what was accumulated and restart from the new value: the energy between
            # the last read and the reload is unknown and not counted (coverage says so).
            gpu.acc_j += (gpu.last_mj - gpu.base_mj) / 1000.0
            gpu.base_mj = now_mj
            self._resets += 1
            self.health.record_lost(
                self.name, f"{self.name}/GPU {gpu.nvml_index}",
                f"GPU {gpu.nvml_index} energy counter: {step.why} (mJ; a driver reload?), a "
                f"{step.kind} reading; the energy since the previous read is not counted")
        else:
            self.health.record_ok()
        gpu.last_mj = now_mj

    def raw_counters(self) -> Dict[str, RawCounter]:
        """Each GPU's total-energy counter as last read, by its UUID (stable when the CUDA
        index is not); empty when a GPU is measured by sampled power."""
        if not self.all_counters:
            return {}
        with self._lock:
            return {g.uuid: RawCounter("gpu", g.last_mj, 1e-3, None, GPU_MAX_POWER_W)
                    for g in self._gpus}

    @property
    def counter_resets(self) -> int:
        """How many times a GPU counter went backwards and was rebased."""
        return self._resets

    @property
    def all_counters(self) -> bool:
        """Whether every opened GPU is read through its energy counter (False when at least
        one is measured by sampled power)."""
        return bool(self._gpus) and all(g.has_counter for g in self._gpus)

    def describe(self) -> str:
        parts = []
        for g in self._gpus:
            how = "energy counter" if g.has_counter else f"power sampled every " \
                                                        f"{self._power_period_s:g} s"
            parts.append(f"GPU {g.nvml_index} {g.name} {g.uuid} ({how})")
        return "nvml: " + "; ".join(parts) if parts else "nvml"


def _text(value: Any) -> str:
    # nvidia-ml-py returns str; older pynvml builds returned bytes.
    return value.decode() if isinstance(value, bytes) else str(value)
