#!/usr/bin/env python3
"""U-Net as a Determined trial: the same script trains locally and on a cluster.

Locally:   python trials/unet/train.py --config experiment_configs/unet/single_gpu.yaml --data-dir DIR
Cluster:   det experiment create experiment_configs/unet/single_gpu.yaml trials/unet --include shared
(``python trials/unet/train.py --help`` lists the local options.)
"""
import pathlib
import sys

try:  # installed (pip install -e ., the task image) or shipped beside us (det ... --include shared)
    import shared  # noqa: F401
except ImportError:  # a plain repository checkout
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from model import build_model  # noqa: E402  (trials/unet/model.py, next to this file)

from shared.hparams import INT, STR, Param  # noqa: E402
from shared.launch import main  # noqa: E402
from shared.trial import SegmentationTrial  # noqa: E402


class UNetTrial(SegmentationTrial):
    MODEL_NAME = "unet"
    MODEL_PARAMS = {
        "unet_base_channels": Param(None, INT, nullable=True, help="channels of the first stage"),
        "unet_depth": Param(None, INT, nullable=True, help="number of down-sampling stages"),
        "unet_upsampling": Param("transpose", STR, choices=("transpose", "bilinear")),
    }

    def build_model(self, hp):
        return build_model(hp)


if __name__ == "__main__":
    sys.exit(main(UNetTrial))
