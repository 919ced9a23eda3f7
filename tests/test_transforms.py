"""Paired transforms: image and mask stay aligned; MMSeg's sizes, crop rule and padding."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as nnf

from shared.data.on_device import training_batch

from shared.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Normalize,
    PadTo,
    RandomCropCatMax,
    RandomHorizontalFlip,
    RandomRescale,
    build_train_transform,
    build_val_transform,
    keep_ratio_size,
    val_collate,
)

STEP = 40  # image value = mask value * STEP, so the image encodes the mask


def blocky_pair(height: int, width: int, block: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A mask of ``block``-sized squares of classes 0..5 (some 255), and the image encoding it."""
    generator = torch.Generator().manual_seed(seed)
    cells = torch.randint(0, 6, (-(-height // block), -(-width // block)), generator=generator)
    cells[0, 1] = 255
    mask = cells.repeat_interleave(block, 0).repeat_interleave(block, 1)[:height, :width].contiguous()
    value = torch.where(mask == 255, torch.tensor(250), mask * STEP)
    return value.to(torch.uint8).expand(3, height, width).contiguous(), mask


def assert_aligned(image: torch.Tensor, mask: torch.Tensor, margin: int = 2, min_checked: int = 20) -> None:
    """Check the image still encodes the mask inside blocks: ``margin`` px away from any label
    edge, ignored pixel or border (a block edge may lie just outside a crop), since resizing
    blends neighbours into the image and nearest-neighbour mask resizing may be off by a pixel."""
    assert image.shape[-2:] == mask.shape
    padded = nnf.pad(mask[None, None].float(), [margin] * 4, value=-1.0)
    k = 2 * margin + 1
    local_max = nnf.max_pool2d(padded, k, stride=1)[0, 0]
    local_min = -nnf.max_pool2d(-padded, k, stride=1)[0, 0]
    inside = (local_max == local_min) & (mask != 255)
    assert inside.sum() >= min_checked, "too few pixels to check: the test would be vacuous"
    decoded = torch.round(image.float() / STEP).long()
    for channel in decoded:
        wrong = (channel != mask) & inside
        assert not wrong.any(), f"{int(wrong.sum())} of {int(inside.sum())} interior pixels disagree"


def denormalize(image: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    return (image * std + mean) * 255


def test_alignment_checker_detects_misalignment() -> None:
    image, mask = blocky_pair(32, 40)
    assert_aligned(image, mask)
    with pytest.raises(AssertionError, match="interior pixels disagree"):
        assert_aligned(image.flip(-1), mask)
    with pytest.raises(AssertionError, match="interior pixels disagree"):
        assert_aligned(image[:, 8:, :], mask[:-8, :])


@pytest.mark.parametrize(
    ("height", "width", "scale", "expected"),
    [
        (512, 683, (2048, 512), (512, 683)),  # a typical ADE20K image is left alone
        (300, 400, (2048, 512), (512, 683)),  # short edge binds: 512/300
        (100, 1000, (2048, 512), (205, 2048)),  # long edge binds: 2048/1000, 204.8 rounds up
        (400, 300, (512, 2048), (683, 512)),  # the order of scale does not matter
        (64, 48, (128, 32), (43, 32)),
    ],
)
def test_keep_ratio_size(height: int, width: int, scale: tuple[int, int], expected: tuple[int, int]) -> None:
    assert keep_ratio_size(height, width, scale) == expected


def test_random_rescale_sizes_and_alignment() -> None:
    image, mask = blocky_pair(40, 56)
    fixed = RandomRescale(scale=(96, 32), ratio_range=(1.5, 1.5))
    out_image, out_mask = fixed(image, mask)
    # targets (144, 48): factor min(144/56, 48/40) = 1.2
    assert out_image.shape == (3, 48, 67) and out_mask.shape == (48, 67)
    assert out_image.dtype == torch.uint8 and out_mask.dtype == torch.int64
    assert_aligned(out_image, out_mask)

    rescale = RandomRescale(scale=(96, 32), ratio_range=(0.5, 2.0))
    smallest = keep_ratio_size(40, 56, (48, 16))
    largest = keep_ratio_size(40, 56, (192, 64))
    heights = set()
    for seed in range(12):
        torch.manual_seed(seed)
        out_image, out_mask = rescale(image, mask)
        assert smallest[0] <= out_mask.shape[0] <= largest[0]
        assert smallest[1] <= out_mask.shape[1] <= largest[1]
        assert abs(out_mask.shape[1] / out_mask.shape[0] - 56 / 40) < 0.05  # aspect ratio kept
        heights.add(out_mask.shape[0])
        if out_mask.shape[0] >= 24:  # blocks shrunk below 2*margin px hold no interior
            assert_aligned(out_image, out_mask)
    assert len(heights) > 5  # the ratio really is random


def test_random_rescale_is_reproducible_with_torch_seed() -> None:
    image, mask = blocky_pair(40, 56)
    rescale = RandomRescale(scale=(96, 32))
    torch.manual_seed(3)
    first = rescale(image, mask)
    torch.manual_seed(3)
    second = rescale(image, mask)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_random_crop_size_and_alignment() -> None:
    image, mask = blocky_pair(48, 64)
    crop = RandomCropCatMax(crop_size=(24, 32), cat_max_ratio=1.0)
    for seed in range(5):
        torch.manual_seed(seed)
        out_image, out_mask = crop(image, mask)
        assert out_image.shape == (3, 24, 32) and out_mask.shape == (24, 32)
        assert_aligned(out_image, out_mask, margin=0)
        # the crop is a window of the input
        matches = [
            (top, left)
            for top in range(48 - 24 + 1)
            for left in range(64 - 32 + 1)
            if torch.equal(mask[top : top + 24, left : left + 32], out_mask)
            and torch.equal(image[:, top : top + 24, left : left + 32], out_image)
        ]
        assert matches


def test_random_crop_of_a_smaller_image_keeps_what_there_is() -> None:
    image, mask = blocky_pair(20, 50)
    out_image, out_mask = RandomCropCatMax(crop_size=32)(image, mask)
    assert out_image.shape == (3, 20, 32) and out_mask.shape == (20, 32)
    assert_aligned(out_image, out_mask, margin=0)


def _dominated(mask: torch.Tensor, ratio: float = 0.75) -> bool:
    valid = mask[mask != 255]
    counts = torch.bincount(valid)
    counts = counts[counts > 0]
    return counts.numel() < 2 or counts.max().item() / valid.numel() >= ratio


def test_cat_max_ratio_retries_until_no_class_dominates() -> None:
    # Class 0 everywhere but an 8-row band of class 1: a 16x16 crop passes only if it holds at
    # least 5 of the band's rows (top offset 9..23 of 0..32, i.e. 45% of the draws).
    mask = torch.zeros(48, 48, dtype=torch.int64)
    mask[20:28] = 1
    image = (mask * STEP).to(torch.uint8).expand(3, 48, 48).contiguous()
    with_retries = RandomCropCatMax(crop_size=16, cat_max_ratio=0.75)  # MMSeg's 10 tries
    without = RandomCropCatMax(crop_size=16, cat_max_ratio=1.0)
    dominated_without = 0
    for seed in range(20):
        torch.manual_seed(seed)
        out_image, out_mask = with_retries(image, mask)
        assert not _dominated(out_mask), f"seed {seed}: crop still dominated"
        assert_aligned(out_image, out_mask, margin=0)
        torch.manual_seed(seed)
        dominated_without += _dominated(without(image, mask)[1])
    assert dominated_without >= 6  # so the retries are what made the difference


def test_cat_max_ratio_gives_up_after_tries() -> None:
    mask = torch.full((40, 40), 3, dtype=torch.int64)  # a single class: no crop can pass
    image = (mask * STEP).to(torch.uint8).expand(3, 40, 40).contiguous()
    draws = []
    crop = RandomCropCatMax(crop_size=16, tries=7)
    original = crop._draw_box
    crop._draw_box = lambda h, w: draws.append(1) or original(h, w)  # type: ignore[method-assign]
    out_image, out_mask = crop(image, mask)
    assert out_mask.shape == (16, 16) and len(draws) == 1 + 7


def test_horizontal_flip() -> None:
    image, mask = blocky_pair(24, 40)
    out_image, out_mask = RandomHorizontalFlip(p=1.0)(image, mask)
    assert torch.equal(out_mask, mask.flip(-1)) and torch.equal(out_image, image.flip(-1))
    assert_aligned(out_image, out_mask, margin=0)
    out_image, out_mask = RandomHorizontalFlip(p=0.0)(image, mask)
    assert torch.equal(out_mask, mask) and torch.equal(out_image, image)


def test_normalize() -> None:
    mean = torch.tensor(IMAGENET_MEAN)
    image = torch.round(mean * 255).to(torch.uint8)[:, None, None].expand(3, 4, 5)
    mask = torch.zeros(4, 5, dtype=torch.int64)
    out_image, out_mask = Normalize()(image, mask)
    assert out_image.dtype == torch.float32 and out_image.abs().max() < 0.01
    assert out_mask is mask


def test_pad_to() -> None:
    image = torch.ones(3, 5, 7)
    mask = torch.zeros(5, 7, dtype=torch.int64)
    out_image, out_mask = PadTo((8, 9), ignore_index=255)(image, mask)
    assert out_image.shape == (3, 8, 9) and out_mask.shape == (8, 9)
    assert torch.equal(out_image[:, :5, :7], image) and torch.equal(out_mask[:5, :7], mask)
    assert (out_image[:, 5:] == 0).all() and (out_image[:, :, 7:] == 0).all()
    assert (out_mask[5:] == 255).all() and (out_mask[:, 7:] == 255).all()
    with pytest.raises(ValueError, match="different sizes"):
        PadTo(8)(image, mask[:4])


@pytest.mark.parametrize("crop_size", [24, (20, 28)])
def test_train_pipeline_keeps_alignment(crop_size: int | tuple[int, int]) -> None:
    crop_hw = (crop_size, crop_size) if isinstance(crop_size, int) else crop_size
    transform = build_train_transform(crop_size=crop_size, scale=(96, 40), photometric=False)
    for seed in range(8):
        torch.manual_seed(seed)
        image, mask = blocky_pair(36 + 4 * seed, 52, block=12, seed=seed)
        out_image, out_mask, aug = transform(image, mask)
        assert out_image.shape == (3, *crop_hw) and out_image.dtype == torch.uint8
        assert out_mask.shape == crop_hw and out_mask.dtype == mask.dtype
        assert_aligned(out_image, out_mask, min_checked=5)
        # and still after the device's normalisation
        x, y = training_batch(out_image[None], out_mask[None], aug[None])
        assert_aligned(denormalize(x[0]), y[0], min_checked=5)


def test_train_pipeline_pads_small_images() -> None:
    # scale (20, 10) makes every rescaled image smaller than the 24 px crop.
    transform = build_train_transform(crop_size=24, scale=(20, 10), photometric=False)
    torch.manual_seed(0)
    image, mask = blocky_pair(32, 48)
    out_image, out_mask, aug = transform(image, mask)
    assert out_mask.shape == (24, 24)
    assert (out_mask[-1] == 255).all()  # padded bottom rows are ignored
    x, _ = training_batch(out_image[None], out_mask[None], aug[None])
    assert (x[0, :, -1] == 0).all()  # and hold 0 once normalised, as MMSeg pads


def test_train_pipeline_with_photometric() -> None:
    torch.manual_seed(0)
    image, mask = blocky_pair(40, 56)
    out_image, out_mask, aug = build_train_transform(crop_size=(16, 24), scale=(96, 32))(image, mask)
    x, y = training_batch(out_image[None], out_mask[None], aug[None])
    assert x.shape == (1, 3, 16, 24) and x.dtype == torch.float32
    assert y.shape == (1, 16, 24) and y.dtype == torch.int64
    assert set(y.unique().tolist()) <= set(range(6)) | {255}


def test_bad_crop_size() -> None:
    with pytest.raises(ValueError, match=r"crop_size must be a positive int or an \(h, w\) pair.*got \(0, 4\)"):
        build_train_transform(crop_size=(0, 4))


def test_val_transform_keeps_mask_at_original_resolution() -> None:
    image, mask = blocky_pair(30, 50)
    out_image, out_mask = build_val_transform(scale=(128, 60))(image, mask)
    assert out_image.shape == (3, *keep_ratio_size(30, 50, (128, 60))) == (3, 60, 100)
    assert out_image.dtype == torch.float32
    assert out_mask is mask
    # resizing the image back to the mask's size recovers the labels (blocks are big enough)
    back = nnf.interpolate(denormalize(out_image)[None], size=(30, 50), mode="bilinear", antialias=True)[0]
    assert_aligned(back, out_mask)


def test_val_collate_pads_and_reports_sizes() -> None:
    items = [
        (torch.ones(3, 10, 14), torch.zeros(5, 7, dtype=torch.int64), 0),
        (torch.ones(3, 12, 8), torch.ones(6, 4, dtype=torch.int64), 2),
    ]
    images, masks, sizes, skipped = val_collate(items)
    assert images.shape == (2, 3, 12, 14) and masks.shape == (2, 6, 7)
    assert masks.dtype == torch.int64 and sizes.dtype == torch.int64 and skipped.dtype == torch.int64
    assert sizes.tolist() == [[10, 14, 5, 7], [12, 8, 6, 4]]
    assert skipped.tolist() == [0, 2]
    assert (images[0, :, 10:] == 0).all() and (images[0, :, :10, :14] == 1).all()
    assert (images[1, :, :, 8:] == 0).all() and (images[1, :, :12, :8] == 1).all()
    assert (masks[0, 5:] == 255).all() and (masks[0, :, 7:] == 255).all() and (masks[0, :5, :7] == 0).all()
    assert (masks[1, :, 4:] == 255).all() and (masks[1, :6, :4] == 1).all()
    with pytest.raises(ValueError, match="empty batch"):
        val_collate([])
