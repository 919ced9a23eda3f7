#!/usr/bin/env python3
"""SegFormer (Mix Transformer B0-B5 + all-MLP decoder) as a Determined trial: the same script
trains locally and on a cluster.

Locally:   python trials/segformer/train.py --config experiment_configs/segformer/single_gpu.yaml --data-dir DIR
Cluster:   det experiment create experiment_configs/segformer/single_gpu.yaml trials/segformer --include shared
(``python trials/segformer/train.py --help`` lists the local options.)
"""
import pathlib
import sys

try:  # installed (pip install -e ., the task image) or shipped beside us (det ... --include shared)
    import shared  # noqa: F401
except ImportError:  # a plain repository checkout
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from model import build_model  # noqa: E402  (trials/segformer/model.py, next to this file)

from shared.hparams import NUM, STR, Param  # noqa: E402
from shared.launch import main  # noqa: E402
from shared.trial import SegmentationTrial  # noqa: E402


class SegFormerTrial(SegmentationTrial):
    MODEL_NAME = "segformer"
    MODEL_PARAMS = {
        "segformer_variant": Param("b0", STR, choices=("b0", "b1", "b2", "b3", "b4", "b5")),
        "drop_path_rate": Param(0.1, NUM, check=lambda v: None if 0 <= v < 1 else "must be in [0, 1)"),
    }

    def build_model(self, hp):
        return build_model(hp)


if __name__ == "__main__":
    sys.exit(main(SegFormerTrial))
