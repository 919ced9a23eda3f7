"""The segmentation models in training: gradients reach every parameter, stochastic depth and
dropout act in training only, attention runs on scaled_dot_product_attention, channels_last
and bf16 autocast give the same logits (CPU, tiny sizes)."""
from __future__ import annotations

import re
from typing import Callable, Dict

import pytest
import timm.layers.config
import torch
import torch.nn.functional as F
from torch import nn

from model_helpers import segformer, small_segformer, small_segmenter, small_unet

pytestmark = pytest.mark.usefixtures("torch_seed")


def _backward(model: nn.Module, hw=(64, 80), batch: int = 2) -> dict:
    y = model(torch.randn(batch, 3, *hw))
    target = torch.randint(0, y.shape[1], (batch, *hw))
    logits = F.interpolate(y, size=hw, mode="bilinear", align_corners=False)
    F.cross_entropy(logits, target).backward()
    return dict(model.named_parameters())


@pytest.mark.parametrize("factory,kw", [
    (small_unet, {}),
    (small_unet, {"upsampling": "bilinear"}),
    (small_segformer, {"drop_path_rate": 0.0}),
])
def test_backward_reaches_every_parameter(factory: Callable[..., nn.Module], kw: Dict):
    # 64 x 72 px: every attention then sees at least 2x2 reduced keys. With a single key the
    # softmax is constant and the query projection's gradient is only rounding noise.
    model = factory(**kw).train()
    y = model(torch.randn(2, 3, 64, 72))
    target = torch.randint(0, 5, (2, 64, 72))
    logits = F.interpolate(y, size=target.shape[-2:], mode="bilinear", align_corners=False)
    # x100: the classifiers start at N(0, 0.01) (MMSegmentation's init), which scales every
    # gradient behind them by about 0.01; scaled back, the 1e-6 floor below still tells a real
    # gradient (SegFormer's first query projections: ~5e-5) from rounding noise.
    (100 * F.cross_entropy(logits, target)).backward()
    params = dict(model.named_parameters())
    assert [n for n, p in params.items() if p.grad is None] == []
    assert all(torch.isfinite(p.grad).all() for p in params.values())
    # Biases that only shift a channel before a training-mode BatchNorm (the SegFormer stage
    # and decoder projections) get an exactly-zero gradient in theory, so only weights are
    # required to receive a real one.
    weak = [n for n, p in params.items() if n.endswith("weight") and p.grad.abs().max() < 1e-6]
    assert weak == []


def test_deeplab_backward_reaches_every_parameter(r50):
    r50.train()
    params = _backward(r50)
    assert [n for n, p in params.items() if p.grad is None] == []
    assert all(torch.isfinite(p.grad).all() for p in params.values())
    # A weight with an exactly-zero gradient would be a branch cut off from the loss; the only
    # ones allowed are inside the residual branches, whose last BatchNorm timm initialises to
    # zero (each block starts as the identity), which blocks their gradient at the first step.
    zero = [n for n, p in params.items() if n.endswith("weight") and p.grad.abs().max() == 0]
    assert all(re.fullmatch(r"backbone\.layer\d\.\d+\.(conv[123]|bn[12])\.weight", n) for n in zero), zero
    assert all(torch.all(m.weight == 0) for n, m in r50.named_modules() if n.endswith(".bn3"))
    head = [n for n in params if not n.startswith("backbone.")]
    assert len(head) > 20 and not set(head) & set(zero)
    r50.zero_grad(set_to_none=True)
    r50.eval()


@pytest.mark.parametrize("decoder", ["linear", "mask"])
def test_segmenter_backward_reaches_every_parameter(decoder):
    model = small_segmenter(decoder=decoder, drop_path_rate=0.0).train()
    params = _backward(model)
    assert [n for n, p in params.items() if p.grad is None] == []
    assert all(torch.isfinite(p.grad).all() for p in params.values())
    weak = [n for n, p in params.items() if p.grad.abs().max() == 0]
    assert weak == []


def test_segformer_drop_path_grows_linearly():
    model = small_segformer(drop_path_rate=0.3)
    rates = [getattr(b.drop_path, "drop_prob", 0.0)
             for s in model.encoder.stages for b in s.blocks]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.3)
    steps = [b - a for a, b in zip(rates, rates[1:])]
    assert all(s == pytest.approx(0.3 / 7) for s in steps)


@pytest.mark.parametrize("rate", [0.0, 0.3])
def test_segmenter_drop_path_rate_reaches_the_encoder(rate):
    with torch.device("meta"):
        model = small_segmenter(3, drop_path_rate=rate)
    probs = [getattr(b.drop_path1, "drop_prob", 0.0) for b in model.encoder.blocks]
    assert probs[0] == 0.0 and probs[-1] == pytest.approx(rate)


def test_segformer_drop_path_and_dropout_only_in_training():
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


def test_segmenter_dropout_and_drop_path_only_in_training():
    model = small_segmenter(drop_path_rate=0.5)
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        model.eval()
        assert torch.equal(model(x), model(x))
        model.train()
        assert not torch.equal(model(x), model(x))


def test_segmenter_masks_are_cosines():
    # The masks are L2-normalised products: scaling either projection by a positive factor
    # must not change the logits (a plain dot product would scale them).
    model = small_segmenter(4).eval()
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        ref = model(x)
        model.decoder.proj_patch.weight.mul_(7.0)
        model.decoder.proj_classes.weight.mul_(0.1)
        assert torch.allclose(model(x), ref, atol=1e-5)
        # and the LayerNorm over classes: each pixel's logits have mean ~0 (bias 0 at init)
        assert ref.mean(1).abs().max() < 1e-5


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


@pytest.mark.parametrize("decoder,timm_env", [("mask", 1), ("linear", 1), ("mask", 0)])
def test_segmenter_attention_uses_sdpa(monkeypatch, decoder, timm_env):
    # TIMM_FUSED_ATTN=0 makes timm build its attention on an explicit softmax; the model forces
    # SDPA back on, so the count is the same either way.
    monkeypatch.setattr(timm.layers.config, "_USE_FUSED_ATTN", timm_env)
    model = small_segmenter(6, decoder=decoder).eval()
    calls = []
    real = F.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(tuple(args[0].shape))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)
    with torch.no_grad():
        model(torch.randn(1, 3, 48, 64))
    encoder = [(1, 3, 1 + 12, 64)] * 12               # 3x4 patches + the class token, 3 heads
    decoder_calls = [(1, 3, 12 + 6, 64)] * 2 if decoder == "mask" else []  # + 6 class embeddings
    assert calls == encoder + decoder_calls


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


@pytest.mark.parametrize("name", ["deeplabv3plus", "segmenter"])
def test_bf16_autocast_and_channels_last(request, name):
    model = request.getfixturevalue("r50") if name == "deeplabv3plus" else small_segmenter(3)
    model.eval()
    # Small: CPUs without AVX512-BF16 emulate bf16 convolutions, slowly.
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        ref = model(x)
        cl = model.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
        assert torch.allclose(cl, ref, atol=1e-4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = model(x)
    model.to(memory_format=torch.contiguous_format)
    assert y.dtype == torch.bfloat16 and torch.isfinite(y.float()).all()
