"""Image classification recipes: ImageFolder data, the classification trial base, resource
usage recording, a synthetic data generator (``python -m shared.classification.synthetic``).

Names are imported on first use, so that ``python -m shared.classification.synthetic`` does not
find its module already imported by the package (runpy warns about that) and the data helpers
load without Determined's trial machinery.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CLASSIFICATION_PARAMS": "trial", "AccuracyReducer": "trial", "ClassificationTrial": "trial",
    "ImageFolderDataset": "data", "Splits": "data", "load_splits": "data",
    "build_train_transform": "data", "build_eval_transform": "data",
    "ResourceCallback": "resources", "ResourceSampler": "resources", "saved_tensor_bytes": "resources",
    "generate": "synthetic",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
