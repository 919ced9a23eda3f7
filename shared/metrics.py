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

from shared.data.labels import IGNORE_INDEX


def pair_counts(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """(num_classes**2 + 1,) int64 counts of ``target * num_classes + pred`` over the pixels,
    ignored pixels left out; the last bin counts pixels whose target is neither a class nor
    ``ignore_index`` (a label the data set should not hold).

    Written to queue on the GPU without waiting for it: no boolean selection (whose size the
    host must read), no ``bincount`` (which reads the maximum on CUDA), no checks that read a
    value. Validation runs one image at a time, so a wait here would be one per image.
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    n = num_classes
    t, p = target.reshape(-1).long(), pred.reshape(-1).long()
    idx = torch.where(t < n, t * n + p, n * n)            # out-of-range targets -> last bin
    idx = torch.where(t == ignore_index, n * n + 1, idx)  # ignored -> a bin dropped below
    counts = torch.zeros(n * n + 2, dtype=torch.int64, device=idx.device)
    return counts.scatter_add_(0, idx, torch.ones_like(idx))[:-1]


def _check_targets(counts: torch.Tensor, num_classes: int, where: str) -> None:
    bad = int(counts[-1])
    if bad:
        raise ValueError(f"{where}: {bad} pixels hold a class >= num_classes ({num_classes}) that "
                         f"is not the ignore index; is num_classes wrong for this data set?")


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """(num_classes, num_classes) int64 matrix, rows = ground truth, columns = prediction.

    Pixels whose target is ``ignore_index`` are left out; a target outside the classes raises
    ValueError naming it (reading the counts back, so on a GPU this waits for them)."""
    counts = pair_counts(pred, target, num_classes, ignore_index)
    if int(counts[-1]):
        t = target[(target != ignore_index) & (target >= num_classes)]
        raise ValueError(f"target holds class {int(t.max())} but num_classes is {num_classes}")
    return counts[:-1].reshape(num_classes, num_classes)


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


class ConfusionMatrix:
    """A reducer in Determined's MetricReducer shape (reset, per_slot_reduce,
    cross_slot_reduce; registered as one in ``shared.determined_compat``, so that this module
    and the engine stay free of Determined): each rank accumulates its matrix on its device,
    Determined allgathers the per-rank matrices and every rank sums them."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix: torch.Tensor | None = None
        #: the last reduced result with per-class IoU (kept for the local metrics file)
        self.last: Dict[str, Any] | None = None

    def reset(self) -> None:
        self.matrix = None

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        # Counts stay on the device, with the out-of-range bin checked once per validation
        # (per_slot_reduce) rather than read per image.
        cm = pair_counts(pred, target, self.num_classes, self.ignore_index)
        self.matrix = cm if self.matrix is None else self.matrix + cm

    def per_slot_reduce(self) -> np.ndarray:
        n = self.num_classes
        if self.matrix is None:  # a rank that saw no validation batch contributes nothing
            return np.zeros((n, n), dtype=np.int64)
        counts = self.matrix.cpu()
        _check_targets(counts, n, "validation labels")
        return counts[:-1].reshape(n, n).numpy()

    def cross_slot_reduce(self, per_slot_metrics: Sequence[np.ndarray]) -> Dict[str, Any]:
        total = np.sum(np.stack(list(per_slot_metrics)), axis=0)
        self.last = summarize(total)
        # Determined's validation metrics must be scalars for the WebUI; per-class IoU is
        # kept on the reducer and written to the local metrics file by the trial.
        return {k: v for k, v in self.last.items() if k != "per_class_iou"}


class DeviceMean:
    """Mean of one scalar tensor per batch (the training loss), summed on the device; a
    reducer in Determined's MetricReducer shape, like ``ConfusionMatrix``.

    Returning the loss tensor from ``train_batch`` would make Determined copy it to the host
    after every batch, and that copy waits for the whole step to finish: the host could never
    queue the next step while the GPU works. Here each batch adds one on-device addition; the
    host reads the sum once per report (``per_slot_reduce``), and the mean is over all ranks'
    batches.
    """

    def __init__(self) -> None:
        self.total: torch.Tensor | None = None
        self.count = 0

    def reset(self) -> None:
        self.total, self.count = None, 0

    def update(self, value: torch.Tensor) -> None:
        value = value.detach().float()
        self.total = value if self.total is None else self.total + value
        self.count += 1

    def per_slot_reduce(self) -> tuple[float, int]:
        return (0.0 if self.total is None else float(self.total), self.count)

    def cross_slot_reduce(self, per_slot_metrics: Sequence[tuple[float, int]]) -> float:
        total = sum(t for t, _ in per_slot_metrics)
        count = sum(c for _, c in per_slot_metrics)
        # a report always follows at least one batch; nan (not 0) if that ever changes
        return total / count if count else float("nan")


class DeviceSum:
    """A count or sum of one scalar tensor per batch (a bool counts 0 or 1), kept on the device
    and read once per report like ``DeviceMean``; summed over the period's batches and all
    ranks (an int when every value was)."""

    def __init__(self) -> None:
        self.total: torch.Tensor | None = None

    def reset(self) -> None:
        self.total = None

    def update(self, value: torch.Tensor) -> None:
        value = value.detach()
        value = value.long() if value.dtype == torch.bool else value
        self.total = value if self.total is None else self.total + value

    def per_slot_reduce(self) -> float | int:
        return 0 if self.total is None else self.total.item()

    def cross_slot_reduce(self, per_slot_metrics: Sequence[float | int]) -> float | int:
        return sum(per_slot_metrics)


def per_class_dict(per_class_iou: List[float | None], class_names: Sequence[str] | None = None) -> Dict[str, Any]:
    """{"iou/<name>": value} for the local metrics file; names default to class indices."""
    names = list(class_names) if class_names else [str(i) for i in range(len(per_class_iou))]
    return {f"iou/{n}": v for n, v in zip(names, per_class_iou)}
