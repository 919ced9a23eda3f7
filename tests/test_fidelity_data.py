"""Fidelity of the data pipeline and the metric to the reference implementations.

- The photometric distortion (``shared.data.on_device.photometric``) against MMSegmentation's
  ``PhotoMetricDistortion`` steps written here with OpenCV itself (``cv2.cvtColor`` and the
  float32 ``convert`` of mmseg/datasets/transforms/transforms.py), on BGR images as MMSeg
  loads them, at fixed parameters covering every branch.
- The resize (``shared.data.transforms``) against ``cv2.resize`` as mmcv's ``imresize`` calls
  it: INTER_LINEAR for images, INTER_NEAREST for labels.
- mIoU, pixel accuracy and mean accuracy (``shared.metrics``) against torchmetrics.

Tolerance for images: 1 of 255, what the protocol asks; at the widths used here (multiples of
64 pixels, so that OpenCV takes its vectorised colour path on AVX2 and AVX-512 alike) the
photometric results are in fact equal to OpenCV's on an x86 machine.
"""
from __future__ import annotations

import itertools

import cv2
import numpy as np
import pytest
import torch
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex
from torchvision.transforms.v2 import functional as TF

from shared.data.on_device import hsv_to_rgb, photometric, rgb_to_hsv
from shared.data.transforms import (
    PhotometricDistortion, Rescale, build_val_transform,
    keep_ratio_size)
from shared.metrics import ConfusionMatrix


# ============================================================================ references
def mmseg_convert(img: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    """MMSeg's ``convert``: float32 multiply-add, clip to 0..255, cast (truncate) to uint8."""
    out = img.astype(np.float32) * np.float32(alpha) + np.float32(beta)
    return np.clip(out, 0, 255).astype(np.uint8)


def mmseg_photometric(rgb: np.ndarray, params: list[float]) -> np.ndarray:
    """MMSeg's PhotoMetricDistortion with the coins and values fixed by ``params`` (AUG_*
    order), on an (H, W, 3) uint8 RGB image, through OpenCV on BGR as MMSeg runs it."""
    brightness, contrast, contrast_first, saturation_on, saturation, hue_on, hue = params
    img = np.ascontiguousarray(rgb[..., ::-1])  # MMSeg's images are BGR (cv2.imread)
    if brightness != 0:
        img = mmseg_convert(img, beta=brightness)
    if contrast_first and contrast != 1:
        img = mmseg_convert(img, alpha=contrast)
    if saturation_on:
        hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
        hsv[..., 1] = mmseg_convert(hsv[..., 1], alpha=saturation)
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    if hue_on:
        hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
        hsv[..., 0] = (hsv[..., 0].astype(int) + int(hue)) % 180
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    if not contrast_first and contrast != 1:
        img = mmseg_convert(img, alpha=contrast)
    return img[..., ::-1]


def textured_image(height: int, width: int, seed: int) -> np.ndarray:
    """A natural-ish uint8 RGB image: smooth coloured regions, edges and noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    image = np.zeros((height, width, 3))
    for _ in range(6):  # overlapping soft blobs of random colours and sizes
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        radius = rng.uniform(0.1, 0.5) * max(height, width)
        weight = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius ** 2))
        image += weight[..., None] * rng.uniform(0, 255, 3)
    image = image / image.max() * rng.uniform(120, 255)
    image += 25 * np.sin(xx / rng.uniform(2, 9))[..., None] * np.cos(yy / rng.uniform(2, 9))[..., None]
    image += rng.normal(0, 12, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def to_batch(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float holding the values, as training_batch does."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float()


def branch_params(seed: int = 0) -> list[list[float]]:
    """Every branch: brightness on/off x contrast off/first/last x saturation on/off x hue
    on/off, values drawn at fixed seed from MMSeg's ranges (float32, as ``aug`` carries
    them), plus the range ends where clipping bites."""
    rng = np.random.default_rng(seed)
    f32 = lambda v: float(np.float32(v))  # noqa: E731
    rows = []
    for b, c, s, h in itertools.product([0, 1], [0, 1, 2], [0, 1], [0, 1]):
        rows.append([f32(rng.uniform(-32, 32)) if b else 0.0,
                     f32(rng.uniform(0.5, 1.5)) if c else 1.0, float(c == 1),
                     float(s), f32(rng.uniform(0.5, 1.5)) if s else 1.0,
                     float(h), float(rng.integers(-18, 18)) if h else 0.0])
    rows += [[32.0, 1.5, 1.0, 1.0, 1.5, 1.0, -18.0],   # everything at its top, contrast first
             [-32.0, 0.5, 0.0, 1.0, 0.5, 1.0, 17.0],   # at its bottom, contrast last
             [0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0]]      # saturation x1 and hue +0: round trips only
    return rows


# ============================================================================ photometric
def test_photometric_equals_mmseg_with_opencv_on_every_branch():
    params = branch_params()
    images = np.stack([textured_image(16, 128, seed=i) for i in range(len(params))])
    images[::5, :2] = np.array([0, 255, 128], dtype=np.uint8)  # saturated and grey pixels too
    images[1::5, -2:] = 255
    out = photometric(to_batch(images), torch.tensor(params, dtype=torch.float32))
    out = out.permute(0, 2, 3, 1).numpy().astype(np.int64)
    for i, p in enumerate(params):
        expected = mmseg_photometric(images[i], p).astype(np.int64)
        diff = np.abs(out[i] - expected)
        assert diff.max() <= 1, f"params {p}: {int((diff > 0).sum())} values differ, max {diff.max()}"
    assert not np.array_equal(out[1], images[1]), "a sample with ops applied came out unchanged"
    assert np.array_equal(out[0], images[0])  # no op applied: the image as it was


def test_at_any_width_hsv_to_rgb_is_opencvs_vectorised_path():
    """OpenCV converts each row in blocks (32 pixels here) and the last width % block pixels
    with scalar code that rounds HSV->RGB differently. Ours is the vectorised path at every
    pixel: equal to OpenCV's result on the same pixels inside a wider image, and to OpenCV's
    own at width 100 except on its scalar tail, where OpenCV differs from itself by 1 level;
    through MMSeg's photometric distortion (two round trips) the tail differs by up to 3
    (on_device.hsv_to_rgb's docstring)."""
    rng = np.random.default_rng(2)
    hsv = np.stack([rng.integers(0, 180, (8, 100)), rng.integers(0, 256, (8, 100)),
                    rng.integers(0, 256, (8, 100))], -1).astype(np.uint8)
    t = to_batch(hsv[None])
    ours = hsv_to_rgb(t[:, :1], t[:, 1:2], t[:, 2:]).permute(0, 2, 3, 1)[0].numpy().astype(np.int64)
    wide = np.zeros((8, 1024, 3), np.uint8)
    wide[:, :100] = hsv
    vectorised = cv2.cvtColor(wide, cv2.COLOR_HSV2RGB)[:, :100].astype(np.int64)
    at_100 = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB).astype(np.int64)
    np.testing.assert_array_equal(ours, vectorised)
    scalar = np.any(at_100 != vectorised, axis=(0, 2))  # OpenCV's scalar tail
    assert scalar.any() and not scalar[:64].any()
    assert np.abs(ours - at_100).max() == 1
    np.testing.assert_array_equal(ours[:, ~scalar], at_100[:, ~scalar])
    params = branch_params()
    images = np.stack([textured_image(16, 100, seed=i) for i in range(len(params))])
    out = photometric(to_batch(images), torch.tensor(params, dtype=torch.float32))
    out = out.permute(0, 2, 3, 1).numpy().astype(np.int64)
    worst = max(int(np.abs(out[i] - mmseg_photometric(images[i], p).astype(np.int64)).max())
                for i, p in enumerate(params))
    assert worst <= 3


def test_hsv_conversions_are_opencvs():
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (4, 64, 3), dtype=np.uint8)
    rgb[0, :6] = [[0, 0, 0], [255, 255, 255], [7, 7, 7], [255, 0, 0], [0, 255, 1], [1, 0, 255]]
    h, s, v = rgb_to_hsv(to_batch(rgb[None]))
    ours = torch.cat([h, s, v], 1)[0].permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(ours, cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV))  # integer maths: exact
    hsv = np.stack([rng.integers(0, 180, (4, 64)), rng.integers(0, 256, (4, 64)),
                    rng.integers(0, 256, (4, 64))], -1).astype(np.uint8)
    t = to_batch(hsv[None])
    back = hsv_to_rgb(t[:, :1], t[:, 1:2], t[:, 2:]).permute(0, 2, 3, 1)[0].numpy()
    assert np.abs(back - cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB).astype(np.float32)).max() <= 1


def test_brightness_spread_is_mmsegs_not_colorjitters():
    """The statistic of the fidelity issue: the spread (sd over images) of the per-image mean
    brightness after the distortion, on natural-ish images, equals MMSeg's (computed with
    OpenCV at the same draws) and is several times what torchvision-style jitter with the
    former ranges gave (brightness factor 0.875..1.125, contrast blended with the mean grey)."""
    n = 96
    torch.manual_seed(0)
    draw = PhotometricDistortion().draw
    params = [draw() for _ in range(n)]
    images = np.stack([textured_image(16, 64, seed=100 + (i % 8)) for i in range(n)])
    ours = photometric(to_batch(images), torch.tensor(params, dtype=torch.float32)).mean((1, 2, 3))
    mmseg = np.array([mmseg_photometric(images[i], p).mean() for i, p in enumerate(params)])
    np.testing.assert_allclose(ours.numpy(), mmseg, atol=0.05)
    g = torch.Generator().manual_seed(0)
    jitter = []
    for i in range(n):  # the former semantics: multiplicative brightness, contrast blended with grey
        x = torch.from_numpy(images[i]).permute(2, 0, 1).float() / 255
        u = torch.rand(4, generator=g)
        if u[0] < 0.5:
            x = TF.adjust_brightness(x, 0.875 + 0.25 * float(u[1]))
        if u[2] < 0.5:
            x = TF.adjust_contrast(x, 0.5 + float(u[3]))
        jitter.append(float(x.mean()) * 255)
    base = images.reshape(n, -1).mean(1)  # the spread the images have before any distortion
    spread_mmseg = np.std(mmseg - base)
    spread_jitter = np.std(np.array(jitter) - base)
    assert abs(float(np.std(ours.numpy() - base)) - spread_mmseg) < 0.05
    assert spread_mmseg > 2.5 * spread_jitter, (spread_mmseg, spread_jitter)


# ============================================================================ resize
SIZES = [(101, 155), (100, 156), (75, 115), (23, 31), (350, 540), (406, 622), (512, 300), (17, 9)]


@pytest.mark.parametrize("size", SIZES)
def test_resize_equals_opencv(size):
    """Images as cv2.resize(INTER_LINEAR) within 1 of 255 (0.5x and other down- and upscales,
    no antialiasing), labels as cv2.resize(INTER_NEAREST) exactly."""
    h, w = size
    image = textured_image(203, 311, seed=3)
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 150, (203, 311), dtype=np.uint8)
    labels[:40, :60] = 255
    t_image = torch.from_numpy(image).permute(2, 0, 1)  # HWC memory, as the loader's images
    rescale = Rescale(scale=(max(h, w), min(h, w)))
    rescale_size = keep_ratio_size(203, 311, rescale.scale)
    out, out_labels = rescale(t_image, torch.from_numpy(labels))
    expected = cv2.resize(image, rescale_size[::-1], interpolation=cv2.INTER_LINEAR)
    assert out.dtype == torch.uint8
    assert np.abs(out.permute(1, 2, 0).numpy().astype(int) - expected).max() <= 1
    np.testing.assert_array_equal(out_labels.numpy(),
                                  cv2.resize(labels, rescale_size[::-1], interpolation=cv2.INTER_NEAREST))


def test_label_resize_is_opencvs_nearest_where_the_product_is_an_exact_integer():
    """Where dst * in / out is an exact integer, OpenCV's reciprocal can land just below it
    and INTER_NEAREST takes the pixel before: shared.data.transforms.resize_mask follows
    OpenCV's rule (torch's "nearest" does not: 20 -> 98 px is such a pair), on every pair."""
    from shared.data.transforms import resize_mask
    rng = np.random.default_rng(5)
    differs = 0
    for src in range(20, 120, 7):
        for dst in range(10, 260, 11):
            labels = rng.integers(0, 150, (src, src + 3), dtype=np.uint8)
            expected = cv2.resize(labels, (dst + 1, dst), interpolation=cv2.INTER_NEAREST)
            ours = resize_mask(torch.from_numpy(labels), (dst, dst + 1)).numpy()
            np.testing.assert_array_equal(ours, expected, err_msg=f"{src} -> {dst}")
            torchs = TF.resize_mask(torch.from_numpy(labels)[None], [dst, dst + 1])[0].numpy()
            differs += not np.array_equal(torchs, expected)
    assert differs > 0  # the rule matters: torch's own nearest misses some pairs


def test_downscale_by_half_is_not_antialiased():
    """At 0.5x OpenCV's bilinear reads two source pixels per output pixel (the half-pixel
    centres fall between them); an antialiased resize averages over four. Vertical stripes two
    pixels wide stay black and white with the first and turn grey with the second."""
    stripes = (np.arange(64) // 2 % 2 * 255).astype(np.uint8)
    image = np.ascontiguousarray(np.repeat(np.tile(stripes, (64, 1))[..., None], 3, -1))
    out, _ = Rescale(scale=(32, 32))(torch.from_numpy(image).permute(2, 0, 1),
                                     torch.zeros(64, 64, dtype=torch.uint8))
    expected = cv2.resize(image, (32, 32), interpolation=cv2.INTER_LINEAR)
    assert set(np.unique(expected).tolist()) == {0, 255}
    assert np.abs(out.permute(1, 2, 0).numpy().astype(int) - expected).max() <= 1


def test_validation_rescale_is_opencvs():
    image = textured_image(90, 130, seed=5)
    out, _ = build_val_transform(scale=(256, 64))(torch.from_numpy(image).permute(2, 0, 1),
                                                  torch.zeros(90, 130, dtype=torch.uint8))
    h, w = keep_ratio_size(90, 130, (256, 64))
    expected = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    back = out.permute(1, 2, 0).numpy() * std + mean
    assert np.abs(back - expected).max() <= 1 / 255 + 1e-5


# ============================================================================ metrics
def test_metrics_equal_torchmetrics():
    """mIoU, pixel accuracy (aAcc) and mean accuracy (mAcc) against torchmetrics' classes on
    random data with ignored pixels (255) and a class absent from both prediction and ground
    truth.

    Where the definitions differ: for a class absent from both, torchmetrics' per-class
    values (``average=None``) are 0 (its ``zero_division``), ours None; its macro averages
    leave such a class out, as ours (and MMSeg's nanmean) do. For a class predicted but
    absent from the ground truth, its macro accuracy counts a recall of 0 while ours (and
    MMSeg's mAcc) leaves the class out: the comparison takes torchmetrics' per-class recall
    over the classes present in the ground truth for that case."""
    k = 7
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, k, (3, 40, 64), generator=g)
    pred = torch.where(torch.rand(target.shape, generator=g) < 0.6, target,
                       torch.randint(0, k, target.shape, generator=g))
    pred[pred == 6], target[target == 6] = 0, 0     # class 6: absent from both
    target[target == 4] = 1                         # class 4: predicted, never true
    target[:, :5] = 255                             # ignored rows, whatever is predicted there
    target[0, 10:20, 10:30] = 255
    ours = ConfusionMatrix(k)
    for p, t in zip(pred, target):
        ours.update(p, t)
    got = ours.cross_slot_reduce([ours.per_slot_reduce()])

    miou = MulticlassJaccardIndex(k, average="macro", ignore_index=255)(pred, target)
    aacc = MulticlassAccuracy(k, average="micro", ignore_index=255)(pred, target)
    recall = MulticlassAccuracy(k, average=None, ignore_index=255)(pred, target)
    iou = MulticlassJaccardIndex(k, average=None, ignore_index=255)(pred, target)
    present = torch.stack([(target == c).any() for c in range(k)])
    assert got["miou"] == pytest.approx(100 * float(miou), abs=1e-4)
    assert got["pixel_accuracy"] == pytest.approx(100 * float(aacc), abs=1e-4)
    assert got["mean_accuracy"] == pytest.approx(100 * float(recall[present].mean()), abs=1e-4)
    macro = MulticlassAccuracy(k, average="macro", ignore_index=255)(pred, target)
    assert 100 * float(macro) < got["mean_accuracy"] - 1  # its macro counts class 4's recall as 0
    assert ours.last["per_class_iou"][6] is None and float(iou[6]) == 0.0
    assert ours.last["per_class_iou"][4] == 0.0
    # without a predicted-but-absent class the macro accuracies agree as they stand
    pred[pred == 4] = 1
    ours.reset()
    for p, t in zip(pred, target):
        ours.update(p, t)
    got = ours.cross_slot_reduce([ours.per_slot_reduce()])
    macc = MulticlassAccuracy(k, average="macro", ignore_index=255)(pred, target)
    assert got["mean_accuracy"] == pytest.approx(100 * float(macc), abs=1e-4)
