"""A stand-in for nvidia-ml-py's ``pynvml`` module, driven by a controllable energy model.

Same names as the real module (checked against nvidia-ml-py 13.615:
``NVMLError`` with per-code subclasses such as ``NVMLError_NotSupported``, ``nvmlInit``,
``nvmlShutdown``, ``nvmlDeviceGetCount``, ``nvmlDeviceGetHandleByIndex``,
``nvmlDeviceGetHandleByUUID``, ``nvmlDeviceGetTotalEnergyConsumption`` (mJ since driver
load, refreshed only every ``COUNTER_REFRESH_S`` like the hardware), ``nvmlDeviceGetPowerUsage``
(mW), ``nvmlDeviceGetName``, ``nvmlDeviceGetUUID`` (both return str, as the real one does),
``nvmlDeviceGetUtilizationRates`` (a ``c_nvmlUtilization_t`` with integer ``gpu`` and
``memory`` percentages; NotSupported where the GPU has none).

Use::

    monkeypatch.setitem(sys.modules, "pynvml", pynvml_fake)
    pynvml_fake.reset([FakeGpu(power_w=300.0), FakeGpu(power_w=100.0)], clock=clock)
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional

NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_UNKNOWN = 999

_STRINGS = {
    NVML_ERROR_UNINITIALIZED: "Uninitialized",
    NVML_ERROR_INVALID_ARGUMENT: "Invalid Argument",
    NVML_ERROR_NOT_SUPPORTED: "Not Supported",
    NVML_ERROR_NO_PERMISSION: "Insufficient Permissions",
    NVML_ERROR_NOT_FOUND: "Not Found",
    NVML_ERROR_DRIVER_NOT_LOADED: "Driver Not Loaded",
    NVML_ERROR_LIBRARY_NOT_FOUND: "NVML Shared Library Not Found",
    NVML_ERROR_GPU_IS_LOST: "GPU is lost",
    NVML_ERROR_UNKNOWN: "Unknown Error",
}

#: The real counter is refreshed every 20-100 ms; the fake one every 100 ms of model time.
COUNTER_REFRESH_S = 0.1


class NVMLError(Exception):
    """Like pynvml.NVMLError: carries ``value`` (the NVML return code)."""

    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return _STRINGS.get(self.value, f"NVML Error with code {self.value}")


def _error_class(code: int, class_name: str) -> type:
    def init(self: NVMLError, *args: object) -> None:
        NVMLError.__init__(self, code)
    return type(class_name, (NVMLError,), {"__init__": init, "__module__": __name__})


NVMLError_Uninitialized = _error_class(NVML_ERROR_UNINITIALIZED, "NVMLError_Uninitialized")
NVMLError_NotSupported = _error_class(NVML_ERROR_NOT_SUPPORTED, "NVMLError_NotSupported")
NVMLError_NoPermission = _error_class(NVML_ERROR_NO_PERMISSION, "NVMLError_NoPermission")
NVMLError_DriverNotLoaded = _error_class(NVML_ERROR_DRIVER_NOT_LOADED,
                                         "NVMLError_DriverNotLoaded")
NVMLError_LibraryNotFound = _error_class(NVML_ERROR_LIBRARY_NOT_FOUND,
                                         "NVMLError_LibraryNotFound")
NVMLError_GpuIsLost = _error_class(NVML_ERROR_GPU_IS_LOST, "NVMLError_GpuIsLost")
NVMLError_Unknown = _error_class(NVML_ERROR_UNKNOWN, "NVMLError_Unknown")


@dataclass
class FakeGpu:
    """One GPU: constant ``power_w`` (change it any time), energy since 'driver load'."""

    power_w: float = 300.0
    name: str = "NVIDIA H100 80GB HBM3"
    uuid: str = ""
    has_counter: bool = True
    start_mj: int = 5_000_000_000   # the counter is large: it counts since driver load
    fail_reads: int = 0             # the next N energy/power reads raise NVMLError_Unknown
    util_pct: int = 100             # the utilisation counter (change it any time)
    has_util: bool = True
    energy_j: float = field(default=0.0, repr=False)  # model energy since reset()
    _t: Optional[float] = field(default=None, repr=False)
    _offset_mj: int = field(default=0, repr=False)

    def advance(self, now: float) -> None:
        if self._t is not None:
            self.energy_j += self.power_w * (now - self._t)
        self._t = now

    def counter_mj(self, now: float) -> int:
        # Quantized like the hardware: the value changes only every COUNTER_REFRESH_S.
        self.advance(now)
        stale = (now / COUNTER_REFRESH_S) % 1.0 * COUNTER_REFRESH_S
        stale_j = min(stale * self.power_w, self.energy_j)
        return self.start_mj + self._offset_mj + int(math.floor((self.energy_j - stale_j)
                                                                * 1000.0))

    def driver_reload(self, now: float) -> None:
        """The counter restarts near zero (the energy model goes on)."""
        self.advance(now)
        self._offset_mj = -self.start_mj - int(self.energy_j * 1000.0)


class _State:
    def __init__(self) -> None:
        self.gpus: List[FakeGpu] = []
        self.clock: Callable[[], float] = time.monotonic
        self.init_error: Optional[NVMLError] = None
        self.initialized = 0
        self.calls = 0


STATE = _State()


def reset(gpus: List[FakeGpu], *, clock: Callable[[], float] = time.monotonic,
          init_error: Optional[NVMLError] = None) -> _State:
    """Install a node: its GPUs (UUIDs filled in when empty), a clock, an nvmlInit error."""
    STATE.gpus = gpus
    STATE.clock = clock
    STATE.init_error = init_error
    STATE.initialized = 0
    STATE.calls = 0
    now = clock()
    for i, g in enumerate(gpus):
        if not g.uuid:
            g.uuid = f"GPU-{i:08x}-1111-2222-3333-{i:012x}"
        g.energy_j = 0.0
        g._t = now
    return STATE


class _Handle:
    def __init__(self, index: int) -> None:
        self.index = index


def _check_init() -> None:
    if STATE.initialized <= 0:
        raise NVMLError_Uninitialized()


def _gpu(handle: _Handle) -> FakeGpu:
    _check_init()
    return STATE.gpus[handle.index]


def nvmlInit() -> None:
    if STATE.init_error is not None:
        raise STATE.init_error
    STATE.initialized += 1


def nvmlShutdown() -> None:
    _check_init()
    STATE.initialized -= 1


def nvmlDeviceGetCount() -> int:
    _check_init()
    return len(STATE.gpus)


def nvmlDeviceGetHandleByIndex(index: int) -> _Handle:
    _check_init()
    if not 0 <= index < len(STATE.gpus):
        raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
    return _Handle(index)


def nvmlDeviceGetHandleByUUID(uuid: str) -> _Handle:
    _check_init()
    for i, g in enumerate(STATE.gpus):
        if g.uuid == uuid:
            return _Handle(i)
    raise NVMLError(NVML_ERROR_NOT_FOUND)


def nvmlDeviceGetName(handle: _Handle) -> str:
    return _gpu(handle).name


def nvmlDeviceGetUUID(handle: _Handle) -> str:
    return _gpu(handle).uuid


def _maybe_fail(gpu: FakeGpu) -> None:
    STATE.calls += 1
    if gpu.fail_reads > 0:
        gpu.fail_reads -= 1
        raise NVMLError_Unknown()


def nvmlDeviceGetTotalEnergyConsumption(handle: _Handle) -> int:
    gpu = _gpu(handle)
    if not gpu.has_counter:
        raise NVMLError_NotSupported()
    _maybe_fail(gpu)
    return gpu.counter_mj(STATE.clock())


def nvmlDeviceGetPowerUsage(handle: _Handle) -> int:
    gpu = _gpu(handle)
    _maybe_fail(gpu)
    gpu.advance(STATE.clock())
    return int(round(gpu.power_w * 1000.0))


class c_nvmlUtilization_t:
    """Like pynvml's ctypes structure: ``gpu`` and ``memory``, unsigned ints (percent)."""

    def __init__(self, gpu: int, memory: int) -> None:
        self.gpu = gpu
        self.memory = memory


def nvmlDeviceGetUtilizationRates(handle: _Handle) -> c_nvmlUtilization_t:
    gpu = _gpu(handle)
    if not gpu.has_util:
        raise NVMLError_NotSupported()
    return c_nvmlUtilization_t(int(gpu.util_pct), int(gpu.util_pct) // 2)
