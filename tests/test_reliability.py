"""What a cluster does to a trial every day, and what a user does with an output directory
(issue 22): a batch without a labelled pixel, signals to the whole process group, two
writers on one directory, places that cannot be written, a changed config on resume."""
from __future__ import annotations

import io
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

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from test_checkpoints import wait_for_training  # noqa: E402

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
        wait_for_training(proc, out / "metrics.jsonl", timeout=180)
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
        assert stderr.count("SIGTERM: finishing the current batch, then checkpointing") == 2, stderr
    (ckpt,) = checkpoints.complete_checkpoints(out / "checkpoints")
    at = checkpoints.batches_of(ckpt)
    assert f"stopped by SIGTERM: checkpoint {ckpt.name} (batch {at})" in stdout
    time.sleep(0.5)
    assert [w.pid for w in workers if w.is_running() and w.status() != psutil.STATUS_ZOMBIE] == []
    again = command(data, out, batches=at + 2, resume="latest")
    again = run(_torchrun(again) if launcher == "torchrun" else again)
    assert again.returncode == 0, again.stderr[-3000:]
    assert checkpoints.batches_of(checkpoints.complete_checkpoints(out / "checkpoints")[-1]) == at + 2


def test_a_signal_to_one_rank_stops_every_rank_at_the_same_batch(data, tmp_path):
    """A signal reaches the ranks at different moments (the extreme: one rank only). Stopping
    each rank on its own left the others waiting in the next collective until torchrun killed
    them, with no checkpoint; now the ranks agree at the next report and all checkpoint."""
    out = tmp_path / "run"
    cmd = _torchrun(command(data, out, "workers_per_slot=0", "validation_period=1000",
                            "checkpoint_period=1000", batches=100000))
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        wait_for_training(proc, out / "metrics.jsonl", timeout=180)
        ranks = [c for c in psutil.Process(proc.pid).children() if "train.py" in " ".join(c.cmdline())]
        assert len(ranks) == 2
        started = time.monotonic()
        max(ranks, key=lambda r: r.pid).send_signal(signal.SIGTERM)  # one rank, not the other
        stdout, stderr = proc.communicate(timeout=120)
        took = time.monotonic() - started
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert "forcefully exiting" not in stderr, stderr[-3000:]  # torchrun's SIGKILL after 30 s
    assert stderr.count("SIGTERM: finishing the current batch, then checkpointing") == 1, stderr[-3000:]
    (ckpt,) = checkpoints.complete_checkpoints(out / "checkpoints")
    assert checkpoints.batches_of(ckpt) > 0
    assert took < 30, f"{took:.0f} s to stop"


# ------------------------------------------------------------------ one writer per directory
def test_a_second_run_on_the_same_directory_is_refused_naming_the_first(data, tmp_path):
    """Two `--resume latest` at once used to both finish, writing the same batches twice into
    metrics.jsonl; the second is now refused, naming the holder's pid and host."""
    out = tmp_path / "run"
    first = run(command(data, out, "validation_period=2", "checkpoint_period=2", batches=2))
    assert first.returncode == 0, first.stderr[-3000:]
    proc = subprocess.Popen(command(data, out, "validation_period=1000", "checkpoint_period=1000",
                                    batches=100000, resume="latest"),
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        t0 = time.monotonic()
        while '"steps_completed": 4' not in (out / "metrics.jsonl").read_text():
            assert proc.poll() is None and time.monotonic() - t0 < 180, proc.stderr.read()[-3000:]
            time.sleep(0.2)
        second = run(command(data, out, batches=6, resume="latest"))
        assert second.returncode == 2
        assert second.stderr.strip().splitlines() == [
            f"error: {out} is being written by another run (pid {proc.pid} on host "
            f"{socket.gethostname()}, since {(out / '.lock').read_text().split('since ')[1].strip()}); "
            f"wait for it to end, or choose another --output-dir"]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=120)
    assert proc.returncode == 143
    from shared.outdir import RunLock
    with RunLock(out):  # released when the run ended
        pass


# ------------------------------------------------------------------ places that cannot be written
@pytest.fixture
def mount(tmp_path):
    """A tmpfs of a given size and mode at a fresh directory (root only: skipped elsewhere)."""
    mounted = []

    def make(options: str) -> pathlib.Path:
        point = tmp_path / f"mnt{len(mounted)}"
        point.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()})")
        mounted.append(point)
        return point
    yield make
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


def _one_error_line(done):
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    errors = [x for x in done.stderr.splitlines() if x.startswith("error: ")]
    assert len(errors) == 1, done.stderr[-3000:]
    return errors[0]


def test_an_output_directory_that_cannot_be_written_is_one_line(data, tmp_path, mount):
    (tmp_path / "afile").write_text("x")
    line = _one_error_line(run(command(data, tmp_path / "afile" / "run")))
    assert line == (f"error: cannot use {tmp_path / 'afile' / 'run'} as the output directory: "
                    f"{tmp_path / 'afile'} is a file, not a directory; nothing was written "
                    f"(choose another --output-dir)")
    readonly = mount("ro,size=1m")
    line = _one_error_line(run(command(data, readonly / "run")))
    assert line == (f"error: cannot write to {readonly / 'run'}: the file system is read-only; "
                    f"nothing was written (choose another --output-dir)")


def test_a_full_disk_stops_with_one_line_and_the_run_resumes(data, mount):
    """A 600 KiB file system: the run fills it (checkpoints, metrics) and stops with one line
    naming the path that failed and the last complete checkpoint; given room, it resumes."""
    disk = mount("size=600k")
    out = disk / "run"
    line = _one_error_line(run(command(data, out, "validation_period=2", "checkpoint_period=2",
                                       batches=200)))
    assert "the disk is full" in line and f"{out}/" in line, line
    assert "--resume latest continues from it" in line, line
    subprocess.run(["mount", "-o", "remount,size=20m", str(disk)], check=True)
    at = checkpoints.batches_of(checkpoints.complete_checkpoints(out / "checkpoints")[-1])
    again = run(command(data, out, "validation_period=2", "checkpoint_period=2", batches=at + 2,
                        resume="latest"))
    assert again.returncode == 0, again.stderr[-3000:]


def test_a_full_disk_while_writing_metrics_names_the_file(data, tmp_path, monkeypatch):
    """A write that fails on a full disk raises an OSError without a path ("[Errno 28] No
    space left on device"); the run names metrics.jsonl and what is safe, exit status 2."""
    import builtins
    import errno as errno_

    from shared import launch
    out = tmp_path / "run"
    real_open = pathlib.Path.open
    writes = {"n": 0}

    class Full:
        def __init__(self, f):
            self.f = f

        def write(self, text):
            writes["n"] += 1
            if '"steps_completed": 4' in text:  # the first report after the checkpoint at 2
                raise OSError(errno_.ENOSPC, "No space left on device")
            return self.f.write(text)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self.f.__exit__(*exc)

    def opening(self, *args, **kwargs):
        f = real_open(self, *args, **kwargs)
        return Full(f) if self.name == "metrics.jsonl" and "a" in (args[:1] or ("r",))[0] else f

    monkeypatch.setattr(pathlib.Path, "open", opening)
    monkeypatch.chdir(tmp_path)
    argv = command(data, out, "validation_period=2", "checkpoint_period=2", batches=8)[2:]
    printed = []
    monkeypatch.setattr(builtins, "print", lambda *a, **k: printed.append(" ".join(map(str, a))))
    from trials_unet_train import UNetTrial  # noqa: F401  (see the fixture below)
    rc = launch.main(UNetTrial, argv)
    assert rc == 2, printed
    errors = [p for p in printed if p.startswith("error: ")]
    assert len(errors) == 1, printed
    assert errors == [f"error: cannot write {out / 'metrics.jsonl'}: the disk is full ("
                      f"{errors[0].split('the disk is full (')[1].split(')')[0]}); the last "
                      f"complete checkpoint, {checkpoints.complete_checkpoints(out / 'checkpoints')[-1].name}"
                      f" (batch 2), is intact: --resume latest continues from it"]


@pytest.fixture(autouse=True)
def _unet_trial_module():
    """The U-Net trial class importable in-process (trials/ is not a package)."""
    import importlib.util
    if "trials_unet_train" not in sys.modules:
        spec = importlib.util.spec_from_file_location("trials_unet_train",
                                                      ROOT / "trials" / "unet" / "train.py")
        sys.path.insert(0, str(ROOT / "trials" / "unet"))
        module = importlib.util.module_from_spec(spec)
        sys.modules["trials_unet_train"] = module
        spec.loader.exec_module(module)
    yield


# ------------------------------------------------------------------ checkpoints damaged since
def test_a_truncated_newest_checkpoint_falls_back_to_the_previous_one(data, tmp_path):
    out = tmp_path / "run"
    first = run(command(data, out, "validation_period=2", "checkpoint_period=2", batches=4))
    assert first.returncode == 0, first.stderr[-3000:]
    older, newest = checkpoints.complete_checkpoints(out / "checkpoints")
    assert checkpoints.batches_of(newest) == 4
    state = newest / "state_dict.pth"
    size = state.stat().st_size
    with state.open("r+b") as f:
        f.truncate(size // 2)
    refused = run(command(data, out, batches=6, resume=str(newest)))
    assert _one_error_line(refused) == (
        f"error: --resume {newest}: damaged since it was written: {state} is {size // 2} bytes, "
        f"{size} when written (truncated); use an earlier checkpoint, or --resume latest (which "
        f"skips damaged ones)")
    again = run(command(data, out, "validation_period=2", "checkpoint_period=2", batches=6,
                        resume="latest"))
    assert again.returncode == 0, again.stderr[-3000:]
    assert (f"--resume latest: skipping {newest} (batch 4): damaged since it was written: {state} "
            f"is {size // 2} bytes, {size} when written (truncated); trying the one before") in again.stderr
    validations = [r["steps_completed"] for r in records(out) if r["group"] == "validation"]
    assert validations == [2, 4, 6]  # batch 4 trained again, reported once
    assert checkpoints.batches_of(checkpoints.complete_checkpoints(out / "checkpoints")[-1]) == 6


def test_a_crafted_trial_state_cannot_run_code(tmp_path):
    """`--resume DIR` reads Determined's trial_state.pkl: without globals, so a file that
    names a function (here os.system) is refused instead of run."""
    import pickle

    class Crafted:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'ran'}",))

    path = tmp_path / "trial_state.pkl"
    path.write_bytes(pickle.dumps({"batches_trained": Crafted()}))
    with path.open("rb") as f, pytest.raises(pickle.UnpicklingError, match="refused: the file names"):
        checkpoints.load_data_pickle(f)
    assert not (tmp_path / "ran").exists()
    with path.open("rb") as f:
        pickle.dumps(checkpoints.load_data_pickle(io.BytesIO(pickle.dumps({"batches_trained": 3}))))


# ------------------------------------------------------------------ a changed config on resume
def test_a_resume_with_changed_hyperparameters(data, tmp_path):
    out = tmp_path / "run"
    first = run(command(data, out, "validation_period=2", "checkpoint_period=2", batches=2))
    assert first.returncode == 0, first.stderr[-3000:]
    (ckpt,) = checkpoints.complete_checkpoints(out / "checkpoints")
    refused = run(command(data, out, "optimizer=sgd", "unet_base_channels=16", "global_batch_size=2",
                          batches=4, resume="latest"))
    assert _one_error_line(refused) == (
        f"error: --resume {ckpt}: a resume continues the same run, but these hyperparameters differ "
        f"from the checkpoint's: global_batch_size 4 -> 2 (the data); optimizer 'adamw' -> 'sgd' "
        f"(the optimiser); unet_base_channels 8 -> 16 (the model). Keep the checkpoint's values, or "
        f"start a new run from its weights: --set pretrained_path={ckpt / 'state_dict.pth'} with "
        f"another --output-dir (and without --resume)")
    # the way out it names works
    fresh = run(command(data, tmp_path / "fresh", "optimizer=sgd", f"pretrained_path={ckpt / 'state_dict.pth'}",
                        batches=2))
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    # schedule changes are stated, and in effect
    again = run(command(data, out, "lr=4e-3", "validation_period=2", "checkpoint_period=2", batches=4,
                        resume="latest"))
    assert again.returncode == 0, again.stderr[-3000:]
    assert (f"--resume: hyperparameters changed since checkpoint {ckpt.name}, in effect from its "
            f"batch 2 on: lr 0.001 -> 0.004; max_batches 2 -> 4") in again.stderr
    from shared.schedule import WarmupPoly, scaled_lr
    peak = scaled_lr(4e-3, 16, 4, "sqrt")
    schedule = WarmupPoly(2, 4, 1.0, 1e-6, 0.0)
    (report,) = [r for r in records(out) if r["group"] == "training" and r["steps_completed"] == 4]
    assert report["metrics"]["lr"] == pytest.approx((peak * schedule(2) + peak * schedule(3)) / 2)
    # another model's checkpoint
    other = run(command(data, out, batches=4, resume="latest", model="segformer")[:-len(TINY) - 1]
                + ["--set", "crop_size=32", "scale=[64,32]", "num_classes=4", "energy.enabled=false"])
    newest = checkpoints.complete_checkpoints(out / "checkpoints")[-1]
    assert _one_error_line(other) == (f"error: --resume {newest}: a checkpoint of unet, not of "
                                      f"segformer; resume it with trials/unet/train.py")


# ------------------------------------------------------------------ bad samples, each once
def test_skipped_samples_counts_each_bad_file_once_per_run(tmp_path):
    """2 corrupt images of 12, 24 batches (8 epochs) read by 2 loader workers, then a resume:
    skipped_samples is 2 at every validation (it was 3, 4, 6, 7, 8: once per epoch and per
    worker that met the file), and each file is named once in the log."""
    data = generate(tmp_path / "syn", num_train=12, num_val=2, num_classes=4, min_size=32,
                    max_size=48, seed=3)
    bad = sorted((data / "images" / "training").glob("*.jpg"))[3:5]
    for path in bad:
        path.write_bytes(b"not a jpeg")
    out = tmp_path / "run"
    settings = ["skip_bad_samples=true", "workers_per_slot=2", "validation_period=8",
                "checkpoint_period=8"]
    first = run(command(data, out, *settings, batches=24))
    assert first.returncode == 0, first.stderr[-3000:]
    again = run(command(data, out, *settings, batches=32, resume="latest"))
    assert again.returncode == 0, again.stderr[-3000:]
    counts = [r["metrics"].get("skipped_samples") for r in records(out) if r["group"] == "validation"]
    assert counts == [2, 2, 2, 2]
    for path in bad:
        assert sum(str(path) in line for line in first.stderr.splitlines()) == 1, first.stderr[-3000:]
        assert str(path) not in again.stderr  # known from the checkpoint: not named again


def test_repeated_skip_warnings_are_summarised(tmp_path, caplog):
    from shared.data.ade20k import SegmentationDataset
    from shared.data.skips import WARN_LIMIT
    data = generate(tmp_path / "syn", num_train=40, num_val=1, num_classes=4, min_size=32,
                    max_size=40, seed=3)
    for path in sorted((data / "images" / "training").glob("*.jpg"))[:30]:
        path.write_bytes(b"")
    ds = SegmentationDataset(data, "training", None, num_classes=4, skip_bad_samples=True)
    with caplog.at_level("WARNING"):
        for _ in range(2):  # two epochs
            for i in range(len(ds)):
                ds[i]
    named = [r for r in caplog.records if "skipping bad sample" in r.getMessage()]
    assert len(named) == WARN_LIMIT and ds.bad.count() == 30
    assert sum("further ones are skipped and counted" in r.getMessage() for r in caplog.records) == 1
