"""The rare-objects family's task on the engine (``shared.engine.Engine``): one logit per pixel,
its losses (``BinaryLoss``), the fixed input scaling of uint8 tiles (``binary_input``), and
validation on whole images, tiled with overlap and stitched back (``stitch_logits``), into the
object metrics (``shared.objects.metrics.ObjectMetrics``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from shared.data.tiles import tile_starts
from shared.errors import ConfigError

if TYPE_CHECKING:  # annotations only
    from shared.engine import Engine, Runtime

__all__ = ["BINARY_LOSSES", "BinaryLoss", "BinarySegmentationTask", "binary_input",
           "stitch_logits"]


#: the losses of ``BinaryLoss`` (hyperparameter ``loss``)
BINARY_LOSSES = ("bce", "dice", "bce_dice", "focal")


class BinaryLoss:
    """The loss of one-logit segmentation: ``bce`` (binary cross-entropy, positives weighted
    by ``pos_weight``), ``dice`` (soft Dice over all the pixels given, smoothed by 1 so that a
    batch of empty tiles predicted empty costs nothing), ``bce_dice`` (their sum) or ``focal``
    (Lin et al. 2017: cross-entropy scaled by (1 - p_t) ** ``gamma``, positives weighted by
    ``pos_weight``). Always in float32.

    A loss is taken from sums (``parts``) so that a whole validation image can be scored in
    bands that are added up (``combine``) instead of one tensor of its size.
    """

    def __init__(self, kind: str, pos_weight: float = 1.0, gamma: float = 2.0) -> None:
        if kind not in BINARY_LOSSES:
            raise ConfigError(f"hyperparameter 'loss' = {kind!r} is not one of "
                              f"{', '.join(BINARY_LOSSES)}")
        self.kind, self.pos_weight, self.gamma = kind, float(pos_weight), float(gamma)

    def parts(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(5,) float64 sums over the pixels: cross-entropy (or focal) term, pixels, soft
        intersection, predicted mass, target mass."""
        x, t = logits.float(), target.float()
        w = 1.0 + (self.pos_weight - 1.0) * t  # pos_weight on positive pixels, 1 elsewhere
        ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
        p = torch.sigmoid(x)
        if self.kind == "focal":
            p_t = p * t + (1 - p) * (1 - t)
            ce = ce * (1 - p_t) ** self.gamma
        return torch.stack([(ce * w).sum(), x.new_tensor(float(x.numel())), (p * t).sum(),
                            p.sum(), t.sum()]).double()

    def combine(self, parts: torch.Tensor) -> torch.Tensor:
        ce = parts[0] / parts[1].clamp(min=1)
        dice = 1 - (2 * parts[2] + 1) / (parts[3] + parts[4] + 1)
        if self.kind in ("bce", "focal"):
            return ce
        return dice if self.kind == "dice" else ce + dice

    def __call__(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.combine(self.parts(logits, target)).float()


def binary_input(images: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """uint8 (B, C, H, W) tiles to the model's input: [0, 255] to about [-2, 2] by a fixed
    affine map ((x / 255 - 0.5) / 0.25), whatever the channel count (1 or 3); no per-data-set
    statistics, which a single-band orbital image would not have."""
    x = (images.float() / 255.0 - 0.5) / 0.25
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


class BinarySegmentationTask:
    """Binary segmentation of rare objects: uint8 tiles and 0/1 masks from the tile sampler
    (``shared.data.tiles``), one logit per pixel, ``BinaryLoss``; validation on whole images,
    tiled with overlap and stitched (``stitch_logits``), into ``ObjectMetrics`` (pixel IoU and
    F1, object precision, recall, F1, false positives per image, average precision, and the
    mean per-image loss as ``validation_loss``).

    Args:
        loss: the training and validation loss.
        metrics: a ``shared.objects.metrics.ObjectMetrics`` (or the same interface).
        tile_size, overlap, stitch, tiles_per_batch: the validation tiling (``stitch_logits``).
    """

    def __init__(self, loss: BinaryLoss, metrics: Any, tile_size: int, overlap: float = 0.25,
                 stitch: str = "average", tiles_per_batch: int = 8) -> None:
        self.loss = loss
        self._metrics = metrics
        self.tile_size, self.overlap, self.stitch = int(tile_size), float(overlap), stitch
        self.tiles_per_batch = int(tiles_per_batch)
        self.metrics: Any = None

    def attach(self, runtime: Runtime) -> None:
        self.metrics = runtime.wrap_reducer(self._metrics, name=None, for_training=False)

    def training_loss(self, engine: "Engine", batch: Sequence[torch.Tensor]) -> torch.Tensor:
        images, masks, skipped = engine.to_device(*batch)
        engine.count_skipped(skipped)
        x = binary_input(images, engine.channels_last)
        with engine.autocast():
            logits = engine.forward(x)
        return self.loss(logits[:, 0], masks)

    @torch.no_grad()
    def predict(self, engine: "Engine", image: Any) -> torch.Tensor:
        """Stitched logits (H, W), float32 on the CPU, of one whole image (an object with
        ``shape`` (H, W, C) and ``tile(y, x, size)`` -> uint8 (C, size, size), such as
        ``shared.data.tiles.TiledImage``)."""
        def run(tiles: torch.Tensor) -> torch.Tensor:
            x = binary_input(tiles.to(engine.device, non_blocking=True), engine.channels_last)
            with engine.autocast():
                return engine.eval_forward(x)[:, 0].float().cpu()
        return stitch_logits(image, run, self.tile_size, self.overlap, self.stitch,
                             self.tiles_per_batch)

    def evaluate(self, engine: "Engine", batch: Sequence[Any]) -> None:
        assert self.metrics is not None, "attach() first"
        for image in batch:  # whole images (shared.data.tiles.TiledImage), one at a time
            if image.skipped:  # a bad pair, counted once when the data was read
                continue
            logits = self.predict(engine, image)
            mask = torch.from_numpy(np.array(image.mask()))
            parts = logits.new_zeros(5, dtype=torch.float64)
            for r in range(0, logits.shape[0], 1024):  # bands: bounded temporaries
                parts += self.loss.parts(logits[r:r + 1024], mask[r:r + 1024])
            self.metrics.update(torch.sigmoid(logits), mask, float(self.loss.combine(parts)))


def stitch_logits(image: Any, run: Callable[[torch.Tensor], torch.Tensor], tile_size: int,
                  overlap: float, stitch: str, tiles_per_batch: int) -> torch.Tensor:
    """Logits (H, W) float32 on the CPU of a whole image, from tiles of ``tile_size``
    overlapping by ``overlap`` (a fraction of the tile) run through ``run`` (uint8 (B, C, T,
    T) -> (B, T, T) logits) ``tiles_per_batch`` at a time.

    ``stitch``: ``average`` (each pixel the mean of the logits of every tile covering it;
    the tile counts per pixel are the product of the counts per row and per column, so no
    second image-sized array is needed) or ``center`` (each pixel from the tile whose centre
    is nearest, so no prediction near a tile's border is used where another tile has it
    further inside).
    """
    h, w = image.height, image.width
    t = tile_size
    stride = max(1, int(round(t * (1 - overlap))))
    ys, xs = tile_starts(h, t, stride), tile_starts(w, t, stride)
    out = torch.zeros(h, w, dtype=torch.float32)
    positions = [(y, x) for y in ys for x in xs]
    if stitch == "center":
        def bounds(starts: List[int], length: int) -> List[Tuple[int, int]]:
            centres = [s + t / 2 for s in starts]
            cuts = [0] + [int((a + b) / 2) for a, b in zip(centres, centres[1:])] + [length]
            return [(max(lo, s), min(hi, s + t)) for s, lo, hi in zip(starts, cuts, cuts[1:])]
        by, bx = dict(zip(ys, bounds(ys, h))), dict(zip(xs, bounds(xs, w)))
    for k in range(0, len(positions), tiles_per_batch):
        chunk = positions[k:k + tiles_per_batch]
        logits = run(torch.from_numpy(np.stack([image.tile(y, x, t) for y, x in chunk])))
        for (y, x), lg in zip(chunk, logits):
            if stitch == "center":
                (y0, y1), (x0, x1) = by[y], bx[x]
                out[y0:y1, x0:x1] = lg[y0 - y:y1 - y, x0 - x:x1 - x]
            else:
                yh, xw = min(t, h - y), min(t, w - x)
                out[y:y + yh, x:x + xw] += lg[:yh, :xw]
    if stitch != "center":
        cy, cx = torch.zeros(h), torch.zeros(w)
        for y in ys:
            cy[y:y + t] += 1
        for x in xs:
            cx[x:x + t] += 1
        out /= cy[:, None] * cx[None, :]
    return out
