#!/usr/bin/env python3
"""Rare small objects in large images (binary segmentation, U-Net) as a Determined trial: the
same script trains locally and on a cluster (docs/rare_objects.md).

Locally:   python trials/rare_objects/train.py --config experiment_configs/rare_objects/single_gpu.yaml --data-dir DIR
Cluster:   det experiment create experiment_configs/rare_objects/single_gpu.yaml trials/rare_objects --include shared --include trials
(the model is trials/unet's U-Net, found through the recipe registry: the context needs
``trials/``; a package, ``python -m shared.package rare_objects``, carries what it needs)
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
    parse_before_imports("rare_objects", "binary_segmentation")

from model import RareObjectsUNet  # noqa: E402  (model.py, next to this file)

from shared.launch import main  # noqa: E402
from shared.modelargs import construct, load_weights, model_args, model_param  # noqa: E402
from shared.objects.trial import BinarySegmentationTrial  # noqa: E402
from shared.pretrained import load_local_weights  # noqa: E402


class RareObjectsTrial(BinarySegmentationTrial):
    MODEL_NAME = "rare_objects"
    # Each model hyperparameter declared once: its default, type, allowed values and help are
    # RareObjectsUNet's (signature, annotations, docstring; shared.modelargs.model_param).
    MODEL_PARAMS = {
        "unet_base_channels": model_param(RareObjectsUNet, "base_channels", nullable=True),
        "unet_depth": model_param(RareObjectsUNet, "depth", nullable=True),
        "unet_upsampling": model_param(RareObjectsUNet, "upsampling"),
        "dropout": model_param(RareObjectsUNet, "dropout"),
    }
    #: hyperparameter -> RareObjectsUNet argument: the model's own above, and in_channels
    MODEL_ARGS = model_args(MODEL_PARAMS, {"in_channels": "in_channels"})

    @classmethod
    def model_from_hparams(cls, hp):
        """The network of hyperparameters ``hp`` (no Determined context needed), with the
        weights of ``pretrained_path`` when set."""
        model = construct(RareObjectsUNet, hp, cls.MODEL_ARGS)
        load_weights(hp, lambda path: load_local_weights(model, path))
        return model

    def build_model(self, hp):
        return self.model_from_hparams(hp)


if __name__ == "__main__":
    sys.exit(main(RareObjectsTrial))
