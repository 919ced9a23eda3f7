"""RAPL source against a fake powercap tree: domains, wraps, the poll thread, failures."""
from __future__ import annotations

import errno
import importlib.util
import logging
import time
from pathlib import Path

import pytest

import shared.energy.sources.rapl as rapl_mod
from shared.energy.meter import EnergyMeter
from shared.energy.sources.base import SourceUnavailable
from shared.energy.sources.rapl import RaplSource, wrap_delta_uj

_spec = importlib.util.spec_from_file_location(
    "energy_fakes_loader", Path(__file__).resolve().parent / "fakes" / "loader.py")
_loader = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_loader)
FAKES, load_fake, FakeClock = _loader.FAKES, _loader.load_fake, _loader.FakeClock


FakePowercap = load_fake("powercap").FakePowercap


@pytest.fixture()
def server_tree(tmp_path: Path):
    """A two-socket Intel server: packages, core/uncore/dram subzones, plus decoys."""
    pc = FakePowercap(tmp_path / "powercap")
    for n in (0, 1):
        pc.add_zone(f"intel-rapl:{n}", f"package-{n}", energy_uj=123_456_789 * (n + 1))
        pc.add_zone(f"intel-rapl:{n}:0", "core")
        pc.add_zone(f"intel-rapl:{n}:1", "uncore")
        pc.add_zone(f"intel-rapl:{n}:2", "dram", max_uj=65_532_610_987)
    pc.add_zone("intel-rapl:2", "psys")  # platform domain, contains the packages
    mmio = pc.root / "intel-rapl-mmio:0"  # MMIO copy of package-0 on client parts
    mmio.mkdir()
    (mmio / "name").write_text("package-0\n")
    (mmio / "energy_uj").write_text("999\n")
    (mmio / "max_energy_range_uj").write_text("262143328850\n")
    return pc


def test_counts_packages_and_dram_only(server_tree):
    pc = server_tree
    clock = FakeClock()
    src = RaplSource(pc.root, poll_below_s=1.0, clock=clock)  # no poll thread in this test
    src.open()
    assert src.read() == {"cpu": 0.0, "dram": 0.0}
    clock.advance(1.0)  # at most 120 W a domain: a power the domains can draw
    pc.advance("intel-rapl:0", 120.0)
    pc.advance("intel-rapl:1", 80.0)
    pc.advance("intel-rapl:0:2", 15.0)
    pc.advance("intel-rapl:1:2", 5.0)
    for decoy in ("intel-rapl:0:0", "intel-rapl:0:1", "intel-rapl:2"):
        pc.advance(decoy, 1000.0)  # inside the packages: must not be added again
    got = src.read()
    assert got["cpu"] == pytest.approx(200.0, abs=1e-5)
    assert got["dram"] == pytest.approx(20.0, abs=1e-5)
    assert src.health.failures == 0
    text = src.describe()
    assert "intel-rapl:0 (package-0)" in text and "intel-rapl:1:2 (dram)" in text
    assert "psys" not in text and "mmio" not in text and "core" not in text
    src.close()


def test_amd_tree_has_cpu_without_dram(tmp_path):
    pc = FakePowercap(tmp_path)
    pc.add_zone("intel-rapl:0", "package-0")
    pc.add_zone("intel-rapl:0:0", "core")
    clock = FakeClock()
    src = RaplSource(pc.root, poll_below_s=1.0, clock=clock)
    src.open()
    clock.advance(1.0)
    pc.advance("intel-rapl:0", 42.0)
    assert src.read() == {"cpu": pytest.approx(42.0, abs=1e-5)}  # no "dram": not measured


def test_wrap_rule_is_exact():
    mx = 262_143_328_850
    unit = mx / (2**32 - 1)  # one hardware energy unit (~61 uJ)
    assert wrap_delta_uj(100, 250, mx) == 150
    assert wrap_delta_uj(mx - 10, 5, mx) == pytest.approx(15 + unit, rel=1e-12)
    assert wrap_delta_uj(mx, 0, mx) == pytest.approx(unit, rel=1e-12)


def test_wrap_between_reads(tmp_path):
    pc = FakePowercap(tmp_path)
    pc.add_zone("intel-rapl:0", "package-0", max_uj=1_000_000, energy_uj=900_000)
    clock = FakeClock()
    # 0.1 W ceiling: a 1 J counter wraps every 10 s, "long" next to poll_below_s: no thread
    src = RaplSource(pc.root, max_power_w=0.1, poll_below_s=5.0, clock=clock)
    src.open()
    assert src.poll_period_s is None
    clock.advance(5.0)
    pc.advance("intel-rapl:0", 0.25)  # crosses the 1 J range at 0.05 W: a plausible wrap
    assert src.read()["cpu"] == pytest.approx(0.25, abs=2e-6)
    clock.advance(5.0)
    pc.advance("intel-rapl:0", 0.5)
    assert src.read()["cpu"] == pytest.approx(0.75, abs=2e-6)
    assert src.health.failures == 0 and src.resets == 0


def _wait_for_poll(src: RaplSource, seen: int) -> None:
    # Two completed polls after the write: the first may have read the file before it.
    deadline = time.monotonic() + 3.0
    while src.polls < seen + 2 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert src.polls >= seen + 2, "the poll thread did not run"


def test_poll_thread_catches_repeated_wraps(tmp_path, caplog):
    pc = FakePowercap(tmp_path)
    pc.add_zone("intel-rapl:0", "package-0", max_uj=2_000_000)  # 2 J range
    # at 10 W a 2 J counter wraps every 0.2 s: poll every 0.05 s
    with caplog.at_level(logging.INFO, logger="shared.energy"):
        src = RaplSource(pc.root, max_power_w=10.0)
        src.open()
    assert src.fastest_wrap_s() == pytest.approx(0.2)
    assert src.poll_period_s == pytest.approx(0.05)
    assert any("can wrap every 0.2 s at 10 W; polling every 0.05 s" in r.getMessage()
               for r in caplog.records)
    # 16 x 0.4 J = 6.4 J: the counter wraps 3 times, never read by us. 0.4 J per poll
    # period (>= 0.05 s) is at most 8 W, within the 10 W ceiling: each drop is a plausible
    # wrap, not a reset.
    for _ in range(16):
        seen = src.polls
        pc.advance("intel-rapl:0", 0.4)
        _wait_for_poll(src, seen)
    assert src.read()["cpu"] == pytest.approx(6.4, abs=1e-5)
    assert src.resets == 0
    src.close()
    assert src._thread is None


def test_without_polling_a_double_wrap_is_lost(tmp_path):
    """Why the poll thread exists: two wraps between reads are invisible."""
    pc = FakePowercap(tmp_path)
    pc.add_zone("intel-rapl:0", "package-0", max_uj=2_000_000)
    src = RaplSource(pc.root, max_power_w=10.0, poll_below_s=0.1)  # 0.2 s wrap > 0.1 s
    src.open()
    assert src.poll_period_s is None
    for _ in range(5):
        pc.advance("intel-rapl:0", 1.5)
    assert src.read()["cpu"] < 7.5 - 1.0


def test_default_ranges_poll_slowly(server_tree):
    src = RaplSource(server_tree.root)  # real ranges, 1 kW ceiling, 1 h threshold
    src.open()
    # the DRAM range (65.5 kJ) wraps first: 65.5 s at 1 kW, polled every ~16 s
    assert src.poll_period_s == pytest.approx(65_532.610987 / 1000.0 / 4.0)
    src.close()


def test_permission_denied_says_how_to_fix(server_tree, monkeypatch, caplog):
    real = rapl_mod._read_text

    def denied(path: Path) -> str:
        if path.name == "energy_uj":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(rapl_mod, "_read_text", denied)
    with pytest.raises(SourceUnavailable, match=r"rapl: cannot read .*intel-rapl:0/energy_uj: "
                                                r"permission denied.*root only since Linux "
                                                r"5\.10.*chmod a\+r.*udev rule"):
        RaplSource(server_tree.root).open()
    with caplog.at_level(logging.INFO, logger="shared.energy"):
        meter = EnergyMeter([RaplSource(server_tree.root)]).start()
    assert meter.active_sources == []
    assert sum("rapl unavailable" in r.getMessage() for r in caplog.records) == 1


def test_bad_trees_name_the_bad_file(tmp_path):
    with pytest.raises(SourceUnavailable, match=r"rapl: .*missing does not exist"):
        RaplSource(tmp_path / "missing").open()
    pc = FakePowercap(tmp_path / "a")
    pc.add_zone("intel-rapl:0", "psys")
    with pytest.raises(SourceUnavailable, match=r"no package domain .* under .*a$"):
        RaplSource(pc.root).open()
    pc = FakePowercap(tmp_path / "b")
    pc.add_zone("intel-rapl:0", "package-0", max_uj=0)
    with pytest.raises(SourceUnavailable, match=r"intel-rapl:0/max_energy_range_uj holds 0, "
                                                r"expected a positive range"):
        RaplSource(pc.root).open()
    pc = FakePowercap(tmp_path / "c")
    pc.add_zone("intel-rapl:0", "package-0")
    pc.set_raw("intel-rapl:0", "n/a\n")
    with pytest.raises(SourceUnavailable, match=r"intel-rapl:0/energy_uj holds 'n/a', "
                                                r"expected an integer"):
        RaplSource(pc.root).open()
    with pytest.raises(ValueError, match=r"rapl_max_power_w must be a positive number, got -3"):
        RaplSource.from_env({}, {"rapl_max_power_w": -3})


def test_transient_garbage_is_counted_and_self_corrects(tmp_path):
    pc = FakePowercap(tmp_path)
    pc.add_zone("intel-rapl:0", "package-0")
    src = RaplSource.from_env({"ENERGY_RAPL_ROOT": str(pc.root)}, {"rapl_poll_below_s": 1.0})
    clock = src._clock = FakeClock()
    src.open()
    clock.advance(1.0)
    pc.advance("intel-rapl:0", 10.0)
    assert src.read()["cpu"] == pytest.approx(10.0, abs=1e-5)
    clock.advance(1.0)
    pc.advance("intel-rapl:0", 5.0)
    pc.set_raw("intel-rapl:0", "")  # a failed read
    assert src.read()["cpu"] == pytest.approx(10.0, abs=1e-5)  # last good total
    assert src.health.failures == 1 and src.health.coverage < 1.0
    clock.advance(1.0)
    pc.restore("intel-rapl:0")
    # cumulative counter: the energy during the failure is not lost
    assert src.read()["cpu"] == pytest.approx(15.0, abs=1e-5)


def _reset_counter(pc, zone: str, value_uj: int) -> None:
    """What a BIOS/firmware reset or a write to the file does: the counter jumps to a value
    with no energy behind it (the fake's truth is unchanged)."""
    pc._value[zone] = float(value_uj)
    pc._write(zone)


@pytest.mark.parametrize("drop_to", ["zero", "minus_500_j"])
def test_counter_reset_is_not_a_wrap(tmp_path, caplog, drop_to):
    """Issue 13.1: a reset to 0 (or a step back of 500 J) read as a wrap invented ~72.5 Wh
    in one report interval. Now the interval is not counted, one warning names the counter,
    and coverage drops."""
    pc = FakePowercap(tmp_path)
    pc.add_zone("intel-rapl:0", "package-0", energy_uj=10_000_000_000)  # 10 kJ, real range
    clock = FakeClock()
    src = RaplSource(pc.root, clock=clock, poll_below_s=1.0)  # no poll thread: reads drive it
    src.open()
    clock.advance(60.0)
    pc.advance("intel-rapl:0", 12_000.0)  # 200 W for 60 s
    assert src.read()["cpu"] == pytest.approx(12_000.0, abs=1e-3)
    clock.advance(60.0)
    _reset_counter(pc, "intel-rapl:0",
                   0 if drop_to == "zero" else 22_000_000_000 - 500_000_000)
    with caplog.at_level(logging.WARNING, logger="shared.energy"):
        after = src.read()["cpu"]
        assert after == pytest.approx(12_000.0, abs=1e-3)  # nothing invented
        clock.advance(60.0)
        pc.advance("intel-rapl:0", 6_000.0)  # counting resumes from the new value
        assert src.read()["cpu"] == pytest.approx(18_000.0, abs=1e-3)
        clock.advance(60.0)
        _reset_counter(pc, "intel-rapl:0", 0)  # a second reset: counted, not logged again
        src.read()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "intel-rapl:0/energy_uj: it went back from" in warnings[0]
    assert "more than the 1000 W the domain can draw (rapl_max_power_w = 1000 W), a reset " \
           "reading; the energy since the previous read is not counted" in warnings[0]
    assert src.resets == 2
    assert src.health.coverage == pytest.approx(2 / 4)


def test_counter_reset_in_one_domain_warns_for_each_domain(tmp_path, caplog):
    pc = FakePowercap(tmp_path)
    pc.add_zone("intel-rapl:0", "package-0", energy_uj=5_000_000_000)
    pc.add_zone("intel-rapl:1", "package-1", energy_uj=5_000_000_000)
    clock = FakeClock()
    src = RaplSource(pc.root, clock=clock, poll_below_s=1.0)
    src.open()
    clock.advance(30.0)
    _reset_counter(pc, "intel-rapl:0", 0)
    _reset_counter(pc, "intel-rapl:1", 0)
    with caplog.at_level(logging.WARNING, logger="shared.energy"):
        assert src.read()["cpu"] == 0.0
    texts = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(texts) == 2
    assert any("intel-rapl:0/" in t for t in texts) and any("intel-rapl:1/" in t for t in texts)


def test_meter_coverage_drops_on_a_reset(tmp_path):
    pc = FakePowercap(tmp_path)
    pc.add_zone("intel-rapl:0", "package-0", energy_uj=5_000_000_000)
    clock = FakeClock()
    meter = EnergyMeter([RaplSource(pc.root, clock=clock, poll_below_s=1.0)], clock=clock)
    meter.start()
    clock.advance(10.0)
    pc.advance("intel-rapl:0", 1000.0)
    assert meter.read().coverage["rapl"] == 1.0
    clock.advance(10.0)
    _reset_counter(pc, "intel-rapl:0", 0)
    snap = meter.read()
    assert snap.joules["cpu"] == pytest.approx(1000.0, abs=1e-3)
    assert snap.coverage["rapl"] < 1.0
    meter.close()
