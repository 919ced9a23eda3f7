"""The ADE20K loader: pairing, label mapping, and every bad-input path with its message."""

from __future__ import annotations

import logging
import os
import pickle
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import ExifTags, Image

from shared.data.transforms import AUG_SIZE
from shared.data import (
    DataError,
    SegmentationDataset,
    build_train_transform,
    build_val_transform,
    find_samples,
    generate,
    val_collate,
)

NUM_CLASSES = 5


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    return generate(tmp_path / "ade", num_train=6, num_val=3, num_classes=NUM_CLASSES,
                    min_size=16, max_size=32, seed=1)


def _train_files(root: Path, stem: str) -> tuple[Path, Path]:
    return (root / "images" / "training" / f"{stem}.jpg",
            root / "annotations" / "training" / f"{stem}.png")


STEM = "ADE_train_00000002"  # the second sample, index 1


def grey16(values: np.ndarray) -> Image.Image:
    """A 16-bit greyscale image (PIL mode 'I;16', what a 16-bit grey PNG is read as)."""
    height, width = values.shape
    return Image.frombytes("I;16", (width, height), values.astype("<u2").tobytes())


# ---------------------------------------------------------------- loading good data


def test_find_samples_pairs_sorted(root: Path) -> None:
    pairs, skipped = find_samples(root, "training")
    assert skipped == []
    assert len(pairs) == 6
    assert [image.stem for image, _ in pairs] == [label.stem for _, label in pairs]
    assert pairs == sorted(pairs)


def test_find_samples_accepts_other_image_suffixes(root: Path) -> None:
    image, _ = _train_files(root, STEM)
    image.rename(image.with_suffix(".JPEG"))
    other, _ = _train_files(root, "ADE_train_00000003")
    Image.open(other).save(other.with_suffix(".png"))
    other.unlink()
    pairs, _ = find_samples(root, "training")
    assert {p.suffix for p, _ in pairs} == {".jpg", ".JPEG", ".png"}
    assert len(pairs) == 6


def test_item_shapes_dtypes_and_label_mapping(root: Path) -> None:
    dataset = SegmentationDataset(root, "training", transform=None, num_classes=NUM_CLASSES)
    assert len(dataset) == 6
    for index in range(len(dataset)):
        image, mask, skipped = dataset[index]
        image_path, label_path = dataset.samples[index]
        raw = torch.from_numpy(np.asarray(Image.open(label_path)).astype(np.int64))
        assert image.dtype == torch.uint8 and image.ndim == 3 and image.shape[0] == 3
        assert mask.dtype == torch.uint8 and mask.shape == image.shape[1:] == raw.shape
        assert skipped == 0
        # reduce_zero_label: 0 ("other") -> 255, v -> v - 1.
        assert torch.equal(mask[raw == 0], torch.full_like(mask[raw == 0], 255))
        assert torch.equal(mask[raw > 0].long(), raw[raw > 0] - 1)
        assert set(mask.unique().tolist()) <= set(range(NUM_CLASSES)) | {255}
        expected = np.asarray(Image.open(image_path).convert("RGB"))
        assert torch.equal(image.permute(1, 2, 0), torch.from_numpy(expected.copy()))


def test_16bit_png_image_is_scaled_by_its_full_range(root: Path) -> None:
    """A 16-bit greyscale PNG is read as value >> 8 in each channel, not clipped to white."""
    image, label = _train_files(root, STEM)
    width, height = Image.open(label).size
    values = np.linspace(0, 65535, width * height).astype(np.uint16).reshape(height, width)
    image.unlink()
    grey16(values).save(image.with_suffix(".png"))
    assert Image.open(image.with_suffix(".png")).mode == "I;16"
    dataset = SegmentationDataset(root, "training", transform=None, num_classes=NUM_CLASSES)
    pixels, _, skipped = dataset[1]
    expected = torch.from_numpy((values >> 8).astype(np.uint8))
    assert skipped == 0 and pixels.dtype == torch.uint8 and pixels.shape == (3, height, width)
    for channel in pixels:
        assert torch.equal(channel, expected)
    assert pixels.max() == 255 and pixels.min() == 0  # the whole range, not a blank image


def test_16bit_annotation_within_uint8_reads_as_the_same_labels(root: Path) -> None:
    _, label = _train_files(root, STEM)
    dataset = SegmentationDataset(root, "training", transform=None, num_classes=NUM_CLASSES)
    _, expected, _ = dataset[1]
    raw = np.asarray(Image.open(label))
    grey16(raw).save(label)
    assert Image.open(label).mode == "I;16"
    _, mask, _ = dataset[1]
    assert torch.equal(mask, expected)  # class indices as stored: never scaled


def test_exif_orientation_is_applied_to_the_image(root: Path) -> None:
    """A JPEG stored landscape, tagged "turn 90 degrees clockwise", pairs with a portrait
    annotation and is read turned: the stored left half (red) becomes the top half."""
    image, label = _train_files(root, STEM)
    Image.fromarray(np.ones((24, 16), np.uint8), "L").save(label)  # 16 wide, 24 high
    stored = np.zeros((16, 24, 3), np.uint8)
    stored[:, :12] = (220, 20, 20)
    stored[:, 12:] = (20, 20, 220)
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    Image.fromarray(stored).save(image, exif=exif, quality=95)
    dataset = SegmentationDataset(root, "training", transform=None, num_classes=NUM_CLASSES)
    pixels, mask, _ = dataset[1]
    assert pixels.shape == (3, 24, 16) and mask.shape == (24, 16)
    top, bottom = pixels[:, :10].float().mean((1, 2)), pixels[:, 14:].float().mean((1, 2))
    assert top[0] > 180 and top[2] < 60 and bottom[2] > 180 and bottom[0] < 60


def test_ignore_value_255_stays_255(root: Path) -> None:
    _, label_path = _train_files(root, STEM)
    raw = np.asarray(Image.open(label_path)).copy()
    raw[0, :] = 255
    raw[1, :] = 0
    raw[2, :] = 1
    Image.fromarray(raw, "L").save(label_path)
    dataset = SegmentationDataset(root, "training", transform=None, num_classes=NUM_CLASSES)
    _, mask, _ = dataset[1]
    assert (mask[0] == 255).all() and (mask[1] == 255).all() and (mask[2] == 0).all()


def test_train_and_val_loaders_batch(root: Path) -> None:
    torch.manual_seed(0)
    train = SegmentationDataset(root, "training", build_train_transform(crop_size=24, scale=(64, 32)),
                                num_classes=NUM_CLASSES)
    images, masks, aug, skipped = next(iter(torch.utils.data.DataLoader(train, batch_size=3)))
    assert images.shape == (3, 3, 24, 24) and images.dtype == torch.uint8
    assert masks.shape == (3, 24, 24) and masks.dtype == torch.uint8
    assert aug.shape == (3, AUG_SIZE) and skipped.tolist() == [0, 0, 0]

    val = SegmentationDataset(root, "validation", build_val_transform(scale=(64, 32)),
                              num_classes=NUM_CLASSES)
    loader = torch.utils.data.DataLoader(val, batch_size=3, collate_fn=val_collate)
    images, masks, sizes, skipped = next(iter(loader))
    assert images.shape[0] == masks.shape[0] == 3 and sizes.shape == (3, 4)
    for k in range(3):
        _, mask, _ = val[k]
        assert sizes[k, 2:].tolist() == list(mask.shape)


def test_dataset_pickles_and_works_in_worker_processes(root: Path) -> None:
    dataset = SegmentationDataset(root, "validation", build_val_transform(scale=(64, 32)),
                                  num_classes=NUM_CLASSES, skip_bad_samples=True)
    clone = pickle.loads(pickle.dumps(dataset))
    assert torch.equal(clone[0][1], dataset[0][1])
    loader = torch.utils.data.DataLoader(dataset, batch_size=3, num_workers=1, collate_fn=val_collate)
    batches = list(loader)
    assert len(batches) == 1 and batches[0][0].shape[0] == 3


# ---------------------------------------------------------------- errors found by the scan


def test_missing_root(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=rf"dataset root {re.escape(str(missing))} does not exist"):
        find_samples(missing, "training")


@pytest.mark.parametrize("kind", ["images", "annotations"])
def test_missing_split_directory(root: Path, kind: str) -> None:
    if kind == "annotations":
        (root / "images" / "testing").mkdir()
    expected = root / kind / "testing"
    with pytest.raises(DataError, match=rf"missing {kind} directory {re.escape(str(expected))} for split 'testing'"):
        SegmentationDataset(root, "testing", transform=None)


def test_looping_directory_is_named_not_missing(root: Path) -> None:
    """A split directory that is a symbolic link to itself is a loop, not a missing directory."""
    images = root / "images" / "training"
    images.rename(root / "images" / "kept")
    os.symlink("training", images)
    with pytest.raises(DataError, match=rf"^{re.escape(str(images))}: symbolic link loop "
                                        rf"\({re.escape(str(images))} -> training never reaches a file or directory\)$"):
        find_samples(root, "training")
    # a loop above the data set (the root itself, reached through two links) is named too
    os.symlink(root / "b", root.parent / "a")
    os.symlink(root.parent / "a", root / "b")
    with pytest.raises(DataError, match=rf"^{re.escape(str(root / 'b'))}: symbolic link loop \("
                                        rf"{re.escape(str(root / 'b'))} -> {re.escape(str(root.parent / 'a'))} "):
        SegmentationDataset(root / "b", "training", transform=None)


def test_no_images(root: Path) -> None:
    for split in ("images", "annotations"):
        (root / split / "empty").mkdir()
    with pytest.raises(DataError, match=r"no images \(.jpg, .jpeg or .png\) in .*empty"):
        find_samples(root, "empty")


def test_image_without_annotation(root: Path) -> None:
    _, label = _train_files(root, STEM)
    label.unlink()
    with pytest.raises(DataError, match=rf"1 image\(s\) without an annotation.*{STEM}\.jpg.*skip_bad_samples=True"):
        find_samples(root, "training")


def test_annotation_without_image_names_first_files_and_count(root: Path) -> None:
    for i in range(1, 5):
        _train_files(root, f"ADE_train_{i:08d}")[0].unlink()
    for i in range(7, 12):  # 5 more orphan annotations: 9 in all, 5 named
        Image.fromarray(np.zeros((16, 16), np.uint8), "L").save(_train_files(root, f"ADE_train_{i:08d}")[1])
    with pytest.raises(DataError, match=r"9 annotation\(s\) without an image") as info:
        find_samples(root, "training", skip_bad_samples=False)
    message = str(info.value)
    assert "ADE_train_00000001.png" in message and "(and 4 more)" in message
    assert "ADE_train_00000011.png" not in message
    pairs, skipped = find_samples(root, "training", skip_bad_samples=True)
    assert [p.stem for p, _ in pairs] == ["ADE_train_00000005", "ADE_train_00000006"]
    assert len(skipped) == 9


def test_nothing_left_after_skipping(root: Path) -> None:
    for path in (root / "annotations" / "training").iterdir():
        path.unlink()
    with pytest.raises(DataError, match=r"no usable \(image, annotation\) pair.*6 file\(s\) skipped"):
        find_samples(root, "training", skip_bad_samples=True)


def test_ambiguous_stems(root: Path) -> None:
    image, _ = _train_files(root, STEM)
    Image.open(image).save(image.with_suffix(".png"))
    with pytest.raises(DataError, match=rf"sharing a stem.*{STEM}"):
        find_samples(root, "training")
    pairs, skipped = find_samples(root, "training", skip_bad_samples=True)
    assert len(pairs) == 5 and all(p.stem != STEM for p, _ in pairs)
    assert len(skipped) == 1 and STEM in skipped[0]


def test_skip_unpaired_files_at_scan(root: Path) -> None:
    image, label = _train_files(root, STEM)
    label.unlink()
    _, other_label = _train_files(root, "ADE_train_00000004")
    _train_files(root, "ADE_train_00000004")[0].unlink()
    Image.fromarray(np.zeros((16, 16), np.uint8), "L").save(other_label)
    dataset = SegmentationDataset(root, "training", transform=None, num_classes=NUM_CLASSES,
                                  skip_bad_samples=True)
    assert len(dataset) == 4
    assert len(dataset.skipped_at_scan) == 2
    assert any(str(image) in s and "without an annotation" in s for s in dataset.skipped_at_scan)
    assert any(str(other_label) in s and "without an image" in s for s in dataset.skipped_at_scan)


# ---------------------------------------------------------------- errors found at load time


def _break_size(root: Path) -> str:
    image, _ = _train_files(root, STEM)
    width, height = Image.open(image).size
    Image.new("RGB", (width + 3, height)).save(image)
    return rf"size mismatch: image .*{STEM}\.jpg is {width + 3}x{height} \(WxH\) but annotation .*{STEM}\.png is {width}x{height}"


def _break_value(root: Path) -> str:
    _, label = _train_files(root, STEM)
    raw = np.asarray(Image.open(label)).copy()
    raw[0, 0] = NUM_CLASSES + 2
    Image.fromarray(raw, "L").save(label)
    return (rf"annotation .*{STEM}\.png holds label value {NUM_CLASSES + 2}, above num_classes={NUM_CLASSES}"
            r".*is num_classes wrong")


def _break_garbage_image(root: Path) -> str:
    image, _ = _train_files(root, STEM)
    image.write_bytes(b"this is not a JPEG at all" * 10)
    return rf"cannot decode image .*{STEM}\.jpg"


def _break_garbage_annotation(root: Path) -> str:
    _, label = _train_files(root, STEM)
    label.write_bytes(bytes(range(256)))
    return rf"cannot decode annotation .*{STEM}\.png"


def _break_truncated_jpeg(root: Path) -> str:
    image, _ = _train_files(root, STEM)
    data = image.read_bytes()
    image.write_bytes(data[: len(data) // 2])
    return rf"cannot decode image .*{STEM}\.jpg: .*truncated"


def _break_truncated_png(root: Path) -> str:
    _, label = _train_files(root, STEM)
    data = label.read_bytes()
    label.write_bytes(data[: len(data) // 2])
    return rf"cannot decode annotation .*{STEM}\.png"


def _break_rgb_annotation(root: Path) -> str:
    _, label = _train_files(root, STEM)
    Image.open(label).convert("RGB").save(label)
    return rf"annotation .*{STEM}\.png has PIL mode 'RGB'; expected a single-channel"


def bomb_png(width: int, height: int) -> bytes:
    """A PNG of a few dozen bytes whose header claims ``width`` x ``height`` RGB pixels (and
    whose pixel data is empty): what a decompression-bomb check must stop at the header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b""))
            + chunk(b"IEND", b""))


BOMB_MESSAGE = (r"is over Pillow's decompression-bomb limit \(Image size \(400000000 pixels\) exceeds "
                r"limit of \d+ pixels.*\); a damaged or hostile header, or an image too large to "
                r"train on: shrink or remove it")


def _break_bomb_image(root: Path) -> str:
    image, _ = _train_files(root, STEM)
    image.write_bytes(bomb_png(20000, 20000))  # Pillow reads by content, whatever the suffix
    return rf"{STEM}\.jpg: image {BOMB_MESSAGE}"


def _break_bomb_annotation(root: Path) -> str:
    _, label = _train_files(root, STEM)
    label.write_bytes(bomb_png(20000, 20000))
    return rf"{STEM}\.png: annotation {BOMB_MESSAGE}"


def _break_wide_16bit_annotation(root: Path) -> str:
    _, label = _train_files(root, STEM)
    raw = np.asarray(Image.open(label)).astype(np.uint16)
    raw[0, 0] = 300
    grey16(raw).save(label)
    return (rf"annotation .*{STEM}\.png is a 16-bit PNG \(PIL mode 'I;16'\) holding label value 300, "
            r"outside 0\.\.255: labels are class indices, read as uint8 \(at most 254 classes, 255 "
            r"ignored\); they are never rescaled, so save the annotation with values 0\.\.255")


def _break_exif_size(root: Path) -> str:
    """An image stored at its annotation's size but tagged "turn 90 degrees": once turned, as
    the loader shows it, it no longer matches; the message must say why."""
    image, label = _train_files(root, STEM)
    Image.fromarray(np.ones((16, 24), np.uint8), "L").save(label)  # 24 wide, 16 high
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    Image.new("RGB", (24, 16), (200, 30, 30)).save(image, exif=exif)
    return (rf"size mismatch: image .*{STEM}\.jpg is 16x24 \(WxH\) but annotation .*{STEM}\.png is "
            r"24x16; the image's EXIF orientation 6 \(turn 90 degrees clockwise\) was applied, as "
            r"annotation tools display the image; the pixels stored in the file are 24x16")


def _break_looping_image(root: Path) -> str:
    image, _ = _train_files(root, STEM)
    image.unlink()
    os.symlink(image.name, image)  # the link points at itself
    return rf"{STEM}\.jpg: symbolic link loop \(.*{STEM}\.jpg -> {STEM}\.jpg never reaches a file or directory\)"


BREAKERS = [_break_size, _break_value, _break_garbage_image, _break_garbage_annotation,
            _break_truncated_jpeg, _break_truncated_png, _break_rgb_annotation, _break_bomb_image,
            _break_bomb_annotation, _break_wide_16bit_annotation, _break_exif_size,
            _break_looping_image]


@pytest.mark.parametrize("breaker", BREAKERS, ids=lambda f: f.__name__[len("_break_"):])
def test_bad_sample_raises_naming_the_file(root: Path, breaker) -> None:
    message = breaker(root)
    dataset = SegmentationDataset(root, "training", transform=None, num_classes=NUM_CLASSES)
    dataset[0]  # the good neighbours still load
    with pytest.raises(DataError, match=message):
        dataset[1]


@pytest.mark.parametrize("breaker", BREAKERS, ids=lambda f: f.__name__[len("_break_"):])
def test_bad_sample_is_skipped_and_counted(root: Path, breaker, caplog: pytest.LogCaptureFixture) -> None:
    message = breaker(root)
    dataset = SegmentationDataset(root, "training", transform=None, num_classes=NUM_CLASSES,
                                  skip_bad_samples=True)
    reference = SegmentationDataset(root, "training", transform=None, num_classes=NUM_CLASSES)
    with caplog.at_level(logging.WARNING, logger="shared.data.ade20k"):
        image, mask, skipped = dataset[1]
        assert skipped == 1
        expected_image, expected_mask, _ = reference[2]
        assert torch.equal(image, expected_image) and torch.equal(mask, expected_mask)
        assert dataset[1][2] == 1  # counted again, but...
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # ...warned about once
    assert re.search(message, warnings[0])
    assert dataset[0][2] == 0


def test_skipping_wraps_around(root: Path) -> None:
    _, label = _train_files(root, "ADE_train_00000006")
    label.write_bytes(b"garbage")
    dataset = SegmentationDataset(root, "training", transform=None, num_classes=NUM_CLASSES,
                                  skip_bad_samples=True)
    image, _, skipped = dataset[5]
    assert skipped == 1 and torch.equal(image, dataset[0][0])


def test_every_sample_bad(root: Path) -> None:
    for path in (root / "annotations" / "validation").iterdir():
        path.write_bytes(b"garbage")
    dataset = SegmentationDataset(root, "validation", transform=None, num_classes=NUM_CLASSES,
                                  skip_bad_samples=True)
    with pytest.raises(DataError, match=r"all 3 samples of split 'validation' .* are bad; first problem: cannot decode"):
        dataset[0]


def test_num_classes_out_of_range(root: Path) -> None:
    with pytest.raises(ValueError, match=r"num_classes must be in 1..254.*got 255"):
        SegmentationDataset(root, "training", transform=None, num_classes=255)
