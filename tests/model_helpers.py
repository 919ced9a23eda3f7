"""What the model test modules share: the segmentation models loaded by path, their trial
classes, parameter counting and the small networks most tests run.

Every recipe's files are called ``model.py`` and ``train.py``; each is loaded here under its
own module name rather than via sys.path, where the first one imported would shadow the
others. Loaded once per test session, so that every test module sees the same classes.
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import pathlib
import sys
from types import ModuleType
from typing import Iterator

from torch import nn

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the project's package ``shared`` lives at the repository root
    sys.path.insert(0, str(ROOT))

#: the trial class of each segmentation recipe's train.py
TRIAL_CLASSES = {"unet": "UNetTrial", "segformer": "SegFormerTrial",
                 "deeplabv3plus": "DeepLabV3PlusTrial", "segmenter": "SegmenterTrial"}


def load_by_path(name: str, rel: str) -> ModuleType:
    """The file ``rel`` (relative to the repository root) imported as module ``name``."""
    spec = importlib.util.spec_from_file_location(name, ROOT / rel)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


unet = load_by_path("unet_model_under_test", "trials/unet/model.py")
segformer = load_by_path("segformer_model_under_test", "trials/segformer/model.py")
deeplab = load_by_path("deeplabv3plus_model_under_test", "trials/deeplabv3plus/model.py")
segmenter = load_by_path("segmenter_model_under_test", "trials/segmenter/model.py")


@contextlib.contextmanager
def trial_module(model: str) -> Iterator[ModuleType]:
    """Import trials/<model>/train.py, whose ``from model import ...`` must find its own
    model.py: put its directory first on sys.path and drop any other ``model`` module."""
    saved = sys.modules.pop("model", None)
    sys.path.insert(0, str(ROOT / "trials" / model))
    try:
        yield load_by_path(f"{model}_train_under_test", f"trials/{model}/train.py")
    finally:
        sys.path.remove(str(ROOT / "trials" / model))
        sys.modules.pop("model", None)
        if saved is not None:
            sys.modules["model"] = saved


@functools.lru_cache(maxsize=None)
def trial_class(model: str) -> type:
    """The trial class of trials/<model>/train.py (loaded once)."""
    with trial_module(model) as train:
        return getattr(train, TRIAL_CLASSES[model])


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def small_unet(num_classes: int = 5, **kw) -> nn.Module:
    """A U-Net of base width 8 and depth 3 (arguments in ``kw`` override)."""
    return unet.UNet(num_classes, **{"base_channels": 8, "depth": 3, **kw})


def small_segformer(num_classes: int = 5, **kw) -> nn.Module:
    """SegFormer-B0, the smallest variant."""
    return segformer.SegFormer(num_classes, **kw)


def small_segmenter(num_classes: int = 5, **kw) -> nn.Module:
    """Segmenter on ViT-T/16, the smallest backbone."""
    return segmenter.Segmenter(num_classes, **kw)
