"""Image classification networks by name, from timm and torchvision, built for the trial.

The architectures are those of the source documents: 001 compares AlexNet, MobileNet v2,
ResNet-50 and VGG-16; 004 fine-tunes DenseNet201, Xception, ResNet152V2, EfficientNetB7 and
EfficientNetV2-XL; 002 fine-tunes a ResNet-18. ``ARCHITECTURES`` maps an architecture name
(the trial's ``arch`` hyperparameter) to a constructor; ``build_classifier`` builds one. AlexNet, VGG-16 and MobileNet v2 come from torchvision (the
PyTorch models 001 trained, whose published weights use torchvision's key names); the others
from timm, where ResNet's key names are torchvision's too. ``xception`` is timm's
``legacy_xception``, the 2017 network that Keras (004) ships; ``tf_efficientnet_b7`` and
``tf_efficientnetv2_xl`` are the TensorFlow ports (TF "same" padding, slower in PyTorch),
to use with weights converted from TF/Keras, while ``efficientnet_b7`` and
``efficientnetv2_xl`` are the PyTorch-native versions to train from scratch.

Nothing is downloaded: every model is built with ``pretrained=False`` / ``weights=None`` and
weights come only from ``weights``, a local file (``shared.pretrained``). When they do,
inputs are normalised as in their pre-training (``data_config``).

``freeze_backbone``: only the classifier head trains, the rest is a fixed feature extractor
(004's frozen Keras base): parameters without gradients and BatchNorm layers replaced by
timm's frozen BatchNorm (running statistics used and never updated, whatever
``model.train()`` says, which Determined calls before every training chunk).

``grad_checkpointing``: activations inside checkpointed blocks are dropped after the forward
pass and recomputed during backward (002: less memory, more compute). timm's own
``set_grad_checkpointing`` where the model has it; ``torch.utils.checkpoint`` (non-reentrant)
around torchvision's feature blocks and Xception's twelve blocks otherwise. A side effect of
every such scheme: BatchNorm layers inside a checkpointed block run their forward twice in
training mode, so their running statistics take two momentum steps per batch.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import timm
import torch
import torchvision
from timm.layers import freeze_batch_norm_2d
from torch import nn
from torch.utils.checkpoint import checkpoint

from shared.modelargs import ArgumentError, boolean, integer, require
from shared.pretrained import load_local_weights

log = logging.getLogger("image_classification.model")


@dataclass(frozen=True)
class Arch:
    """How to build one ``arch`` value."""

    library: str           # "timm" or "torchvision"
    name: str              # the constructor's name in that library
    #: smallest square input (px) the network accepts, measured by a forward pass; 1 where
    #: padding and adaptive pooling let any size through (the image_size schema floor, 16, rules)
    min_size: int
    checkpointing: str     # "timm" (set_grad_checkpointing), "features" or "blocks" (ours)
    source: str            # which source document uses it


ARCHITECTURES: Dict[str, Arch] = {
    "alexnet": Arch("torchvision", "alexnet", 63, "features", "001"),
    "vgg16": Arch("torchvision", "vgg16", 32, "features", "001"),
    "mobilenet_v2": Arch("torchvision", "mobilenet_v2", 1, "features", "001"),
    "resnet18": Arch("timm", "resnet18", 1, "timm", "002"),
    "resnet50": Arch("timm", "resnet50", 1, "timm", "001"),
    "resnet152": Arch("timm", "resnet152", 1, "timm", "004 (v1)"),
    "resnet152v2": Arch("timm", "resnetv2_152", 1, "timm", "004"),
    "densenet201": Arch("timm", "densenet201", 29, "timm", "004"),
    "xception": Arch("timm", "legacy_xception", 1, "blocks", "004"),
    "efficientnet_b7": Arch("timm", "efficientnet_b7", 1, "timm", "004"),
    "tf_efficientnet_b7": Arch("timm", "tf_efficientnet_b7", 1, "timm", "004 (Keras weights)"),
    "efficientnetv2_xl": Arch("timm", "efficientnetv2_xl", 1, "timm", "004"),
    "tf_efficientnetv2_xl": Arch("timm", "tf_efficientnetv2_xl", 1, "timm", "004 (TF weights)"),
}

#: normalisation and evaluation resize of training from scratch (001's ImageNet statistics)
IMAGENET_CONFIG: Dict[str, Any] = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
                                   "interpolation": "bilinear", "crop_pct": 0.875, "crop_mode": "center"}


def arch_spec(arch: str) -> Arch:
    """The registry entry of ``arch``; ArgumentError naming the argument if unknown."""
    try:
        return ARCHITECTURES[arch]
    except (KeyError, TypeError):  # TypeError: an unhashable value (a list) is no name either
        raise ArgumentError("image classifier", "arch", arch,
                            f"is not one of {', '.join(ARCHITECTURES)}") from None


def create(arch: str, num_classes: int) -> nn.Module:
    """The bare network, randomly initialised, with a ``num_classes``-way classifier."""
    spec = arch_spec(arch)
    if spec.library == "torchvision":
        return getattr(torchvision.models, spec.name)(weights=None, num_classes=num_classes)
    # pretrained=False always: a training task must never reach for the internet.
    return timm.create_model(spec.name, pretrained=False, num_classes=num_classes)


def classifier_of(model: nn.Module, arch: str) -> nn.Module:
    """The classifier head: timm's ``get_classifier()``; torchvision's ``classifier`` (AlexNet
    and VGG: the three fully connected layers, Keras' "top"; MobileNet v2: dropout + linear)."""
    if arch_spec(arch).library == "timm":
        return model.get_classifier()
    return model.classifier


def freeze_all_but_head(model: nn.Module, arch: str) -> nn.Module:
    """Freeze everything but the classifier head, in place where possible; returns the model.

    BatchNorm layers outside the head become frozen BatchNorm (their statistics as loaded);
    the head keeps trainable parameters.
    """
    head = classifier_of(model, arch)
    head_params = {id(p) for p in head.parameters()}
    if not head_params:
        raise ValueError(f"{arch}: the classifier head has no parameters to train")
    for p in model.parameters():
        p.requires_grad_(id(p) in head_params)

    def freeze_outside_head(module: nn.Module) -> None:
        for name, child in list(module.named_children()):
            if child is head:
                continue
            if any(m is head for m in child.modules()):  # a container of the head (timm ClassifierHead)
                freeze_outside_head(child)
            else:
                setattr(module, name, freeze_batch_norm_2d(child))

    freeze_outside_head(model)
    return model


class CheckpointedSequential(nn.Sequential):
    """An ``nn.Sequential`` run as checkpointed segments, each starting at a child whose first
    leaf module is a convolution (a VGG stage's conv-ReLU pairs, an AlexNet conv-ReLU-pool, a
    MobileNet v2 inverted residual block). Starting segments at convolutions keeps an in-place
    ReLU from ever modifying a segment's saved input. The children and their state_dict keys
    are those of the Sequential it replaces, so checkpoints load either way."""

    def __init__(self, seq: nn.Sequential) -> None:
        super().__init__(OrderedDict(seq.named_children()))
        starts = [i for i, child in enumerate(self) if isinstance(_first_leaf(child), nn.Conv2d)]
        if not starts or starts[0] != 0:
            starts = [0] + starts
        self.bounds = list(zip(starts, starts[1:] + [len(self)]))

    def _segment(self, start: int, end: int, x: torch.Tensor) -> torch.Tensor:
        for i in range(start, end):
            x = self[i](x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and torch.is_grad_enabled()):
            return super().forward(x)
        for start, end in self.bounds:
            x = checkpoint(self._segment, start, end, x, use_reentrant=False)
        return x


def _first_leaf(module: nn.Module) -> nn.Module:
    children = list(module.children())
    return module if not children else _first_leaf(children[0])


def _checkpoint_forward(module: nn.Module) -> None:
    """Make ``module``'s forward checkpointed in training, keeping its class and state_dict keys.

    Xception's blocks are attributes called one after the other in ``forward_features``, not
    an ``nn.Sequential``, and timm does not checkpoint them; wrapping each block in another
    module would rename its parameters (``block1.module.*``), so the instance's ``forward`` is
    replaced instead.
    """
    inner = module.forward

    def forward(x: torch.Tensor) -> torch.Tensor:
        if module.training and torch.is_grad_enabled():
            return checkpoint(inner, x, use_reentrant=False)
        return inner(x)

    module.forward = forward


def enable_grad_checkpointing(model: nn.Module, arch: str) -> List[str]:
    """Turn on gradient checkpointing; returns what is checkpointed (for the log)."""
    spec = arch_spec(arch)
    if spec.checkpointing == "timm":
        model.set_grad_checkpointing(True)
        return [f"timm {spec.name}.set_grad_checkpointing"]
    if spec.checkpointing == "features":
        model.features = CheckpointedSequential(model.features)
        return [f"features[{a}:{b}]" for a, b in model.features.bounds]
    blocks = [name for name, _ in model.named_children() if name.startswith("block")]
    for name in blocks:
        _checkpoint_forward(getattr(model, name))
    return blocks


def data_config(model: Optional[nn.Module], arch: str, pretrained: bool) -> Dict[str, Any]:
    """Normalisation (mean, std) and evaluation resize (interpolation, crop_pct, crop_mode) of
    the network ``model`` of architecture ``arch``, ``pretrained`` or not.

    From scratch: ImageNet statistics, bilinear, 0.875, centre crop (001's preprocessing, the
    same for every architecture). With pre-trained weights: those of the pre-training, i.e.
    timm's resolved data config of the architecture's default weights (Xception and the TF
    EfficientNetV2 use mean and std 0.5, not ImageNet's), or the ImageNet ones for
    torchvision's models.
    """
    spec = arch_spec(arch)
    if not pretrained or spec.library == "torchvision":
        return dict(IMAGENET_CONFIG)
    cfg = timm.data.resolve_data_config({}, model=model)
    # timm also knows a "border" mode (letterboxing) that no network here uses by default
    mode = cfg.get("crop_mode", "center")
    return {"mean": tuple(cfg["mean"]), "std": tuple(cfg["std"]), "interpolation": cfg["interpolation"],
            "crop_pct": float(cfg["crop_pct"]), "crop_mode": mode if mode == "squash" else "center"}


def build_classifier(arch: str, num_classes: int, *, weights: Optional[str] = None,
                     freeze_backbone: bool = False, grad_checkpointing: bool = False) -> nn.Module:
    """The network ``arch`` with a ``num_classes``-way classifier.

    ``weights``: a local weights file, loaded before freezing so that frozen BatchNorm keeps
    the loaded statistics (None: random initialisation). ``freeze_backbone``: only the
    classifier head trains. ``grad_checkpointing``: recompute activations in backward. The
    smallest input the network takes is ``arch_spec(arch).min_size``.

    Raises:
        ArgumentError (a ValueError naming the argument): unknown ``arch``, ``num_classes``
            not an integer >= 1, ``grad_checkpointing`` together with ``freeze_backbone``
            (nothing to checkpoint: a frozen backbone keeps no activations for backward), or
            ``weights`` that cannot be loaded.
    """
    arch_spec(arch)  # an unknown arch fails here, before anything is checked or built
    require("image classifier", "num_classes", num_classes, integer(1))
    require("image classifier", "freeze_backbone", freeze_backbone, boolean)
    require("image classifier", "grad_checkpointing", grad_checkpointing, boolean)
    if freeze_backbone and grad_checkpointing:
        raise ArgumentError("image classifier", "grad_checkpointing", grad_checkpointing,
                            "is not possible with freeze_backbone: a frozen backbone keeps no "
                            "activation for backward, so there is nothing to checkpoint")
    model = create(arch, num_classes)
    if weights:
        try:
            load_local_weights(model, weights)
        except (ValueError, FileNotFoundError, ImportError) as e:
            raise ArgumentError("image classifier", "weights", weights,
                                f"could not be loaded: {e}") from None
    elif freeze_backbone:
        log.warning("freeze_backbone without pretrained weights: the frozen backbone is random "
                    "(a random-features baseline)")
    if freeze_backbone:
        freeze_all_but_head(model, arch)
    if grad_checkpointing:
        what = enable_grad_checkpointing(model, arch)
        log.info("%s: gradient checkpointing on %s", arch, ", ".join(what))
    return model
