"""Rare small objects in large images (binary segmentation): the trial family base
(``trial.BinarySegmentationTrial``) and object-level metrics (``metrics``). The data is in
``shared.data.tiles`` and ``shared.data.synthetic_rare``, the step in ``shared.engine``
(``BinarySegmentationTask``).

Names are imported on first use, so that the metrics load without Determined's trial
machinery.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BinarySegmentationTrial": "trial", "OBJECT_PARAMS": "trial", "MINING_GROUP": "trial",
    "ObjectMetrics": "metrics", "label_components": "metrics", "match_objects": "metrics",
    "average_precision": "metrics",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
