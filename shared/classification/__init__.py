"""Image classification recipes: ImageFolder data, the classification trial base, resource
usage recording, a synthetic data generator (``python -m shared.classification.synthetic``).

Names are imported on first use, so that ``python -m shared.classification.synthetic`` does not
find its module already imported by the package (runpy warns about that) and the data helpers
load without Determined's trial machinery.
"""
from __future__ import annotations

from shared.lazy import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "CLASSIFICATION_PARAMS": "trial", "AccuracyReducer": "trial", "ClassificationTrial": "trial",
    "ImageFolderDataset": "data", "Splits": "data", "load_splits": "data",
    "build_train_transform": "data", "build_eval_transform": "data",
    "ResourceCallback": "resources", "ResourceSampler": "resources", "saved_tensor_bytes": "resources",
    "generate": "synthetic",
})
