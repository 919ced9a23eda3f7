"""Object-level metrics of binary segmentation: connected components, one-to-one matching of
predicted and ground-truth objects, and a reducer that sums counts over the whole validation
set and every rank (``ObjectMetrics``).

The connected components themselves are ``shared.data.components`` (the tile sampler finds
the same objects).
"""
from __future__ import annotations

from typing import Any, Dict, Sequence, Tuple

import numpy as np
import torch

from shared.data.components import label_components

__all__ = ["match_objects", "average_precision", "ObjectMetrics",
           "ap_thresholds"]


def match_objects(gt: np.ndarray, n_gt: int, pred: np.ndarray, n_pred: int,
                  min_iou: float) -> int:
    """Matched pairs of ground-truth and predicted components (label images as
    ``label_components`` gives them), one-to-one at IoU >= ``min_iou``: pairs are taken
    greedily by decreasing IoU, each component at most once. True positives = the return
    value; false positives = n_pred - it; false negatives = n_gt - it."""
    if n_gt == 0 or n_pred == 0:
        return 0
    both = (gt > 0) & (pred > 0)
    pairs = gt[both].astype(np.int64) * (n_pred + 1) + pred[both]
    if pairs.size == 0:
        return 0
    keys, inter = np.unique(pairs, return_counts=True)
    g, p = keys // (n_pred + 1), keys % (n_pred + 1)
    gt_area = np.bincount(gt.reshape(-1), minlength=n_gt + 1)
    pred_area = np.bincount(pred.reshape(-1), minlength=n_pred + 1)
    iou = inter / (gt_area[g] + pred_area[p] - inter)
    order = np.argsort(-iou, kind="stable")
    used_g, used_p, matched = set(), set(), 0
    for i in order:
        if iou[i] < min_iou:
            break
        if g[i] in used_g or p[i] in used_p:
            continue
        used_g.add(g[i])
        used_p.add(p[i])
        matched += 1
    return matched


def ap_thresholds(n: int) -> np.ndarray:
    """The probability thresholds of ``average_precision``: i / (n + 1), i = 1..n."""
    return np.arange(1, n + 1) / (n + 1)


def average_precision(tp: Sequence[float], fp: Sequence[float], fn: Sequence[float]) -> float:
    """Area under the object precision-recall curve swept by the thresholds, in percent:
    points sorted by recall, precision made monotone (the maximum at any higher recall), and
    summed over the recall steps from 0 (the all-points rule of PASCAL VOC 2010+)."""
    tp, fp, fn = (np.asarray(x, dtype=np.float64) for x in (tp, fp, fn))
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = np.where(tp + fn > 0, tp / (tp + fn), 0.0)
        precision = np.where(tp + fp > 0, tp / (tp + fp), 1.0)
    order = np.argsort(recall, kind="stable")
    r = np.concatenate([[0.0], recall[order]])
    p = np.concatenate([[1.0 if len(order) == 0 else precision[order][0]], precision[order]])
    p = np.maximum.accumulate(p[::-1])[::-1]
    return float(np.sum((r[1:] - r[:-1]) * p[1:]) * 100)


def _ratio(num: float, den: float) -> float:
    return float(num / den * 100) if den > 0 else 0.0


class ObjectMetrics:
    """Validation metrics of binary segmentation over whole images, in Determined's
    MetricReducer shape (reset, per_slot_reduce, cross_slot_reduce; registered as one by
    ``shared.determined_compat``): each rank adds its images' counts, Determined allgathers
    them and every rank derives the metrics from the sums.

    ``update(prob, mask, loss)`` takes one whole image: probabilities (H, W) in [0, 1], the
    ground truth (H, W) bool, and the image's mean loss. Pixel ``iou`` and ``f1`` and the
    object metrics are taken at ``threshold``; ``average_precision`` sweeps ``ap_count``
    thresholds (``ap_thresholds``).
    """

    def __init__(self, threshold: float = 0.5, object_iou: float = 0.1, ap_count: int = 9) -> None:
        self.threshold = float(threshold)
        self.object_iou = float(object_iou)
        self.ap = ap_thresholds(ap_count)
        self.reset()

    def reset(self) -> None:
        self.loss_sum = 0.0
        self.images = 0
        self.pixels = np.zeros(3, dtype=np.int64)          # tp, fp, fn at threshold
        self.objects = np.zeros(3, dtype=np.int64)         # tp, fp, fn at threshold
        self.sweep = np.zeros((len(self.ap), 3), dtype=np.int64)

    @staticmethod
    def _object_counts(pred: np.ndarray, gt: np.ndarray, n_gt: int, min_iou: float) -> np.ndarray:
        pl, n_pred = label_components(pred)
        tp = match_objects(gt, n_gt, pl, n_pred, min_iou)
        return np.array([tp, n_pred - tp, n_gt - tp], dtype=np.int64)

    def update(self, prob: torch.Tensor | np.ndarray, mask: torch.Tensor | np.ndarray,
               loss: float) -> None:
        prob = prob.detach().float().cpu().numpy() if isinstance(prob, torch.Tensor) else np.asarray(prob)
        gt_mask = (mask.cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)) > 0
        pred = prob >= self.threshold
        self.pixels += [np.count_nonzero(pred & gt_mask), np.count_nonzero(pred & ~gt_mask),
                        np.count_nonzero(~pred & gt_mask)]
        gt, n_gt = label_components(gt_mask)
        self.objects += self._object_counts(pred, gt, n_gt, self.object_iou)
        for i, t in enumerate(self.ap):
            self.sweep[i] += self._object_counts(prob >= t, gt, n_gt, self.object_iou)
        self.loss_sum += float(loss)
        self.images += 1

    def per_slot_reduce(self) -> Dict[str, Any]:
        return {"loss_sum": self.loss_sum, "images": self.images, "pixels": self.pixels.copy(),
                "objects": self.objects.copy(), "sweep": self.sweep.copy()}

    def cross_slot_reduce(self, per_slot: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
        images = sum(s["images"] for s in per_slot)
        if images == 0:
            raise RuntimeError("validation saw no image")
        ptp, pfp, pfn = np.sum([s["pixels"] for s in per_slot], axis=0)
        otp, ofp, ofn = np.sum([s["objects"] for s in per_slot], axis=0)
        sweep = np.sum([s["sweep"] for s in per_slot], axis=0)
        precision, recall = _ratio(otp, otp + ofp), _ratio(otp, otp + ofn)
        return {
            "validation_loss": sum(s["loss_sum"] for s in per_slot) / images,
            "iou": _ratio(ptp, ptp + pfp + pfn),
            "f1": _ratio(2 * ptp, 2 * ptp + pfp + pfn),
            "object_precision": precision,
            "object_recall": recall,
            "object_f1": _ratio(2 * otp, 2 * otp + ofp + ofn),
            "false_positives_per_image": float(ofp / images),
            "average_precision": average_precision(sweep[:, 0], sweep[:, 1], sweep[:, 2]),
            "validation_images": int(images),
            "objects": int(otp + ofn),
        }
