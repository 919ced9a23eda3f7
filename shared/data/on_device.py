"""The end of the training data pipeline, run on the batch once it is on the GPU.

The DataLoader workers hand over uint8 crops, uint8 labels and one augmentation vector per
sample (``shared.data.transforms.TrainTransform``). Here, on the whole batch at once: the
photometric distortion with each sample's own parameters, ImageNet normalisation, the padded
border set to 0, labels widened to int64. On a CPU these colour ops cost about a third of a
sample's time (HSV conversions of a 512x512 image); on a GPU they are a few elementwise passes
over the batch.

The distortion is MMSegmentation's ``PhotoMetricDistortion`` (mmseg/datasets/transforms), which
works on uint8 images with OpenCV's colour conversions. Written by hand because neither OpenCV
nor torchvision runs it on a batch with a parameter per sample on the GPU: here every value is
a float32 holding an integer 0..255, each op truncates to an integer as MMSeg's uint8 casts do,
and the HSV conversions reproduce OpenCV's 8-bit ones (``cv2.cvtColor`` RGB<->HSV: hue 0..179,
saturation and value 0..255; HSV->RGB as OpenCV's vectorised path, which OpenCV's own scalar
path for the last ``width % 32`` pixels of a row does not match: see ``hsv_to_rgb``).
``tests/test_fidelity_data.py`` checks the result against MMSeg's steps computed with OpenCV
itself.
"""
from __future__ import annotations

import functools

import torch

from shared.data.transforms import (
    AUG_BRIGHTNESS, AUG_CONTRAST, AUG_CONTRAST_FIRST, AUG_HEIGHT, AUG_HUE, AUG_HUE_ON,
    AUG_SATURATION, AUG_SATURATION_ON, AUG_WIDTH, IMAGENET_MEAN, IMAGENET_STD)

__all__ = ["hsv_to_rgb", "photometric", "rgb_to_hsv", "training_batch", "valid_region"]

# OpenCV's 8-bit RGB->HSV works in fixed point: a quotient is (numerator * table[divisor] +
# 2**11) >> 12, with table[i] = round((255 << 12) / i) for saturation and round((180 << 12) /
# (6 i)) for hue. Every product stays below 2**24, so float32 holds it exactly.
_HSV_SHIFT = 4096.0
_HSV_ROUND = 2048.0


@functools.lru_cache(maxsize=None)
def _constants(device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """mean, std (1, 3, 1, 1) and OpenCV's saturation and hue division tables (256,), made
    once per device: a tensor built from Python values on every step would be a host-to-GPU
    copy that waits for the GPU."""
    def make(values):
        return torch.tensor(values, dtype=torch.float32).view(1, 3, 1, 1).to(device)
    i = torch.arange(256, dtype=torch.float64).clamp(min=1)
    sdiv = torch.round(255 * _HSV_SHIFT / i)
    hdiv = torch.round(180 * _HSV_SHIFT / (6 * i))
    sdiv[0] = hdiv[0] = 0  # OpenCV's table[0]: grey pixels get saturation and hue 0
    return (make(IMAGENET_MEAN), make(IMAGENET_STD), sdiv.float().to(device), hdiv.float().to(device))


def _per_sample(values: torch.Tensor) -> torch.Tensor:
    return values.view(-1, 1, 1, 1)


def _convert(x: torch.Tensor, alpha: torch.Tensor | float = 1.0, beta: torch.Tensor | float = 0.0) -> torch.Tensor:
    """MMSeg's ``convert``: ``x * alpha + beta`` in float32, clipped to 0..255 and truncated as
    ``astype(np.uint8)`` does. ``alpha`` 1 and ``beta`` 0 return integer inputs unchanged."""
    return (x * alpha + beta).clamp_(0.0, 255.0).trunc_()


def rgb_to_hsv(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """OpenCV's ``cvtColor(RGB2HSV)`` of 8-bit images, bit for bit at every width (integer
    arithmetic, in OpenCV's vectorised and scalar paths alike): (B, 3, H, W) float holding
    uint8 RGB -> hue 0..179, saturation 0..255, value 0..255, each (B, 1, H, W)."""
    _, _, sdiv, hdiv = _constants(x.device)
    r, g, b = x.split(1, dim=1)
    v = torch.maximum(torch.maximum(r, g), b)
    diff = v - torch.minimum(torch.minimum(r, g), b)
    s = torch.floor((diff * sdiv[v.long()] + _HSV_ROUND) / _HSV_SHIFT)
    h = torch.where(v == r, g - b, torch.where(v == g, b - r + 2 * diff, r - g + 4 * diff))
    h = torch.floor((h * hdiv[diff.long()] + _HSV_ROUND) / _HSV_SHIFT)
    return torch.where(h < 0, h + 180, h), s, v


def hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """OpenCV's ``cvtColor(HSV2RGB)`` of 8-bit images: hue 0..179, saturation and value 0..255
    (each (B, 1, H, W), float holding integers) -> (B, 3, H, W) RGB 0..255.

    As OpenCV's vectorised path on x86: float32 sector arithmetic, the result truncated to
    uint8. ``1 - s * f`` is taken in float64 and rounded once to float32, as the fused
    multiply-add the compiler emits there does; with it the result equals that path's on all
    180 x 256 x 256 (h, s, v) (without it, about 1 triple in 7000 has a channel 1 lower).

    OpenCV itself is not one function here: it converts each row in blocks of 32 pixels
    (on this project's x86 machines; the block follows the CPU's vector width) and the
    remaining ``width % 32`` pixels of the row with scalar code that rounds differently. On
    those tail pixels OpenCV's own result differs from its vectorised one by 1 level per
    conversion in 74% of the (h, s, v) triples, and MMSeg's photometric distortion (two round
    trips) by up to 3 levels (measured 2026-12-04, opencv-python-headless 5.0.0.93). So the
    result equals ``cv2.cvtColor`` bit for bit on images whose width is a multiple of 32, and
    on the first ``width - width % 32`` pixels of every row otherwise
    (``tests/test_fidelity_data.py``).
    """
    h = h * (6.0 / 180.0)
    s = s * (1.0 / 255.0)
    v = v * (1.0 / 255.0)
    sector = torch.trunc(h)
    f = h - sector
    sector = sector - torch.trunc(sector * (1.0 / 6.0)) * 6.0
    s64 = s.double()
    t0 = v
    t1 = v * (1.0 - s)
    t2 = v * (1.0 - s64 * f.double()).float()
    t3 = v * (1.0 - s64 * (1.0 - f).double()).float()
    where = torch.where
    r = where(sector < 1, t0, where(sector < 2, t2, where(sector < 4, t1, where(sector < 5, t3, t0))))
    g = where(sector < 1, t3, where(sector < 3, t0, where(sector < 4, t2, t1)))
    b = where(sector < 2, t1, where(sector < 3, t3, where(sector < 5, t0, t2)))
    return torch.cat([r, g, b], dim=1).mul_(255.0).trunc_()


def photometric(x: torch.Tensor, aug: torch.Tensor) -> torch.Tensor:
    """MMSeg's ``PhotoMetricDistortion`` on (B, 3, H, W) float images holding uint8 values,
    with each sample's parameters from ``aug`` (B, AUG_SIZE; ``PhotometricDistortion.draw``).
    Returns the same kind of image. Every op is pixelwise, so padding around a crop does not
    change the crop's result."""
    on = aug[:, [AUG_CONTRAST_FIRST, AUG_SATURATION_ON, AUG_HUE_ON]] > 0.5
    contrast_first, saturation_on, hue_on = (_per_sample(c) for c in on.unbind(1))
    one = torch.ones_like(aug[:, AUG_CONTRAST])
    contrast = _per_sample(aug[:, AUG_CONTRAST])
    x = _convert(x, beta=_per_sample(aug[:, AUG_BRIGHTNESS]))
    x = _convert(x, alpha=torch.where(contrast_first, contrast, _per_sample(one)))
    # saturation and hue: each its own HSV round trip, only where applied (as MMSeg)
    h, s, v = rgb_to_hsv(x)
    s = _convert(s, alpha=_per_sample(aug[:, AUG_SATURATION]))
    x = torch.where(saturation_on, hsv_to_rgb(h, s, v), x)
    h, s, v = rgb_to_hsv(x)
    h = (h + _per_sample(aug[:, AUG_HUE])).remainder_(180.0)
    x = torch.where(hue_on, hsv_to_rgb(h, s, v), x)
    return _convert(x, alpha=torch.where(contrast_first, _per_sample(one), contrast))


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
    x = photometric(images.float(), aug).div_(255.0)
    mean, std, _, _ = _constants(x.device)
    x = torch.where(valid, (x - mean) / std, 0.0)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, masks.long()
