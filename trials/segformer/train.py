#!/usr/bin/env python3
"""SegFormer (Mix Transformer B0-B5 + all-MLP decoder) as a Determined trial: the same script
trains locally and on a cluster.

Locally:   python trials/segformer/train.py --config experiment_configs/segformer/single_gpu.yaml --data-dir DIR
Cluster:   det experiment create experiment_configs/segformer/single_gpu.yaml trials/segformer --include shared
(``python trials/segformer/train.py --help`` lists the local options.)
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
    parse_before_imports("segformer", "segmentation")

from model import SegFormer  # noqa: E402  (trials/segformer/model.py, next to this file)

from shared.attention import ATTENTION_IMPL_PARAM, ATTENTION_IMPLS, set_attention_impl  # noqa: E402
from shared.launch import main  # noqa: E402
from shared.modelargs import construct, load_weights, model_args, model_param  # noqa: E402
from shared.pretrained import load_local_weights  # noqa: E402
from shared.trial import SegmentationTrial  # noqa: E402


class SegFormerTrial(SegmentationTrial):
    MODEL_NAME = "segformer"
    # Each model hyperparameter declared once: its default, type, allowed values and help are
    # SegFormer's (signature, annotations, docstring; shared.modelargs.model_param);
    # MODEL_ARGS, hyperparameter -> argument, follows.
    MODEL_PARAMS = {
        "attention_impl": ATTENTION_IMPL_PARAM,
        "segformer_variant": model_param(SegFormer, "variant"),
        "drop_path_rate": model_param(SegFormer, "drop_path_rate"),
    }
    MODEL_ARGS = model_args(MODEL_PARAMS, {"num_classes": "num_classes"})

    @classmethod
    def model_from_hparams(cls, hp):
        """The SegFormer of hyperparameters ``hp`` (no Determined context needed), with the
        weights of ``pretrained_path`` (this model's own key names) when set."""
        model = construct(SegFormer, hp, cls.MODEL_ARGS)
        # applied to the built model, not a constructor argument (shared/attention.py)
        set_attention_impl(model, hp.get("attention_impl", ATTENTION_IMPLS[0]))
        load_weights(hp, lambda path: load_local_weights(model, path))
        return model

    def build_model(self, hp):
        return self.model_from_hparams(hp)


if __name__ == "__main__":
    sys.exit(main(SegFormerTrial))
