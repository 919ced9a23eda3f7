"""The end of the training data pipeline, run on the batch once it is on the GPU.

The DataLoader workers hand over uint8 crops, uint8 labels and one augmentation vector per
sample (``shared.data.transforms.TrainTransform``). Here, on the whole batch at once: the
photometric distortion with each sample's own parameters, ImageNet normalisation, the padded
border set to 0, labels widened to int64. On a CPU these colour ops cost about a third of a
sample's time (HSV conversions of a 512x512 image); on a GPU they are a few elementwise passes
over the batch.

Written by hand because torchvision's colour functions take one factor per call (one image at
a time, dozens of small kernels per image on a GPU); the formulas below are torchvision's
(``torchvision.transforms.v2.functional.adjust_*``), applied with a factor per sample, and
``tests/test_on_device.py`` checks them against torchvision image by image.
"""
from __future__ import annotations

import functools

import torch

from shared.data.transforms import (
    AUG_BRIGHTNESS, AUG_CONTRAST, AUG_CONTRAST_FIRST, AUG_HEIGHT, AUG_HUE, AUG_SATURATION,
    AUG_WIDTH, IMAGENET_MEAN, IMAGENET_STD)

__all__ = ["photometric", "training_batch", "valid_region"]

# torchvision's rgb_to_grayscale weights
_GREY = (0.2989, 0.587, 0.114)


@functools.lru_cache(maxsize=None)
def _constants(device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """mean, std (1, 3, 1, 1) and the HSV->RGB channel offsets, made once per device: a tensor
    built from Python values on every step would be a host-to-GPU copy that waits for the GPU."""
    def make(values):
        return torch.tensor(values, dtype=torch.float32).view(1, 3, 1, 1).to(device)
    return make(IMAGENET_MEAN), make(IMAGENET_STD), make((5.0, 3.0, 1.0))


def _per_sample(values: torch.Tensor) -> torch.Tensor:
    return values.view(-1, 1, 1, 1)


def _grey(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    return (r * _GREY[0] + g * _GREY[1] + b * _GREY[2]).unsqueeze(1)


def _blend(x: torch.Tensor, other: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    # ratio 1 gives x exactly (x * 1 + other * 0), so a skipped op changes nothing
    return (x * ratio + other * (1.0 - ratio)).clamp_(0.0, 1.0)


def _contrast(x: torch.Tensor, factor: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    # The mean grey of the crop itself: padding (added after the colour ops on a CPU) is left
    # out of the mean.
    grey = _grey(x)
    mean = (grey * valid).sum((2, 3), keepdim=True) / valid.sum((2, 3), keepdim=True).clamp_(min=1)
    return _blend(x, mean, _per_sample(factor))


def _hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the HSV hue of each sample by ``shift`` (fraction of the circle); samples with
    shift 0 are returned unchanged (the HSV round trip is exact only up to rounding)."""
    maxc, _ = x.max(1, keepdim=True)
    minc, _ = x.min(1, keepdim=True)
    delta = maxc - minc
    s = delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc))
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    rc, gc, bc = ((maxc - x) / safe).split(1, dim=1)
    r, g, _ = x.split(1, dim=1)
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = (h / 6.0 + _per_sample(shift)).remainder_(1.0)
    # HSV -> RGB in closed form: channel n in (5, 3, 1) for (r, g, b)
    k = (_constants(x.device)[2] + h * 6.0).remainder_(6.0)
    ramp = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    out = (maxc - maxc * s * ramp).clamp_(0.0, 1.0)
    return torch.where(_per_sample(shift) != 0, out, x)


def photometric(x: torch.Tensor, aug: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """MMSeg's photometric distortion (``PhotometricDistortion``) on float images in [0, 1],
    (B, 3, H, W), with each sample's parameters from ``aug`` (B, AUG_SIZE); ``valid`` (B, 1,
    H, W) marks the crop inside its padding."""
    contrast_first = aug[:, AUG_CONTRAST_FIRST] > 0.5
    one = torch.ones_like(aug[:, AUG_CONTRAST])
    x = (x * _per_sample(aug[:, AUG_BRIGHTNESS])).clamp_(0.0, 1.0)
    x = _contrast(x, torch.where(contrast_first, aug[:, AUG_CONTRAST], one), valid)
    x = _blend(x, _grey(x), _per_sample(aug[:, AUG_SATURATION]))
    x = _hue(x, aug[:, AUG_HUE])
    return _contrast(x, torch.where(contrast_first, one, aug[:, AUG_CONTRAST]), valid)


def valid_region(aug: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, 1, H, W) bool: True inside each sample's crop, False in its padding."""
    rows = torch.arange(height, device=aug.device) < aug[:, AUG_HEIGHT, None]
    cols = torch.arange(width, device=aug.device) < aug[:, AUG_WIDTH, None]
    return (rows[:, :, None] & cols[:, None, :]).unsqueeze(1)


def training_batch(images: torch.Tensor, masks: torch.Tensor, aug: torch.Tensor,
                   channels_last: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (B, 3, H, W), uint8 masks (B, H, W) and aug (B, AUG_SIZE), as the training
    loader gives them, to the model's input (float32, normalised, padding 0, channels_last if
    asked) and the loss's int64 labels."""
    if channels_last:  # converted while still uint8: a quarter of the bytes of float32
        images = images.contiguous(memory_format=torch.channels_last)
    valid = valid_region(aug, images.shape[-2], images.shape[-1])
    x = photometric(images.float().div_(255.0), aug, valid)
    mean, std, _ = _constants(x.device)
    x = torch.where(valid, (x - mean) / std, 0.0)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, masks.long()
