#!/usr/bin/env python3
"""Segmenter (ViT encoder + linear or mask-transformer decoder) as a Determined trial: the same
script trains locally and on a cluster.

Locally:   python trials/segmenter/train.py --config experiment_configs/segmenter/single_gpu.yaml --data-dir DIR
Cluster:   det experiment create experiment_configs/segmenter/single_gpu.yaml trials/segmenter --include shared
(``python trials/segmenter/train.py --help`` lists the local options.)
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
    parse_before_imports("segmenter", "segmentation")

from model import Segmenter, load_pretrained  # noqa: E402  (trials/segmenter/model.py, next to this file)

from shared.attention import ATTENTION_IMPL_PARAM, ATTENTION_IMPLS, set_attention_impl  # noqa: E402
from shared.launch import main  # noqa: E402
from shared.modelargs import construct, load_weights, model_args, model_param  # noqa: E402
from shared.trial import SegmentationTrial  # noqa: E402


class SegmenterTrial(SegmentationTrial):
    MODEL_NAME = "segmenter"
    # Each model hyperparameter declared once: its default, type, allowed values and help are
    # Segmenter's (signature, annotations, docstring; shared.modelargs.model_param);
    # MODEL_ARGS, hyperparameter -> argument, follows (the training crop sizes the encoder's
    # position embeddings, as in the official code).
    MODEL_PARAMS = {
        "attention_impl": ATTENTION_IMPL_PARAM,
        "segmenter_backbone": model_param(Segmenter, "backbone"),
        "segmenter_decoder": model_param(Segmenter, "decoder"),
        "segmenter_decoder_layers": model_param(Segmenter, "decoder_layers"),
        "drop_path_rate": model_param(Segmenter, "drop_path_rate"),
    }
    MODEL_ARGS = model_args(MODEL_PARAMS, {"num_classes": "num_classes", "crop_size": "img_size"})

    @classmethod
    def model_from_hparams(cls, hp):
        """The Segmenter of hyperparameters ``hp`` (no Determined context needed), with the
        weights of ``pretrained_path`` when set: this model's, or an ImageNet ViT's for the
        encoder alone."""
        model = construct(Segmenter, hp, cls.MODEL_ARGS)
        # applied to the built model, not a constructor argument (shared/attention.py)
        set_attention_impl(model, hp.get("attention_impl", ATTENTION_IMPLS[0]))
        load_weights(hp, lambda path: load_pretrained(model, path))
        return model

    def build_model(self, hp):
        return self.model_from_hparams(hp)

if __name__ == "__main__":
    sys.exit(main(SegmenterTrial))
