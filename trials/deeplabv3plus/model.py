"""DeepLab v3+ (Chen et al., ECCV 2018) on a timm ResNet-50/101, in plain PyTorch.

Encoder: a timm ResNet built with ``features_only=True`` and ``output_stride`` 16 (or 8): timm
replaces the stride of the last stage (and, at 8, of the last two) by dilation, so the deep
features keep 1/16 (1/8) of the input while the receptive field still grows. Two features are
taken: layer1 (1/4, 256 channels) for the decoder, layer4 (2048 channels) for ASPP.

ASPP: a 1x1 conv, three 3x3 atrous convs with rates 6/12/18 at output stride 16 (12/24/36 at
8: the same field of view in input pixels), and image pooling (global average pool -> 1x1 conv
-> broadcast back); 256 channels each, concatenated, projected to 256 by a 1x1 conv, dropout
0.1 (the rate of the authors' code).

Decoder: the layer1 features projected to 48 channels (1x1 conv), the ASPP output upsampled
bilinearly to their size (x4 at output stride 16) and concatenated, two 3x3 convs of 256, a
1x1 classifier. Output: logits at 1/4 of the input, (B, num_classes, ceil(H/4), ceil(W/4));
the trainer upsamples them to the label size.

Every conv except the classifier and the pooling branch is followed by BatchNorm and ReLU.

Separable convolutions (``separable=True``, the default): as in the paper's best model, the
3x3 convs of ASPP and of the decoder are depthwise separable, each 3x3 depthwise -> BN -> ReLU
-> 1x1 pointwise -> BN -> ReLU (the authors' TensorFlow layout, and MMSegmentation's
``DepthwiseSeparableConvModule``). With 150 classes the model is 26.73M parameters (23.51M
of them the ResNet-50 features, 3.22M the head); 45.72M with ResNet-101 (42.50M features,
the same head). ``separable=False`` uses dense 3x3 convs: 40.39M with ResNet-50, the head
alone 16.88M, of which the three 2048->256 atrous convs are 14.16M.

What this follows, and what it is not (docs/models.md has the numbers):
- the paper (output stride 16, rates 6/12/18, 256-channel ASPP, 48-channel low-level
  projection, two 3x3 decoder convs) with MMSegmentation's separable-conv layout;
- not segmentation_models_pytorch's ``DeepLabV3Plus``, although its parameter count with
  ResNet-50 is within 0.05% (26.716M): smp uses rates 12/24/36 at output stride 16, separable
  convs without BN/ReLU between depthwise and pointwise, BatchNorm in the pooling branch, an
  extra separable conv after ASPP, one decoder conv, dropout 0.5, ``align_corners=True``;
- not MMSegmentation's ``deeplabv3plus_r50-d8`` either (43.69M with 150 classes: ResNetV1c
  deep-stem backbone at output stride 8, 512-channel ASPP with rates 12/24/36 and BatchNorm
  in the pooling branch, a dense 3x3 bottleneck after the concatenation (11.8M), 512-channel
  decoder, an auxiliary FCN head on layer 3 (2.40M, training only)).
Init: the head's convs He-normal on the fan-in, the classifier N(0, 0.01) with zero bias (as
MMSegmentation's ``conv_seg``); the backbone keeps timm's ResNet init.
"""
from __future__ import annotations

from typing import Annotated, Any, Mapping, Sequence

import timm
import torch
import torch.nn.functional as F
from torch import nn

from shared.modelargs import boolean, checked, integer, one_of
from shared.pretrained import load_model_or_backbone

BACKBONES = ("resnet50", "resnet101")
OUTPUT_STRIDES = (8, 16)
ASPP_RATES_OS16 = (6, 12, 18)  # doubled at output stride 8
ASPP_CHANNELS = 256
LOW_LEVEL_CHANNELS = 48
DROPOUT = 0.1


class ConvBNReLU(nn.Sequential):
    """Conv (no bias: BatchNorm's shift replaces it) -> BatchNorm -> ReLU, size-preserving."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int = 1, dilation: int = 1,
                 groups: int = 1) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel, padding=dilation * (kernel // 2),
                      dilation=dilation, groups=groups, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


def conv3x3(in_channels: int, out_channels: int, dilation: int, separable: bool) -> nn.Sequential:
    """A 3x3 (atrous) conv block, depthwise separable or dense; BN + ReLU after each conv."""
    if separable:
        return nn.Sequential(
            ConvBNReLU(in_channels, in_channels, 3, dilation, groups=in_channels),
            ConvBNReLU(in_channels, out_channels, 1),
        )
    return ConvBNReLU(in_channels, out_channels, 3, dilation)


class ImagePooling(nn.Module):
    """Global average pool -> 1x1 conv (with bias) -> ReLU, broadcast back to the map size.

    No BatchNorm here, unlike the other branches: after the global pool, training-mode
    BatchNorm normalises each channel over the batch alone (one value per image), so it fails
    at one image per GPU ("Expected more than 1 value per channel") and is noise at two to
    four. GroupNorm would work at batch 1 but normalises the pooled vector across channels,
    removing the global brightness/contrast of the scene that this branch exists to carry. The
    1x1 projection after the concatenation has a BatchNorm over the full-resolution map, which
    normalises this branch's contribution anyway.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=True)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        y = self.act(self.conv(F.adaptive_avg_pool2d(x, 1)))
        # Bilinear upsampling of a 1x1 map is a constant map: expand says so without a kernel.
        return y.expand(-1, -1, h, w)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1, three atrous 3x3, image pooling; concat, project."""

    def __init__(self, in_channels: int, out_channels: int, rates: Sequence[int],
                 separable: bool, dropout: float = DROPOUT) -> None:
        super().__init__()
        self.branches = nn.ModuleList([ConvBNReLU(in_channels, out_channels, 1)])
        self.branches.extend(conv3x3(in_channels, out_channels, r, separable) for r in rates)
        self.branches.append(ImagePooling(in_channels, out_channels))
        self.project = ConvBNReLU(len(self.branches) * out_channels, out_channels, 1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.project(torch.cat([b(x) for b in self.branches], dim=1)))


class Decoder(nn.Module):
    """Low-level features to 48 channels, ASPP output upsampled to them, two 3x3 convs."""

    def __init__(self, low_channels: int, aspp_channels: int, separable: bool) -> None:
        super().__init__()
        self.reduce = ConvBNReLU(low_channels, LOW_LEVEL_CHANNELS, 1)
        self.refine = nn.Sequential(
            conv3x3(aspp_channels + LOW_LEVEL_CHANNELS, aspp_channels, 1, separable),
            conv3x3(aspp_channels, aspp_channels, 1, separable),
        )

    def forward(self, low: torch.Tensor, deep: torch.Tensor) -> torch.Tensor:
        # To the low-level map's exact size rather than "x4": for sizes that are not multiples
        # of 16 the two maps are not in an exact 4:1 ratio (65 px gives 17 and 5).
        deep = F.interpolate(deep, size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.refine(torch.cat([deep, self.reduce(low)], dim=1))


class DeepLabV3Plus(nn.Module):
    """ResNet encoder + ASPP + decoder; returns logits at 1/4 of the input size.

    A bad argument raises ``shared.modelargs.ArgumentError``, a ValueError naming it; the
    allowed values are in the annotations.

    Args:
        num_classes: classes scored: the output channels.
        backbone: timm ResNet encoder (dilated to the output stride).
        output_stride: 8: layer3, layer4 and ASPP on 4x the positions, ASPP rates doubled.
        separable: depthwise separable 3x3 convs in ASPP and decoder.
        in_channels: image channels.
    """

    @checked
    def __init__(self, num_classes: Annotated[int, integer(1)],
                 backbone: Annotated[str, one_of(BACKBONES)] = "resnet50",
                 output_stride: Annotated[int, one_of(OUTPUT_STRIDES)] = 16,
                 separable: Annotated[bool, boolean] = True,
                 in_channels: Annotated[int, integer(1)] = 3) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.output_stride = output_stride
        # pretrained=False always: weights come only from a local file (load_pretrained,
        # the trial's pretrained_path); a training task must never reach for the internet.
        self.backbone = timm.create_model(backbone, pretrained=False, features_only=True,
                                          output_stride=output_stride, out_indices=(1, 4),
                                          in_chans=in_channels)
        low_channels, deep_channels = self.backbone.feature_info.channels()
        rates = tuple(r * 16 // output_stride for r in ASPP_RATES_OS16)
        self.aspp = ASPP(deep_channels, ASPP_CHANNELS, rates, separable)
        self.decoder = Decoder(low_channels, ASPP_CHANNELS, separable)
        self.classifier = nn.Conv2d(ASPP_CHANNELS, num_classes, 1)
        for m in (self.aspp, self.decoder):
            m.apply(_init_head)
        # A small classifier init, as the reference decode heads: the first logits are near
        # uniform, so the first losses are near log(num_classes) and warm-up starts calm.
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes, ceil(H/4), ceil(W/4)) for images (B, C, H, W) of any size."""
        low, deep = self.backbone(x)
        return self.classifier(self.decoder(low, self.aspp(deep)))


def _init_head(m: nn.Module) -> None:
    # He init on the fan-in, which counts in_channels/groups: right for depthwise convs too,
    # where fan-out would count all 2048 channels instead of the 9 taps each output sees.
    if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def load_pretrained(model: DeepLabV3Plus, path: str) -> Mapping[str, Any]:
    """Load a local weights file into the whole ``model``, or into its backbone alone (an
    ImageNet ResNet checkpoint in timm's key names): ``shared.pretrained.load_model_or_backbone``."""
    return load_model_or_backbone(model, model.backbone, path)
