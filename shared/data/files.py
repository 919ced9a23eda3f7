"""Reading a data set's files: directories and images, for every loader (segmentation and
classification alike).

Each failure is a ``DataError`` whose message names the path, so a loader can either stop with
it or, with ``skip_bad_samples``, log it and count the sample as skipped. What is read here:

- images, decoded to uint8 RGB with their EXIF orientation applied (as annotation tools and
  image viewers display them); 16-bit greyscale scaled to 8 bits; modes that cannot be turned
  into RGB faithfully refused;
- annotations (label PNGs), single-channel class indices, never scaled and never rotated;
- directories, where a symbolic link loop is named instead of reading as "missing".
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

__all__ = ["DataError", "DecodedImage", "is_dir", "is_sample_file", "read_annotation", "read_image"]


class DataError(ValueError):
    """A problem with the dataset on disk; the message names the file or directory at fault."""


# ----------------------------------------------------------------------------- directories


def _loop_message(path: Path) -> str:
    """"<path>: symbolic link loop (<link> -> <target>)", naming the first link on the way to
    ``path`` that never resolves (``path`` itself, or a directory above it)."""
    culprit = path
    for candidate in (*reversed(path.parents), path):
        try:
            os.stat(candidate)
        except OSError as error:
            if error.errno == errno.ELOOP and os.path.islink(candidate):
                culprit = candidate
                break
    try:
        target = os.readlink(culprit)
    except OSError:  # not a link itself (cannot happen for the culprit found above)
        return f"{path}: symbolic link loop"
    return f"{path}: symbolic link loop ({culprit} -> {target} never reaches a file or directory)"


def _stat_mode(path: Path) -> int | None:
    """st_mode of ``path`` (links followed), None if it does not exist; a symbolic link loop
    raises DataError. ``Path.is_dir`` swallows ELOOP and answers False, which made a looping
    link read as a missing directory."""
    try:
        return os.stat(path).st_mode
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise DataError(_loop_message(Path(path))) from None
        return None


def is_dir(path: Path) -> bool:
    """Whether ``path`` is a directory (links followed).

    Raises:
        DataError: ``path`` or a directory above it is a symbolic link loop; the message says
            "<path>: symbolic link loop (<link> -> <target> ...)".
    """
    mode = _stat_mode(path)
    return mode is not None and stat.S_ISDIR(mode)


def is_sample_file(path: Path) -> bool:
    """Whether a directory entry is a file to list as a sample: a regular file, or a symbolic
    link loop. A looping entry is listed, not dropped, so that loading it fails with the loop
    named (a bad sample, raised or skipped and counted) instead of the sample silently
    vanishing, or its partner being reported as unpaired."""
    try:
        return stat.S_ISREG(_stat_mode(path) or 0)
    except DataError:
        return True


# ----------------------------------------------------------------------------- images

#: modes that ``Image.convert("RGB")`` turns into RGB without losing what the pixels mean:
#: 8-bit palette, grey, bilevel and colour modes (alpha is dropped; CMYK and YCbCr are
#: converted by Pillow's standard formulas).
_RGB_CONVERTIBLE = frozenset({"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX",
                              "CMYK", "YCbCr"})
#: 16-bit greyscale, in each byte order Pillow reads it as (16-bit PNG and TIFF).
_MODES_16 = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_UINT16_MAX = 65535

#: EXIF orientations 5..8 include a quarter turn, so the stored width and height swap.
_ORIENTATION_SWAPS_SIDES = frozenset({5, 6, 7, 8})
#: what each EXIF orientation asks a viewer to do to the stored pixels before showing them
_ORIENTATION_NAMES = {2: "mirror left-right", 3: "turn 180 degrees", 4: "mirror top-bottom",
                      5: "mirror and turn 90 degrees anticlockwise", 6: "turn 90 degrees clockwise",
                      7: "mirror and turn 90 degrees clockwise", 8: "turn 90 degrees anticlockwise"}


@dataclass(frozen=True)
class DecodedImage:
    """An image as the loaders use it."""

    #: uint8 (H, W, 3) RGB, EXIF orientation applied
    pixels: np.ndarray
    #: the EXIF orientation applied (2..8), 1 when the file has none (or one out of range,
    #: which exif_transpose ignores too)
    exif_orientation: int = 1

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) after the EXIF orientation, PIL's order."""
        return self.pixels.shape[1], self.pixels.shape[0]

    def orientation_note(self) -> str:
        """A phrase for size-mismatch messages: what the EXIF orientation did, and the size
        the file has without it; empty when the file has no orientation to apply."""
        if self.exif_orientation == 1:
            return ""
        width, height = self.size
        if self.exif_orientation in _ORIENTATION_SWAPS_SIDES:
            width, height = height, width
        name = _ORIENTATION_NAMES[self.exif_orientation]
        return (f"; the image's EXIF orientation {self.exif_orientation} ({name}) was applied, as "
                f"annotation tools display the image; the pixels stored in the file are "
                f"{width}x{height}")


def _open_decoded(path: Path, what: str) -> Image.Image:
    """Open ``path`` and decode all of its pixels; every failure is a DataError naming it."""
    try:
        with Image.open(path) as handle:
            # Image.open only reads the header; load() decodes the pixels, which is what
            # catches truncated or corrupt files here instead of deep inside a transform.
            # Leaving the block closes the file and keeps the decoded pixels.
            handle.load()
            return handle
    except Image.DecompressionBombError as error:
        # Pillow refuses, at open, any image over twice Image.MAX_IMAGE_PIXELS (and warns over
        # once it); its message carries the pixel count and the limit. Such a file is a bad
        # sample like a corrupt one, not a crash of the whole run.
        raise DataError(f"{path}: {what} is over Pillow's decompression-bomb limit ({error}); "
                        "a damaged or hostile header, or an image too large to train on: shrink "
                        "or remove it") from error
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise DataError(_loop_message(Path(path))) from error
        raise DataError(f"cannot decode {what} {path}: {error} (corrupt or truncated file?)") from error
    except (UnidentifiedImageError, SyntaxError, ValueError) as error:
        raise DataError(f"cannot decode {what} {path}: {error} (corrupt or truncated file?)") from error


def read_image(path: str | Path, keep_grey: bool = False) -> DecodedImage:
    """Decode an image file fully to uint8 RGB, with its EXIF orientation applied.

    With ``keep_grey``, a greyscale image (8-bit, 16-bit, bilevel) stays one channel:
    ``pixels`` is then (H, W, 1) (single-band orbital or medical images, three times smaller).

    16-bit greyscale (PIL modes I;16, I;16B, ..., and 32-bit I holding 0..65535, as Pillow reads
    16-bit PGM) is scaled to 8 bits by the full 16-bit range, keeping the high byte
    (``value >> 8``): that is what Pillow itself does to 16-bit colour PNGs, so a 16-bit grey
    and a 16-bit colour image of one scene give the same 8-bit values. (``convert("RGB")``
    clips every value above 255 instead, turning a 16-bit image into a blank white one.)

    Raises:
        DataError: the file cannot be decoded (corrupt, truncated, not an image), is over
            Pillow's decompression-bomb limit, is a symbolic link loop, or has a mode that
            cannot be converted to 8-bit RGB faithfully (float, 32-bit integers beyond 16
            bits, ...); the message names the file.
    """
    path = Path(path)
    image = _open_decoded(path, "image")
    orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    if orientation not in _ORIENTATION_NAMES:  # 1, or a value exif_transpose leaves alone
        orientation = 1
    try:
        # Rotate/mirror as the EXIF tag says (and drop the tag): annotation tools and viewers
        # show the image that way, so that is the orientation annotations are drawn in.
        ImageOps.exif_transpose(image, in_place=True)
    except (OSError, ValueError, SyntaxError) as error:
        raise DataError(f"cannot apply the EXIF orientation of image {path}: {error}") from error
    mode = image.mode
    if keep_grey and mode in ("1", "L"):
        grey = image if mode == "L" else image.convert("L")  # convert() would copy an L image
        return DecodedImage(np.asarray(grey, dtype=np.uint8)[:, :, None], int(orientation))
    if mode in _RGB_CONVERTIBLE:
        rgb = image if mode == "RGB" else image.convert("RGB")  # convert() copies even from RGB
        pixels = np.array(rgb, dtype=np.uint8)
    elif mode in _MODES_16 or mode == "I":
        values = np.asarray(image)
        if mode == "I" and values.size and (values.min() < 0 or values.max() > _UINT16_MAX):
            raise DataError(
                f"{path}: image of PIL mode 'I' (32-bit integers) holds values "
                f"{int(values.min())}..{int(values.max())}, beyond 16 bits; it cannot be converted "
                "to 8-bit RGB faithfully: save it as 8-bit RGB or 16-bit greyscale")
        grey = (values.astype(np.uint16) >> 8).astype(np.uint8)
        pixels = grey[:, :, None] if keep_grey else np.repeat(grey[:, :, None], 3, axis=2)
    else:
        raise DataError(
            f"{path}: image of PIL mode {mode!r} cannot be converted to 8-bit RGB faithfully; "
            "save it as 8-bit RGB, greyscale or palette (16-bit greyscale PNG is also read)")
    return DecodedImage(pixels, int(orientation))


def read_annotation(path: str | Path) -> np.ndarray:
    """Decode a label PNG to a uint8 (H, W) array of its stored values (class indices).

    Values are never scaled: 8-bit ('L', 'P') annotations are taken as they are, and a 16-bit
    one ('I;16', ... or 'I') is accepted when every value fits in 0..255, since it then holds
    exactly the same class indices (some tools write labels as 16-bit PNGs). No EXIF
    orientation is applied: label masks are written in the orientation the tool displayed,
    without a tag, and rotating one would need the same rotation of its image to mean anything.

    Raises:
        DataError: the file cannot be decoded, is over Pillow's decompression-bomb limit, is a
            symbolic link loop, is not single-channel, or (16-bit) holds a value above 255.
    """
    path = Path(path)
    annotation = _open_decoded(path, "annotation")
    mode = annotation.mode
    if mode in ("L", "P"):
        return np.asarray(annotation, dtype=np.uint8)
    if mode in _MODES_16 or mode == "I":
        values = np.asarray(annotation)
        if values.size and (values.min() < 0 or values.max() > 255):
            raise DataError(
                f"annotation {path} is a 16-bit PNG (PIL mode {mode!r}) holding label value "
                f"{int(values.max() if values.max() > 255 else values.min())}, outside 0..255: labels "
                "are class indices, read as uint8 (at most 254 classes, 255 ignored); they are "
                "never rescaled, so save the annotation with values 0..255")
        return values.astype(np.uint8)
    raise DataError(
        f"annotation {path} has PIL mode {mode!r}; expected a single-channel PNG (mode 'L' or 'P', "
        "or 16-bit greyscale with values up to 255) holding class indices")
