"""The segmentation models' sizes against their papers and reference implementations
(segmentation_models_pytorch, timm), and how the sizes follow the constructor arguments.
The large variants are built on the meta device: shapes without memory or initialisation."""
from __future__ import annotations

import pytest
import torch

from model_helpers import deeplab, n_params, segformer, small_segformer, small_segmenter, small_unet, unet

pytestmark = pytest.mark.usefixtures("torch_seed")


def test_unet_default_size_near_study():
    model = unet.UNet(150)
    assert abs(n_params(model) - 6.7e6) / 6.7e6 < 0.05, n_params(model)
    assert model.depth == unet.DEFAULT_DEPTH == 4
    assert model.down[0][0].out_channels == unet.DEFAULT_BASE_CHANNELS == 30


def test_unet_size_follows_arguments():
    base = n_params(small_unet())
    assert n_params(small_unet(base_channels=16)) > 3 * base  # ~4x: widths squared
    assert n_params(small_unet(depth=4)) > 3 * base


def test_segformer_b0_size_matches_reference():
    model = small_segformer(150)
    assert abs(n_params(model) - 3.75e6) / 3.75e6 < 0.03, n_params(model)


# Parameter counts the paper reports for SegFormer-B0..B5 on ADE20K (150 classes), in millions.
PAPER_MPARAMS = {"b0": 3.8, "b1": 13.7, "b2": 27.5, "b3": 47.3, "b4": 64.1, "b5": 84.7}


def test_segformer_variants_grow():
    counts = []
    for variant in ["b0", "b1", "b2", "b3", "b4", "b5"]:
        with torch.device("meta"):  # shapes only: B5 has 85M parameters
            model = segformer.SegFormer(150, variant=variant)
        counts.append(n_params(model))
        depths = [len(s.blocks) for s in model.encoder.stages]
        assert depths == list(segformer.VARIANTS[variant].depths)
        paper = PAPER_MPARAMS[variant] * 1e6
        assert abs(counts[-1] - paper) / paper < 0.03, (variant, counts[-1])
    assert counts == sorted(counts) and len(set(counts)) == 6, counts


def test_segformer_variant_name_is_case_insensitive():
    with torch.device("meta"):
        a = segformer.SegFormer(3, variant=" B1 ")
    assert [s.norm.normalized_shape[0] for s in a.encoder.stages] == [64, 128, 320, 512]


# DeepLab v3+ R-50 with separable ASPP/decoder, 150 classes: 26.72M, the figure of
# segmentation_models_pytorch's DeepLabV3Plus("resnet50") measured for the reference benchmark
# (docs/references.md). R-101: timm's ResNet-101 features (42.50M) + the same 3.22M
# head = 45.72M. Dense 3x3 convs: + 3 x (2048*256*9 - (2048*9 + 2048*256)) and the decoder's
# difference = 40.39M (trials/deeplabv3plus/model.py explains the counts).
DEEPLAB_PARAMS = {("resnet50", True): 26.72e6, ("resnet101", True): 45.72e6,
                  ("resnet50", False): 40.39e6}


@pytest.mark.parametrize("backbone,separable", list(DEEPLAB_PARAMS))
def test_deeplab_size(backbone, separable):
    with torch.device("meta"):
        model = deeplab.DeepLabV3Plus(150, backbone=backbone, separable=separable)
    expected = DEEPLAB_PARAMS[backbone, separable]
    assert abs(n_params(model) - expected) / expected < 0.05, n_params(model)
    # the head does not depend on the backbone's depth, only on its channel counts
    head = n_params(model) - n_params(model.backbone)
    assert head == pytest.approx(3.221e6 if separable else 16.877e6, rel=1e-3)


def test_deeplab_output_stride_does_not_change_size():
    with torch.device("meta"):
        a = deeplab.DeepLabV3Plus(150, output_stride=8)
        b = deeplab.DeepLabV3Plus(150, output_stride=16)
    assert n_params(a) == n_params(b)


# Segmenter with 150 classes at the default 512 px crop. Encoders without their ImageNet head
# and with 32x32 + 1 position embeddings: ViT-T/16 5.683M (timm's 5.717M vit_tiny_patch16_224
# less 192*1000+1000, plus 828*192), ViT-S/16 21.984M. Linear decoder 192*150+150. ViT-S mask:
# 21.98M + 4.05M = 26.03M, the official model's (tests/test_fidelity_models.py: exactly).
SEGMENTER_PARAMS = {("vit_tiny_patch16_224", "linear"): 5.712e6,
                    ("vit_tiny_patch16_224", "mask"): 6.713e6,
                    ("vit_small_patch16_224", "mask"): 26.034e6}


def _mask_decoder_params(d: int, layers: int, n: int) -> int:
    # proj_dec d^2+d; per layer: two LayerNorms 4d, qkv 3d^2+3d, proj d^2+d, MLP 8d^2+5d;
    # class embeddings n*d; the two bias-free projections 2d^2; LayerNorms 2d and 2n.
    return (d * d + d) + layers * (12 * d * d + 13 * d) + n * d + 2 * d * d + 2 * d + 2 * n


@pytest.mark.parametrize("backbone,decoder", list(SEGMENTER_PARAMS))
def test_segmenter_size(backbone, decoder):
    with torch.device("meta"):
        model = small_segmenter(150, backbone=backbone, decoder=decoder)
    expected = SEGMENTER_PARAMS[backbone, decoder]
    assert abs(n_params(model) - expected) / expected < 0.05, n_params(model)
    d = model.encoder.embed_dim
    want = 150 * d + 150 if decoder == "linear" else _mask_decoder_params(d, 2, 150)
    assert n_params(model.decoder) == want
    assert not hasattr(model.encoder.head, "weight")  # no ImageNet head left in the encoder


@pytest.mark.parametrize("layers", [1, 3])
def test_segmenter_decoder_layers(layers):
    with torch.device("meta"):
        model = small_segmenter(150, decoder_layers=layers)
    assert len(model.decoder.layers) == layers
    assert n_params(model.decoder) == _mask_decoder_params(192, layers, 150)
    assert model.decoder.layers[0].attn.heads == 3  # ViT-T width 192 / 64
