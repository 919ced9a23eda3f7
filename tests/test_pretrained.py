"""The local weights loader (shared.pretrained): checkpoint layouts, prefixes, class-sized
tensors skipped, bad files refused with their reason; and each model's own loading, whole or
into its backbone alone (CPU, tiny sizes)."""
from __future__ import annotations

import logging
import re
import sys

import pytest
import timm
import torch
from torch import nn

from model_helpers import deeplab, segmenter, small_segformer, small_segmenter, small_unet, trial_class
from shared.hparams import ConfigError
from shared.pretrained import load_local_weights

pytestmark = pytest.mark.usefixtures("torch_seed")


# --------------------------------------------------------------------------- pretrained weights

def _encode(model: nn.Module, x: torch.Tensor):
    return model.encode(x) if hasattr(model, "encode") else model.encoder(x)


def _warm_batchnorm(model: nn.Module) -> None:
    # Non-default running statistics, so the round trip checks buffers as well as weights.
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32) * 3 + 1)
    model.eval()


@pytest.mark.parametrize("model,factory,head", [
    ("unet", small_unet, {"head.weight", "head.bias"}),
    ("segformer", small_segformer, {"decoder.classifier.weight", "decoder.classifier.bias"}),
])
def test_pretrained_round_trip_skips_head(tmp_path, caplog, model, factory, head):
    source = factory(num_classes=7)
    _warm_batchnorm(source)
    path = tmp_path / "weights.pt"
    torch.save(source.state_dict(), path)

    fresh = factory(num_classes=5).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(_encode(fresh, x)[-1], _encode(source, x)[-1])
    with caplog.at_level(logging.INFO, logger="shared.pretrained"):
        summary = load_local_weights(fresh, path)
    assert set(summary["shape_mismatch"]) == head
    assert f"loaded {summary['loaded']} tensors from {path}" in caplog.text
    assert all(f"skipped {k}" in caplog.text for k in head)
    assert summary["missing"] == [] and summary["unexpected"] == []
    assert summary["loaded"] == len(source.state_dict()) - 2

    # through the trial's hyperparameter mapping, as a training run loads them
    sizes = {"unet_base_channels": 8, "unet_depth": 3} if model == "unet" else {}
    built = trial_class(model).model_from_hparams({"num_classes": 5, "pretrained_path": str(path), **sizes})
    built.eval()
    with torch.no_grad():
        for a, b, c in zip(_encode(source, x), _encode(fresh, x), _encode(built, x)):
            assert torch.equal(a, b) and torch.equal(a, c)
        assert built(x).shape[1] == 5


def test_pretrained_nested_and_prefixed_checkpoints(tmp_path):
    source = small_unet()
    state = source.state_dict()
    layouts = {
        "determined.pt": {"models_state_dict": [{f"module.{k}": v for k, v in state.items()}],
                          "optimizers_state_dict": [{}]},
        "lightning.pt": {"state_dict": {f"model.{k}": v for k, v in state.items()}, "epoch": 3},
        "plain.pt": {"model": dict(state)},
    }
    for name, obj in layouts.items():
        torch.save(obj, tmp_path / name)
        target = small_unet()
        summary = load_local_weights(target, tmp_path / name)
        assert summary == {"loaded": len(state), "missing": [], "unexpected": [],
                           "shape_mismatch": []}, name
        assert all(torch.equal(target.state_dict()[k], v) for k, v in state.items()), name


def test_pretrained_prefix_kept_when_the_model_uses_it(tmp_path):
    class Wrapper(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = nn.Linear(3, 4)
            self.extra = nn.Linear(4, 2)

    src = Wrapper()
    torch.save(src.state_dict(), tmp_path / "w.pt")
    dst = Wrapper()
    summary = load_local_weights(dst, tmp_path / "w.pt")
    assert summary["loaded"] == 4 and summary["unexpected"] == []
    assert torch.equal(dst.model.weight, src.model.weight)


def test_pretrained_reports_missing_and_unexpected(tmp_path):
    state = small_unet().state_dict()
    state.pop("head.bias")
    state["old_aux_head.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "w.pt")
    summary = load_local_weights(small_unet(), tmp_path / "w.pt")
    assert summary["missing"] == ["head.bias"]
    assert summary["unexpected"] == ["old_aux_head.weight"]


def test_pretrained_strict_refuses_differences(tmp_path):
    torch.save(small_unet(num_classes=7).state_dict(), tmp_path / "w7.pt")
    with pytest.raises(ValueError, match=r"strict loading of .*w7\.pt.*head\.weight"):
        load_local_weights(small_unet(num_classes=5), tmp_path / "w7.pt", strict=True)


def test_pretrained_safetensors(tmp_path, monkeypatch):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    source = small_segformer()
    path = tmp_path / "w.safetensors"
    safetensors_torch.save_file(source.state_dict(), str(path))
    target = small_segformer()
    assert load_local_weights(target, path)["loaded"] == len(source.state_dict())
    assert torch.equal(target.decoder.classifier.weight, source.decoder.classifier.weight)

    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    with pytest.raises(ImportError, match=r"w\.safetensors is a \.safetensors file but the "
                                          r"'safetensors' package is not installed"):
        load_local_weights(small_segformer(), path)


@pytest.mark.parametrize("where", ["https://example.com/mit_b0.pth", "hf://nvidia/mit-b0"])
def test_pretrained_refuses_urls(where):
    with pytest.raises(ValueError,
                       match=r"weights load only from a local path; '.*mit.b0.*' looks like a URL"):
        load_local_weights(small_unet(), where)
    with pytest.raises(ConfigError, match=r"'pretrained_path' = .* could not be loaded: .*local path"):
        trial_class("segformer").model_from_hparams({"num_classes": 5, "pretrained_path": where})


@pytest.mark.parametrize("where", ["nvidia/mit-b0", "no_such_dir/weights.pt"])
def test_pretrained_missing_file(tmp_path, monkeypatch, where):
    monkeypatch.chdir(tmp_path)
    expected = rf"weights load only from a local path; no file at '{re.escape(where)}'"
    with pytest.raises(FileNotFoundError, match=expected):
        load_local_weights(small_unet(), where)


def test_pretrained_directory_is_not_a_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no file at"):
        load_local_weights(small_unet(), tmp_path)


def test_pretrained_unrelated_weights_raise(tmp_path):
    path = tmp_path / "resnet.pt"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.bias": torch.zeros(1000)}, path)
    with pytest.raises(ValueError, match=r"no tensor in .*resnet\.pt matches UNet .*conv1\.weight"):
        load_local_weights(small_unet(), path)


def test_pretrained_not_a_weights_file(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("these are not weights")
    with pytest.raises(ValueError, match=r"could not read weights from .*notes\.pt"):
        load_local_weights(small_unet(), path)


def test_pretrained_refuses_pickled_objects(tmp_path):
    # weights_only: a pickle that would build arbitrary objects is refused, not executed.
    path = tmp_path / "model.pt"
    torch.save({"state_dict": small_unet().state_dict(), "trainer": _Opaque()}, path)
    with pytest.raises(ValueError, match=r"could not read weights from .*model\.pt"):
        load_local_weights(small_unet(), path)


class _Opaque:
    pass


def test_pretrained_without_tensors(tmp_path):
    path = tmp_path / "meta.pt"
    torch.save({"epoch": 3, "lr": 0.1}, path)
    with pytest.raises(ValueError, match=r"meta\.pt holds no tensors .*epoch, lr"):
        load_local_weights(small_unet(), path)


# --------------------------------------------------------------------------- into a backbone alone

def test_segmenter_pretrained_round_trip_skips_class_sized_tensors(tmp_path):
    source = small_segmenter(7)
    path = tmp_path / "segmenter.pt"
    torch.save(source.state_dict(), path)
    built = trial_class("segmenter").model_from_hparams(
        {"num_classes": 5, "pretrained_path": str(path)}).eval()
    source.eval()
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        assert torch.equal(built.encoder.forward_features(x), source.encoder.forward_features(x))
    s, b = source.state_dict(), built.state_dict()
    class_sized = {"decoder.cls_emb", "decoder.mask_norm.weight", "decoder.mask_norm.bias"}
    for k in s:
        assert torch.equal(s[k], b[k]) != (k in class_sized), k


def test_segmenter_loads_imagenet_vit_into_encoder(tmp_path):
    # A timm classification checkpoint: keys without the "encoder." prefix, plus its head.
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    path = tmp_path / "vit_tiny.pt"
    torch.save(vit.state_dict(), path)
    model = small_segmenter(5, img_size=224)  # the checkpoint's own 14x14 grid
    summary = segmenter.load_pretrained(model, str(path))
    assert summary["unexpected"] == ["head.weight", "head.bias"]
    assert summary["missing"] == [] and summary["shape_mismatch"] == []
    for k, v in model.encoder.state_dict().items():
        assert torch.equal(v, vit.state_dict()[k]), k


def test_segmenter_resamples_imagenet_position_embeddings_to_its_crop_grid(tmp_path):
    # The model is built at the 512 px crop (a 32x32 grid); a 224 px ImageNet ViT has 14x14
    # embeddings. They are resampled (bicubic, timm's), not skipped as a shape mismatch.
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    path = tmp_path / "vit_tiny.pt"
    torch.save(vit.state_dict(), path)
    model = small_segmenter(5, img_size=512)
    summary = segmenter.load_pretrained(model, str(path))
    assert summary["shape_mismatch"] == [] and summary["resampled"] == ["pos_embed"]
    pos = model.encoder.pos_embed
    assert pos.shape == (1, 1 + 32 * 32, 192)
    assert torch.equal(pos[:, :1], vit.pos_embed[:, :1])  # the class token's, unchanged
    want = timm.layers.resample_abs_pos_embed(vit.pos_embed, new_size=[32, 32], old_size=[14, 14])
    torch.testing.assert_close(pos, want)


def test_deeplab_loads_imagenet_resnet_into_backbone(tmp_path, r50):
    # The key names of timm's ResNet-50 classifier (built on the meta device: names and shapes
    # only), with random values for the stem and the ImageNet head.
    with torch.device("meta"):
        names = timm.create_model("resnet50", pretrained=False).state_dict()
    state = {k: torch.randn(v.shape) if v.is_floating_point() else torch.zeros(v.shape, dtype=v.dtype)
             for k, v in names.items() if k.startswith(("conv1", "bn1", "fc"))}
    path = tmp_path / "resnet50_stem.pt"
    torch.save(state, path)
    summary = deeplab.load_pretrained(r50, str(path))
    assert summary["loaded"] == len(state) - 2 and summary["unexpected"] == ["fc.weight", "fc.bias"]
    assert torch.equal(r50.backbone.conv1.weight, state["conv1.weight"])
    assert torch.equal(r50.backbone.bn1.running_var, state["bn1.running_var"])


def test_pretrained_unrelated_file_names_the_whole_model(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"unet.head.weight": torch.zeros(3, 8, 1, 1)}, path)
    build = trial_class("segmenter").model_from_hparams
    with pytest.raises(ConfigError, match=r"'pretrained_path' = .*other\.pt' could not be loaded: "
                                          r"no tensor in .*other\.pt matches Segmenter"):
        build({"num_classes": 5, "pretrained_path": str(path)})
    with pytest.raises(ConfigError, match=r"looks like a URL"):
        build({"num_classes": 5, "pretrained_path": "https://example.com/vit_tiny.pth"})
