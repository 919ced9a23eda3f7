"""``BinarySegmentationTrial``: the Determined PyTorchTrial behind ``trials/rare_objects``, the
family for rare small objects in large images (source document 003).

Like the other families it derives from ``shared.trial.RecipeTrial`` and runs
``shared.engine.Engine`` (precision, optimiser, warm-up + poly schedule, the step), the time
to target, the ``run`` group and the energy hook. What is its own:

- data: large images read once and tiled lazily (``shared.data.tiles``), batches balanced
  between tiles with and without objects (``BalancedTileSampler``);
- hard-negative mining every ``mine_period`` batches: the model scores negative tiles of the
  training images not sampled recently, the ones it gets most wrong (largest predicted
  object area, then highest mean probability) join a bounded pool that a share of each
  batch's negatives is drawn from. The validation split is never mined. Its time and energy
  are their own phase (``mining_wh`` in the energy group, the ``mining`` group);
- one logit per pixel, ``shared.objects.task.BinarySegmentationTask`` (losses bce, dice,
  bce_dice, focal) and object-level metrics over whole validation images
  (``shared.objects.metrics``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch
from determined import pytorch as det_torch

from shared import determined_compat as compat
from shared import hparams as hpmod
from shared.objects.task import BINARY_LOSSES, BinaryLoss, BinarySegmentationTask, binary_input
from shared.hparams import INT, NUM, STR, Param
from shared.objects.metrics import ObjectMetrics
from shared.trial import RecipeTrial

log = logging.getLogger("shared.objects")

#: the shared keys this family reads, the very Param objects of shared.hparams.COMMON
_SHARED_KEYS = hpmod.FAMILY_KEYS + ("val_batch_size_per_slot",)
#: defaults that differ from segmentation's (same type and checks): the study's target is a
#: validation loss (0.6 there, for its own loss and data; the synthetic set's bce reaches
#: 0.05 in a few hundred batches at 64 px), with early stopping on it; L2 of the AdamW kind
#: at 1e-4; tiles are cheap, so periods are shorter than ADE20K's.
_DEFAULTS = {"weight_decay": 1e-4, "warmup_batches": 200, "max_batches": 20000,
             "validation_period": 500, "checkpoint_period": 500,
             "target_metric": "validation_loss", "target_value": 0.05, "early_stop_patience": 10,
             "val_batch_size_per_slot": 16}
_CHANGES = {
    **{k: {"default": v} for k, v in _DEFAULTS.items()},
    "data_dir": {"help": "data root (images/{training,validation}/<stem>.{png,tif,tiff,jpg} and "
                         "masks/{training,validation}/<stem>.png) as the task sees it"},
    "val_batch_size_per_slot": {"help": "tiles per forward pass when validating whole images "
                                        "and when mining"},
}


#: Hyperparameters of every binary-segmentation trial (``hparams.resolve``'s ``common``).
OBJECT_PARAMS: Dict[str, Param] = {
    **{k: dataclasses.replace(hpmod.COMMON[k], **_CHANGES[k]) if k in _CHANGES
       else hpmod.COMMON[k] for k in _SHARED_KEYS},
    "in_channels": Param(1, INT, choices=(1, 3),
                         help="image bands the network reads: 1 (colour images become luma) or 3 "
                              "(grey images are repeated)"),
    "tile_size": Param(256, INT, check=hpmod.between(16, hpmod.MAX_SIDE),
                       help="training and validation tile side, px"),
    "positive_fraction": Param(0.5, NUM, check=hpmod.between(0.0, 1.0),
                               help="share of each batch that are tiles holding an object at a "
                                    "random position inside the tile, the rest tiles without "
                                    "objects (0: no balancing, plain random tiles)"),
    "hard_negative_fraction": Param(0.25, NUM, check=hpmod.between(0.0, 1.0),
                                    help="share of each batch's negative tiles drawn from the mined "
                                         "hard-negative pool, once mining has filled it (0: no mining)"),
    "mine_period": Param(500, INT, check=hpmod.between(1, hpmod.MAX_BATCHES),
                         help="mine hard negatives every this many batches"),
    "mine_tiles": Param(256, INT, check=hpmod.between(1, 10 ** 6),
                        help="negative training tiles not sampled in the last mine_period batches "
                             "that each mining scores with the model"),
    "hard_negative_pool": Param(512, INT, check=hpmod.between(1, 10 ** 6),
                                help="most tiles the hard-negative pool keeps (highest scores)"),
    "loss": Param("bce", STR, choices=BINARY_LOSSES,
                  help="bce, dice, bce_dice (their sum) or focal (gamma focal_gamma)"),
    "pos_weight": Param(1.0, NUM, check=hpmod.between(0.0, 1e6, lo_open=True),
                        help="weight of object pixels in bce and focal"),
    "focal_gamma": Param(2.0, NUM, check=hpmod.between(0.0, 100.0), help="focal loss exponent"),
    "threshold": Param(0.5, NUM, check=hpmod.between(0.0, 1.0, lo_open=True, hi_open=True),
                       help="probability above which a pixel is object (iou, f1, object metrics)"),
    "object_iou": Param(0.1, NUM, check=hpmod.between(0.0, 1.0, lo_open=True),
                        help="IoU at which a predicted and a true object match (one-to-one)"),
    "ap_thresholds": Param(9, INT, check=hpmod.between(1, 10_000),
                           help="probability thresholds average_precision sweeps: i/(n+1), i=1..n"),
    "val_overlap": Param(0.25, NUM, check=lambda v: None if 0 <= v <= 0.9 else "must be in [0, 0.9]",
                         help="overlap of validation tiles, as a share of tile_size"),
    "val_stitch": Param("average", STR, choices=("average", "center"),
                        help="stitching of overlapping validation tiles: mean of the logits, or "
                             "each pixel from the tile whose centre is nearest"),
    "tile_cache_dir": Param(None, STR, nullable=True,
                            help="where decoded images are cached as .npy, a directory of your own (null: <tmp>/rare_objects_tiles-<uid>, mode 0700)"),
    "max_image_pixels": Param(10 ** 9, INT, check=hpmod.between(1, 10 ** 11),
                              help="largest image decoded, pixels (Pillow's decompression-bomb "
                                   "limit raised to it)"),
}

#: the custom group ``mining``, reported with each training report
MINING_GROUP = {
    "mining_s": "seconds spent mining hard negatives so far (rank 0)",
    "minings": "minings so far",
    "mined_tiles": "tiles scored by mining so far (all ranks)",
    "pool_size": "tiles in the hard-negative pool",
}


class BinarySegmentationTrial(RecipeTrial):
    """Subclasses set ``MODEL_NAME``, ``MODEL_PARAMS`` and implement ``build_model`` (a
    network with one output channel)."""

    MODEL_PARAMS: Mapping[str, Param] = {}
    COMMON_PARAMS: Mapping[str, Param] = OBJECT_PARAMS
    SHOWN_METRICS = ("object_recall", "false_positives_per_image")
    MODEL_NAME = "rare_objects"
    TRAINING_METRICS = {"loss": "training loss (hyperparameter loss)", "lr": "learning rate"}
    VALIDATION_METRICS = {
        "validation_loss": "the loss over whole validation images, mean per image (the target metric)",
        "iou": "pixel IoU of the object class, %",
        "f1": "pixel F1 (Dice) of the object class, %",
        "object_precision": "matched predicted objects / predicted objects, % (objects: connected "
                            "components, matched one-to-one at IoU >= object_iou)",
        "object_recall": "matched true objects / true objects, %",
        "object_f1": "harmonic mean of object precision and recall, %",
        "false_positives_per_image": "unmatched predicted objects per validation image",
        "average_precision": "area under the object precision-recall curve over ap_thresholds "
                             "probability thresholds, %",
        "validation_images": "whole images scored",
        "objects": "true objects in them",
    }
    SEARCHER_METRICS: Mapping[str, bool] = {
        "validation_loss": False, "iou": True, "f1": True, "object_precision": True,
        "object_recall": True, "object_f1": True, "false_positives_per_image": False,
        "average_precision": True, "energy_wh": False, "projected_energy_to_target_wh": False,
    }
    EXTRA_GROUPS = {"mining": MINING_GROUP}

    @classmethod
    def training_samples(cls, hp: Mapping[str, Any]) -> int:
        """Tile-sized cells of the training images (what ``--epochs`` counts as an epoch),
        from the image headers only."""
        from PIL import Image

        from shared.data.files import DataError
        from shared.data.tiles import find_tile_samples, pixel_limit
        pairs, _ = find_tile_samples(hp["data_dir"], "training", hp["skip_bad_samples"])
        t, cells = hp["tile_size"], 0
        with pixel_limit(hp["max_image_pixels"]):
            for image, _ in pairs:
                try:
                    with Image.open(image) as im:
                        cells += -(-im.height // t) * -(-im.width // t)
                except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
                    # a bad image is skipped (and counted) or named, as in the other families
                    if not hp["skip_bad_samples"]:
                        raise DataError(f"cannot read image {image}: {err} (corrupt or truncated "
                                        f"file?); set skip_bad_samples: true to skip it") from None
        return cells

    # ------------------------------------------------------------------ construction
    def prepare(self, hp: Mapping[str, Any]) -> None:
        from shared.data.tiles import TileStore

        if not hp["data_dir"]:
            raise hpmod.ConfigError("hyperparameter 'data_dir' is not set: pass --data-dir locally, "
                                    "or set hyperparameters.data_dir (a path inside the task container)")
        # One process per node decodes and caches the images; the node's other ranks then
        # find the cache. The local chief sends its error too, so that none waits forever.
        def build() -> Dict[str, TileStore]:
            return {s: TileStore(hp["data_dir"], s, hp["tile_cache_dir"], hp["in_channels"],
                                 hp["max_image_pixels"], hp["skip_bad_samples"])
                    for s in ("training", "validation")}
        dist = self.context.distributed
        if dist.local_size > 1:
            outcome: Any = None
            if dist.local_rank == 0:
                try:
                    stores, outcome = build(), "cached"
                except Exception as e:
                    outcome = e
            outcome = dist.broadcast_local(outcome)
            if isinstance(outcome, Exception):
                raise outcome
            if dist.local_rank != 0:
                stores = build()
        else:
            stores = build()
        self.stores = stores
        self.skipped_at_start = sum(len(s.skipped) for s in stores.values())
        for split, store in stores.items():  # every bad pair is found here, at the start
            self.track_skips(split, None, store.skipped)
        self.sampler = None
        self.mining = {"mining_s": 0.0, "minings": 0, "mined_tiles": 0, "pool_size": 0}
        self._energy: Any = None
        if self.context.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed tile sizes

    def build_task(self, hp: Mapping[str, Any]) -> BinarySegmentationTask:
        return BinarySegmentationTask(
            BinaryLoss(hp["loss"], hp["pos_weight"], hp["focal_gamma"]),
            ObjectMetrics(hp["threshold"], hp["object_iou"], hp["ap_thresholds"]),
            hp["tile_size"], hp["val_overlap"], hp["val_stitch"], hp["val_batch_size_per_slot"])

    def model_built(self, model: torch.nn.Module, hp: Mapping[str, Any]) -> None:
        # Mining runs the network itself, not the distributed wrapper: ranks score different
        # numbers of tiles, and a wrapped forward may synchronise buffers across ranks.
        self.network = model
        if self.context.distributed.rank == 0 and self.skipped_at_start:
            log.warning("skip_bad_samples: %d bad samples skipped", self.skipped_at_start)

    def describe(self) -> str:
        hp = self.hp
        return (f", {len(self.stores['training'].usable)} training / "
                f"{len(self.stores['validation'].usable)} validation images, tiles {hp['tile_size']} px, "
                f"positive_fraction {hp['positive_fraction']}, hard_negative_fraction "
                f"{hp['hard_negative_fraction']} every {hp['mine_period']} batches")

    metrics = property(lambda self: self.engine.task.metrics)

    # ------------------------------------------------------------------ data
    def build_training_data_loader(self) -> det_torch.DataLoader:
        from shared.data.tiles import BalancedTileSampler, TileDataset

        hp = self.hp
        images = self.stores["training"].images
        slots = self.context.distributed.size
        # One sampler per rank, all seeded alike: every rank draws the same batches and
        # Determined deals them out (rank r takes batches r, r + slots, ...), so "recent" is
        # counted in the sampler's batches, slots per training step.
        self.sampler = BalancedTileSampler(
            images, hp["tile_size"], self.context.get_per_slot_batch_size(), hp["positive_fraction"],
            hp["hard_negative_fraction"], hp["hard_negative_pool"], self.data_seed,
            recent_batches=hp["mine_period"] * slots)
        restored = ((self.restored or {}).get("data") or {})
        if restored.get("sampler"):
            # before the loader exists: its workers draw the first batches when it starts
            self.sampler.load_state_dict(restored["sampler"],
                                         int(self.restored["batches_trained"]) * slots)
            self.mining.update(restored.get("mining") or {})
        return det_torch.DataLoader(TileDataset(images, hp["tile_size"]), batch_sampler=self.sampler,
                                    **self._loader_kwargs())

    def build_validation_data_loader(self) -> det_torch.DataLoader:
        from shared.data.tiles import list_collate

        images = self.stores["validation"].images
        ranks = self.context.distributed.size
        if len(images) < ranks:
            raise hpmod.ConfigError(f"{self.hp['data_dir']}: {len(images)} validation images for "
                                    f"{ranks} slots; every slot needs at least one")
        # one whole image per batch (images differ in size); workers only hand over paths
        return det_torch.DataLoader(images, batch_size=1, shuffle=False, collate_fn=list_collate,
                                    num_workers=0)

    def data_state(self) -> Dict[str, Any]:
        return ({"sampler": self.sampler.state_dict(), "mining": dict(self.mining)}
                if self.sampler is not None else {})

    def get_batch_length(self, batch: Any) -> int:
        # a validation batch is a list of whole images (TiledImage), a training one tensors
        return len(batch) if isinstance(batch, list) and batch and not torch.is_tensor(batch[0]) \
            else super().get_batch_length(batch)

    # ------------------------------------------------------------------ mining
    def train_batch(self, batch: Any, epoch_idx: int, batch_idx: int) -> Dict[str, Any]:
        hp = self.hp
        if (hp["hard_negative_fraction"] > 0 and self.batches_trained > 0
                and self.batches_trained % hp["mine_period"] == 0 and self.sampler is not None):
            self.mine()
        return super().train_batch(batch, epoch_idx, batch_idx)

    @torch.no_grad()
    def score_tiles(self, cells: List[Tuple[int, int, int]]) -> List[float]:
        """Each negative tile's false-positive score: pixels at or above ``threshold`` plus
        the mean probability (ties among tiles with the same area go to the more confident)."""
        hp, engine = self.hp, self.engine
        images = self.stores["training"].images
        was_training = self.network.training
        self.network.eval()
        scores: List[float] = []
        try:
            step = hp["val_batch_size_per_slot"]
            for k in range(0, len(cells), step):
                tiles = np.stack([images[i].tile(y, x, hp["tile_size"]) for i, y, x in cells[k:k + step]])
                x_in = binary_input(torch.from_numpy(tiles).to(engine.device), engine.channels_last)
                with engine.autocast():
                    prob = torch.sigmoid(self.network(x_in)[:, 0].float())
                area = (prob >= hp["threshold"]).flatten(1).sum(1).float()
                scores += (area + prob.flatten(1).mean(1)).tolist()
        finally:
            self.network.train(was_training)
        return scores

    def mine(self) -> None:
        """Score candidate negative tiles (each rank its share), gather the scores on every
        rank and refill the hard-negative pool, as the ``mining`` energy phase."""
        start = time.monotonic()
        phase = self._energy.phase("mining") if self._energy is not None else contextlib.nullcontext()
        dist = self.context.distributed
        with phase:
            cells = self.sampler.mining_candidates(self.hp["mine_tiles"])
            mine = cells[dist.rank::dist.size]
            found = list(zip(mine, self.score_tiles(mine)))
            everyone = [p for part in dist.allgather(found) for p in part] if dist.size > 1 else found
            pool = self.sampler.add_hard_negatives([c for c, _ in everyone], [s for _, s in everyone])
        self.mining["mining_s"] += time.monotonic() - start
        self.mining["minings"] += 1
        self.mining["mined_tiles"] += len(everyone)
        self.mining["pool_size"] = pool

    # ------------------------------------------------------------------ hooks
    def build_callbacks(self) -> Dict[str, det_torch.PyTorchCallback]:
        callbacks = super().build_callbacks()
        self._energy = callbacks.get("energy")
        callbacks["mining"] = _MiningCallback(self)
        return callbacks


class _MiningCallback(det_torch.PyTorchCallback):
    """Reports the ``mining`` group (time, count, tiles, pool size) with each training report."""

    def __init__(self, trial: BinarySegmentationTrial) -> None:
        self.trial = trial

    def on_training_workload_end(self, avg_metrics: Dict[str, Any], batch_metrics: Any) -> None:
        t = self.trial
        if t.context.distributed.rank == 0 and t.hp["hard_negative_fraction"] > 0:
            compat.report_group(t.context, "mining", t.batches_trained,
                                {**t.mining, "mining_s": round(t.mining["mining_s"], 3)})
