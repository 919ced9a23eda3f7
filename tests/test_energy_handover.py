"""The energy between a killed run's last report and the restart: absolute counters kept per
rank (shared.energy.handover) and differenced by the resumed run's meter
(EnergyMeter.count_gap). The end-to-end check (kill -9, resume, 40 W over the whole wall time)
is tests/test_checkpoints.py::test_a_killed_run_resumes_as_one_run."""
from __future__ import annotations

import importlib.util
import json
import logging
import sys
import time
from pathlib import Path

import pytest

from fakes.energy_callback import energy_callback  # noqa: E402
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
    for e in data["entries"]:  # all of them long ago, in their order
        e["wall_time"] -= 2 * handover.MAX_GAP_S
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


# ----------------------------------------------------------------------------- files that lie
class _Ctx:
    def __init__(self) -> None:
        import determined as det
        import torch
        self.distributed = det.core.DummyDistributedContext()
        self.device = torch.device("cpu")
        self.reports = []
        ctx = self

        class _Train:
            def report_metrics(self, group, steps_completed, metrics):
                ctx.reports.append((group, steps_completed, dict(metrics)))

        class _Core:
            train = _Train()
        self._core = _Core()


@pytest.fixture()
def rapl_node(tmp_path, monkeypatch):
    """A fake RAPL node chosen through the environment; its counters advance with the RAPL
    source's own (fake) clock, 1 s per 100 J."""
    import types
    import shared.energy.sources.rapl as rapl_mod
    clock = FakeClock()
    monkeypatch.setattr(rapl_mod, "time", types.SimpleNamespace(monotonic=clock))
    pc = FakePowercap(tmp_path / "powercap")
    pc.add_zone("intel-rapl:0", "package-0", energy_uj=100_000_000_000)  # 100 kJ since boot
    monkeypatch.setenv("ENERGY_SOURCES", "rapl")
    monkeypatch.setenv("ENERGY_RAPL_ROOT", str(pc.root))
    monkeypatch.setenv("ENERGY_NODE_NAME", "node-a")

    def advance(joules):
        clock.advance(joules / 100.0)
        pc.advance("intel-rapl:0", joules)
    return advance


def _killed_run(advance, counters):
    """A run that reported at batch 10 and was killed: its checkpoint state and counters."""
    from shared.energy.callback import EnergyCallback
    steps = {"n": 0}
    cb = energy_callback(_Ctx(), {}, lambda: steps["n"], counters_dir=counters)
    cb.on_trial_startup(0, None)
    advance(360.0)
    steps["n"] = 10
    cb.on_training_workload_end({}, {})
    return cb.state_dict()


def _resume(state, counters, carried=None):
    from shared.energy.callback import EnergyCallback
    cb = energy_callback(_Ctx(), {}, lambda: 10, counters_dir=counters, carried=carried,
                        carried_step=10 if carried else None)
    cb.on_trial_startup(10, "ckpt")
    cb.load_state_dict(state)
    return cb


def _edit(counters, change):
    path = counters / "rank0.json"
    data = json.loads(path.read_text())
    change(data["entries"][-1])
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("case,expected", [
    ("counter 0", "counter intel-rapl:0: an increase of"),
    ("counter -5", "counter rapl/intel-rapl:0 is -5, not a non-negative integer"),
    ("counter abc", "counter rapl/intel-rapl:0 is 'abc', not a non-negative integer"),
    ("counter null", "counter rapl/intel-rapl:0 is None, not a non-negative integer"),
    ("a day ahead", "s in the future"),
])
def test_a_counters_file_that_lies_keeps_the_totals_and_says_why(rapl_node, tmp_path, caplog,
                                                                  case, expected):
    counters = tmp_path / "energy_counters"
    state = _killed_run(rapl_node, counters)
    rapl_node(50.0)  # what the killed run spent after its last report
    change = {"counter 0": lambda e: e["counters"]["rapl"].update({"intel-rapl:0": 0}),
              "counter -5": lambda e: e["counters"]["rapl"].update({"intel-rapl:0": -5}),
              "counter abc": lambda e: e["counters"]["rapl"].update({"intel-rapl:0": "abc"}),
              "counter null": lambda e: e["counters"]["rapl"].update({"intel-rapl:0": None}),
              "a day ahead": lambda e: e.update({"wall_time": e["wall_time"] + 86400.0})}[case]
    _edit(counters, change)
    with caplog.at_level(logging.INFO, logger="shared.energy"):
        cb = _resume(state, counters)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert expected in text
    assert "counted" not in text or "is not counted" in text or "cannot count" in text
    # the checkpoint's totals stand: 360 J over the killed run's time, coverage as it was
    assert cb._offset.energy_j == pytest.approx(360.0)
    assert cb._offset.duration_s == pytest.approx(state["total"]["duration_s"])
    assert cb._offset.coverage == 1.0
    cb.on_trial_shutdown()


def test_a_carried_record_no_node_could_draw_is_not_carried(rapl_node, tmp_path, caplog):
    counters = tmp_path / "energy_counters"
    state = _killed_run(rapl_node, counters)
    carried = {"energy_wh": 1e9, "duration_s": 20.0, "cpu_wh": 1e9, "nodes": 1}
    with caplog.at_level(logging.WARNING, logger="shared.energy"):
        cb = _resume(state, counters, carried=carried)
    [warning] = [r.getMessage() for r in caplog.records if "last energy report" in r.getMessage()]
    assert "is not used (energy_wh 1e+09 over 20 s is 1.8e+11 W, more than 1 node(s) can draw " \
           "(20000 W)); continuing from the checkpoint's totals" in warning
    assert cb._offset.energy_j == pytest.approx(360.0)
    cb.on_trial_shutdown()


def test_a_counters_path_that_is_a_directory_is_warned_once(rapl_node, tmp_path, caplog):
    from shared.energy.callback import EnergyCallback
    counters = tmp_path / "energy_counters"
    (counters / "rank0.json").mkdir(parents=True)
    steps = {"n": 0}
    cb = energy_callback(_Ctx(), {}, lambda: steps["n"], counters_dir=counters)
    cb.on_trial_startup(0, None)
    with caplog.at_level(logging.WARNING, logger="shared.energy"):
        for n in range(1, 18):
            rapl_node(10.0)
            steps["n"] = n
            cb.on_training_workload_end({}, {})
        cb.on_trial_shutdown()
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and not warnings[0].exc_info
    assert "cannot keep the energy counters in" in warnings[0].getMessage()
    assert "rank0.json" in warnings[0].getMessage()


def test_check_entry_names_what_is_wrong():
    good = {"step": 3, "wall_time": 1e9, "node": "n", "boot_id": "b",
            "counters": {"rapl": {"intel-rapl:0": 5}}}
    assert handover.check_entry(good) is None
    for change, why in (({"step": -1}, "step -1 is not a batch count"),
                        ({"step": True}, "step True is not a batch count"),
                        ({"wall_time": float("nan")}, "wall_time nan is not a time"),
                        ({"node": 3}, "node 3 is not a string"),
                        ({"counters": []}, "counters [] is not an object"),
                        ({"counters": {"rapl": {"x": 1.5}}}, "counter rapl/x is 1.5")):
        assert why in handover.check_entry({**good, **change})
