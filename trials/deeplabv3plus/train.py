#!/usr/bin/env python3
"""DeepLab v3+ (ResNet-50/101 + ASPP + decoder) as a Determined trial: the same script trains
locally and on a cluster.

Locally:   python trials/deeplabv3plus/train.py --config experiment_configs/deeplabv3plus/single_gpu.yaml --data-dir DIR
Cluster:   det experiment create experiment_configs/deeplabv3plus/single_gpu.yaml trials/deeplabv3plus --include shared
(``python trials/deeplabv3plus/train.py --help`` lists the local options.)
"""
import pathlib
import sys

try:  # installed (pip install -e ., the task image) or shipped beside us (det ... --include shared)
    import shared  # noqa: F401
except ImportError:  # a plain repository checkout
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from model import BACKBONES, OUTPUT_STRIDES, build_model  # noqa: E402  (model.py, next to this file)

from shared.hparams import BOOL, INT, STR, Param  # noqa: E402
from shared.launch import main  # noqa: E402
from shared.trial import SegmentationTrial  # noqa: E402


class DeepLabV3PlusTrial(SegmentationTrial):
    MODEL_NAME = "deeplabv3plus"
    MODEL_PARAMS = {
        "deeplab_backbone": Param("resnet50", STR, choices=BACKBONES),
        "deeplab_output_stride": Param(
            16, INT, choices=OUTPUT_STRIDES,
            help="8: layer3, layer4 and ASPP on 4x the positions, ASPP rates doubled"),
        "deeplab_separable": Param(True, BOOL, help="depthwise separable 3x3 convs in ASPP and decoder"),
    }

    def build_model(self, hp):
        return build_model(hp)


if __name__ == "__main__":
    sys.exit(main(DeepLabV3PlusTrial))
