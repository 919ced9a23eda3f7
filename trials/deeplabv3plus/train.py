#!/usr/bin/env python3
"""DeepLab v3+ (ResNet-50/101 + ASPP + decoder) as a Determined trial: the same script trains
locally and on a cluster.

Locally:   python trials/deeplabv3plus/train.py --config experiment_configs/deeplabv3plus/single_gpu.yaml --data-dir DIR
Cluster:   det experiment create experiment_configs/deeplabv3plus/single_gpu.yaml trials/deeplabv3plus --include shared
(``python trials/deeplabv3plus/train.py --help`` lists the local options.)
"""
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
    parse_before_imports("deeplabv3plus", "segmentation")

from model import DeepLabV3Plus, load_pretrained  # noqa: E402  (model.py, next to this file)

from shared.launch import main  # noqa: E402
from shared.modelargs import construct, load_weights, model_args, model_param  # noqa: E402
from shared.trial import SegmentationTrial  # noqa: E402


class DeepLabV3PlusTrial(SegmentationTrial):
    MODEL_NAME = "deeplabv3plus"
    # Each model hyperparameter declared once: its default, type, allowed values and help are
    # DeepLabV3Plus's (signature, annotations, docstring; shared.modelargs.model_param);
    # MODEL_ARGS, hyperparameter -> argument, follows.
    MODEL_PARAMS = {
        "deeplab_backbone": model_param(DeepLabV3Plus, "backbone"),
        "deeplab_output_stride": model_param(DeepLabV3Plus, "output_stride"),
        "deeplab_separable": model_param(DeepLabV3Plus, "separable"),
    }
    MODEL_ARGS = model_args(MODEL_PARAMS, {"num_classes": "num_classes"})

    @classmethod
    def model_from_hparams(cls, hp):
        """The DeepLab v3+ of hyperparameters ``hp`` (no Determined context needed), with the
        weights of ``pretrained_path`` when set: this model's, or an ImageNet ResNet's for
        the backbone alone."""
        model = construct(DeepLabV3Plus, hp, cls.MODEL_ARGS)
        load_weights(hp, lambda path: load_pretrained(model, path))
        return model

    def build_model(self, hp):
        return self.model_from_hparams(hp)


if __name__ == "__main__":
    sys.exit(main(DeepLabV3PlusTrial))
