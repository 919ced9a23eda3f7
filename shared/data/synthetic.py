"""Synthetic segmentation data in the ADE20K ("ADEChallengeData2016") layout.

For demos and tests without the 1 GB download: the files go through exactly the loader and
transforms the real dataset uses. The images are learnable from their pixels: every class has
its own base colour and its own stripe texture (period and orientation), drawn as random
rectangles, ellipses and polygons over a random background class, with mild noise and JPEG
compression. Small blobs of label 0 ("other", ignored in training and scoring) have a random
look, as ADE20K's unlabelled pixels do.

    python -m shared.data.synthetic --out /tmp/ade_synth --num-train 200 --num-val 40
"""

from __future__ import annotations

import argparse
import colorsys
import math
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["ClassAppearance", "generate", "main"]

SPLITS = ("training", "validation")
_FILE_PREFIX = {"training": "ADE_train", "validation": "ADE_val"}
JPEG_QUALITY = 90
NOISE_STD = 0.03  # of the 0..1 range: mild, so colour and texture stay readable
STRIPE_AMPLITUDE = 0.25  # relative brightness swing of the class texture
# The class appearance is fixed by this constant, not by --seed: data sets generated with
# different seeds then describe the same classes, so one can train on one and score on another.
_APPEARANCE_SEED = 20160


class ClassAppearance:
    """Per-class base colour (RGB in 0..1), stripe period (px), stripe orientation (rad).

    Index 0 ("other") is unused: its pixels get a random look per blob.
    """

    def __init__(self, num_classes: int) -> None:
        rng = np.random.default_rng(_APPEARANCE_SEED)
        golden = (math.sqrt(5) - 1) / 2
        colours = np.zeros((num_classes + 1, 3))
        for k in range(1, num_classes + 1):
            # Golden-ratio hue steps keep neighbouring class indices far apart in hue; cycling
            # saturation and value separates the classes that land on similar hues.
            hue = ((k - 1) * golden) % 1.0
            saturation = (0.9, 0.55, 0.75)[k % 3]
            value = (0.85, 0.6, 0.45, 0.7)[k % 4]
            colours[k] = colorsys.hsv_to_rgb(hue, saturation, value)
        self.colours = colours
        self.periods = rng.uniform(3.0, 12.0, num_classes + 1)
        self.angles = (np.arange(num_classes + 1) * math.radians(47.0)) % math.pi


def _random_shape(draw: ImageDraw.ImageDraw, rng: np.random.Generator, height: int, width: int,
                  label: int, rel_size: tuple[float, float]) -> None:
    shape_h = max(2, int(height * rng.uniform(*rel_size)))
    shape_w = max(2, int(width * rng.uniform(*rel_size)))
    top = int(rng.integers(-shape_h // 3, height - shape_h // 2))
    left = int(rng.integers(-shape_w // 3, width - shape_w // 2))
    box = (left, top, left + shape_w, top + shape_h)
    kind = rng.integers(3)
    if kind == 0:
        draw.rectangle(box, fill=label)
    elif kind == 1:
        draw.ellipse(box, fill=label)
    else:
        # A star-shaped polygon around the box centre: vertices at sorted angles never cross.
        n = int(rng.integers(3, 8))
        angles = np.sort(rng.uniform(0, 2 * math.pi, n))
        radii = rng.uniform(0.5, 1.0, n)
        cy, cx = top + shape_h / 2, left + shape_w / 2
        points = [(cx + r * shape_w / 2 * math.cos(a), cy + r * shape_h / 2 * math.sin(a))
                  for a, r in zip(angles, radii)]
        draw.polygon(points, fill=label)


def _render(label: np.ndarray, look: ClassAppearance, rng: np.random.Generator) -> np.ndarray:
    """Paint a uint8 (H, W, 3) image from a label map."""
    height, width = label.shape
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    angle = look.angles[label]
    # A random phase per class and image, so the texture is recognised by its period and
    # orientation rather than by a fixed position.
    phase = rng.uniform(0, 2 * math.pi, len(look.periods))[label]
    stripes = np.sin(2 * math.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / look.periods[label] + phase)
    image = look.colours[label] * (1.0 + STRIPE_AMPLITUDE * stripes)[..., None]
    other = label == 0
    if other.any():
        image[other] = rng.uniform(0.0, 1.0, 3) * rng.uniform(0.6, 1.4, (int(other.sum()), 1))
    image += rng.normal(0.0, NOISE_STD, image.shape)
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _sample(rng: np.random.Generator, look: ClassAppearance, num_classes: int,
            min_size: int, max_size: int) -> tuple[np.ndarray, np.ndarray]:
    height = int(rng.integers(min_size, max_size + 1))
    width = int(rng.integers(min_size, max_size + 1))
    canvas = Image.new("L", (width, height), int(rng.integers(1, num_classes + 1)))
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(2, 7))):
        _random_shape(draw, rng, height, width, int(rng.integers(1, num_classes + 1)), (0.2, 0.7))
    for _ in range(int(rng.integers(0, 3))):
        _random_shape(draw, rng, height, width, 0, (0.08, 0.18))
    label = np.asarray(canvas, dtype=np.uint8)
    return _render(label, look, rng), label


def _check(num_train: int, num_val: int, num_classes: int, min_size: int, max_size: int) -> None:
    if not 1 <= num_classes <= 254:
        raise ValueError(f"num_classes must be between 1 and 254 (0 is 'other', 255 is ignore), got {num_classes}")
    if min_size < 16:
        raise ValueError(f"min_size must be >= 16 pixels, got {min_size}")
    if min_size > max_size:
        raise ValueError(f"min_size ({min_size}) must be <= max_size ({max_size})")
    for name, count in (("num_train", num_train), ("num_val", num_val)):
        if count < 1:
            raise ValueError(f"{name} must be >= 1, got {count}")


def generate(out: str | Path, num_train: int = 200, num_val: int = 40, num_classes: int = 8,
             min_size: int = 48, max_size: int = 96, seed: int = 0) -> Path:
    """Write a synthetic ADEChallengeData2016-style data set under ``out`` and return ``out``.

    Image sides are drawn uniformly in ``[min_size, max_size]`` independently, so aspect ratios
    vary. The same arguments always give byte-identical files.

    Raises:
        ValueError: an argument is out of range, or a split directory under ``out`` already
            holds files (stale files would silently join the new data set).
    """
    _check(num_train, num_val, num_classes, min_size, max_size)
    out = Path(out)
    for split in SPLITS:
        for kind in ("images", "annotations"):
            directory = out / kind / split
            if directory.is_dir() and any(directory.iterdir()):
                raise ValueError(
                    f"{directory} already holds files; generate into an empty or new directory "
                    "(or delete it first) so old samples do not mix with new ones"
                )
    look = ClassAppearance(num_classes)
    for split_index, (split, count) in enumerate(zip(SPLITS, (num_train, num_val))):
        # One stream per split: the validation set does not change when num_train does.
        rng = np.random.default_rng((seed, split_index))
        image_dir = out / "images" / split
        annotation_dir = out / "annotations" / split
        image_dir.mkdir(parents=True, exist_ok=True)
        annotation_dir.mkdir(parents=True, exist_ok=True)
        for i in range(1, count + 1):
            image, label = _sample(rng, look, num_classes, min_size, max_size)
            stem = f"{_FILE_PREFIX[split]}_{i:08d}"
            Image.fromarray(image, "RGB").save(image_dir / f"{stem}.jpg", quality=JPEG_QUALITY)
            Image.fromarray(label, "L").save(annotation_dir / f"{stem}.png")
    return out


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point (``python -m shared.data.synthetic --out DIR ...``)."""
    parser = argparse.ArgumentParser(
        prog="python -m shared.data.synthetic",
        description="Write a small learnable data set in the ADE20K (ADEChallengeData2016) layout.",
    )
    parser.add_argument("--out", type=Path, required=True, help="output root (created)")
    parser.add_argument("--num-train", type=int, default=200)
    parser.add_argument("--num-val", type=int, default=40)
    parser.add_argument("--num-classes", type=int, default=8, help="classes 1..N in the labels (1-254)")
    parser.add_argument("--min-size", type=int, default=48, help="smallest image side, px (>= 16)")
    parser.add_argument("--max-size", type=int, default=96, help="largest image side, px")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        _check(args.num_train, args.num_val, args.num_classes, args.min_size, args.max_size)
    except ValueError as error:
        parser.error(str(error))
    start = time.perf_counter()
    try:
        out = generate(args.out, args.num_train, args.num_val, args.num_classes,
                       args.min_size, args.max_size, args.seed)
    except ValueError as error:
        parser.error(str(error))
    print(
        f"wrote {args.num_train} training + {args.num_val} validation samples, "
        f"{args.num_classes} classes, {args.min_size}-{args.max_size} px, seed {args.seed}, "
        f"to {out} in {time.perf_counter() - start:.1f} s"
    )


if __name__ == "__main__":
    main()
