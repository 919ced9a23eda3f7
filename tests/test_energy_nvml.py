"""NVML source against a fake pynvml: CUDA -> NVML device mapping, the energy counter, its
resets and errors, the power-sampling fallback, and unavailability."""
from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
import time
from pathlib import Path

import pytest

from shared.energy.sources.base import SourceUnavailable
from shared.energy.sources.nvml import (NvmlSource, cuda_to_nvml_index,
                                        parse_cuda_visible_devices)

_spec = importlib.util.spec_from_file_location(
    "energy_fakes_loader", Path(__file__).resolve().parent / "fakes" / "loader.py")
_loader = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_loader)
FAKES, load_fake, FakeClock = _loader.FAKES, _loader.load_fake, _loader.FakeClock


fake = load_fake("pynvml_fake")


@pytest.fixture()
def nvml(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    return fake


UUIDS = ["GPU-8932f937-d72c-4106-c12f-20bd9faed9f6",
         "GPU-89a1c0de-0000-4106-c12f-20bd9faed9f6",
         "GPU-3f7e2a11-5b6c-4d8e-9f00-112233445566"]


# --------------------------------------------------------------------------- mapping
def test_fake_matches_real_pynvml_names():
    real = importlib.import_module("pynvml")  # importing needs no driver
    for name in ("NVMLError", "NVMLError_NotSupported", "NVMLError_Uninitialized",
                 "NVMLError_DriverNotLoaded", "NVMLError_LibraryNotFound", "nvmlInit",
                 "nvmlShutdown", "nvmlDeviceGetCount", "nvmlDeviceGetHandleByIndex",
                 "nvmlDeviceGetHandleByUUID", "nvmlDeviceGetTotalEnergyConsumption",
                 "nvmlDeviceGetPowerUsage", "nvmlDeviceGetName", "nvmlDeviceGetUUID",
                 "NVML_ERROR_NOT_SUPPORTED"):
        assert hasattr(real, name) and hasattr(fake, name), name
    assert real.NVML_ERROR_NOT_SUPPORTED == fake.NVML_ERROR_NOT_SUPPORTED
    assert issubclass(real.NVMLError_NotSupported, real.NVMLError)
    assert str(real.NVMLError_NotSupported()) == str(fake.NVMLError_NotSupported())


def test_parse_cuda_visible_devices_like_cuda():
    assert parse_cuda_visible_devices(None) is None
    assert parse_cuda_visible_devices("") == []
    assert parse_cuda_visible_devices("2, 0") == ["2", "0"]
    assert parse_cuda_visible_devices("0,2,-1,1") == ["0", "2"]  # stops at the invalid one
    assert parse_cuda_visible_devices("GPU-8932f937,1") == ["GPU-8932f937", "1"]
    assert parse_cuda_visible_devices("MIG-1234/1/0") == ["MIG-1234/1/0"]


def test_cuda_index_maps_to_nvml_index():
    m = lambda c, v: cuda_to_nvml_index(c, parse_cuda_visible_devices(v), UUIDS,  # noqa: E731
                                        env_value=v or "")
    assert m(1, None) == 1
    assert [m(0, "2,0"), m(1, "2,0")] == [2, 0]
    assert m(0, UUIDS[2]) == 2
    assert m(1, "1,GPU-3f7e") == 2                   # unambiguous UUID prefix
    assert m(0, "gpu-8932F937-D72C-4106-c12f-20bd9faed9f6".upper()) == 0
    with pytest.raises(ValueError, match=r"CUDA device 1 is not visible: "
                                         r"CUDA_VISIBLE_DEVICES='0,GPU-89' makes 1 GPU"):
        m(1, "0,GPU-89")                             # ambiguous prefix ends the list
    with pytest.raises(ValueError, match=r"CUDA device 1 is not visible: .*'0,7,1'"):
        m(1, "0,7,1")                                # 7 does not exist: list ends there
    with pytest.raises(ValueError, match=r"CUDA device 3 does not exist: NVML sees 3 GPU"):
        m(3, None)
    with pytest.raises(ValueError, match=r"CUDA device 0 is a MIG instance .*per physical "
                                         r"GPU"):
        m(0, "MIG-aaaa-bbbb")
    with pytest.raises(ValueError, match=r"CUDA device index must be >= 0, got -1"):
        m(-1, None)


# --------------------------------------------------------------------------- counter
def test_reads_only_this_process_gpu_through_cuda_visible_devices(nvml):
    clock = FakeClock(1000.0)
    nvml.reset([fake.FakeGpu(power_w=300.0), fake.FakeGpu(power_w=100.0)], clock=clock)
    src = NvmlSource([0], env={"CUDA_VISIBLE_DEVICES": "1"})
    src.open()
    assert src.device_count == 2
    assert "GPU 1" in src.describe() and "energy counter" in src.describe()
    clock.advance(10.0)
    # GPU 1 only (100 W): the counter refreshes every 0.1 s, so +-0.1 s at each end
    assert src.read()["gpu"] == pytest.approx(1000.0, abs=2 * 0.1 * 100.0)
    clock.advance(0.01)  # shorter than the counter refresh: may read no change, never less
    first = src.read()["gpu"]
    clock.advance(5.0)
    assert src.read()["gpu"] == pytest.approx(1500.0, abs=2 * 0.1 * 100.0)
    assert src.read()["gpu"] >= first
    assert src.health.failures == 0
    src.close()
    assert nvml.STATE.initialized == 0


def test_counter_reset_keeps_total_and_is_counted(nvml, caplog):
    clock = FakeClock(1000.0)
    [gpu] = nvml.reset([fake.FakeGpu(power_w=200.0)], clock=clock).gpus
    src = NvmlSource([0], env={})
    src.open()
    clock.advance(10.0)
    before = src.read()["gpu"]
    assert before == pytest.approx(2000.0, abs=40.0)
    gpu.driver_reload(clock())
    clock.advance(5.0)
    with caplog.at_level(logging.WARNING, logger="shared.energy"):
        after_reset = src.read()["gpu"]
    assert after_reset == pytest.approx(before)  # rebased: nothing lost, nothing invented
    assert src.counter_resets == 1 and src.health.failures == 1
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "GPU 0 energy counter: it went back from" in warning
    assert "a reset reading; the energy since the previous read is not counted" in warning
    assert src.health.coverage < 1.0
    clock.advance(5.0)
    assert src.read()["gpu"] == pytest.approx(before + 1000.0, abs=40.0)


def test_transient_error_keeps_last_value_then_catches_up(nvml):
    clock = FakeClock(1000.0)
    [gpu] = nvml.reset([fake.FakeGpu(power_w=100.0)], clock=clock).gpus
    src = NvmlSource([0], env={})
    src.open()
    clock.advance(2.0)
    good = src.read()["gpu"]
    gpu.fail_reads = 1
    clock.advance(2.0)
    assert src.read()["gpu"] == good
    assert src.health.failures == 1 and "Unknown Error" in src.health.first_error
    clock.advance(2.0)
    assert src.read()["gpu"] == pytest.approx(600.0, abs=20.0)


# --------------------------------------------------------------------------- power fallback
def test_power_fallback_when_counter_not_supported(nvml):
    nvml.reset([fake.FakeGpu(power_w=250.0, has_counter=False, name="Tesla P100")])
    src = NvmlSource.from_env({}, {"nvml_power_period_s": 0.01}, gpu_indices=[0])
    src.open()
    assert "power sampled every 0.01 s" in src.describe()
    sampler = src._sampler
    deadline = time.monotonic() + 5.0
    while src.health.attempts < 15 and time.monotonic() < deadline:
        time.sleep(0.01)
    energy = src.read()["gpu"]
    span = sampler.last_sample_time() - sampler.first_sample_time()
    assert span > 0.1
    # constant power: the trapezoid is exact over the sampled span
    assert energy == pytest.approx(250.0 * span, rel=1e-3)
    src.close()
    assert not sampler._thread.is_alive()


def test_mixed_counter_and_power_gpus_are_summed(nvml):
    clock = FakeClock(1000.0)
    nvml.reset([fake.FakeGpu(power_w=100.0), fake.FakeGpu(power_w=50.0, has_counter=False)],
               clock=clock)
    # a 10 s period: the thread stays idle while the test drives the fallback by hand
    src = NvmlSource([0, 1], env={}, clock=clock, power_period_s=10.0)
    src.open()
    for _ in range(40):
        clock.advance(0.1)
        src._sampler.sample()
    assert src.read()["gpu"] == pytest.approx(400.0 + 200.0, abs=20.0)
    src.close()


# --------------------------------------------------------------------------- unavailable
def test_unavailable_reasons(nvml, monkeypatch):
    nvml.reset([fake.FakeGpu()], init_error=fake.NVMLError_DriverNotLoaded())
    with pytest.raises(SourceUnavailable, match=r"nvml: nvmlInit failed: Driver Not Loaded"):
        NvmlSource([0], env={}).open()

    nvml.reset([fake.FakeGpu(), fake.FakeGpu()])
    with pytest.raises(SourceUnavailable, match=r"nvml: CUDA device 0 is not visible: "
                                                r"CUDA_VISIBLE_DEVICES=''"):
        NvmlSource([0], env={"CUDA_VISIBLE_DEVICES": ""}).open()
    assert nvml.STATE.initialized == 0  # nvmlShutdown after a failed open

    with pytest.raises(SourceUnavailable, match=r"map to the same GPU twice"):
        NvmlSource([0, 1], env={"CUDA_VISIBLE_DEVICES": "1,1"}).open()

    broken = fake.FakeGpu(has_counter=False, fail_reads=1)
    nvml.reset([broken])
    with pytest.raises(SourceUnavailable, match=r"GPU 0 .* has neither an energy counter nor "
                                                r"a readable power figure: Unknown Error"):
        NvmlSource([0], env={}).open()

    monkeypatch.setitem(sys.modules, "pynvml", None)  # not installed
    with pytest.raises(SourceUnavailable, match=r"nvml: cannot import pynvml .*nvidia-ml-py"):
        NvmlSource([0], env={}).open()


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"needs at least one CUDA device index"):
        NvmlSource([])
    with pytest.raises(ValueError, match=r"nvml_power_period_s must be in \(0, 10\] seconds, "
                                         r"got 0"):
        NvmlSource.from_env({}, {"nvml_power_period_s": 0}, gpu_indices=[0])


def test_mixed_gpu_models_warn_about_cuda_order(nvml, caplog):
    nvml.reset([fake.FakeGpu(name="NVIDIA A100-SXM4-80GB"), fake.FakeGpu(name="NVIDIA L4")])
    with caplog.at_level(logging.WARNING, logger="shared.energy"):
        src = NvmlSource([1], env={})
        src.open()
    assert any("CUDA_DEVICE_ORDER" in r.getMessage() for r in caplog.records)
    src.close()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="shared.energy"):
        src = NvmlSource([1], env={"CUDA_DEVICE_ORDER": "PCI_BUS_ID"})
        src.open()
    assert not caplog.records
    src.close()


# --------------------------------------------------------------------------- utilisation
def test_utilisation_is_the_time_mean_of_nvml_samples(nvml):
    """gpu_util_pct: nvmlDeviceGetUtilizationRates sampled on a thread, integrated over time
    by the power integrator and divided by the span: 100% for 2 s then 40% for 2 s gives
    the trapezoid's mean."""
    real = importlib.import_module("pynvml")
    assert hasattr(real, "nvmlDeviceGetUtilizationRates")  # the fake mimics a real name
    clock = FakeClock()
    fake.reset([fake.FakeGpu(util_pct=100)], clock=clock)
    src = NvmlSource([0], env={}, clock=clock)
    src.open()
    try:
        src._util.stop()  # drive the samples by hand with the fake clock
        assert src.utilisation_pct() == 100.0  # one sample: its value
        for util in (100, 100, 40, 40):
            fake.STATE.gpus[0].util_pct = util
            clock.advance(1.0)
            src._util.sample()
        # trapezoids: 100, 100, then (100+40)/2, 40 over 1 s each -> 310 / 4
        assert src.utilisation_pct() == pytest.approx(77.5)
    finally:
        src.close()


def test_no_utilisation_counter_leaves_gpu_util_out(nvml):
    clock = FakeClock()
    fake.reset([fake.FakeGpu(has_util=False)], clock=clock)
    src = NvmlSource([0], env={}, clock=clock)
    src.open()
    try:
        assert src.read()["gpu"] >= 0.0  # energy is measured all the same
        assert src.utilisation_pct() is None
    finally:
        src.close()
