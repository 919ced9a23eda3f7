"""Segmenter (Strudel et al., ICCV 2021): a plain ViT encoder and a linear or mask-transformer
decoder, in plain PyTorch on a timm ViT.

Encoder: timm's ViT-T/S/B with 16 px patches, built at the training crop size (``img_size``,
the trial's ``crop_size``), as the official code and MMSegmentation build it: the learned
position embeddings cover the crop's token grid (32x32 for 512 px crops), so that ViT-S/16 with
the mask decoder has the official model's 26.03M parameters. An input of another size (whole
image validation) gets the embeddings resampled bicubically to its grid (timm's
``dynamic_img_size``; MMSegmentation's ViT resamples bicubically too, the official code
bilinearly). An ImageNet checkpoint (224 px, a 14x14 grid) loads with its embeddings resampled
to the crop grid (``load_pretrained``). The final LayerNorm is kept; the class token is dropped
before the decoder, as in the paper.

Decoders:
- ``linear``: one Linear from each patch token to the classes.
- ``mask``: the patch tokens (projected by a Linear) and ``num_classes`` learned class
  embeddings go through ``decoder_layers`` pre-norm transformer layers (width = the
  encoder's, one head per 64 channels, MLP ratio 4, dropout 0.1: the paper's settings); after
  a LayerNorm, patches and class embeddings are each projected (a bias-free Linear) and
  L2-normalised, the masks are their scalar products (patches x classes, cosines in [-1, 1])
  and a LayerNorm over the classes turns them into logits.

Output, as the official code (segm/model/segmenter.py, ``padding``/``unpadding``): an input
whose sides are not multiples of 16 is zero-padded on the right and bottom to the next
multiple, the logits on the padded token grid are upsampled bilinearly to the padded size and
the padding is cropped off: (B, num_classes, H, W). When both sides are multiples of 16 (the
training crops) the logits stay at 1/16, (B, num_classes, H/16, W/16), and the trainer's
bilinear upsampling to the label size is the official one; the full-resolution tensor is then
made once, in float32, by the loss.

Attention is ``torch.nn.functional.scaled_dot_product_attention`` everywhere (flash or
memory-efficient kernels on GPUs): written out in the decoder, and forced on in timm's
encoder, whose attention would otherwise fall back to an explicit softmax(QK^T)V (quadratic
memory) when the environment sets ``TIMM_FUSED_ATTN=0``. The hyperparameter
``attention_impl: eager`` switches both to that explicit product on purpose, after
construction (``shared.attention.set_attention_impl``), for the implementation ablation.

Parameter counts with 150 classes at the default 512 px crop (no classification head in the
encoder; docs/models.md compares them with the official ones): ViT-T/16 encoder 5.683M
(timm's 5.717M ``vit_tiny_patch16_224`` less its 0.193M ImageNet head, plus 828 x 192 for the
32x32 grid's extra position embeddings); + linear decoder 0.029M = 5.712M; + mask decoder
(2 layers) 1.030M = 6.713M. ViT-S/16 encoder 21.984M; + mask decoder 4.050M = 26.034M.
ViT-B/16 encoder 86.435M; + mask decoder 16.063M = 102.498M.
A mask decoder of width d with L layers and n classes has d^2 (L*12 + 3) + d (L*13 + n + 3)
+ 2n parameters: proj_dec d^2+d, per layer 12d^2+13d, class embeddings nd, the two
projections 2d^2, the final LayerNorm 2d, the mask LayerNorm 2n.
"""
from __future__ import annotations

import logging
import math
from typing import Annotated, Any, Mapping, Optional, Tuple

import timm
import torch
import torch.nn.functional as F
from timm.layers import DropPath, resample_abs_pos_embed
from torch import nn

from shared.attention import attention
from shared.modelargs import checked, fraction, integer, one_of
from shared.pretrained import load_model_or_backbone, read_state_dict

log = logging.getLogger("segmenter.model")

BACKBONES = ("vit_tiny_patch16_224", "vit_small_patch16_224", "vit_base_patch16_224")
DECODERS = ("linear", "mask")
DEFAULT_DECODER_LAYERS = 2
MAX_DECODER_LAYERS = 24
HEAD_DIM = 64  # the paper's decoder uses width // 64 heads
MLP_RATIO = 4
DECODER_DROPOUT = 0.1
PATCH_SIZE = 16
DEFAULT_IMG_SIZE = 512  # MMSegmentation's and the official ADE20K crop


def _img_size(v: Any) -> Optional[str]:
    """An int or an [h, w] pair of ints >= 1: the crop the position embeddings are learned on."""
    if isinstance(v, (list, tuple)) and len(v) == 2 and all(integer(1)(x) is None for x in v):
        return None
    if integer(1)(v) is None:
        return None
    return "must be an integer >= 1 or a pair [height, width] of them"


def _grid(img_size: Any) -> Tuple[int, int]:
    """The token grid of an ``img_size`` crop once padded to a multiple of the patch size."""
    h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
    return math.ceil(h / PATCH_SIZE), math.ceil(w / PATCH_SIZE)


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

    A bad argument raises ``shared.modelargs.ArgumentError``, a ValueError naming it; the
    allowed values are in the annotations.

    Args:
        num_classes: classes scored: the output channels.
        backbone: timm ViT encoder (patch 16).
        decoder: mask: the mask-transformer decoder; linear: one Linear from each patch token
            to the classes.
        decoder_layers: layers of the mask decoder (checked for the linear decoder too, where
            it is unused).
        drop_path_rate: the encoder's stochastic depth.
        in_channels: image channels.
        img_size: the training crop, an int or [h, w]: the position embeddings are learned on
            its token grid.
    """

    @checked
    def __init__(self, num_classes: Annotated[int, integer(1)],
                 backbone: Annotated[str, one_of(BACKBONES)] = "vit_tiny_patch16_224",
                 decoder: Annotated[str, one_of(DECODERS)] = "mask",
                 decoder_layers: Annotated[int, integer(1, MAX_DECODER_LAYERS)] = DEFAULT_DECODER_LAYERS,
                 drop_path_rate: Annotated[float, fraction] = 0.1,
                 in_channels: Annotated[int, integer(1)] = 3,
                 img_size: Annotated[Any, _img_size] = DEFAULT_IMG_SIZE) -> None:
        super().__init__()
        self.num_classes = num_classes
        # pretrained=False always: weights come only from a local file (load_pretrained,
        # the trial's pretrained_path); a training task must never reach for the internet. No class head
        # (num_classes=0) and no pooling: the decoder takes every token. Built at the crop's
        # padded size, so its position embeddings are the crop grid's; forward pads inputs.
        self.encoder = timm.create_model(backbone, pretrained=False, num_classes=0,
                                         global_pool="", in_chans=in_channels,
                                         img_size=tuple(g * PATCH_SIZE for g in _grid(img_size)),
                                         dynamic_img_size=True,
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
        if isinstance(self.decoder, LinearDecoder):
            # MMSegmentation's linear Segmenter is an FCNHead without convs: its conv_seg,
            # normal(0, 0.01) and bias 0 (the official code: trunc-normal 0.02; both start
            # near ln(num_classes)).
            nn.init.normal_(self.decoder.head.weight, 0.0, 0.01)
            nn.init.zeros_(self.decoder.head.bias)
        else:
            nn.init.trunc_normal_(self.decoder.cls_emb, std=0.02)
            # std dim^-1/2, the official code's init (MMSegmentation: trunc-normal 0.02). The
            # L2 normalisation that follows removes their scale, so the two give the same
            # cosines; and mask_norm (a LayerNorm over the classes, weight 1) makes the first
            # logits unit-variance whatever the init: a first loss near ln(num_classes) + 0.4.
            for proj in (self.decoder.proj_patch, self.decoder.proj_classes):
                nn.init.normal_(proj.weight, std=dim ** -0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for images (B, C, H, W): (B, num_classes, H/16, W/16) when H and W are
        multiples of 16, else (B, num_classes, H, W) (padded, upsampled, cropped)."""
        H, W = x.shape[-2:]
        pad_h, pad_w = (-H) % PATCH_SIZE, (-W) % PATCH_SIZE
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))  # zeros right and bottom, as the official code
        h, w = (H + pad_h) // PATCH_SIZE, (W + pad_w) // PATCH_SIZE
        tokens = self.encoder.forward_features(x)
        logits = self.decoder(tokens[:, self.encoder.num_prefix_tokens:], h, w)
        if pad_h or pad_w:
            # float32, as the loss would upsample (shared.engine.segmentation_loss)
            logits = F.interpolate(logits.float(), size=(H + pad_h, W + pad_w), mode="bilinear",
                                   align_corners=False)[..., :H, :W]
        return logits


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
    ImageNet ViT checkpoint in timm's key names): ``shared.pretrained.load_model_or_backbone``.

    Position embeddings learned on another square grid (a 224 px ImageNet ViT's 14x14, or a
    model trained at another square crop) are resampled bicubically to the model's grid and loaded, as the
    official code's ``checkpoint_filter_fn`` does (bilinearly there); the summary lists them
    under ``resampled`` instead of ``shape_mismatch``.
    """
    summary = dict(load_model_or_backbone(model, model.encoder, path))
    stale = [k for k in summary["shape_mismatch"] if k.split(".")[-1] == "pos_embed"]
    if stale:
        state = read_state_dict(path)
        source = next(v for k, v in state.items() if k.split(".")[-1] == "pos_embed")
        prefix = model.encoder.num_prefix_tokens
        old = math.isqrt(source.shape[1] - prefix)
        if old * old == source.shape[1] - prefix and source.shape[-1] == model.encoder.embed_dim:
            with torch.no_grad():
                model.encoder.pos_embed.copy_(resample_abs_pos_embed(
                    source.float(), new_size=list(model.encoder.patch_embed.grid_size),
                    old_size=[old, old], num_prefix_tokens=prefix))
            summary["shape_mismatch"] = [k for k in summary["shape_mismatch"] if k not in stale]
            summary["resampled"] = stale
            log.info("resampled %s from a %dx%d grid to %s", stale[0], old, old,
                     "x".join(map(str, model.encoder.patch_embed.grid_size)))
    return summary
