"""Issue 21.7 end to end: the energy-aware search (``asha_energy.yaml``, ASHA minimising
``projected_energy_to_target_wh``) through the real command line, the node measured by a
BMC simulator on loopback that dies: at start-up (after answering the probe), or mid-run.
A dead meter must never make a trial look cheap."""
import json
import os
import pathlib
import subprocess
import sys

import pytest

from shared import runlog
from shared.data.synthetic import generate
from shared.energy.projection import PROJECTION_FLOOR, UNMEASURED_WH

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "fakes"))
from bmc_sim import BmcSimulator  # noqa: E402
from runwait import wait_for_report  # noqa: E402

TINY = ["crop_size=32", "scale=[64,32]", "num_classes=4", "global_batch_size=4",
        "workers_per_slot=0", "warmup_batches=2", "report_period=2", "lr=2e-3",
        "unet_base_channels=8", "unet_depth=2", "checkpoint_period=100",
        "energy.redfish_sample_period_s=0.05", "energy.redfish_timeout_s=0.5"]
TARGET = 16.0  # asha_energy.yaml's target_value (miou)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("syn"), num_train=16, num_val=4, num_classes=4,
                    min_size=32, max_size=48, seed=3)


def start(data, out, sim, batches, validation_period):
    cmd = [sys.executable, str(ROOT / "trials/unet/train.py"),
           "--config", str(ROOT / "experiment_configs/unet/asha_energy.yaml"),
           "--data-dir", str(data), "--output-dir", str(out), "--batches", str(batches),
           "--set", *TINY, f"validation_period={validation_period}"]
    env = {**os.environ, "ENERGY_SOURCES": "redfish", "ENERGY_REDFISH_URL": sim.url}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def validations(out):
    return [r["metrics"] for r in runlog.read(out / "metrics.jsonl") if r["group"] == "validation"]


def test_a_meter_dead_at_start_up_ranks_after_every_measured_trial(data, tmp_path):
    """The BMC answers the start-up probe (one reading), then only HTTP 500s: every
    validation carries the not-measured sentinel (ASHA minimises the metric: this trial
    ranks last), never 0.0, and the log and summary.json say so."""
    out = tmp_path / "run"
    with BmcSimulator(300.0, "ilo", fail_after=1) as sim:
        proc = start(data, out, sim, batches=8, validation_period=4)
        stdout, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 0, stderr[-3000:]
    vals = validations(out)
    assert len(vals) == 2
    for v in vals:
        assert v["projected_energy_to_target_wh"] == UNMEASURED_WH
        assert "energy_wh" not in v  # not measured: no figure, never 0
    assert "projected_energy_to_target_wh = 1e+12 (the searcher ranks this trial after every " \
           "measured one)" in stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["energy_measured"] is False and summary["energy_wh"] is None
    assert "below 0.5" in summary["energy_not_measured"]
    energy = [r["metrics"] for r in runlog.read(out / "metrics.jsonl") if r["group"] == "energy"]
    assert energy and all(m["measured"] is False for m in energy)


def test_a_meter_that_dies_mid_run_projects_a_cost_that_keeps_growing(data, tmp_path):
    """The BMC dies after the first validation: energy_wh stays what was measured, and the
    projection's energy (the measured power over the elapsed time) keeps growing with the
    time the trial runs on; the searcher never sees a figure that silently stopped."""
    out = tmp_path / "run"
    metrics = out / "metrics.jsonl"
    with BmcSimulator(300.0, "ilo") as sim:
        proc = start(data, out, sim, batches=16, validation_period=4)
        try:
            wait_for_report(proc, metrics, "validation", timeout=120)
            sim.failure = "500"
            stdout, stderr = proc.communicate(timeout=240)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, stderr[-3000:]
    vals = validations(out)
    assert len(vals) == 4
    # Each validation's energy record (same step) says whether the figures count as
    # measured. How soon coverage falls below 0.5 after the BMC died depends on how long the
    # run had been measured (the machine's speed): either outcome is right, a frozen figure
    # is not.
    measured = {r["steps_completed"]: r["metrics"]["measured"]
                for r in runlog.read(metrics) if r["group"] == "energy"}
    steps = [r["steps_completed"] for r in runlog.read(metrics) if r["group"] == "validation"]
    assert measured[steps[0]] is True and vals[0]["projected_energy_to_target_wh"] < UNMEASURED_WH
    # what was measured before the BMC died (a sample may land between the first validation
    # and the failure): one figure from then on, never more
    after = {v["energy_wh"] for v in vals[1:] if v.get("energy_wh") is not None}
    assert len(after) <= 1
    frozen = max(after | {vals[0]["energy_wh"]})
    basis_before = None
    for step, v in zip(steps[1:], vals[1:]):
        projected = v["projected_energy_to_target_wh"]
        if not measured[step]:
            assert projected == UNMEASURED_WH  # ranks after every measured trial
            basis_before = UNMEASURED_WH  # and never comes back below it
            continue
        assert basis_before != UNMEASURED_WH, "a trial measured again after it was not"
        # the projection's energy basis (without the distance to the target) grows with the
        # time the trial runs on (a failing tail shorter than the gap limit, 3 sample
        # periods, is not missing yet: there it may still equal what was measured)
        basis = projected * max(v["miou"], PROJECTION_FLOOR) / TARGET
        assert basis >= frozen and (basis_before is None or basis >= basis_before)
        basis_before = basis
    # by the end of the run the searcher's figure has moved: grown past what was measured,
    # or the sentinel that ranks the trial last; never the frozen figure
    assert basis_before == UNMEASURED_WH or basis_before > frozen
