"""Energy core: PowerSampler integration, EnergyMeter (windows, dedup, failures), source
selection, and the cost of one meter.read()."""
from __future__ import annotations

import importlib.util
import logging
import math
import sys
import time
import timeit
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from shared.energy.meter import EnergyMeter
from shared.energy.select import SOURCE_ORDER, build_sources, parse_spec
from shared.energy.sources.base import EnergySource, SourceHealth, SourceUnavailable
from shared.energy.sources.sampling import PowerSampler, SampledPowerSource

_spec = importlib.util.spec_from_file_location(
    "energy_fakes_loader", Path(__file__).resolve().parent / "fakes" / "loader.py")
_loader = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_loader)
FAKES, load_fake, FakeClock = _loader.FAKES, _loader.load_fake, _loader.FakeClock


# --------------------------------------------------------------------------- PowerSampler
def scripted(values: List[object]):
    """A read function returning the scripted values in order (an Exception is raised)."""
    it = iter(values)

    def read() -> float:
        v = next(it)
        if isinstance(v, BaseException):
            raise v
        return v  # type: ignore[return-value]
    return read


def test_sampler_trapezoid_is_exact_for_a_ramp():
    clock = FakeClock(0.0)
    s = PowerSampler(1.0, scripted([100.0, 200.0, 300.0, 400.0]), SourceHealth(), "t",
                     clock=clock)
    for _ in range(4):
        s.sample()
        clock.advance(1.0)
    # (100+200)/2 + (200+300)/2 + (300+400)/2
    assert s.energy_j() == pytest.approx(750.0)
    assert s.first_sample_time() == 0.0 and s.last_sample_time() == 3.0


def test_sampler_bridges_short_gap_and_counts_the_failure():
    clock, health = FakeClock(0.0), SourceHealth()
    s = PowerSampler(1.0, scripted([100.0, OSError("bmc busy"), 100.0]), health, "t",
                     clock=clock)
    for _ in range(3):
        s.sample()
        clock.advance(1.0)
    assert s.energy_j() == pytest.approx(200.0)  # 2 s at 100 W, bridged over one failure
    assert (health.attempts, health.failures) == (3, 1)
    assert health.first_error == "bmc busy"
    assert s.bridged_s() == pytest.approx(2.0)  # the interval that stood in for the failure


def test_a_sampler_that_answered_once_then_failed_has_measured_nothing():
    """One good sample, then failures shorter than the gap limit: no interval was measured,
    and coverage says 0 (not 1.0: a BMC dead after its start-up probe must not look measured
    at the first report, however soon that comes)."""
    clock = FakeClock(0.0)
    s = PowerSampler(1.0, scripted([100.0, OSError("down"), OSError("down")]), SourceHealth(),
                     "t", clock=clock)
    assert s.coverage() == 1.0  # nothing attempted: nothing known to be missing
    s.sample()
    clock.advance(1.0)
    assert s.coverage() == 1.0  # one good sample, nothing failed yet
    s.sample()
    clock.advance(0.5)
    assert s.coverage() == 0.0 and s.energy_j() == 0.0
    s.sample()
    assert s.coverage() == 0.0


def test_sampler_without_failures_bridges_nothing():
    clock = FakeClock(0.0)
    s = PowerSampler(1.0, lambda: 100.0, SourceHealth(), "t", clock=clock)
    for _ in range(4):
        s.sample()
        clock.advance(1.0)
    assert s.bridged_s() == 0.0 and s.energy_j() == pytest.approx(300.0)


def test_sampler_bridges_a_long_gap_and_says_how_long(caplog):
    clock, health = FakeClock(0.0), SourceHealth()
    values: List[object] = [100.0] + [TimeoutError("timeout")] * 4 + [100.0, 100.0]
    s = PowerSampler(1.0, scripted(values), health, "bmc", clock=clock)
    with caplog.at_level(logging.WARNING, logger="shared.energy"):
        for _ in range(len(values)):
            s.sample()
            clock.advance(1.0)
    # t=0 good, t=1..4 failed, t=5 good (gap 5 s > max_gap 3 s: bridged), t=6 good. Leaving
    # the gap out (as before) gave 100 J, a sixth of the truth.
    assert s.energy_j() == pytest.approx(600.0)
    assert s.bridged_s() == pytest.approx(5.0)
    assert health.coverage < 0.5  # bridged is not measured
    # logged once, not once per failure
    assert sum("bmc failed" in r.getMessage() for r in caplog.records) == 1


def test_sampler_bridges_with_a_straight_line():
    clock = FakeClock(0.0)
    s = PowerSampler(1.0, scripted([100.0, OSError("x"), OSError("x"), OSError("x"), 300.0]),
                     SourceHealth(), "t", clock=clock)
    for _ in range(5):
        s.sample()
        clock.advance(1.0)
    assert s.energy_j() == pytest.approx(0.5 * (100.0 + 300.0) * 4.0)


def test_a_run_that_ends_inside_a_gap_stops_at_its_last_good_sample_and_says_so(caplog):
    clock = FakeClock(0.0)
    s = PowerSampler(1.0, scripted([100.0, 100.0, OSError("down"), OSError("down")]),
                     SourceHealth(), "bmc", clock=clock)
    for _ in range(4):
        s.sample()
        clock.advance(1.0)
    with caplog.at_level(logging.WARNING, logger="shared.energy"):
        s.stop()
        s.stop()  # once in the log
    assert s.energy_j() == pytest.approx(100.0)  # nothing extrapolated past t=1
    assert s.bridged_s() == 0.0
    [line] = [r.getMessage() for r in caplog.records if "the run ended" in r.getMessage()]
    assert "bmc" in line and "3.0 s after its last good sample" in line

    caplog.clear()
    fine = PowerSampler(1.0, lambda: 5.0, SourceHealth(), "t", clock=clock)
    fine.sample()
    with caplog.at_level(logging.WARNING, logger="shared.energy"):
        fine.stop()
    assert not caplog.records


@pytest.mark.parametrize("bad,why", [(float("nan"), "nan W is not a number"),
                                     (-5.0, "-5 W from a running machine"),
                                     (0.0, "0 W from a running machine"),
                                     (float("inf"), "inf W is not a number"),
                                     (25_000.0, "25000 W, more than the 20000 W ceiling")])
def test_sampler_rejects_implausible_readings(bad, why, caplog):
    clock, health = FakeClock(0.0), SourceHealth()
    s = PowerSampler(1.0, scripted([10.0, bad, 10.0, bad, 10.0]), health, "t", clock=clock)
    with caplog.at_level(logging.WARNING, logger="shared.energy"):
        for _ in range(5):
            s.sample()
            clock.advance(1.0)
    assert health.failures == 2
    assert f"implausible reading ({why})" in health.first_error
    # warned once, with the value; the interval around it is bridged, not measured
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and why in warnings[0]
    assert s.energy_j() == pytest.approx(40.0)  # bridged at the power on both sides
    assert s.bridged_s() == pytest.approx(4.0)
    assert s.coverage() == 1.0  # one sample missed among good ones: at the source's resolution


def test_sampler_thread_integrates_real_time_and_stops_promptly():
    s = PowerSampler(0.01, lambda: 50.0, SourceHealth(), "t")
    s.start()
    deadline = time.monotonic() + 5.0
    while s.health.attempts < 10 and time.monotonic() < deadline:
        time.sleep(0.01)
    s.stop()
    span = s.last_sample_time() - s.first_sample_time()
    assert s.health.attempts >= 10
    assert s.energy_j() == pytest.approx(50.0 * span, rel=1e-9)

    slow = PowerSampler(30.0, lambda: 1.0, SourceHealth(), "slow")
    slow.start()
    t0 = time.monotonic()
    slow.stop()
    assert time.monotonic() - t0 < 1.0  # Event.wait, not a 30 s sleep


class _StripSource(SampledPowerSource):
    """A power-only source built on the base: only ``read_watts`` and ``open`` are its own."""

    name, covers, summary = "strip", ("dram",), "a scripted power strip"
    timeout_s = 0.5

    def __init__(self, values, clock):
        super().__init__()
        self._read, self._clock = scripted(values), clock

    def read_watts(self) -> float:
        return self._read()

    def open(self) -> None:
        self.start_sampling(3600.0, clock=self._clock)  # the test samples by hand


def test_sampled_power_source_base_integrates_reports_and_stops():
    clock = FakeClock(0.0)
    src = _StripSource([100.0, 200.0, OSError("strip busy"), 200.0], clock)
    assert src.read() == {"dram": 0.0} and src.sampler is None
    src.open()  # the first sample, at t=0
    for _ in range(3):
        clock.advance(1.0)
        src.sampler.sample()
    # 150 J (0-1 s) + 200 J x 2 s bridged over the failed sample; reported under covers[0]
    assert src.read() == {"dram": pytest.approx(550.0)}
    assert src.health.failures == 1 and src.health.attempts == 4
    with pytest.raises(RuntimeError, match=r"strip: sampling already started"):
        src.open()
    t0 = time.monotonic()
    src.close()
    src.close()  # twice is fine
    assert time.monotonic() - t0 < 1.0 and not src.sampler._thread.is_alive()
    assert src.read() == {"dram": pytest.approx(550.0)}  # the integral stays readable


def test_sampled_power_source_needs_read_watts():
    class NoReading(SampledPowerSource):
        name, covers = "x", ("node",)

        def open(self) -> None:
            self.start_sampling(1.0)

    with pytest.raises(TypeError, match=r"abstract method.*read_watts"):
        NoReading()


def test_sampler_rejects_bad_periods():
    with pytest.raises(ValueError, match=r"ipmi: sample period must be a positive number.*-1"):
        PowerSampler(-1, lambda: 1.0, SourceHealth(), "ipmi")
    with pytest.raises(ValueError, match=r"max_gap_s must be >= the sample period"):
        PowerSampler(1.0, lambda: 1.0, SourceHealth(), "ipmi", max_gap_s=0.5)
    s = PowerSampler(1.0, lambda: 1.0, SourceHealth(), "x")
    s.start()
    with pytest.raises(RuntimeError, match="already started"):
        s.start()
    s.stop()


# --------------------------------------------------------------------------- EnergyMeter
class FakeSource(EnergySource):
    """A source whose cumulative joules the test sets directly."""

    def __init__(self, name: str, values: Dict[str, float], *, scope: str = "node",
                 unavailable: Optional[str] = None) -> None:
        super().__init__()
        self.name = name
        self.scope = scope  # type: ignore[assignment]
        self.values = dict(values)
        self.unavailable = unavailable
        self.fail_next = False
        self.closed = 0

    def open(self) -> None:
        if self.unavailable:
            raise SourceUnavailable(self.unavailable)

    def read(self) -> Dict[str, float]:
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("driver exploded")
        self.health.record_ok()
        return dict(self.values)

    def close(self) -> None:
        self.closed += 1


def test_meter_sums_components_and_reports_per_source():
    clock = FakeClock()
    gpu = FakeSource("nvml", {"gpu": 0.0}, scope="device")
    rapl = FakeSource("rapl", {"cpu": 0.0, "dram": 0.0})
    meter = EnergyMeter([gpu, rapl], clock=clock).start()
    rapl.values.update(cpu=40.0, dram=5.0)
    gpu.values["gpu"] = 300.0
    clock.advance(10.0)
    snap = meter.read()
    assert snap.duration_s == pytest.approx(10.0)
    assert snap.joules == {"gpu": 300.0, "cpu": 40.0, "dram": 5.0}
    assert snap.per_source == {"nvml": {"gpu": 300.0}, "rapl": {"cpu": 40.0, "dram": 5.0}}
    assert snap.sources == ["nvml", "rapl"]
    assert snap.coverage == {"nvml": 1.0, "rapl": 1.0}
    meter.close()
    assert gpu.closed == 1 and rapl.closed == 1


class _SlowToOpen(EnergySource):
    """A counter (50 W on "cpu") whose open() takes 8 s, during which the fast sampling
    source's thread keeps sampling (done by hand here, with the fake clock)."""

    name, covers = "slowipmi", ("cpu",)

    def __init__(self, clock: FakeClock, fast: "_FastSampled") -> None:
        super().__init__()
        self._clock, self._fast = clock, fast
        self._opened_at: Optional[float] = None

    def open(self) -> None:
        for _ in range(80):
            self._clock.advance(0.1)
            self._fast.sampler.sample()
        self._opened_at = self._clock()

    def read(self) -> Dict[str, float]:
        return {"cpu": 50.0 * (self._clock() - self._opened_at)}


class _FastSampled(SampledPowerSource):
    name, covers = "fastbmc", ("node",)

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self._clock = clock

    def read_watts(self) -> float:
        return 100.0

    def open(self) -> None:
        self.start_sampling(3600.0, clock=self._clock)  # the test samples for the thread


def test_every_source_is_measured_from_one_instant():
    """Issue 12, item 1: a sampling source opened first must not count the seconds another
    source took to open (+61% measured with a 10 s IPMI open)."""
    clock = FakeClock(0.0)
    fast = _FastSampled(clock)
    slow = _SlowToOpen(clock, fast)
    meter = EnergyMeter([fast, slow], clock=clock).start()
    for _ in range(30):
        clock.advance(0.1)
        fast.sampler.sample()
    snap = meter.read()
    assert snap.duration_s == pytest.approx(3.0)
    true_power = 100.0 + 50.0
    assert sum(snap.joules.values()) / snap.duration_s == pytest.approx(true_power, rel=0.01)
    assert snap.joules["node"] == pytest.approx(300.0)
    meter.close()


def test_meter_phases_tile_the_run_and_sum_to_the_total():
    clock = FakeClock()
    src = FakeSource("rapl", {"cpu": 7.0, "dram": 1.0})  # counted from the start: 7 is before
    meter = EnergyMeter([src], clock=clock).start()
    assert meter.phase == "setup"
    src.values.update(cpu=17.0, dram=2.0)
    meter.mark_phase("train")
    src.values.update(cpu=57.0, dram=6.0)
    meter.mark_phase("validation")
    src.values.update(cpu=67.0)
    meter.mark_phase("train")
    src.values.update(cpu=77.0)
    # a checkpoint known only at its end: the segment since the last mark is its
    meter.mark_phase("train", ended="checkpoint")
    src.values.update(cpu=80.0)  # running: counted in train at every read
    snap = meter.read()
    assert snap.joules == {"cpu": pytest.approx(73.0), "dram": pytest.approx(5.0)}
    assert snap.phases == {
        "setup": {"cpu": pytest.approx(10.0), "dram": pytest.approx(1.0)},
        "train": {"cpu": pytest.approx(43.0), "dram": pytest.approx(4.0)},
        "validation": {"cpu": pytest.approx(10.0), "dram": pytest.approx(0.0)},
        "checkpoint": {"cpu": pytest.approx(10.0), "dram": pytest.approx(0.0)},
    }
    for comp, total in snap.joules.items():
        assert sum(p.get(comp, 0.0) for p in snap.phases.values()) == pytest.approx(total)


def test_meter_windows_zeus_style():
    clock = FakeClock()
    src = FakeSource("nvml", {"gpu": 0.0})
    meter = EnergyMeter([src], clock=clock).start()
    src.values["gpu"] = 100.0
    clock.advance(1.0)
    meter.begin_window("epoch")
    src.values["gpu"] = 350.0
    clock.advance(2.5)
    w = meter.end_window("epoch")
    assert w.name == "epoch"
    assert w.duration_s == pytest.approx(2.5)
    assert w.joules == {"gpu": pytest.approx(250.0)}
    assert w.total_j == pytest.approx(250.0)
    with pytest.raises(ValueError, match=r"energy window 'epoch' was never begun"):
        meter.end_window("epoch")
    meter.begin_window("a")
    with pytest.raises(ValueError, match=r"energy window 'a' is already open"):
        meter.begin_window("a")


def test_meter_drops_unavailable_sources_with_one_line(caplog):
    ok = FakeSource("nvml", {"gpu": 1.0})
    missing = FakeSource("rapl", {"cpu": 0.0}, unavailable="no powercap here")
    with caplog.at_level(logging.INFO, logger="shared.energy"):
        meter = EnergyMeter([ok, missing]).start()
    assert [s.name for s in meter.active_sources] == ["nvml"]
    lines = [r for r in caplog.records if "rapl unavailable" in r.getMessage()]
    assert len(lines) == 1 and "no powercap here" in lines[0].getMessage()
    assert lines[0].levelno == logging.WARNING  # explicit by default
    assert any("energy sources active: nvml" in r.getMessage() for r in caplog.records)

    caplog.clear()
    auto = build_sources("auto", env={"ENERGY_RAPL_ROOT": "/nonexistent/powercap"},
                         node_reader=True)
    with caplog.at_level(logging.INFO, logger="shared.energy"):
        EnergyMeter(auto).start()
    [line] = [r for r in caplog.records if "rapl unavailable" in r.getMessage()]
    assert line.levelno == logging.INFO  # auto-detection: not a warning
    assert "/nonexistent/powercap does not exist" in line.getMessage()


def test_meter_counts_a_component_once_when_two_sources_measure_it(caplog):
    redfish = FakeSource("redfish", {"node": 0.0})
    ipmi = FakeSource("ipmi", {"node": 0.0})
    rapl = FakeSource("rapl", {"cpu": 0.0})
    with caplog.at_level(logging.WARNING, logger="shared.energy"):
        meter = EnergyMeter([rapl, redfish, ipmi]).start()
    assert [s.name for s in meter.active_sources] == ["rapl", "redfish"]
    assert ipmi.closed == 1
    assert any("ipmi also measures 'node', already measured by redfish" in r.getMessage()
               for r in caplog.records)
    redfish.values["node"], ipmi.values["node"] = 1000.0, 990.0
    assert meter.read().joules["node"] == 1000.0


def test_meter_survives_a_source_that_raises():
    src = FakeSource("nvml", {"gpu": 0.0})
    meter = EnergyMeter([src]).start()
    src.values["gpu"] = 10.0
    assert meter.read().joules["gpu"] == 10.0
    src.values["gpu"] = 20.0
    src.fail_next = True
    snap = meter.read()
    assert snap.joules["gpu"] == 10.0  # last good value
    assert snap.coverage["nvml"] < 1.0
    assert "driver exploded" in src.health.first_error
    assert meter.read().joules["gpu"] == 20.0


def test_meter_misuse_is_reported():
    meter = EnergyMeter([])
    with pytest.raises(RuntimeError, match=r"read\(\) before start\(\)"):
        meter.read()
    meter.start()
    assert meter.read().joules == {}
    with pytest.raises(RuntimeError, match=r"start\(\) called twice"):
        meter.start()


# --------------------------------------------------------------------------- selection
def test_parse_spec_forms_and_env_override():
    assert parse_spec("auto", {}) == (list(SOURCE_ORDER), False)
    assert parse_spec("rapl, nvml", {}) == (["nvml", "rapl"], True)  # priority order
    assert parse_spec(["IPMI"], {}) == (["ipmi"], True)
    assert parse_spec("none", {}) == ([], True)
    assert parse_spec("auto", {"ENERGY_SOURCES": "rapl"}) == (["rapl"], True)
    assert parse_spec("rapl", {"ENERGY_SOURCES": "  "}) == (["rapl"], True)


def test_parse_spec_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match=r"hyperparameter: unknown energy source\(s\) "
                                         r"\['nvlm'\].*valid: .*nvml, rapl, redfish, ipmi, "
                                         r"prometheus"):
        parse_spec("nvlm,rapl", {})
    with pytest.raises(ValueError, match=r"ENERGY_SOURCES: unknown energy source\(s\) "
                                         r"\['powermeter'\]"):
        parse_spec("auto", {"ENERGY_SOURCES": "powermeter"})
    with pytest.raises(ValueError, match=r"unknown energy source\(s\) \['auto'\]"):
        parse_spec("auto,rapl", {})
    with pytest.raises(ValueError, match=r"expected 'auto', a comma-separated string or a "
                                         r"list of names, got int 3"):
        parse_spec(3, {})


def test_build_sources_respects_device_and_node_scope(caplog, tmp_path):
    env = {"ENERGY_RAPL_ROOT": str(tmp_path)}
    names = lambda **kw: [s.name for s in build_sources("auto", env=env, **kw)]  # noqa: E731
    assert names(gpu_indices=[0], node_reader=True) == ["nvml", "rapl"]
    assert names(gpu_indices=[1], node_reader=False) == ["nvml"]
    assert names(gpu_indices=(), node_reader=True) == ["rapl"]
    # auto does not fork ipmitool unless the site configured it
    assert "ipmi" not in names(gpu_indices=(), node_reader=True)
    env["ENERGY_IPMI_CMD"] = "ipmitool -I lanplus -H bmc dcmi power reading"
    assert names(gpu_indices=(), node_reader=True) == ["rapl", "ipmi"]
    assert names(gpu_indices=(), node_reader=False) == []
    with caplog.at_level(logging.WARNING, logger="shared.energy"):
        out = build_sources("nvml", env={}, gpu_indices=(), node_reader=True)
    assert out == [] and out.explicit
    assert any("nvml requested, but this process uses no GPU" in r.getMessage()
               for r in caplog.records)


def test_build_sources_auto_skips_unconfigured_network_sources(tmp_path):
    env = {"ENERGY_RAPL_ROOT": str(tmp_path)}
    built = build_sources("auto", env=env, node_reader=True)
    assert [s.name for s in built] == ["rapl"] and not built.explicit
    # explicitly requested ipmi uses the default in-band command
    [ipmi] = build_sources("ipmi", env={}, node_reader=True)
    assert ipmi.argv == ["ipmitool", "dcmi", "power", "reading"]


def test_build_sources_network_sources_when_configured(caplog):
    for module in ("redfish", "prometheus"):
        if importlib.util.find_spec(f"shared.energy.sources.{module}") is None:
            pytest.skip(f"shared/energy/sources/{module}.py not present yet")
    env = {"ENERGY_REDFISH_URL": "http://127.0.0.1:9/redfish/v1",
           "ENERGY_PROMETHEUS_URL": "http://127.0.0.1:9",
           "ENERGY_PROMETHEUS_QUERY": "node_power_watts{instance=\"{node}\"}"}
    built = build_sources("auto", env=env, node_reader=True, options={})
    assert [s.name for s in built][-2:] == ["redfish", "prometheus"]
    assert [type(s).__name__ for s in built][-2:] == ["RedfishSource", "PrometheusSource"]
    # explicitly asked for, not configured: a WARNING that says why
    with caplog.at_level(logging.WARNING, logger="shared.energy"):
        assert build_sources("redfish", env={}, node_reader=True) == []
    assert any("redfish unavailable: ENERGY_REDFISH_URL is not set" in r.getMessage()
               and r.levelno == logging.WARNING for r in caplog.records)


# --------------------------------------------------------------------------- overhead
def test_meter_read_cost_with_rapl_and_nvml(tmp_path, monkeypatch, capsys):
    """Cost of one meter.read() with RAPL (2 packages + 2 DRAM) and NVML (1 GPU, counter).
    Run with -s to see the figure."""
    nvml = load_fake("pynvml_fake")
    powercap = load_fake("powercap").FakePowercap(tmp_path / "powercap")
    for n in (0, 1):
        powercap.add_zone(f"intel-rapl:{n}", f"package-{n}")
        powercap.add_zone(f"intel-rapl:{n}:0", "core")
        powercap.add_zone(f"intel-rapl:{n}:1", "dram")
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    nvml.reset([nvml.FakeGpu(power_w=300.0)])
    env = {"ENERGY_RAPL_ROOT": str(powercap.root)}
    meter = EnergyMeter(build_sources("nvml,rapl", env=env, gpu_indices=[0],
                                      node_reader=True)).start()
    assert meter.read().sources == ["nvml", "rapl"]
    n = 500
    per_read = min(timeit.repeat(meter.read, number=n, repeat=3)) / n
    meter.close()
    with capsys.disabled():
        print(f"\n[energy overhead] meter.read() with rapl (4 domains) + nvml (1 GPU, fake): "
              f"{per_read * 1e6:.1f} us per read")
    assert per_read < 5e-3  # a report every few seconds at most: far below 0.5% of a step
    assert math.isfinite(per_read)


def test_meter_skips_a_source_that_reports_nothing(caplog):
    empty = FakeSource("odd", {})
    with caplog.at_level(logging.WARNING, logger="shared.energy"):
        meter = EnergyMeter([empty]).start()
    assert meter.active_sources == [] and empty.closed == 1
    assert any("odd opened but reports no component" in r.getMessage() for r in caplog.records)
