#!/usr/bin/env python3
"""Segmenter (ViT encoder + linear or mask-transformer decoder) as a Determined trial: the same
script trains locally and on a cluster.

Locally:   python trials/segmenter/train.py --config experiment_configs/segmenter/single_gpu.yaml --data-dir DIR
Cluster:   det experiment create experiment_configs/segmenter/single_gpu.yaml trials/segmenter --include shared
(``python trials/segmenter/train.py --help`` lists the local options.)
"""
import pathlib
import sys

try:  # installed (pip install -e ., the task image) or shipped beside us (det ... --include shared)
    import shared  # noqa: F401
except ImportError:  # a plain repository checkout
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from model import (  # noqa: E402  (trials/segmenter/model.py, next to this file)
    BACKBONES, DECODERS, MAX_DECODER_LAYERS, build_model)

from shared.hparams import INT, NUM, STR, Param  # noqa: E402
from shared.launch import main  # noqa: E402
from shared.trial import SegmentationTrial  # noqa: E402


class SegmenterTrial(SegmentationTrial):
    MODEL_NAME = "segmenter"
    MODEL_PARAMS = {
        "segmenter_backbone": Param("vit_tiny_patch16_224", STR, choices=BACKBONES),
        "segmenter_decoder": Param("mask", STR, choices=DECODERS),
        "segmenter_decoder_layers": Param(
            2, INT,
            check=lambda v: None if 1 <= v <= MAX_DECODER_LAYERS else f"must be in 1..{MAX_DECODER_LAYERS}",
            help="mask decoder only"),
        "drop_path_rate": Param(0.1, NUM, check=lambda v: None if 0 <= v < 1 else "must be in [0, 1)",
                                help="the encoder's stochastic depth"),
    }

    def build_model(self, hp):
        return build_model(hp)


if __name__ == "__main__":
    sys.exit(main(SegmenterTrial))
