"""Tests of the U-Net and SegFormer models and of the local weights loader (CPU, tiny sizes)."""
from __future__ import annotations

import importlib.util
import logging
import math
import re
import pathlib
import sys
from types import ModuleType
from typing import Callable, Dict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

ROOT = pathlib.Path(__file__).resolve().parents[1]
# The project's package ``shared`` lives at the repository root; plain ``pytest`` only puts
# tests/ on sys.path, and build_model(pretrained_path=...) imports it too.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from shared.pretrained import load_local_weights  # noqa: E402


def _load(name: str, rel: str) -> ModuleType:
    # Both files are called model.py; load each under its own name rather than via sys.path,
    # where the first one imported would shadow the other.
    spec = importlib.util.spec_from_file_location(name, ROOT / rel)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


unet = _load("unet_model_under_test", "trials/unet/model.py")
segformer = _load("segformer_model_under_test", "trials/segformer/model.py")

SIZES = [(37, 53), (64, 64), (48, 80), (16, 16)]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def small_unet(num_classes: int = 5, **kw) -> nn.Module:
    hp = {"num_classes": num_classes, "unet_base_channels": 8, "unet_depth": 3, **kw}
    return unet.build_model(hp)


def small_segformer(num_classes: int = 5, **kw) -> nn.Module:
    return segformer.build_model({"num_classes": num_classes, **kw})


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# --------------------------------------------------------------------------- shapes

@pytest.mark.parametrize("hw", SIZES)
def test_unet_full_resolution_for_any_size(hw):
    model = unet.build_model({"num_classes": 7}).eval()
    with torch.no_grad():
        y = model(torch.randn(2, 3, *hw))
    assert tuple(y.shape) == (2, 7, *hw)


@pytest.mark.parametrize("hw", SIZES)
def test_unet_bilinear_upsampling_shapes(hw):
    model = small_unet(unet_upsampling="bilinear", unet_depth=4).eval()
    assert not any(isinstance(m, nn.ConvTranspose2d) for m in model.modules())
    with torch.no_grad():
        assert tuple(model(torch.randn(1, 3, *hw)).shape) == (1, 5, *hw)


def test_unet_pads_bottom_right_with_zeros_and_crops():
    # 37 x 53 with depth 3 is padded inside forward to 40 x 56; padding by hand first (no
    # internal pad then) and cropping must give the same logits, so the crop is the right one.
    model = small_unet().eval()
    x = torch.randn(1, 3, 37, 53)
    with torch.no_grad():
        cropped = model(x)
        padded = model(F.pad(x, (0, 3, 0, 3)))
    assert padded.shape[-2:] == (40, 56)
    assert torch.allclose(cropped, padded[..., :37, :53], atol=1e-6)
    assert not torch.allclose(cropped, padded[..., 3:, 3:], atol=1e-3)


@pytest.mark.parametrize("hw", SIZES + [(5, 200), (1, 1)])
def test_segformer_quarter_resolution_for_any_size(hw):
    model = small_segformer(7).eval()
    with torch.no_grad():
        y = model(torch.randn(2, 3, *hw))
    assert tuple(y.shape) == (2, 7, math.ceil(hw[0] / 4), math.ceil(hw[1] / 4))


def test_segformer_encoder_strides():
    model = small_segformer().eval()
    with torch.no_grad():
        feats = model.encoder(torch.randn(1, 3, 64, 96))
    assert [tuple(f.shape) for f in feats] == [
        (1, 32, 16, 24), (1, 64, 8, 12), (1, 160, 4, 6), (1, 256, 2, 3)]


# --------------------------------------------------------------------------- sizes

def test_unet_default_size_near_study():
    model = unet.build_model({"num_classes": 150})
    assert abs(n_params(model) - 6.7e6) / 6.7e6 < 0.05, n_params(model)
    assert model.depth == unet.DEFAULT_DEPTH == 4
    assert model.down[0][0].out_channels == unet.DEFAULT_BASE_CHANNELS == 30


def test_unet_size_follows_hyperparameters():
    base = n_params(small_unet())
    assert n_params(small_unet(unet_base_channels=16)) > 3 * base  # ~4x: widths squared
    assert n_params(small_unet(unet_depth=4)) > 3 * base


def test_segformer_b0_size_matches_reference():
    model = small_segformer(150)
    assert abs(n_params(model) - 3.75e6) / 3.75e6 < 0.03, n_params(model)


# Parameter counts the paper reports for SegFormer-B0..B5 on ADE20K (150 classes), in millions.
PAPER_MPARAMS = {"b0": 3.8, "b1": 13.7, "b2": 27.5, "b3": 47.3, "b4": 64.1, "b5": 84.7}


def test_segformer_variants_grow():
    counts = []
    for variant in ["b0", "b1", "b2", "b3", "b4", "b5"]:
        with torch.device("meta"):  # shapes only: B5 has 85M parameters
            model = segformer.build_model({"num_classes": 150, "segformer_variant": variant})
        counts.append(n_params(model))
        depths = [len(s.blocks) for s in model.encoder.stages]
        assert depths == list(segformer.VARIANTS[variant].depths)
        paper = PAPER_MPARAMS[variant] * 1e6
        assert abs(counts[-1] - paper) / paper < 0.03, (variant, counts[-1])
    assert counts == sorted(counts) and len(set(counts)) == 6, counts


def test_segformer_variant_name_is_case_insensitive():
    with torch.device("meta"):
        a = segformer.build_model({"num_classes": 3, "segformer_variant": " B1 "})
    assert [s.norm.normalized_shape[0] for s in a.encoder.stages] == [64, 128, 320, 512]


def test_segformer_drop_path_grows_linearly():
    model = small_segformer(drop_path_rate=0.3)
    rates = [getattr(b.drop_path, "drop_prob", 0.0)
             for s in model.encoder.stages for b in s.blocks]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.3)
    steps = [b - a for a, b in zip(rates, rates[1:])]
    assert all(s == pytest.approx(0.3 / 7) for s in steps)


# --------------------------------------------------------------------------- training behaviour

@pytest.mark.parametrize("factory,kw", [
    (small_unet, {}),
    (small_unet, {"unet_upsampling": "bilinear"}),
    (small_segformer, {"drop_path_rate": 0.0}),
])
def test_backward_reaches_every_parameter(factory: Callable[..., nn.Module], kw: Dict):
    # 64 x 72 px: every attention then sees at least 2x2 reduced keys. With a single key the
    # softmax is constant and the query projection's gradient is only rounding noise.
    model = factory(**kw).train()
    y = model(torch.randn(2, 3, 64, 72))
    target = torch.randint(0, 5, (2, 64, 72))
    logits = F.interpolate(y, size=target.shape[-2:], mode="bilinear", align_corners=False)
    F.cross_entropy(logits, target).backward()
    params = dict(model.named_parameters())
    assert [n for n, p in params.items() if p.grad is None] == []
    assert all(torch.isfinite(p.grad).all() for p in params.values())
    # Biases that only shift a channel before a training-mode BatchNorm (the SegFormer stage
    # and decoder projections) get an exactly-zero gradient in theory, so only weights are
    # required to receive a real one.
    weak = [n for n, p in params.items() if n.endswith("weight") and p.grad.abs().max() < 1e-6]
    assert weak == []


def test_drop_path_and_dropout_only_in_training():
    model = small_segformer(drop_path_rate=0.5)
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
        model.encoder.train()  # stochastic depth alone (BatchNorm and Dropout2d are in the decoder)
        assert not torch.equal(model(x), model(x))
        model.eval()
        model.decoder.dropout.train()
        assert not torch.equal(model(x), model(x))


def test_segformer_attention_uses_sdpa(monkeypatch):
    calls = []
    real = F.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)
    model = small_segformer().eval()
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    assert len(calls) == sum(segformer.VARIANTS["b0"].depths)
    # (B, heads, N, head_dim) per stage: 16x16 tokens with 1 head of 32, then 8x8, 4x4, 2x2.
    assert calls[0] == (1, 1, 256, 32) and calls[-1] == (1, 8, 4, 32)


def test_segformer_sequence_reduction_shrinks_keys(monkeypatch):
    key_lengths = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, *args, **kwargs):
        key_lengths.append(k.shape[-2])
        return real(q, k, v, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    with torch.no_grad():
        small_segformer().eval()(torch.randn(1, 3, 128, 128))
    # Stage maps 32, 16, 8, 4 px per side with R = 8, 4, 2, 1: keys of 4x4 tokens, then 4x4 x3.
    assert key_lengths == [16] * 8


@pytest.mark.parametrize("factory", [small_unet, small_segformer])
def test_channels_last_input(factory):
    model = factory().eval()
    x = torch.randn(2, 3, 40, 56)
    with torch.no_grad():
        ref = model(x)
        out = model(x.contiguous(memory_format=torch.channels_last))
    assert out.shape == ref.shape
    assert torch.allclose(out, ref, atol=1e-5)


def test_segformer_features_stay_channels_last():
    model = small_segformer().eval()
    with torch.no_grad():
        x = torch.randn(1, 3, 64, 64).contiguous(memory_format=torch.channels_last)
        feats = model.encoder(x)
    assert all(f.is_contiguous(memory_format=torch.channels_last) for f in feats)


@pytest.mark.parametrize("factory", [small_unet, small_segformer])
def test_bf16_autocast_forward(factory):
    model = factory().eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(torch.randn(1, 3, 32, 48))
    assert y.dtype == torch.bfloat16 and torch.isfinite(y.float()).all()


# --------------------------------------------------------------------------- bad hyperparameters

@pytest.mark.parametrize("hp,match", [
    ({"unet_depth": 0}, r"'unet_depth' = 0 must be in 1\.\.8"),
    ({"unet_depth": 2.0}, r"'unet_depth' = 2\.0 must be an integer"),
    ({"unet_base_channels": -4}, r"'unet_base_channels' = -4 must be >= 1"),
    ({"unet_base_channels": True}, r"'unet_base_channels' = True must be an integer"),
    ({"unet_upsampling": "foo"}, r"'unet_upsampling' = 'foo' is not one of transpose, bilinear"),
    ({"num_classes": 0}, r"'num_classes' = 0 must be >= 1"),
])
def test_unet_bad_hyperparameters(hp, match):
    with pytest.raises(ValueError, match=match):
        unet.build_model({"num_classes": 5, **hp})


@pytest.mark.parametrize("module", [unet, segformer])
def test_num_classes_required(module):
    with pytest.raises(ValueError, match="'num_classes' is required"):
        module.build_model({})


@pytest.mark.parametrize("hp,match", [
    ({"segformer_variant": "b9"},
     r"'segformer_variant' = 'b9' is not one of b0, b1, b2, b3, b4, b5"),
    ({"segformer_variant": 0}, r"'segformer_variant' = 0 is not one of b0"),
    ({"segformer_variant": ["b0"]}, r"'segformer_variant' = \['b0'\] is not one of b0"),
    ({"drop_path_rate": 1.5}, r"'drop_path_rate' = 1\.5 must be a number in \[0, 1\)"),
    ({"drop_path_rate": -0.1}, r"'drop_path_rate' = -0\.1 must be"),
    ({"num_classes": "150"}, r"'num_classes' = '150' must be an integer"),
])
def test_segformer_bad_hyperparameters(hp, match):
    with pytest.raises(ValueError, match=match):
        segformer.build_model({"num_classes": 5, **hp})


# --------------------------------------------------------------------------- pretrained weights

def _encode(model: nn.Module, x: torch.Tensor):
    return model.encode(x) if hasattr(model, "encode") else model.encoder(x)


def _warm_batchnorm(model: nn.Module) -> None:
    # Non-default running statistics, so the round trip checks buffers as well as weights.
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32) * 3 + 1)
    model.eval()


@pytest.mark.parametrize("module,factory,head", [
    (unet, small_unet, {"head.weight", "head.bias"}),
    (segformer, small_segformer, {"decoder.classifier.weight", "decoder.classifier.bias"}),
])
def test_pretrained_round_trip_skips_head(tmp_path, caplog, module, factory, head):
    source = factory(num_classes=7)
    _warm_batchnorm(source)
    path = tmp_path / "weights.pt"
    torch.save(source.state_dict(), path)

    fresh = factory(num_classes=5).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(_encode(fresh, x)[-1], _encode(source, x)[-1])
    with caplog.at_level(logging.INFO, logger="shared.pretrained"):
        summary = load_local_weights(fresh, path)
    assert set(summary["shape_mismatch"]) == head
    assert f"loaded {summary['loaded']} tensors from {path}" in caplog.text
    assert all(f"skipped {k}" in caplog.text for k in head)
    assert summary["missing"] == [] and summary["unexpected"] == []
    assert summary["loaded"] == len(source.state_dict()) - 2

    sizes = {"unet_base_channels": 8, "unet_depth": 3} if module is unet else {}
    built = module.build_model({"num_classes": 5, "pretrained_path": str(path), **sizes})
    built.eval()
    with torch.no_grad():
        for a, b, c in zip(_encode(source, x), _encode(fresh, x), _encode(built, x)):
            assert torch.equal(a, b) and torch.equal(a, c)
        assert built(x).shape[1] == 5


def test_pretrained_nested_and_prefixed_checkpoints(tmp_path):
    source = small_unet()
    state = source.state_dict()
    layouts = {
        "determined.pt": {"models_state_dict": [{f"module.{k}": v for k, v in state.items()}],
                          "optimizers_state_dict": [{}]},
        "lightning.pt": {"state_dict": {f"model.{k}": v for k, v in state.items()}, "epoch": 3},
        "plain.pt": {"model": dict(state)},
    }
    for name, obj in layouts.items():
        torch.save(obj, tmp_path / name)
        target = small_unet()
        summary = load_local_weights(target, tmp_path / name)
        assert summary == {"loaded": len(state), "missing": [], "unexpected": [],
                           "shape_mismatch": []}, name
        assert all(torch.equal(target.state_dict()[k], v) for k, v in state.items()), name


def test_pretrained_prefix_kept_when_the_model_uses_it(tmp_path):
    class Wrapper(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = nn.Linear(3, 4)
            self.extra = nn.Linear(4, 2)

    src = Wrapper()
    torch.save(src.state_dict(), tmp_path / "w.pt")
    dst = Wrapper()
    summary = load_local_weights(dst, tmp_path / "w.pt")
    assert summary["loaded"] == 4 and summary["unexpected"] == []
    assert torch.equal(dst.model.weight, src.model.weight)


def test_pretrained_reports_missing_and_unexpected(tmp_path):
    state = small_unet().state_dict()
    state.pop("head.bias")
    state["old_aux_head.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "w.pt")
    summary = load_local_weights(small_unet(), tmp_path / "w.pt")
    assert summary["missing"] == ["head.bias"]
    assert summary["unexpected"] == ["old_aux_head.weight"]


def test_pretrained_strict_refuses_differences(tmp_path):
    torch.save(small_unet(num_classes=7).state_dict(), tmp_path / "w7.pt")
    with pytest.raises(ValueError, match=r"strict loading of .*w7\.pt.*head\.weight"):
        load_local_weights(small_unet(num_classes=5), tmp_path / "w7.pt", strict=True)


def test_pretrained_safetensors(tmp_path, monkeypatch):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    source = small_segformer()
    path = tmp_path / "w.safetensors"
    safetensors_torch.save_file(source.state_dict(), str(path))
    target = small_segformer()
    assert load_local_weights(target, path)["loaded"] == len(source.state_dict())
    assert torch.equal(target.decoder.classifier.weight, source.decoder.classifier.weight)

    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    with pytest.raises(ImportError, match=r"w\.safetensors is a \.safetensors file but the "
                                          r"'safetensors' package is not installed"):
        load_local_weights(small_segformer(), path)


@pytest.mark.parametrize("where", ["https://example.com/mit_b0.pth", "hf://nvidia/mit-b0"])
def test_pretrained_refuses_urls(where):
    with pytest.raises(ValueError,
                       match=r"weights load only from a local path; '.*mit.b0.*' looks like a URL"):
        load_local_weights(small_unet(), where)
    with pytest.raises(ValueError, match="local path"):
        segformer.build_model({"num_classes": 5, "pretrained_path": where})


@pytest.mark.parametrize("where", ["nvidia/mit-b0", "no_such_dir/weights.pt"])
def test_pretrained_missing_file(tmp_path, monkeypatch, where):
    monkeypatch.chdir(tmp_path)
    expected = rf"weights load only from a local path; no file at '{re.escape(where)}'"
    with pytest.raises(FileNotFoundError, match=expected):
        load_local_weights(small_unet(), where)


def test_pretrained_directory_is_not_a_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no file at"):
        load_local_weights(small_unet(), tmp_path)


def test_pretrained_unrelated_weights_raise(tmp_path):
    path = tmp_path / "resnet.pt"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.bias": torch.zeros(1000)}, path)
    with pytest.raises(ValueError, match=r"no tensor in .*resnet\.pt matches UNet .*conv1\.weight"):
        load_local_weights(small_unet(), path)


def test_pretrained_not_a_weights_file(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("these are not weights")
    with pytest.raises(ValueError, match=r"could not read weights from .*notes\.pt"):
        load_local_weights(small_unet(), path)


def test_pretrained_refuses_pickled_objects(tmp_path):
    # weights_only: a pickle that would build arbitrary objects is refused, not executed.
    path = tmp_path / "model.pt"
    torch.save({"state_dict": small_unet().state_dict(), "trainer": _Opaque()}, path)
    with pytest.raises(ValueError, match=r"could not read weights from .*model\.pt"):
        load_local_weights(small_unet(), path)


class _Opaque:
    pass


def test_pretrained_without_tensors(tmp_path):
    path = tmp_path / "meta.pt"
    torch.save({"epoch": 3, "lr": 0.1}, path)
    with pytest.raises(ValueError, match=r"meta\.pt holds no tensors .*epoch, lr"):
        load_local_weights(small_unet(), path)
