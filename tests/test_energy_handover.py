"""The energy between a killed run's last report and the restart: absolute counters kept per
rank (shared.energy.handover) and differenced by the resumed run's meter
(EnergyMeter.count_gap). The end-to-end check (kill -9, resume, 40 W over the whole wall time)
is tests/test_checkpoints.py::test_a_killed_run_resumes_as_one_run."""
from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path

import pytest

from shared.energy import handover
from shared.energy.meter import EnergyMeter
from shared.energy.sources.nvml import NvmlSource
from shared.energy.sources.rapl import RaplSource
from shared.energy.sources.base import EnergySource

_spec = importlib.util.spec_from_file_location(
    "energy_fakes_loader", Path(__file__).resolve().parent / "fakes" / "loader.py")
_loader = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_loader)
load_fake, FakeClock = _loader.load_fake, _loader.FakeClock
FakePowercap = load_fake("powercap").FakePowercap
fake_nvml = load_fake("pynvml_fake")


@pytest.fixture()
def tree(tmp_path):
    t = FakePowercap(tmp_path / "powercap")
    t.add_zone("intel-rapl:0", "package-0", max_uj=10**12)
    return t


def _rapl(tree, tmp_path, clock=None):
    kwargs = {"clock": clock} if clock is not None else {}
    return RaplSource(tmp_path / "powercap", **kwargs)


def test_rapl_gap_is_counted_and_the_window_moves_back(tree, tmp_path):
    clock = FakeClock(100.0)
    first = EnergyMeter([_rapl(tree, tmp_path, clock)], clock=clock).start()
    tree.advance("intel-rapl:0", 50.0)
    clock.advance(1.0)
    first.read()
    kept = first.raw_counters()
    assert kept == {"rapl": {"intel-rapl:0": 50_000_000}}
    first.close()
    # the killed run went on for a while after its last report, then the restart
    tree.advance("intel-rapl:0", 120.0)
    clock.advance(3.0)
    second = EnergyMeter([_rapl(tree, tmp_path, clock)], clock=clock).start()
    gap = second.count_gap(kept, elapsed_s=3.0)
    assert gap.counted and not gap.missed
    assert gap.joules["rapl"]["cpu"] == pytest.approx(120.0)
    tree.advance("intel-rapl:0", 10.0)
    clock.advance(1.0)
    snap = second.read()
    assert snap.joules["cpu"] == pytest.approx(130.0)
    assert snap.duration_s == pytest.approx(4.0)
    assert snap.coverage["rapl"] == 1.0
    assert snap.phases["setup"]["cpu"] == pytest.approx(130.0)  # the first phase holds the gap


def test_a_counter_reset_in_the_gap_is_missed_not_invented(tree, tmp_path):
    clock = FakeClock(100.0)
    kept = {"rapl": {"intel-rapl:0": 900_000_000}}  # 900 J then; 0 now: a reset, not a wrap
    meter = EnergyMeter([_rapl(tree, tmp_path, clock)], clock=clock).start()
    gap = meter.count_gap(kept, elapsed_s=5.0)
    assert not gap.counted
    assert "went back from 900000000 to 0" in gap.missed["rapl"]
    clock.advance(1.0)
    assert meter.read().duration_s == pytest.approx(1.0)  # nothing moved


class _Sampled(EnergySource):
    """A node meter without a counter (IPMI-like): 300 W integrated since open."""
    name = "ipmi"
    covers = ("node",)

    def __init__(self, clock):
        super().__init__()
        self.clock = clock

    def open(self):
        self.t0 = self.clock()

    def read(self):
        return {"node": 300.0 * (self.clock() - self.t0)}


def test_a_sampled_source_misses_the_gap_and_its_coverage_says_so(tree, tmp_path):
    clock = FakeClock(100.0)
    meter = EnergyMeter([_rapl(tree, tmp_path, clock), _Sampled(clock)], clock=clock).start()
    gap = meter.count_gap({"rapl": {"intel-rapl:0": 0}}, elapsed_s=6.0)
    assert set(gap.joules) == {"rapl"}
    assert "no absolute counter" in gap.missed["ipmi"]
    clock.advance(4.0)
    snap = meter.read()
    assert snap.duration_s == pytest.approx(10.0)
    assert snap.coverage["rapl"] == 1.0
    assert snap.coverage["ipmi"] == pytest.approx(0.4)  # 4 of the 10 s measured
    assert snap.joules["node"] == pytest.approx(1200.0)  # what it measured, nothing invented
    meter.close()


def test_count_gap_must_come_before_the_first_phase(tree, tmp_path):
    meter = EnergyMeter([_rapl(tree, tmp_path)]).start()
    meter.mark_phase("train")
    with pytest.raises(RuntimeError, match="after a phase mark"):
        meter.count_gap({}, 1.0)


def test_nvml_counters_are_kept_by_gpu_uuid(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml)
    clock = FakeClock(1000.0)
    fake_nvml.reset([fake_nvml.FakeGpu(power_w=200.0)], clock=clock)
    src = NvmlSource([0], env={})
    meter = EnergyMeter([src], clock=clock).start()
    clock.advance(10.0)
    meter.read()
    kept = meter.raw_counters()
    [(uuid, value)] = kept["nvml"].items()
    assert uuid.startswith("GPU-") and value > 0
    meter.close()
    clock.advance(5.0)  # killed, restarted: 5 s at 200 W
    again = EnergyMeter([NvmlSource([0], env={})], clock=clock).start()
    gap = again.count_gap(kept, elapsed_s=5.0)
    assert gap.joules["nvml"]["gpu"] == pytest.approx(1000.0, abs=40.0)
    again.close()


def test_handover_file_keeps_the_last_reports_and_refuses_what_cannot_compare(tmp_path):
    d = tmp_path / "energy_counters"
    for step in range(1, 8):
        handover.record(d, 0, step, "node-a", {"rapl": {"intel-rapl:0": step * 1000}})
    entries = json.loads((d / "rank0.json").read_text())["entries"]
    assert [e["step"] for e in entries] == [4, 5, 6, 7]
    entry, why = handover.find(d, 0, 6, "node-a")
    assert entry["counters"] == {"rapl": {"intel-rapl:0": 6000}} and why == ""
    assert handover.find(d, 0, 2, "node-a")[1].endswith("has no reading at batch 2")
    assert "measured on node 'node-a', this one on 'node-b'" in handover.find(d, 0, 6, "node-b")[1]
    data = json.loads((d / "rank0.json").read_text())
    data["entries"][-1]["wall_time"] = time.time() - 2 * handover.MAX_GAP_S
    data["entries"][-2]["boot_id"] = "another-boot"
    (d / "rank0.json").write_text(json.dumps(data))
    assert "more than 900 s: mostly the node idling" in handover.find(d, 0, 7, "node-a")[1]
    assert "rebooted since" in handover.find(d, 0, 6, "node-a")[1]
    # a run that ended (not killed): nothing to count until its successor reports again
    handover.close(d, 0)
    assert handover.find(d, 0, 5, "node-a")[1].startswith("ended")
    handover.record(d, 0, 8, "node-a", {"rapl": {"intel-rapl:0": 8000}})
    assert handover.find(d, 0, 8, "node-a")[0] is not None
    (d / "rank0.json").write_text("{not json")
    assert handover.find(d, 0, 8, "node-a")[0] is None
