"""Rare small objects in large images (binary segmentation): the trial family base
(``trial.BinarySegmentationTrial``), its task on the engine (``task.BinarySegmentationTask``)
and object-level metrics (``metrics``). The data is in ``shared.data.tiles``,
``shared.data.components`` and ``shared.data.synthetic_rare``.

Names are imported on first use, so that the metrics load without Determined's trial
machinery.
"""
from __future__ import annotations

from shared.lazy import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "BinarySegmentationTrial": "trial", "OBJECT_PARAMS": "trial", "MINING_GROUP": "trial",
    "BinarySegmentationTask": "task", "BinaryLoss": "task",
    "ObjectMetrics": "metrics", "match_objects": "metrics",
    "average_precision": "metrics",
})
