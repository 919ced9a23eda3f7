"""Paired image/mask transforms: MMSegmentation's ADE20K 512x512 pipeline in plain PyTorch.

Every transform is a callable ``(image, mask) -> (image, mask)`` on tensors: image uint8 (3, H, W)
until ``Normalize`` (float32 afterwards), mask uint8 or int64 (H, W) with 255 as ignore. Geometric ops
always move image and mask together. All randomness comes from torch's global RNG
(``torch.rand``/``torch.randint``), which Determined seeds per trial and per worker, so a run is
reproducible without any extra seeding here.

Training order (as MMSeg's ``train_pipeline`` plus its data preprocessor)::

    RandomRescale -> RandomCropCatMax -> RandomHorizontalFlip -> PhotometricDistortion
    -> Normalize -> PadTo

where the last three run on the device, batched (``TrainTransform``, ``shared.data.on_device``).
"""

from __future__ import annotations

import math

from collections.abc import Callable, Sequence

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from shared.data.labels import IGNORE_INDEX

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Compose",
    "Normalize",
    "PadTo",
    "padded_side",
    "NO_PHOTOMETRIC",
    "PhotometricDistortion",
    "TrainTransform",
    "RandomCropCatMax",
    "RandomHorizontalFlip",
    "RandomRescale",
    "Rescale",
    "build_train_transform",
    "build_val_transform",
    "keep_ratio_size",
    "resize_image",
    "val_collate",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Pair = tuple[torch.Tensor, torch.Tensor]
PairTransform = Callable[[torch.Tensor, torch.Tensor], Pair]


def _pair(size: int | Sequence[int], name: str) -> tuple[int, int]:
    if isinstance(size, int):
        size = (size, size)
    if len(size) != 2 or any(int(s) != s or s < 1 for s in size):
        raise ValueError(f"{name} must be a positive int or an (h, w) pair of them, got {size!r}")
    return int(size[0]), int(size[1])


def _uniform(low: float, high: float) -> float:
    return low + (high - low) * torch.rand(()).item()


def _coin(p: float) -> bool:
    return torch.rand(()).item() < p


def keep_ratio_size(height: int, width: int, scale: tuple[float, float]) -> tuple[int, int]:
    """Output (h, w) of mmcv's keep-ratio rescale of an ``height`` x ``width`` image to ``scale``.

    The image is scaled by ``min(long_target / long_edge, short_target / short_edge)`` where the
    targets are ``max(scale)`` and ``min(scale)``: the largest size whose long edge fits the
    long target and whose short edge fits the short target.
    """
    long_target, short_target = max(scale), min(scale)
    factor = min(long_target / max(height, width), short_target / min(height, width))
    # mmcv rounds half up (int(x + 0.5)); never let a side reach 0.
    return max(1, int(height * factor + 0.5)), max(1, int(width * factor + 0.5))


def resize_image(image: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """uint8 image (3, H, W) -> uint8 (3, h, w) as mmcv's ``imresize(..., 'bilinear')``, i.e.
    OpenCV's ``cv2.resize(INTER_LINEAR)``: bilinear with half-pixel centres, no antialiasing
    (a downscale samples the four nearest pixels, it does not average over the footprint),
    rounded back to uint8. torchvision's uint8 kernel differs from OpenCV's 11-bit fixed point
    by at most 1 of 255 (``tests/test_fidelity_data.py``) and is 3-12x faster on a CPU than
    interpolating in float32 and rounding (512x683 to 300x400 and to 1024x1366)."""
    return F.resize_image(image, list(size), interpolation=InterpolationMode.BILINEAR, antialias=False)


def nearest_indices(size_in: int, size_out: int) -> torch.Tensor:
    """The source index of each of ``size_out`` output pixels, as OpenCV's ``INTER_NEAREST``
    picks it: ``floor(x * (1 / (out / in)))`` in double precision, at most ``in - 1``. Where
    ``x * in / out`` is an exact integer the reciprocal's rounding can put the product just
    below it and OpenCV takes the pixel before; torch's "nearest" (``floor(x * in / out)``)
    then takes the other one (14 of 345 square size pairs from 20..113 to 10..252 px
    differed, measured with torchvision's ``resize_mask``), so the rule is written out here
    rather than borrowed."""
    step = 1.0 / (size_out / size_in)
    return torch.tensor([min(math.floor(x * step), size_in - 1) for x in range(size_out)],
                        dtype=torch.long)


def resize_mask(mask: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Labels (..., H, W) -> (..., h, w) exactly as mmcv's ``imresize(..., 'nearest')``, i.e.
    ``cv2.resize(INTER_NEAREST)``: each output pixel copies one source pixel
    (:func:`nearest_indices`), no label is ever blended."""
    h, w = int(size[0]), int(size[1])
    rows = nearest_indices(mask.shape[-2], h).to(mask.device)
    cols = nearest_indices(mask.shape[-1], w).to(mask.device)
    return mask.index_select(-2, rows).index_select(-1, cols)


def _resize_pair(image: torch.Tensor, mask: torch.Tensor, size: tuple[int, int]) -> Pair:
    return resize_image(image, size), resize_mask(mask, size)


class Compose:
    """Apply paired transforms in order."""

    def __init__(self, transforms: Sequence[PairTransform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> Pair:
        for transform in self.transforms:
            image, mask = transform(image, mask)
        return image, mask

    def __repr__(self) -> str:
        inner = "".join(f"\n    {t!r}," for t in self.transforms)
        return f"{type(self).__name__}([{inner}\n])"


class Rescale:
    """Deterministic keep-ratio rescale of image and mask to ``scale`` = (long, short) targets."""

    def __init__(self, scale: tuple[float, float] = (2048, 512)) -> None:
        self.scale = scale

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> Pair:
        size = keep_ratio_size(image.shape[-2], image.shape[-1], self.scale)
        return _resize_pair(image, mask, size)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(scale={self.scale})"


class RandomRescale:
    """MMSeg ``RandomResize(scale, ratio_range, keep_ratio=True)``.

    Draws ``r ~ U(ratio_range)``, sets the targets to ``(int(scale[0] * r), int(scale[1] * r))``
    and rescales with the keep-ratio rule of :func:`keep_ratio_size`.
    """

    def __init__(
        self, scale: tuple[int, int] = (2048, 512), ratio_range: tuple[float, float] = (0.5, 2.0)
    ) -> None:
        if not 0 < ratio_range[0] <= ratio_range[1]:
            raise ValueError(f"ratio_range must satisfy 0 < low <= high, got {ratio_range}")
        self.scale = scale
        self.ratio_range = ratio_range

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> Pair:
        ratio = _uniform(*self.ratio_range)
        target = (int(self.scale[0] * ratio), int(self.scale[1] * ratio))
        size = keep_ratio_size(image.shape[-2], image.shape[-1], target)
        return _resize_pair(image, mask, size)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(scale={self.scale}, ratio_range={self.ratio_range})"


class RandomCropCatMax:
    """MMSeg ``RandomCrop(crop_size, cat_max_ratio)``.

    Crops ``crop_size`` = (h, w) at a random position (an image smaller than the crop is cropped
    to what there is; ``PadTo`` fills the rest later). While the crop is dominated by one class
    (its most frequent non-ignored class covers >= ``cat_max_ratio`` of the non-ignored pixels,
    or fewer than two classes are present) a new position is drawn, at most ``tries`` times;
    the last draw is kept unchecked, exactly as MMSeg does.
    """

    def __init__(
        self,
        crop_size: int | tuple[int, int],
        cat_max_ratio: float = 0.75,
        ignore_index: int = IGNORE_INDEX,
        tries: int = 10,
    ) -> None:
        self.crop_size = _pair(crop_size, "crop_size")
        self.cat_max_ratio = cat_max_ratio
        self.ignore_index = ignore_index
        self.tries = tries

    def _draw_box(self, height: int, width: int) -> tuple[int, int, int, int]:
        crop_h, crop_w = min(self.crop_size[0], height), min(self.crop_size[1], width)
        top = int(torch.randint(0, height - crop_h + 1, ()).item())
        left = int(torch.randint(0, width - crop_w + 1, ()).item())
        return top, left, crop_h, crop_w

    def _acceptable(self, mask: torch.Tensor) -> bool:
        # One histogram of the crop, ignored pixels included and then zeroed: cheaper than
        # selecting the non-ignored pixels first (this runs up to 11 times per sample).
        counts = torch.bincount(mask.flatten(), minlength=self.ignore_index + 1)
        counts[self.ignore_index] = 0
        valid = int(counts.sum())
        if valid == 0:
            return False
        return int((counts > 0).sum()) > 1 and int(counts.max()) / valid < self.cat_max_ratio

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> Pair:
        height, width = mask.shape[-2:]
        box = self._draw_box(height, width)
        if self.cat_max_ratio < 1.0:
            for _ in range(self.tries):
                if self._acceptable(F.crop(mask, *box)):
                    break
                box = self._draw_box(height, width)
        return F.crop(image, *box), F.crop(mask, *box)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(crop_size={self.crop_size}, cat_max_ratio={self.cat_max_ratio}, "
            f"ignore_index={self.ignore_index}, tries={self.tries})"
        )


class RandomHorizontalFlip:
    """Mirror image and mask left-right with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> Pair:
        if _coin(self.p):
            return F.horizontal_flip_image(image), F.horizontal_flip_mask(mask)
        return image, mask

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p})"


#: layout of the per-sample augmentation vector a training item carries (``TrainTransform``):
#: the photometric parameters (``PhotometricDistortion.draw``), then the crop's size before
#: padding. Brightness 0 and contrast 1 leave an image unchanged exactly; saturation and hue
#: carry an "applied" flag besides their value, because MMSeg converts to HSV and back only
#: when the op is applied, and that round trip alone moves some pixels by one level (and a hue
#: shift of 0 can be drawn).
(AUG_BRIGHTNESS, AUG_CONTRAST, AUG_CONTRAST_FIRST, AUG_SATURATION_ON, AUG_SATURATION, AUG_HUE_ON,
 AUG_HUE, AUG_HEIGHT, AUG_WIDTH) = range(9)
AUG_SIZE = 9


def _range(value: Sequence[float], name: str) -> tuple[float, float]:
    low, high = (float(v) for v in value)
    if not 0 <= low <= high:
        raise ValueError(f"{name} must be a (low, high) pair with 0 <= low <= high, got {tuple(value)!r}")
    return low, high


class PhotometricDistortion:
    """MMSegmentation's ``PhotoMetricDistortion``: the random draws; the colour ops run on the
    device (``shared.data.on_device.photometric``).

    Drawing happens in the DataLoader worker (torch's RNG, seeded per worker like every other
    augmentation); applying happens to the whole batch on the GPU, because on a CPU the colour
    ops cost more than the rest of the sample path together (``python -m
    benchmarks.data_path``; BENCHMARKS.md).

    MMSeg's semantics, on the uint8 image, each op with probability ``p`` (0.5):

    1. brightness: add ``delta ~ U(-brightness_delta, brightness_delta)`` (32 of 255);
    2. contrast, if a fair coin puts it first: multiply by ``alpha ~ U(contrast_range)``;
    3. saturation: multiply OpenCV's uint8 HSV saturation by ``U(saturation_range)``;
    4. hue: add an integer ``~ U{-hue_delta, ..., hue_delta - 1}`` to OpenCV's hue (0..179,
       2 degrees a unit), modulo 180;
    5. contrast, if the coin put it last.

    Each op clips to 0..255 and truncates to uint8 (mmseg's ``convert``: ``astype(np.uint8)``
    after ``np.clip``), so the next op sees integers, as in MMSeg.
    """

    def __init__(
        self,
        brightness_delta: float = 32,
        contrast_range: Sequence[float] = (0.5, 1.5),
        saturation_range: Sequence[float] = (0.5, 1.5),
        hue_delta: int = 18,
        p: float = 0.5,
    ) -> None:
        if not 0 <= brightness_delta <= 255:
            raise ValueError(f"brightness_delta is in uint8 levels, 0..255, got {brightness_delta!r}")
        if isinstance(hue_delta, bool) or not isinstance(hue_delta, int) or not 0 <= hue_delta <= 180:
            raise ValueError(f"hue_delta is an int in OpenCV hue units (0..180, 2 degrees each), got {hue_delta!r}")
        if not 0 <= p <= 1:
            raise ValueError(f"p must be in [0, 1], got {p!r}")
        self.brightness_delta = float(brightness_delta)
        self.contrast_range = _range(contrast_range, "contrast_range")
        self.saturation_range = _range(saturation_range, "saturation_range")
        self.hue_delta = hue_delta
        self.p = p

    def draw(self) -> list[float]:
        """One sample's photometric parameters in AUG_* order (brightness .. hue), identity
        values (brightness 0, factors 1, flags 0) for the ops the coins skipped. The draws
        come in MMSeg's order."""
        brightness = _uniform(-self.brightness_delta, self.brightness_delta) if _coin(self.p) else 0.0
        contrast_first = _coin(0.5)
        contrast = 1.0
        if contrast_first and _coin(self.p):
            contrast = _uniform(*self.contrast_range)
        saturation_on = _coin(self.p)
        saturation = _uniform(*self.saturation_range) if saturation_on else 1.0
        hue_on = _coin(self.p)
        hue = 0.0
        if hue_on and self.hue_delta:  # numpy's randint(-d, d), as MMSeg: -d .. d-1
            hue = float(torch.randint(-self.hue_delta, self.hue_delta, ()).item())
        if not contrast_first and _coin(self.p):
            contrast = _uniform(*self.contrast_range)
        return [brightness, contrast, float(contrast_first), float(saturation_on), saturation,
                float(hue_on), hue]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(brightness_delta={self.brightness_delta}, "
            f"contrast_range={self.contrast_range}, saturation_range={self.saturation_range}, "
            f"hue_delta={self.hue_delta}, p={self.p})"
        )


#: the photometric part of ``aug`` when no op is applied
NO_PHOTOMETRIC = [0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0]


class Normalize:
    """uint8 image -> float32 in [0, 1] -> ImageNet mean/std normalised; mask untouched."""

    def __init__(
        self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
    ) -> None:
        self.mean = list(mean)
        self.std = list(std)

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> Pair:
        image = F.to_dtype_image(image, torch.float32, scale=True)
        return F.normalize_image(image, self.mean, self.std), mask

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mean={self.mean}, std={self.std})"


class PadTo:
    """Pad bottom/right up to ``size`` = (h, w): image with 0 (the mean once normalised), mask
    with ``ignore_index`` so padding is never scored."""

    def __init__(self, size: int | tuple[int, int], ignore_index: int = IGNORE_INDEX) -> None:
        self.size = _pair(size, "size")
        self.ignore_index = ignore_index

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> Pair:
        height, width = image.shape[-2:]
        if mask.shape[-2:] != (height, width):
            raise ValueError(f"PadTo got image {tuple(image.shape)} and mask {tuple(mask.shape)} of different sizes")
        bottom, right = max(0, self.size[0] - height), max(0, self.size[1] - width)
        if bottom == 0 and right == 0:
            return image, mask
        padding = [0, 0, right, bottom]  # left, top, right, bottom
        return (
            F.pad_image(image, padding, fill=0),
            F.pad_mask(mask, padding, fill=self.ignore_index),
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, ignore_index={self.ignore_index})"


class TrainTransform:
    """MMSeg's ADE20K training pipeline, split where the CPU is slow and the GPU is not.

    ``(uint8 image (3,H,W), uint8 mask (H,W)) -> (uint8 image (3,h,w), uint8 mask (h,w),
    float32 aug (AUG_SIZE,))`` with (h, w) the crop size. In the worker: RandomRescale ->
    RandomCropCatMax -> RandomHorizontalFlip -> PadTo (image 0, mask ignore), and the draws of
    PhotometricDistortion; ``aug`` carries those draws and the crop's size before padding. On
    the device (``shared.data.on_device.training_batch``): the colour ops, Normalize, and the
    padding set to 0 after normalisation, as MMSeg's pipeline leaves it.

    Shipping uint8 instead of normalised float32 and int64 also cuts what crosses from the
    workers to the GPU from 5 MiB to 1 MiB per 512x512 sample.
    """

    def __init__(
        self,
        crop_size: int | tuple[int, int] = 512,
        scale: tuple[int, int] = (2048, 512),
        ratio_range: tuple[float, float] = (0.5, 2.0),
        cat_max_ratio: float = 0.75,
        ignore_index: int = IGNORE_INDEX,
        photometric: bool = True,
    ) -> None:
        crop = _pair(crop_size, "crop_size")
        self.transforms: list[PairTransform] = [
            RandomRescale(scale, ratio_range),
            RandomCropCatMax(crop, cat_max_ratio, ignore_index),
            RandomHorizontalFlip(0.5),
            PadTo(crop, ignore_index),
        ]
        self.photometric = PhotometricDistortion() if photometric else None

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        *geometric, pad = self.transforms
        for transform in geometric:
            image, mask = transform(image, mask)
        height, width = mask.shape[-2:]
        colour = self.photometric.draw() if self.photometric else NO_PHOTOMETRIC
        image, mask = pad(image, mask)
        return image, mask, torch.tensor([*colour, height, width], dtype=torch.float32)

    def __repr__(self) -> str:
        inner = "".join(f"\n    {t!r}," for t in self.transforms)
        return f"{type(self).__name__}([{inner}\n], photometric={self.photometric!r})"


#: MMSeg's ADE20K training pipeline (see TrainTransform); ``photometric=False`` draws identity
#: colour parameters (for checks). The name the rest of the project builds it by.
build_train_transform = TrainTransform


class _ValTransform:
    """Resize and normalise the image; keep the mask at the original resolution, since mIoU is
    scored there (predictions are resized back to it)."""

    def __init__(self, scale: tuple[int, int]) -> None:
        self.scale = scale
        self.normalize = Normalize()

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> Pair:
        size = keep_ratio_size(image.shape[-2], image.shape[-1], self.scale)
        image, _ = self.normalize(resize_image(image, size), mask)
        return image, mask

    def __repr__(self) -> str:
        return f"{type(self).__name__}(scale={self.scale})"


def build_val_transform(scale: tuple[int, int] = (2048, 512)) -> _ValTransform:
    """Validation: ``(uint8 image, mask) -> (float image rescaled keep-ratio to scale, mask
    unchanged)``."""
    return _ValTransform(scale)


def padded_side(side: int, multiple: int) -> int:
    """``side`` rounded up to a multiple of ``multiple`` (unchanged when ``multiple`` <= 1):
    the validation shape buckets (``val_pad_multiple``; ``shared.inference``)."""
    if multiple <= 1:
        return side
    return -(-side // multiple) * multiple


def val_collate(
    batch: Sequence[tuple[torch.Tensor, torch.Tensor, int]],
    ignore_index: int = IGNORE_INDEX,
    pad_multiple: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Collate validation items of differing sizes by padding bottom/right.

    Returns ``(images (B,3,h,w) float, masks (B,H,W) int64, sizes (B,4) int64, skipped (B,)
    int64)`` where ``sizes[i] = [h, w, H, W]`` is item i's image and mask size before padding, so
    a caller can crop predictions back before resizing them to the mask.

    ``pad_multiple`` > 1 pads the image batch further, to the next multiple of that many pixels
    on each side (the shape buckets of ``val_pad_multiple``: ``shared.inference``); the masks
    are never padded beyond the batch's largest.
    """
    if not batch:
        raise ValueError("val_collate got an empty batch")
    images, masks, skipped = zip(*batch)
    max_h = padded_side(max(i.shape[-2] for i in images), pad_multiple)
    max_w = padded_side(max(i.shape[-1] for i in images), pad_multiple)
    max_mh = max(m.shape[-2] for m in masks)
    max_mw = max(m.shape[-1] for m in masks)
    image_batch = images[0].new_zeros((len(batch), images[0].shape[0], max_h, max_w))
    mask_batch = torch.full((len(batch), max_mh, max_mw), ignore_index, dtype=torch.int64)
    sizes = torch.empty((len(batch), 4), dtype=torch.int64)
    for k, (image, mask) in enumerate(zip(images, masks)):
        h, w = image.shape[-2:]
        mh, mw = mask.shape[-2:]
        image_batch[k, :, :h, :w] = image
        mask_batch[k, :mh, :mw] = mask
        sizes[k] = torch.tensor([h, w, mh, mw])
    return image_batch, mask_batch, sizes, torch.as_tensor(skipped, dtype=torch.int64)
