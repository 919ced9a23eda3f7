"""Peak memory of the rare-objects data path on one large image (docs/rare_objects.md):

    python -m benchmarks.tiles_memory --size 20000 --out /tmp/tiles_memory

writes a size x size 8-bit greyscale PNG with its mask (objects every 500 px), then measures,
each in a fresh process so that its peak resident set size (``ru_maxrss``) is its own:

- ``decode``: the first ``TileStore`` (decoding the PNG once and writing the ``.npy`` cache);
- ``tiles``: a second ``TileStore`` (cache hit), the ``BalancedTileSampler`` and 2000
  training tiles of 256 px read through ``TileDataset``, as a training process does.

Each line also gives, at the phase's end, the anonymous resident memory (the process's own)
and the file-backed resident pages (the memory-mapped cache: page cache, counted in RSS but
dropped by the kernel under pressure). The baseline is the Python process with numpy, torch
and Pillow imported.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image


def _write(root: Path, size: int) -> None:
    for d in ("images/training", "masks/training", "images/validation", "masks/validation"):
        (root / d).mkdir(parents=True, exist_ok=True)
    # a gradient (cheap to encode and decode; memory depends on the pixel count only)
    row = (np.arange(size) % 256).astype(np.uint8)
    image = np.broadcast_to(row, (size, size)).copy()
    mask = np.zeros((size, size), np.uint8)
    mask[250::500, 250::500] = 255
    with _limit():
        Image.fromarray(image).save(root / "images/training/big.png", compress_level=1)
    Image.fromarray(mask).save(root / "masks/training/big.png", compress_level=1)
    small = np.zeros((64, 64), np.uint8)
    Image.fromarray(small).save(root / "images/validation/v.png")
    Image.fromarray(small).save(root / "masks/validation/v.png")


class _limit:
    def __enter__(self):
        self.before, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None

    def __exit__(self, *a):
        Image.MAX_IMAGE_PIXELS = self.before


def _phase(phase: str, root: Path) -> dict:
    from shared.data.tiles import BalancedTileSampler, TileDataset, TileStore
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.monotonic()
    store = TileStore(root, "training", root / "cache", in_channels=1)
    if phase == "tiles":
        sampler = BalancedTileSampler(store.images, 256, 16, 0.5, 0.0, 16, seed=0)
        ds = TileDataset(store.images, 256)
        for _ in range(125):
            for spec in sampler.next_batch():
                ds[spec]
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    kb = {k: int(status[k].split()[0]) for k in ("RssAnon", "RssFile") if k in status}
    return {"phase": phase, "seconds": round(time.monotonic() - start, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "baseline_rss_mb": round(base, 1),
            # at the end: anonymous memory (the process's own) and file pages (the memory-mapped
            # cache, page cache the kernel may drop)
            "end_anon_mb": round(kb.get("RssAnon", 0) / 1024, 1),
            "end_file_mb": round(kb.get("RssFile", 0) / 1024, 1)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tiles_memory")
    parser.add_argument("--size", type=int, default=20000)
    parser.add_argument("--out", type=Path, default=Path("/tmp/tiles_memory"))
    parser.add_argument("--phase", choices=("decode", "tiles"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.phase:
        print(json.dumps(_phase(args.phase, args.out)))
        return
    _write(args.out, args.size)
    print(f"{args.size}x{args.size} 8-bit greyscale PNG: "
          f"{(args.out / 'images/training/big.png').stat().st_size / 2**20:.1f} MiB on disk, "
          f"{args.size ** 2 / 2**20:.0f} MiB of pixels")
    for phase in ("decode", "tiles"):
        out = subprocess.run([sys.executable, "-m", "benchmarks.tiles_memory", "--out", str(args.out),
                              "--phase", phase], capture_output=True, text=True, check=True)
        print(out.stdout.strip())


if __name__ == "__main__":
    main()
