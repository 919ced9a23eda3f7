"""The GPU watched while something runs on it: utilisation and power sampled by a thread, and
the GPU's energy read through the energy library (``EnergyMeter`` over ``NvmlSource``).

The energy library reads NVML's energy counter (or integrates sampled power on a GPU without
one); this module adds only what the library does not measure, utilisation, and the power
figure shown beside it. There is no energy reader of the benchmark's own.

Light on purpose (no torch import): ``benchmarks.campaign`` imports :class:`Sample` at start-up.
"""
from __future__ import annotations

import importlib
import os
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, List, Mapping, NamedTuple, Optional, Sequence, \
    Tuple

from benchmarks.specs import BenchError
from shared.energy.meter import EnergyMeter
from shared.energy.sources.nvml import NvmlSource, cuda_to_nvml_index, parse_cuda_visible_devices

if TYPE_CHECKING:
    import torch

#: what an energy, power or utilisation column holds when NVML cannot be read
NA_NO_NVML = "n/a (no NVML)"
#: NVML utilisation and power sampling period (also the energy library's power fallback's)
SAMPLE_PERIOD_S = 0.05
#: how the energy was measured, in the ``energy_source`` column
BY_COUNTER = "NVML energy counter"
BY_POWER = "NVML power samples x time"
NO_ENERGY = "n/a (NVML energy and power unreadable)"


class Sample(NamedTuple):
    """One instant of the GPU; a field is None when its read failed (or, for ``energy_j``,
    when the energy library could not measure this GPU)."""

    time: float                  # time.time(): matched with metrics.jsonl's wall-clock stamps
    util_pct: Optional[float]
    power_w: Optional[float]
    energy_j: Optional[float]    # cumulative joules since the monitor opened (EnergyMeter)


def sample_mean(values: Sequence[Optional[float]]) -> Optional[float]:
    """The mean of the values that were read (None when none was)."""
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


class NvmlMonitor:
    """One GPU: its energy from an ``EnergyMeter`` over ``NvmlSource``, plus utilisation and
    power sampled by a thread.

    ``start()`` begins sampling (wall-clock stamped, so samples can be matched with
    metrics.jsonl times), ``stop()`` ends it and returns the :class:`Sample` list;
    ``energy_j()`` reads the meter now. ``meter`` is the meter itself, for its windows.
    """

    def __init__(self, nvml: Any, handle: Any, name: str, meter: EnergyMeter,
                 period_s: float = SAMPLE_PERIOD_S) -> None:
        self.nvml = nvml
        self.handle = handle
        self.name = name
        self.meter = meter
        self.period_s = period_s
        self._samples: List[Sample] = []
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    @classmethod
    def open(cls, device: "torch.device", env: Optional[Mapping[str, str]] = None,
             period_s: float = SAMPLE_PERIOD_S) -> "NvmlMonitor":
        """The NVML device behind CUDA ``device`` (CUDA_VISIBLE_DEVICES respected), and an
        energy meter started on the same GPU.

        Raises:
            BenchError: the device is not CUDA, pynvml is missing or NVML cannot be read.
        """
        if device.type != "cuda":
            raise BenchError(f"NVML reads GPUs; the device is {device}")
        try:
            nvml = importlib.import_module("pynvml")
        except ImportError as e:
            raise BenchError(f"cannot import pynvml ({e}); pip install nvidia-ml-py") from None
        try:
            nvml.nvmlInit()
        except Exception as e:
            raise BenchError(f"NVML unavailable: {e}") from None
        env = os.environ if env is None else env
        cuda_index = device.index or 0
        try:
            # the utilisation and power queries need the handle of the same GPU the energy
            # source opens: both map the CUDA index with the energy library's function
            count = int(nvml.nvmlDeviceGetCount())
            handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            uuids = [_text(nvml.nvmlDeviceGetUUID(h)) for h in handles]
            raw = env.get("CUDA_VISIBLE_DEVICES")
            index = cuda_to_nvml_index(cuda_index, parse_cuda_visible_devices(raw), uuids,
                                       env_value=raw or "")
            name = _text(nvml.nvmlDeviceGetName(handles[index]))
        except Exception as e:
            _shutdown(nvml)
            raise BenchError(f"NVML unavailable: {e}") from None
        # The source's power fallback samples as often as this monitor does. A source that
        # cannot open (no counter and no power) leaves the meter without a "gpu" component:
        # the energy columns then say so, and utilisation is still sampled.
        meter = EnergyMeter([NvmlSource([cuda_index], env=env, power_period_s=period_s)],
                            explicit=True).start()
        return cls(nvml, handles[index], name, meter, period_s)

    @property
    def energy_method(self) -> str:
        """How the meter measures this GPU's energy: BY_COUNTER, BY_POWER or NO_ENERGY."""
        nvml = [s for s in self.meter.active_sources if s.name == NvmlSource.name]
        if not nvml:
            return NO_ENERGY
        return BY_COUNTER if nvml[0].all_counters else BY_POWER

    @property
    def has_counter(self) -> bool:
        return self.energy_method == BY_COUNTER

    def energy_j(self) -> Optional[float]:
        """The GPU's joules since the monitor opened (None when the meter cannot measure it)."""
        return self.meter.read().joules.get("gpu")

    @staticmethod
    def _read(fn: Callable[[Any], Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except Exception:  # a transient NVML error or an unsupported query: a missing value
            return None

    def sample(self) -> Sample:
        util = self._read(self.nvml.nvmlDeviceGetUtilizationRates, self.handle)
        power = self._read(self.nvml.nvmlDeviceGetPowerUsage, self.handle)
        return Sample(time.time(), None if util is None else float(util.gpu),
                      None if power is None else power / 1000.0, self.energy_j())

    def _run(self) -> None:
        while True:
            self._samples.append(self.sample())
            if self._stop.wait(self.period_s):
                return

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("NvmlMonitor.start() called twice without stop()")
        self._samples = []
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="nvml-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> List[Sample]:
        if self._thread is None:
            return []
        self._stop.set()
        self._thread.join()
        self._thread = None
        self._samples.append(self.sample())  # the window's last instant, even if short
        return list(self._samples)

    def close(self) -> None:
        self.stop()
        self.meter.close()
        _shutdown(self.nvml)


def _shutdown(nvml: Any) -> None:
    try:
        nvml.nvmlShutdown()
    except Exception:  # already shut down: nothing to release
        pass


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def open_monitor(device: "torch.device") -> Tuple[Optional[NvmlMonitor], str]:
    """(monitor, "ok") on a GPU whose NVML answers, else (None, why), the why starting with
    NA_NO_NVML so that it can stand in an energy column as is."""
    if device.type != "cuda":
        return None, NA_NO_NVML
    try:
        return NvmlMonitor.open(device), "ok"
    except BenchError as e:
        return None, f"{NA_NO_NVML[:-1]}: {e})"
