"""The attention implementation switch (hyperparameter ``attention_impl``) of SegFormer and
Segmenter: the one place that says what ``sdpa`` and ``eager`` mean.

- ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention``, which lets PyTorch pick a
  flash or memory-efficient kernel on GPUs (the default);
- ``eager``: the explicit softmax(Q K^T / sqrt(d)) V with the attention matrix written out in
  memory, as MMCV-era code ran it (the implementation the source study measured).

The two compute the same function (the equivalence test, tests/test_ablation.py, checks logits
and gradients); they differ in speed, memory and energy, which is what the implementation
ablation (experiment_configs/<model>/ablation.yaml) measures.

Every attention module of ours and timm's ViT ``Attention`` carry one flag, ``fused_attn``
(timm's own name for it): ``set_attention_impl`` sets it on a built model, so the switch needs
no constructor argument. Written by hand because the eager path is the object of study.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from shared.hparams import STR, Param

#: values of the hyperparameter ``attention_impl``; the first is the default
ATTENTION_IMPLS = ("sdpa", "eager")

#: the hyperparameter of the recipes whose model has attention (SegFormer, Segmenter): set on
#: the built model by ``set_attention_impl``, not a constructor argument
ATTENTION_IMPL_PARAM = Param(ATTENTION_IMPLS[0], STR, choices=ATTENTION_IMPLS,
                             help="sdpa: scaled_dot_product_attention (flash/memory-efficient "
                                  "kernels); eager: the explicit softmax(QK^T/sqrt(d))V "
                                  "(shared/attention.py)")


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, fused: bool,
              dropout_p: float = 0.0) -> torch.Tensor:
    """Multi-head attention of (B, heads, N, d) queries on (B, heads, M, d) keys and values;
    dropout on the attention weights. ``fused``: sdpa, else the explicit eager product."""
    if fused:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
    weights = (q * (1.0 / math.sqrt(q.shape[-1]))) @ k.transpose(-2, -1)  # (B, heads, N, M)
    weights = F.dropout(weights.softmax(dim=-1), p=dropout_p, training=dropout_p > 0)
    return weights @ v


def set_attention_impl(model: nn.Module, impl: str) -> int:
    """Switch every attention module of ``model`` (those with a ``fused_attn`` flag: ours and
    timm's) to ``impl`` (one of ``ATTENTION_IMPLS``); returns how many were switched.

    Raises:
        ValueError: ``impl`` is not one of ATTENTION_IMPLS, or ``model`` has no attention
            module (the switch would silently do nothing).
    """
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"attention_impl must be one of {', '.join(ATTENTION_IMPLS)}, "
                         f"got {impl!r}")
    switched = 0
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = impl == "sdpa"
            switched += 1
    if not switched:
        raise ValueError(f"attention_impl={impl!r}: {type(model).__name__} has no attention "
                         f"module with a fused_attn flag")
    return switched
