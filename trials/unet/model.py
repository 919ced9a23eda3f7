"""The classic U-Net (Ronneberger, Fischer and Brox, 2015), with BatchNorm, in plain PyTorch.

Encoder: ``depth`` stages of (conv3x3-BN-ReLU) x2, each followed by 2x2 max pooling, with
``base, 2*base, 4*base, ...`` channels; a bottleneck of the same double conv at
``base * 2**depth`` channels; a decoder that upsamples by 2 (2x2 transposed convolution, or
bilinear upsampling followed by a 1x1 convolution), concatenates the encoder's skip feature
and applies the double conv again; a 1x1 classifier.

Defaults: ``base_channels=30, depth=4`` gives 6.83M parameters with 150 classes and
transposed-convolution upsampling, +1.9% from the source study's 6.7M U-Net (6.37M, -4.9%,
with bilinear upsampling). Depth 4 (four poolings) is the paper's; at that depth base 32
gives 7.77M (+16%) and base 28 gives 5.95M (-11%). Depth 3 with base 60 (6.78M) and depth 5
with base 15 (6.84M) also match the size, with a smaller or larger receptive field. Widths
30..480 are not multiples of 8, the granularity tensor-core convolution kernels like best;
if throughput matters more than matching the study's size, base 32 is the nearest such width.

Convolutions followed by BatchNorm have no bias (BatchNorm's shift makes it redundant).
Padding inside the convolutions keeps sizes, so unlike the 2015 paper the output covers the
whole input; inputs of any size are zero-padded to a multiple of ``2**depth`` and the logits
are cropped back, so the output is (B, num_classes, H, W) for an (B, C, H, W) input.
"""
from __future__ import annotations

from typing import Annotated, List

import torch
import torch.nn.functional as F
from torch import nn

from shared.modelargs import checked, integer, one_of

DEFAULT_BASE_CHANNELS = 30
DEFAULT_DEPTH = 4
MAX_DEPTH = 8  # 2**8 = 256 px of padding granularity; deeper nets only add memory
#: the widest first stage: base 1024 at depth 4 is a 16384-channel bottleneck, ~10^10 weights
MAX_BASE_CHANNELS = 1024
UPSAMPLING_MODES = ("transpose", "bilinear")

# The arguments' allowed values, each checked by the constructor (shared.modelargs.checked)
# and by the hyperparameter that sets it (model_param reads the annotation); the rare-objects
# U-Net takes the same.
Channels = Annotated[int, integer(1)]
BaseChannels = Annotated[int, integer(1, MAX_BASE_CHANNELS)]
Depth = Annotated[int, integer(1, MAX_DEPTH)]
Upsampling = Annotated[str, one_of(UPSAMPLING_MODES)]


class DoubleConv(nn.Sequential):
    """(conv3x3 - BN - ReLU) x 2."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class Up(nn.Module):
    """Upsample by 2 halving the channels, concatenate the skip feature, double conv."""

    def __init__(self, in_channels: int, out_channels: int, upsampling: str) -> None:
        super().__init__()
        if upsampling == "transpose":
            self.up: nn.Module = nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2)
        else:
            self.up = nn.Sequential(
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                nn.Conv2d(in_channels, out_channels, 1),
            )
        self.conv = DoubleConv(2 * out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([self.up(x), skip], dim=1))


class UNet(nn.Module):
    """Classic U-Net; see the module docstring for the layout and the defaults.

    A bad argument raises ``shared.modelargs.ArgumentError``, a ValueError naming it; the
    allowed values are in the annotations.

    Args:
        num_classes: classes scored: the output channels.
        in_channels: image channels.
        base_channels: channels of the first stage (doubled at each down-sampling stage).
        depth: number of down-sampling stages.
        upsampling: decoder upsampling: transposed convolution or bilinear + conv.
    """

    @checked
    def __init__(self, num_classes: Channels, in_channels: Channels = 3,
                 base_channels: BaseChannels = DEFAULT_BASE_CHANNELS,
                 depth: Depth = DEFAULT_DEPTH, upsampling: Upsampling = "transpose") -> None:
        super().__init__()
        self.num_classes = num_classes
        self.depth = depth
        widths = [base_channels * 2 ** i for i in range(depth + 1)]
        self.down = nn.ModuleList()
        prev = in_channels
        for w in widths[:-1]:
            self.down.append(DoubleConv(prev, w))
            prev = w
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = DoubleConv(widths[-2], widths[-1])
        self.up = nn.ModuleList(Up(widths[i + 1], widths[i], upsampling)
                                for i in reversed(range(depth)))
        self.head = nn.Conv2d(base_channels, num_classes, 1)
        # Every other layer keeps PyTorch's default init (as the common PyTorch U-Net); the
        # classifier is initialised as MMSegmentation's decode heads (conv_seg: normal(0, 0.01),
        # bias 0), so the first logits are near uniform and the first loss near ln(num_classes).
        nn.init.normal_(self.head.weight, 0.0, 0.01)
        nn.init.zeros_(self.head.bias)

    def encode(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Skip features, shallowest first, then the bottleneck output.

        ``x`` must already be a multiple of ``2**depth`` in height and width.
        """
        feats = []
        for stage in self.down:
            x = stage(x)
            feats.append(x)
            x = self.pool(x)
        feats.append(self.bottleneck(x))
        return feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes, H, W) for an image batch (B, C, H, W) of any H, W."""
        h, w = x.shape[-2:]
        m = 2 ** self.depth
        pad_h, pad_w = (-h) % m, (-w) % m
        if pad_h or pad_w:
            # Zero padding, not reflect: reflect fails when the pad exceeds the image (a 5 px
            # wide input needs 11 px to reach 16), and zeros are what the 3x3 convs see at
            # every border anyway. Right/bottom only, so cropping back is a plain slice.
            x = F.pad(x, (0, pad_w, 0, pad_h))
        feats = self.encode(x)
        y = feats[-1]
        for up, skip in zip(self.up, reversed(feats[:-1])):
            y = up(y, skip)
        y = self.head(y)
        if pad_h or pad_w:
            y = y[..., :h, :w]
        return y

