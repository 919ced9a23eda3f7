"""The batch-level end of the training pipeline (shared/data/on_device.py) against torchvision's
own colour functions applied image by image, and the worker-side draws it consumes."""
from __future__ import annotations

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from shared.data.on_device import photometric, training_batch, valid_region
from shared.data.transforms import (
    AUG_SIZE, IMAGENET_MEAN, IMAGENET_STD, NO_PHOTOMETRIC, PhotometricDistortion,
    build_train_transform)


def reference(image: torch.Tensor, params: list[float]) -> torch.Tensor:
    """One float image in [0, 1] through torchvision's functions in MMSeg's order."""
    brightness, contrast, contrast_first, saturation, hue = params
    x = TF.adjust_brightness(image, brightness)
    if contrast_first:
        x = TF.adjust_contrast(x, contrast)
    x = TF.adjust_saturation(x, saturation)
    if hue:
        x = TF.adjust_hue(x, hue)
    if not contrast_first:
        x = TF.adjust_contrast(x, contrast)
    return x


def make(params: list[list[float]], sizes: list[tuple[int, int]], size=(12, 16), seed=0):
    """uint8 batch with each sample's crop in the top-left ``sizes`` and zero padding."""
    g = torch.Generator().manual_seed(seed)
    images = torch.zeros(len(params), 3, *size, dtype=torch.uint8)
    for i, (h, w) in enumerate(sizes):
        images[i, :, :h, :w] = torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)
    masks = torch.randint(0, 5, (len(params), *size), generator=g, dtype=torch.uint8)
    aug = torch.tensor([[*p, h, w] for p, (h, w) in zip(params, sizes)], dtype=torch.float32)
    return images, masks, aug


PARAMS = [
    [1.1, 1.4, 1.0, 0.6, 0.07],      # everything, contrast first
    [0.9, 0.7, 0.0, 1.3, -0.1],      # everything, contrast last
    [1.0, 1.0, 0.0, 1.0, 0.0],       # nothing
    [1.0, 1.0, 1.0, 1.0, 0.05],      # hue only
    [1.12, 0.5, 1.0, 1.0, 0.0],      # brightness and contrast, on a padded crop
]
SIZES = [(12, 16), (12, 16), (12, 16), (12, 16), (7, 9)]


def test_batch_equals_torchvision_image_by_image():
    images, masks, aug = make(PARAMS, SIZES)
    x, y = training_batch(images, masks, aug)
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and torch.equal(y, masks.long())
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    for i, (p, (h, w)) in enumerate(zip(PARAMS, SIZES)):
        crop = images[i, :, :h, :w].float() / 255
        expected = (reference(crop, p) - mean) / std
        torch.testing.assert_close(x[i, :, :h, :w], expected, atol=2e-5, rtol=0)
        assert (x[i, :, h:] == 0).all() and (x[i, :, :, w:] == 0).all()  # padding stays 0


def test_samples_whose_ops_were_skipped_are_only_normalised_exactly():
    images, masks, aug = make(PARAMS, SIZES, seed=1)
    x, _ = training_batch(images, masks, aug)
    plain = TF.normalize_image(images[2].float() / 255, list(IMAGENET_MEAN), list(IMAGENET_STD))
    assert torch.equal(x[2], plain)


def test_each_op_changes_the_image():
    images, masks, _ = make([NO_PHOTOMETRIC], [(12, 16)], seed=2)
    base = photometric(images.float() / 255, torch.tensor([[*NO_PHOTOMETRIC, 12, 16]]),
                       valid_region(torch.tensor([[*NO_PHOTOMETRIC, 12, 16]]), 12, 16))
    for k, value in enumerate([1.1, 1.4, None, 0.6, 0.1]):
        if value is None:
            continue
        p = list(NO_PHOTOMETRIC)
        p[k] = value
        aug = torch.tensor([[*p, 12, 16]])
        out = photometric(images.float() / 255, aug, valid_region(aug, 12, 16))
        assert not torch.allclose(out, base, atol=1e-3), f"parameter {k} had no effect"


def test_channels_last_output_and_values():
    images, masks, aug = make(PARAMS, SIZES, seed=3)
    a, _ = training_batch(images, masks, aug, channels_last=True)
    b, _ = training_batch(images, masks, aug, channels_last=False)
    assert a.is_contiguous(memory_format=torch.channels_last) and b.is_contiguous()
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_train_transform_hands_over_uint8_and_the_draws():
    torch.manual_seed(0)
    image = torch.randint(0, 256, (40, 56, 3), dtype=torch.uint8).permute(2, 0, 1)  # HWC memory
    mask = torch.randint(0, 6, (40, 56), dtype=torch.uint8)
    out_image, out_mask, aug = build_train_transform(crop_size=(32, 48), scale=(40, 20))(image, mask)
    assert out_image.dtype == out_mask.dtype == torch.uint8
    assert out_image.shape == (3, 32, 48) and out_mask.shape == (32, 48)
    assert aug.dtype == torch.float32 and aug.shape == (AUG_SIZE,)
    h, w = int(aug[-2]), int(aug[-1])
    assert h < 32 and w < 48  # scale (40, 20) leaves the image smaller than the crop
    assert (out_mask[h:] == 255).all() and (out_mask[:, w:] == 255).all()
    assert (out_image[:, h:] == 0).all() and (out_mask[:h, :w] != 255).all()
    _, _, plain = build_train_transform(crop_size=16, photometric=False)(image, mask)
    assert plain[:5].tolist() == NO_PHOTOMETRIC


def test_draws_follow_mmseg_probabilities_and_ranges():
    torch.manual_seed(0)
    d = PhotometricDistortion()
    draws = torch.tensor([d.draw() for _ in range(4000)])
    applied = torch.stack([draws[:, 0] != 1, draws[:, 1] != 1, draws[:, 3] != 1, draws[:, 4] != 0], 1)
    torch.testing.assert_close(applied.float().mean(0), torch.full((4,), 0.5), atol=0.03, rtol=0)
    assert abs(draws[:, 2].mean().item() - 0.5) < 0.03
    b, c, s, h = draws[applied[:, 0], 0], draws[applied[:, 1], 1], draws[applied[:, 2], 3], draws[applied[:, 3], 4]
    assert 0.875 <= b.min() and b.max() <= 1.125
    assert 0.5 <= c.min() and c.max() <= 1.5 and 0.5 <= s.min() and s.max() <= 1.5
    assert -0.1 <= h.min() and h.max() <= 0.1 and (h < 0).any() and (h > 0).any()


def test_draws_are_reproducible_with_the_torch_seed():
    d = PhotometricDistortion()
    torch.manual_seed(5)
    first = [d.draw() for _ in range(3)]
    torch.manual_seed(5)
    assert [d.draw() for _ in range(3)] == first


def test_bad_hue_delta_is_named():
    with pytest.raises(ValueError, match=r"hue_delta .* got 0.7"):
        PhotometricDistortion(hue_delta=0.7)
