"""The segmentation models' outputs for inputs of any size: output strides, padding and
cropping, feature maps, token layout (CPU, tiny sizes)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from model_helpers import deeplab, small_segformer, small_segmenter, small_unet, unet

pytestmark = pytest.mark.usefixtures("torch_seed")

SIZES = [(37, 53), (64, 64), (48, 80), (16, 16)]


@pytest.fixture(scope="module")
def r50_os8() -> nn.Module:
    torch.manual_seed(0)
    return deeplab.DeepLabV3Plus(5, output_stride=8)


@pytest.mark.parametrize("hw", SIZES)
def test_unet_full_resolution_for_any_size(hw):
    model = unet.UNet(7).eval()
    with torch.no_grad():
        y = model(torch.randn(2, 3, *hw))
    assert tuple(y.shape) == (2, 7, *hw)


@pytest.mark.parametrize("hw", SIZES)
def test_unet_bilinear_upsampling_shapes(hw):
    model = small_unet(upsampling="bilinear", depth=4).eval()
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


@pytest.mark.parametrize("os_", [8, 16])
@pytest.mark.parametrize("hw", [(65, 97), (32, 48)])
def test_deeplab_quarter_resolution_for_any_size(request, hw, os_):
    model = request.getfixturevalue("r50" if os_ == 16 else "r50_os8").eval()
    assert model.output_stride == os_
    x = torch.randn(2, 3, *hw)
    with torch.no_grad():
        low, deep = model.backbone(x)
        y = model(x)
    assert tuple(y.shape) == (2, 5, math.ceil(hw[0] / 4), math.ceil(hw[1] / 4))
    assert low.shape[-2:] == y.shape[-2:]
    # dilation replaces the last strides: the deep features stay at 1/os_
    assert deep.shape[-2:] == (math.ceil(hw[0] / os_), math.ceil(hw[1] / os_))
    assert (low.shape[1], deep.shape[1]) == (256, 2048)


@pytest.mark.parametrize("os_,rates", [(16, [6, 12, 18]), (8, [12, 24, 36])])
def test_deeplab_aspp_rates_follow_output_stride(os_, rates):
    with torch.device("meta"):
        model = deeplab.DeepLabV3Plus(3, output_stride=os_)
    atrous = [m for m in model.aspp.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert [m.dilation[0] for m in atrous] == rates
    assert [m.padding[0] for m in atrous] == rates  # size-preserving
    assert all(m.groups == 2048 for m in atrous)     # depthwise: separable by default


def test_deeplab_dense_variant_shapes():
    model = deeplab.DeepLabV3Plus(4, separable=False).eval()
    assert not any(isinstance(m, nn.Conv2d) and m.groups > 1 for m in model.modules())
    with torch.no_grad():
        assert tuple(model(torch.randn(1, 3, 65, 97)).shape) == (1, 4, 17, 25)


def test_deeplab_image_pooling_is_global_and_trains_at_batch_one(r50):
    # Batch 1 in training mode: a BatchNorm after the global pool would raise here.
    r50.train()
    y = r50(torch.randn(1, 3, 64, 64))
    F.cross_entropy(F.interpolate(y, size=(64, 64), mode="bilinear"),
                    torch.randint(0, 5, (1, 64, 64))).backward()
    pool = r50.aspp.branches[-1]
    assert isinstance(pool, deeplab.ImagePooling)
    assert r50.aspp.branches[-1].conv.weight.grad.abs().sum() > 0
    r50.zero_grad(set_to_none=True)
    with torch.no_grad():
        out = pool(torch.randn(2, 2048, 3, 5))
    assert out.shape == (2, 256, 3, 5)
    assert torch.equal(out, out[..., :1, :1].expand_as(out))  # constant over the map
    r50.eval()


@pytest.mark.parametrize("decoder", ["linear", "mask"])
@pytest.mark.parametrize("hw", [(65, 97), (32, 48), (5, 200), (1, 1)])
def test_segmenter_pads_and_crops_as_the_official_code(decoder, hw):
    # Sides that are multiples of 16: logits at 1/16. Otherwise, as segm/model/segmenter.py:
    # zero-pad right/bottom to a multiple of 16, upsample the logits bilinearly to the padded
    # size, crop the padding: full resolution, not the 1/16 grid stretched over the image.
    model = small_segmenter(7, decoder=decoder, img_size=64).eval()
    x = torch.randn(2, 3, *hw)
    with torch.no_grad():
        y = model(x)
        if hw[0] % 16 or hw[1] % 16:
            assert tuple(y.shape) == (2, 7, *hw)
            padded = F.pad(x, (0, -hw[1] % 16, 0, -hw[0] % 16))
            grid = model(padded)  # a multiple of 16: the 1/16 logits
            assert grid.shape[-2:] == (math.ceil(hw[0] / 16), math.ceil(hw[1] / 16))
            want = F.interpolate(grid, size=padded.shape[-2:], mode="bilinear")[..., :hw[0], :hw[1]]
            torch.testing.assert_close(y, want)
        else:
            assert tuple(y.shape) == (2, 7, hw[0] // 16, hw[1] // 16)
    assert torch.isfinite(y).all()


def test_segmenter_grid_layout_is_row_major():
    # Token i of a row-major h x w grid must land at cell (i // w, i % w) of the logits.
    model = small_segmenter(3, decoder="linear").eval()
    tokens = torch.zeros(1, 2 * 3, model.encoder.embed_dim)
    tokens[0, 4] = 1.0  # row 1, column 1 of a 2x3 grid
    with torch.no_grad():
        out = model.decoder(tokens, 2, 3)
    base = model.decoder.head.bias.view(1, 3, 1, 1).expand(1, 3, 2, 3)
    changed = (out - base).abs().sum(1)[0] > 1e-6
    assert changed.nonzero().tolist() == [[1, 1]]
