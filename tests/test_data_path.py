"""The data-path benchmark (benchmarks/data_path.py) at toy size, and its bad-input messages."""
from __future__ import annotations

import json

import pytest

from mdtables import squeeze
from benchmarks import data_path
from shared.data.transforms import AUG_SIZE

TINY = ["--crop", "32", "--images", "4", "--seconds", "0.01", "--batch", "2", "--loader-batches", "1"]


def test_cli_measures_every_part_and_writes_markdown(tmp_path, capsys):
    out, md = tmp_path / "r.json", tmp_path / "B.md"
    argv = [*TINY, "--workers", "0", "1", "--work-dir", str(tmp_path / "w"), "--out", str(out),
            "--markdown", str(md)]
    assert data_path.main(argv) == 0
    r = json.loads(out.read_text())
    assert r["reference_img_s"] > 0 and r["ours_img_s"] > 0
    assert r["ratio"] == pytest.approx(r["ours_img_s"] / r["reference_img_s"])
    assert r["ours_on_anchor_cpu_img_s"] == pytest.approx(r["ratio"] * data_path.ANCHOR_REFERENCE_IMG_S)
    stages = [s["stage"] for s in r["stages"]]
    # every step a worker takes, in order, then the whole item
    assert stages == ["decode + checks (dataset.load)", "RandomRescale", "RandomCropCatMax",
                      "RandomHorizontalFlip", "PadTo", "whole dataset[i]"]
    assert all(s["ms"] > 0 for s in r["stages"])
    assert [x["workers"] for x in r["loaders"]] == [0, 1]
    # a batch of 2 crops of 32x32: uint8 images and labels, the float augmentation vector
    # (AUG_SIZE: the photometric draws and the crop size), 2 counts
    assert r["loaders"][0]["mib_per_batch"] * 2 ** 20 == 2 * (3 * 32 * 32 + 32 * 32 + AUG_SIZE * 4 + 8)
    text = md.read_text()
    assert "data path on CPU" in text and "| whole dataset[i] |" in squeeze(text)
    assert text in capsys.readouterr().out


def test_too_few_images_for_a_batch_is_named(tmp_path, capsys):
    argv = [*TINY, "--images", "1", "--batch", "4", "--workers", "0", "--work-dir", str(tmp_path)]
    assert data_path.main(argv) == 2
    assert "1 images make no batch of 4: raise --images" in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["--seconds", "0"], "--seconds 0: must be > 0"),
    (["--workers", "2", "-1"], "--workers 2 -1: counts must be >= 0"),
    (["--markdown", "/nonexistent/dir/B.md"], "--markdown /nonexistent/dir/B.md: directory /nonexistent/dir does not exist"),
    (["--crop", "8"], "--crop must be >= 16, got 8"),
])
def test_bad_options_are_named(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        data_path.main(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err
