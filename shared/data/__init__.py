"""ADE20K-format data: loading and checking samples, paired transforms, a synthetic generator."""

from shared.data.ade20k import DataError, SegmentationDataset, find_samples
from shared.data.labels import IGNORE_INDEX
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
    "build_dataset",
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


def build_dataset(hp, split: str) -> SegmentationDataset:
    """The data set of ``split`` as a segmentation trial reads it, from its resolved
    hyperparameters (``shared.hparams.COMMON``): the training split with the MMSeg training
    pipeline, the validation split with the keep-ratio rescale. Raises ConfigError when
    ``data_dir`` is not set."""
    from shared.errors import ConfigError

    if not hp["data_dir"]:
        raise ConfigError("hyperparameter 'data_dir' is not set: pass --data-dir locally, "
                          "or set hyperparameters.data_dir (a path inside the task container)")
    if split == "training":
        tf = build_train_transform(hp["crop_size"], tuple(hp["scale"]), tuple(hp["ratio_range"]),
                                   hp["cat_max_ratio"], IGNORE_INDEX)
    else:
        tf = build_val_transform(tuple(hp["scale"]))
    return SegmentationDataset(hp["data_dir"], split, tf, num_classes=hp["num_classes"],
                               skip_bad_samples=hp["skip_bad_samples"])
