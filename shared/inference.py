"""Whole-image validation without a per-shape warm-up: shape buckets and plan-free kernels.

Validation images keep their aspect ratio after the (2048, 512) keep-ratio resize, so almost
every image brings a new input shape. On a GPU a new shape is not free: cuDNN 9.10 and later
build an execution plan per new depthwise-convolution shape (seconds each on an H200: the
first GPU campaign measured SegFormer's first validation at 14.25 s and its second, over the
same 16 images, at 0.23 s), and every convolution asks cuDNN's heuristics again. Two remedies,
each a hyperparameter of the segmentation trials:

* ``val_pad_multiple`` (shape buckets): each resized image is padded at the bottom and right
  to the next multiple of this many pixels (the image with 0 after normalisation, the mean
  colour, as the training crops are padded; the label with the ignore index), the model runs
  on the padded image, and its logits are cropped back to the image before they are resized to
  the annotation. A handful of shapes then serves a whole validation set. What it changes in the
  protocol: pixels near the bottom and right borders see padding instead of the border
  condition of each layer (zeros or attention over the image alone), as in MMSegmentation's
  test-time ``size_divisor`` padding; the scored pixels and their labels are the same. 0 = off
  (every image at its own size).
* ``val_kernels``: which kernels validation runs. ``cudnn``: the training step's (cuDNN's
  convolutions, and SDPA's cuDNN attention where PyTorch picks it). ``native_depthwise``:
  PyTorch's own CUDA kernels in grouped (depthwise) convolutions, cuDNN elsewhere.
  ``plan_free`` (the default): no cuDNN at all during validation (PyTorch's own convolution
  kernels, SDPA restricted to its flash, memory-efficient and plain backends), so no execution
  plan is built at any new shape. Same arithmetic up to the order of additions. On an H200 a
  new shape's first forward cost SegFormer-B0 1347 ms as trained, 234 ms with native depthwise
  kernels and 39 ms plan-free, against 7-12 ms once warm (BENCHMARKS.md, 2026-12-04). No
  effect on a CPU (no cuDNN there).

And validation never autotunes: with ``cudnn_benchmark: true`` the training step's convolutions
are timed once at the fixed training shape, but each new validation shape would be timed
again (``no_autotuning``).

``benchmarks/shape_warmup.py`` measures both on a GPU; ``benchmarks/val_buckets.py`` measures
what the buckets do to mIoU.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, List

import torch
from torch import nn

from shared.data.transforms import padded_side

__all__ = ["grouped_convs", "native_grouped_convs", "no_autotuning", "no_cudnn", "padded_side",
           "validation_kernels"]


def grouped_convs(model: nn.Module) -> List[nn.Conv2d]:
    """The grouped convolutions of ``model`` (depthwise ones included)."""
    return [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]


@contextlib.contextmanager
def native_grouped_convs(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """cuDNN off inside every grouped convolution of ``model``, on elsewhere: forward hooks
    switch the process-wide flag around those modules only, and put back what was there.
    A no-op when ``enabled`` is false or the model has no grouped convolution."""
    convs = grouped_convs(model) if enabled else []
    handles: List[Any] = []

    def off(module: nn.Module, args: Any) -> None:
        module._cudnn_was = torch.backends.cudnn.enabled  # type: ignore[attr-defined]
        torch.backends.cudnn.enabled = False

    def back(module: nn.Module, args: Any, output: Any) -> None:
        torch.backends.cudnn.enabled = module._cudnn_was  # type: ignore[attr-defined]

    for m in convs:
        handles += [m.register_forward_pre_hook(off), m.register_forward_hook(back)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def no_autotuning() -> Iterator[None]:
    """``torch.backends.cudnn.benchmark`` off inside, put back as it was afterwards."""
    was = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = was


@contextlib.contextmanager
def no_cudnn() -> Iterator[None]:
    """No cuDNN inside: convolutions run PyTorch's own kernels, and scaled-dot-product attention
    chooses among its flash, memory-efficient and plain backends (not cuDNN's, which builds a
    graph per new shape). What was set is put back afterwards."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    was = torch.backends.cudnn.enabled
    torch.backends.cudnn.enabled = False
    try:
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                          SDPBackend.MATH]):
            yield
    finally:
        torch.backends.cudnn.enabled = was


@contextlib.contextmanager
def validation_kernels(model: nn.Module, kind: str, device: torch.device) -> Iterator[None]:
    """The kernels of ``val_kernels`` = ``kind`` around a validation step of ``model`` on
    ``device`` (nothing but ``no_autotuning`` off CUDA)."""
    cuda = device.type == "cuda"
    with contextlib.ExitStack() as stack:
        stack.enter_context(no_autotuning())
        if cuda and kind == "native_depthwise":
            stack.enter_context(native_grouped_convs(model))
        elif cuda and kind == "plan_free":
            stack.enter_context(no_cudnn())
        yield
