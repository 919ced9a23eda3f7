"""Synthetic rare small objects in large images, in the layout of ``shared.data.tiles``.

For the rare-objects recipe's tests and demo without orbital images. A miniature of the
source study's problem (003: fresh impacts on Mars): greyscale images with a textured ground
(smooth relief plus grain), a few small **objects** (a dark core inside a bright halo, like a
fresh impact's ejecta; 0 to ``--objects`` per image, a quarter of the images with none) and
many **look-alikes** that are not objects: dark cores without a halo (old craters) and bright
rings without a dark core. A model that learns "dark spot = object" finds the objects and
every old crater too: the false positives hard-negative mining is there to find.

    python -m shared.data.synthetic_rare --out /tmp/rare --num-train 16 --num-val 4 --size 192

Masks are the objects' cores (value 255; the loader takes any non-zero value as object).
``--bits 16`` writes 16-bit greyscale PNGs (the values x 257), ``--channels 3`` RGB.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Tuple

import numpy as np
from PIL import Image

__all__ = ["generate", "main"]

SPLITS = ("training", "validation")
#: share of the images without any object
EMPTY_SHARE = 0.25
CORE_RADIUS = (2.5, 5.0)   # px, objects and look-alikes alike: size says nothing
HALO_WIDTH = 2.0           # px outside the core
CORE_DEPTH = 70.0          # grey levels below the ground
HALO_GAIN = 30.0           # grey levels above the ground


def _ground(rng: np.random.Generator, size: int) -> np.ndarray:
    """Relief at three scales (bilinear upsampling of random grids) and pixel grain."""
    out = np.full((size, size), 128.0)
    for cells, amp in ((4, 25.0), (16, 12.0), (size // 4, 6.0)):
        grid = rng.normal(0, amp, (cells + 1, cells + 1))
        coords = np.linspace(0, cells, size)
        i0 = np.minimum(coords.astype(int), cells - 1)
        f = coords - i0
        rows = grid[i0] * (1 - f)[:, None] + grid[i0 + 1] * f[:, None]
        out += rows[:, i0] * (1 - f)[None, :] + rows[:, i0 + 1] * f[None, :]
    return out + rng.normal(0, 4.0, (size, size))


def _spot(image: np.ndarray, mask: np.ndarray | None, cy: float, cx: float, r: float,
          core: bool, halo: bool) -> None:
    size = image.shape[0]
    ext = int(r + HALO_WIDTH + 2)
    y0, y1 = max(int(cy) - ext, 0), min(int(cy) + ext + 1, size)
    x0, x1 = max(int(cx) - ext, 0), min(int(cx) + ext + 1, size)
    yy, xx = np.mgrid[y0:y1, x0:x1]
    d = np.hypot(yy - cy, xx - cx)
    if core:
        image[y0:y1, x0:x1] -= CORE_DEPTH * np.clip(r + 0.5 - d, 0, 1)
    if halo:
        ring = np.clip(np.minimum(d - r + 0.5, r + HALO_WIDTH + 0.5 - d), 0, 1)
        image[y0:y1, x0:x1] += HALO_GAIN * ring
    if mask is not None:
        mask[y0:y1, x0:x1][d <= r] = 255


def _sample(rng: np.random.Generator, size: int, objects: int, distractors: int
            ) -> Tuple[np.ndarray, np.ndarray]:
    image = _ground(rng, size)
    mask = np.zeros((size, size), dtype=np.uint8)
    margin = CORE_RADIUS[1] + HALO_WIDTH + 1
    n_obj = 0 if rng.random() < EMPTY_SHARE else int(rng.integers(1, objects + 1))
    n_look = int(rng.poisson(distractors))
    placed: list[Tuple[float, float]] = []

    def free_spot() -> Tuple[float, float]:
        for _ in range(50):  # apart from every spot already drawn, so masks never touch
            cy, cx = rng.uniform(margin, size - margin, 2)
            if all((cy - y) ** 2 + (cx - x) ** 2 > (3 * margin) ** 2 for y, x in placed):
                break
        placed.append((cy, cx))
        return cy, cx

    for _ in range(n_obj):
        _spot(image, mask, *free_spot(), rng.uniform(*CORE_RADIUS), core=True, halo=True)
    for k in range(n_look):
        # two of three look-alikes are old craters (dark core, no halo), one a bright ring
        crater = k % 3 != 2
        _spot(image, None, *free_spot(), rng.uniform(*CORE_RADIUS), core=crater, halo=not crater)
    return np.clip(image, 0, 255), mask


def generate(out: str | Path, num_train: int = 16, num_val: int = 4, size: int = 192,
             objects: int = 3, distractors: int = 8, bits: int = 8, channels: int = 1,
             seed: int = 0) -> Path:
    """Write ``images/{training,validation}/rare_NNNNN.png`` and ``masks/...`` under ``out``;
    returns ``out``. Raises ValueError on an argument out of range."""
    if num_train < 1 or num_val < 1:
        raise ValueError("--num-train and --num-val must be >= 1")
    if size < 32:
        raise ValueError(f"--size {size}: must be >= 32 px")
    if objects < 1 or distractors < 0:
        raise ValueError("--objects must be >= 1 and --distractors >= 0")
    if bits not in (8, 16) or channels not in (1, 3) or (bits == 16 and channels == 3):
        raise ValueError("--bits 8 or 16 (16: greyscale only), --channels 1 or 3")
    out = Path(out)
    rng = np.random.default_rng(seed)
    for split, count in zip(SPLITS, (num_train, num_val)):
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        (out / "masks" / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image, mask = _sample(rng, size, objects, distractors)
            stem = f"rare_{i:05d}"
            if bits == 16:
                picture = Image.fromarray((image * 257).round().astype(np.uint16))
            elif channels == 3:
                picture = Image.fromarray(np.repeat(image.round().astype(np.uint8)[:, :, None], 3, axis=2), "RGB")
            else:
                picture = Image.fromarray(image.round().astype(np.uint8), "L")
            picture.save(out / "images" / split / f"{stem}.png")
            Image.fromarray(mask, "L").save(out / "masks" / split / f"{stem}.png")
    return out


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point (``python -m shared.data.synthetic_rare --out DIR ...``)."""
    parser = argparse.ArgumentParser(
        prog="python -m shared.data.synthetic_rare",
        description="Write rare small objects among look-alikes on a textured ground "
                    "(images/ and masks/, the rare_objects recipe's layout).")
    parser.add_argument("--out", type=Path, required=True, help="output root (created)")
    parser.add_argument("--num-train", type=int, default=16)
    parser.add_argument("--num-val", type=int, default=4)
    parser.add_argument("--size", type=int, default=192, help="image side, px (>= 32)")
    parser.add_argument("--objects", type=int, default=3,
                        help="most objects per image (1..N; a quarter of the images have none)")
    parser.add_argument("--distractors", type=int, default=8,
                        help="mean look-alikes per image (Poisson)")
    parser.add_argument("--bits", type=int, default=8, help="8 or 16 (greyscale)")
    parser.add_argument("--channels", type=int, default=1, help="1 (grey) or 3 (RGB)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        out = generate(args.out, args.num_train, args.num_val, args.size, args.objects,
                       args.distractors, args.bits, args.channels, args.seed)
    except ValueError as error:
        parser.error(str(error))
    print(f"wrote {args.num_train} training + {args.num_val} validation images of "
          f"{args.size}x{args.size} px ({args.bits}-bit, {args.channels} channel(s)), seed "
          f"{args.seed}, to {out} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
