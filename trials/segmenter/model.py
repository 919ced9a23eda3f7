"""Segmenter (Strudel et al., ICCV 2021): a plain ViT encoder and a linear or mask-transformer
decoder, in plain PyTorch on a timm ViT.

Encoder: timm's ViT-T/S/B with 16 px patches, built with ``dynamic_img_size=True`` and
``dynamic_img_pad=True``: any input size works, the image is zero-padded on the right and
bottom to a multiple of 16, and the learned 14x14 position embeddings (those of a 224 px
model, so that ImageNet ViT checkpoints load unchanged) are resampled bicubically to the
token grid at each forward whose grid is not 14x14. The final LayerNorm is kept; the class
token is dropped before the decoder, as in the paper.

Decoders:
- ``linear``: one Linear from each patch token to the classes.
- ``mask``: the patch tokens (projected by a Linear) and ``num_classes`` learned class
  embeddings go through ``decoder_layers`` pre-norm transformer layers (width = the
  encoder's, one head per 64 channels, MLP ratio 4, dropout 0.1: the paper's settings); after
  a LayerNorm, patches and class embeddings are each projected (a bias-free Linear) and
  L2-normalised, the masks are their scalar products (patches x classes, cosines in [-1, 1])
  and a LayerNorm over the classes turns them into logits.

Output: logits at 1/16 of the input, (B, num_classes, ceil(H/16), ceil(W/16)); the trainer
upsamples them to the label size. When H or W is not a multiple of 16, the last token row or
column also covers up to 15 padded pixels, so the upsampled logits are stretched by at most
15 px over the image; the 512 px training crops are exact.

Attention is ``torch.nn.functional.scaled_dot_product_attention`` everywhere (flash or
memory-efficient kernels on GPUs): written out in the decoder, and forced on in timm's
encoder, whose attention would otherwise fall back to an explicit softmax(QK^T)V (quadratic
memory) when the environment sets ``TIMM_FUSED_ATTN=0``. The hyperparameter
``attention_impl: eager`` switches both to that explicit product on purpose, after
construction (``shared.attention.set_attention_impl``), for the implementation ablation.

Parameter counts with 150 classes (no classification head in the encoder): ViT-T/16 encoder
5.524M (timm's 5.717M ``vit_tiny_patch16_224`` less its 0.193M ImageNet head); + linear
decoder 0.029M = 5.553M; + mask decoder (2 layers) 1.030M = 6.554M. ViT-S/16 encoder 21.666M;
+ mask decoder 4.050M = 25.716M. ViT-B/16 encoder 85.799M; + mask decoder 16.063M = 101.862M.
A mask decoder of width d with L layers and n classes has d^2 (L*12 + 3) + d (L*13 + n + 3)
+ 2n parameters: proj_dec d^2+d, per layer 12d^2+13d, class embeddings nd, the two
projections 2d^2, the final LayerNorm 2d, the mask LayerNorm 2n.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import timm
import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import nn

from shared.attention import attention
from shared.modelargs import fraction, integer, one_of, require
from shared.pretrained import load_model_or_backbone

BACKBONES = ("vit_tiny_patch16_224", "vit_small_patch16_224", "vit_base_patch16_224")
DECODERS = ("linear", "mask")
DEFAULT_DECODER_LAYERS = 2
MAX_DECODER_LAYERS = 24
HEAD_DIM = 64  # the paper's decoder uses width // 64 heads
MLP_RATIO = 4
DECODER_DROPOUT = 0.1
PATCH_SIZE = 16


def _to_map(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, N, C) tokens in row-major grid order -> (B, C, h, w); a channels_last view."""
    return tokens.transpose(1, 2).unflatten(2, (h, w))


class Attention(nn.Module):
    """Multi-head self-attention on ``scaled_dot_product_attention``."""

    #: sdpa (True) or the explicit eager product: ``shared.attention.set_attention_impl``
    fused_attn: bool = True

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).unflatten(-1, (3, self.heads, c // self.heads)).permute(2, 0, 3, 1, 4)
        # Dropout on the attention weights as the paper's decoder, inside the fused kernel.
        out = attention(q, k, v, fused=self.fused_attn,
                        dropout_p=self.dropout if self.training else 0.0)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, c)))


class DecoderLayer(nn.Module):
    """Pre-norm transformer layer: x + attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int, dropout: float, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, MLP_RATIO * dim), nn.GELU(), nn.Dropout(dropout),
            nn.Linear(MLP_RATIO * dim, dim), nn.Dropout(dropout),
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class LinearDecoder(nn.Module):
    """A Linear from each patch token to class logits."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.head = nn.Linear(dim, num_classes)

    def forward(self, patches: torch.Tensor, h: int, w: int) -> torch.Tensor:
        return _to_map(self.head(patches), h, w)


class MaskTransformer(nn.Module):
    """The paper's mask decoder: patch tokens and class embeddings attend to each other; the
    logits are LayerNorm'd cosines between patch and class embeddings."""

    def __init__(self, dim: int, num_classes: int, layers: int,
                 dropout: float = DECODER_DROPOUT) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.proj_dec = nn.Linear(dim, dim)
        self.cls_emb = nn.Parameter(torch.zeros(1, num_classes, dim))
        self.layers = nn.ModuleList(DecoderLayer(dim, max(dim // HEAD_DIM, 1), dropout)
                                    for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.proj_patch = nn.Linear(dim, dim, bias=False)
        self.proj_classes = nn.Linear(dim, dim, bias=False)
        self.mask_norm = nn.LayerNorm(num_classes)

    def forward(self, patches: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = self.proj_dec(patches)
        x = torch.cat([x, self.cls_emb.expand(x.shape[0], -1, -1)], dim=1)
        for layer in self.layers:
            x = layer(x)
        x = self.norm(x)
        n = self.num_classes
        p = F.normalize(self.proj_patch(x[:, :-n]), dim=-1)
        c = F.normalize(self.proj_classes(x[:, -n:]), dim=-1)
        masks = self.mask_norm(p @ c.transpose(1, 2))  # (B, N, num_classes)
        return _to_map(masks, h, w)


class Segmenter(nn.Module):
    """ViT encoder + linear or mask-transformer decoder; logits at 1/16 of the input size.

    Arguments: ``num_classes`` (>= 1), ``backbone`` (one of BACKBONES), ``decoder`` ("linear"
    or "mask"), ``decoder_layers`` (the mask decoder's, 1..MAX_DECODER_LAYERS; checked for
    the linear decoder too, where it is unused), ``drop_path_rate`` (the encoder's
    stochastic depth, in [0, 1)), ``in_channels``. A bad value raises
    ``shared.modelargs.ArgumentError``, a ValueError naming the argument.
    """

    def __init__(self, num_classes: int, backbone: str = "vit_tiny_patch16_224",
                 decoder: str = "mask", decoder_layers: int = DEFAULT_DECODER_LAYERS,
                 drop_path_rate: float = 0.1, in_channels: int = 3) -> None:
        super().__init__()
        require("Segmenter", "num_classes", num_classes, integer(1))
        require("Segmenter", "backbone", backbone, one_of(BACKBONES))
        require("Segmenter", "decoder", decoder, one_of(DECODERS))
        require("Segmenter", "decoder_layers", decoder_layers, integer(1, MAX_DECODER_LAYERS))
        require("Segmenter", "drop_path_rate", drop_path_rate, fraction)
        require("Segmenter", "in_channels", in_channels, integer(1))
        self.num_classes = num_classes
        # pretrained=False always: weights come only from a local file (load_pretrained,
        # the trial's pretrained_path); a training task must never reach for the internet. No class head
        # (num_classes=0) and no pooling: the decoder takes every token.
        self.encoder = timm.create_model(backbone, pretrained=False, num_classes=0,
                                         global_pool="", in_chans=in_channels,
                                         dynamic_img_size=True, dynamic_img_pad=True,
                                         drop_path_rate=drop_path_rate)
        for m in self.encoder.modules():
            if hasattr(m, "fused_attn"):
                m.fused_attn = True
        dim = self.encoder.embed_dim
        if decoder == "linear":
            self.decoder: nn.Module = LinearDecoder(dim, num_classes)
        else:
            self.decoder = MaskTransformer(dim, num_classes, decoder_layers)
        self.decoder.apply(_init_decoder)
        if isinstance(self.decoder, MaskTransformer):
            nn.init.trunc_normal_(self.decoder.cls_emb, std=0.02)
            # Unit-variance projections (std dim^-1/2), the paper's init: the cosines start
            # spread out rather than all near 0, which a trunc-normal(0.02) init would give.
            for proj in (self.decoder.proj_patch, self.decoder.proj_classes):
                nn.init.normal_(proj.weight, std=dim ** -0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes, ceil(H/16), ceil(W/16)) for images (B, C, H, W)."""
        h, w = (math.ceil(s / PATCH_SIZE) for s in x.shape[-2:])
        tokens = self.encoder.forward_features(x)
        return self.decoder(tokens[:, self.encoder.num_prefix_tokens:], h, w)


def _init_decoder(m: nn.Module) -> None:
    # As ViTs are initialised (and the paper's decoder): truncated normal for linear layers.
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def load_pretrained(model: Segmenter, path: str) -> Mapping[str, Any]:
    """Load a local weights file into the whole ``model``, or into its encoder alone (an
    ImageNet ViT checkpoint in timm's key names): ``shared.pretrained.load_model_or_backbone``."""
    return load_model_or_backbone(model, model.encoder, path)
