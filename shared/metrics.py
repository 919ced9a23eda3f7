"""Segmentation metrics from one confusion matrix over the whole validation set.

mIoU averaged per batch is biased (a batch with few pixels of a class weighs as much as a
batch with many), so the matrix is accumulated over every pixel of every image, summed over
ranks, and the metrics are derived once from the total, as MMSegmentation and torchvision's
reference scripts do.
"""
from __future__ import annotations

from typing import Any, Dict, List, Sequence

import numpy as np
import torch
from determined import pytorch as det_torch


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int = 255) -> torch.Tensor:
    """(num_classes, num_classes) int64 matrix, rows = ground truth, columns = prediction.

    Pixels whose target is ``ignore_index`` are left out. ``bincount`` over the flattened
    pair index keeps it a single kernel on the GPU.
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    keep = target != ignore_index
    t = target[keep].long()
    p = pred[keep].long()
    if t.numel() and int(t.max()) >= num_classes:
        raise ValueError(f"target holds class {int(t.max())} but num_classes is {num_classes}")
    idx = t * num_classes + p
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def summarize(matrix: np.ndarray) -> Dict[str, Any]:
    """Metrics (percent) from a confusion matrix.

    A class absent from both ground truth and predictions has no IoU (union 0) and is left
    out of the mean; a class that is predicted but absent from the ground truth has IoU 0 and
    counts. ``mean_accuracy`` averages per-class recall over the classes present in the ground
    truth. ``per_class_iou`` holds None for classes left out.
    """
    m = np.asarray(matrix, dtype=np.float64)
    tp = np.diag(m)
    gt = m.sum(axis=1)
    pr = m.sum(axis=0)
    union = gt + pr - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        acc = np.where(gt > 0, tp / gt, np.nan)
    total = gt.sum()
    return {
        "miou": float(np.nanmean(iou) * 100) if np.isfinite(iou).any() else 0.0,
        "pixel_accuracy": float(tp.sum() / total * 100) if total > 0 else 0.0,
        "mean_accuracy": float(np.nanmean(acc) * 100) if np.isfinite(acc).any() else 0.0,
        "per_class_iou": [None if np.isnan(v) else round(float(v) * 100, 4) for v in iou],
    }


class ConfusionMatrix(det_torch.MetricReducer):
    """A Determined reducer: each rank accumulates its matrix on its device, Determined
    allgathers the per-rank matrices and every rank sums them (``cross_slot_reduce``)."""

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix: torch.Tensor | None = None
        #: the last reduced result with per-class IoU (kept for the local metrics file)
        self.last: Dict[str, Any] | None = None

    def reset(self) -> None:
        self.matrix = None

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        cm = confusion_matrix(pred, target, self.num_classes, self.ignore_index)
        self.matrix = cm if self.matrix is None else self.matrix + cm

    def per_slot_reduce(self) -> np.ndarray:
        if self.matrix is None:  # a rank that saw no validation batch contributes nothing
            return np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        return self.matrix.cpu().numpy()

    def cross_slot_reduce(self, per_slot_metrics: Sequence[np.ndarray]) -> Dict[str, Any]:
        total = np.sum(np.stack(list(per_slot_metrics)), axis=0)
        self.last = summarize(total)
        # Determined's validation metrics must be scalars for the WebUI; per-class IoU is
        # kept on the reducer and written to the local metrics file by the trial.
        return {k: v for k, v in self.last.items() if k != "per_class_iou"}


def per_class_dict(per_class_iou: List[float | None], class_names: Sequence[str] | None = None) -> Dict[str, Any]:
    """{"iou/<name>": value} for the local metrics file; names default to class indices."""
    names = list(class_names) if class_names else [str(i) for i in range(len(per_class_iou))]
    return {f"iou/{n}": v for n, v in zip(names, per_class_iou)}
