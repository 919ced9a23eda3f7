"""The benchmark (benchmarks/bench.py and the modules it runs) on CPU at toy size: the step and end-to-end paths through
the command line, the replica of the trial's step against the trial's own train_batch, the
FLOP/MFU arithmetic, the target verdicts, the NVML plumbing (with the fake pynvml), the
markdown writer, and what a user sees on bad input."""
from __future__ import annotations

import importlib.util
import json
import math
import pathlib
import sys
import time
import types

import pytest
import torch
from torch import nn

from benchmarks import bench, render, specs
from benchmarks.e2e import E2EData, analyse_e2e, e2e_periods, prepare_e2e_data, run_e2e
from benchmarks.gpu_monitor import NA_NO_NVML, NvmlMonitor, Sample, open_monitor
from benchmarks.render import (CPU_VERDICT, STEP_COLUMNS, append_markdown, compile_effects,
                               evaluate_targets, markdown_section)
from benchmarks.specs import (REFERENCES, BenchConfig, BenchError, ModelSpec, load_trial,
                              our_models, trial_available)
from benchmarks.step import (Context, TrialStep, bench_ours, count_step_flops, make_batch,
                             measure_matmul_peak, measure_step, mfu)
from shared.data.on_device import training_batch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from fakes import pynvml_fake  # noqa: E402
from mdtables import squeeze  # noqa: E402

CPU = torch.device("cpu")
TINY = ["--device", "cpu", "--res", "32", "--batch", "2", "--steps", "1", "--warmup", "1"]
TINY_UNET = {"unet_base_channels": 8, "unet_depth": 2}


def _na(v) -> bool:
    return isinstance(v, str) and v.startswith("n/a")


# ------------------------------------------------------------------ step benchmark, end to end
def test_step_smoke_cli_every_trial_and_reference(tmp_path, capsys):
    out = tmp_path / "results.json"
    md = tmp_path / "BENCHMARKS.md"
    md.write_text("# Benchmarks\n\n## Results\n")
    assert bench.main([*TINY, "--no-e2e", "--out", str(out), "--markdown", str(md)]) == 0
    data = json.loads(out.read_text())
    rows = {r["name"]: r for r in data["steps"]}
    for spec in our_models():
        r = rows[spec.name]
        if trial_available(spec.trial) is not None:  # a trial not in this checkout
            assert r["status"] == "skipped"
            continue
        assert r["status"] == "ok", r.get("error")
        assert r["img_s"] > 0 and r["step_ms"] > 0 and r["gflop_per_img"] > 0 and r["mfu_pct"] > 0
        assert math.isfinite(r["loss_first"]) and math.isfinite(r["loss_last"])
        # no NVML on a CPU run: said so, never a 0 that reads as a measurement
        for key in ("j_per_img", "avg_power_w", "gpu_util_pct"):
            assert r[key] == NA_NO_NVML
        assert r["precision"] == "fp32" and r["channels_last"] is False  # "auto" on CPU
    # read from the configs with 150 classes: the study's model sizes
    assert rows["unet"]["params_m"] == pytest.approx(6.83, abs=0.01)
    assert rows["segformer"]["params_m"] == pytest.approx(3.75, abs=0.01)
    # references: measured when their package is importable, else said so
    pair_trial = {s.name: s.trial for s in our_models()}
    for ref in REFERENCES:
        r = rows[ref.name]
        if not all(importlib.util.find_spec(m) for m in ref.requires):
            assert r["status"] == "not installed" and r["error"] in ", ".join(ref.requires)
        elif trial_available(pair_trial[ref.pair]) is None:
            assert r["status"] == "ok", r.get("error")
    assert rows["unet-plain"]["kind"] == "plain" and rows["unet-plain"]["status"] == "ok"
    unet_target = next(t for t in data["targets"] if t["ours"] == "unet"
                       and t["reference"] == "unet-plain" and t["metric"] == "img_s")
    assert unet_target["ratio"] == pytest.approx(rows["unet"]["img_s"] / rows["unet-plain"]["img_s"])
    assert unet_target["result"] == CPU_VERDICT  # GPU targets are not judged on a CPU
    text = squeeze(md.read_text())
    assert text.startswith("# Benchmarks\n\n## Results\n\n### ") and "(CPU smoke run)" in text
    assert "| unet | ours | 6.83 |" in text
    prep = data["meta"]["device_prep_ms"]
    assert 0 < prep < rows["unet"]["step_ms"]  # a part of the step it is included in
    assert f"part of every step row): {prep:.2f} ms per batch" in text
    assert "#### Ours / reference" in text and "#### End to end" not in text
    assert "### " in capsys.readouterr().out


def test_end_to_end_cli_on_cpu(tmp_path):
    out = tmp_path / "results.json"
    argv = [*TINY, "--only", "unet", "--no-reference", "--e2e-batches", "8", "--e2e-images", "16",
            "--e2e-set", "workers_per_slot=0", "unet_base_channels=8", "unet_depth=2",
            "--work-dir", str(tmp_path / "work"), "--out", str(out)]
    assert bench.main(argv) == 0
    data = json.loads(out.read_text())
    assert [r["name"] for r in data["steps"]] == ["unet"]
    (e2e,) = data["e2e"]
    assert e2e["status"] == "ok", e2e.get("error")
    # 8 batches, a report every 2: the window runs from batch 2 to batch 8
    assert e2e["timed_batches"] == 6 and e2e["img_s_loop"] > 0
    assert 0 < e2e["validation_s"] < e2e["window_s"]      # the validation at batch 4 is inside
    assert e2e["img_s_train"] > e2e["img_s_loop"]
    assert e2e["gpu_busy_pct"] == NA_NO_NVML and e2e["j_per_img"] == NA_NO_NVML
    assert e2e["device"] == "cpu"
    busy = next(t for t in data["targets"] if t["metric"] == "gpu_busy_pct")
    assert busy["result"] == CPU_VERDICT
    # the synthetic set and the run stay in --work-dir, with the CLI's own outputs
    runs = [p for p in (tmp_path / "work" / "e2e").iterdir() if p.is_dir()]
    assert len(runs) == 1 and (runs[0] / "metrics.jsonl").is_file()
    params = json.loads((tmp_path / "work" / "data-32" / "bench-params.json").read_text())
    assert params["min_size"] == 32 and params["max_size"] == 43 and params["num_classes"] == 150


# ------------------------------------------------------------------ LocalRuntime against Determined
# The benchmark runs the trials' own engine; what it must get right is what Determined does
# around a batch (LocalRuntime): the same losses, schedule and weights after three steps.
@pytest.mark.parametrize("name,extra", [
    ("unet", {**TINY_UNET, "warmup_batches": 0}),
    # bf16 autocast on CPU, channels_last and clipping: the branches the GPU run takes
    ("unet", {**TINY_UNET, "warmup_batches": 2, "precision": "bf16", "channels_last": True,
              "grad_clip_norm": 0.5}),
    # stochastic depth (RNG inside the step) and SGD
    ("segformer", {"warmup_batches": 0, "optimizer": "sgd"}),
])
def test_local_runtime_steps_as_determined_does(name, extra, tmp_path, monkeypatch):
    import determined.pytorch as det_torch
    monkeypatch.chdir(tmp_path)  # Determined's local mode may write next to the working dir
    spec = next(s for s in our_models() if s.name == name)
    cfg = BenchConfig(res=32, batch=2, num_classes=8)
    loaded = load_trial(spec, cfg, {**extra, "energy": {"enabled": False}})
    conf = {"searcher": {"name": "single", "metric": "miou"}, "hyperparameters": loaded.hp}
    with det_torch.init(hparams=loaded.hp, exp_conf=conf) as ctx:
        trial = loaded.trial_cls(ctx)
        model = loaded.build()
        model.load_state_dict(trial.model.state_dict())
        replica = TrialStep(model, trial.hp, CPU)
        assert (replica.precision, replica.channels_last) == (trial.precision, trial.channels_last)
        # what changes speed but not the loss: the optimizer's kind and settings, the memory
        # format and autocast state the model's forward sees
        assert type(replica.optimizer) is type(trial.optimizer)
        assert replica.optimizer.defaults == trial.optimizer.defaults
        assert [{k: v for k, v in g.items() if k != "params"} for g in replica.optimizer.param_groups] \
            == [{k: v for k, v in g.items() if k != "params"} for g in trial.optimizer.param_groups]
        seen = {"trial": [], "replica": []}

        def watch(who):
            def hook(module, args):
                x = args[0]
                seen[who].append((x.is_contiguous(memory_format=torch.channels_last),
                                  torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
            return hook
        trial.model.register_forward_pre_hook(watch("trial"))
        replica.model.register_forward_pre_hook(watch("replica"))
        for i in range(3):
            batch = make_batch(2, 32, 8, CPU, seed=i)
            ctx._current_batch_idx = i  # as Determined's Trainer sets it before train_batch
            torch.manual_seed(100 + i)
            trial.train_loss.reset()
            metrics = trial.train_batch(batch, 0, i)
            assert set(metrics) == {"lr"}  # no tensor for Determined to copy back per batch
            metrics["loss"] = trial.train_loss.total
            for scheduler in ctx.lr_schedulers:  # as the Trainer steps it after each batch
                scheduler.step()
            torch.manual_seed(100 + i)
            loss = replica(*batch)
            assert torch.equal(loss, metrics["loss"]), f"step {i}: {loss} != {metrics['loss']}"
            assert replica.scheduler.get_last_lr() == trial.scheduler.get_last_lr()
        assert seen["replica"] == seen["trial"] and len(seen["trial"]) == 3
        for (k, a), b in zip(trial.model.state_dict().items(), replica.model.state_dict().values()):
            assert torch.equal(a, b), f"{k} differs after 3 steps"
    assert trial.hp["optimizer"] == extra.get("optimizer", "adamw")


# ------------------------------------------------------------------ FLOPs and MFU
def test_flop_count_and_mfu_on_a_known_model():
    conv = nn.Conv2d(3, 8, 1, bias=False)
    images, masks = training_batch(*make_batch(2, 4, 8, CPU)[:3])
    assert images.dtype == torch.float32 and masks.dtype == torch.int64
    # forward 2*B*H*W*Cin*Cout, backward the same for the weight (the input needs no gradient)
    fwd = 2 * 2 * 4 * 4 * 3 * 8
    assert count_step_flops(conv, images, masks, None, False) == 2 * fwd
    assert conv.weight.grad is None
    # logits at a quarter of the labels' size: the upsampling adds no counted FLOP
    small = training_batch(*make_batch(2, 2, 8, CPU)[:3])[0]
    assert count_step_flops(conv, small, masks, None, True) == 2 * (fwd // 4)
    # 3072 FLOP a step, 10 steps in 2 s: 15360 FLOP/s of a 1e5 FLOP/s peak
    assert mfu(2 * fwd, 10, 2.0, 1e5) == pytest.approx(0.1536)
    with pytest.raises(BenchError, match="positive peak"):
        mfu(2 * fwd, 10, 2.0, 0.0)
    assert measure_matmul_peak(CPU, torch.float32, n=64, iters=2, repeats=1) > 0
    with pytest.raises(BenchError, match="must be > 0"):
        measure_matmul_peak(CPU, torch.float32, n=0)


# ------------------------------------------------------------------ targets
def _row(name, img_s=None, j=None, status="ok", compile_=False, base=None):
    return {"name": name, "status": status, "img_s": img_s, "j_per_img": j, "compile": compile_,
            "base": base or name, "error": "boom" if status != "ok" else None}


def test_an_mfu_above_100_percent_is_flagged_as_an_error_of_the_peak():
    """A model cannot run faster than the device's peak: an MFU above 100% (a CPU smoke run
    printed 149.26 %) is an error in the measured peak, and says so where it is printed."""
    assert render.mfu_error(149.26) == render.MFU_ABOVE_PEAK and render.mfu_error(99.9) is None
    assert render.mfu_text(149.26, " %") == f"149.26 % ({render.MFU_ABOVE_PEAK})"
    assert render.mfu_text(8.26) == "8.26" and render.mfu_text("n/a (no peak measured)") == "n/a (no peak measured)"
    assert "the measured matmul peak is too low" in render.MFU_ABOVE_PEAK


def test_targets_on_hand_values():
    rows = [_row("segformer", 130.0, 0.70), _row("transformers.SegFormer-b0(sdpa)", 100.0, 1.0),
            _row("unet", 129.0, 2.0), _row("unet-plain", 100.0, 2.5),
            _row("unet+compile", 140.0, 1.9, compile_=True, base="unet"),
            _row("unet+compile:reduce-overhead", 120.0, 2.1, compile_=True, base="unet"),
            _row("deeplabv3plus", 10.0, NA_NO_NVML),
            _row("smp.DeepLabV3Plus(resnet50)", status="not installed")]
    e2e = [{"name": "unet", "status": "ok", "gpu_busy_pct": 96.0, "validation_first_s": 0.5,
            "validation_later_s": 0.25, "validation_first_over_later": 2.0},
           {"name": "segformer", "status": "ok", "gpu_busy_pct": 80.0, "validation_first_s": 3.0,
            "validation_later_s": 0.25, "validation_first_over_later": 12.0},
           {"name": "segmenter", "status": "error", "error": "x"}]
    out = evaluate_targets(rows, e2e)
    by = {(t["ours"], t["reference"], t["metric"]): t for t in out}
    seg = by[("segformer", "transformers.SegFormer-b0(sdpa)", "img_s")]
    assert seg["ratio"] == pytest.approx(1.3) and seg["result"] == "pass"       # the bound passes
    assert by[("segformer", "transformers.SegFormer-b0(sdpa)", "j_per_img")]["result"] == "pass"
    unet = by[("unet", "unet-plain", "img_s")]
    assert unet["ratio"] == pytest.approx(1.29) and unet["result"] == "FAIL"
    assert by[("unet+compile", "unet-plain", "img_s")]["result"] == "pass"      # 1.4x
    assert by[("unet+compile:reduce-overhead", "unet-plain", "img_s")]["result"] == "FAIL"  # 1.2x
    assert by[("unet", "unet-plain", "j_per_img")]["result"] == "FAIL"          # 0.8x > 0.77x
    assert by[("unet+compile", "unet-plain", "j_per_img")]["result"] == "pass"  # 0.76x
    dl = by[("deeplabv3plus", "smp.DeepLabV3Plus(resnet50)", "img_s")]
    assert dl["result"] == "n/a (smp.DeepLabV3Plus(resnet50): not installed)" and dl["ratio"] is None
    assert by[("deeplabv3plus", "smp.DeepLabV3Plus(resnet50)", "j_per_img")]["result"] == \
        NA_NO_NVML  # ours is missing first: its reason is the one given
    assert ("segmenter-vits16-linear", "timm.vit_small_patch16_224+linear", "img_s") not in by
    busy = {t["ours"]: t["result"] for t in out if t["metric"] == "gpu_busy_pct"}
    assert busy == {"unet": "pass", "segformer": "FAIL", "segmenter": "n/a (segmenter: error)"}
    first = {t["ours"]: (t["result"], t["ratio"]) for t in out if t["metric"] == "first_validation_s"}
    assert first == {"unet": ("pass", 2.0), "segformer": ("FAIL", 12.0),  # at most 2x
                     "segmenter": ("n/a (segmenter: error)", None)}
    # on a CPU run the ratios stand and the GPU verdicts do not
    cpu = evaluate_targets(rows, e2e, device_type="cpu")
    judged = [t for t in cpu if t["rule"] and t["ratio"] is not None]
    assert judged and all(t["result"] == CPU_VERDICT for t in judged)
    assert [t["result"] for t in cpu if t["metric"] == "gpu_busy_pct"][:2] == [CPU_VERDICT] * 2


def test_targets_name_why_a_value_is_missing():
    rows = [_row("deeplabv3plus", 10.0, NA_NO_NVML), _row("smp.DeepLabV3Plus(resnet50)", 8.0,
                                                                 NA_NO_NVML)]
    out = {(t["reference"], t["metric"]): t for t in evaluate_targets(rows)}
    smp = "smp.DeepLabV3Plus(resnet50)"
    assert out[(smp, "img_s")]["ratio"] == pytest.approx(1.25)
    assert out[(smp, "img_s")]["result"] == "FAIL"
    assert out[(smp, "j_per_img")]["result"] == NA_NO_NVML
    assert out[(smp, "j_per_img")]["ours_value"] == NA_NO_NVML
    tv = out[("torchvision.deeplabv3_resnet50", "img_s")]
    assert tv["result"] == "n/a (torchvision.deeplabv3_resnet50 not measured)"


def test_compile_effects():
    rows = [_row("unet", 100.0), _row("unet+compile", 110.0, compile_=True, base="unet"),
            _row("segformer", 100.0), _row("segformer+compile", 80.0, compile_=True, base="segformer"),
            _row("segmenter", 100.0), _row("segmenter+compile", 101.0, compile_=True, base="segmenter"),
            _row("deeplabv3plus", 100.0),
            _row("deeplabv3plus+compile", status="error", compile_=True, base="deeplabv3plus")]
    out = {c["name"]: c for c in compile_effects(rows)}
    assert out["unet"]["speedup"] == pytest.approx(1.1) and out["unet"]["helped"] == "yes"
    assert out["segformer"]["helped"] == "no: slower"
    assert out["segmenter"]["helped"] == "no: within noise"
    assert out["deeplabv3plus"]["helped"] == "n/a (compiled: boom)"


def test_ablation_variants_and_their_effects():
    """--ablation: the baseline, each switch alone, all fast, the two compiled; every variant
    a valid configuration of its model (attention_impl only where the model has it)."""
    seg = specs.ablation_specs("segformer")
    names = [s.name + ("+compile" if c else "") for s, c in seg]
    assert names == ["segformer@baseline", "segformer@+precision=bf16",
                     "segformer@+channels_last=True", "segformer@+fused_optimizer=True",
                     "segformer@+cudnn_benchmark=True", "segformer@+attention_impl=sdpa",
                     "segformer@fastest", "segformer@baseline+compile", "segformer@fastest+compile"]
    unet = specs.ablation_specs("unet")
    assert len(unet) == 8 and not any("attention_impl" in dict(s.overrides) for s, _ in unet)
    for spec, _ in seg + unet:
        hp = load_trial(spec, BenchConfig()).hp
        assert {k: hp[k] for k in dict(spec.overrides)} == dict(spec.overrides)
    with pytest.raises(BenchError, match=r"^--ablation vgg: no such model; names: .*\bunet, "):
        specs.ablation_specs("vgg")
    rows = [_row("unet@baseline", 100.0), _row("unet@fastest", 250.0),
            _row("unet@+precision=bf16", 180.0),
            _row("unet@fastest+compile", 300.0, compile_=True, base="unet@fastest")]
    rows[0]["j_per_img"], rows[1]["j_per_img"] = 2.0, 1.0
    out = {e["variant"]: e for e in render.ablation_effects(rows)}
    assert out["fastest"]["speedup"] == 2.5 and out["fastest"]["energy_ratio"] == 0.5
    assert out["fastest+compile"]["fastest"] and not out["fastest"]["fastest"]
    assert out["+precision=bf16"]["energy_ratio"] is None  # no J/img measured: not a ratio
    assert "#### Implementation ablation" in render.markdown_section(
        {"meta": {"date": "d", "device_name": "x", "device_type": "cuda", "command": "c",
                  "torch": "t", "python": "p", "settings": {"res": 1, "batch": 1, "steps": 1,
                                                           "warmup": 1, "num_classes": 1}},
         "steps": rows})


# ------------------------------------------------------------------ NVML
def _fake_nvml(monkeypatch, **gpu):
    monkeypatch.setitem(sys.modules, "pynvml", pynvml_fake)
    # the fake's utilisation is a constant; this test wants a value of its own
    monkeypatch.setattr(pynvml_fake, "nvmlDeviceGetUtilizationRates",
                        lambda h: types.SimpleNamespace(gpu=87, memory=20), raising=False)
    pynvml_fake.reset([pynvml_fake.FakeGpu(**gpu)])


def test_energy_columns_without_nvml(monkeypatch):
    monitor, why = open_monitor(CPU)
    assert monitor is None and why == NA_NO_NVML
    monkeypatch.setitem(sys.modules, "pynvml", pynvml_fake)
    pynvml_fake.reset([], init_error=pynvml_fake.NVMLError_DriverNotLoaded())
    monitor, why = open_monitor(torch.device("cuda", 0))
    assert monitor is None and why == "n/a (no NVML: NVML unavailable: Driver Not Loaded)"
    step = lambda *batch: torch.tensor(1.0)  # noqa: E731
    r = measure_step(step, make_batch(2, 8, 4, CPU), 2, 0, CPU, None, why)
    assert r["j_per_img"] == r["gpu_util_pct"] == r["avg_power_w"] == why


def test_energy_from_the_nvml_counter(monkeypatch):
    _fake_nvml(monkeypatch, power_w=300.0)
    monitor = NvmlMonitor.open(torch.device("cuda", 0), env={}, period_s=0.02)
    assert monitor.name == "NVIDIA H100 80GB HBM3" and monitor.has_counter

    def step(*batch):
        time.sleep(0.25)
        return torch.tensor(2.0)
    r = measure_step(step, make_batch(2, 8, 4, CPU), 2, 0, CPU, monitor)
    monitor.close()
    assert r["energy_source"] == "NVML energy counter" and r["nvml_samples"] >= 5
    # 300 W over the timed window, 4 images; the fake counter moves every 0.1 s (30 J a tick)
    assert r["j_per_img"] == pytest.approx(300.0 * r["seconds"] / 4, abs=2 * 30 / 4)
    assert r["avg_power_w"] == pytest.approx(300.0) and r["gpu_util_pct"] == pytest.approx(87.0)


def test_monitor_samples_carry_the_energy_meters_joules(monkeypatch):
    # the end-to-end rows and the campaign's cross-check take the energy from the samples: the
    # energy meter's cumulative joules, the benchmark's only reader of the counter
    _fake_nvml(monkeypatch, power_w=300.0)
    monitor = NvmlMonitor.open(torch.device("cuda", 0), env={}, period_s=0.02)
    monitor.start()
    time.sleep(0.5)
    samples = monitor.stop()
    assert len(samples) >= 5 and all(isinstance(s, Sample) for s in samples)
    energy = [s.energy_j for s in samples]
    assert None not in energy and energy == sorted(energy)
    first, last = samples[0], samples[-1]
    # the fake counter moves every 0.1 s (30 J a tick at 300 W)
    assert last.energy_j - first.energy_j == pytest.approx(300.0 * (last.time - first.time),
                                                           abs=2 * 30)

    def boom(*batch):
        raise RuntimeError("step failed")
    batch = make_batch(1, 8, 4, CPU)
    with pytest.raises(RuntimeError, match="step failed"):
        measure_step(boom, batch, 1, 0, CPU, monitor)
    # the failed step closed its energy window and stopped the sampler: the next row measures
    r = measure_step(lambda *b: torch.tensor(1.0), batch, 1, 0, CPU, monitor)
    assert r["energy_source"] == "NVML energy counter"
    monitor.close()
    assert pynvml_fake.STATE.initialized == 0  # the monitor's and the energy source's NVML


def test_energy_from_power_samples_without_a_counter(monkeypatch):
    _fake_nvml(monkeypatch, power_w=200.0, has_counter=False)
    period = 0.05
    monitor = NvmlMonitor.open(torch.device("cuda", 0), env={}, period_s=period)
    assert not monitor.has_counter
    batch = make_batch(1, 8, 4, CPU)
    r = measure_step(lambda *b: (time.sleep(0.3), torch.tensor(1.0))[1], batch, 1, 0, CPU,
                     monitor)
    monitor.close()
    assert r["energy_source"] == "NVML power samples x time"
    # the energy library integrates its own power samples up to the latest one: each end of
    # the window may lag by up to a sampling period
    assert r["j_per_img"] == pytest.approx(200.0 * r["seconds"], abs=2 * 200.0 * period)
    assert r["avg_power_w"] == pytest.approx(200.0)


def test_nvml_open_errors_name_the_cause(monkeypatch):
    with pytest.raises(BenchError, match="NVML reads GPUs; the device is cpu"):
        NvmlMonitor.open(CPU)
    monkeypatch.setitem(sys.modules, "pynvml", None)  # as if nvidia-ml-py were not installed
    with pytest.raises(BenchError, match="cannot import pynvml.*pip install nvidia-ml-py"):
        NvmlMonitor.open(torch.device("cuda", 0))


def test_nvml_follows_cuda_visible_devices(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", pynvml_fake)
    pynvml_fake.reset([pynvml_fake.FakeGpu(name="A"), pynvml_fake.FakeGpu(name="B")])
    monitor = NvmlMonitor.open(torch.device("cuda", 0), env={"CUDA_VISIBLE_DEVICES": "1"})
    assert monitor.name == "B"
    with pytest.raises(BenchError, match="CUDA device 1 is not visible"):
        NvmlMonitor.open(torch.device("cuda", 1), env={"CUDA_VISIBLE_DEVICES": "1"})


# ------------------------------------------------------------------ end-to-end arithmetic
def test_analyse_e2e_on_hand_records():
    rec = lambda g, s, t: {"group": g, "steps_completed": s, "time": t, "metrics": {}}  # noqa: E731
    records = [rec("run", 0, 99.0), rec("training", 10, 100.0), rec("training", 20, 104.0),
               rec("validation", 20, 106.0), rec("training", 30, 110.0), rec("validation", 30, 111.0)]
    # utilisation 100 % while training, 20 % during the validation (104-106 s); 200 W; the
    # energy meter's cumulative joules
    samples = [Sample(100.0 + 0.5 * i, 20.0 if 104.0 <= 100.0 + 0.5 * i <= 106.0 else 100.0,
                      200.0, 1000.0 + 200.0 * 0.5 * i) for i in range(23)]
    out = analyse_e2e(records, samples, global_batch=16)
    assert out["timed_batches"] == 20 and out["window_s"] == pytest.approx(10.0)
    assert out["validation_s"] == pytest.approx(2.0)  # the one at batch 30 is after the window
    assert out["img_s_loop"] == pytest.approx(320 / 10.0)
    assert out["img_s_train"] == pytest.approx(320 / 8.0)
    inside = [s for s in samples if 100.0 <= s[0] <= 110.0]
    assert out["gpu_busy_pct"] == pytest.approx(sum(s[1] for s in inside) / len(inside))
    assert out["gpu_busy_train_pct"] == pytest.approx(100.0)
    assert out["j_per_img"] == pytest.approx(200.0 / 32.0)  # 200 W at 32 img/s
    no_nvml = analyse_e2e(records, [], global_batch=16)
    assert no_nvml["gpu_busy_pct"] == NA_NO_NVML and no_nvml["j_per_img"] == NA_NO_NVML
    with pytest.raises(BenchError, match="1 training report.*raise --e2e-batches"):
        analyse_e2e(records[:2], [], global_batch=16)
    with pytest.raises(BenchError, match=r"steps 10\.\.10, times 100.0\.\.104.0: no window"):
        analyse_e2e([rec("training", 10, 100.0), rec("training", 10, 104.0)], [], 16)


def test_e2e_periods():
    assert e2e_periods(120) == (10, 60)
    assert e2e_periods(8) == (2, 4)
    assert e2e_periods(4) == (1, 2)


# ------------------------------------------------------------------ isolation of failures
def test_one_failing_model_does_not_hide_the_others(monkeypatch):
    ctx = Context(BenchConfig(res=32, batch=2, steps=1, warmup=0))
    bad = ModelSpec("unet-bad", "unet", (("unet_depth", 99),))
    row = bench_ours(bad, ctx)
    assert row["status"] == "error" and "unet_depth" in row["error"]
    good = bench_ours(ModelSpec("unet-tiny", "unet", tuple(TINY_UNET.items())), ctx)
    assert good["status"] == "ok" and good["mfu_pct"] == "n/a (no peak measured)"

    def no_compiler(*a, **k):
        raise RuntimeError("no C++ compiler for inductor")
    monkeypatch.setattr(torch, "compile", no_compiler)
    comp = bench_ours(ModelSpec("unet-tiny", "unet", tuple(TINY_UNET.items())), ctx,
                            compile=True)
    assert comp["name"] == "unet-tiny+compile" and comp["status"] == "error"
    assert "no C++ compiler" in comp["error"]
    missing = bench_ours(ModelSpec("ghost", "no_such_trial"), ctx)
    assert missing["status"] == "skipped"
    assert "trials/no_such_trial/train.py does not exist; known recipes: " in missing["error"]


def test_e2e_failures_are_rows_that_say_why(tmp_path):
    cfg = BenchConfig(res=32, batch=2, e2e_batches=4, e2e_images=4,
                            e2e_set=("workers_per_slot=0", "lrr=0.1"))
    ctx = Context(cfg)
    data = prepare_e2e_data(cfg, tmp_path)
    assert prepare_e2e_data(cfg, tmp_path) == data  # reused, not regenerated
    unet = next(s for s in our_models() if s.name == "unet")
    row = run_e2e(unet, ctx, data, tmp_path)
    assert row["status"] == "error" and "train.py exited with 2" in row["error"]
    assert "unknown hyperparameter 'lrr' (did you mean 'lr'?)" in row["error"]  # the log's tail
    cfg.e2e_set, cfg.e2e_timeout_s = ("workers_per_slot=0",), 0.2
    row = run_e2e(unet, ctx, data, tmp_path)
    assert row["status"] == "error" and "took more than --e2e-timeout 0.2 s" in row["error"]


def test_time_budget_skips_parts_and_says_so(tmp_path):
    out = tmp_path / "r.json"
    assert bench.main([*TINY, "--only", "segformer", "--time-budget", "0.001", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    rows = data["steps"] + data["e2e"]
    assert rows and all(r["status"] == "skipped" for r in rows)
    assert rows[0]["error"] == "not started: --time-budget 0.001 s spent before segformer"


def test_ablation_only_eager_and_skip_options(tmp_path):
    """--ablation unet --ablation-only --ablation-eager-only: only the six eager variants (no
    plain step rows, no compiled ones); --skip leaves out matching references; the compile modes
    are recorded in the settings."""
    out = tmp_path / "r.json"
    assert bench.main([*TINY, "--only", "unet", "--no-e2e", "--skip", "smp", "--ablation", "unet",
                       "--ablation-only", "--ablation-eager-only", "--ablation-steps", "1",
                       "--compile-modes", "default", "reduce-overhead", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    names = [r["name"] for r in data["steps"]]
    assert [n for n in names if n.startswith("unet@")] == [
        "unet@baseline", "unet@+precision=bf16", "unet@+channels_last=True",
        "unet@+fused_optimizer=True", "unet@+cudnn_benchmark=True", "unet@fastest"]
    assert "unet" not in names and not any("smp" in n for n in names)
    assert "unet-plain" in names  # a reference the skip does not match
    assert data["meta"]["settings"]["compile_modes"] == ["default", "reduce-overhead"]


def test_a_train_py_without_a_trial_class_is_refused(tmp_path, monkeypatch):
    from shared.recipes import RecipeError
    (tmp_path / "trials" / "fake").mkdir(parents=True)
    (tmp_path / "trials" / "fake" / "model.py").write_text("class Net:\n    pass\n")
    (tmp_path / "trials" / "fake" / "train.py").write_text("from model import Net\n")
    (tmp_path / "experiment_configs" / "fake").mkdir(parents=True)
    (tmp_path / "experiment_configs" / "fake" / "single_gpu.yaml").write_text("hyperparameters: {}\n")
    monkeypatch.setattr(specs, "ROOT", tmp_path)
    with pytest.raises(RecipeError, match=r"fake/train.py: expected one trial class .*found 0 \(none\)"):
        load_trial(ModelSpec("fake", "fake"), BenchConfig())


def test_a_classification_recipe_is_refused_by_name():
    with pytest.raises(BenchError, match=r"image_classification/train.py: ImageClassificationTrial "
                                         r"is a classification trial"):
        load_trial(ModelSpec("x", "image_classification"), BenchConfig())


def test_bad_override_names_the_config_and_key():
    from shared.hparams import ConfigError
    with pytest.raises(ConfigError, match=r"unet/single_gpu.yaml: unknown hyperparameter 'unet_dept'"):
        load_trial(ModelSpec("x", "unet", (("unet_dept", 2),)), BenchConfig())


# ------------------------------------------------------------------ markdown
def _results(device_type="cuda"):
    return {
        "meta": {"date": "2026-11-22 10:00 UTC", "device_name": "NVIDIA H100 80GB HBM3",
                 "device_type": device_type, "command": "python -m benchmarks.bench --compile",
                 "torch": "2.11.0", "cuda": "12.8", "cudnn": 91000, "python": "3.12.3",
                 "settings": {"res": 512, "batch": 16, "steps": 30, "warmup": 8, "num_classes": 150,
                              "cudnn_benchmark": False},
                 "peak_flops": 7.9e14, "peak_dtype": "bfloat16", "nvml": "NVIDIA H100: ok"},
        "steps": [{**_row("unet", 250.0, 2.0), "kind": "ours", "params_m": 6.83, "precision": "bf16",
                   "step_ms": 64.0, "peak_mem_gib": 11.5, "avg_power_w": 500.0, "gpu_util_pct": 99.0,
                   "gflop_per_img": 261.0, "mfu_pct": 8.26},
                  {**_row("unet-plain", 200.0, 2.4), "kind": "plain"},
                  {**_row("unet+compile", 300.0, 1.8, compile_=True, base="unet"), "kind": "ours"},
                  {**_row("smp.Unet(resnet34)", status="not installed"), "kind": "reference",
                   "error": "segmentation_models_pytorch"}],
        "e2e": [{"name": "unet", "status": "ok", "timed_batches": 110, "window_s": 8.0,
                 "validation_s": 1.0, "img_s_loop": 220.0, "img_s_train": 251.4,
                 "gpu_busy_pct": 96.5, "gpu_busy_train_pct": 99.0, "j_per_img": 2.2}],
    }


def test_markdown_section_structure(tmp_path):
    res = _results()
    res["targets"] = evaluate_targets(res["steps"], res["e2e"])
    res["compile"] = compile_effects(res["steps"])
    text = squeeze(markdown_section(res))
    lines = text.splitlines()
    assert lines[0] == "### 2026-11-22 10:00 UTC: NVIDIA H100 80GB HBM3"
    assert "- command: `python -m benchmarks.bench --compile`" in lines
    assert any(line.startswith("- device: NVIDIA H100 80GB HBM3; torch 2.11.0, CUDA 12.8")
               for line in lines)
    assert "- matmul peak (bfloat16): 790.0 TFLOP/s" in lines
    headings = [line for line in lines if line.startswith("#### ")]
    assert [h.split(" (")[0] for h in headings] == ["#### Training step", "#### Ours / reference",
                                                     "#### torch.compile", "#### End to end"]
    step_table = [line for line in lines if line.startswith("| ")][:5]
    assert step_table[0] == "| " + " | ".join(STEP_COLUMNS) + " |"
    assert step_table[1].startswith("| unet | ours | 6.83 | bf16 | 250.0 | 64.00 | 11.50 | 2.000 |")
    assert "| smp.Unet(resnet34) | reference |" in text
    assert "not installed: segmentation_models_pytorch" in text
    assert "| unet | unet-plain | img_s | 250.0 | 200.0 | 1.25x | >= 1.3x | FAIL |" in text
    assert "| unet+compile | unet-plain | img_s | 300.0 | 200.0 | 1.50x | >= 1.3x | pass |" in text
    assert "| unet | default | 250.0 | 300.0 | 1.20x |" in text
    assert "| unet | end to end | gpu_busy_pct | 96.5 | - | - | >= 90% | pass |" in text
    # training / step: 251.4 img/s of the loop over the 250.0 of the same model's step row
    assert "| unet | 110 | 8.0 | 1.0 | - / - | 220.0 | 251.4 | 1.006 | 96.5 | 99.0 | 2.200 | ok |" in text
    assert "CPU smoke run" not in text
    cpu = markdown_section({**_results("cpu"), "targets": [], "compile": []})
    assert cpu.splitlines()[0].endswith("(CPU smoke run)") and "say nothing about GPU" in cpu

    md = tmp_path / "B.md"
    md.write_text("# Benchmarks\nintro")  # no final newline: a blank line is still put between
    append_markdown(md, text)
    append_markdown(md, text)
    body = md.read_text()
    assert body.startswith("# Benchmarks\nintro\n\n### 2026-11-22")
    assert body.count("### 2026-11-22 10:00 UTC") == 2 and "\n\n\n" not in body


def test_render_a_results_file(tmp_path, capsys):
    path = tmp_path / "results.json"
    path.write_text(json.dumps(_results()))
    md = tmp_path / "B.md"
    assert bench.main(["--render", str(path), "--markdown", str(md)]) == 0
    assert "| unet | unet-plain | img_s |" in squeeze(md.read_text())  # targets recomputed from the rows
    assert "appended to" in capsys.readouterr().out


# ------------------------------------------------------------------ what a user sees on bad input
@pytest.mark.parametrize("argv,message", [
    (["--res", "48"], "--res 48: must be a multiple of 32"),
    (["--device", "cuda"], "--device cuda: torch.cuda.is_available() is False"),
    (["--only", "resnet9000"], "--only 'resnet9000' matches no model; names: "
                               f"{', '.join(s.name for s in our_models())}, unet-plain"),
    (["--out", "/no/such/dir/r.json"],
     "--out /no/such/dir/r.json: directory /no/such/dir does not exist"),
    (["--markdown", "/no/such/dir/B.md"], "--markdown /no/such/dir/B.md: directory /no/such/dir"),
    (["--render", "/no/such/results.json"], "--render /no/such/results.json: no such file"),
    (["--e2e-set", "workers_per_slot"], "--e2e-set 'workers_per_slot': expected KEY=VALUE"),
    (["--time-budget", "0"], "--time-budget 0: must be > 0 seconds"),
    (["--e2e-timeout", "-1"], "--e2e-timeout -1: must be > 0 seconds"),
])
def test_bad_options_are_named(argv, message, capsys):
    if argv[:2] == ["--device", "cuda"] and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert bench.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err


@pytest.mark.parametrize("argv,message", [
    (["--res", "16"], "--res must be >= 32, got 16"),
    (["--steps", "0"], "--steps must be >= 1, got 0"),
    (["--batch", "two"], "--batch must be an integer, got 'two'"),
    (["--e2e-batches", "3"], "--e2e-batches must be >= 4, got 3"),
])
def test_bad_numbers_are_refused_by_the_parser(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        bench.main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("content,message", [
    ("not json", "not JSON"),
    ('{"rows": []}', "not a results file of benchmarks.bench"),
])
def test_render_refuses_a_file_that_is_not_results(tmp_path, content, message, capsys):
    path = tmp_path / "r.json"
    path.write_text(content)
    assert bench.main(["--render", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and message in err


def test_e2e_data_dir_holding_another_set_is_refused(tmp_path):
    cfg = BenchConfig(res=32, batch=2, e2e_images=4)
    (tmp_path / "data-32").mkdir()
    (tmp_path / "data-32" / "stray.txt").write_text("x")
    with pytest.raises(BenchError, match=r"data-32 holds an incomplete or foreign data "
                                               r"set \(no bench-params.json"):
        prepare_e2e_data(cfg, tmp_path)
    (tmp_path / "data-32" / "bench-params.json").write_text(json.dumps({"num_train": 1}))
    with pytest.raises(BenchError, match=r"data-32 holds a different data set"):
        prepare_e2e_data(cfg, tmp_path)


# ------------------------------------------------------------------ selection and background data
def test_only_and_compile_take_several_names(capsys):
    ours, refs = bench.select(["unet", "segformer"])
    assert [s.name for s in ours] == ["segformer", "unet"]  # the registry's order
    assert {r.pair for r in refs} == {"unet", "segformer"}
    assert bench.select("unet") == bench.select(["unet"])
    assert [s.name for s in bench.compile_selection(our_models(), ["unet", "segformer"])] == \
        ["segformer", "unet"]  # run order (the registry's), not argument order
    assert bench.compile_selection(our_models(), []) == list(our_models())  # bare --compile: all
    args = bench.parse_args([*TINY, "--compile"])
    assert args.compile == []
    assert bench.main([*TINY, "--compile", "unet", "resnet9000"]) == 2
    err = capsys.readouterr().err
    assert f"--compile resnet9000: no such model; names: {', '.join(s.name for s in our_models())}" in err


def test_e2e_data_is_generated_in_the_background_and_reused(tmp_path):
    cfg = BenchConfig(res=32, batch=2, e2e_images=3)
    data = E2EData(cfg, tmp_path)
    assert data.proc is not None  # started, not finished: the caller goes on meanwhile
    path = data.wait()
    assert sorted(p.name for p in (path / "images" / "training").iterdir()) == \
        [f"ADE_train_{i:08d}.jpg" for i in (1, 2, 3)]
    assert json.loads((path / "bench-params.json").read_text())["num_train"] == 3
    again = E2EData(cfg, tmp_path)
    assert again.proc is None and again.wait() == path  # complete: reused, nothing started
    # a generation cut short leaves no marker, and the next one refuses the half-written set
    other = E2EData(BenchConfig(res=64, batch=2, e2e_images=50), tmp_path)
    time.sleep(0.5)
    (other.path / "images").mkdir(exist_ok=True)  # what it wrote before it was stopped
    other.cancel()
    assert not other.marker.exists()
    with pytest.raises(BenchError, match=r"data-64 holds an incomplete or foreign data set"):
        E2EData(BenchConfig(res=64, batch=2, e2e_images=50), tmp_path)
