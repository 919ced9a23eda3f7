"""``ClassificationTrial``: the Determined PyTorchTrial behind ``trials/image_classification``.

The classification counterpart of ``shared.trial.SegmentationTrial``: both derive from
``shared.trial.RecipeTrial`` and run ``shared.engine.Engine`` (precision, the optimiser, the
warm-up + poly schedule with the linear scaling rule, the step itself), time to target, the
``run`` group and the energy hook. What is its own: ImageFolder data, cross-entropy on class
labels (``shared.classification.task.ClassificationTask``), exact accuracy over the whole validation set
(``AccuracyReducer``), and the ``resources`` group (source document 001).
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Dict, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from determined import pytorch as det_torch

from shared import hparams as hpmod
from shared import runlog
from shared.classification import data as cdata
from shared.classification.resources import RESOURCES_GROUP, ResourceCallback
from shared.data.sampling import SeededSampler
from shared.data.skips import log_problems
from shared.hparams import BOOL, INT, NUM, STR, Param
from shared.classification.task import ClassificationTask
from shared.tensorboard_scalars import add_scalars
from shared.trial import RecipeTrial

log = logging.getLogger("shared.classification")

#: the shared keys this family reads, the very Param objects of shared.hparams.COMMON
_SHARED_KEYS = hpmod.FAMILY_KEYS
#: defaults that differ from segmentation's (same type and checks): 001's optimiser, SGD with
#: momentum, needs an L2 weight decay of the SGD kind (1e-4, torchvision's ImageNet recipe),
#: not AdamW's decoupled 0.01; and classification runs are shorter than ADE20K's 160k batches.
_DEFAULTS = {"optimizer": "sgd", "weight_decay": 1e-4, "warmup_batches": 500, "max_batches": 20000,
             "validation_period": 500, "checkpoint_period": 2000,
             "target_metric": "accuracy", "target_value": 90.0,
             # fixed input sizes: cuDNN times its algorithms once and keeps the fastest
             "cudnn_benchmark": True}
#: what else differs from segmentation's Params: the meaning of the data keys
_CHANGES = {
    **{k: {"default": v} for k, v in _DEFAULTS.items()},
    "data_dir": {"help": "dataset root (train/<class>/*.jpg, optionally val/<class>/*.jpg) as the "
                         "task sees it: bind-mount it on a cluster, --data-dir locally"},
}


#: Hyperparameters of every classification trial (passed to ``hparams.resolve`` as ``common``).
CLASSIFICATION_PARAMS: Dict[str, Param] = {
    **{k: dataclasses.replace(hpmod.COMMON[k], **_CHANGES[k]) if k in _CHANGES
       else hpmod.COMMON[k] for k in _SHARED_KEYS},
    "arch": Param("resnet50", STR, help="network name (trials/image_classification/model.py)"),
    "num_classes": Param(3, INT, check=hpmod.between(2, 100_000),
                         help="classes: the class directories of <data_dir>/train (sorted names "
                              "give the indices)"),
    "image_size": Param(224, INT, check=hpmod.between(16, hpmod.MAX_SIDE),
                        help="square input side: 224 (001), 512 (004)"),
    "augment": Param(True, BOOL, help="random resized crop + flip; false: resize + centre crop"),
    "val_fraction": Param(0.1, NUM, check=hpmod.between(0.0, 1.0, hi_open=True),
                          help="share of each class of train/ held out when there is no val/"),
    "freeze_backbone": Param(False, BOOL, help="train the classifier head only"),
    "grad_checkpointing": Param(False, BOOL, help="recompute activations in backward"),
    "label_smoothing": Param(0.0, NUM, check=hpmod.between(0.0, 1.0, hi_open=True),
                             help="label smoothing of the training loss (validation_loss is plain "
                                  "cross-entropy)"),
    "target_accuracy": Param(None, NUM, nullable=True,
                             check=lambda v: None if 0 < v <= 100 else "must be in (0, 100]",
                             help="legacy form of target_metric: accuracy + target_value (kept for "
                                  "existing configs)"),
}


class AccuracyReducer(det_torch.MetricReducer):
    """Exact validation metrics over the whole set, summed across ranks.

    Each rank counts, per class, its samples and its correct top-1 predictions, the samples
    whose label is among the top ``k`` logits, and the summed cross-entropy; Determined
    allgathers the counts and every rank derives the metrics from the totals. Per-batch
    averages (Determined's default reducer) would weigh a short last batch as much as a full
    one, and a rank with fewer batches as much as the others.
    """

    def __init__(self, num_classes: int, topk: int = 5) -> None:
        self.num_classes = num_classes
        #: 5, or every class when there are fewer: top-5 of 3 classes is always 100%
        self.k = min(topk, num_classes)
        self.reset()
        #: the last reduced result with per-class accuracy (for the local metrics file)
        self.last: Optional[Dict[str, Any]] = None

    def reset(self) -> None:
        # Accumulated on the logits' device and read once per validation: no host sync per batch.
        self.total: Optional[torch.Tensor] = None
        self.correct: Optional[torch.Tensor] = None
        self.topk_correct: Optional[torch.Tensor] = None
        self.loss_sum: Optional[torch.Tensor] = None

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Count one batch: ``logits`` (B, num_classes), ``labels`` (B,) class indices."""
        if logits.ndim != 2 or logits.shape[1] != self.num_classes or labels.shape != logits.shape[:1]:
            raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} do not "
                             f"match (B, {self.num_classes}) and (B,)")
        logits = logits.float()
        hit = logits.argmax(1) == labels
        # scatter_add, not bincount or labels[hit]: both read a value back on a GPU (the
        # maximum, the selection's size), a wait for the GPU per validation batch
        zeros = labels.new_zeros(self.num_classes)
        counts = (zeros.scatter_add(0, labels, torch.ones_like(labels)),
                  zeros.scatter_add(0, labels, hit.long()),
                  (logits.topk(self.k, dim=1).indices == labels[:, None]).any(1).sum(),
                  F.cross_entropy(logits, labels, reduction="sum").double())
        if self.total is None:
            self.total, self.correct, self.topk_correct, self.loss_sum = counts
        else:
            self.total += counts[0]
            self.correct += counts[1]
            self.topk_correct += counts[2]
            self.loss_sum += counts[3]

    def per_slot_reduce(self) -> Dict[str, Any]:
        if self.total is None:  # a rank that saw no validation batch contributes nothing
            zeros = np.zeros(self.num_classes, dtype=np.int64)
            return {"total": zeros, "correct": zeros, "topk_correct": 0, "loss_sum": 0.0}
        return {"total": self.total.cpu().numpy(), "correct": self.correct.cpu().numpy(),
                "topk_correct": int(self.topk_correct), "loss_sum": float(self.loss_sum)}

    def cross_slot_reduce(self, per_slot_metrics: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
        total = np.sum([m["total"] for m in per_slot_metrics], axis=0)
        correct = np.sum([m["correct"] for m in per_slot_metrics], axis=0)
        n = int(total.sum())
        if n == 0:
            raise RuntimeError("validation saw no sample")
        present = total > 0
        per_class = np.where(present, correct / np.maximum(total, 1), np.nan) * 100
        self.last = {"per_class_accuracy": [None if np.isnan(v) else round(float(v), 4) for v in per_class],
                     "per_class_samples": total.tolist()}
        return {
            "accuracy": float(correct.sum() / n * 100),
            "top5_accuracy": float(sum(m["topk_correct"] for m in per_slot_metrics) / n * 100),
            # balanced accuracy: the mean of per-class recall over the classes present
            "mean_class_accuracy": float(np.nanmean(per_class)),
            "validation_loss": float(sum(m["loss_sum"] for m in per_slot_metrics) / n),
            "validation_samples": n,
        }


class ClassificationTrial(RecipeTrial):
    """Subclasses set ``MODEL_NAME`` and implement ``build_model`` (and ``data_config`` when
    pre-trained weights need their own normalisation)."""

    MODEL_PARAMS: Mapping[str, Param] = {}
    COMMON_PARAMS: Mapping[str, Param] = CLASSIFICATION_PARAMS
    SHOWN_METRICS = ("accuracy", "top5_accuracy")
    MODEL_NAME = "image_classification"
    TRAINING_METRICS = {"loss": "training loss (cross-entropy, with label_smoothing)",
                        "lr": "learning rate"}
    VALIDATION_METRICS = {
        "accuracy": "top-1 accuracy over the whole validation set, % (the searcher metric)",
        "top5_accuracy": "% of samples whose label is among the min(5, num_classes) largest logits",
        "mean_class_accuracy": "mean over the classes present of the per-class recall, % "
                               "(balanced accuracy)",
        "validation_loss": "summed cross-entropy / samples",
        "validation_samples": "samples scored (every image exactly once)",
    }
    EXTRA_GROUPS = {"resources": RESOURCES_GROUP}
    SEARCHER_METRICS: Mapping[str, bool] = {
        "accuracy": True, "top5_accuracy": True, "mean_class_accuracy": True,
        "validation_loss": False, "energy_wh": False, "projected_energy_to_target_wh": False,
    }

    @classmethod
    def training_samples(cls, hp: Mapping[str, Any]) -> int:
        """Training images of the ImageFolder set (for ``--epochs`` on the command line)."""
        return len(cdata.load_splits(hp["data_dir"], hp["num_classes"], hp["val_fraction"],
                                     hp["seed"], hp["skip_bad_samples"]).train)

    def data_config(self, model: torch.nn.Module, hp: Mapping[str, Any]) -> Dict[str, Any]:
        """Input normalisation and evaluation resize (``mean``, ``std``, ``interpolation``,
        ``crop_pct``, ``crop_mode``, as ``shared.classification.data``'s transforms take them):
        ImageNet's by default."""
        return {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
                "interpolation": "bilinear", "crop_pct": 0.875, "crop_mode": "center"}

    # ------------------------------------------------------------------ construction
    def prepare(self, hp: Mapping[str, Any]) -> None:
        # The data is scanned and checked before the model is built: a wrong num_classes or an
        # empty class directory fails in a second, not after building a 200M-parameter network.
        self.splits = self._load_splits()

    def build_model(self, hp: Mapping[str, Any]) -> torch.nn.Module:
        raise NotImplementedError

    def build_task(self, hp: Mapping[str, Any]) -> ClassificationTask:
        return ClassificationTask(AccuracyReducer(hp["num_classes"]), hp["label_smoothing"])

    def model_built(self, model: torch.nn.Module, hp: Mapping[str, Any]) -> None:
        self.trainable_parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
        self.data_cfg = self.data_config(model, hp)
        # The run group's "model" names the architecture, so that runs of one recipe over
        # several networks compare by network; the class attribute, read by the launcher,
        # keeps naming the recipe (output directories, --help).
        self.MODEL_NAME = hp["arch"]

    def describe(self) -> str:
        hp = self.hp
        return (f" ({self.trainable_parameters / 1e6:.2f}M trainable), {hp['num_classes']} classes, "
                f"{hp['image_size']} px, validation on {self.splits.val_source}")

    accuracy = property(lambda self: self.engine.task.accuracy)

    def _load_splits(self) -> cdata.Splits:
        hp = self.hp
        if not hp["data_dir"]:
            raise hpmod.ConfigError("hyperparameter 'data_dir' is not set: pass --data-dir locally, "
                                    "or set hyperparameters.data_dir (a path inside the task container)")
        # One listing per node, shared with the node's other ranks: 8 ranks each stat-ing every
        # file of a large set on a network file system would multiply the metadata load by 8.
        # The local chief sends its error too, so that no rank waits for a listing that failed.
        dist = self.context.distributed
        outcome: Any = None
        if dist.local_rank == 0:
            try:
                outcome = cdata.load_splits(hp["data_dir"], hp["num_classes"], hp["val_fraction"],
                                            hp["seed"], hp["skip_bad_samples"])
            except Exception as e:
                outcome = e
        outcome = dist.broadcast_local(outcome)
        if isinstance(outcome, Exception):
            raise outcome
        if dist.local_rank == 0:
            log_problems(log, outcome.skipped)
        return outcome

    # ------------------------------------------------------------------ data
    def build_training_data_loader(self) -> det_torch.DataLoader:
        hp, cfg = self.hp, self.data_cfg
        tf = cdata.build_train_transform(hp["image_size"], cfg["mean"], cfg["std"], hp["augment"],
                                         cfg["interpolation"], cfg["crop_pct"], cfg["crop_mode"])
        ds = cdata.ImageFolderDataset(self.splits.train, tf, hp["skip_bad_samples"],
                                      name=f"{hp['data_dir']}/train")
        self._check_training_set(len(ds))
        self.track_skips("training", ds.bad, self.splits.skipped)
        # drop_last keeps every step at the configured batch (BatchNorm statistics, lr scaling);
        # the order and the augmentation follow the trial seed (resume = uninterrupted run)
        return det_torch.DataLoader(ds, batch_size=self.context.get_per_slot_batch_size(),
                                    sampler=SeededSampler(len(ds), self.data_seed),
                                    drop_last=True, **self._loader_kwargs())

    def build_validation_data_loader(self) -> det_torch.DataLoader:
        hp, cfg = self.hp, self.data_cfg
        tf = cdata.build_eval_transform(hp["image_size"], cfg["mean"], cfg["std"], cfg["interpolation"],
                                        cfg["crop_pct"], cfg["crop_mode"])
        ds = cdata.ImageFolderDataset(self.splits.val, tf, hp["skip_bad_samples"],
                                      name=f"{hp['data_dir']} validation ({self.splits.val_source})")
        self.track_skips("validation", ds.bad)
        ranks = self.context.distributed.size
        if len(ds) < ranks:
            raise hpmod.ConfigError(f"{hp['data_dir']}: {len(ds)} validation images for {ranks} slots; "
                                    f"every slot needs at least one")
        # Determined deals validation batches round-robin to the ranks without padding, and a
        # rank that gets no batch fails ("validation_loader is empty"): with few images and many
        # slots, smaller batches give every rank one. The counts stay exact either way.
        batch = max(1, min(self.context.get_per_slot_batch_size(), len(ds) // ranks))
        return det_torch.DataLoader(ds, batch_size=batch, shuffle=False, **self._loader_kwargs())

    def write_local_details(self) -> None:
        """Per-class accuracy of the last validation: to the local metrics file
        (``per_class_accuracy``, ``acc/<class>``) and to TensorBoard
        (``per_class_accuracy/<class>``)."""
        last = self.accuracy.last
        if last is not None:
            values = dict(zip(self.splits.classes, last["per_class_accuracy"]))
            runlog.write_extra("per_class_accuracy", self.batches_trained,
                               {f"acc/{name}": v for name, v in values.items()})
            add_scalars(self.context, "per_class_accuracy", self.batches_trained, values)

    # ------------------------------------------------------------------ hooks
    def build_callbacks(self) -> Dict[str, det_torch.PyTorchCallback]:
        callbacks = super().build_callbacks()
        callbacks["resources"] = ResourceCallback(self.context, steps_completed=lambda: self.batches_trained)
        return callbacks
