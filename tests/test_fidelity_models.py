"""Fidelity of the segmentation models to their reference implementations (issue 14): SegFormer's
logits equal to Hugging Face transformers' once the weights are mapped, every model's first loss
near ln(C) (the classifier initialised as MMSegmentation's decode heads), the parameter counts
against the published or reference figures (docs/models.md lists them), and MMSegmentation's
sliding-window evaluation. Random weights only: nothing is downloaded."""
from __future__ import annotations

import math
import re
from typing import Dict

import pytest
import torch
import torch.nn.functional as F
from transformers import SegformerConfig, SegformerForSemanticSegmentation

from model_helpers import deeplab, n_params, segformer, segmenter, trial_class, unet
from shared.engine import LocalRuntime, SegmentationTask, segmentation_loss, slide_logits, window_starts
from shared.hparams import ConfigError

pytestmark = pytest.mark.usefixtures("torch_seed")


# --------------------------------------------------------------------------- SegFormer vs transformers
# transformers 5's parameter names (a state_dict of its SegformerForSemanticSegmentation; the
# published nvidia/segformer-* files are renamed by transformers itself when read with
# from_pretrained(local_dir)) -> ours. k_proj and v_proj become our one kv Linear below.
_HF_RULES = [
    (r"segformer\.stages\.(\d+)\.patch_embeddings\.proj\.", r"encoder.stages.\1.patch_embed.proj."),
    (r"segformer\.stages\.(\d+)\.patch_embeddings\.layer_norm\.", r"encoder.stages.\1.patch_embed.norm."),
    (r"segformer\.stages\.(\d+)\.blocks\.(\d+)\.layernorm_before\.", r"encoder.stages.\1.blocks.\2.norm1."),
    (r"segformer\.stages\.(\d+)\.blocks\.(\d+)\.layernorm_after\.", r"encoder.stages.\1.blocks.\2.norm2."),
    (r"segformer\.stages\.(\d+)\.blocks\.(\d+)\.attention\.q_proj\.", r"encoder.stages.\1.blocks.\2.attn.q."),
    (r"segformer\.stages\.(\d+)\.blocks\.(\d+)\.attention\.o_proj\.", r"encoder.stages.\1.blocks.\2.attn.proj."),
    (r"segformer\.stages\.(\d+)\.blocks\.(\d+)\.attention\.sequence_reduction\.sequence_reduction\.",
     r"encoder.stages.\1.blocks.\2.attn.sr."),
    (r"segformer\.stages\.(\d+)\.blocks\.(\d+)\.attention\.sequence_reduction\.layer_norm\.",
     r"encoder.stages.\1.blocks.\2.attn.norm."),
    (r"segformer\.stages\.(\d+)\.blocks\.(\d+)\.mlp\.dwconv\.dwconv\.", r"encoder.stages.\1.blocks.\2.mlp.dwconv."),
    (r"segformer\.stages\.(\d+)\.blocks\.(\d+)\.mlp\.(fc[12])\.", r"encoder.stages.\1.blocks.\2.mlp.\3."),
    (r"segformer\.stages\.(\d+)\.layer_norm\.", r"encoder.stages.\1.norm."),
    (r"decode_head\.linear_projections\.(\d+)\.proj\.", r"decoder.proj.\1."),
    (r"decode_head\.batch_norm\.", r"decoder.fuse.1."),
    (r"decode_head\.classifier\.", r"decoder.classifier."),
]


def hf_to_ours(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """A transformers SegformerForSemanticSegmentation state dict in our SegFormer's names.

    Two tensors change shape: keys and values (two Linears there) are stacked into our one
    ``kv`` Linear, keys first; and transformers concatenates the four projected stages deepest
    first before the fuse conv, ours finest first, so the fuse conv's input-channel blocks
    are put back in stage order. Anything not mapped raises (a file of another model).
    """
    out: Dict[str, torch.Tensor] = {}
    pending: Dict[str, Dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        kv = re.fullmatch(r"segformer\.stages\.(\d+)\.blocks\.(\d+)\.attention\.([kv])_proj\.(weight|bias)", key)
        if kv:
            stage, block, which, kind = kv.groups()
            pending.setdefault(f"encoder.stages.{stage}.blocks.{block}.attn.kv.{kind}", {})[which] = value
            continue
        if key == "decode_head.linear_fuse.weight":
            blocks = value.chunk(len(set(re.findall(r"linear_projections\.(\d+)\.", " ".join(state_dict)))), dim=1)
            out["decoder.fuse.0.weight"] = torch.cat(blocks[::-1], dim=1)
            continue
        for pattern, target in _HF_RULES:
            if re.match(pattern, key):
                out[re.sub(pattern, target, key)] = value
                break
        else:
            raise KeyError(f"no rule maps transformers' {key!r}")
    for key, parts in pending.items():
        out[key] = torch.cat([parts["k"], parts["v"]], dim=0)
    return out


#: transformers configs of the variants tested (its defaults are B0's)
HF_VARIANTS = {
    "b0": {},
    "b2": {"hidden_sizes": [64, 128, 320, 512], "depths": [3, 4, 6, 3], "decoder_hidden_size": 768},
}


def _hf_config(variant: str, num_classes: int) -> SegformerConfig:
    v = segformer.VARIANTS[variant]
    return SegformerConfig(num_labels=num_classes, hidden_sizes=list(v.widths), depths=list(v.depths),
                           decoder_hidden_size=v.decoder_dim)


@pytest.mark.parametrize("variant", list(HF_VARIANTS))
def test_segformer_logits_equal_transformers(variant):
    assert _hf_config(variant, 150).to_dict() == SegformerConfig(num_labels=150, **HF_VARIANTS[variant]).to_dict()
    ref = SegformerForSemanticSegmentation(_hf_config(variant, 150)).eval()
    # Every norm and bias moved off its init (1 or 0) and BatchNorm statistics made up, so a
    # misplaced LayerNorm, bias or statistic would show in the logits.
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
        bn = ref.decode_head.batch_norm
        bn.running_mean.normal_(0, 0.1)
        bn.running_var.uniform_(0.5, 1.5)
    ours = segformer.SegFormer(150, variant=variant).eval()
    ours.load_state_dict(hf_to_ours(ref.state_dict()), strict=True)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        want = ref(pixel_values=x).logits
        got = ours(x)
    assert got.shape == want.shape == (2, 150, 16, 24)
    assert (got - want).abs().max().item() < 1e-4


def test_hf_to_ours_refuses_a_key_it_does_not_know():
    with pytest.raises(KeyError, match="no rule maps transformers' 'segformer.pooler.weight'"):
        hf_to_ours({"segformer.pooler.weight": torch.zeros(1)})


# --------------------------------------------------------------------------- the first loss
def _default_model(name: str, num_classes: int, **hp):
    """The model a trial builds from its defaults (and ``hp``)."""
    return trial_class(name).model_from_hparams({"num_classes": num_classes, **hp})


@pytest.mark.parametrize("num_classes", [150, 6])
@pytest.mark.parametrize("name,hp", [("unet", {}), ("segformer", {}), ("deeplabv3plus", {}),
                                     ("segmenter", {}), ("segmenter", {"segmenter_decoder": "linear"})],
                         ids=["unet", "segformer", "deeplabv3plus", "segmenter-mask", "segmenter-linear"])
def test_first_training_loss_is_near_ln_classes(name, hp, num_classes):
    # The first training batch: training mode, random images and labels, the trainer's loss.
    # A uniform guess costs ln(C); the fan-out init SegFormer's classifier had gave 10.5 for
    # C = 6. Segmenter's mask decoder ends in a LayerNorm over the classes, so its first
    # logits have unit variance whatever the init: about ln(C) + 0.27, as in the reference.
    model = _default_model(name, num_classes, **hp).train()
    images = torch.randn(2, 3, 64, 64)
    labels = torch.randint(0, num_classes, (2, 64, 64))
    with torch.no_grad():
        loss = segmentation_loss(model(images), labels).item()
    assert abs(loss - math.log(num_classes)) < 0.5, (loss, math.log(num_classes))


# --------------------------------------------------------------------------- parameter counts
# SegFormer: the paper's Table 1/2 figures on ADE20K (150 classes), in millions to 0.1, and
# transformers' own model exactly.
SEGFORMER_PAPER_M = {"b0": 3.8, "b1": 13.7, "b2": 27.5, "b3": 47.3, "b4": 64.1, "b5": 84.7}


@pytest.mark.parametrize("variant", list(SEGFORMER_PAPER_M))
def test_segformer_parameter_count(variant):
    with torch.device("meta"):
        ours = segformer.SegFormer(150, variant=variant)
        ref = SegformerForSemanticSegmentation(_hf_config(variant, 150))
    assert n_params(ours) == n_params(ref)
    assert round(n_params(ours) / 1e6, 1) == SEGFORMER_PAPER_M[variant]


def _official_segmenter(d: int, n: int, grid: int, decoder: str, layers: int = 2) -> int:
    """Parameters of the official Segmenter (rstrudel/segmenter: segm/model/vit.py,
    decoder.py) with 12 blocks of width ``d``, ``n`` classes and position embeddings on a
    ``grid`` x ``grid`` patch grid, counted from its layer list; without the 1000-class
    ImageNet head its encoder builds and never uses (d * 1000 + 1000 more)."""
    block = 4 * d + (3 * d * d + 3 * d) + (d * d + d) + (8 * d * d + 5 * d)  # LNs, qkv, proj, MLP
    encoder = (3 * 16 * 16 * d + d) + d + (grid * grid + 1) * d + 12 * block + 2 * d
    if decoder == "linear":
        return encoder + d * n + n
    mask = (d * d + d) + layers * block + n * d + 2 * d * d + 2 * d + 2 * n
    return encoder + mask


SEGMENTER_WIDTHS = {"vit_tiny_patch16_224": 192, "vit_small_patch16_224": 384, "vit_base_patch16_224": 768}


@pytest.mark.parametrize("decoder", ["linear", "mask"])
@pytest.mark.parametrize("backbone", list(SEGMENTER_WIDTHS))
def test_segmenter_parameter_count_is_the_official_models(backbone, decoder):
    with torch.device("meta"):
        model = _default_model("segmenter", 150, segmenter_backbone=backbone, segmenter_decoder=decoder)
    assert model.encoder.pos_embed.shape[1] == 32 * 32 + 1  # learned on the 512 px crop's grid
    assert n_params(model) == _official_segmenter(SEGMENTER_WIDTHS[backbone], 150, 32, decoder)
    if (backbone, decoder) == ("vit_small_patch16_224", "mask"):
        assert round(n_params(model) / 1e6, 2) == 26.03  # the official ViT-S/16 figure


def test_segmenter_layernorm_eps_is_what_docs_models_says():
    """docs/models.md: the encoder's LayerNorms have timm's eps 1e-6 (the official encoder's
    are PyTorch's default, 1e-5), the mask decoder's 1e-5 as the official decoder's."""
    with torch.device("meta"):
        model = _default_model("segmenter", 150)
    eps = lambda m: {x.eps for x in m.modules() if isinstance(x, torch.nn.LayerNorm)}  # noqa: E731
    assert eps(model.encoder) == {1e-6}
    assert eps(model.decoder) == {1e-5}


# DeepLab v3+ has no published parameter count for ResNet backbones; the reference is
# segmentation_models_pytorch 0.6.0's DeepLabV3Plus(encoder, encoder_weights=None,
# classes=150), measured (smp is not a dependency): the same timm ResNet features, a
# 13,152 parameters smaller head (docs/models.md says how the heads differ).
SMP_DEEPLAB = {"resnet50": 26_715_878, "resnet101": 45_708_006}
OURS_DEEPLAB = {"resnet50": 26_729_030, "resnet101": 45_721_158}


@pytest.mark.parametrize("backbone", list(SMP_DEEPLAB))
def test_deeplab_parameter_count(backbone):
    with torch.device("meta"):
        model = _default_model("deeplabv3plus", 150, deeplab_backbone=backbone)
    assert n_params(model) == OURS_DEEPLAB[backbone]
    assert n_params(model) - SMP_DEEPLAB[backbone] == 13_152


def test_unet_parameter_count_at_width_64_is_the_common_pytorch_unets():
    # milesial/Pytorch-UNet (commit 21d7850) UNet(3, 2, bilinear=False): 31,037,698,
    # measured; the same layers at base width 64.
    with torch.device("meta"):
        model = unet.UNet(2, base_channels=64, depth=4, upsampling="transpose")
    assert n_params(model) == 31_037_698
    with torch.device("meta"):
        default = _default_model("unet", 150)
    assert n_params(default) == 6_828_030  # the default: width 30, near the study's 6.7M


# --------------------------------------------------------------------------- sliding-window evaluation
@pytest.mark.parametrize("size,crop,stride,starts", [
    (512, 512, 512, [0]), (300, 512, 512, [0]), (683, 512, 512, [0, 171]),
    (683, 512, 480, [0, 171]), (1100, 512, 341, [0, 341, 588]), (1024, 512, 256, [0, 256, 512])])
def test_window_starts_are_mmsegmentations(size, crop, stride, starts):
    # MMSegmentation's slide_inference: max(size - crop + stride - 1, 0) // stride + 1 windows,
    # the i-th at min(i * stride, size - crop).
    assert window_starts(size, crop, stride) == starts


def test_slide_logits_average_the_windows():
    # A model whose logits at a pixel depend on the window (its position in the window): the
    # slide result must be, at every pixel, the mean over the windows covering it.
    image = torch.zeros(1, 3, 40, 56)

    def forward(crops):  # logit = column index inside the window, at 1/4 resolution
        b, _, h, w = crops.shape
        return torch.arange(w, dtype=torch.float32)[::4].expand(b, 1, h // 4, w // 4).clone()

    got = slide_logits(forward, image, 1, crop=[24, 32], stride=16)
    want = torch.zeros(1, 1, 40, 56)
    count = torch.zeros(1, 1, 40, 56)
    for y in window_starts(40, 24, 16):
        for x in window_starts(56, 32, 16):
            win = F.interpolate(forward(image[..., y:y + 24, x:x + 32]), size=(24, 32), mode="bilinear")
            want[..., y:y + 24, x:x + 32] += win
            count[..., y:y + 24, x:x + 32] += 1
    assert count.min() >= 1
    torch.testing.assert_close(got, want / count)


def test_slide_mode_equals_whole_mode_for_a_pointwise_model():
    # A per-pixel model gives each pixel the same logits in every window: slide == whole,
    # through the engine's evaluation step (padding of the batch, annotation resize).
    from shared.engine import Engine
    from shared.hparams import COMMON, ENGINE_KEYS
    hp = {k: p.default for k, p in COMMON.items() if k in ENGINE_KEYS}
    hp.update({"precision": "fp32", "channels_last": False, "base_batch_size": 2, "weight_decay": 0.0,
               "warmup_batches": 0, "warmup_ratio": 1.0})
    images = torch.randn(2, 3, 48, 64)
    masks = torch.randint(0, 4, (2, 48, 64))
    sizes = torch.tensor([[48, 64, 48, 64], [40, 50, 40, 50]])
    results = []
    for task in (SegmentationTask(4), SegmentationTask(4, "slide", 32, 24)):
        torch.manual_seed(0)
        engine = Engine(torch.nn.Conv2d(3, 4, 1), hp, LocalRuntime("cpu", 2), task,
                        device=torch.device("cpu"), max_batches=10)
        with torch.no_grad():
            engine.evaluate_batch((images, masks, sizes, torch.zeros(2)))
        results.append((task.confusion.matrix.clone(), task.val_loss.per_slot_reduce()))
    assert torch.equal(results[0][0], results[1][0])
    assert results[0][1] == pytest.approx(results[1][1])


def test_val_mode_errors_name_the_hyperparameter():
    with pytest.raises(ConfigError, match="hyperparameter 'val_mode' = 'tiles' is not one of whole, slide"):
        SegmentationTask(4, "tiles")
    with pytest.raises(ConfigError, match="'val_mode' = 'slide' needs 'val_crop_size'"):
        SegmentationTask(4, "slide")


def test_segmenter_trial_builds_the_encoder_at_crop_size():
    model = _default_model("segmenter", 5, crop_size=[256, 320])
    assert tuple(model.encoder.patch_embed.grid_size) == (16, 20)
    assert model.encoder.pos_embed.shape[1] == 16 * 20 + 1
