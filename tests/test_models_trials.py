"""The DeepLab v3+ and Segmenter trials trained and validated from the command line, on a
tiny synthetic set (CPU)."""
from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys

import pytest
import torch

from model_helpers import ROOT, deeplab, n_params, segmenter
from shared import runlog
from shared.data.synthetic import generate


TINY = ["crop_size=32", "scale=[64,32]", "num_classes=4", "global_batch_size=4", "workers_per_slot=0",
        "warmup_batches=2", "report_period=2", "energy.enabled=false", "validation_period=4",
        "checkpoint_period=100", "stop_at_target=false"]
MODEL_TINY = {"deeplabv3plus": [], "segmenter": ["drop_path_rate=0.0", "segmenter_decoder_layers=1"]}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("syn"), num_train=16, num_val=4, num_classes=4,
                    min_size=32, max_size=48, seed=3)


@pytest.mark.parametrize("model", ["deeplabv3plus", "segmenter"])
def test_trial_trains_and_validates_from_the_command_line(model, data, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "trials" / model / "train.py"),
           "--config", str(ROOT / "experiment_configs" / model / "single_gpu.yaml"),
           "--data-dir", str(data), "--output-dir", str(out), "--batches", "4",
           "--set", *TINY, *MODEL_TINY[model]]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENERGY_")}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    by = {}
    for r in runlog.read(out / "metrics.jsonl"):
        by.setdefault(r["group"], []).append(r)
    assert [r["steps_completed"] for r in by["validation"]] == [4]
    v = by["validation"][0]["metrics"]
    assert 0 <= v["miou"] <= 100 and math.isfinite(v["validation_loss"])
    assert [r["steps_completed"] for r in by["training"]] == [2, 4]
    assert all(math.isfinite(r["metrics"]["loss"]) for r in by["training"])
    run = by["run"][0]["metrics"]
    assert run["model"] == model
    with torch.device("meta"):
        expected = (segmenter.Segmenter(4, drop_path_rate=0.0, decoder_layers=1, img_size=32)
                    if model == "segmenter" else deeplab.DeepLabV3Plus(4))
    assert run["params"] == n_params(expected)
    shutil.rmtree(out / "checkpoints")  # ~300 MB for DeepLab (weights + AdamW state)
