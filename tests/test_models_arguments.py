"""Model constructor arguments and the mapping from hyperparameters to them.

The constructors (trials/<model>/model.py) check their plain arguments and name them; each
trial's ``model_from_hparams`` maps hyperparameters to arguments and names the
hyperparameter instead; the schema's defaults are the constructors' (shared.modelargs).
"""
from __future__ import annotations

import dataclasses
import inspect
from typing import Annotated, Optional

import pytest
import torch

from model_helpers import ROOT, SEGMENTATION, deeplab, segformer, segmenter, trial_class, unet
from shared import configfile, recipes
from shared import hparams as hpmod
from shared import modelargs
from shared.hparams import ConfigError
from shared.energy.schema import Refused
from shared.modelargs import ArgumentError

pytestmark = pytest.mark.usefixtures("torch_seed")


# --------------------------------------------------------------------------- constructors

@pytest.mark.parametrize("kw,match", [
    ({"depth": 0}, r"^UNet: argument 'depth' = 0 must be an integer in 1\.\.8$"),
    ({"depth": 2.0}, r"'depth' = 2\.0 must be an integer in 1\.\.8"),
    ({"base_channels": -4}, r"'base_channels' = -4 must be an integer in 1\.\.1024"),
    ({"base_channels": True}, r"'base_channels' = True must be an integer in 1\.\.1024"),
    ({"upsampling": "foo"}, r"'upsampling' = 'foo' is not one of transpose, bilinear"),
    ({"num_classes": 0}, r"'num_classes' = 0 must be an integer >= 1"),
    ({"in_channels": 0}, r"'in_channels' = 0 must be an integer >= 1"),
])
def test_unet_bad_arguments(kw, match):
    with pytest.raises(ArgumentError, match=match) as e:
        unet.UNet(**{"num_classes": 5, **kw})
    assert e.value.argument == next(iter(kw))


@pytest.mark.parametrize("kw,match", [
    ({"variant": "b9"}, r"^SegFormer: argument 'variant' = 'b9' is not one of b0, b1, b2, b3, b4, b5$"),
    ({"variant": 0}, r"'variant' = 0 is not one of b0"),
    ({"variant": ["b0"]}, r"'variant' = \['b0'\] is not one of b0"),
    ({"drop_path_rate": 1.5}, r"'drop_path_rate' = 1\.5 must be a number in \[0, 1\)"),
    ({"drop_path_rate": -0.1}, r"'drop_path_rate' = -0\.1 must be"),
    ({"num_classes": "150"}, r"'num_classes' = '150' must be an integer"),
])
def test_segformer_bad_arguments(kw, match):
    with pytest.raises(ArgumentError, match=match):
        segformer.SegFormer(**{"num_classes": 5, **kw})


@pytest.mark.parametrize("kw,match", [
    ({"backbone": "resnet34"},
     r"^DeepLabV3Plus: argument 'backbone' = 'resnet34' is not one of resnet50, resnet101$"),
    ({"output_stride": 32}, r"'output_stride' = 32 is not one of 8, 16"),
    ({"output_stride": True}, r"'output_stride' = True is not one of 8, 16"),
    ({"separable": "yes"}, r"'separable' = 'yes' must be true or false"),
    ({"num_classes": 0}, r"'num_classes' = 0 must be an integer >= 1"),
])
def test_deeplab_bad_arguments(kw, match):
    with pytest.raises(ArgumentError, match=match), torch.device("meta"):
        deeplab.DeepLabV3Plus(**{"num_classes": 5, **kw})


@pytest.mark.parametrize("kw,match", [
    ({"backbone": "vit_large_patch16_224"},
     r"^Segmenter: argument 'backbone' = 'vit_large_patch16_224' is not one of vit_tiny_patch16_224, "
     r"vit_small_patch16_224, vit_base_patch16_224$"),
    ({"decoder": "mlp"}, r"'decoder' = 'mlp' is not one of linear, mask"),
    ({"decoder_layers": 0}, r"'decoder_layers' = 0 must be an integer in 1\.\.24"),
    ({"decoder_layers": 2.0}, r"'decoder_layers' = 2\.0 must be an integer"),
    ({"drop_path_rate": 1.0}, r"'drop_path_rate' = 1\.0 must be a number in \[0, 1\)"),
    ({"drop_path_rate": "0.1"}, r"'drop_path_rate' = '0\.1' must be a number"),
    ({"num_classes": "150"}, r"'num_classes' = '150' must be an integer >= 1"),
])
def test_segmenter_bad_arguments(kw, match):
    with pytest.raises(ArgumentError, match=match), torch.device("meta"):
        segmenter.Segmenter(**{"num_classes": 5, **kw})


def test_argument_errors_are_value_errors():
    # Callers outside the recipes (a notebook, timm-style code) catch ValueError.
    with pytest.raises(ValueError, match="'depth'"):
        unet.UNet(5, depth=9)


# --------------------------------------------------------------------------- the mapping

@pytest.mark.parametrize("model,hp,match", [
    ("unet", {"unet_depth": 0}, r"^hyperparameter 'unet_depth' = 0 must be an integer in 1\.\.8$"),
    ("unet", {"unet_upsampling": "foo"}, r"^hyperparameter 'unet_upsampling' = 'foo' is not one of"),
    ("unet", {"num_classes": 0}, r"^hyperparameter 'num_classes' = 0 must be an integer >= 1$"),
    ("segformer", {"segformer_variant": "b9"}, r"^hyperparameter 'segformer_variant' = 'b9' is not one"),
    ("segformer", {"drop_path_rate": 1.5}, r"^hyperparameter 'drop_path_rate' = 1\.5 must be a number"),
    ("deeplabv3plus", {"deeplab_output_stride": 32},
     r"^hyperparameter 'deeplab_output_stride' = 32 is not one of 8, 16$"),
    ("deeplabv3plus", {"deeplab_separable": "yes"}, r"^hyperparameter 'deeplab_separable' = 'yes' must be true"),
    ("segmenter", {"segmenter_decoder_layers": 25},
     r"^hyperparameter 'segmenter_decoder_layers' = 25 must be an integer in 1\.\.24$"),
    ("segmenter", {"segmenter_backbone": "vit_huge"}, r"^hyperparameter 'segmenter_backbone' = 'vit_huge'"),
])
def test_mapping_names_the_hyperparameter(model, hp, match):
    # Unchecked dicts (no schema in between): the model's own check, reported in the user's terms.
    with pytest.raises(ConfigError, match=match), torch.device("meta"):
        trial_class(model).model_from_hparams({"num_classes": 5, **hp})


@pytest.mark.parametrize("model", SEGMENTATION)
def test_num_classes_required(model):
    with pytest.raises(ConfigError, match=r"^hyperparameter 'num_classes' is required$"):
        trial_class(model).model_from_hparams({})


@pytest.mark.parametrize("model,constructor", [
    ("unet", unet.UNet), ("segformer", segformer.SegFormer),
    ("deeplabv3plus", deeplab.DeepLabV3Plus), ("segmenter", segmenter.Segmenter)])
def test_schema_defaults_are_the_constructors(model, constructor):
    """One home for each model default: the constructor's signature. Every model
    hyperparameter maps to an argument, and its schema default is that argument's default."""
    trial = trial_class(model)
    params = inspect.signature(constructor).parameters
    # attention_impl is switched on the built model (shared.attention.set_attention_impl),
    # not passed to the constructor; its default is ATTENTION_IMPLS[0]
    own = {k: p for k, p in trial.MODEL_PARAMS.items() if k != "attention_impl"}
    assert set(own) <= set(trial.MODEL_ARGS)
    for name, p in own.items():
        assert p.default == params[trial.MODEL_ARGS[name]].default, name
    assert set(trial.MODEL_ARGS.values()) <= set(params)


@pytest.mark.parametrize("model,hp,kw", [
    ("unet", {"unet_base_channels": 8, "unet_depth": 3, "unet_upsampling": "bilinear"},
     {"base_channels": 8, "depth": 3, "upsampling": "bilinear"}),
    ("segformer", {"segformer_variant": "b1", "drop_path_rate": 0.2}, {"variant": "b1", "drop_path_rate": 0.2}),
    ("segmenter", {"segmenter_decoder": "linear", "drop_path_rate": 0.0}, {"decoder": "linear", "drop_path_rate": 0.0}),
])
def test_mapping_builds_what_the_constructor_builds(model, hp, kw):
    # Same seed, same arguments: the same weights, so the mapping passes exactly these.
    constructor = {"unet": unet.UNet, "segformer": segformer.SegFormer, "segmenter": segmenter.Segmenter}[model]
    torch.manual_seed(3)
    mapped = trial_class(model).model_from_hparams({"num_classes": 4, **hp}).state_dict()
    torch.manual_seed(3)
    direct = constructor(4, **kw).state_dict()
    assert list(mapped) == list(direct)
    assert all(torch.equal(mapped[k], direct[k]) for k in direct)


def test_null_hyperparameter_means_the_model_default():
    # The U-Net configs say unet_depth: null.
    with torch.device("meta"):
        from_null = trial_class("unet").model_from_hparams(
            {"num_classes": 150, "unet_base_channels": None, "unet_depth": None, "unet_upsampling": None})
        plain = unet.UNet(150)
    assert repr(from_null) == repr(plain)


@pytest.mark.parametrize("model,hp,match", [
    ("deeplabv3plus", {"deeplab_output_stride": 4},
     r"c\.yaml: hyperparameter 'deeplab_output_stride' = 4 is not one of 8, 16"),
    ("deeplabv3plus", {"deeplab_backbone": "resnet18"},
     r"c\.yaml: hyperparameter 'deeplab_backbone' = 'resnet18' is not one of resnet50, resnet101$"),
    ("deeplabv3plus", {"deeplab_seperable": False},
     r"c\.yaml: unknown hyperparameter 'deeplab_seperable' \(did you mean 'deeplab_separable'\?\)"),
    ("segmenter", {"segmenter_decoder": "MLP"},
     r"'segmenter_decoder' = 'MLP' is not one of linear, mask$"),
    ("segmenter", {"segmenter_decoder_layers": 0},
     r"'segmenter_decoder_layers' = 0 must be an integer in 1\.\.24"),
    ("segmenter", {"drop_path_rate": -0.1}, r"'drop_path_rate' = -0\.1 must be a number in \[0, 1\)"),
    ("segformer", {"drop_path_rate": 1.0}, r"'drop_path_rate' = 1\.0 must be a number in \[0, 1\)"),
    ("unet", {"unet_depth": 9}, r"c\.yaml: hyperparameter 'unet_depth' = 9 must be an integer in 1\.\.8"),
    ("unet", {"unet_base_channels": 0}, r"'unet_base_channels' = 0 must be an integer in 1\.\.1024"),
])
def test_trial_schema_names_bad_values(model, hp, match):
    with pytest.raises(hpmod.ConfigError, match=match):
        hpmod.resolve(hp, trial_class(model).MODEL_PARAMS, where="c.yaml")


@pytest.mark.parametrize("model", ["deeplabv3plus", "segmenter"])
def test_config_resolves_to_the_model_defaults(model):
    path = ROOT / "experiment_configs" / model / "single_gpu.yaml"
    conf = configfile.load_experiment_config(path)
    trial_cls = trial_class(model)
    assert trial_cls.MODEL_NAME == model
    hp = hpmod.resolve(configfile.point_from_space(conf["hyperparameters"], str(path)),
                       trial_cls.MODEL_PARAMS, where=str(path))
    # the config and the trial's schema defaults (the constructor's) agree
    assert {k: hp[k] for k in trial_cls.MODEL_PARAMS} == {
        k: p.default for k, p in trial_cls.MODEL_PARAMS.items()}
    with torch.device("meta"):
        from_config = trial_cls.model_from_hparams(hp)
        from_defaults = trial_cls.model_from_hparams({"num_classes": hp["num_classes"]})
    assert repr(from_config) == repr(from_defaults)
    assert hp["optimizer"] == "adamw" and hp["target_miou"] == 16
    assert hp["lr"] == {"deeplabv3plus": 1e-3, "segmenter": 6e-4}[model]
    # same data pipeline as the other recipes
    other = configfile.load_experiment_config(ROOT / "experiment_configs/unet/single_gpu.yaml")
    for key in ("crop_size", "scale", "ratio_range", "cat_max_ratio", "global_batch_size",
                "warmup_batches", "max_batches", "validation_period", "energy"):
        assert conf["hyperparameters"][key] == other["hyperparameters"][key], key


# --------------------------------------------------------------------------- shared.modelargs

def _toy(size: int, *, mode: str = "a", rate: float = 0.5):
    modelargs.require("Toy", "size", size, modelargs.integer(1, 4))
    modelargs.require("Toy", "mode", mode, modelargs.one_of(("a", "b")))
    modelargs.require("Toy", "rate", rate, modelargs.fraction)
    return size, mode, rate


def test_checks_return_a_problem_or_none():
    assert modelargs.integer(1)(3) is None and modelargs.integer(1)(0) == "must be an integer >= 1"
    assert modelargs.integer(1, 4)(True) == "must be an integer in 1..4"  # a bool is no count
    assert modelargs.one_of((8, 16))(True) == "is not one of 8, 16"     # True == 1, not a stride
    assert modelargs.one_of(("a",))(["a"]) == "is not one of a"          # unhashable: not a choice
    assert modelargs.boolean(1) == "must be true or false" and modelargs.boolean(False) is None
    assert modelargs.fraction(1) == "must be a number in [0, 1)" and modelargs.fraction(0) is None


def test_construct_passes_set_values_and_leaves_null_to_the_default():
    args = {"toy_size": "size", "toy_mode": "mode", "toy_rate": "rate"}
    assert modelargs.construct(_toy, {"toy_size": 2, "toy_mode": None}, args) == (2, "a", 0.5)
    assert modelargs.construct(_toy, {"toy_size": 2, "toy_rate": 0.0, "other": 1}, args) == (2, "a", 0.0)
    with pytest.raises(ConfigError, match=r"^hyperparameter 'toy_size' is required$"):
        modelargs.construct(_toy, {"toy_size": None}, args)
    with pytest.raises(ConfigError, match=r"^hyperparameter 'toy_mode' = 'c' is not one of a, b$"):
        modelargs.construct(_toy, {"toy_size": 2, "toy_mode": "c"}, args)


def test_construct_keeps_errors_about_unmapped_arguments():
    # No hyperparameter sets 'rate' here: its error is a bug in the caller, reported as such.
    with pytest.raises(ArgumentError, match=r"^Toy: argument 'rate' = 2 must be a number in \[0, 1\)$"):
        modelargs.construct(lambda size: _toy(size, rate=2), {"toy_size": 1}, {"toy_size": "size"})


def test_default_of():
    assert modelargs.default_of(_toy, "mode") == "a"
    with pytest.raises(TypeError, match=r"_toy's argument 'size' has no default"):
        modelargs.default_of(_toy, "size")
    with pytest.raises(TypeError, match=r"_toy has no argument 'colour'"):
        modelargs.default_of(_toy, "colour")


def test_load_weights_names_the_hyperparameter():
    seen = []
    modelargs.load_weights({"pretrained_path": None}, seen.append)
    modelargs.load_weights({"pretrained_path": "w.pt"}, seen.append)
    assert seen == ["w.pt"]

    def missing(path):
        raise FileNotFoundError(f"no file at {path!r}")

    with pytest.raises(ConfigError, match=r"^hyperparameter 'pretrained_path' = 'x\.pt' could not be "
                                          r"loaded: no file at 'x\.pt'$"):
        modelargs.load_weights({"pretrained_path": "x.pt"}, missing)


# Toys for shared.modelargs' reading of a constructor. At module level: the annotations are
# strings (``from __future__ import annotations``, as in the models' files), resolved in the
# module's namespace, as a model's are.
_WIDTH = modelargs.integer(1, 64)


def _build(num_classes: int, width: Annotated[int, _WIDTH] = 8, rate: float = 0.1,
           kind: str = "a", flag: bool = True, untyped=3, maybe: Optional[int] = None) -> None:
    """A toy.

    Args:
        width: channels
            of each layer.
    """


class _Base:
    """Base.

    Args:
        depth: stages of the encoder.
        width (int): channels of the first stage, doubled at
            each stage.

    Returns nothing; the section above ends at this line.
    """

    @modelargs.checked
    def __init__(self, depth: Annotated[int, modelargs.integer(1, 8)] = 4,
                 width: Annotated[int, modelargs.integer(1)] = 8) -> None:
        pass


class _Child(_Base):
    @modelargs.checked
    def __init__(self, depth: Annotated[int, modelargs.integer(1, 8)] = 3,
                 width: Annotated[int, modelargs.integer(1)] = 16, p: float = 0.5) -> None:
        """
        Args:
            width: channels of the first stage (16 here).
            p: dropout.
        """
        super().__init__(depth, width)


class _Toy:
    @modelargs.checked
    def __init__(self, size: Annotated[int, modelargs.integer(1, 4)], free: int = 0,
                 rate: Annotated[float, modelargs.fraction] = 0.5) -> None:
        self.size, self.free, self.rate = size, free, rate


def test_a_model_hyperparameter_is_declared_once():
    """model_param takes the default and the type from the constructor's signature, the check
    from its annotation, the help from its docstring, and records the argument; MODEL_ARGS is
    derived from the declarations, and every model hyperparameter of the segmentation recipes
    but attention_impl (set on the built model) is declared that way."""
    from shared.energy.schema import Param
    from shared.modelargs import model_args, model_param

    build = _build
    p = model_param(build, "width")
    assert (p.default, p.types, p.argument, p.help, p.check) == (
        8, (int,), "width", "channels of each layer", _WIDTH)
    assert p.allowed_text() == "integer in 1..64"
    assert model_param(build, "rate", help="r").types == (int, float)
    assert model_param(build, "flag", help="f").types == (bool,)
    assert model_param(build, "maybe", help="m").types == (int,)
    assert model_param(build, "width", nullable=True).help == \
        "channels of each layer; null: the model's default"
    params = {"m_width": p, "m_kind": model_param(build, "kind", help="k"),
              "other": Param(0, (int,))}
    assert model_args(params, {"num_classes": "num_classes"}) == {
        "m_width": "width", "m_kind": "kind", "num_classes": "num_classes"}
    with pytest.raises(TypeError, match=r"has no argument 'depth'"):
        model_param(build, "depth", help="")
    with pytest.raises(TypeError, match=r"'num_classes' has no default"):
        model_param(build, "num_classes", help="n")
    with pytest.raises(TypeError, match=r"'untyped' has no annotation"):
        model_param(build, "untyped", help="")
    # the help has one home: the docstring, or help= where the docstring lacks it
    with pytest.raises(TypeError, match=r"_build documents 'width' in its docstring: drop help="):
        model_param(build, "width", help="w")
    with pytest.raises(TypeError, match=r"_build's argument 'kind' is not documented: add it to "
                                        r"the \"Args:\" section of _build's docstring"):
        model_param(build, "kind")

    def listed(sizes: list = [1]) -> None:
        pass
    with pytest.raises(TypeError, match=r"'sizes' is annotated 'list': model_param knows int"):
        model_param(listed, "sizes", help="")
    for model in SEGMENTATION:
        trial = trial_class(model)
        own = {k: v for k, v in trial.MODEL_PARAMS.items() if k != "attention_impl"}
        assert own and all(v.argument for v in own.values()), model
        assert {k: v.argument for k, v in own.items()}.items() <= trial.MODEL_ARGS.items()


def test_the_docstring_gives_the_help():
    """A model's "Args:" section is where its hyperparameters' help comes from: a class's own,
    its __init__'s, then its bases' (a subclass documents what it changes)."""
    from shared.modelargs import argument_docs, model_param

    Base, Child = _Base, _Child
    assert argument_docs(Base) == {"depth": "stages of the encoder",
                                   "width": "channels of the first stage, doubled at each stage"}
    assert argument_docs(Child) == {"depth": "stages of the encoder",
                                    "width": "channels of the first stage (16 here)", "p": "dropout"}
    assert model_param(Child, "width").help == "channels of the first stage (16 here)"
    assert model_param(Child, "depth").default == 3
    # every recipe's model hyperparameter reads its help from its constructor's docstring
    for name in SEGMENTATION + ["rare_objects"]:
        recipe = recipes.get(name)
        trial, module = recipe.trial_class(), recipe.model_module()
        own = {k: p for k, p in trial.MODEL_PARAMS.items() if p.argument is not None}
        # the model: the class of model.py that takes every argument the hyperparameters set
        constructor = next(c for c in vars(module).values() if isinstance(c, type)
                           and c.__module__ == module.__name__ and
                           {p.argument for p in own.values()}
                           <= set(inspect.signature(c).parameters))
        for key, param in own.items():
            assert argument_docs(constructor).get(param.argument), (name, key)
            assert param.help.startswith(argument_docs(constructor)[param.argument]), (name, key)


def test_checked_runs_the_annotated_checks():
    Toy = _Toy
    assert Toy(2, free=-9).free == -9  # not annotated with a check: not checked
    with pytest.raises(ArgumentError, match=r"^_Toy: argument 'size' = 5 must be an integer in 1\.\.4$"):
        Toy(5)
    with pytest.raises(ArgumentError, match=r"^_Toy: argument 'rate' = 1 must be a number in \[0, 1\)$"):
        Toy(size=1, rate=1)
    assert list(inspect.signature(Toy).parameters) == ["size", "free", "rate"]


_CANDIDATES = (0, -1, 10 ** 9, 1.5, -0.1, 2.0, "zz", "B9")


@pytest.mark.parametrize("name", sorted(n for n, r in recipes.discover().items()
                                        if any(p.argument for p in r.trial_class().MODEL_PARAMS.values())))
def test_a_bad_model_argument_reads_the_same_from_the_config_and_the_constructor(name):
    """One home for a model argument's check: the config check (shared.hparams.resolve) and
    the constructor (through construct) refuse a bad value with the same words."""
    trial = recipes.get(name).trial_class()
    compared = 0
    for key, param in trial.MODEL_PARAMS.items():
        if param.argument is None or param.check is None:
            continue
        for bad in _CANDIDATES:
            try:
                value = dataclasses.replace(param, check=None).accept(bad)
            except Refused:
                continue  # refused by its type, before any model check
            if param.check(value) is None:
                continue  # allowed
            with pytest.raises(ConfigError) as from_config:
                hpmod.resolve({key: bad}, trial.MODEL_PARAMS, where="c.yaml",
                              common=trial.COMMON_PARAMS)
            hp = hpmod.resolve({}, trial.MODEL_PARAMS, common=trial.COMMON_PARAMS)
            with pytest.raises(ConfigError) as from_constructor, torch.device("meta"):
                trial.model_from_hparams({**hp, key: bad})
            assert str(from_config.value) == f"c.yaml: {from_constructor.value}", (key, bad)
            compared += 1
    assert compared, f"{name}: no model hyperparameter with a check was compared"
