"""The Determined callback without a cluster: a fake PyTorchTrialContext (Determined's own
DummyDistributedContext, a recording core.train) and a fake powercap tree read as RAPL."""
from __future__ import annotations

import importlib.util
import logging
import pickle
import sys
from pathlib import Path
from typing import Any, Dict, List, Tuple

import determined as det
import pytest
import torch

from fakes.energy_callback import energy_callback  # noqa: E402
from shared.energy.callback import EnergyCallback
from shared.energy.options import validate_options
from shared.energy.snapshot import EnergySnapshot
from shared.energy.projection import UNMEASURED_WH

_spec = importlib.util.spec_from_file_location(
    "energy_fakes_loader", Path(__file__).resolve().parent / "fakes" / "loader.py")
_loader = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_loader)
FAKES, load_fake, FakeClock = _loader.FAKES, _loader.load_fake, _loader.FakeClock
WH = 3600.0


class RecordingTrain:
    """core.train stand-in; refuses a group reported twice at one step with overlapping
    keys, as the Determined master does."""

    def __init__(self) -> None:
        self.reports: List[Tuple[str, int, Dict[str, Any]]] = []
        self.fail = False

    def report_metrics(self, group: str, steps_completed: int, metrics: Dict[str, Any]) -> None:
        if self.fail:
            raise ConnectionError("master unreachable")
        for g, s, m in self.reports:
            if g == group and s == steps_completed and set(m) & set(metrics):
                raise RuntimeError(f"duplicate report of {group} at step {s}")
        self.reports.append((group, steps_completed, dict(metrics)))


class FakeCore:
    def __init__(self) -> None:
        self.train = RecordingTrain()


class FakeContext:
    """What EnergyCallback uses of a PyTorchTrialContext."""

    def __init__(self, distributed=None) -> None:
        self.distributed = distributed or det.core.DummyDistributedContext()
        self.device = torch.device("cpu")
        self._core = FakeCore()


class Steps:
    def __init__(self) -> None:
        self.n = 0

    def __call__(self) -> int:
        return self.n


@pytest.fixture()
def node(tmp_path, monkeypatch):
    """A fake RAPL node selected through the environment, as a site would. Its counters
    advance with a clock of their own (the RAPL source's), 1 s for every 100 J, so that
    every increase is a power a real domain can draw (the source refuses others)."""
    import types
    import shared.energy.sources.rapl as rapl_mod
    clock = _loader.FakeClock()
    monkeypatch.setattr(rapl_mod, "time", types.SimpleNamespace(monotonic=clock))
    pc = load_fake("powercap").FakePowercap(tmp_path / "powercap")
    advance = pc.advance

    def timed_advance(zone: str, joules: float) -> None:
        clock.advance(max(0.0, joules) / 100.0)
        advance(zone, joules)
    pc.advance = timed_advance
    pc.add_zone("intel-rapl:0", "package-0")
    pc.add_zone("intel-rapl:0:0", "dram")
    monkeypatch.setenv("ENERGY_SOURCES", "rapl")
    monkeypatch.setenv("ENERGY_RAPL_ROOT", str(pc.root))
    monkeypatch.setenv("ENERGY_NODE_NAME", "node-a")
    monkeypatch.delenv("ENERGY_GPUS_ON_NODE", raising=False)
    return pc


def energy_reports(ctx: FakeContext) -> List[Tuple[int, Dict[str, Any]]]:
    return [(s, m) for g, s, m in ctx._core.train.reports if g == "energy"]


def test_reports_validation_target_and_resume(node):
    ctx, steps = FakeContext(), Steps()
    cb = energy_callback(ctx, {"pue": 1.2, "carbon_intensity_g_per_kwh": 400.0}, steps)
    cb.on_trial_startup(0, None)

    node.advance("intel-rapl:0", 100.0)
    node.advance("intel-rapl:0:0", 10.0)
    steps.n = 100
    cb.on_training_workload_end({}, {})
    [(step, m)] = energy_reports(ctx)
    assert step == 100
    assert m["energy_wh"] == pytest.approx(110.0 / WH, abs=1e-9)
    assert m["cpu_wh"] == pytest.approx(100.0 / WH, abs=1e-9)
    assert m["dram_wh"] == pytest.approx(10.0 / WH, abs=1e-9)
    assert m["gpu_wh"] is None and m["node_wh"] is None
    assert (m["sources"], m["nodes"], m["nodes_measured"]) == ("rapl", 1, 1)
    assert m["lag_s"] == 0.0  # RAPL is a counter read at report time: nothing trails
    assert (m["apportion"], m["coverage"], m["estimate"]) == ("gpu_share", 1.0, False)
    assert m["facility_wh"] == pytest.approx(1.2 * 110.0 / WH, abs=1e-9)
    assert m["co2e_g"] == pytest.approx(1.2 * 110.0 / WH / 1000 * 400.0, abs=1e-9)
    assert m["duration_s"] > 0

    # validation at the same step: no second "energy" report, energy_wh in the metrics
    node.advance("intel-rapl:0", 20.0)
    val = {"mIoU": 0.05}
    cb.on_validation_end(val)
    assert len(energy_reports(ctx)) == 1
    assert val["energy_wh"] == pytest.approx(130.0 / WH, abs=1e-9)
    assert "energy_to_target_wh" not in val

    node.advance("intel-rapl:0", 30.0)
    steps.n = 200
    cb.on_training_workload_end({}, {})
    val = {"mIoU": 0.17, "time_to_target_s": 12.5}  # TargetCallback ran before us
    cb.on_validation_end(val)
    assert val["energy_to_target_wh"] == pytest.approx(160.0 / WH, abs=1e-9)
    assert [s for s, _ in energy_reports(ctx)] == [100, 200]

    state = pickle.loads(pickle.dumps(cb.state_dict()))  # saved in the checkpoint
    node.advance("intel-rapl:0", 5.0)  # between the checkpoint and the pause: not saved
    cb.on_trial_shutdown()

    # resumed trial: a new process, a new callback, the counters went on meanwhile
    node.advance("intel-rapl:0", 1000.0)  # another job's energy while we were paused
    ctx2, steps2 = FakeContext(), Steps()
    cb2 = energy_callback(ctx2, {}, steps2)
    cb2.on_trial_startup(200, "ckpt-uuid")
    cb2.load_state_dict(state)  # Determined loads the checkpoint after on_trial_startup
    node.advance("intel-rapl:0", 40.0)
    steps2.n = 300
    cb2.on_training_workload_end({}, {})
    [(step, m)] = energy_reports(ctx2)
    assert step == 300
    assert m["energy_wh"] == pytest.approx((160.0 + 40.0) / WH, abs=1e-9)
    assert m["duration_s"] > state["total"]["duration_s"]
    val = {"mIoU": 0.18, "time_to_target_s": 12.5}
    cb2.on_validation_end(val)
    assert val["energy_to_target_wh"] == pytest.approx(160.0 / WH, abs=1e-9)  # kept, not moved
    assert val["energy_wh"] == pytest.approx(200.0 / WH, abs=1e-9)
    cb2.on_trial_shutdown()


class FakeClock:
    def __init__(self) -> None:
        self.t = 500.0

    def __call__(self) -> float:
        return self.t


@pytest.mark.parametrize("gpus_env, share", [(None, 1 / 4), ("8", 1 / 8)])
def test_gpu_trial_reads_its_own_gpu_and_a_share_of_the_node(node, monkeypatch, gpus_env,
                                                              share):
    nvml = load_fake("pynvml_fake")
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    clock = FakeClock()
    nvml.reset([nvml.FakeGpu(power_w=w) for w in (100.0, 150.0, 200.0, 250.0)], clock=clock)
    monkeypatch.setenv("ENERGY_SOURCES", "nvml,rapl")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2")  # this trial's one GPU is NVML index 2
    if gpus_env:
        monkeypatch.setenv("ENERGY_GPUS_ON_NODE", gpus_env)  # containers: the site says so
    ctx, steps = FakeContext(), Steps()
    ctx.device = torch.device("cuda", 0)
    cb = energy_callback(ctx, {}, steps)
    cb.on_trial_startup(0, None)
    clock.t += 10.0
    node.advance("intel-rapl:0", 400.0)
    steps.n = 50
    cb.on_training_workload_end({}, {})
    [(_, m)] = energy_reports(ctx)
    # bare metal: NVML sees the node's 4 GPUs; 1 slot -> 1/4 of the CPU energy
    assert m["gpu_wh"] * WH == pytest.approx(2000.0, abs=2 * 0.1 * 200.0)
    assert m["cpu_wh"] * WH == pytest.approx(400.0 * share, abs=1e-6)
    assert m["energy_wh"] * WH == pytest.approx(2000.0 + 400.0 * share, abs=40.0)
    assert m["sources"] == "nvml,rapl"
    cb.on_trial_shutdown()


def test_cpu_only_trial_is_charged_the_whole_node(node, monkeypatch):
    monkeypatch.setenv("ENERGY_GPUS_ON_NODE", "4")  # set for the site's GPU trials
    ctx, steps = FakeContext(), Steps()
    cb = energy_callback(ctx, {}, steps)
    cb.on_trial_startup(0, None)
    node.advance("intel-rapl:0", 400.0)
    steps.n = 10
    cb.on_training_workload_end({}, {})
    [(_, m)] = energy_reports(ctx)
    assert m["energy_wh"] == pytest.approx(400.0 / WH, abs=1e-9)


def test_nothing_measured_is_labelled_and_kept_out_of_validation(node, monkeypatch, caplog):
    monkeypatch.setenv("ENERGY_SOURCES", "none")
    ctx, steps = FakeContext(), Steps()
    cb = energy_callback(ctx, {}, steps)
    cb.on_trial_startup(0, None)
    steps.n = 5
    cb.on_training_workload_end({}, {})
    [(_, m)] = energy_reports(ctx)
    assert m["energy_wh"] is None and m["sources"] == "none" and m["nodes_measured"] == 0
    val = {"mIoU": 0.2, "time_to_target_s": 3.0}
    cb.on_validation_end(val)
    # no energy figure (the validation group refuses None, and it is not 0); the searcher
    # metric ranks the trial after every measured one, with a finite number
    assert val == {"mIoU": 0.2, "time_to_target_s": 3.0,
                   "projected_energy_to_target_wh": UNMEASURED_WH}
    assert cb.measured is False
    assert "energy: target reached, but the energy was not measured (no source measured " \
           "anything): energy_to_target_wh is not available" in caplog.text


def test_disabled_does_nothing(node):
    calls = []

    class Spy(det.core.DummyDistributedContext):
        def allgather(self, stuff):
            calls.append(stuff)
            return [stuff]

    ctx = FakeContext(Spy())
    cb = energy_callback(ctx, {"enabled": False, "apportion": "whatever"}, Steps())
    cb.on_trial_startup(0, None)
    cb.on_training_workload_end({}, {})
    val = {"mIoU": 0.1}
    cb.on_validation_end(val)
    assert calls == [] and ctx._core.train.reports == [] and val == {"mIoU": 0.1}
    assert cb.state_dict() == {}
    cb.load_state_dict({"version": 1})


def test_failures_never_stop_training_and_ranks_stay_in_step(node, caplog):
    gathered = []

    class Spy(det.core.DummyDistributedContext):
        def allgather(self, stuff):
            gathered.append(stuff)
            return [stuff]

    ctx, steps = FakeContext(Spy()), Steps()
    cb = energy_callback(ctx, {}, steps)
    cb.on_trial_startup(0, None)
    ctx._core.train.fail = True
    with caplog.at_level(logging.WARNING, logger="shared.energy"):
        for n in (1, 2, 3):
            steps.n = n
            cb.on_training_workload_end({}, {})
        cb._meter.read = lambda: (_ for _ in ()).throw(OSError("sysfs vanished"))
        ctx._core.train.fail = False
        steps.n = 4
        cb.on_training_workload_end({}, {})
    assert len(gathered) == 4  # one allgather per hook, failure or not
    warnings = [r for r in caplog.records if "training continues" in r.getMessage()]
    assert len(warnings) == 1 and "master unreachable" in warnings[0].getMessage()
    [(_, m)] = energy_reports(ctx)
    # The failed read is visible in coverage (the time since the last good read is missing);
    # the energy of that read stays a number (0 J here: the counters did not move).
    assert 0.0 <= m["coverage"] < 1.0 and m["energy_wh"] == 0.0


def test_worker_rank_sends_its_report_and_reports_nothing(node):
    class WorkerDist:
        rank, local_rank, size, local_size = 1, 1, 2, 2
        sent: list = []

        def allgather(self, stuff):
            self.sent.append(stuff)
            return [dict(stuff, rank=0, local_rank=0), stuff]

    dist = WorkerDist()
    ctx, steps = FakeContext(dist), Steps()
    cb = energy_callback(ctx, {}, steps)
    cb.on_trial_startup(0, None)
    node.advance("intel-rapl:0", 50.0)
    steps.n = 7
    cb.on_training_workload_end({}, {})
    val = {"mIoU": 0.3}
    cb.on_validation_end(val)
    assert ctx._core.train.reports == [] and val == {"mIoU": 0.3}
    [first, _] = dist.sent
    # local rank 1 does not read the node-level RAPL counters: local rank 0 does
    assert first["sources"] == [] and first["cpu_j"] is None
    assert (first["node_id"], first["slots_on_node_for_trial"]) == ("node-a", 2)


def test_unreadable_checkpoint_state_is_flagged(node, caplog):
    ctx, steps = FakeContext(), Steps()
    cb = energy_callback(ctx, {}, steps)
    cb.on_trial_startup(0, None)
    with caplog.at_level(logging.WARNING, logger="shared.energy"):
        cb.load_state_dict({"version": 1, "total": {"duration_s": 3.0}})
    assert any("restoring energy from the checkpoint failed" in r.getMessage()
               for r in caplog.records)
    node.advance("intel-rapl:0", 10.0)
    steps.n = 1
    cb.on_training_workload_end({}, {})
    [(_, m)] = energy_reports(ctx)
    assert m["energy_wh"] == pytest.approx(10.0 / WH, abs=1e-9)
    assert m["coverage"] == 0.0  # the energy before the pause is unknown: said, not hidden


def test_bad_options_are_refused_before_training(monkeypatch):
    monkeypatch.delenv("ENERGY_SOURCES", raising=False)
    monkeypatch.delenv("ENERGY_GPUS_ON_NODE", raising=False)
    cases = [
        ({"apportion": "by_power"}, r"energy.apportion must be one of .*'by_power'"),
        ({"pue": 0.8}, r"energy.pue .* cannot be below 1.0, got 0.8"),
        ({"pue": "1.3"}, r"energy.pue must be a number, got '1.3'"),
        ({"carbon_intensity_g_per_kwh": -1}, r"carbon_intensity_g_per_kwh must be >= 0, got -1"),
        ({"sources": "nvml,watts"}, r"unknown energy source\(s\) \['watts'\]"),
        ({"enabled": "yes"}, r"energy.enabled must be true or false, got 'yes'"),
        ({"sample_period_s": 0}, r"energy.sample_period_s must be > 0, got 0"),
        ({"gpus_on_node": 2.5}, r"energy.gpus_on_node must be a positive integer, got 2.5"),
        ({"projection": "cubic"}, r"energy.projection must be one of .*'cubic'"),
    ]
    for options, message in cases:
        with pytest.raises(ValueError, match=message):
            energy_callback(FakeContext(), options, Steps())
    with pytest.raises(ValueError, match=r"the energy hyperparameter must be a mapping"):
        validate_options(["rapl"])
    monkeypatch.setenv("ENERGY_GPUS_ON_NODE", "eight")
    with pytest.raises(ValueError, match=r"ENERGY_GPUS_ON_NODE='eight' must be a positive "
                                         r"integer"):
        validate_options({})
    monkeypatch.setenv("ENERGY_GPUS_ON_NODE", "8")
    monkeypatch.setenv("ENERGY_SOURCES", "rapl,nope")
    with pytest.raises(ValueError, match=r"ENERGY_SOURCES: unknown energy source"):
        validate_options({})


def test_unknown_options_warn(caplog, monkeypatch):
    monkeypatch.delenv("ENERGY_SOURCES", raising=False)
    with caplog.at_level(logging.WARNING, logger="shared.energy"):
        opts = validate_options({"enable": False})
    assert opts["enabled"] is True
    assert any("options ['enable'] are not used" in r.getMessage() for r in caplog.records)


def test_curve_projection_through_the_callback(node):
    """energy.projection: curve: the searcher metric follows the fitted learning curve from the
    fourth validation on (the linear rule before), is a float at every validation, ranks a trial
    levelling off below its target after any reachable projection and before an unmeasured
    trial, and its history survives a checkpoint."""
    import math
    from shared.energy.curve_fit import UNREACHABLE_WH
    from shared.energy.projection import projected_energy_to_target

    def run(projection, n, cb=None, steps=None, start=0):
        ctx = FakeContext()
        if cb is None:
            steps = Steps()
            cb = energy_callback(ctx, {"projection": projection}, steps, target=70.0,
                                target_metric="miou")
            cb.on_trial_startup(0, None)
        out = []
        for k in range(start, start + n):
            node.advance("intel-rapl:0", 100.0)
            steps.n = 100 * (k + 1)
            val = {"miou": 55.0 * (1.0 - math.exp(-(k + 1) / 2.0))}   # levels off at 55 < 70
            cb.on_validation_end(val)
            out.append(val)
        return cb, steps, out

    _, _, linear = run("linear", 6)
    cb, steps, curve = run("curve", 6)
    for a, b in zip(linear, curve):
        assert isinstance(b["projected_energy_to_target_wh"], float)
    for k in range(3):   # fewer than 4 points: the linear rule
        assert curve[k]["projected_energy_to_target_wh"] == pytest.approx(
            projected_energy_to_target(curve[k]["energy_wh"], curve[k]["miou"], 70.0, None))
    for k in range(3, 6):
        assert UNREACHABLE_WH <= curve[k]["projected_energy_to_target_wh"] <= 2 * UNREACHABLE_WH
        assert curve[k]["projected_energy_to_target_wh"] < UNMEASURED_WH
        assert linear[k]["projected_energy_to_target_wh"] < 1.0   # the linear rule: optimistic
    state = pickle.loads(pickle.dumps(cb.state_dict()))
    assert len(state["projection_history"]) == 6
    cb.on_trial_shutdown()
    ctx2, steps2 = FakeContext(), Steps()
    cb2 = energy_callback(ctx2, {"projection": "curve"}, steps2, target=70.0, target_metric="miou")
    cb2.on_trial_startup(600, "ckpt")
    cb2.load_state_dict(state)
    _, _, more = run("curve", 1, cb2, steps2, start=6)
    assert UNREACHABLE_WH <= more[0]["projected_energy_to_target_wh"] <= 2 * UNREACHABLE_WH
    cb2.on_trial_shutdown()


def test_projected_energy_to_target_definition():
    from shared.energy.projection import projected_energy_to_target
    # reached: the measured figure, whatever the current energy
    assert projected_energy_to_target(50.0, 20.0, 16.0, 12.5) == 12.5
    # not reached: linear projection through the origin
    assert projected_energy_to_target(10.0, 8.0, 16.0, None) == pytest.approx(20.0)
    # nothing learned yet: the floor caps the penalty at target / 0.5
    assert projected_energy_to_target(1.0, 0.0, 16.0, None) == pytest.approx(32.0)
    # nothing measured: no metric (never a made-up number)
    assert projected_energy_to_target(None, 8.0, 16.0, None) is None


@pytest.mark.parametrize("failure", ["meter", "counters", "report"])
def test_searcher_metric_survives_a_source_that_fails_for_good(node, caplog, failure):
    """Issue 12.6: a validation without projected_energy_to_target_wh fails the trial in
    Determined. Energy stops being measurable from the third validation on, for good: the
    meter cannot be read ("meter"), the RAPL counters turn to garbage ("counters"), or a
    rank's report cannot be read ("report"). Every later validation still carries the
    searcher metric, as a number, from the energy measured so far; every energy report has
    the same keys with the same types."""
    from shared.energy.projection import projected_energy_to_target
    broken = {"on": False}

    class Gather(det.core.DummyDistributedContext):
        def allgather(self, stuff):
            if broken["on"] and failure == "report":
                return [stuff, {"node_id": "node-b"}]  # unreadable: combining fails
            return [stuff]

    ctx, steps = FakeContext(Gather()), Steps()
    cb = energy_callback(ctx, {}, steps, target=0.5, target_metric="miou")
    cb.on_trial_startup(0, None)
    validations = []
    with caplog.at_level(logging.WARNING, logger="shared.energy"):
        for n in range(1, 7):
            node.advance("intel-rapl:0", 36.0)
            if n >= 3:
                broken["on"] = True
                if failure == "meter":
                    cb._meter.read = lambda: (_ for _ in ()).throw(OSError("sysfs vanished"))
                elif failure == "counters":  # again each time: advance() rewrites the file
                    node.set_raw("intel-rapl:0", "garbage\n")
                    node.set_raw("intel-rapl:0:0", "garbage\n")
            steps.n = 10 * n
            cb.on_training_workload_end({}, {})
            val = {"miou": 0.1 * n}
            cb.on_validation_end(val)
            validations.append(val)
    for n, val in enumerate(validations, start=1):
        assert isinstance(val["energy_wh"], float), (n, val)
        assert isinstance(val["projected_energy_to_target_wh"], float), (n, val)
        frozen = projected_energy_to_target(val["energy_wh"], val["miou"], 0.5, None)
        if n < 3:  # measured all along: the linear projection of the energy
            assert val["projected_energy_to_target_wh"] == pytest.approx(frozen)
        else:  # the energy figure froze; the projection is scaled to the elapsed time
            assert val["projected_energy_to_target_wh"] > frozen
    # After the failure: the 72 J measured by the last good read, neither more nor less.
    assert [round(v["energy_wh"] * WH, 6) for v in validations] == [36.0] + [72.0] * 5
    reports = [m for _, m in energy_reports(ctx)]
    assert len(reports) == (2 if failure == "report" else 6)
    for key in reports[0]:
        types = {type(m[key]).__name__ for m in reports}
        assert len(types) == 1, (key, [m[key] for m in reports])
    assert all(set(m) == set(reports[0]) for m in reports)
    if failure != "report":
        assert reports[-1]["coverage"] < 1.0  # what is missing is said
        assert reports[-1]["energy_wh"] == pytest.approx(72.0 / WH, abs=1e-9)


def test_phases_follow_the_hooks_and_sum_to_the_total(node):
    """setup to on_training_start, validation between its hooks, a checkpoint from the hook
    before it to on_checkpoint_upload_end (the only checkpoint hook every rank gets)."""
    ctx, steps = FakeContext(), Steps()
    cb = energy_callback(ctx, {}, steps)
    cb.on_trial_startup(0, None)
    node.advance("intel-rapl:0", 36.0)     # setup: data loaders, checkpoint loading
    cb.on_training_start()
    node.advance("intel-rapl:0", 360.0)    # train
    steps.n = 4
    cb.on_training_workload_end({}, {})
    cb.on_validation_start()
    node.advance("intel-rapl:0", 72.0)     # validation
    cb.on_validation_end({"miou": 0.1})
    node.advance("intel-rapl:0", 18.0)     # checkpoint (write and upload)
    cb.on_checkpoint_upload_end("uuid")
    node.advance("intel-rapl:0", 180.0)    # train
    steps.n = 8
    cb.on_training_workload_end({}, {})
    (_, first), (_, m) = energy_reports(ctx)
    # step 4 was reported at its workload end (the validation at the same step is not a
    # second report): every phase a number, those that had not happened 0.0
    assert (first["checkpoint_wh"], first["validation_wh"]) == (0.0, 0.0)
    assert first["train_wh"] == pytest.approx(360 / WH)
    assert m["setup_wh"] == pytest.approx(36 / WH)
    assert m["train_wh"] == pytest.approx(540 / WH)
    assert m["validation_wh"] == pytest.approx(72 / WH)
    assert m["checkpoint_wh"] == pytest.approx(18 / WH)
    assert m["energy_wh"] == pytest.approx(666 / WH)
    assert m["bridged_s"] == 0.0
    # the split goes into the checkpoint and continues after a resume
    state = pickle.loads(pickle.dumps(cb.state_dict()))
    cb.on_trial_shutdown()
    cb2 = energy_callback(ctx, {}, steps)
    cb2.on_trial_startup(8, "uuid")
    cb2.load_state_dict(state)
    node.advance("intel-rapl:0", 36.0)
    cb2.on_training_start()
    steps.n = 12
    cb2.on_training_workload_end({}, {})
    (_, resumed) = energy_reports(ctx)[-1]
    assert resumed["setup_wh"] == pytest.approx(72 / WH)
    assert resumed["checkpoint_wh"] == pytest.approx(18 / WH)
    assert sum(resumed[k] for k in ("setup_wh", "train_wh", "validation_wh", "checkpoint_wh")) \
        == pytest.approx(resumed["energy_wh"])
    cb2.on_trial_shutdown()


def test_a_failed_read_repeats_the_last_figures_with_their_lag_and_bridging(node):
    """After a failed read the report repeats the last good figures: what they bridged and
    how far they trail are theirs, and must not drop to 0.0 for that one report."""
    ctx, steps = FakeContext(), Steps()
    cb = energy_callback(ctx, {}, steps)
    cb.on_trial_startup(0, None)
    good = EnergySnapshot(duration_s=10.0, joules={"node": 3600.0},
                          per_source={"redfish": {"node": 3600.0}},
                          coverage={"redfish": 1.0}, sources=["redfish:Chassis/1/Power:x"],
                          bridged_s={"redfish": 2.0}, lag_s={"redfish": 5.0})
    cb._meter.read = lambda: good
    steps.n = 1
    cb.on_training_workload_end({}, {})
    cb._meter.read = lambda: (_ for _ in ()).throw(OSError("BMC gone"))
    steps.n = 2
    cb.on_training_workload_end({}, {})
    first, second = [m for _, m in energy_reports(ctx)]
    assert first["lag_s"] == second["lag_s"] == 5.0
    assert first["bridged_s"] == second["bridged_s"] == 2.0
    assert second["sources"] == "redfish:Chassis/1/Power:x" and second["coverage"] < 1.0


def test_compile_warmup_is_its_own_phase(node):
    """torch.compile's warm-up batches (the trial calls compile_phase before each batch) are
    the phase compile: compile_wh and compile_s, out of train_wh and train_s."""
    ctx, steps = FakeContext(), Steps()
    cb = energy_callback(ctx, {}, steps)
    cb.on_trial_startup(0, None)
    cb.on_training_start()
    cb.compile_phase(True)                 # batch 1: compiles
    node.advance("intel-rapl:0", 90.0)
    cb.compile_phase(True)                 # batch 2: still the warm-up, one segment
    node.advance("intel-rapl:0", 18.0)
    cb.compile_phase(False)                # batch 3: trains
    node.advance("intel-rapl:0", 36.0)
    cb.compile_phase(False)
    steps.n = 4
    cb.on_training_workload_end({}, {})
    (_, m), = energy_reports(ctx)
    assert m["compile_wh"] == pytest.approx(108 / WH)
    assert m["train_wh"] == pytest.approx(36 / WH)
    assert m["compile_s"] > 0 and m["train_s"] > 0
    phases = ("setup", "train", "validation", "checkpoint", "compile")
    assert sum(m[f"{p}_wh"] for p in phases) == pytest.approx(m["energy_wh"])
    assert sum(m[f"{p}_s"] for p in phases) == pytest.approx(m["duration_s"], rel=0.05)
    assert "gpu_util_pct" not in m  # RAPL only: no utilisation, the key is left out
    cb.on_trial_shutdown()
