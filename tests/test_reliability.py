"""What a cluster does to a trial every day, and what a user does with an output directory
(issue 22): a batch without a labelled pixel, signals to the whole process group, two
writers on one directory, places that cannot be written, a changed config on resume."""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from shared.data.synthetic import generate

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = ["crop_size=32", "scale=[64,32]", "num_classes=4", "global_batch_size=4", "warmup_batches=2",
        "report_period=2", "unet_base_channels=8", "unet_depth=2", "energy.enabled=false",
        "workers_per_slot=0"]


def command(data, out, *extra, batches=4, resume=None, model="unet"):
    cmd = [sys.executable, str(ROOT / "trials" / model / "train.py"),
           "--config", str(ROOT / "experiment_configs" / model / "single_gpu.yaml"),
           "--data-dir", str(data), "--output-dir", str(out), "--batches", str(batches)]
    if resume:
        cmd += ["--resume", resume]
    return cmd + ["--set", *TINY, *extra]


def run(cmd, **kw):
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240, **kw)


def records(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("syn"), num_train=12, num_val=2, num_classes=4,
                    min_size=32, max_size=48, seed=3)


# ------------------------------------------------------------------ a batch without labels
def test_batches_without_a_labelled_pixel_train_on_and_are_counted(tmp_path):
    """Every annotation all 0 ("other", ignored after reduce_zero_label): the run used to stop
    with "training loss is nan ...: the run diverged"; now each such batch is loss 0 and
    counted in batches_without_labels."""
    data = generate(tmp_path / "syn", num_train=8, num_val=2, num_classes=4, min_size=32,
                    max_size=48, seed=3)
    for png in (data / "annotations").rglob("*.png"):
        Image.fromarray(np.zeros_like(np.asarray(Image.open(png)))).save(png)
    out = tmp_path / "run"
    done = run(command(data, out, "validation_period=4", "checkpoint_period=4", batches=4))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "diverged" not in done.stderr
    training = [r for r in records(out) if r["group"] == "training"]
    assert [r["steps_completed"] for r in training] == [2, 4]
    assert all(r["metrics"]["loss"] == 0.0 and r["metrics"]["batches_without_labels"] == 2
               for r in training)
