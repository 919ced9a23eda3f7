"""Recorded learning curves (benchmarks.curves): ``record`` trains a tiny grid through the
recipe's real entry point, ``convert`` turns the run directory into the same curve, ``show``
lists them; bad files are refused by name."""
from __future__ import annotations

import json

import pytest

from benchmarks import curve_data as cd
from benchmarks import curves as cv


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """One tiny trial recorded by the real command (a U-Net of 4 channels, 20 batches)."""
    tmp = tmp_path_factory.mktemp("curves")
    grid = cv.SearchGrid(
        name="tiny-seg", data="segmentation",
        data_args={"num_train": 8, "num_val": 2, "num_classes": 3, "min_size": 32,
                   "max_size": 40, "seed": 0},
        models={"unet": ("unet_base_channels=4", "unet_depth=2")},
        common=("crop_size=32", "scale=[32,32]", "num_classes=3", "workers_per_slot=0",
                "val_batch_size_per_slot=2", "base_batch_size=4", "warmup_batches=2",
                "report_period=10", "seed=0"),
        target_metric="miou", target=30.0, lrs=(1e-3,), batch_sizes=(4,), batches=20)
    mp = pytest.MonkeyPatch()
    mp.setattr(cv, "GRIDS", {grid.name: grid})
    out, work = tmp / "curves", tmp / "work"
    code = cv.main(["record", "--out", str(out), "--work-dir", str(work)])
    mp.undo()
    assert code == 0
    return out, work


def test_record_writes_a_curve_and_its_provenance(recorded):
    out, work = recorded
    manifest = json.loads((out / "manifest.json").read_text())
    (rec,) = manifest["recordings"]
    assert rec["command"].startswith("OMP_NUM_THREADS=1 python -m benchmarks.curves record --out")
    assert rec["files"] == ["tiny-seg/unet-lr0.001-b4.json"]
    assert len(rec["commit"]) == 40 and isinstance(rec["dirty"], bool)
    assert rec["machine"]["cpus"] >= 1 and rec["date"].endswith("UTC")
    (curve,) = cv.load_curves(out)
    assert (curve.search, curve.model, curve.target_metric, curve.target) == ("tiny-seg", "unet", "miou", 30.0)
    assert [v.batches for v in curve.validations] == [10, 20]
    assert curve.energy_source == "nominal_power_x_cpu_time" and curve.nominal_power_w == cv.NOMINAL_POWER_W
    for v in curve.validations:
        # energy = the nominal power x the process's CPU seconds at the validation
        assert v.energy_wh == pytest.approx(cv.NOMINAL_POWER_W * v.cpu_s / 3600.0)
        assert 0 < v.cpu_s and 0 < v.elapsed_s
        assert {"miou", "pixel_accuracy", "validation_loss"} <= set(v.metrics)
    assert curve.validations[1].cpu_s > curve.validations[0].cpu_s
    assert curve.ended == "max_batches" and curve.hparams["lr_given"] == 1e-3
    # recording again skips what is there
    code = cv.main(["record", "--out", str(out), "--work-dir", str(work), "--dry-run"])
    assert code == 0


def test_convert_gives_the_same_curve_and_show_lists_it(recorded, tmp_path, capsys):
    out, work = recorded
    run = work / "runs" / "tiny-seg" / "unet-lr0.001-b4"
    assert cv.main(["convert", str(run), "--search", "again", "--out", str(tmp_path),
                    "--max-batches", "20"]) == 0
    (converted,) = cv.load_curves(tmp_path)
    (original,) = cv.load_curves(out)
    assert converted.search == "again" and converted.name == original.name
    assert converted.validations == original.validations
    # without the CPU stamps: nominal power x elapsed time
    (run / cv.CPU_STAMPS).rename(run / "stamps.bak")
    try:
        curve = cv.curve_from_run(run, "x")
    finally:
        (run / "stamps.bak").rename(run / cv.CPU_STAMPS)
    assert curve.energy_source == "nominal_power_x_wall_time"
    assert curve.validations[0].energy_wh == pytest.approx(
        cv.NOMINAL_POWER_W * curve.validations[0].elapsed_s / 3600.0)
    capsys.readouterr()
    assert cv.main(["show", "--curves", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "again: 1 trials, target miou >= 30" in text and "unet-lr0.001-b4" in text


def test_a_run_measured_by_a_counter_keeps_its_energy(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    recs = [
        {"group": "run", "steps_completed": 0, "time": 100.0,
         "metrics": {"model": "unet", "target_metric": "validation_loss", "target": 0.5,
                     "target_smaller_is_better": True, "device": "NVIDIA H200"}},
        {"group": "energy", "steps_completed": 10, "time": 104.0,
         "metrics": {"energy_wh": 0.2, "duration_s": 4.0, "sources": "nvml"}},
        {"group": "validation", "steps_completed": 10, "time": 104.0,
         "metrics": {"validation_loss": 0.9, "energy_wh": 0.2, "batches": 10,
                     "projected_energy_to_target_wh": 0.36}},
        {"group": "energy", "steps_completed": 20, "time": 108.0,
         "metrics": {"energy_wh": 0.5, "duration_s": 8.0, "sources": "nvml"}},
        {"group": "validation", "steps_completed": 20, "time": 108.0,
         "metrics": {"validation_loss": 0.4, "energy_wh": 0.5, "batches": 20, "energy_to_target_wh": 0.5}},
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    # no summary.json: the run did not finish (a failure): its curve ends in an error
    curve = cv.curve_from_run(run, "gpu")
    assert curve.energy_source == "counter:nvml" and curve.nominal_power_w is None
    assert [v.energy_wh for v in curve.validations] == [0.2, 0.5]
    assert [v.elapsed_s for v in curve.validations] == [4.0, 8.0]
    assert curve.smaller_is_better and curve.ended == "error"
    assert "projected_energy_to_target_wh" not in curve.validations[0].metrics
    assert curve.energy_to_target_wh() == 0.5


def test_bad_inputs_are_named(tmp_path, capsys):
    assert cv.main(["convert", str(tmp_path / "nope"), "--search", "s", "--out", str(tmp_path / "o")]) == 2
    assert f"{tmp_path}/nope/metrics.jsonl: missing" in capsys.readouterr().err
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"group": "run", "steps_completed": 0, "time": 1, "metrics": {}}\nnot json\n')
    assert cv.main(["convert", str(run), "--search", "s", "--out", str(tmp_path / "o")]) == 2
    assert f"{run}/metrics.jsonl: line 2 is not JSON" in capsys.readouterr().err
    out = tmp_path / "set"
    out.mkdir()
    (out / "manifest.json").write_text(json.dumps({"format": "something else", "recordings": []}))
    with pytest.raises(cv.CurveError, match="manifest.json: not a curves manifest"):
        cv.load_curves(out)
    (out / "manifest.json").write_text(json.dumps(
        {"format": cd.FORMAT + "-manifest", "version": 1, "recordings": [{"files": ["s/a.json"]}]}))
    with pytest.raises(cv.CurveError, match="s/a.json: listed in .* but missing"):
        cv.load_curves(out)
    (out / "s").mkdir()
    (out / "s" / "a.json").write_text(json.dumps({"format": cd.FORMAT, "version": 2}))
    with pytest.raises(cv.CurveError, match="a.json: curve format version 2; this code reads version 1"):
        cv.load_curves(out)
