"""Energy when the cluster misbehaves: the Redfish source against the BMC simulator over real
HTTP, its sampler driven on a fake clock (a 100 s run takes a fraction of a second, and no
figure depends on how busy the machine is), at a steady known power.

Each scenario of the energy issue is run as measured there, and the figure compared with the
truth over the meter's window (power x duration): within 3 %, with the faults bridged and said
(``bridged_s`` > 0). Then the phases of a faulty run (by time, within 5 % of phase time x power),
and the searcher metric of a trial whose meter died."""
from __future__ import annotations

import logging
import random
import sys
import time
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import pytest

from fakes.energy_callback import energy_callback  # noqa: E402
from shared.energy.meter import EnergyMeter
from shared.energy.projection import UNMEASURED_WH
from shared.energy.sources.redfish import RedfishSource

sys.path.insert(0, str(Path(__file__).resolve().parent / "fakes"))
from bmc_sim import BmcSimulator  # noqa: E402
from loader import FakeClock  # noqa: E402

WATTS = 400.0
#: what one BMC answer takes on the fake clock, by fault (a hang or a trickle ends at the
#: source's deadline, 3 s here)
CALL_S = {None: 0.05, "500": 0.05, "garbage": 0.05, "zero": 0.05, "missing": 0.05,
          "timeout": 3.0, "trickle": 3.0}

Windows = Sequence[Tuple[float, float, str]]


class FaultyRun:
    """A Redfish source on the simulator and a meter on one fake clock; ``run(until)`` moves
    the clock from due sample to due sample, setting the simulator's fault for that instant."""

    def __init__(self, sim: BmcSimulator, period_s: float,
                 fault_at: Callable[[float], Optional[str]],
                 call_s: Optional[Callable[[Optional[str]], float]] = None) -> None:
        self.sim, self.period_s, self.fault_at = sim, period_s, fault_at
        self.call_s = call_s or (lambda fault: CALL_S[fault])
        self.clock = FakeClock(1000.0)
        # real-time limits small (the simulator's hangs are short); fake durations above
        sim.hang_s, sim.trickle_s = 0.3, 0.05
        self.source = RedfishSource(sim.url, sample_period_s=period_s, timeout_s=0.1,
                                    clock=self.clock, sampling_thread=False)
        self.meter = EnergyMeter([self.source], clock=self.clock).start()
        self.t0 = self.clock()
        sampler = self.source.sampler
        real_read = sampler._read

        def timed_read() -> float:  # a call takes its (fake) time, whatever it answers
            fault = self.sim.failure
            try:
                return real_read()
            finally:
                self.clock.advance(self.call_s(fault))
        sampler._read = timed_read
        self.intervals: List[float] = []

    def at(self, t: float) -> None:
        """Move the clock to ``t`` s after the start (sampling what is due before it)."""
        sampler = self.source.sampler
        while sampler.next_due <= self.t0 + t:
            self.clock.t = max(self.clock.t, sampler.next_due)
            self.sim.failure = self.fault_at(self.clock.t - self.t0)
            before = sampler.last_sample_time()
            sampler.step()
            after = sampler.last_sample_time()
            if after != before and before is not None:
                self.intervals.append(after - before)
        self.clock.t = max(self.clock.t, self.t0 + t)
        self.sim.failure = self.fault_at(t)

    def end(self, t: float):
        """The run ends at ``t``: the last sample, then the meter's figure."""
        self.at(t)
        self.source.stop_sampling()
        snap = self.meter.read()
        self.meter.close()
        return snap


def windows(spec: Windows) -> Callable[[float], Optional[str]]:
    return lambda t: next((f for a, b, f in spec if a <= t < b), None)


def check(snap, truth_w: float = WATTS, rel: float = 0.03) -> float:
    joules = snap.joules["node"]
    error = joules / (truth_w * snap.duration_s) - 1.0
    assert abs(error) <= rel, (error, snap)
    return error


@pytest.fixture()
def sim():
    with BmcSimulator(WATTS, "ilo") as s:
        yield s


def test_an_outage_then_the_end_10_s_after_the_bmc_recovered(sim):
    """500s from 10 to 30 s, the run ends at 40 s, 1 s sampling: -72 % before (the back-off
    waited past the end), within 3 % now, the hole bridged and said."""
    run = FaultyRun(sim, 1.0, windows([(10.0, 30.0, "500")]))
    snap = run.end(40.0)
    check(snap)
    assert 19.0 <= snap.bridged_s["redfish"] <= 25.0  # the outage, give or take a sample
    assert 0.3 < snap.coverage["redfish"] < 0.6       # bridged time is not measured time
    # the BMC answered again from 30 s: it was read again within the 4-period back-off
    assert run.source.sampler.last_sample_time() >= run.t0 + 39.0


def test_a_60_s_outage_at_5_s_sampling(sim):
    run = FaultyRun(sim, 5.0, windows([(30.0, 90.0, "500")]))
    snap = run.end(100.0)
    check(snap)
    assert snap.bridged_s["redfish"] >= 55.0


def test_eight_mixed_fault_windows(sim):
    """500s, garbage, hangs longer than the timeout, a trickling link, zero watts."""
    spec = [(5, 8, "500"), (12, 15, "garbage"), (20, 26, "timeout"), (30, 33, "trickle"),
            (38, 44, "zero"), (50, 52, "500"), (58, 64, "timeout"), (70, 75, "garbage")]
    run = FaultyRun(sim, 1.0, windows(spec))
    snap = run.end(85.0)
    check(snap)
    assert snap.bridged_s["redfish"] > 20.0
    # a zero reading is a failed sample, never a measured 0 W
    assert "0 W from a running machine" in (run.source.health.first_error or "") or \
        run.source.health.failures > 8


def test_half_the_requests_fail_at_random(sim):
    rng = random.Random(7)
    faults = {}

    def fault_at(t: float) -> Optional[str]:
        key = round(t, 3)
        if key not in faults:
            faults[key] = "500" if rng.random() < 0.5 else None
        return faults[key]
    run = FaultyRun(sim, 1.0, fault_at)
    snap = run.end(60.0)
    check(snap)
    assert snap.bridged_s["redfish"] > 5.0


def test_a_slow_far_end_is_measured_as_it_answers(sim):
    """Every call takes 2 periods (IPMI over lanplus): the samples follow the calls, each
    interval is measured (no failure, nothing bridged), the lag says one call."""
    run = FaultyRun(sim, 1.0, lambda t: None, call_s=lambda fault: 2.0)
    snap = run.end(60.0)
    check(snap)
    assert snap.bridged_s["redfish"] == 0.0
    assert snap.coverage["redfish"] == 1.0
    assert run.intervals and all(1.9 <= dt <= 3.1 for dt in run.intervals), run.intervals
    assert sum(run.intervals) / len(run.intervals) == pytest.approx(2.0, abs=0.2)


def test_the_lag_is_the_time_since_the_last_good_sample(sim):
    run = FaultyRun(sim, 1.0, windows([(10.0, 20.0, "500")]))
    run.at(9.5)
    assert run.source.lag_s <= 1.2
    run.at(19.5)
    assert 9.0 <= run.source.lag_s <= 10.5  # failing since 10 s: the figure trails that much
    run.end(25.0)


def test_phases_of_a_faulty_run_follow_time(sim):
    """An 8.4 s validation inside a BMC outage, a 0.37 s checkpoint between samples: each phase
    gets its time's share of each interval, within 5 % of phase time x power (before: the
    validation got 0 Wh, the checkpoint 1.02 s of energy)."""
    run = FaultyRun(sim, 1.0, windows([(10.0, 22.0, "500")]))
    marks = [(12.0, "validation"), (20.4, "train"), (30.2, "checkpoint"), (30.57, "train")]
    for t, phase in marks:
        run.at(t)
        run.meter.mark_phase(phase)
    snap = run.end(40.0)
    check(snap)
    for phase in ("setup", "validation", "checkpoint", "train"):
        expected = WATTS * snap.phase_s[phase]
        assert snap.phases[phase]["node"] == pytest.approx(expected, rel=0.05), phase
    assert snap.phase_s["validation"] == pytest.approx(8.4)
    assert sum(p["node"] for p in snap.phases.values()) == pytest.approx(snap.joules["node"])


# ----------------------------------------------------------------------------- the searcher
class _Ctx:
    def __init__(self) -> None:
        import determined as det
        import torch
        self.distributed = det.core.DummyDistributedContext()
        self.device = torch.device("cpu")

        class _Core:
            class train:  # noqa: N801 (a stand-in namespace)
                @staticmethod
                def report_metrics(group, steps_completed, metrics):
                    pass
        self._core = _Core()


def _callback(sim, monkeypatch):
    from shared.energy.callback import EnergyCallback
    monkeypatch.setenv("ENERGY_SOURCES", "redfish")
    monkeypatch.setenv("ENERGY_REDFISH_URL", sim.url)
    monkeypatch.setenv("ENERGY_REDFISH_ALLOW_HTTP_CREDENTIALS", "1")
    steps = {"n": 0}
    cb = energy_callback(_Ctx(), {"redfish_sample_period_s": 0.02, "redfish_timeout_s": 0.2},
                        lambda: steps["n"], target=60.0, target_metric="miou")
    cb.on_trial_startup(0, None)
    return cb, steps


def _validations(cb, steps, n: int, pause_s: float) -> List[dict]:
    out = []
    for k in range(1, n + 1):
        time.sleep(pause_s)
        steps["n"] = 10 * k
        cb.on_training_workload_end({}, {})
        val = {"miou": 20.0}
        cb.on_validation_end(val)
        out.append(val)
    return out


def test_a_meter_dead_from_the_start_ranks_after_every_measured_trial(monkeypatch, caplog):
    with BmcSimulator(WATTS, "ilo", fail_after=1) as dead:  # answers the open, then 500s
        cb, steps = _callback(dead, monkeypatch)
        with caplog.at_level(logging.WARNING, logger="shared.energy"):
            vals = _validations(cb, steps, 3, 0.3)
        cb.on_trial_shutdown()
    with BmcSimulator(WATTS, "ilo") as alive:
        cb2, steps2 = _callback(alive, monkeypatch)
        measured = _validations(cb2, steps2, 3, 0.3)
        cb2.on_trial_shutdown()
    for v in vals:
        assert v["projected_energy_to_target_wh"] == UNMEASURED_WH  # a finite number
        assert "energy_wh" not in v  # not measured: not a number that reads as one
    assert all(m["projected_energy_to_target_wh"] < UNMEASURED_WH for m in measured)
    assert cb.measured is False and cb2.measured is True
    assert any("ranks this trial after every measured one" in r.getMessage()
               for r in caplog.records)


def test_a_meter_that_dies_mid_run_projects_a_growing_energy(monkeypatch):
    with BmcSimulator(WATTS, "ilo") as sim:
        cb, steps = _callback(sim, monkeypatch)
        before = _validations(cb, steps, 2, 0.3)
        sim.failure = "500"
        after = _validations(cb, steps, 3, 0.3)
        cb.on_trial_shutdown()
    frozen = [v["energy_wh"] for v in after]
    projections = [v["projected_energy_to_target_wh"] for v in before + after]
    assert max(frozen) - min(frozen) < 0.05 * max(frozen)  # the figure stopped growing...
    # ...the projection did not: it grows with the elapsed time, and once less than half the
    # time was measured the trial counts as not measured (ranked last)
    assert all(b > a or b == UNMEASURED_WH for a, b in zip(projections, projections[1:]))
    assert projections[2] > projections[1] and projections[-1] >= projections[2]
