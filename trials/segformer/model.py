"""SegFormer (Xie et al., NeurIPS 2021): Mix Transformer encoder + all-MLP decoder.

Written by hand because timm has no Mix Transformer, and the libraries that do
(segmentation_models_pytorch, transformers, mmseg) bring a framework with them; the study
needs the model visible and its attention on ``scaled_dot_product_attention``.

Layout of the tokens: a stage's tokens are a contiguous (B, N, C) tensor with N = H * W in
row-major order. That memory is exactly an NHWC (channels_last) image, so the three places
that need a 2-D view (the key/value reduction conv, the Mix-FFN depthwise conv and the
decoder) switch with ``_to_map``/``_to_tokens``, which are views, not copies; the convs then
run in channels_last, the layout bf16 convolution kernels prefer on GPUs.

Output: logits at 1/4 of the input, (B, num_classes, ceil(H/4), ceil(W/4)); the trainer
upsamples them to the label size.
"""
from __future__ import annotations

import math
from typing import Annotated, Any, List, NamedTuple, Sequence, Tuple

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import nn

from shared.attention import attention
from shared.modelargs import checked, fraction, integer, one_of


class Variant(NamedTuple):
    widths: Tuple[int, int, int, int]
    depths: Tuple[int, int, int, int]
    decoder_dim: int


# The paper's MiT-B0..B5 settings; heads, reduction ratios and MLP ratio are shared by all.
VARIANTS = {
    "b0": Variant((32, 64, 160, 256), (2, 2, 2, 2), 256),
    "b1": Variant((64, 128, 320, 512), (2, 2, 2, 2), 256),
    "b2": Variant((64, 128, 320, 512), (3, 4, 6, 3), 768),
    "b3": Variant((64, 128, 320, 512), (3, 4, 18, 3), 768),
    "b4": Variant((64, 128, 320, 512), (3, 8, 27, 3), 768),
    "b5": Variant((64, 128, 320, 512), (3, 6, 40, 3), 768),
}
HEADS = (1, 2, 5, 8)
SR_RATIOS = (8, 4, 2, 1)
MLP_RATIO = 4


def _to_map(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, N, C) tokens -> (B, C, H, W) view, channels_last when the tokens are contiguous."""
    return x.transpose(1, 2).unflatten(2, (h, w))


def _to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, C); a view when ``x`` is channels_last."""
    return x.flatten(2).transpose(1, 2)


class OverlapPatchEmbed(nn.Module):
    """Strided conv with kernel > stride (patches overlap), then LayerNorm on the tokens."""

    def __init__(self, in_channels: int, dim: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel, stride=stride, padding=kernel // 2)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        h, w = x.shape[-2:]
        return self.norm(_to_tokens(x)), h, w


class EfficientSelfAttention(nn.Module):
    """Multi-head attention whose keys/values come from a map shrunk R times per side."""

    #: sdpa (True) or the explicit eager product: ``shared.attention.set_attention_impl``
    fused_attn: bool = True

    def __init__(self, dim: int, heads: int, sr_ratio: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.sr_ratio = sr_ratio
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, c = x.shape
        d = c // self.heads
        q = self.q(x).unflatten(-1, (self.heads, d)).transpose(1, 2)  # (B, heads, N, d)
        kv_in = x
        if self.sr_ratio > 1:
            m = _to_map(x, h, w)
            r = self.sr_ratio
            if h < r or w < r:
                # The k=s=R conv floors the size, so a map smaller than R (inputs under ~32 px)
                # would have no keys at all. Zero-pad up to R there; training sizes never hit it.
                m = F.pad(m, (0, max(r - w, 0), 0, max(r - h, 0)))
            kv_in = self.norm(_to_tokens(self.sr(m)))
        k, v = self.kv(kv_in).unflatten(-1, (2, self.heads, d)).permute(2, 0, 3, 1, 4).unbind(0)
        out = attention(q, k, v, fused=self.fused_attn)  # (B, heads, N, d)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class MixFFN(nn.Module):
    """Linear -> 3x3 depthwise conv -> GELU -> Linear; the conv gives positional information
    in place of positional embeddings, which is what lets any input size through."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = self.dwconv(_to_map(self.fc1(x), h, w))
        return self.fc2(self.act(_to_tokens(x)))


class Block(nn.Module):
    """Pre-norm transformer block with stochastic depth on both residual branches."""

    def __init__(self, dim: int, heads: int, sr_ratio: int, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = EfficientSelfAttention(dim, heads, sr_ratio)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MixFFN(dim, MLP_RATIO * dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), h, w))
        return x + self.drop_path(self.mlp(self.norm2(x), h, w))


class Stage(nn.Module):
    """Patch embedding, one block per entry of ``drop_paths``, LayerNorm; returns a map."""

    def __init__(self, in_channels: int, dim: int, heads: int, sr_ratio: int, first: bool,
                 drop_paths: Sequence[float]) -> None:
        super().__init__()
        self.patch_embed = (OverlapPatchEmbed(in_channels, dim, 7, 4) if first
                            else OverlapPatchEmbed(in_channels, dim, 3, 2))
        self.blocks = nn.ModuleList(Block(dim, heads, sr_ratio, dp) for dp in drop_paths)
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, h, w = self.patch_embed(x)
        for block in self.blocks:
            x = block(x, h, w)
        return _to_map(self.norm(x), h, w)


class MixTransformer(nn.Module):
    """The MiT encoder: four stages at strides 4, 8, 16, 32."""

    def __init__(self, widths: Sequence[int], depths: Sequence[int], in_channels: int = 3,
                 drop_path_rate: float = 0.1) -> None:
        super().__init__()
        # Stochastic depth grows linearly with the block index over the whole encoder, from 0
        # to drop_path_rate. Plain Python, not torch.linspace, so that the model can also be
        # built on the meta device (counting parameters, deferred initialisation).
        total = sum(depths)
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        self.stages = nn.ModuleList()
        start, prev = 0, in_channels
        for i, (dim, depth) in enumerate(zip(widths, depths)):
            self.stages.append(Stage(prev, dim, HEADS[i], SR_RATIOS[i], first=i == 0,
                                     drop_paths=rates[start:start + depth]))
            start, prev = start + depth, dim

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Feature maps (B, C_i, H_i, W_i) of the four stages, finest first."""
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats


class AllMLPDecoder(nn.Module):
    """Per-stage linear projection to one width, upsample to 1/4, concatenate, fuse, classify."""

    def __init__(self, widths: Sequence[int], dim: int, num_classes: int,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.proj = nn.ModuleList(nn.Linear(c, dim) for c in widths)
        self.fuse = nn.Sequential(
            nn.Conv2d(len(widths) * dim, dim, 1, bias=False),
            nn.BatchNorm2d(dim),
            nn.ReLU(inplace=True),
        )
        # Dropout2d (whole channels), as in the reference decode heads.
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(dim, num_classes, 1)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        size = feats[0].shape[-2:]
        maps = []
        for f, proj in zip(feats, self.proj):
            h, w = f.shape[-2:]
            m = _to_map(proj(_to_tokens(f)), h, w)
            if (h, w) != size:
                m = F.interpolate(m, size=size, mode="bilinear", align_corners=False)
            maps.append(m)
        x = self.fuse(torch.cat(maps, dim=1))
        return self.classifier(self.dropout(x))


class SegFormer(nn.Module):
    """MiT encoder + all-MLP decoder; returns logits at 1/4 of the input size.

    A bad argument raises ``shared.modelargs.ArgumentError``, a ValueError naming it; the
    allowed values are in the annotations.

    Args:
        num_classes: classes scored: the output channels.
        variant: MiT encoder size, b0 (3.7M parameters) to b5 (case and surrounding spaces
            ignored).
        drop_path_rate: stochastic depth, rising linearly over the encoder blocks to this rate.
        in_channels: image channels.
    """

    @checked
    def __init__(self, num_classes: Annotated[int, integer(1)],
                 variant: Annotated[str, one_of(VARIANTS, key=_variant_key)] = "b0",
                 drop_path_rate: Annotated[float, fraction] = 0.1,
                 in_channels: Annotated[int, integer(1)] = 3) -> None:
        super().__init__()
        cfg = VARIANTS[_variant_key(variant)]
        self.num_classes = num_classes
        self.encoder = MixTransformer(cfg.widths, cfg.depths, in_channels, drop_path_rate)
        self.decoder = AllMLPDecoder(cfg.widths, cfg.decoder_dim, num_classes)
        self.apply(_init_weights)
        # The classifier as MMSegmentation's decode heads (BaseDecodeHead: conv_seg normal(0,
        # 0.01), bias 0), not the fan-out init above, whose std sqrt(2 / num_classes) made
        # the first logits large (a first loss of 10.5 for 6 classes, ln 6 = 1.8).
        _init_classifier(self.decoder.classifier)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def _init_weights(m: nn.Module) -> None:
    # As the paper's code: truncated normal for linear layers, He (fan-out) normal for convs.
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def _init_classifier(conv: nn.Conv2d) -> None:
    nn.init.normal_(conv.weight, 0.0, 0.01)
    nn.init.zeros_(conv.bias)


def _variant_key(variant: Any) -> Any:
    """ "B1 " -> "b1": the VARIANTS key a variant name means (anything else unchanged)."""
    return variant.strip().lower() if isinstance(variant, str) else variant
