#!/usr/bin/env python3
"""U-Net as a Determined trial: the same script trains locally and on a cluster.

Locally:   python trials/unet/train.py --config experiment_configs/unet/single_gpu.yaml --data-dir DIR
Cluster:   det experiment create experiment_configs/unet/single_gpu.yaml trials/unet --include shared
(``python trials/unet/train.py --help`` lists the local options.)
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
    parse_before_imports("unet", "segmentation")

from model import UNet  # noqa: E402  (trials/unet/model.py, next to this file)

from shared.launch import main  # noqa: E402
from shared.modelargs import construct, load_weights, model_args, model_param  # noqa: E402
from shared.pretrained import load_local_weights  # noqa: E402
from shared.trial import SegmentationTrial  # noqa: E402


class UNetTrial(SegmentationTrial):
    MODEL_NAME = "unet"
    # Each model hyperparameter declared once: its default, type, allowed values and help are
    # UNet's (signature, annotations, docstring; shared.modelargs.model_param); null means
    # the same default.
    MODEL_PARAMS = {
        "unet_base_channels": model_param(UNet, "base_channels", nullable=True),
        "unet_depth": model_param(UNet, "depth", nullable=True),
        "unet_upsampling": model_param(UNet, "upsampling"),
    }
    #: hyperparameter -> UNet argument: the model's own above, and the common num_classes
    MODEL_ARGS = model_args(MODEL_PARAMS, {"num_classes": "num_classes"})

    @classmethod
    def model_from_hparams(cls, hp):
        """The U-Net of hyperparameters ``hp`` (no Determined context needed), with the
        weights of ``pretrained_path`` when set."""
        model = construct(UNet, hp, cls.MODEL_ARGS)
        load_weights(hp, lambda path: load_local_weights(model, path))
        return model

    def build_model(self, hp):
        return self.model_from_hparams(hp)


if __name__ == "__main__":
    sys.exit(main(UNetTrial))
