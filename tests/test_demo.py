"""The demo's plumbing (shared/demo.py): its data set is generated once and marked complete, an
interrupted or foreign set is refused with its directory named, and each size's runs get the
study's pipeline. (The demo itself is `make demo`; its ade20k size is for a GPU.)"""
from __future__ import annotations

import dataclasses
import json

import pytest

from shared import demo

TINY = dataclasses.replace(demo.SIZES["small"], data={"num_train": 3, "num_val": 2, "num_classes": 4,
                                                       "min_size": 20, "max_size": 24, "seed": 1})


def test_data_is_generated_once_then_reused(tmp_path):
    data = demo.ensure_data(tmp_path / "d", TINY)
    marker = data / demo.DATA_MARKER
    assert json.loads(marker.read_text()) == TINY.data
    assert len(list((data / "images" / "training").iterdir())) == 3
    stamp = marker.stat().st_mtime_ns
    assert demo.ensure_data(tmp_path / "d", TINY) == data and marker.stat().st_mtime_ns == stamp


def test_incomplete_or_foreign_data_is_refused(tmp_path):
    half = tmp_path / "half"
    (half / "images").mkdir(parents=True)
    with pytest.raises(demo.DemoError, match=r"half holds an incomplete data set \(no demo-data.json"):
        demo.ensure_data(half, TINY)
    demo.ensure_data(tmp_path / "d", TINY)
    other = dataclasses.replace(TINY, data={**TINY.data, "num_classes": 5})
    with pytest.raises(demo.DemoError, match=r"d holds a demo data set with other parameters"):
        demo.ensure_data(tmp_path / "d", other)


def test_data_only_writes_the_set_and_stops(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(demo.SIZES, "small", TINY)
    assert demo.main(["--out", str(tmp_path), "--data-only"]) == 0
    assert (tmp_path / "data" / demo.DATA_MARKER).is_file()
    assert not list(tmp_path.glob("unet-*"))  # nothing trained
    (tmp_path / "data" / demo.DATA_MARKER).unlink()
    assert demo.main(["--out", str(tmp_path), "--data-only"]) == 2
    assert "holds an incomplete data set" in capsys.readouterr().err


def test_ade20k_size_runs_the_study_pipeline(tmp_path):
    size = demo.SIZES["ade20k"]
    cmd = demo.model_command("segformer", size, tmp_path / "data", tmp_path / "run", 640, 50.0,
                             ["seed=3"])
    sets = cmd[cmd.index("--set") + 1:]
    assert cmd[cmd.index("--batches") + 1] == "640"
    for item in ("crop_size=512", "scale=[2048,512]", "global_batch_size=16", "workers_per_slot=8",
                 "num_classes=24", "validation_period=10", "stop_at_target=true",
                 "segformer_variant=b0", "target_miou=50", "seed=3"):
        assert item in sets
    assert [x for x in sets if x.startswith("seed=")] == ["seed=3"]
    again = demo.model_command("unet", size, tmp_path / "data", tmp_path / "run", 640, 60.0,
                               validation_period=20, seed=1)
    assert "validation_period=20" in again and "seed=1" in again
    assert size.data["min_size"] == 512 and size.data["max_size"] == 683  # ADE20K's frames
    with pytest.raises(SystemExit):
        demo.main(["--out", str(tmp_path), "--target-miou", "0"])
