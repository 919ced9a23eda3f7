"""Image classification data in the ImageFolder layout: finding, checking, splitting, loading.

Layout::

    <root>/train/<class name>/*.jpg|png|...     (one directory per class)
    <root>/val/<class name>/*.jpg|png|...       (optional: without it, a seeded, stratified
                                                 fraction of train/ is held out)

Class indices are the class directory names of ``train/`` in sorted order (torchvision's
``ImageFolder`` convention), so a model trained here maps indices to the same names there.

The scanning is written here rather than taken from ``torchvision.datasets.ImageFolder``
because every bad-input path must name the file or directory at fault (an empty class
directory, a validation class unknown to training, a corrupt image), and bad samples must be
skippable and counted, which ImageFolder neither reports nor allows.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torchvision.transforms import v2

from shared.data.files import DataError, is_dir, is_sample_file, read_image
from shared.data.sampling import sample_rng, split_index
from shared.data.skips import BadSamples, warn_bad

__all__ = [
    "IMAGE_SUFFIXES",
    "DataError",
    "ImageFolderDataset",
    "Splits",
    "build_eval_transform",
    "build_train_transform",
    "find_class_samples",
    "load_image",
    "load_splits",
    "stratified_split",
]

logger = logging.getLogger(__name__)

#: torchvision's IMG_EXTENSIONS; compared lower-case, so ImageNet's ``.JPEG`` counts.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp"})
TRAIN_DIR, VAL_DIR = "train", "val"
_MAX_NAMES_IN_MESSAGE = 5

Sample = Tuple[Path, int]


def _name_some(items: Sequence[Any]) -> str:
    shown = ", ".join(str(p) for p in items[:_MAX_NAMES_IN_MESSAGE])
    more = len(items) - _MAX_NAMES_IN_MESSAGE
    return shown + (f" (and {more} more)" if more > 0 else "")


def _class_dirs(directory: Path) -> List[Path]:
    # Hidden directories (.ipynb_checkpoints, .git) are tool litter, not classes.
    # is_dir names a looping link (DataError) where Path.is_dir would drop the class silently.
    return sorted(p for p in directory.iterdir() if not p.name.startswith(".") and is_dir(p))


def _images_in(directory: Path) -> List[Path]:
    return sorted(p for p in directory.iterdir()
                  if not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
                  and is_sample_file(p))


def find_class_samples(split_dir: str | Path, classes: Optional[Sequence[str]] = None,
                       skip_bad_samples: bool = False) -> Tuple[List[str], List[Sample], List[str]]:
    """List the images of one split directory (``<root>/train`` or ``<root>/val``).

    Args:
        split_dir: a directory holding one sub-directory per class.
        classes: the class names whose indices the labels use (those of ``train/``); None
            takes them from ``split_dir`` itself. A class directory not in ``classes`` is an
            error; a class of ``classes`` with no directory here is allowed (a validation set
            may lack a class).
        skip_bad_samples: an empty class directory is logged and skipped instead of raising.

    Returns:
        The class names, the ``(path, class index)`` samples sorted by class then path, and one
        message per problem skipped.

    Raises:
        DataError: no class directory, a class directory unknown to ``classes``, or (unless
            ``skip_bad_samples``) a class directory without any image file.
    """
    split_dir = Path(split_dir)
    dirs = _class_dirs(split_dir)
    if not dirs:
        raise DataError(f"no class directories in {split_dir}; expected one sub-directory per class "
                        f"holding its images ({split_dir}/<class name>/*.jpg)")
    names = [d.name for d in dirs]
    if classes is None:
        classes = names
    else:
        unknown = [d for d in dirs if d.name not in classes]
        if unknown:
            raise DataError(f"class directories {_name_some(unknown)} have no counterpart in the "
                            f"training classes ({_name_some(list(classes))}); validation classes must "
                            f"be a subset of train/'s class directories")
    index = {name: i for i, name in enumerate(classes)}
    samples: List[Sample] = []
    empty: List[Path] = []
    for d in dirs:
        files = _images_in(d)
        if not files:
            empty.append(d)
        samples.extend((f, index[d.name]) for f in files)
    problems: List[str] = []
    if empty:
        what = f"class directories without any image file ({', '.join(sorted(IMAGE_SUFFIXES))})"
        if not skip_bad_samples:
            raise DataError(f"{len(empty)} {what}: {_name_some(empty)}. Add images or remove the "
                            f"directories, or set skip_bad_samples: true to train without them")
        problems = [f"{d}: empty class directory (the class keeps its index, with no sample)"
                    for d in empty]
    if not samples:
        raise DataError(f"no image file in any class directory of {split_dir}")
    return list(classes), samples, problems


def stratified_split(samples: Sequence[Sample], val_fraction: float, seed: int
                     ) -> Tuple[List[Sample], List[Sample]]:
    """Hold out ``val_fraction`` of each class's samples, chosen by a generator seeded with ``seed``.

    Per class, ``floor(n * val_fraction + 0.5)`` samples go to validation, but never the last
    one: every class with an image keeps at least one for training. The result depends only
    on the sorted sample list and the seed, so every rank and every trial of a search holds out
    the same images.
    """
    by_class: Dict[int, List[Sample]] = {}
    for s in sorted(samples):
        by_class.setdefault(s[1], []).append(s)
    rng = np.random.default_rng(seed)
    train: List[Sample] = []
    val: List[Sample] = []
    for label in sorted(by_class):
        items = by_class[label]
        n_val = min(int(math.floor(len(items) * val_fraction + 0.5)), len(items) - 1)
        order = rng.permutation(len(items))
        val.extend(items[i] for i in sorted(order[:n_val]))
        train.extend(items[i] for i in sorted(order[n_val:]))
    return train, val


@dataclass
class Splits:
    """The samples of a data set, ready for ``ImageFolderDataset``."""

    classes: List[str]
    train: List[Sample]
    val: List[Sample]
    #: ``"val/"`` or ``"<fraction> of train/ (seed <seed>)"``, for logs and docs
    val_source: str
    skipped: List[str] = field(default_factory=list)


def load_splits(root: str | Path, num_classes: int, val_fraction: float = 0.1, seed: int = 0,
                skip_bad_samples: bool = False) -> Splits:
    """Find the training and validation samples under ``root`` and check them against ``num_classes``.

    Raises:
        DataError: ``root`` or ``root/train`` missing, a class count other than
            ``num_classes``, no ``val/`` and ``val_fraction`` 0, a split that holds out nothing,
            and the problems listed in ``find_class_samples``; each message names the path.
    """
    root = Path(root)
    layout = (f"expected {root}/{TRAIN_DIR}/<class name>/*.jpg (one directory per class) and "
              f"optionally {root}/{VAL_DIR}/<class name>/*.jpg")
    if not is_dir(root):  # a symbolic link loop raises, named, rather than reading as missing
        raise DataError(f"dataset root {root} does not exist or is not a directory; {layout}")
    train_dir = root / TRAIN_DIR
    if not is_dir(train_dir):
        raise DataError(f"missing training directory {train_dir}; {layout}")
    classes, train, skipped = find_class_samples(train_dir, None, skip_bad_samples)
    if len(classes) != num_classes:
        raise DataError(f"{train_dir} holds {len(classes)} class directories ({_name_some(classes)}) "
                        f"but num_classes is {num_classes}; set num_classes: {len(classes)}")
    val_dir = root / VAL_DIR
    if is_dir(val_dir):
        _, val, val_skipped = find_class_samples(val_dir, classes, skip_bad_samples)
        return Splits(classes, train, val, f"{VAL_DIR}/", skipped + val_skipped)
    if val_fraction <= 0:
        raise DataError(f"no validation directory {val_dir} and val_fraction is {val_fraction}; "
                        f"add {val_dir}/<class name>/*.jpg or set val_fraction > 0 to hold out part "
                        f"of {train_dir}")
    train, val = stratified_split(train, val_fraction, seed)
    if not val:
        raise DataError(f"val_fraction={val_fraction} holds out no image of {train_dir} (classes of "
                        f"{min(_class_sizes(train))}..{max(_class_sizes(train))} images); raise it "
                        f"or add {val_dir}")
    return Splits(classes, train, val, f"{val_fraction:g} of {TRAIN_DIR}/ (seed {seed})", skipped)


def _class_sizes(samples: Sequence[Sample]) -> List[int]:
    counts: Dict[int, int] = {}
    for _, label in samples:
        counts[label] = counts.get(label, 0) + 1
    return list(counts.values())


def load_image(path: str | Path) -> torch.Tensor:
    """Decode an image file fully to a uint8 ``(3, H, W)`` RGB tensor, as the segmentation
    loader does (``shared.data.files.read_image``: EXIF orientation applied, 16-bit greyscale
    scaled to 8 bits).

    Raises:
        DataError: the file cannot be decoded (corrupt, truncated, not an image), is over
            Pillow's decompression-bomb limit, is a symbolic link loop, or has a mode with no
            faithful 8-bit RGB form; the message names it.
    """
    # Decoded in full here, so a truncated file fails naming the file rather than inside a
    # transform or a worker; viewed channels-last as (3, H, W), like pil_to_tensor does.
    return torch.from_numpy(read_image(path).pixels).permute(2, 0, 1)


Transform = Callable[[torch.Tensor], torch.Tensor]


class ImageFolderDataset(torch.utils.data.Dataset):
    """Classification samples, decoded and checked as they are loaded.

    Each item is ``(image, label, skipped)``: the transform's output for the uint8 ``(3, H, W)``
    image, the class index, and the number of bad files skipped to produce it (always 0 unless
    ``skip_bad_samples``; a bad file is replaced by the next good sample and counted).
    """

    def __init__(self, samples: Sequence[Sample], transform: Optional[Transform] = None,
                 skip_bad_samples: bool = False, name: str = "dataset") -> None:
        if not samples:
            raise DataError(f"{name}: no sample")
        self.samples = list(samples)
        self.transform = transform
        self.skip_bad_samples = skip_bad_samples
        self.name = name
        #: the samples found bad when loaded, each once whichever worker met it (shared memory)
        self.bad = BadSamples(len(self.samples))

    def __len__(self) -> int:
        return len(self.samples)

    def _item(self, index: int) -> Tuple[Any, int]:
        path, label = self.samples[index]
        image = load_image(path)
        return (self.transform(image) if self.transform is not None else image), label

    def __getitem__(self, index: Any) -> Tuple[Any, int, int]:
        # (index, seed) from shared.data.sampling.SeededSampler: the augmentation is drawn
        # under the sample's own seed, whichever worker loads it
        index, seed = split_index(index)
        with sample_rng(seed):
            return self._get(index)

    def _get(self, index: int) -> Tuple[Any, int, int]:
        if not self.skip_bad_samples:
            return (*self._item(index), 0)
        first_error: Optional[DataError] = None
        for skipped in range(len(self.samples)):
            current = (index + skipped) % len(self.samples)
            try:
                return (*self._item(current), skipped)
            except DataError as error:
                first_error = first_error or error
                warn_bad(logger, self.bad, current, f"{self.name}: {error}")
        raise DataError(f"all {len(self.samples)} samples of {self.name} are bad; first problem: "
                        f"{first_error}")


# ----------------------------------------------------------------------------- transforms
_INTERPOLATION = {"bilinear": v2.InterpolationMode.BILINEAR, "bicubic": v2.InterpolationMode.BICUBIC,
                  "nearest": v2.InterpolationMode.NEAREST}


def _interpolation(name: str) -> v2.InterpolationMode:
    try:
        return _INTERPOLATION[name]
    except KeyError:
        raise ValueError(f"interpolation {name!r} is not one of {', '.join(_INTERPOLATION)}") from None


def _finish(mean: Sequence[float], std: Sequence[float]) -> List[Any]:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))]


def build_train_transform(image_size: int, mean: Sequence[float], std: Sequence[float],
                          augment: bool = True, interpolation: str = "bilinear",
                          crop_pct: float = 0.875, crop_mode: str = "center") -> Transform:
    """Training transform on a uint8 ``(3, H, W)`` tensor.

    ``augment``: random resized crop (scale 0.08-1, aspect 3/4-4/3) to ``image_size`` and a
    horizontal flip, the ImageNet recipe. Off: the evaluation transform (resize, centre crop),
    so that a run without augmentation trains on exactly what it is scored on.
    """
    if not augment:
        return build_eval_transform(image_size, mean, std, interpolation, crop_pct, crop_mode)
    return v2.Compose([
        v2.RandomResizedCrop(image_size, interpolation=_interpolation(interpolation), antialias=True),
        v2.RandomHorizontalFlip(),
        *_finish(mean, std),
    ])


def build_eval_transform(image_size: int, mean: Sequence[float], std: Sequence[float],
                         interpolation: str = "bilinear", crop_pct: float = 0.875,
                         crop_mode: str = "center") -> Transform:
    """Resize then centre-crop ``image_size``: ``crop_mode`` "center" resizes the short side to
    ``image_size / crop_pct`` (224 from 256 at the usual 0.875), keeping the aspect ratio;
    "squash" resizes both sides to it (timm's mode for some TF-ported weights)."""
    if not 0 < crop_pct <= 1:
        raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
    if crop_mode not in ("center", "squash"):
        raise ValueError(f"crop_mode {crop_mode!r} is not one of 'center', 'squash'")
    side = int(math.floor(image_size / crop_pct))
    return v2.Compose([
        v2.Resize(side if crop_mode == "center" else [side, side],
                  interpolation=_interpolation(interpolation), antialias=True),
        v2.CenterCrop(image_size),
        *_finish(mean, std),
    ])
