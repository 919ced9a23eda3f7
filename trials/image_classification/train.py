#!/usr/bin/env python3
"""Image classification (AlexNet ... EfficientNetV2-XL, by hyperparameter ``arch``) as a
Determined trial: the same script trains locally and on a cluster.

Locally:   python trials/image_classification/train.py --config experiment_configs/image_classification/single_gpu.yaml --data-dir DIR
Cluster:   det experiment create experiment_configs/image_classification/single_gpu.yaml trials/image_classification --include shared
(``python trials/image_classification/train.py --help`` lists the local options.)
"""
import dataclasses
import pathlib
import sys

try:  # installed (pip install -e ., the task image) or shipped beside us (det ... --include shared)
    import shared  # noqa: F401
except ImportError:  # a plain repository checkout
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from model import ARCHITECTURES, build_model, data_config  # noqa: E402  (model.py, next to this file)

from shared.classification.trial import CLASSIFICATION_PARAMS, ClassificationTrial  # noqa: E402
from shared.launch import main  # noqa: E402


class ImageClassificationTrial(ClassificationTrial):
    MODEL_NAME = "image_classification"
    # The family's 'arch' with its allowed values: the networks model.py can build.
    MODEL_PARAMS = {"arch": dataclasses.replace(CLASSIFICATION_PARAMS["arch"], choices=tuple(ARCHITECTURES))}

    def build_model(self, hp):
        return build_model(hp)

    def data_config(self, model, hp):
        return data_config(model, hp)


if __name__ == "__main__":
    sys.exit(main(ImageClassificationTrial))
