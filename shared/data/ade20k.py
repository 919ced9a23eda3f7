"""ADE20K SceneParsing ("ADEChallengeData2016") on disk: finding, checking and loading samples.

Layout::

    <root>/images/{training,validation}/*.jpg
    <root>/annotations/{training,validation}/*.png      (paired with the image by file stem)

Annotations are uint8 PNGs where 0 is "other" (not scored) and 1..num_classes are the classes.
The dataset returns labels already shifted to 0..num_classes-1 with 255 as the ignore index
(MMSegmentation's ``reduce_zero_label``), so transforms and losses only ever see 255 as "ignore".
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shared.data.files import DataError, is_dir, is_sample_file, read_annotation, read_image
from shared.data.labels import IGNORE_INDEX
from shared.data.sampling import sample_rng, split_index
from shared.data.skips import BadSamples, log_problems, warn_bad

__all__ = ["IGNORE_INDEX", "DataError", "SegmentationDataset", "find_samples"]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})
ANNOTATION_SUFFIXES = frozenset({".png"})
# How many offending file names an error message lists before summarising with a count.
_MAX_NAMES_IN_MESSAGE = 5

logger = logging.getLogger(__name__)

Transform = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def _name_some(paths: list[Path]) -> str:
    shown = ", ".join(str(p) for p in paths[:_MAX_NAMES_IN_MESSAGE])
    more = len(paths) - _MAX_NAMES_IN_MESSAGE
    return shown + (f" (and {more} more)" if more > 0 else "")


def _suffix_list(suffixes: frozenset[str]) -> str:
    """".jpg, .jpeg or .png": the suffixes in a message (ADE20K's order first)."""
    order = [".jpg", ".jpeg", ".png", ".tif", ".tiff"]
    names = sorted(suffixes, key=lambda x: (order.index(x) if x in order else len(order), x))
    return ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else names[0]


def _files_by_stem(directory: Path, suffixes: frozenset[str]) -> tuple[dict[str, Path], list[Path]]:
    """Map stem -> file for the files in ``directory`` with one of ``suffixes``.

    Returns the map and the files whose stem is taken twice (e.g. ``a.jpg`` and ``a.png``):
    those cannot be paired unambiguously.
    """
    by_stem: dict[str, Path] = {}
    duplicates: list[Path] = []
    for path in sorted(directory.iterdir()):
        if path.suffix.lower() not in suffixes or not is_sample_file(path):
            continue
        if path.stem in by_stem:
            duplicates.append(path)
        else:
            by_stem[path.stem] = path
    return by_stem, duplicates


def find_samples(
    root: str | Path, split: str, skip_bad_samples: bool = False, *,
    annotations: str = "annotations", image_suffixes: frozenset[str] = IMAGE_SUFFIXES,
    root_name: str = "the ADEChallengeData2016 folder",
) -> tuple[list[tuple[Path, Path]], list[str]]:
    """List the (image, annotation) pairs of one split, sorted by image path.

    Args:
        root: the dataset root, holding ``images/`` and ``annotations/``.
        split: the sub-directory name, ``"training"`` or ``"validation"`` for ADE20K.
        skip_bad_samples: skip files that cannot be paired instead of raising.
        annotations, image_suffixes, root_name: the annotation directory's name, the image
            suffixes and what the root is called in messages, for other layouts of the same
            kind (``shared.data.tiles``: ``masks/``, TIFF images).

    Returns:
        The pairs, and one message per problem that was skipped (empty unless
        ``skip_bad_samples``).

    Raises:
        DataError: the root or a split directory is missing, the split holds no image, or
            (unless ``skip_bad_samples``) some image or annotation has no partner.
    """
    root = Path(root)
    if not is_dir(root):  # a symbolic link loop raises, named, rather than reading as missing
        raise DataError(
            f"dataset root {root} does not exist or is not a directory; expected "
            f"{root_name} holding images/ and {annotations}/"
        )
    image_dir = root / "images" / split
    annotation_dir = root / annotations / split
    for directory, kind in ((image_dir, "images"), (annotation_dir, annotations)):
        if not is_dir(directory):
            raise DataError(
                f"missing {kind} directory {directory} for split '{split}'; expected the layout "
                f"<root>/images/{split}/*{'.jpg' if '.jpg' in image_suffixes else min(image_suffixes)} "
                f"and <root>/{annotations}/{split}/*.png"
            )

    images, duplicate_images = _files_by_stem(image_dir, image_suffixes)
    annotations, duplicate_annotations = _files_by_stem(annotation_dir, ANNOTATION_SUFFIXES)
    if not images and not duplicate_images:
        raise DataError(
            f"no images ({_suffix_list(image_suffixes)}) in {image_dir}; is the dataset fully extracted?"
        )

    problems: list[tuple[str, list[Path]]] = []
    duplicates = duplicate_images + duplicate_annotations
    if duplicates:
        problems.append(("files sharing a stem with another file (ambiguous pairing)", duplicates))
        # Neither file of an ambiguous stem can be trusted, so both sides of it go.
        for path in duplicates:
            images.pop(path.stem, None)
            annotations.pop(path.stem, None)
    lonely_images = [images[s] for s in sorted(images.keys() - annotations.keys())]
    lonely_annotations = [annotations[s] for s in sorted(annotations.keys() - images.keys())]
    if lonely_images:
        problems.append(
            (f"image(s) without an annotation (expected <stem>.png in {annotation_dir})", lonely_images)
        )
    if lonely_annotations:
        problems.append((f"annotation(s) without an image in {image_dir}", lonely_annotations))

    if problems and not skip_bad_samples:
        details = "; ".join(f"{len(paths)} {what}: {_name_some(paths)}" for what, paths in problems)
        raise DataError(
            f"cannot pair images and annotations of split '{split}' under {root}: {details}. "
            "Fix the files, or pass skip_bad_samples=True to skip them."
        )
    skipped = [f"{path}: {what}" for what, paths in problems for path in paths]

    pairs = sorted((images[s], annotations[s]) for s in images.keys() & annotations.keys())
    if not pairs:
        raise DataError(
            f"no usable (image, annotation) pair in {image_dir} and {annotation_dir} "
            f"({len(skipped)} file(s) skipped)"
        )
    return pairs, skipped


def _reduce_zero_label() -> np.ndarray:
    """uint8 lookup table of MMSeg's ``reduce_zero_label``: 0 ("other") -> ignored, class k ->
    k - 1, the ignore value stays 255 (rather than becoming 254). One table lookup maps a
    whole annotation without widening it."""
    table = (np.arange(256) - 1).astype(np.uint8)  # 0 wraps to 255
    table[IGNORE_INDEX] = IGNORE_INDEX
    return table


_REDUCE_ZERO_LABEL = _reduce_zero_label()


class SegmentationDataset(torch.utils.data.Dataset):
    """ADE20K-format segmentation samples, checked as they are loaded.

    Each item is the transform's output for the uint8 (3, H, W) image and the uint8 (H, W)
    label (classes 0..num_classes-1, 255 ignored), followed by the number of bad samples
    skipped to produce it (always 0 unless ``skip_bad_samples``).
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        transform: Transform | None,
        num_classes: int = 150,
        skip_bad_samples: bool = False,
    ) -> None:
        if not 1 <= num_classes <= 254:
            raise ValueError(f"num_classes must be in 1..254 (255 is the ignore index), got {num_classes}")
        self.root = Path(root)
        self.split = split
        self.transform = transform
        self.num_classes = num_classes
        self.skip_bad_samples = skip_bad_samples
        self.samples, self.skipped_at_scan = find_samples(self.root, split, skip_bad_samples)
        log_problems(logger, self.skipped_at_scan)
        #: the samples found bad when loaded, each once whichever worker met it (shared memory)
        self.bad = BadSamples(len(self.samples))

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Read and check sample ``index``: uint8 (3, H, W) image (stored channels-last), uint8
        (H, W) label (mapped: classes 0..num_classes-1, 255 ignored).

        The image is read by ``shared.data.files.read_image`` (EXIF orientation applied,
        16-bit greyscale scaled to 8 bits), the annotation by ``read_annotation`` (values
        as stored).

        Raises:
            DataError: the image or annotation cannot be decoded (or is over Pillow's
                decompression-bomb limit, or a symbolic link loop), their sizes differ (the
                message mentions the image's EXIF orientation when it had one), the image's
                mode has no faithful 8-bit RGB form, the annotation is not single-channel,
                or holds a value above ``num_classes``.
        """
        image_path, annotation_path = self.samples[index]
        image = read_image(image_path)
        raw = read_annotation(annotation_path)
        if image.size != (raw.shape[1], raw.shape[0]):
            raise DataError(
                f"size mismatch: image {image_path} is {image.size[0]}x{image.size[1]} (WxH) but "
                f"annotation {annotation_path} is {raw.shape[1]}x{raw.shape[0]}"
                f"{image.orientation_note()}"
            )
        # max() first: one pass over the common, clean annotation
        bad = (raw > self.num_classes) & (raw != IGNORE_INDEX) if raw.max() > self.num_classes else None
        if bad is not None and bad.any():
            value = int(raw[bad].max())
            raise DataError(
                f"annotation {annotation_path} holds label value {value}, above num_classes="
                f"{self.num_classes} (valid: 0..{self.num_classes} and {IGNORE_INDEX}); "
                "is num_classes wrong for this dataset?"
            )
        mask = torch.from_numpy(_REDUCE_ZERO_LABEL[raw])
        # Kept in PIL's row-major RGB layout and viewed as (3, H, W): torchvision's uint8
        # resize runs 2-3 times faster on this channels-last layout than on planar memory.
        pixels = torch.from_numpy(image.pixels).permute(2, 0, 1)
        return pixels, mask

    def __getitem__(self, index: int | tuple[int, int]) -> tuple[Any, Any, int]:
        # (index, seed) from shared.data.sampling.SeededSampler: the augmentation is drawn
        # under the sample's own seed, whichever worker loads it
        index, seed = split_index(index)
        with sample_rng(seed):
            return self._item(index)

    def _item(self, index: int) -> tuple[Any, Any, int]:
        if not self.skip_bad_samples:
            image, mask = self.load(index)
            return (*self._apply(image, mask), 0)
        first_error: DataError | None = None
        for skipped in range(len(self.samples)):
            current = (index + skipped) % len(self.samples)
            try:
                image, mask = self.load(current)
            except DataError as error:
                first_error = first_error or error
                warn_bad(logger, self.bad, current, str(error))
                continue
            return (*self._apply(image, mask), skipped)
        raise DataError(
            f"all {len(self.samples)} samples of split '{self.split}' under {self.root} are bad; "
            f"first problem: {first_error}"
        )

    def _apply(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[Any, Any]:
        if self.transform is None:
            return image, mask
        return self.transform(image, mask)
