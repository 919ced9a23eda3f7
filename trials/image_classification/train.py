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

if __name__ == "__main__":  # --help and usage errors at once, before torch is imported
    # Run from a checkout (trials/<name>/train.py), its own shared/ comes first, before an
    # installed one or another checkout's; shipped beside us (a package, a cluster's context
    # directory) it is first already. parse_before_imports says if another one was imported.
    _trials = pathlib.Path(__file__).resolve().parent.parent
    if _trials.name == "trials" and (_trials.parent / "shared").is_dir():
        sys.path.insert(0, str(_trials.parent))
    from shared.localargs import parse_before_imports
    parse_before_imports("image_classification", "classification")

from model import ARCHITECTURES, build_classifier, data_config  # noqa: E402  (model.py, next to this file)

from shared.classification.trial import CLASSIFICATION_PARAMS, ClassificationTrial  # noqa: E402
from shared.errors import ConfigError  # noqa: E402
from shared.launch import main  # noqa: E402
from shared.modelargs import construct, default_of  # noqa: E402


class ImageClassificationTrial(ClassificationTrial):
    MODEL_NAME = "image_classification"
    #: hyperparameter -> build_classifier argument
    MODEL_ARGS = {"arch": "arch", "num_classes": "num_classes", "pretrained_path": "weights",
                  "freeze_backbone": "freeze_backbone", "grad_checkpointing": "grad_checkpointing"}
    # The family's 'arch' with its allowed values: the networks model.py can build. The
    # defaults of the model's switches are build_classifier's (shared.modelargs: the schema
    # reads them from its signature), replacing the family schema's copies.
    MODEL_PARAMS = {
        "arch": dataclasses.replace(CLASSIFICATION_PARAMS["arch"], choices=tuple(ARCHITECTURES)),
        **{name: dataclasses.replace(CLASSIFICATION_PARAMS[name], default=default_of(build_classifier, name))
           for name in ("freeze_backbone", "grad_checkpointing")},
    }

    @classmethod
    def model_from_hparams(cls, hp):
        """The network of hyperparameters ``hp`` (no Determined context needed), with the
        weights of ``pretrained_path`` when set; ``image_size`` is checked against the
        architecture's smallest input first, before a large network is built for nothing."""
        spec = ARCHITECTURES.get(hp["arch"]) if isinstance(hp.get("arch"), str) else None
        if spec is not None and hp.get("image_size") is not None and hp["image_size"] < spec.min_size:
            # (an unknown arch is construct's to report, naming the hyperparameter)
            raise ConfigError(f"hyperparameter 'image_size' = {hp['image_size']} is below {hp['arch']}'s "
                              f"smallest input, {spec.min_size} px")
        return construct(build_classifier, hp, cls.MODEL_ARGS)

    def build_model(self, hp):
        return self.model_from_hparams(hp)

    def data_config(self, model, hp):
        return data_config(model, hp["arch"], pretrained=bool(hp.get("pretrained_path")))

if __name__ == "__main__":
    sys.exit(main(ImageClassificationTrial))
