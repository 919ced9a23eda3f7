"""Large images with rare small objects, read once and tiled lazily: the data of the
binary-segmentation family (``trials/rare_objects``).

Layout::

    <root>/images/{training,validation}/<stem>.{png,tif,tiff,jpg,jpeg}   grey or RGB, 8 or 16 bit
    <root>/masks/{training,validation}/<stem>.png                        0 background, non-zero object

What happens to an image:

1. **Read once** (``TileStore``): each (image, mask) pair is decoded with the project's one
   image reader (``shared.data.files``: EXIF orientation, 16-bit greyscale scaled by its full
   range, decompression bombs and symbolic link loops named) and written to a cache as two
   uncompressed ``.npy`` files, uint8 (H, W, C) and uint8 (H, W) 0/1, with the bounding boxes
   of its objects. A cache entry is keyed by the source files' identity (path, device, inode,
   size, modification time) and holds a manifest with each file's SHA-256, checked before the
   entry is used, so a second run (or the other ranks of a node) reads nothing but the cache,
   and a damaged or foreign file is never taken for the image. The cache directory is the
   user's own (mode 0700, files 0600; one of another user, or writable by others, is refused),
   and every file is written under a unique temporary name and renamed into place, so
   processes caching the same image at once never collide.
2. **Tiled lazily**: every process opens the cache files memory-mapped (``np.load(...,
   mmap_mode="r")``) and copies out only the tiles it asks for; what stays resident is the
   page cache of the tiles read, which the kernel may drop at will. The decoding of step 1
   is the peak: Pillow's decoded image plus one numpy copy (2 bytes per pixel and channel);
   the figures measured for a 20000x20000 image are in docs/rare_objects.md.
3. **Sampled** (``BalancedTileSampler``, in the main process, where the data loader asks
   for each batch's tile positions): ``positive_fraction`` of each batch are tiles holding an
   object at a random position inside the tile, the rest random tiles without any object,
   ``hard_negative_fraction`` of those from the pool of hard negatives that mining found.
4. **Validated whole**: a validation image is covered by tiles overlapping by ``overlap``
   and their logits are stitched back (``shared.objects.task.stitch_logits``), so that object metrics are per
   full image.

Pillow refuses images over twice ``PIL.Image.MAX_IMAGE_PIXELS`` (about 179 Mpixels) as
decompression bombs; this reader raises that limit to ``max_image_pixels`` while it decodes
(hyperparameter, default 10**9: a 31600x31600 image).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import stat
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from shared.data.ade20k import find_samples
from shared.data.files import DataError, read_annotation, read_image
from shared.data.sampling import derive_seed
from shared.data.components import component_boxes
from shared.data.skips import WARN_LIMIT, log_problems

__all__ = ["TILE_IMAGE_SUFFIXES", "find_tile_samples", "TileStore", "TiledImage", "TileDataset",
           "BalancedTileSampler", "tile_starts", "list_collate"]

log = logging.getLogger(__name__)

TILE_IMAGE_SUFFIXES = frozenset({".png", ".tif", ".tiff", ".jpg", ".jpeg"})
#: random draws for a tile without any object before falling back to a known empty cell
NEGATIVE_TRIES = 32


def find_tile_samples(root: str | Path, split: str, skip_bad_samples: bool = False
                      ) -> Tuple[List[Tuple[Path, Path]], List[str]]:
    """(image, mask) pairs of ``split`` under ``root`` (``images/<split>``, ``masks/<split>``),
    paired by stem, with the ADE20K loader's checks and messages (``find_samples``)."""
    return find_samples(root, split, skip_bad_samples, annotations="masks",
                        image_suffixes=TILE_IMAGE_SUFFIXES, root_name="a data root")


@contextlib.contextmanager
def pixel_limit(max_pixels: int) -> Iterator[None]:
    """Pillow's decompression-bomb limit set so that images up to ``max_pixels`` decode (it
    refuses over twice MAX_IMAGE_PIXELS and warns over once), restored afterwards."""
    before = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max(int(max_pixels) // 2, 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = before


# ----------------------------------------------------------------------------- images
@dataclass
class TiledImage:
    """One image of a split as its cache files: picklable (paths only; each process opens
    the memory maps on first use), read a tile at a time."""

    stem: str
    image_path: Path
    mask_path: Path
    image_npy: Optional[Path]
    mask_npy: Optional[Path]
    shape: Tuple[int, int, int] = (0, 0, 0)
    #: object bounding boxes [y0, x0, y1, x1)
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), dtype=np.int64))
    #: a bad sample skipped (skip_bad_samples): counted, never read
    skipped: bool = False
    _maps: Any = field(default=None, repr=False, compare=False)

    def __getstate__(self) -> Dict[str, Any]:
        state = dict(self.__dict__)
        state["_maps"] = None  # memory maps are reopened, not pickled as copies
        return state

    def _open(self) -> Tuple[np.ndarray, np.ndarray]:
        if self._maps is None:
            self._maps = (np.load(self.image_npy, mmap_mode="r"), np.load(self.mask_npy, mmap_mode="r"))
        return self._maps

    @property
    def height(self) -> int:
        return self.shape[0]

    @property
    def width(self) -> int:
        return self.shape[1]

    def tile(self, y: int, x: int, size: int) -> np.ndarray:
        """uint8 (C, size, size) at (y, x), zero beyond the image."""
        image, _ = self._open()
        out = np.zeros((self.shape[2], size, size), dtype=np.uint8)
        crop = image[y:y + size, x:x + size]
        out[:, :crop.shape[0], :crop.shape[1]] = np.moveaxis(crop, 2, 0)
        return out

    def mask_tile(self, y: int, x: int, size: int) -> np.ndarray:
        """uint8 (size, size) 0/1 at (y, x), zero beyond the image."""
        _, mask = self._open()
        out = np.zeros((size, size), dtype=np.uint8)
        crop = mask[y:y + size, x:x + size]
        out[:crop.shape[0], :crop.shape[1]] = crop
        return out

    def mask(self) -> np.ndarray:
        """The whole (H, W) 0/1 mask (validation scores whole images)."""
        return np.asarray(self._open()[1])


def list_collate(items: Sequence[Any]) -> List[Any]:
    """Validation batches are lists of ``TiledImage`` (whole images of any size)."""
    return list(items)


#: the cache entry format: a change of what an entry holds changes every key
CACHE_FORMAT = 2


def default_cache_dir() -> Path:
    """``<tmp>/rare_objects_tiles-<uid>``: node-local and the user's own (a directory shared by
    every user of a node could be read, or filled with planted files, by the others)."""
    return Path(tempfile.gettempdir()) / f"rare_objects_tiles-{os.getuid()}"


def private_dir(path: Path) -> Path:
    """``path`` created with mode 0700, or checked: a directory of this user that no one else
    may write. Raises DataError naming it otherwise (a planted ``.npy`` of the right name would
    be used as an image)."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.stat(path)
    except OSError as err:
        raise DataError(f"tile cache {path}: cannot create it ({err.strerror})") from None
    if not stat.S_ISDIR(st.st_mode):
        raise DataError(f"tile cache {path} is not a directory")
    if st.st_uid != os.getuid():
        raise DataError(f"tile cache {path} belongs to user id {st.st_uid}, not to this user "
                        f"({os.getuid()}): its files could have been put there by another user; "
                        f"set tile_cache_dir to a directory of your own")
    if st.st_mode & 0o022:
        raise DataError(f"tile cache {path} is writable by other users (mode "
                        f"{stat.S_IMODE(st.st_mode):04o}): its files could have been put there by "
                        f"someone else; chmod 700 it, or set tile_cache_dir to a private directory")
    return path


def _source_identity(*paths: Path) -> List[Dict[str, Any]]:
    """What identifies the source files of an entry: path, device, inode, size, mtime."""
    out = []
    for p in paths:
        st = os.stat(p)
        out.append({"path": str(Path(p).resolve()), "device": st.st_dev, "inode": st.st_ino,
                    "bytes": st.st_size, "mtime_ns": st.st_mtime_ns})
    return out


def _file_key(identity: List[Dict[str, Any]], extra: str) -> str:
    h = hashlib.sha256(f"{CACHE_FORMAT}|{extra}".encode())
    h.update(json.dumps(identity, sort_keys=True).encode())
    return h.hexdigest()[:24]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _atomic_write(path: Path, write: Callable[[Any], None]) -> None:
    """Write ``path`` through a temporary file of its own (a unique name: concurrent writers
    never share one) with mode 0600, then rename it into place (atomic: a reader sees the
    old file, the new one, or none, never half of one)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _save(path: Path, array: np.ndarray) -> str:
    """Save ``array`` as ``path`` (``_atomic_write``); returns the file's SHA-256."""
    _atomic_write(path, lambda f: np.save(f, array))
    return _sha256(path)


def _entry_problem(manifest: Path, identity: List[Dict[str, Any]]) -> Optional[str]:
    """Why the cache entry of ``manifest`` cannot be used (None: it can): no manifest, another
    source, or a file whose size or checksum differs from what its writer recorded."""
    try:
        recorded = json.loads(manifest.read_text())
    except FileNotFoundError:
        return "not cached yet"
    except (OSError, ValueError) as err:
        return f"{manifest} is unreadable ({err})"
    if recorded.get("source") != identity:
        return f"{manifest} describes other source files"
    for name, want in (recorded.get("files") or {}).items():
        f = manifest.parent / name
        try:
            if f.stat().st_size != want["bytes"] or _sha256(f) != want["sha256"]:
                return f"{f} differs from what was cached (size or checksum)"
        except OSError:
            return f"{f} is missing"
    return None if recorded.get("files") else f"{manifest} lists no file"


def _decode_image(image_path: Path, in_channels: int) -> Tuple[np.ndarray, str]:
    """uint8 (H, W, in_channels) pixels and the EXIF note for size messages."""
    decoded = read_image(image_path, keep_grey=in_channels == 1)
    pixels = decoded.pixels
    if in_channels == 1 and pixels.shape[2] == 3:
        # a colour image for a one-band model: luma (ITU-R 601), as Pillow's convert("L")
        pixels = (pixels @ np.array([299, 587, 114]) // 1000).astype(np.uint8)[:, :, None]
    elif in_channels == 3 and pixels.shape[2] == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    return pixels, decoded.orientation_note()


def _decode_mask(mask_path: Path, shape: Tuple[int, ...], image_path: Path, note: str) -> np.ndarray:
    """uint8 (H, W) 0/1, checked against the image's (H, W)."""
    mask = read_annotation(mask_path)
    if mask.shape != tuple(shape[:2]):
        raise DataError(f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} but image {image_path} "
                        f"is {shape[1]}x{shape[0]}{note}")
    if not mask.flags.writeable:
        mask = mask.copy()
    return np.minimum(mask, 1, out=mask)  # any non-zero value is object; in place


class TileStore:
    """The images of one split, decoded once into ``cache_dir`` (see the module docstring).

    Args:
        root: the data root; split: ``training`` or ``validation``.
        cache_dir: where the decoded copies go (default: ``<tmp>/rare_objects_tiles-<uid>``,
            see ``default_cache_dir``).
        in_channels: 1 (grey: colour images become luma) or 3 (grey images are repeated).
        max_image_pixels: the largest image decoded (Pillow's bomb limit raised to it).
        skip_bad_samples: a pair that cannot be read is skipped (``skipped``) instead of
            raising its DataError.
    """

    def __init__(self, root: str | Path, split: str, cache_dir: Optional[str | Path] = None,
                 in_channels: int = 3, max_image_pixels: int = 10 ** 9,
                 skip_bad_samples: bool = False) -> None:
        self.root, self.split = Path(root), split
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.in_channels, self.max_image_pixels = int(in_channels), int(max_image_pixels)
        pairs, self.skipped = find_tile_samples(root, split, skip_bad_samples)
        log_problems(log, self.skipped)
        self.images: List[TiledImage] = []
        private_dir(self.cache_dir)
        for image_path, mask_path in pairs:
            try:
                self.images.append(self._cached(image_path, mask_path))
            except DataError as err:
                if not skip_bad_samples:
                    raise
                if len(self.skipped) < WARN_LIMIT:
                    log.warning("skipping %s", err)
                self.skipped.append(str(err))
                self.images.append(TiledImage(image_path.stem, image_path, mask_path, None, None,
                                              skipped=True))
        if not self.usable:
            raise DataError(f"no readable (image, mask) pair in {self.root}/images/{split} "
                            f"({len(self.skipped)} skipped)")

    @property
    def usable(self) -> List[TiledImage]:
        return [im for im in self.images if not im.skipped]

    def _cached(self, image_path: Path, mask_path: Path) -> TiledImage:
        """The cache entry of one (image, mask) pair, made if missing or not as written.

        An entry is four files named by a key of the source files' identity (path, device,
        inode, size, modification time) and the channels: the decoded image, the 0/1 mask,
        the object boxes (``.npy``) and a manifest holding the identity and each file's size
        and SHA-256, written last. Each file goes through a temporary file of its own and a
        rename, so processes caching the same image at once (ranks, trials of a search) never
        collide; an entry is used only when its manifest matches its files."""
        try:
            identity = _source_identity(image_path, mask_path)
        except OSError as err:
            raise DataError(f"cannot read {err.filename}: {err.strerror}") from None
        key = _file_key(identity, extra=f"c{self.in_channels}")
        image_npy, mask_npy, boxes_npy = (self.cache_dir / f"{key}.{k}.npy" for k in ("image", "mask", "boxes"))
        manifest = self.cache_dir / f"{key}.json"
        problem = _entry_problem(manifest, identity)
        if problem is not None:
            if problem != "not cached yet":
                log.warning("tile cache: %s; decoding %s again", problem, image_path)
            # one decoded array alive at a time: the image is written and dropped before the
            # mask is decoded (the peak is one decode, docs/rare_objects.md)
            with pixel_limit(self.max_image_pixels):
                pixels, note = _decode_image(image_path, self.in_channels)
                shape = pixels.shape
                sums = {image_npy.name: _save(image_npy, pixels)}
                del pixels
                try:
                    mask = _decode_mask(mask_path, shape, image_path, note)
                except DataError:
                    image_npy.unlink(missing_ok=True)  # no manifest: never used; tidy up
                    raise
            sums[mask_npy.name] = _save(mask_npy, mask)
            sums[boxes_npy.name] = _save(boxes_npy, component_boxes(mask))
            del mask
            entry = {"format": CACHE_FORMAT, "source": identity,
                     "files": {name: {"bytes": (self.cache_dir / name).stat().st_size, "sha256": h}
                               for name, h in sums.items()}}
            _atomic_write(manifest, lambda f: f.write(json.dumps(entry, indent=1).encode()))
        image = np.load(image_npy, mmap_mode="r")
        return TiledImage(image_path.stem, image_path, mask_path, image_npy, mask_npy,
                          tuple(image.shape), np.load(boxes_npy))


# ----------------------------------------------------------------------------- training
class TileDataset(torch.utils.data.Dataset):
    """Training tiles by position: item ``(i, y, x, flip)`` (from ``BalancedTileSampler``)
    is image i's tile at (y, x), flipped left-right (flip bit 0) and/or top-bottom (bit 1):
    (uint8 (C, T, T) tensor, uint8 (T, T) 0/1 tensor, 0)."""

    def __init__(self, images: Sequence[TiledImage], tile_size: int) -> None:
        self.images, self.tile_size = list(images), int(tile_size)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, spec: Tuple[int, int, int, int]) -> Tuple[torch.Tensor, torch.Tensor, int]:
        i, y, x, flip = spec
        im = self.images[i]
        image, mask = im.tile(y, x, self.tile_size), im.mask_tile(y, x, self.tile_size)
        if flip & 1:
            image, mask = image[:, :, ::-1], mask[:, ::-1]
        if flip & 2:
            image, mask = image[:, ::-1], mask[::-1]
        return torch.from_numpy(image.copy()), torch.from_numpy(mask.copy()), 0


def tile_starts(length: int, size: int, stride: int) -> List[int]:
    """Tile positions covering [0, length): every ``stride``, the last one flush with the end
    (0 alone when the image is smaller than a tile)."""
    if length <= size:
        return [0]
    starts = list(range(0, length - size, max(1, stride)))
    return starts + [length - size]


class BalancedTileSampler:
    """The batches of tile positions (a batch sampler: it runs in the main process, so the
    hard-negative pool that mining fills there is what the next batches draw from).

    Each batch of ``batch_size``: ``round(batch_size x positive_fraction)`` tiles holding an
    object (an object drawn uniformly over all objects, the tile placed so that the object's
    box lies at a uniformly random position inside it), the rest tiles without any object:
    ``round(negatives x hard_negative_fraction)`` drawn from the hard-negative pool once
    mining has put something there, the others at random positions (images drawn by area,
    redrawn while the tile holds an object). ``positive_fraction`` 0 turns balancing off:
    the plain random-crop pipeline, random tiles holding objects only as often as chance
    has it (the study's starting point, which learned to predict nothing). Every tile is
    flipped at random. Seeded: the
    same seed gives the same batches on every rank (Determined then deals them out).

    Mining (``mining_candidates``, ``add_hard_negatives``): the negative cells of a
    tile-sized grid over the training images that were not sampled in the last
    ``recent_batches`` batches are the candidates; the caller scores them with the model
    and the highest-scoring join a pool bounded to ``pool_size`` (the lowest scores leave).
    """

    def __init__(self, images: Sequence[TiledImage], tile_size: int, batch_size: int,
                 positive_fraction: float, hard_negative_fraction: float, pool_size: int,
                 seed: int, recent_batches: int = 0) -> None:
        self.images, self.tile = list(images), int(tile_size)
        self.batch_size = int(batch_size)
        self.positive_fraction, self.hard_fraction = float(positive_fraction), float(hard_negative_fraction)
        self.pool_size, self.recent_batches = int(pool_size), int(recent_batches)
        self.seed = int(seed)
        #: the generator of the batch being drawn: batch b's from (seed, b), mining m's from
        #: (seed, m), so a batch is the same whether drawn in order or after a restore
        self.rng = np.random.default_rng(derive_seed(self.seed, 2, 0))
        #: minings so far (their candidates' draws)
        self.minings = 0
        #: batches below this are being skipped by Determined after a restore (replayed to
        #: reach the resume point): drawn as empty placeholders, changing nothing
        self.replay_until = 0
        self.objects = [(i, box) for i, im in enumerate(self.images) if not im.skipped
                        for box in im.boxes]
        if self.positive_fraction > 0 and not self.objects:
            raise DataError("positive_fraction > 0 but the training masks hold no object "
                            f"(every mask of {len(self.images)} training images is all 0)")
        #: negative grid cells per image: (i, y, x) of tiles without any object pixel
        self.cells = self._negative_cells()
        if not self.cells:
            raise DataError("every tile-sized cell of the training images holds an object: "
                            "there is no negative tile to sample (a smaller tile_size?)")
        areas = np.array([0 if im.skipped else im.height * im.width for im in self.images], dtype=np.float64)
        self.image_weights = areas / areas.sum()
        self.last_sampled: Dict[Tuple[int, int, int], int] = {}
        self.pool: List[Tuple[float, Tuple[int, int, int]]] = []
        self.batches = 0

    def _negative_cells(self) -> List[Tuple[int, int, int]]:
        cells = []
        t = self.tile
        for i, im in enumerate(self.images):
            if im.skipped:
                continue
            taken = np.zeros((-(-im.height // t), -(-im.width // t)), dtype=bool)
            for y0, x0, y1, x1 in im.boxes:  # cells an object's box touches are not negative
                taken[y0 // t:(y1 - 1) // t + 1, x0 // t:(x1 - 1) // t + 1] = True
            for gy, gx in zip(*np.nonzero(~taken)):
                cells.append((i, min(int(gy) * t, max(im.height - t, 0)),
                              min(int(gx) * t, max(im.width - t, 0))))
        return cells

    def __len__(self) -> int:
        # an "epoch" is as many tiles as the grid has cells: only what --epochs counts
        return max(1, len(self.cells) // self.batch_size)

    def _cell_of(self, i: int, y: int, x: int) -> Tuple[int, int, int]:
        return (i, (y + self.tile // 2) // self.tile, (x + self.tile // 2) // self.tile)

    def _positive(self) -> Tuple[int, int, int]:
        i, (y0, x0, y1, x1) = self.objects[self.rng.integers(len(self.objects))]
        im = self.images[i]
        return (i, self._place(y0, y1, im.height), self._place(x0, x1, im.width))

    def _place(self, a: int, b: int, length: int) -> int:
        # the tile's start so that [a, b) is inside it at a random offset (or, for an object
        # larger than the tile, the tile inside the object), within the image
        lo, hi = (b - self.tile, a) if b - a <= self.tile else (a, b - self.tile)
        lo, hi = max(lo, 0), min(hi, max(length - self.tile, 0))
        return int(self.rng.integers(lo, hi + 1)) if hi >= lo else max(min(lo, length - self.tile), 0)

    def _random_tile(self) -> Tuple[int, int, int]:
        i = int(self.rng.choice(len(self.images), p=self.image_weights))
        im = self.images[i]
        return (i, int(self.rng.integers(max(im.height - self.tile, 0) + 1)),
                int(self.rng.integers(max(im.width - self.tile, 0) + 1)))

    def _random_negative(self) -> Tuple[int, int, int]:
        if self.positive_fraction == 0:
            # no balancing: the plain random-crop pipeline, objects as often as they fall
            return self._random_tile()
        for _ in range(NEGATIVE_TRIES):
            i, y, x = self._random_tile()
            im = self.images[i]
            boxes = im.boxes
            if not len(boxes) or not np.any((boxes[:, 0] < y + self.tile) & (boxes[:, 2] > y) &
                                            (boxes[:, 1] < x + self.tile) & (boxes[:, 3] > x)):
                return i, y, x
        i, y, x = self.cells[self.rng.integers(len(self.cells))]
        return i, y, x

    def next_batch(self) -> List[Tuple[int, int, int, int]]:
        if self.batches < self.replay_until:
            self.batches += 1
            return []  # skipped by Determined's SkipBatchSampler, never loaded
        self.rng = np.random.default_rng(derive_seed(self.seed, 2, self.batches))
        n_pos = int(round(self.batch_size * self.positive_fraction))
        n_neg = self.batch_size - n_pos
        n_hard = int(round(n_neg * self.hard_fraction)) if self.pool else 0
        picks = [self._positive() for _ in range(n_pos)]
        picks += [self.pool[self.rng.integers(len(self.pool))][1] for _ in range(n_hard)]
        for _ in range(n_neg - n_hard):
            i, y, x = self._random_negative()
            self.last_sampled[self._cell_of(i, y, x)] = self.batches
            picks.append((i, y, x))
        self.batches += 1
        flips = self.rng.integers(4, size=len(picks))
        return [(i, y, x, int(f)) for (i, y, x), f in zip(picks, flips)]

    def __iter__(self) -> Iterator[List[Tuple[int, int, int, int]]]:
        for _ in range(len(self)):
            yield self.next_batch()

    # ------------------------------------------------------------------ mining
    def mining_candidates(self, count: int) -> List[Tuple[int, int, int]]:
        """Up to ``count`` negative grid cells not sampled in the last ``recent_batches``
        batches, drawn at random (the same draw on every rank)."""
        since = self.batches - self.recent_batches
        rng = np.random.default_rng(derive_seed(self.seed, 3, self.minings))
        self.minings += 1
        fresh = [c for c in self.cells
                 if self.last_sampled.get(self._cell_of(*c), -10 ** 9) < since]
        if len(fresh) > count:
            fresh = [fresh[k] for k in sorted(rng.choice(len(fresh), size=count, replace=False))]
        return fresh

    def state_dict(self) -> Dict[str, Any]:
        """What a checkpoint keeps of the sampler (JSON): the hard-negative pool, when each
        negative cell was last sampled, and the minings so far. The batches themselves are
        functions of the seed and need nothing."""
        return {"pool": [[score, list(cell)] for score, cell in self.pool],
                "last_sampled": [[*cell, b] for cell, b in sorted(self.last_sampled.items())],
                "minings": self.minings}

    def load_state_dict(self, state: Mapping[str, Any], resume_at: int) -> None:
        """Restore ``state_dict()`` before the first batch is drawn; ``resume_at``: the
        sampler batches already trained (batches x slots), which Determined skips."""
        self.pool = [(float(score), tuple(int(x) for x in cell)) for score, cell in state["pool"]]
        self.last_sampled = {tuple(int(x) for x in row[:3]): int(row[3])
                             for row in state["last_sampled"]}
        self.minings = int(state["minings"])
        self.replay_until = int(resume_at)

    def add_hard_negatives(self, cells: Sequence[Tuple[int, int, int]], scores: Sequence[float]) -> int:
        """Put the cells with a positive score in the pool, keeping the ``pool_size`` highest
        scores (a cell already there keeps its newest score); returns the pool's size."""
        merged = {c: s for s, c in self.pool}
        merged.update({tuple(c): float(s) for c, s in zip(cells, scores) if s > 0})
        self.pool = sorted(((s, c) for c, s in merged.items()), reverse=True)[:self.pool_size]
        return len(self.pool)
