"""The classification family's task on the engine (``shared.engine.Engine``): normalised
float images and class labels, cross-entropy with optional label smoothing, validation into an
exact whole-set reducer."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import torch
import torch.nn.functional as F

if TYPE_CHECKING:  # annotations only
    from shared.engine import Engine, Runtime

__all__ = ["ClassificationTask"]


class ClassificationTask:
    """Image classification: normalised float images and class labels from the loader,
    cross-entropy with optional label smoothing; validation into an exact whole-set reducer
    (``shared.classification.trial.AccuracyReducer``, given by the trial)."""

    def __init__(self, accuracy_reducer: Any, label_smoothing: float = 0.0) -> None:
        self._reducer = accuracy_reducer
        self.label_smoothing = float(label_smoothing)
        self.accuracy: Any = None

    def attach(self, runtime: Runtime) -> None:
        self.accuracy = runtime.wrap_reducer(self._reducer, name=None, for_training=False)

    def training_loss(self, engine: "Engine", batch: Sequence[torch.Tensor]) -> torch.Tensor:
        images, labels, skipped = engine.to_device(*batch)
        engine.count_skipped(skipped)
        with engine.autocast():
            logits = engine.forward(engine.prepare(images))
        return F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing)

    def evaluate(self, engine: "Engine", batch: Sequence[torch.Tensor]) -> None:
        images, labels, skipped = engine.to_device(*batch)
        engine.count_skipped(skipped)
        with engine.autocast():
            logits = engine.eval_forward(engine.prepare(images))
        # Every validation metric comes from the reducer (exact over the set); none per batch.
        self.accuracy.update(logits, labels)
