"""The GPU campaign (benchmarks/campaign.py; its analysis and rendering,
benchmarks/campaign_report.py) on CPU: the NVML cross-check arithmetic, the study's batch
budget, the time keeping, the real-NVML read cost with the fake pynvml, the rendering of a
result folder, and what a user sees on bad input. The campaign itself runs on the lent GPU
(one device call); its CPU smoke run (``--smoke``) takes minutes and is not part of the suite."""
from __future__ import annotations

import json
import pathlib
import sys

import pytest

from mdtables import squeeze
from benchmarks import campaign, campaign_report
from benchmarks.gpu_monitor import Sample

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from fakes import pynvml_fake  # noqa: E402


def _samples(t0: float, seconds: float, watts: float, period: float = 0.05):
    """Monitor samples (time, util, power, cumulative J) of a GPU drawing ``watts``."""
    n = int(seconds / period) + 1
    return [Sample(t0 + i * period, 100.0, watts, 1000.0 + watts * i * period) for i in range(n)]


def _energy_record(t: float, step: int, gpu_wh):
    return {"group": "energy", "steps_completed": step, "time": t,
            "metrics": {"gpu_wh": gpu_wh, "energy_wh": gpu_wh}}


def test_interpolate_between_samples_and_outside():
    s = [Sample(10.0, None, None, 1.0), Sample(11.0, None, None, None),
         Sample(12.0, None, None, 3.0)]
    assert campaign_report.interpolate(s, 11.0) == pytest.approx(2.0)  # the None sample is skipped
    assert campaign_report.interpolate(s, 10.0) == 1.0
    assert campaign_report.interpolate(s, 9.9) is None and campaign_report.interpolate(s, 12.1) is None


def test_cross_check_passes_when_the_hook_matches_the_counter():
    samples = _samples(100.0, 60.0, 400.0)
    # the hook's cumulative Wh since its own start (a few seconds before the first report)
    records = [_energy_record(105.0 + 10 * k, 10 * (k + 1), (3 + 10 * k) * 400 / 3600)
               for k in range(5)]
    r = campaign_report.cross_check(records, samples)
    assert r["status"] == "pass"
    assert r["hook_j"] == pytest.approx(40 * 400) and r["counter_j"] == pytest.approx(40 * 400)
    assert abs(r["relative_error"]) < 1e-9 and r["window_s"] == pytest.approx(40.0)
    assert (r["first_step"], r["last_step"]) == (10, 50)


def test_cross_check_fails_beyond_one_percent_and_says_why_when_it_cannot_judge():
    samples = _samples(100.0, 60.0, 400.0)
    records = [_energy_record(105.0, 10, 0.0), _energy_record(145.0, 50, 1.02 * 40 * 400 / 3600)]
    r = campaign_report.cross_check(records, samples)
    assert r["status"] == "FAIL" and r["relative_error"] == pytest.approx(0.02)
    # one report only
    assert campaign_report.cross_check(records[:1], samples)["status"].startswith("n/a (1 energy report")
    # a report outside the monitor's samples
    late = [records[0], _energy_record(400.0, 60, 1.0)]
    assert "do not bracket" in campaign_report.cross_check(late, samples)["status"]
    # null gpu_wh (no GPU source) is not a report with gpu_wh
    nulls = [_energy_record(105.0, 10, None), _energy_record(145.0, 50, None)]
    assert campaign_report.cross_check(nulls, samples)["status"].startswith("n/a (0 energy report")


def _warmup_rows(plan_free_second: float):
    """shape_warmup rows: first and second call ms per variant (the 2026-12-04 H200 figures
    for U-Net and SegFormer, plan-free from the diagnostic calls)."""
    return {"rows": [
        {"model": "unet", "status": "ok", "as trained": {"first_ms": 53.6, "second_ms": 3.9},
         "native depthwise": {"first_ms": 23.9, "second_ms": 3.3},
         "plan free": {"first_ms": 14.6, "second_ms": 6.4}, "nchw": {"first_ms": 72.8, "second_ms": 6.5}},
        {"model": "segformer", "status": "ok", "as trained": {"first_ms": 1346.5, "second_ms": 12.2},
         "native depthwise": {"first_ms": 234.4, "second_ms": 13.3},
         "plan free": {"first_ms": 38.8, "second_ms": plan_free_second},
         "nchw": {"first_ms": 171.5, "second_ms": 12.2}}]}


def test_val_kernels_are_chosen_from_the_shape_warmup(tmp_path):
    f = tmp_path / "shape_warmup.json"
    f.write_text(json.dumps(_warmup_rows(plan_free_second=7.2)))
    value, why = campaign.choose_val_kernels(f)
    # cudnn: 53.6 + 39 x 3.9 + 1346.5 + 39 x 12.2 = 2028.0 ms; plan_free: 14.6 + 249.6 + 38.8 + 280.8
    assert value == "plan_free"
    assert why == ("per image shape, first call + 39 warm calls, summed over unet, segformer: "
                   "cudnn 2.03 s, native_depthwise 0.91 s, plan_free 0.58 s")
    f.write_text(json.dumps(_warmup_rows(plan_free_second=60.0)))  # slow once warm
    assert campaign.choose_val_kernels(f)[0] == "native_depthwise"
    assert campaign.choose_val_kernels(tmp_path / "none.json") == (
        "plan_free", "the default: no shape warm-up result (FileNotFoundError)")


def test_clock_says_what_was_skipped_and_why():
    clock = campaign.Clock(100.0)
    assert clock.why_not("study", 50) is None
    why = clock.why_not("compile", 500)
    assert why.startswith("skipped: 100 s left of the 100 s budget, compile needs ~500 s")


def test_nvml_read_cost_with_the_fake_module(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", pynvml_fake)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    pynvml_fake.reset([pynvml_fake.FakeGpu(power_w=300.0)])
    r = campaign.nvml_read_cost(reads=20)
    assert r["status"] == "ok" and r["reads"] == 20
    assert 0 < r["counter_call_us"] and 0 < r["meter_read_us"] < 1e5
    assert campaign_report.hook_share(200.0, 70.0, 50) == pytest.approx(200e-6 / 3.5)


def test_nvml_read_cost_without_nvml_says_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails
    r = campaign.nvml_read_cost()
    assert r["status"].startswith("n/a (nvml: cannot import pynvml")


def _folder(tmp_path: pathlib.Path) -> pathlib.Path:
    out = tmp_path / "out"
    out.mkdir()
    summary = {"budget_s": 480, "smoke": False, "parts": {
        "env": {"status": "ok", "device_name": "NVIDIA H200", "torch": "2.11.0", "seconds": 3.0,
                "nvidia_smi": "NVIDIA H200, 580.159.04, 700.00 W"},
        "nvml_read_cost": {"status": "ok", "reads": 200, "meter_read_us": 35.2,
                           "counter_call_us": 20.1, "seconds": 0.1},
        "bench": {"status": "ok", "seconds": 190.0},
        "compile": {"status": "skipped: 20 s left of the 480 s budget, compile needs ~110 s"},
        "ablation_target": {"status": "partial", "seconds": 250.0,
                            "commands": ["-m shared.demo --size ade20k --models unet --out /w/b"],
                            "runs": {"unet@baseline": {"status": "ok", "batches": 300, "best_miou": 61.5,
                                                       "reached_target": True, "batches_to_target": 280,
                                                       "time_to_target_s": 70.25, "energy_to_target_wh": 6.5,
                                                       "energy_wh": 6.5},
                                     "unet@fastest": {"status": "skipped: out of time"}},
                            "implementation_md": "# Implementation ablation\n\n| model | variant |\n"
                                                 "\n## Conv/attention\n"},
        "hook_ab": {"status": "ok", "seconds": 60, "on_over_off": 0.999, "on_spread": 0.004,
                    "runs": {"on": {"status": "ok", "img_s_train": 250.0, "window_s": 6.0},
                             "off": {"status": "ok", "img_s_train": 250.25, "window_s": 6.0}}}}}
    (out / "summary.json").write_text(json.dumps(summary))
    study = {"command": "-m shared.demo --size ade20k --out /tmp/w/study --max-batches 640",
             "energy_sources_env": "nvml", "rates_img_s": {"unet": 240.0, "segformer": 260.0},
             "max_batches": 640, "box_s": 150.0, "runs": {"unet-1": {
                 "summary": {"model": "unet", "batches": 300, "best_miou": 61.2, "reached_target": True,
                             "batches_to_target": 250, "time_to_target_s": 31.0,
                             "energy_to_target_wh": 3.1, "energy_wh": 3.7, "avg_power_w": 420.0},
                 "cross_check": {"status": "pass", "hook_j": 13000.0, "counter_j": 13010.0,
                                 "relative_error": -0.00077},
                 "loop": {"img_s_train": 230.0, "gpu_busy_pct": 97.5, "gpu_busy_train_pct": 99.1}}}}
    (out / "study.json").write_text(json.dumps(study))
    (out / "bench.json").write_text(json.dumps({"steps": [{"name": "unet", "status": "ok",
                                                           "step_ms": 80.0}]}))
    return out


def test_render_a_result_folder(tmp_path, capsys):
    out = _folder(tmp_path)
    assert campaign.main(["--render", str(out)]) == 0
    text = squeeze(capsys.readouterr().out)
    assert "| compile | skipped: 20 s left of the 480 s budget, compile needs ~110 s | - |" in text
    # 35.2 us per report of 50 batches of 80 ms: 0.00088 %
    assert ("35.2 us (the bare counter call 20.1 us), mean of 200 reads; one read per report of "
            "50 batches is 0.001 % of U-Net's 80.0 ms steps") in text
    assert "`ENERGY_SOURCES=nvml python -m shared.demo --size ade20k" in text
    # a study.json of before the seeds reads as seed 0
    assert "| 0 | unet | 300 | 61.20 | yes | 250 | 31.0 | 3.100 | 3.700 | 420.0 | 230.0 | 97.5 | 99.1 |" \
           " 13000 | 13010 | -0.077 % | pass |" in text
    assert "| unet | 1 of 1 | 250 | 31.0 | 3.100 |" in text
    assert "- on / off: 0.9990; the two 'on' runs differ by 0.40 %" in text
    # the ablation to a target: each run, its command, the report's table under this section
    assert "| unet@baseline | 300 | 61.50 | yes | 280 | 70.2 | 6.500 | 6.500 | ok |" in text
    assert "| unet@fastest | - | - | - | - | - | - | - | skipped: out of time |" in text
    assert "- `python -m shared.demo --size ade20k --models unet --out /w/b`" in text
    assert "##### The report's implementation table (`python -m shared.report`)\n\n| model | variant |" in text
    assert "\n###### Conv/attention\n" in text and "# Implementation ablation" not in text


def test_bad_input_messages(tmp_path, capsys):
    assert campaign.main(["--render", str(tmp_path)]) == 2
    assert f"{tmp_path}: no summary.json (not a campaign's output folder)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        campaign.main([])
    assert "--out is required (or --render FOLDER)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        campaign.main(["--out", str(tmp_path / "o"), "--budget", "0"])
    assert "--budget 0: must be > 0 seconds" in capsys.readouterr().err


def test_render_two_seeds_gives_mean_and_range(tmp_path, capsys):
    out = _folder(tmp_path)
    one = json.loads((out / "study.json").read_text())
    seeds = []
    for seed, (b, t, e) in enumerate(((250, 31.0, 3.1), (150, 21.0, 2.1))):
        run = json.loads(json.dumps(one["runs"]["unet-1"]))
        run["summary"].update(batches_to_target=b, time_to_target_s=t, energy_to_target_wh=e)
        missed = json.loads(json.dumps(run))
        missed["summary"].update(model="segformer", reached_target=False, batches_to_target=None)
        seeds.append({"seed": seed, "status": "ok", "command": "-m shared.demo --seed %d" % seed,
                      "energy_sources_env": "nvml", "runs": {"unet": run, "segformer": missed}})
    (out / "study.json").write_text(json.dumps({"seeds": seeds}))
    assert campaign.main(["--render", str(out)]) == 0
    text = squeeze(capsys.readouterr().out)
    assert "- seed 1: `ENERGY_SOURCES=nvml python -m shared.demo --seed 1` (ok)" in text
    assert "| unet | 2 of 2 | 200 (150-250) | 26.0 (21.0-31.0) | 2.600 (2.100-3.100) |" in text
    assert "| segformer | 0 of 2 | - | - | - |" in text
