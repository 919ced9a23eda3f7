"""The batch-level end of the training pipeline (shared/data/on_device.py): each sample with its
own parameters, normalisation and padding, and the worker-side draws it consumes. Its colour
ops against MMSegmentation's, computed with OpenCV, are in tests/test_fidelity_data.py."""
from __future__ import annotations

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from shared.data.on_device import photometric, training_batch
from shared.data.transforms import (
    AUG_SIZE, IMAGENET_MEAN, IMAGENET_STD, NO_PHOTOMETRIC, PhotometricDistortion,
    build_train_transform)


def make(params: list[list[float]], sizes: list[tuple[int, int]], size=(12, 16), seed=0):
    """uint8 batch with each sample's crop in the top-left ``sizes`` and zero padding."""
    g = torch.Generator().manual_seed(seed)
    images = torch.zeros(len(params), 3, *size, dtype=torch.uint8)
    for i, (h, w) in enumerate(sizes):
        images[i, :, :h, :w] = torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)
    masks = torch.randint(0, 5, (len(params), *size), generator=g, dtype=torch.uint8)
    aug = torch.tensor([[*p, h, w] for p, (h, w) in zip(params, sizes)], dtype=torch.float32)
    return images, masks, aug


PARAMS = [  # brightness, contrast, contrast_first, saturation_on, saturation, hue_on, hue
    [20.0, 1.4, 1.0, 1.0, 0.6, 1.0, 7.0],     # everything, contrast first
    [-9.0, 0.7, 0.0, 1.0, 1.3, 1.0, -18.0],   # everything, contrast last
    NO_PHOTOMETRIC,                           # nothing
    [0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 5.0],      # hue only
    [31.0, 0.5, 1.0, 0.0, 1.0, 0.0, 0.0],     # brightness and contrast, on a padded crop
]
SIZES = [(12, 16), (12, 16), (12, 16), (12, 16), (7, 9)]


def test_each_sample_gets_its_own_parameters_then_normalisation_and_zero_padding():
    images, masks, aug = make(PARAMS, SIZES)
    x, y = training_batch(images, masks, aug)
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and torch.equal(y, masks.long())
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    for i, (h, w) in enumerate(SIZES):
        alone = photometric(images[i:i + 1, :, :h, :w].float(), aug[i:i + 1])[0]  # the crop alone
        assert torch.equal(alone, alone.round()) and 0 <= alone.min() and alone.max() <= 255
        torch.testing.assert_close(x[i, :, :h, :w], (alone / 255 - mean) / std, atol=1e-6, rtol=0)
        assert (x[i, :, h:] == 0).all() and (x[i, :, :, w:] == 0).all()  # padding stays 0


def test_samples_whose_ops_were_skipped_are_only_normalised_exactly():
    images, masks, aug = make(PARAMS, SIZES, seed=1)
    x, _ = training_batch(images, masks, aug)
    plain = TF.normalize_image(images[2].float() / 255, list(IMAGENET_MEAN), list(IMAGENET_STD))
    assert torch.equal(x[2], plain)


def test_each_op_changes_the_image():
    images, _, _ = make([NO_PHOTOMETRIC], [(12, 16)], seed=2)
    x = images.float()
    base = photometric(x, torch.tensor([NO_PHOTOMETRIC]))
    assert torch.equal(base, x)
    for changes in ({0: 20.0}, {1: 1.4}, {1: 0.6, 2: 1.0}, {3: 1.0, 4: 0.6}, {5: 1.0, 6: 9.0}):
        p = list(NO_PHOTOMETRIC)
        for k, value in changes.items():
            p[k] = value
        out = photometric(x, torch.tensor([p]))
        assert (out - base).abs().max() >= 2, f"parameters {changes} had no effect"


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
    assert plain[:len(NO_PHOTOMETRIC)].tolist() == NO_PHOTOMETRIC and len(plain) == AUG_SIZE


def test_draws_follow_mmseg_probabilities_and_ranges():
    torch.manual_seed(0)
    d = PhotometricDistortion()
    draws = torch.tensor([d.draw() for _ in range(4000)])
    applied = torch.stack([draws[:, 0] != 0, draws[:, 1] != 1, draws[:, 3] == 1, draws[:, 5] == 1], 1)
    torch.testing.assert_close(applied.float().mean(0), torch.full((4,), 0.5), atol=0.03, rtol=0)
    assert abs(draws[:, 2].mean().item() - 0.5) < 0.03
    b, c, s = draws[applied[:, 0], 0], draws[applied[:, 1], 1], draws[applied[:, 2], 4]
    assert -32 <= b.min() and b.max() <= 32 and (b < -30).any() and (b > 30).any()
    assert 0.5 <= c.min() and c.max() <= 1.5 and 0.5 <= s.min() and s.max() <= 1.5
    h = draws[applied[:, 3], 6]
    assert torch.equal(h, h.round()) and h.min() == -18 and h.max() == 17
    skipped = ~applied
    assert (draws[skipped[:, 2], 4] == 1).all() and (draws[skipped[:, 3], 6] == 0).all()


def test_draws_are_reproducible_with_the_torch_seed():
    d = PhotometricDistortion()
    torch.manual_seed(5)
    first = [d.draw() for _ in range(3)]
    torch.manual_seed(5)
    assert [d.draw() for _ in range(3)] == first


@pytest.mark.parametrize("kwargs, message", [
    ({"hue_delta": 0.1}, r"hue_delta is an int in OpenCV hue units .* got 0.1"),
    ({"hue_delta": 200}, r"hue_delta is an int .* got 200"),
    ({"brightness_delta": -1}, r"brightness_delta is in uint8 levels, 0..255, got -1"),
    ({"contrast_range": (1.5, 0.5)}, r"contrast_range must be a \(low, high\) pair .* got \(1.5, 0.5\)"),
    ({"saturation_range": (-1, 1)}, r"saturation_range must be .* got \(-1, 1\)"),
    ({"p": 2}, r"p must be in \[0, 1\], got 2"),
])
def test_bad_photometric_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PhotometricDistortion(**kwargs)
