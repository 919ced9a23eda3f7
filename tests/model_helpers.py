"""What the model test modules share: the segmentation models and trial classes (through the
recipe registry, ``shared.recipes``, as every other caller), parameter counting and the
small networks most tests run."""
from __future__ import annotations

import pathlib
import sys

from torch import nn

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the project's package ``shared`` lives at the repository root
    sys.path.insert(0, str(ROOT))

from shared import recipes  # noqa: E402

#: the segmentation recipes
SEGMENTATION = sorted(n for n, r in recipes.discover().items() if r.family == "segmentation")

unet = recipes.get("unet").model_module()
segformer = recipes.get("segformer").model_module()
deeplab = recipes.get("deeplabv3plus").model_module()
segmenter = recipes.get("segmenter").model_module()


def trial_class(model: str) -> type:
    """The trial class of trials/<model>/train.py (the registry loads it once)."""
    return recipes.get(model).trial_class()


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
