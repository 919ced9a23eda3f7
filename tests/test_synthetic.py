"""The synthetic ADE20K-format generator: layout, bounds, determinism, learnability, arguments."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shared.data import SegmentationDataset, find_samples
from shared.data.synthetic import generate, main


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_sizes_and_values(tmp_path: Path) -> None:
    out = generate(tmp_path / "ade", num_train=12, num_val=5, num_classes=6, min_size=20, max_size=40, seed=3)
    assert out == tmp_path / "ade"
    for split, count in (("training", 12), ("validation", 5)):
        images = sorted((out / "images" / split).iterdir())
        labels = sorted((out / "annotations" / split).iterdir())
        assert len(images) == len(labels) == count
        assert [p.stem for p in images] == [p.stem for p in labels]
        assert all(p.suffix == ".jpg" for p in images) and all(p.suffix == ".png" for p in labels)
        shapes, values = set(), set()
        for image_path, label_path in zip(images, labels):
            image, label = Image.open(image_path), Image.open(label_path)
            assert image.format == "JPEG" and image.mode == "RGB"
            assert label.format == "PNG" and label.mode == "L"
            assert image.size == label.size
            assert all(20 <= side <= 40 for side in image.size)
            shapes.add(image.size)
            values |= set(np.unique(np.asarray(label)).tolist())
        assert len(shapes) > 1  # sizes and aspect ratios vary
        assert values <= set(range(7))
    assert len(find_samples(out, "training")[0]) == 12


def test_other_is_a_little_background(tmp_path: Path) -> None:
    out = generate(tmp_path / "ade", num_train=30, num_val=1, num_classes=8, min_size=32, max_size=48)
    labels = np.concatenate([np.asarray(Image.open(p)).ravel()
                             for p in (out / "annotations" / "training").iterdir()])
    counts = np.bincount(labels, minlength=9)
    assert 0 < counts[0] / counts.sum() < 0.1
    assert (counts[1:] > 0).all()  # every class shows up


def test_deterministic_with_seed(tmp_path: Path) -> None:
    args = dict(num_train=4, num_val=2, num_classes=5, min_size=16, max_size=32)
    first = _tree(generate(tmp_path / "a", seed=7, **args))
    assert first == _tree(generate(tmp_path / "b", seed=7, **args))
    assert first != _tree(generate(tmp_path / "c", seed=8, **args))
    # the validation split does not depend on the size of the training split
    other = _tree(generate(tmp_path / "d", seed=7, **{**args, "num_train": 6}))
    assert {k: v for k, v in other.items() if "validation" in k} == {k: v for k, v in first.items() if "validation" in k}


def test_pixels_predict_the_labels(tmp_path: Path) -> None:
    """Learnable from the pixels: even a nearest-mean-colour classifier fit on the training split
    labels most validation pixels right (a CNN also has the texture to go on)."""
    num_classes = 8
    out = generate(tmp_path / "ade", num_train=20, num_val=10, num_classes=num_classes, min_size=24, max_size=48)

    def pixels(split: str) -> tuple[np.ndarray, np.ndarray]:
        dataset = SegmentationDataset(out, split, transform=None, num_classes=num_classes)
        items = [dataset[i] for i in range(len(dataset))]
        colours = np.concatenate([image.reshape(3, -1).T.numpy() for image, _, _ in items]).astype(float)
        labels = np.concatenate([mask.reshape(-1).numpy() for _, mask, _ in items])
        keep = labels != 255
        return colours[keep], labels[keep]

    colours, labels = pixels("training")
    means = np.stack([colours[labels == k].mean(0) for k in range(num_classes)])
    val_colours, val_labels = pixels("validation")
    predicted = np.argmin(((val_colours[:, None, :] - means[None]) ** 2).sum(-1), axis=1)
    assert (predicted == val_labels).mean() > 0.85


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_classes": 0}, r"num_classes must be between 1 and 254 .* got 0"),
        ({"num_classes": 255}, r"num_classes must be between 1 and 254 .* got 255"),
        ({"min_size": 8, "max_size": 32}, r"min_size must be >= 16 pixels, got 8"),
        ({"min_size": 40, "max_size": 30}, r"min_size \(40\) must be <= max_size \(30\)"),
        ({"num_train": 0}, r"num_train must be >= 1, got 0"),
        ({"num_val": -1}, r"num_val must be >= 1, got -1"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict, message: str) -> None:
    args = dict(num_train=2, num_val=1, num_classes=4, min_size=16, max_size=24, seed=0) | kwargs
    with pytest.raises(ValueError, match=message):
        generate(tmp_path / "ade", **args)
    assert not (tmp_path / "ade").exists()


def test_refuses_to_mix_with_existing_files(tmp_path: Path) -> None:
    out = generate(tmp_path / "ade", num_train=2, num_val=1, num_classes=3, min_size=16, max_size=20)
    with pytest.raises(ValueError, match=rf"{re.escape(str(out / 'images' / 'training'))} already holds files"):
        generate(out, num_train=1, num_val=1, num_classes=3, min_size=16, max_size=20)


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    main(["--out", str(out), "--num-train", "3", "--num-val", "2", "--num-classes", "4",
          "--min-size", "16", "--max-size", "24", "--seed", "5"])
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1
    assert printed[0].startswith(f"wrote 3 training + 2 validation samples, 4 classes, 16-24 px, seed 5, to {out}")
    assert len(list((out / "images" / "training").iterdir())) == 3
    assert len(list((out / "annotations" / "validation").iterdir())) == 2

    with pytest.raises(SystemExit) as exit_info:
        main(["--out", str(tmp_path / "bad"), "--num-classes", "300"])
    assert exit_info.value.code == 2
    assert "num_classes must be between 1 and 254" in capsys.readouterr().err
