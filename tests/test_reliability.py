"""What a cluster does to a trial every day, and what a user does with an output directory
(issue 22): a batch without a labelled pixel, signals to the whole process group, two
writers on one directory, places that cannot be written, a changed config on resume."""
from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest
from PIL import Image

from shared import checkpoints
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


# ------------------------------------------------------------------ SIGTERM to the whole group
def _wait_for_training(proc, metrics: pathlib.Path, timeout=180):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise AssertionError(f"the run ended early: {proc.stderr.read()[-3000:]}")
        if metrics.exists() and '"group": "training"' in metrics.read_text():
            return
        time.sleep(0.2)
    raise AssertionError("no training report within the timeout")


def _torchrun(cmd):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
            "--master_port", str(port), *cmd[1:]]


@pytest.mark.parametrize("launcher", ["python", "torchrun"])
def test_sigterm_to_the_process_group_stops_as_sigterm_to_the_trial_does(launcher, data, tmp_path):
    """What `timeout`, Slurm's scancel and `kill -TERM -PGID` do: SIGTERM to every process of
    the group, loader workers included (torchrun's agent passes it on to each rank's group).
    The workers used to die of it and take the run down ("DataLoader worker ... is killed by
    signal: Terminated", no checkpoint); now each rank finishes, checkpoints and exits 143,
    and the run resumes from the checkpoint."""
    out = tmp_path / "run"
    cmd = command(data, out, "workers_per_slot=2" if launcher == "python" else "workers_per_slot=1",
                  "validation_period=1000", "checkpoint_period=1000", batches=100000)
    if launcher == "torchrun":
        cmd = _torchrun(cmd)
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # a group of its own, as under `timeout`
    try:
        _wait_for_training(proc, out / "metrics.jsonl")
        workers = [c for c in psutil.Process(proc.pid).children(recursive=True)
                   if "train.py" in " ".join(c.cmdline())]
        assert len(workers) >= 2, "expected loader workers (and, under torchrun, the ranks)"
        os.killpg(proc.pid, signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert "killed by signal" not in stderr and "exited unexpectedly" not in stderr, stderr[-3000:]
    # torchrun's agent itself re-raises the signal (its own rc 1 and traceback); every rank
    # stopped as a single process does
    assert proc.returncode == (143 if launcher == "python" else 1), stderr[-3000:]
    if launcher == "python":
        assert "Traceback" not in stderr
    else:
        assert stderr.count("SIGTERM: finishing the current batch, then checkpointing") == 2
    (ckpt,) = checkpoints.complete_checkpoints(out / "checkpoints")
    at = checkpoints.batches_of(ckpt)
    assert f"stopped by SIGTERM: checkpoint {ckpt.name} (batch {at})" in stdout
    time.sleep(0.5)
    assert [w.pid for w in workers if w.is_running() and w.status() != psutil.STATUS_ZOMBIE] == []
    again = command(data, out, batches=at + 2, resume="latest")
    again = run(_torchrun(again) if launcher == "torchrun" else again)
    assert again.returncode == 0, again.stderr[-3000:]
    assert checkpoints.batches_of(checkpoints.complete_checkpoints(out / "checkpoints")[-1]) == at + 2
