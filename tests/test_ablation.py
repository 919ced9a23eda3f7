"""The implementation ablation (README: Implementation ablation): eager and sdpa attention
compute the same function; every combination of the switches trains; the configs pass the
checker (tests/test_configs.py checks every shipped config); the report's implementation
table and chart from generated run directories."""
from __future__ import annotations

import functools
from typing import Optional
import itertools
import pathlib
import sys

import pytest
import torch
import torch.nn.functional as F

from mdtables import squeeze
from model_helpers import ROOT, segformer, segmenter, small_segformer, small_segmenter, trial_class
from shared import configfile
from shared import expconf
from shared import hparams as hpmod
from shared.attention import ATTENTION_IMPLS, set_attention_impl
from shared.data.transforms import PhotometricDistortion
from shared.engine import (Engine, LocalRuntime, SegmentationTask, build_optimizer, resolve_compile,
                           segmentation_loss)
from shared.report import build_report, compare, implementation, load_local

sys.path.insert(0, str(ROOT / "tests" / "fixtures" / "report"))
from synth import run_records, write_run  # noqa: E402

CPU = torch.device("cpu")


# ----------------------------------------------------------------------------- attention
@pytest.mark.parametrize("factory,hw", [(small_segformer, (64, 48)),
                                        (functools.partial(small_segmenter, decoder_layers=1),
                                         (48, 32))])
def test_eager_and_sdpa_give_the_same_logits_and_gradients(factory, hw, monkeypatch):
    torch.manual_seed(0)
    model = factory(5).eval()  # eval: no dropout or stochastic depth draws to tell apart
    x = torch.randn(2, 3, *hw)

    def run(impl):
        set_attention_impl(model, impl)
        model.zero_grad()
        out = model(x)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                              if p.grad is not None}

    calls = []
    real = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    sdpa_out, sdpa_grads = run("sdpa")
    fused_calls, calls[:] = len(calls), []
    eager_out, eager_grads = run("eager")
    assert fused_calls > 0 and calls == []  # eager really is the explicit product everywhere
    torch.testing.assert_close(eager_out, sdpa_out, rtol=1e-5, atol=1e-5)
    assert eager_grads.keys() == sdpa_grads.keys() and len(sdpa_grads) == len(list(model.parameters()))
    for name, g in sdpa_grads.items():
        # float32: the two sum in different orders, and the rounding grows through the
        # backward pass; per tensor, relative to its norm
        err = (eager_grads[name] - g).norm() / g.norm().clamp(min=1e-12)
        assert err < 1e-4, (name, float(err))
    # in float64 the rounding vanishes: the same function to 1e-9
    model.double()
    x = x.double()
    calls[:] = []
    sdpa64, sdpa64_grads = run("sdpa")
    eager64, eager64_grads = run("eager")
    torch.testing.assert_close(eager64, sdpa64, rtol=1e-9, atol=1e-9)
    for name, g in sdpa64_grads.items():
        torch.testing.assert_close(eager64_grads[name], g, rtol=1e-7, atol=1e-9, msg=name)


def test_the_switch_reaches_timm_and_our_modules_and_refuses_bad_values():
    with torch.device("meta"):
        model = small_segmenter(4)
    n = set_attention_impl(model, "eager")
    assert n == 12 + 2  # ViT-T's 12 encoder blocks and the 2 mask-decoder layers
    assert not any(m.fused_attn for m in model.modules() if hasattr(m, "fused_attn"))
    with pytest.raises(ValueError, match=r"^attention_impl must be one of sdpa, eager, got 'flash'$"):
        set_attention_impl(model, "flash")
    with pytest.raises(ValueError, match=r"^attention_impl='eager': Sequential has no attention module"):
        set_attention_impl(torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1)), "eager")
    with pytest.raises(hpmod.ConfigError,
                       match=r"^c\.yaml: hyperparameter 'attention_impl' = 'flash' is not one of 'sdpa', 'eager'$"):
        hpmod.resolve({"attention_impl": "flash"}, trial_class("segformer").MODEL_PARAMS, "c.yaml")
    # the model built from hyperparameters carries the switch
    with torch.device("meta"):
        built = trial_class("segformer").model_from_hparams({"num_classes": 3, "attention_impl": "eager"})
    assert {m.fused_attn for m in built.modules() if isinstance(m, segformer.EfficientSelfAttention)} == {False}
    assert ATTENTION_IMPLS[0] == trial_class("segmenter").MODEL_PARAMS["attention_impl"].default


def test_implementation_sets_the_switches_together_and_names_a_bad_key():
    params = trial_class("segmenter").MODEL_PARAMS
    hp = hpmod.resolve({"precision": "bf16", "implementation": {"precision": "fp32", "compile": True,
                                                                "attention_impl": "eager"}}, params, "c.yaml")
    assert (hp["precision"], hp["compile"], hp["attention_impl"]) == ("fp32", True, "eager")
    with pytest.raises(hpmod.ConfigError, match=r"^c\.yaml: hyperparameter 'implementation\.attention_impl' is "
                                                r"not an implementation switch of this model; known: precision, "
                                                r"channels_last, compile, fused_optimizer, cudnn_benchmark$"):
        hpmod.resolve({"implementation": {"attention_impl": "eager"}}, trial_class("unet").MODEL_PARAMS, "c.yaml")
    with pytest.raises(hpmod.ConfigError, match=r"^c\.yaml: hyperparameter 'implementation\.compile' = 'yes' "
                                                r"is not one of 'auto', True, False$"):
        hpmod.resolve({"implementation": {"compile": "yes"}}, params, "c.yaml")


def test_fused_optimizer_is_one_kernel_or_the_per_parameter_loop():
    net = torch.nn.Conv2d(3, 4, 3)
    base = {"optimizer": "adamw", "weight_decay": 0.01, "momentum": 0.9}
    for opt in ("adamw", "sgd"):
        fused = build_optimizer(net, {**base, "optimizer": opt, "fused_optimizer": True}, 1e-3)
        loop = build_optimizer(net, {**base, "optimizer": opt, "fused_optimizer": False}, 1e-3)
        assert fused.defaults["fused"] is True and not fused.defaults.get("foreach")
        assert loop.defaults["foreach"] is False and not loop.defaults.get("fused")


# ----------------------------------------------------------------------------- every combination
def _batch(hw: int):
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(1)
    aug = torch.tensor([[*PhotometricDistortion().draw(), hw, hw] for _ in range(2)]).float()
    return (torch.randint(0, 256, (2, 3, hw, hw), generator=g, dtype=torch.uint8),
            torch.randint(0, 4, (2, hw, hw), generator=g, dtype=torch.uint8), aug,
            torch.zeros(2, dtype=torch.int64))


SMALL = {"unet": {"unet_base_channels": 4, "unet_depth": 2}, "deeplabv3plus": {},
         "segformer": {}, "segmenter": {"segmenter_decoder_layers": 1}}


#: batches per combination, within the test-time budget on the 2-core CI machine: a step of
#: DeepLab v3+ costs ~1 s there (its ResNet-50's 40M parameters: the per-parameter AdamW loop
#: alone 0.75 s), SegFormer's and Segmenter's 0.2-0.4 s (bf16 autocast on a CPU is the slow
#: half); each combination's step is checked to have changed the weights
BATCHES = {"unet": 2, "deeplabv3plus": 1, "segformer": 2, "segmenter": 2}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_every_switch_combination_trains(name):
    """Every combination of precision (fp32, bf16; fp16 needs CUDA), channels_last,
    fused_optimizer and attention_impl trains a few batches (``BATCHES``) of 16 px images to a
    finite loss, on the smallest configuration of each model (one model instance, a fresh
    engine per combination). cudnn_benchmark is set on CUDA only (no cuDNN on a CPU): it
    alternates here, so both values pass the engine; compile has its own test below."""
    trial = trial_class(name)
    hp = hpmod.resolve({"num_classes": 4, "warmup_batches": 0, **SMALL[name]}, trial.MODEL_PARAMS)
    torch.manual_seed(0)
    model = trial.model_from_hparams(hp)
    attention = ATTENTION_IMPLS if "attention_impl" in trial.MODEL_PARAMS else (None,)
    batch, seen = _batch(16), set()
    for i, (precision, cl, fused, impl) in enumerate(itertools.product(
            ("fp32", "bf16"), (False, True), (True, False), attention)):
        switches = {"precision": precision, "channels_last": cl, "fused_optimizer": fused,
                    "cudnn_benchmark": bool(i % 2), **({"attention_impl": impl} if impl else {})}
        run = hpmod.resolve({**{k: v for k, v in hp.items() if k != "energy"}, **switches},
                            trial.MODEL_PARAMS)
        if impl:
            set_attention_impl(model, impl)
        engine = Engine(model, run, LocalRuntime(CPU, 2), SegmentationTask(4), device=CPU,
                        max_batches=2)
        before = [p.detach().clone() for p in model.parameters()]
        losses = [engine.train_batch(batch) and engine.last_loss for _ in range(BATCHES[name])]
        assert all(torch.isfinite(loss) for loss in losses), switches
        changed = sum(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
        assert changed > len(before) // 2, switches  # the optimiser stepped
        assert engine.precision == precision and engine.channels_last is cl and not engine.compiled
        assert ("fused" if fused else "foreach") in engine.optimizer.defaults
        seen.add(tuple(switches.items()))
    assert len(seen) == 8 * len(attention)


def test_compile_trains_and_its_warmup_batches_are_flagged(monkeypatch):
    """compile: true through the engine on a tiny U-Net. Dynamo captures the forward and
    backward graphs; inductor's code generation (a C++ compile of every kernel, ~100 s for
    this model on the CI machine) is swapped for the eager backend here; the GPU benchmark
    (BENCHMARKS.md) runs inductor."""
    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda m, **kw: real(m, backend="eager", **kw))
    trial = trial_class("unet")
    hp = hpmod.resolve({"num_classes": 4, "warmup_batches": 0, "compile": True,
                        "unet_base_channels": 4, "unet_depth": 1}, trial.MODEL_PARAMS)
    engine = Engine(trial.model_from_hparams(hp), hp, LocalRuntime(CPU, 2), SegmentationTask(4),
                    device=CPU, max_batches=3)
    assert engine.compiled and engine.forward is not engine.model
    assert engine.eval_forward is engine.model  # validation never compiles (many shapes)
    flags = []
    for _ in range(3):
        flags.append(engine.compiling)
        engine.train_batch(_batch(16))
        assert torch.isfinite(engine.last_loss)
    assert flags == [True] * hpmod.COMPILE_WARMUP_BATCHES + [False]
    # the loss (upsampling and cross-entropy) is compiled with the model
    assert segmentation_loss in engine._compiled_fns
    engine.batches_trained = 100  # a resumed trial compiles again: counted per process
    assert not engine.compiling


# ----------------------------------------------------------------------------- configs
@pytest.mark.parametrize("name", sorted(SMALL))
def test_ablation_configs_grid_the_switches_of_each_model(name):
    for kind in ("ablation", "ablation_to_target"):
        path = ROOT / "experiment_configs" / name / f"{kind}.yaml"
        assert expconf.check_config(path) == [], path
    conf = configfile.load_experiment_config(ROOT / "experiment_configs" / name / "ablation.yaml")
    assert conf["searcher"]["name"] == "grid"
    searched = configfile.searched_specs(conf["hyperparameters"])
    expected = [k for k in hpmod.IMPLEMENTATION_SWITCHES
                if k in {**hpmod.COMMON, **trial_class(name).MODEL_PARAMS}]
    assert list(searched) == expected
    to_target = configfile.load_experiment_config(ROOT / "experiment_configs" / name / "ablation_to_target.yaml")
    variants = to_target["hyperparameters"]["implementation"]["vals"]
    assert len(variants) == 2 and all(set(v) == set(expected) for v in variants)
    assert to_target["hyperparameters"]["stop_at_target"] is True


# ----------------------------------------------------------------------------- report
def _ablation_run(root: pathlib.Path, label: str, model: str, switches: dict, *, batch_s: float,
                  power_w: Optional[float], mious=(4, 9, 17, 21)) -> None:
    """A synthetic run (tests/fixtures/report/synth.py) with the train-phase figures an
    ablation trial reports: everything is train time (no validation time), so train_s is
    the elapsed time, train_wh the energy; gbs 8; a compiled run's first 2 batches are the
    compile phase, 10 s at the same power."""
    recs = run_records(model=model, gbs=8, batch_s=batch_s, power_w=power_w, mious=mious)
    compile_s = 10.0 if switches.get("compile") else 0.0
    for r in recs:
        m = r["metrics"]
        if r["group"] == "energy":
            t = m["duration_s"]
            m.update(train_s=t, train_wh=m["energy_wh"], compile_s=compile_s,
                     compile_wh=power_w * compile_s / 3600.0, gpu_util_pct=90.0)
            m["duration_s"] = t + compile_s
        if r["group"] == "run":
            m["peak_memory_mb"] = 1000.0
            m["precision"] = switches["precision"]  # the precision the trial ran at
    write_run(root / label, recs, {"target_miou": 16, "global_batch_size": 8, **switches})


def test_an_ablation_measured_without_energy_still_gets_its_table_and_page(tmp_path):
    # (a CPU run of the campaign's ablation_target part: the page's chart used to be read
    # back though it was never drawn, and the report stopped with FileNotFoundError)
    slow = {"precision": "fp32", "channels_last": False, "compile": False,
            "fused_optimizer": False, "cudnn_benchmark": False}
    runs = tmp_path / "runs"
    _ablation_run(runs, "unet-base", "unet", slow, batch_s=0.5, power_w=None)
    _ablation_run(runs, "unet-fast", "unet", {**slow, "precision": "bf16"}, batch_s=0.25, power_w=None)
    out = tmp_path / "report"
    build_report(load_local(str(runs)), out)
    md = squeeze((out / "implementation.md").read_text())
    assert "| unet | fp32 NCHW loop (baseline) | unet-base |" in md
    assert not (out / "implementation.png").exists()
    html = (out / "index.html").read_text()
    assert "<h2>Implementation ablation</h2>" in html
    assert "Implementation ablation: speed and energy" in html and "not drawn" in html


def test_report_renders_the_implementation_table_and_chart(tmp_path):
    slow_conv = {"precision": "fp32", "channels_last": False, "compile": False,
                 "fused_optimizer": False, "cudnn_benchmark": False}
    fast_conv = {**slow_conv, "precision": "bf16", "channels_last": True, "compile": True}
    runs = tmp_path / "runs"
    # U-Net: baseline 0.5 s/batch at 200 W; fast 0.25 s/batch at 250 W, compiled
    _ablation_run(runs, "unet-base", "unet", slow_conv, batch_s=0.5, power_w=200.0)
    _ablation_run(runs, "unet-fast", "unet", fast_conv, batch_s=0.25, power_w=250.0)
    # SegFormer: baseline (eager) 2 s/batch at 150 W; sdpa + bf16 0.5 s/batch at 300 W
    _ablation_run(runs, "segformer-base", "segformer", {**slow_conv, "attention_impl": "eager"},
                  batch_s=2.0, power_w=150.0, mious=(2, 5, 8, 16))
    _ablation_run(runs, "segformer-fast", "segformer",
                  {**slow_conv, "precision": "bf16", "attention_impl": "sdpa"},
                  batch_s=0.5, power_w=300.0, mious=(2, 5, 8, 16))
    out = tmp_path / "report"
    report = build_report(load_local(str(runs)), out)
    v = {x.label: x for x in report.implementation}
    # unet-base: 40 batches x 8 images in 20 s = 16 img/s; 200 W / 16 = 12.5 J/img
    assert v["unet-base"].images_per_s == pytest.approx(16.0)
    assert v["unet-base"].j_per_image == pytest.approx(12.5)
    # unet-fast: (40 - 2 warm-up batches) x 8 images in its 10 s of train phase
    assert v["unet-fast"].images_per_s == pytest.approx(38 * 8 / 10.0)
    assert v["unet-fast"].relative["images_per_s"] == pytest.approx(30.4 / 16.0)
    assert v["unet-fast"].relative["j_per_image"] == pytest.approx((2500 / 304) / 12.5)
    assert v["unet-fast"].compile_s == 10.0 and v["unet-base"].compile_s is None
    assert v["segformer-base"].relative["j_per_image"] == 1.0  # the eager/fp32 baseline
    # energy to target (batch 30, 16 mIoU reached at the 3rd validation for U-Net)
    assert v["unet-fast"].relative["energy_to_target_wh"] == pytest.approx((250 * 7.5) / (200 * 15.0))
    assert v["segformer-fast"].batches_to_target == v["segformer-base"].batches_to_target == 40
    md = squeeze((out / "implementation.md").read_text())
    assert "| unet | bf16 NHWC compiled loop | unet-fast | 30.40 | 1.90 |" in md
    assert "fp32 NCHW loop eager (baseline)" in md
    # conv/attention ratios: J/image segformer / unet under each one's best and worst
    seg_best, seg_worst = 300 * 0.5 / 8, 150 * 2.0 / 8
    unet_best, unet_worst = 2500 / 304, 12.5
    assert f"| segformer / unet | {seg_best / unet_best:.2f} | {seg_worst / unet_worst:.2f} |" in md
    rows = list(__import__("csv").DictReader((out / "implementation.csv").open()))
    assert {r["run"] for r in rows} == set(v) and rows[0]["gpu_util_pct"] == "90.0"
    png = (out / "implementation.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000
    html = (out / "index.html").read_text()
    assert "<h2>Implementation ablation</h2>" in html and 'id="implementation"' in html
    # a report of runs without switches writes none of it, and removes an earlier one
    plain = tmp_path / "plain"
    write_run(plain / "u", run_records(), {"target_miou": 16, "global_batch_size": 8})
    plain_runs = load_local(str(plain))
    again = implementation.write(plain_runs, compare(plain_runs, 16.0), out)
    assert again == ([], [], "") and not (out / "implementation.md").exists()
    # nor does a report of ordinary runs, one implementation per model (every run resolves
    # the switches: the demo's U-Net and SegFormer compare architectures, not implementations)
    one_each = tmp_path / "one_each"
    _ablation_run(one_each, "unet-a", "unet", slow_conv, batch_s=0.5, power_w=200.0)
    _ablation_run(one_each, "segformer-a", "segformer", {**slow_conv, "attention_impl": "sdpa"},
                  batch_s=2.0, power_w=150.0)
    ordinary = load_local(str(one_each))
    assert implementation.write(ordinary, compare(ordinary, 16.0), out) == ([], [], "")
