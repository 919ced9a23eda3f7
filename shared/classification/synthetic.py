"""A synthetic ImageFolder classification set, for demos and tests without a download.

    python -m shared.classification.synthetic --out /tmp/cls_synth --num-classes 3 --per-class 60 --size 64

Writes ``<out>/train/class_XX/*.jpg`` and, unless ``--val-per-class 0``, ``<out>/val/...``:
the layout ``shared.classification.data`` reads. Each class is one object drawn on a noisy
background, told apart by three cues at once: its shape (disc, square, triangle, star,
ring, cross, cycling), its hue (golden-ratio steps around the colour wheel) and its stripe
texture (period and angle); position, size, rotation, brightness and background vary per
image, so a network must find the object rather than memorise pixels. JPEG compression as
in real photographs.
"""
from __future__ import annotations

import argparse
import colorsys
import math
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["SHAPES", "generate", "main"]

SHAPES = ("disc", "square", "triangle", "star", "ring", "cross")
JPEG_QUALITY = 90
_GOLDEN = (math.sqrt(5) - 1) / 2


def _class_look(k: int) -> tuple[str, np.ndarray, float, float]:
    """Shape, RGB colour (0..1), stripe period (px at 64 px) and stripe angle of class ``k``."""
    hue = (k * _GOLDEN) % 1.0
    colour = np.array(colorsys.hsv_to_rgb(hue, (0.9, 0.65)[k % 2], (0.95, 0.75, 0.85)[k % 3]))
    return SHAPES[k % len(SHAPES)], colour, 4.0 + 3.0 * (k % 4), math.radians(37.0 * k)


def _shape_mask(shape: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A boolean (size, size) mask of one object at a random place, scale and rotation."""
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    radius = size * rng.uniform(0.22, 0.38)
    cx, cy = (size / 2 + rng.uniform(-0.15, 0.15) * size for _ in range(2))
    turn = rng.uniform(0, 2 * math.pi)

    def polygon(n: int, radii: list[float]) -> list[tuple[float, float]]:
        return [(cx + r * radius * math.cos(turn + 2 * math.pi * i / n),
                 cy + r * radius * math.sin(turn + 2 * math.pi * i / n)) for i, r in enumerate(radii)]

    box = (cx - radius, cy - radius, cx + radius, cy + radius)
    if shape == "disc":
        draw.ellipse(box, fill=1)
    elif shape == "square":
        draw.polygon(polygon(4, [1.0] * 4), fill=1)
    elif shape == "triangle":
        draw.polygon(polygon(3, [1.0] * 3), fill=1)
    elif shape == "star":
        draw.polygon(polygon(10, [1.0, 0.45] * 5), fill=1)
    elif shape == "ring":
        draw.ellipse(box, fill=1)
        inner = radius * 0.55
        draw.ellipse((cx - inner, cy - inner, cx + inner, cy + inner), fill=0)
    elif shape == "cross":
        w = radius * 0.35
        draw.rectangle((cx - radius, cy - w, cx + radius, cy + w), fill=1)
        draw.rectangle((cx - w, cy - radius, cx + w, cy + radius), fill=1)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return np.asarray(canvas, dtype=bool)


def _render(k: int, size: int, rng: np.random.Generator) -> np.ndarray:
    shape, colour, period, angle = _class_look(k)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    # Background: a random low-saturation tint with a smooth gradient, shared by all classes.
    tint = rng.uniform(0.25, 0.75) + rng.uniform(-0.08, 0.08, 3)
    gradient = rng.uniform(-0.2, 0.2) * (xx / size - 0.5) + rng.uniform(-0.2, 0.2) * (yy / size - 0.5)
    image = tint[None, None, :] + gradient[..., None]
    stripes = 0.5 + 0.5 * np.sin(2 * math.pi * (xx * math.cos(angle) + yy * math.sin(angle))
                                 / (period * size / 64.0) + rng.uniform(0, 2 * math.pi))
    obj = colour[None, None, :] * (0.7 + 0.3 * stripes[..., None]) * rng.uniform(0.8, 1.1)
    mask = _shape_mask(shape, size, rng)
    image[mask] = obj[mask]
    image += rng.normal(0.0, 0.04, image.shape)
    return (np.clip(image, 0.0, 1.0) * 255).round().astype(np.uint8)


def generate(out: str | Path, num_classes: int = 3, per_class: int = 60, val_per_class: int = 15,
             size: int = 64, seed: int = 0) -> Path:
    """Write ``per_class`` training and ``val_per_class`` validation images per class under
    ``out`` (``train/class_XX/``, ``val/class_XX/``; no ``val/`` when ``val_per_class`` is 0)
    and return ``out``. The same arguments always give byte-identical files.

    Raises:
        ValueError: an argument out of range, or a target directory that already holds files
            (old images would silently join the new set).
    """
    _check(num_classes, per_class, val_per_class, size)
    out = Path(out)
    splits = [("train", per_class)] + ([("val", val_per_class)] if val_per_class else [])
    for split, _ in splits:
        directory = out / split
        if directory.is_dir() and any(directory.iterdir()):
            raise ValueError(f"{directory} already holds files; generate into an empty or new "
                             f"directory so old images do not mix with new ones")
    width = max(2, len(str(num_classes - 1)))
    for split_index, (split, count) in enumerate(splits):
        # One stream per split and class: validation images do not change with per_class.
        for k in range(num_classes):
            rng = np.random.default_rng((seed, split_index, k))
            directory = out / split / f"class_{k:0{width}d}"
            directory.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.fromarray(_render(k, size, rng), "RGB").save(directory / f"{i:05d}.jpg",
                                                                   quality=JPEG_QUALITY)
    return out


def _check(num_classes: int, per_class: int, val_per_class: int, size: int) -> None:
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    if val_per_class < 0:
        raise ValueError(f"val_per_class must be >= 0, got {val_per_class}")
    if size < 16:
        raise ValueError(f"size must be >= 16 px, got {size}")


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point (``python -m shared.classification.synthetic --out DIR ...``)."""
    parser = argparse.ArgumentParser(
        prog="python -m shared.classification.synthetic",
        description="Write a small learnable image classification set in the ImageFolder layout "
                    "(train/<class>/*.jpg, val/<class>/*.jpg).")
    parser.add_argument("--out", type=Path, required=True, help="output root (created)")
    parser.add_argument("--num-classes", type=int, default=3)
    parser.add_argument("--per-class", type=int, default=60, help="training images per class")
    parser.add_argument("--val-per-class", type=int, default=None,
                        help="validation images per class (default: a quarter of --per-class, at "
                             "least 1); 0 writes no val/ (the trial then holds out val_fraction)")
    parser.add_argument("--size", type=int, default=64, help="image side, px (>= 16)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    val = max(1, args.per_class // 4) if args.val_per_class is None else args.val_per_class
    start = time.perf_counter()
    try:
        out = generate(args.out, args.num_classes, args.per_class, val, args.size, args.seed)
    except ValueError as error:
        parser.error(str(error))
    print(f"wrote {args.per_class} training + {val} validation images per class, {args.num_classes} "
          f"classes, {args.size} px, seed {args.seed}, to {out} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
