"""The U-Net of ``trials/unet`` for rare small objects: one output logit, ``in_channels`` 1 or 3,
dropout at the end of the contracting path.

The network is not copied: ``UNet`` comes from ``trials/unet/model.py`` through the recipe
registry (``shared.recipes.model_of``; a package of this recipe ships that file too). What is
added is the dropout, wrapped around the bottleneck (the U-Net paper's "drop-out layers at the
end of the contracting path"; the source study, 003, added dropout and L2 against
over-fitting once its network grew deeper).

Defaults: ``base_channels=26, depth=4`` gives 5.13M parameters with one input band (the study's
final network had 5M trainable parameters; base 24: 4.37M, base 28: 5.94M). Depth 4 pools a
256 px tile down to 16 px; objects a few pixels wide are still seen at full resolution by the
skip connections.
"""
from __future__ import annotations

from typing import Annotated

from torch import nn

from shared.modelargs import checked, fraction
from shared.recipes import model_of

_unet = model_of("unet")
UNet = _unet.UNet
DEFAULT_BASE_CHANNELS = 26
DEFAULT_DEPTH = 4


class RareObjectsUNet(UNet):
    """``UNet`` with one output channel (the object logit) and ``nn.Dropout(dropout)`` after
    the bottleneck. Arguments as ``UNet``'s (allowed values and meanings; its docstring
    describes those not below), less ``num_classes``, plus ``dropout``.

    Args:
        base_channels: channels of the first stage (26: 5.1M parameters, the study's size).
        dropout: dropout after the U-Net's bottleneck (end of the contracting path).
    """

    @checked
    def __init__(self, in_channels: _unet.Channels = 1,
                 base_channels: _unet.BaseChannels = DEFAULT_BASE_CHANNELS,
                 depth: _unet.Depth = DEFAULT_DEPTH, upsampling: _unet.Upsampling = "transpose",
                 dropout: Annotated[float, fraction] = 0.5) -> None:
        super().__init__(1, in_channels, base_channels, depth, upsampling)
        # The object logit keeps PyTorch's default initialisation (as the source study's Keras
        # U-Net kept its framework's), not UNet's normal(0, 0.01): that one is MMSegmentation's
        # rule for multi-class decode heads on ADE20K (docs/models.md). Measured with
        # `python -m shared.objects.demo`: with normal(0, 0.01) the balanced runs found no
        # object in 240 batches (recall 0, validation loss 0.08: every pixel background), with
        # the default init they found all of them (README, "The miniature").
        self.head.reset_parameters()
        self.bottleneck = nn.Sequential(self.bottleneck, nn.Dropout(dropout))
