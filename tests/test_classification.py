"""Image classification recipes: the networks (all of them built, most stepped), frozen
backbones, gradient checkpointing, ImageFolder data and its bad inputs, exact validation
metrics, resource sampling, the experiment configs, and one tiny training run through the real
command line with energy from a fake RAPL tree."""
from __future__ import annotations

import dataclasses

import json
import os
import pathlib
import subprocess
import sys
import time
from typing import Any, Dict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import ExifTags, Image

from shared import configfile
from shared import hparams as hpmod
from shared import recipes
from shared import runlog
from shared.classification import data as cdata
from shared.classification.resources import ResourceSampler, combine, saved_tensor_bytes
from shared.classification.synthetic import generate
from shared.classification.trial import CLASSIFICATION_PARAMS, AccuracyReducer, ClassificationTrial
from shared.data import DataError
from shared.hparams import ConfigError

ROOT = pathlib.Path(__file__).resolve().parents[1]
RECIPE = recipes.get("image_classification")
CONFIGS = RECIPE.configs_dir
sys.path.insert(0, str(ROOT / "tests"))
from fakes.powercap import FakePowercap  # noqa: E402


# trials/image_classification/model.py, as the recipe registry loads it (every trial has a
# "model.py", so it is loaded under a name of its own)
M = RECIPE.model_module()


def build_model(hp: Dict[str, Any]) -> torch.nn.Module:
    """The network of hyperparameters ``hp``, by the trial's own mapping to model arguments."""
    return _trial_schema().model_from_hparams(hp)


def hp_for(arch: str, **kw: Any) -> Dict[str, Any]:
    return {"arch": arch, "num_classes": 3, "image_size": 32, "pretrained_path": None,
            "freeze_backbone": False, "grad_checkpointing": False, **kw}


# ----------------------------------------------------------------------------- networks
#: parameters with a 1000-class head: torchvision's documented counts (AlexNet ... DenseNet,
#: the ResNets are timm's with torchvision's layout), the Xception paper's Table 3, and the
#: rounded figures of the EfficientNet, EfficientNetV2 and pre-activation ResNet papers
PUBLISHED = {
    "alexnet": 61_100_840, "vgg16": 138_357_544, "mobilenet_v2": 3_504_872, "resnet18": 11_689_512,
    "resnet50": 25_557_032, "resnet152": 60_192_808, "densenet201": 20_013_928,
    "xception": 22_855_952,
}
ROUNDED = {"resnet152v2": 60.2e6, "efficientnet_b7": 66e6, "tf_efficientnet_b7": 66e6,
           "efficientnetv2_xl": 208e6, "tf_efficientnetv2_xl": 208e6}


def test_registry_covers_the_source_documents_networks():
    assert set(M.ARCHITECTURES) == set(PUBLISHED) | set(ROUNDED)
    # the largest EfficientNetV2 timm has
    import timm
    assert {"efficientnetv2_xl", "tf_efficientnetv2_xl"} <= set(timm.list_models("*efficientnetv2_xl"))


@pytest.mark.parametrize("arch", sorted(M.ARCHITECTURES))
def test_every_architecture_builds_at_its_published_size(arch):
    # On the meta device: shapes without memory or initialisation, so the 208M-parameter
    # networks cost a fraction of a second.
    with torch.device("meta"):
        net = M.create(arch, 1000)
        n = sum(p.numel() for p in net.parameters())
        head = M.classifier_of(net, arch)
    if arch in PUBLISHED:
        assert n == PUBLISHED[arch]
    else:
        assert n == pytest.approx(ROUNDED[arch], rel=0.01)
    last = [m for m in head.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))][-1]
    assert (last.out_channels if isinstance(last, torch.nn.Conv2d) else last.out_features) == 1000


#: every listed architecture, stepped for real at its smallest accepted size (0.1-0.4 s each,
#: 1.3-3.4 s for ResNet-152, EfficientNet-B7 and EfficientNetV2-XL with the suite's one CPU
#: thread); resnet152v2 is stepped, head only, in the frozen-backbone test.
STEPPED = {"alexnet": 63, "vgg16": 32, "mobilenet_v2": 16, "resnet18": 16, "resnet50": 16,
           "densenet201": 29, "xception": 16, "resnet152": 32, "efficientnet_b7": 32,
           "efficientnetv2_xl": 32}


@pytest.mark.parametrize("arch", sorted(STEPPED))
def test_architecture_trains_one_step(arch):
    torch.manual_seed(0)
    net = build_model(hp_for(arch, image_size=STEPPED[arch])).train()
    before = [p.detach().clone() for p in net.parameters()]
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x = torch.randn(2, 3, STEPPED[arch], STEPPED[arch])
    logits = net(x)
    assert logits.shape == (2, 3)
    loss = F.cross_entropy(logits, torch.tensor([0, 2]))
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    params = list(net.parameters())
    assert all(p.grad is not None for p in params), "a parameter is outside the graph"
    # the stem and the classifier moved (timm's ResNets zero the last BatchNorm of each
    # residual branch, so the branches' own weights only move from the second step on)
    assert not torch.equal(before[0], params[0]) and not torch.equal(before[-1], params[-1])


@pytest.mark.parametrize("arch, ok, too_small",
                         [("alexnet", 63, 62), ("vgg16", 32, 31), ("densenet201", 29, 28)])
def test_smallest_input_is_what_the_registry_says(arch, ok, too_small):
    assert M.ARCHITECTURES[arch].min_size == ok
    with torch.device("meta"):
        net = M.create(arch, 3).eval()
        assert net(torch.empty(1, 3, ok, ok)).shape == (1, 3)
        with pytest.raises(RuntimeError):
            net(torch.empty(1, 3, too_small, too_small))
    with pytest.raises(ConfigError,
                       match=rf"'image_size' = {too_small} is below {arch}'s smallest input, {ok} px"):
        build_model(hp_for(arch, image_size=too_small))


def _weights_file(tmp_path, arch):
    torch.manual_seed(123)
    src = M.create(arch, 10)  # another class count: the file's classifier is skipped on load
    with torch.no_grad():  # statistics a fresh network would not have
        for m in src.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    path = tmp_path / f"{arch}.pth"
    torch.save(src.state_dict(), path)
    return path, src.state_dict()


@pytest.mark.parametrize("arch, size", [("resnet18", 32), ("mobilenet_v2", 32), ("resnet152v2", 16)])
def test_freeze_backbone_trains_the_head_only(tmp_path, arch, size):
    path, weights = _weights_file(tmp_path, arch)
    net = build_model(hp_for(arch, image_size=size, freeze_backbone=True, pretrained_path=str(path)))
    head = {id(p) for p in M.classifier_of(net, arch).parameters()}
    trainable = [p for p in net.parameters() if p.requires_grad]
    assert trainable and {id(p) for p in trainable} == head
    before = {k: v.clone() for k, v in net.state_dict().items()}
    # the backbone is the file's, BatchNorm statistics included
    loaded = [k for k in before if k in weights and weights[k].shape == before[k].shape]
    assert len(loaded) > 20 and all(torch.equal(before[k], weights[k]) for k in loaded)
    net.train()  # what Determined calls before each training chunk
    opt = torch.optim.SGD(trainable, lr=0.5, momentum=0.9)
    for _ in range(2):
        F.cross_entropy(net(torch.randn(4, 3, size, size)), torch.tensor([0, 1, 2, 0])).backward()
        opt.step()
        opt.zero_grad()
    after = net.state_dict()
    head_keys = {k for k, v in net.named_parameters() if id(v) in head}
    moved = {k for k in after if not torch.equal(before[k], after[k])}
    assert moved == head_keys, f"moved outside the head: {sorted(moved - head_keys)[:5]}"


@pytest.mark.parametrize("arch, size", [("resnet18", 32), ("mobilenet_v2", 32), ("xception", 32)])
def test_grad_checkpointing_keeps_less_and_computes_the_same(arch, size):
    """The three mechanisms (timm's, torchvision feature segments, Xception's blocks): fewer
    bytes kept for backward, the same gradients, and the same state_dict keys."""
    torch.manual_seed(0)
    plain = build_model(hp_for(arch, image_size=size))
    ckpt = build_model(hp_for(arch, image_size=size, grad_checkpointing=True))
    ckpt.load_state_dict(plain.state_dict())  # strict: the keys did not change
    x, y = torch.randn(2, 3, size, size), torch.tensor([0, 2])
    kept = []
    for net in (plain, ckpt):
        net.train()
        torch.manual_seed(1)  # the same dropout masks
        n, loss = saved_tensor_bytes(lambda: F.cross_entropy(net(x), y), tuple(net.parameters()))
        loss.backward()
        kept.append(n)
    assert kept[1] < 0.75 * kept[0], kept
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


def test_model_configuration_errors(tmp_path):
    with pytest.raises(ConfigError, match="'grad_checkpointing' = True is not possible with freeze_backbone"):
        build_model(hp_for("resnet18", freeze_backbone=True, grad_checkpointing=True))
    with pytest.raises(ConfigError, match=r"'arch' = 'resnet51' is not one of alexnet, vgg16"):
        build_model(hp_for("resnet51"))
    missing = tmp_path / "nope.pth"
    with pytest.raises(ConfigError, match=rf"'pretrained_path' = '{missing}' could not be loaded: .*no file at"):
        build_model(hp_for("resnet18", pretrained_path=str(missing)))
    other, _ = _weights_file(tmp_path, "mobilenet_v2")
    with pytest.raises(ConfigError, match=r"'pretrained_path' = .*mobilenet_v2\.pth' could not be loaded: no tensor .* matches"):
        build_model(hp_for("resnet18", pretrained_path=str(other)))


def test_normalisation_follows_the_pretraining():
    net = M.create("xception", 3)
    assert M.data_config(net, "xception", pretrained=False)["mean"] == (0.485, 0.456, 0.406)  # from scratch
    cfg = M.data_config(net, "xception", pretrained=True)
    assert cfg["mean"] == (0.5, 0.5, 0.5) and cfg["interpolation"] == "bicubic"
    tv = M.data_config(None, "alexnet", pretrained=True)
    assert tv == M.IMAGENET_CONFIG
    with torch.device("meta"):
        tf_port = M.create("tf_efficientnetv2_xl", 3)
    assert M.data_config(tf_port, "tf_efficientnetv2_xl", pretrained=True) == {
        "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "interpolation": "bicubic", "crop_pct": 1.0,
        "crop_mode": "squash"}


# ----------------------------------------------------------------------------- data
@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("cls") / "data", num_classes=3, per_class=16, val_per_class=4,
                    size=32, seed=1)


def test_synthetic_set_layout_and_determinism(tmp_path, synth):
    splits = cdata.load_splits(synth, 3)
    assert splits.classes == ["class_00", "class_01", "class_02"] and splits.val_source == "val/"
    assert len(splits.train) == 48 and len(splits.val) == 12
    again = generate(tmp_path / "again", num_classes=3, per_class=16, val_per_class=4, size=32, seed=1)
    name = "train/class_02/00003.jpg"
    assert (again / name).read_bytes() == (synth / name).read_bytes()
    with pytest.raises(ValueError, match="already holds files"):
        generate(again, num_classes=3, per_class=1)
    # classes differ in colour, the easiest of their three cues
    means = [np.mean([np.asarray(Image.open(p)).reshape(-1, 3).mean(0) for p, k in splits.train if k == c], 0)
             for c in range(3)]
    assert min(np.abs(means[a] - means[b]).max() for a in range(3) for b in range(a + 1, 3)) > 20


def test_synthetic_command_line(tmp_path):
    out = tmp_path / "s"
    p = subprocess.run([sys.executable, "-m", "shared.classification.synthetic", "--out", str(out),
                        "--num-classes", "2", "--per-class", "3", "--val-per-class", "0", "--size", "16"],
                       capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert sorted(q.name for q in (out / "train").iterdir()) == ["class_00", "class_01"]
    assert not (out / "val").exists()
    p = subprocess.run([sys.executable, "-m", "shared.classification.synthetic", "--out", str(out),
                        "--size", "8"], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 2 and "size must be >= 16 px, got 8" in p.stderr


def test_held_out_split_is_stratified_seeded_and_disjoint(tmp_path):
    root = generate(tmp_path / "d", num_classes=3, per_class=10, val_per_class=0, size=16)
    a = cdata.load_splits(root, 3, val_fraction=0.2, seed=5)
    b = cdata.load_splits(root, 3, val_fraction=0.2, seed=5)
    c = cdata.load_splits(root, 3, val_fraction=0.2, seed=6)
    assert a.val == b.val and a.val != c.val and "0.2 of train/ (seed 5)" == a.val_source
    assert [k for _, k in a.val].count(0) == [k for _, k in a.val].count(2) == 2
    assert not set(a.train) & set(a.val) and len(a.train) + len(a.val) == 30
    # never the last image of a class
    tiny = [(pathlib.Path("x"), 0), (pathlib.Path("y"), 1), (pathlib.Path("z"), 1)]
    tr, va = cdata.stratified_split(tiny, 0.5, 0)
    assert [s[1] for s in tr].count(0) == 1 and len(va) == 1
    with pytest.raises(DataError, match=r"no validation directory .*/d/val and val_fraction is 0"):
        cdata.load_splits(root, 3, val_fraction=0.0)
    with pytest.raises(DataError, match=r"val_fraction=0.01 holds out no image of .*/d/train"):
        cdata.load_splits(root, 3, val_fraction=0.01)


def _tree(root: pathlib.Path, spec: Dict[str, int]) -> pathlib.Path:
    """``{"train/a": 2, "val/a": 1, ...}``: that many small PNGs per directory."""
    for directory, count in spec.items():
        d = root / directory
        d.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.new("RGB", (20, 24), (10 * i, 80, 160)).save(d / f"{i}.png")
    return root


def test_bad_layouts_name_the_path(tmp_path):
    with pytest.raises(DataError, match=rf"dataset root {tmp_path}/none does not exist.*"
                                        rf"expected {tmp_path}/none/train/<class name>/\*\.jpg"):
        cdata.load_splits(tmp_path / "none", 3)
    (tmp_path / "flat").mkdir()
    with pytest.raises(DataError, match=rf"missing training directory {tmp_path}/flat/train"):
        cdata.load_splits(tmp_path / "flat", 3)
    (tmp_path / "flat/train/.ipynb_checkpoints").mkdir(parents=True)
    with pytest.raises(DataError, match=rf"no class directories in {tmp_path}/flat/train"):
        cdata.load_splits(tmp_path / "flat", 3)

    root = _tree(tmp_path / "r", {"train/cat": 2, "train/dog": 2, "val/cat": 1})
    with pytest.raises(DataError, match=rf"{root}/train holds 2 class directories \(cat, dog\) but "
                                        rf"num_classes is 3; set num_classes: 2"):
        cdata.load_splits(root, 3)
    (root / "train/emu").mkdir()
    (root / "train/emu/notes.txt").write_text("not an image")
    with pytest.raises(DataError, match=rf"1 class directories without any image file .*: {root}/train/emu\. "
                                        rf".*skip_bad_samples: true"):
        cdata.load_splits(root, 3)
    skipped = cdata.load_splits(root, 3, skip_bad_samples=True)
    assert skipped.classes == ["cat", "dog", "emu"] and len(skipped.train) == 4
    assert skipped.skipped == [
        f"{root}/train/emu: empty class directory (the class keeps its index, with no sample)"]
    _tree(root, {"val/owl": 1})
    with pytest.raises(DataError, match=rf"class directories {root}/val/owl have no counterpart in the "
                                        rf"training classes \(cat, dog, emu\)"):
        cdata.load_splits(root, 3, skip_bad_samples=True)


def test_corrupt_image_named_or_skipped_and_counted(tmp_path):
    root = _tree(tmp_path / "r", {"train/a": 3, "train/b": 3})
    bad = root / "train/a/1.png"
    bad.write_bytes(bad.read_bytes()[:60])  # truncated
    splits = cdata.load_splits(root, 2, val_fraction=0.34)
    tf = cdata.build_eval_transform(16, (0.5,) * 3, (0.5,) * 3)
    samples = sorted(splits.train + splits.val)
    index = [p for p, _ in samples].index(bad)
    ds = cdata.ImageFolderDataset(samples, tf)
    with pytest.raises(DataError, match=rf"cannot decode image {bad}: .*\(corrupt or truncated file\?\)"):
        ds[index]
    ds = cdata.ImageFolderDataset(samples, tf, skip_bad_samples=True)
    image, label, skipped = ds[index]
    assert image.shape == (3, 16, 16) and image.dtype == torch.float32
    assert (label, skipped) == (samples[index + 1][1], 1)
    assert ds[0][2] == 0
    (root / "train/a/x.jpg").write_bytes(b"")
    everything_bad = cdata.ImageFolderDataset([(bad, 0), (root / "train/a/x.jpg", 0)], tf,
                                              skip_bad_samples=True)
    with pytest.raises(DataError,
                       match=rf"all 2 samples of dataset are bad; first problem: cannot decode image {bad}"):
        everything_bad[0]


def test_16bit_greyscale_is_scaled_by_its_full_range_and_unfaithful_modes_refused(tmp_path):
    values = np.linspace(0, 65535, 24 * 20).astype(np.uint16).reshape(24, 20)
    expected = torch.from_numpy((values >> 8).astype(np.uint8)).expand(3, 24, 20)
    files = {  # the three ways Pillow reads 16-bit greyscale
        "I;16": (Image.frombytes("I;16", (20, 24), values.astype("<u2").tobytes()), "g.png"),
        "I;16B": (Image.frombytes("I;16B", (20, 24), values.astype(">u2").tobytes()), "g.tiff"),
        "I": (Image.fromarray(values.astype(np.int32)), "g.pgm"),  # a 16-bit PGM reads as 'I'
    }
    for mode, (image, name) in files.items():
        image.save(tmp_path / name)
        assert Image.open(tmp_path / name).mode == mode
        loaded = cdata.load_image(tmp_path / name)
        assert loaded.dtype == torch.uint8 and torch.equal(loaded, expected), mode
    Image.fromarray(np.full((4, 4), 0.5, np.float32), "F").save(tmp_path / "float.tiff")
    with pytest.raises(DataError, match=rf"^{tmp_path}/float\.tiff: image of PIL mode 'F' cannot be "
                                        r"converted to 8-bit RGB faithfully; save it as 8-bit RGB, "
                                        r"greyscale or palette \(16-bit greyscale PNG is also read\)$"):
        cdata.load_image(tmp_path / "float.tiff")
    wide = values.astype(np.int32)
    wide[-1, -1] = 70000
    Image.fromarray(wide).save(tmp_path / "wide.tiff")
    with pytest.raises(DataError, match=rf"^{tmp_path}/wide\.tiff: image of PIL mode 'I' \(32-bit "
                                        r"integers\) holds values 0\.\.70000, beyond 16 bits; it cannot "
                                        r"be converted to 8-bit RGB faithfully: save it as 8-bit RGB or "
                                        r"16-bit greyscale$"):
        cdata.load_image(tmp_path / "wide.tiff")


def test_exif_orientation_is_applied(tmp_path):
    stored = np.zeros((20, 30, 3), np.uint8)
    stored[:, :15] = (220, 20, 20)  # left half red, right half blue
    stored[:, 15:] = (20, 20, 220)
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 8  # shown turned 90 degrees anticlockwise: left goes down
    Image.fromarray(stored).save(tmp_path / "turned.jpg", exif=exif, quality=95)
    image = cdata.load_image(tmp_path / "turned.jpg")
    assert image.shape == (3, 30, 20)
    top, bottom = image[:, :12].float().mean((1, 2)), image[:, 18:].float().mean((1, 2))
    assert top[2] > 180 and top[0] < 60 and bottom[0] > 180 and bottom[2] < 60


def test_decompression_bomb_named_or_skipped_and_counted(tmp_path, monkeypatch):
    root = _tree(tmp_path / "r", {"train/a": 2, "train/b": 2})
    samples = cdata.load_splits(root, 2, val_fraction=0.5).train + [(root / "train/b/1.png", 1)]
    samples = sorted(samples)
    # Every image is 20x24 = 480 pixels. Pillow refuses over twice MAX_IMAGE_PIXELS...
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 200)
    bomb = samples[0][0]
    with pytest.raises(DataError, match=rf"^{bomb}: image is over Pillow's decompression-bomb limit "
                                        r"\(Image size \(480 pixels\) exceeds limit of 400 pixels, could "
                                        r"be decompression bomb DOS attack\.\); a damaged or hostile "
                                        r"header, or an image too large to train on: shrink or remove it$"):
        cdata.ImageFolderDataset(samples)[0]
    with pytest.raises(DataError, match=r"all 3 samples of dataset are bad; first problem: .*decompression-bomb"):
        cdata.ImageFolderDataset(samples, skip_bad_samples=True)[0]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    Image.new("RGB", (200, 200)).save(bomb)  # 40000 pixels: only this one is over the limit
    image, label, skipped = cdata.ImageFolderDataset(samples, skip_bad_samples=True)[0]
    assert (tuple(image.shape), label, skipped) == ((3, 24, 20), samples[1][1], 1)
    # ...and only warns between once and twice the limit: Pillow's own judgement, kept, so that
    # raising Image.MAX_IMAGE_PIXELS admits large images as it does everywhere else.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 30_000)
    with pytest.warns(Image.DecompressionBombWarning):
        assert cdata.load_image(bomb).shape == (3, 200, 200)


def test_symbolic_link_loops_are_named(tmp_path):
    root = _tree(tmp_path / "r", {"train/a": 2, "train/b": 2})
    (root / "train").rename(root / "kept")
    os.symlink("train", root / "train")
    with pytest.raises(DataError, match=rf"^{root}/train: symbolic link loop \({root}/train -> train "
                                        r"never reaches a file or directory\)$"):
        cdata.load_splits(root, 2)
    (root / "train").unlink()
    (root / "kept").rename(root / "train")
    os.symlink("c", root / "train/c")  # a class directory looping onto itself
    with pytest.raises(DataError, match=rf"^{root}/train/c: symbolic link loop"):
        cdata.load_splits(root, 3)
    (root / "train/c").unlink()
    looping = root / "train/a/9.png"
    os.symlink("9.png", looping)  # an image looping: a bad sample, named or skipped and counted
    splits = cdata.load_splits(root, 2, val_fraction=0.5)
    samples = sorted(splits.train + splits.val)
    index = [p for p, _ in samples].index(looping)
    with pytest.raises(DataError, match=rf"^{looping}: symbolic link loop \({looping} -> 9\.png never"):
        cdata.ImageFolderDataset(samples)[index]
    assert cdata.ImageFolderDataset(samples, skip_bad_samples=True)[index][2] == 1


def test_transforms(tmp_path):
    pixels = np.zeros((24, 20, 3), dtype=np.uint8)
    pixels[..., 0] = np.arange(24)[:, None] * 10  # a red ramp down the long side, so that crops differ
    pixels[..., 1] = 80
    Image.fromarray(pixels).convert("P").save(tmp_path / "palette.png")  # decoded to RGB
    image = cdata.load_image(tmp_path / "palette.png")
    assert image.shape == (3, 24, 20) and image.dtype == torch.uint8
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    aug = cdata.build_train_transform(32, mean, std, augment=True)
    plain = cdata.build_train_transform(32, mean, std, augment=False)
    torch.manual_seed(0)
    crops = [aug(image) for _ in range(4)]
    assert all(c.shape == (3, 32, 32) for c in crops) and not all(torch.equal(crops[0], c) for c in crops)
    assert torch.equal(plain(image), cdata.build_eval_transform(32, mean, std)(image))
    # normalised: the constant green channel (80/255) maps to (80/255 - mean) / std
    assert plain(image)[1].mean().item() == pytest.approx((80 / 255 - mean[1]) / std[1], abs=0.02)
    # "squash" resizes both sides, so the ramp's dark top survives; "center" crops it away
    squash = cdata.build_eval_transform(32, mean, std, crop_pct=1.0, crop_mode="squash")(image)
    centre = cdata.build_eval_transform(32, mean, std, crop_pct=1.0)(image)
    assert squash.shape == centre.shape == (3, 32, 32)
    assert squash[0, 0].mean() < centre[0, 0].mean() - 0.1
    with pytest.raises(ValueError, match="interpolation 'lanczos' is not one of"):
        cdata.build_eval_transform(32, mean, std, interpolation="lanczos")
    with pytest.raises(ValueError, match="crop_mode 'border' is not one of 'center', 'squash'"):
        cdata.build_eval_transform(32, mean, std, crop_mode="border")


# ----------------------------------------------------------------------------- metrics
def test_accuracy_reducer_is_exact_over_ranks_and_uneven_batches():
    torch.manual_seed(0)
    logits, labels = torch.randn(23, 7), torch.randint(0, 7, (23,))
    labels[:3] = 6
    ranks = [AccuracyReducer(7), AccuracyReducer(7)]
    for start, end, rank in ((0, 8, 0), (8, 16, 1), (16, 23, 0)):  # a short last batch, on rank 0
        ranks[rank].update(logits[start:end], labels[start:end])
    idle = AccuracyReducer(7)  # a rank that saw no batch
    out = ranks[0].cross_slot_reduce([r.per_slot_reduce() for r in ranks + [idle]])
    assert out["accuracy"] == pytest.approx((logits.argmax(1) == labels).float().mean().item() * 100)
    top5 = (logits.topk(5, 1).indices == labels[:, None]).any(1).float().mean().item() * 100
    assert out["top5_accuracy"] == pytest.approx(top5)
    assert out["validation_loss"] == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-6)
    assert out["validation_samples"] == 23
    recall = [((logits.argmax(1) == labels) & (labels == c)).sum().item() / (labels == c).sum().item() * 100
              for c in range(7) if (labels == c).any()]
    assert out["mean_class_accuracy"] == pytest.approx(np.mean(recall))
    assert ranks[0].last["per_class_samples"] == torch.bincount(labels, minlength=7).tolist()


def test_top5_with_fewer_than_five_classes_is_top_all():
    r = AccuracyReducer(3)
    r.update(torch.tensor([[0.0, 1.0, 2.0], [3.0, 0.0, 0.0]]), torch.tensor([0, 0]))
    out = r.cross_slot_reduce([r.per_slot_reduce()])
    assert r.k == 3 and out["top5_accuracy"] == 100.0 and out["accuracy"] == 50.0
    with pytest.raises(ValueError, match=r"logits \(2, 4\) and labels \(2,\) do not match \(B, 3\)"):
        r.update(torch.zeros(2, 4), torch.tensor([0, 1]))


# ----------------------------------------------------------------------------- resources
def test_resource_sampler_sees_cpu_memory_threads_and_workers():
    sampler = ResourceSampler()
    # children already there (multiprocessing's resource tracker, after a test that spawned)
    before = sampler.sample()["workers"]
    child = subprocess.Popen([sys.executable, "-c", "import time\nt=time.time()\nwhile time.time()-t<1: pass"])
    try:
        t = time.time()
        while time.time() - t < 0.5:  # this process busy too
            sum(range(1000))
        s = sampler.sample()
    finally:
        child.wait()
    # loose bounds: two busy processes share 2 cores with whatever else runs
    assert s["cpu_percent"] > 5 and s["threads"] >= 1 and s["rss_mb"] > 50
    assert s["workers"] == before + 1 and s["workers_rss_mb"] > 1 and s["workers_cpu_percent"] > 5
    assert "gpu_allocated_mb" not in s  # CPU run: no CUDA figures
    later = sampler.sample()
    assert later["workers"] == before


def test_combine_sums_and_maxes():
    a = {"cpu_percent": 100.0, "threads": 10.0, "rss_mb": 1000.0, "workers": 2.0, "workers_cpu_percent": 50.0,
         "workers_rss_mb": 300.0, "gpu_allocated_mb": 500.0, "gpu_reserved_mb": 800.0, "gpu_peak_mb": 700.0}
    b = {**a, "cpu_percent": 50.0, "gpu_allocated_mb": 900.0}
    out = combine([a, b, {}], prefix="val_")
    assert out["val_cpu_percent"] == 150.0 and out["val_rss_mb"] == 2000.0 and out["val_workers"] == 4.0
    assert out["val_gpu_allocated_mb"] == 900.0 and out["val_gpu_peak_mb"] == 700.0 and out["val_ranks"] == 2.0


# ----------------------------------------------------------------------------- configs
KINDS = ("single_gpu", "8_gpu", "multi_node", "asha")


def _trial_schema():
    """The trial class of train.py, from the recipe registry (as the config checker gets it)."""
    return RECIPE.trial_class()


@pytest.mark.parametrize("kind", KINDS)
def test_configs_resolve_and_scale(kind):
    trial = _trial_schema()
    assert issubclass(trial, ClassificationTrial)
    path = CONFIGS / f"{kind}.yaml"
    conf = configfile.load_experiment_config(path)
    hp = hpmod.resolve(configfile.point_from_space(conf["hyperparameters"], str(path)), trial.MODEL_PARAMS,
                       where=str(path), common=trial.COMMON_PARAMS)
    single = hpmod.resolve(configfile.point_from_space(configfile.load_experiment_config(CONFIGS / "single_gpu.yaml")
                                                  ["hyperparameters"], "x"), trial.MODEL_PARAMS,
                           common=trial.COMMON_PARAMS)
    slots = conf["resources"]["slots_per_trial"]
    assert slots == {"single_gpu": 1, "8_gpu": 8, "multi_node": 32, "asha": 1}[kind]
    assert hp["global_batch_size"] == 16 * slots and hp["base_batch_size"] == 16
    assert (hp["optimizer"], hp["lr"] if kind != "asha" else 1e-3, hp["momentum"]) == ("sgd", 1e-3, 0.9)
    assert conf["searcher"]["metric"] == "accuracy" and conf["searcher"]["smaller_is_better"] is False
    assert conf["searcher"]["metric"] in trial.SEARCHER_METRICS and trial.SEARCHER_METRICS["accuracy"]
    assert conf["profiling"]["enabled"] is True
    assert conf["bind_mounts"][0]["container_path"] == hp["data_dir"] == "/data/imagefolder"
    assert ("determined.launch.torch_distributed" in conf["entrypoint"]) == (slots > 1)
    assert hp["checkpoint_period"] % hp["validation_period"] == 0
    if kind in ("8_gpu", "multi_node"):
        for key in ("max_batches", "validation_period", "warmup_batches"):  # the same images
            assert abs(hp[key] * hp["global_batch_size"] - single[key] * 16) <= hp["global_batch_size"] / 2, key
    if kind == "asha":
        s, space = conf["searcher"], conf["hyperparameters"]
        assert s["name"] == "adaptive_asha" and s["time_metric"] == "batches"
        assert s["max_time"] == hp["max_batches"] and hp["stop_at_target"] is False
        assert space["lr"]["type"] == "log" and space["arch"]["type"] == "categorical"
        assert set(space["arch"]["vals"]) <= set(M.ARCHITECTURES)
        for arch in space["arch"]["vals"]:  # every category resolves
            hpmod.resolve({**configfile.point_from_space(space, "x"), "arch": arch}, trial.MODEL_PARAMS,
                          common=trial.COMMON_PARAMS)
        rungs = [s["max_time"] // s["divisor"] ** k for k in range(s["max_rungs"])]
        assert all(r % hp["validation_period"] == 0 for r in rungs)


def test_schema_reuses_the_shared_definitions_and_refuses_segmentation_keys():
    for key in ("lr", "global_batch_size", "energy", "precision"):
        assert CLASSIFICATION_PARAMS[key] is hpmod.COMMON[key]
    # data_dir: the same type and checks, its own meaning (an ImageFolder root)
    assert dataclasses.replace(CLASSIFICATION_PARAMS["data_dir"], help="") \
        == dataclasses.replace(hpmod.COMMON["data_dir"], help="")
    assert "train/<class>" in CLASSIFICATION_PARAMS["data_dir"].help
    assert CLASSIFICATION_PARAMS["optimizer"].choices == hpmod.COMMON["optimizer"].choices
    trial = _trial_schema()
    with pytest.raises(ConfigError, match=r"c\.yaml: unknown hyperparameter 'crop_size'"):
        hpmod.resolve({"crop_size": 64}, trial.MODEL_PARAMS, where="c.yaml", common=trial.COMMON_PARAMS)
    with pytest.raises(ConfigError, match=r"hyperparameter 'arch' = 'resnet5' is not one of 'alexnet'"):
        hpmod.resolve({"arch": "resnet5"}, trial.MODEL_PARAMS, common=trial.COMMON_PARAMS)
    with pytest.raises(ConfigError, match=r"hyperparameter 'val_fraction' = 1.0 must be in \[0, 1\)"):
        hpmod.resolve({"val_fraction": 1.0}, trial.MODEL_PARAMS, common=trial.COMMON_PARAMS)


# ----------------------------------------------------------------------------- command line
def _train(data, out, *extra, env=None, batches=20):
    cmd = [sys.executable, str(RECIPE.train_script), "--config", str(CONFIGS / "single_gpu.yaml"),
           "--data-dir", str(data), "--output-dir", str(out), "--batches", str(batches),
           "--set", "arch=resnet18", "image_size=32", "global_batch_size=8", "base_batch_size=8",
           "workers_per_slot=0", "warmup_batches=2", "optimizer=adamw", "lr=3e-3", "weight_decay=0.01",
           "augment=false", "report_period=10", "validation_period=10", "checkpoint_period=100",
           "stop_at_target=false", *extra]
    return subprocess.run(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=300)


def test_cli_learns_the_synthetic_set_and_records_resources_and_energy(synth, tmp_path):
    tree = FakePowercap(tmp_path / "powercap")
    tree.add_zone("intel-rapl:0", "package-0")
    out = tmp_path / "run"
    with tree.constant_power("intel-rapl:0", 30.0):  # a CPU package drawing 30 W
        p = _train(synth, out, "target_accuracy=60",
                   env={"ENERGY_SOURCES": "rapl", "ENERGY_RAPL_ROOT": str(tmp_path / "powercap")})
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    by: Dict[str, list] = {}
    for r in runlog.read(out / "metrics.jsonl"):
        by.setdefault(r["group"], []).append(r)
    v = by["validation"][-1]["metrics"]
    assert by["validation"][-1]["steps_completed"] == 20 and v["validation_samples"] == 12
    assert v["accuracy"] >= 70, f"3 classes (chance 33%): {v}"
    assert v["top5_accuracy"] == 100.0
    assert "batches_to_target" in v and v["energy_wh"] > 0 and v["energy_to_target_wh"] <= v["energy_wh"]
    assert by["run"][0]["metrics"]["model"] == "resnet18" and by["run"][0]["metrics"]["params"] == 11_178_051
    assert set(by["per_class_accuracy"][-1]["metrics"]) == {"acc/class_00", "acc/class_01", "acc/class_02"}
    assert by["energy"][-1]["metrics"]["sources"] == "rapl" and by["energy"][-1]["metrics"]["cpu_wh"] > 0
    train_res = [r for r in by["resources"] if "cpu_percent" in r["metrics"]]
    val_res = [r for r in by["resources"] if "val_cpu_percent" in r["metrics"]]
    assert [r["steps_completed"] for r in train_res] == [10, 20]
    assert [r["steps_completed"] for r in val_res] == [10, 20]
    res = train_res[-1]["metrics"]
    assert res["ranks"] == 1 and res["rss_mb"] > 100 and res["threads"] >= 1 and res["cpu_percent"] > 0
    assert res["workers"] == 0  # workers_per_slot=0
    assert "[image_classification] validation at batch 20:  accuracy" in p.stdout
    # every line of the run under one name, the last one too (the architecture beside it)
    assert "[image_classification] done (resnet18): 20 batches" in p.stdout


def test_cli_early_stopping_ends_the_run_after_patience(synth, tmp_path):
    # validation_samples is the same at every validation (12): it never improves after the
    # first, so with a patience of 1 the run stops at the second validation, deterministically
    out = tmp_path / "run"
    p = _train(synth, out, "target_metric=validation_samples", "target_value=1000",
               "early_stop_patience=1", "validation_period=3", "image_size=16", batches=30)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    by: Dict[str, list] = {}
    for r in runlog.read(out / "metrics.jsonl"):
        by.setdefault(r["group"], []).append(r)
    assert [(r["steps_completed"], r["metrics"]["validations_without_improvement"])
            for r in by["validation"]] == [(3, 0), (6, 1)]
    assert "early stopping at batch 6: validation_samples has not improved" in p.stderr + p.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["early_stopped"] is True and summary["batches"] == 6
    # the peak memory is kept over the resources callback's resets of CUDA's counter; on CPU
    # it is the process's peak RSS, at least the resident memory the resources group saw
    peak = by["run"][-1]["metrics"]["peak_memory_mb"]
    assert isinstance(peak, float) and peak >= max(r["metrics"].get("rss_mb", 0) for r in by["resources"])


def test_cli_bad_input_exits_2_with_the_message(synth, tmp_path):
    # (every data message is checked in-process above; this is what the user sees of one)
    p = _train(synth, tmp_path / "b", "num_classes=4", batches=1)
    assert p.returncode == 2 and p.stderr.strip().endswith(
        f"error: {synth}/train holds 3 class directories (class_00, class_01, class_02) but num_classes "
        f"is 4; set num_classes: 3")
