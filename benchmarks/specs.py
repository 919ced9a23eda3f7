"""What the benchmark measures: our models, the reference implementations and how to build
them, the targets that compare the two, the run's settings, and the loading of a trial's model
and hyperparameters.

Every other module of ``benchmarks`` reads these definitions; this one imports none of them.
"""
from __future__ import annotations

import dataclasses
import functools
import pathlib
import sys
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import torch
from torch import nn

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # ``python benchmarks/<module>.py`` as well as ``-m``
    sys.path.insert(0, str(ROOT))

from shared import configfile
from shared import hparams as hpmod  # noqa: E402
from shared import recipes  # noqa: E402

NUM_CLASSES = 150          # ADE20K, as every single_gpu.yaml


class BenchError(ValueError):
    """A bad option, file or measurement set-up; the message names the culprit."""


def error_text(e: BaseException, limit: int = 600) -> str:
    """The exception as one bounded string: its start (what failed) and its end (a log's
    last lines, a traceback's cause)."""
    text = f"{type(e).__name__}: {e}"
    return text if len(text) <= limit else f"{text[:limit // 3]} [...] {text[-2 * limit // 3:]}"


# ============================================================================ what is measured
@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One of our models: a trial directory plus hyperparameter overrides on its config."""

    name: str
    trial: str
    overrides: Tuple[Tuple[str, Any], ...] = ()
    e2e: bool = True
    note: str = ""


#: our models beyond each recipe at its own config: variants a reference is paired with
VARIANTS: Tuple[ModelSpec, ...] = (
    # The architecture of the timm reference below (the config's own is ViT-T + mask decoder).
    ModelSpec("segmenter-vits16-linear", "segmenter",
              (("segmenter_backbone", "vit_small_patch16_224"), ("segmenter_decoder", "linear")),
              e2e=False, note="segmenter config with ViT-S/16 and the linear decoder"),
)


def our_models() -> Tuple[ModelSpec, ...]:
    """Our models: every segmentation recipe the registry finds under ``ROOT``
    (``shared.recipes``, sorted by name; the benchmark times the segmentation step), then
    ``VARIANTS``. A new recipe is benchmarked without an edit here."""
    return _ours(ROOT)


@functools.lru_cache(maxsize=None)
def _ours(root: pathlib.Path) -> Tuple[ModelSpec, ...]:
    # Finding a recipe's family imports its train.py (torch, timm): done on first use, not
    # at import, so that ``bench.py --help`` stays quick.
    found = tuple(ModelSpec(name, name) for name, recipe in recipes.discover(root).items()
                  if recipe.family == "segmentation")
    return found + VARIANTS


@dataclasses.dataclass(frozen=True)
class ReferenceSpec:
    """A reference implementation, compared with ``pair`` (a ModelSpec name).

    ``build(res, num_classes)`` returns a module mapping images to logits at any stride. The
    reference is trained by the same step as ``pair`` (same hyperparameters), so the ratio
    isolates the model's implementation; ``plain`` instead trains ``pair``'s own model the
    textbook way (PlainStep).
    """

    name: str
    pair: str
    requires: Tuple[str, ...]
    build: Optional[Callable[[int, int], nn.Module]] = None
    plain: bool = False
    note: str = ""


class _LogitsWrapper(nn.Module):
    """A reference whose forward returns a dict or a ModelOutput, made to return the logits
    tensor the training step expects (``fn(model, images)`` picks them out)."""

    def __init__(self, model: nn.Module, fn: Callable[[nn.Module, torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.model = model
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.model, x)


def _build_hf_segformer(res: int, num_classes: int) -> nn.Module:
    from transformers import SegformerConfig, SegformerForSemanticSegmentation
    # SegformerConfig's defaults are MiT-b0; sdpa is asked for explicitly and checked, since an
    # older transformers silently falls back to eager attention.
    model = SegformerForSemanticSegmentation(SegformerConfig(num_labels=num_classes,
                                                             attn_implementation="sdpa"))
    used = getattr(model.config, "_attn_implementation", None)
    if used != "sdpa":
        raise BenchError(f"transformers built SegFormer with attention {used!r}, not 'sdpa'")
    return _LogitsWrapper(model, lambda m, x: m(pixel_values=x).logits)


def _smp(arch: str, encoder: str) -> Callable[[int, int], nn.Module]:
    def build(res: int, num_classes: int) -> nn.Module:
        import segmentation_models_pytorch as smp
        return getattr(smp, arch)(encoder_name=encoder, encoder_weights=None, classes=num_classes)
    return build


def _build_tv_deeplabv3(res: int, num_classes: int) -> nn.Module:
    from torchvision.models.segmentation import deeplabv3_resnet50
    model = deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=num_classes,
                               aux_loss=False)
    return _LogitsWrapper(model, lambda m, x: m(x)["out"])


class _VitLinear(nn.Module):
    """timm ViT + one Linear from each patch token to class logits (Segmenter's linear
    decoder, written the plain way: no custom attention, no fused kernels of ours)."""

    def __init__(self, res: int, num_classes: int, name: str = "vit_small_patch16_224") -> None:
        super().__init__()
        import timm
        # As the reference script of docs/references.md builds it, so the two runs compare.
        self.backbone = timm.create_model(name, pretrained=False, num_classes=0, img_size=res,
                                          dynamic_img_size=True)
        self.head = nn.Linear(self.backbone.embed_dim, num_classes)
        self.patch = 16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        tokens = self.backbone.forward_features(x)[:, self.backbone.num_prefix_tokens:]
        logits = self.head(tokens)  # (B, N, classes)
        return logits.transpose(1, 2).reshape(b, -1, h // self.patch, w // self.patch)


REFERENCES: Tuple[ReferenceSpec, ...] = (
    ReferenceSpec("unet-plain", "unet", (), plain=True,
                  note="our U-Net trained the plain way: eager, autocast in the trial's "
                       "precision, NCHW, torch's default AdamW"),
    ReferenceSpec("smp.Unet(resnet34)", "unet", ("segmentation_models_pytorch",),
                  _smp("Unet", "resnet34"), note="another U-Net: ResNet-34 encoder, 24.5M params"),
    ReferenceSpec("transformers.SegFormer-b0(sdpa)", "segformer", ("transformers",),
                  _build_hf_segformer),
    ReferenceSpec("smp.Segformer(mit_b0)", "segformer", ("segmentation_models_pytorch",),
                  _smp("Segformer", "mit_b0")),
    ReferenceSpec("smp.DeepLabV3Plus(resnet50)", "deeplabv3plus", ("segmentation_models_pytorch",),
                  _smp("DeepLabV3Plus", "resnet50")),
    ReferenceSpec("torchvision.deeplabv3_resnet50", "deeplabv3plus", ("torchvision",),
                  _build_tv_deeplabv3, note="DeepLab v3 (no decoder), not v3+"),
    ReferenceSpec("timm.vit_small_patch16_224+linear", "segmenter-vits16-linear", ("timm",),
                  lambda res, n: _VitLinear(res, n)),
)


def ablation_specs(name: str) -> Tuple[Tuple[ModelSpec, bool], ...]:
    """The implementation ablation of our model ``name`` (``--ablation``), as (spec, compile)
    pairs: the baseline (``shared.hparams.ABLATION_BASELINE``, the MMCV-era implementation),
    the baseline with each switch alone at its fast value (``ABLATION_FASTEST``), every fast
    switch but compile ("fastest"), and the baseline and "fastest" compiled. Only the switches
    the model has (``attention_impl``: SegFormer and Segmenter). Spec names are
    ``<model>@<variant>``; a compiled row adds ``+compile``."""
    base = next((s for s in our_models() if s.name == name), None)
    if base is None:
        raise BenchError(f"--ablation {name}: no such model; names: {', '.join(s.name for s in our_models())}")
    switches = [k for k in hpmod.implementation_switches(recipes.get(base.trial, ROOT).trial_class())
                if k != "compile"]

    def spec(variant: str, values: Mapping[str, Any]) -> ModelSpec:
        return ModelSpec(f"{name}@{variant}", base.trial,
                         base.overrides + tuple((k, values[k]) for k in switches), e2e=False,
                         note=f"implementation ablation: {variant}")

    slow, fast = hpmod.ABLATION_BASELINE, hpmod.ABLATION_FASTEST
    out = [(spec("baseline", slow), False)]
    out += [(spec(f"+{k}={fast[k]}", {**slow, k: fast[k]}), False) for k in switches]
    out += [(spec("fastest", fast), False), (spec("baseline", slow), True),
            (spec("fastest", fast), True)]
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class Target:
    """``ours``'s ``metric`` divided by ``reference``'s must satisfy ``op threshold``; a target
    without threshold is a ratio shown for information."""

    ours: str
    reference: str
    metric: str            # "img_s" or "j_per_img"
    op: str = ">="
    threshold: Optional[float] = None


TARGETS: Tuple[Target, ...] = (
    Target("unet", "unet-plain", "img_s", ">=", 1.3),
    Target("segformer", "transformers.SegFormer-b0(sdpa)", "img_s", ">=", 1.3),
    Target("segformer", "transformers.SegFormer-b0(sdpa)", "j_per_img", "<=", 0.77),
    Target("deeplabv3plus", "smp.DeepLabV3Plus(resnet50)", "img_s", ">=", 1.3),
    Target("segmenter-vits16-linear", "timm.vit_small_patch16_224+linear", "img_s", ">=", 1.3),
    Target("unet", "unet-plain", "j_per_img", "<=", 0.77),
    Target("unet", "smp.Unet(resnet34)", "img_s"),
    Target("segformer", "smp.Segformer(mit_b0)", "img_s"),
    Target("deeplabv3plus", "smp.DeepLabV3Plus(resnet50)", "j_per_img", "<="),
    Target("deeplabv3plus", "torchvision.deeplabv3_resnet50", "img_s"),
    Target("segmenter-vits16-linear", "timm.vit_small_patch16_224+linear", "j_per_img", "<="),
)


@dataclasses.dataclass
class BenchConfig:
    res: int = 512
    batch: int = 16
    steps: int = 30
    warmup: int = 8
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    num_classes: int = NUM_CLASSES
    e2e_batches: int = 120
    e2e_images: int = 256
    e2e_set: Tuple[str, ...] = ()
    e2e_timeout_s: float = 300.0
    #: hyperparameters set on every model before its spec's overrides (--cudnn-benchmark)
    overrides: Tuple[Tuple[str, Any], ...] = ()


# ============================================================================ loading a trial
@dataclasses.dataclass
class LoadedTrial:
    """A recipe's trial class (found by ``shared.recipes``) and resolved hyperparameters."""

    spec: ModelSpec
    trial_cls: type
    hp: Dict[str, Any]

    def build(self) -> nn.Module:
        # the trial's own mapping from hyperparameters to the model's arguments
        return self.trial_cls.model_from_hparams(self.hp)


def trial_available(trial: str) -> Optional[str]:
    """None when the recipe ``trial`` and its single_gpu.yaml exist, else why not."""
    try:
        recipe = recipes.get(trial, ROOT)
    except recipes.RecipeError as e:
        return str(e)
    config = recipe.configs_dir / "single_gpu.yaml"
    return None if config.is_file() else f"{config.relative_to(ROOT)} not found"


def load_trial(spec: ModelSpec, cfg: BenchConfig, extra: Optional[Mapping[str, Any]] = None
               ) -> LoadedTrial:
    """The trial's class and resolved hyperparameters: its single_gpu.yaml read
    as a local run reads it (a search space gives its stated point), with 150 classes, the
    benchmark's batch and ``spec``'s overrides. Bad overrides raise ConfigError naming the
    config file and the key."""
    missing = trial_available(spec.trial)
    if missing:
        raise BenchError(missing)
    recipe = recipes.get(spec.trial, ROOT)
    trial_cls = recipe.trial_class()
    if recipe.family != "segmentation":  # the benchmark times the segmentation step
        raise BenchError(f"{recipe.train_script}: {trial_cls.__name__} is a {recipe.family} "
                         f"trial; the benchmark measures segmentation recipes")
    path = recipe.configs_dir / "single_gpu.yaml"
    conf = configfile.load_experiment_config(path)
    hp = configfile.point_from_space(conf["hyperparameters"], str(path))
    hp.update({"num_classes": cfg.num_classes, "global_batch_size": cfg.batch,
               **dict(cfg.overrides), **dict(spec.overrides), **dict(extra or {})})
    resolved = hpmod.resolve(hp, trial_cls.MODEL_PARAMS, where=str(path),
                             common=trial_cls.COMMON_PARAMS)
    return LoadedTrial(spec, trial_cls, resolved)

