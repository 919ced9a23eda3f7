"""ADE20K-format data: loading and checking samples, paired transforms, a synthetic generator."""

from shared.data.ade20k import IGNORE_INDEX, DataError, SegmentationDataset, find_samples
from shared.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Compose,
    Normalize,
    PadTo,
    PhotometricDistortion,
    RandomCropCatMax,
    RandomHorizontalFlip,
    RandomRescale,
    Rescale,
    build_train_transform,
    build_val_transform,
    keep_ratio_size,
    val_collate,
)

__all__ = [
    "IGNORE_INDEX",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Compose",
    "DataError",
    "Normalize",
    "PadTo",
    "PhotometricDistortion",
    "RandomCropCatMax",
    "RandomHorizontalFlip",
    "RandomRescale",
    "Rescale",
    "SegmentationDataset",
    "build_train_transform",
    "build_val_transform",
    "find_samples",
    "generate",
    "keep_ratio_size",
    "val_collate",
]


def __getattr__(name: str):
    # Imported on first use rather than here, so `python -m shared.data.synthetic` does not find
    # the module already imported by its package (runpy warns about that).
    if name == "generate":
        from shared.data.synthetic import generate

        return generate
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
