"""Checkpoints that are never half there, and clean stops (issue 13, items 5, 7 and 8): an
interrupted write is skipped by --resume latest and refused by name, a full disk says so and
leaves the last checkpoint usable, SIGTERM and SIGINT checkpoint, summarise and say how to
resume, leaving no child process behind."""
from __future__ import annotations

import errno
import json
import os
import pathlib
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest
from determined import pytorch as det_torch

from shared import checkpoints
from shared import determined_compat as compat
from shared.data.synthetic import generate

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from fakes.powercap import FakePowercap  # noqa: E402
from runwait import wait_for_report  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = ["crop_size=32", "scale=[64,32]", "num_classes=4", "global_batch_size=4", "warmup_batches=2",
        "report_period=2", "unet_base_channels=8", "unet_depth=2", "energy.enabled=false"]


# How long a run may take to get somewhere before the test calls it hung. Not a measure of
# speed: with other work on the machine a tiny run takes minutes to start (the suite beside
# another copy of itself), and every wait below also ends as soon as the run ends.
HANG_S = 1200


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("syn"), num_train=16, num_val=4, num_classes=4,
                    min_size=32, max_size=48, seed=3)


def command(data, out, *extra, batches=6, resume=None):
    cmd = [sys.executable, str(ROOT / "trials" / "unet" / "train.py"),
           "--config", str(ROOT / "experiment_configs" / "unet" / "single_gpu.yaml"),
           "--data-dir", str(data), "--output-dir", str(out), "--batches", str(batches)]
    if resume:
        cmd += ["--resume", resume]
    return cmd + ["--set", *TINY, *extra]


def run(cmd):
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=HANG_S)


# ------------------------------------------------------------------ interrupted writes
def test_resume_latest_skips_an_interrupted_checkpoint_and_names_it(data, tmp_path):
    out = tmp_path / "run"
    first = run(command(data, out, "workers_per_slot=0", "validation_period=3", "checkpoint_period=3",
                        batches=3))
    assert first.returncode == 0, first.stderr[-2000:]
    ckpt = out / "checkpoints"
    (good,) = checkpoints.complete_checkpoints(ckpt)
    assert checkpoints.batches_of(good) == 3
    assert not list(ckpt.glob(".*"))  # no partial directory left by a write that completed
    # what kill -9 during a write leaves: a renamed-in-place copy would be impossible now,
    # so fake both kinds an older version could leave: a 0-byte state, and a hidden partial
    broken = ckpt / "ffffffff-broken"
    shutil.copytree(good, broken)
    (broken / "state_dict.pth").write_bytes(b"")
    (broken / "metadata.json").unlink()
    os.utime(broken, (time.time() + 60, time.time() + 60))  # the newest by mtime
    (ckpt / ".eeeeeeee-cut.partial").mkdir()
    again = run(command(data, out, "workers_per_slot=0", "validation_period=3", "checkpoint_period=3",
                        batches=6, resume="latest"))
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"skipping {broken}: an incomplete checkpoint" in again.stderr
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert max(r["steps_completed"] for r in recs if r["group"] == "validation") == 6
    refused = run(command(data, out, "workers_per_slot=0", resume=str(broken)))
    assert refused.returncode == 2
    assert f"--resume {broken}: an incomplete checkpoint (no metadata.json, or an empty " \
           f"state_dict.pth: its write was interrupted)" in refused.stderr


def test_resume_latest_with_only_incomplete_checkpoints_says_so(tmp_path):
    (tmp_path / "abc").mkdir()
    (tmp_path / "abc" / "state_dict.pth").write_bytes(b"")
    with pytest.raises(Exception, match=r"--resume latest: no complete checkpoint under .* "
                                        r"\(1 incomplete ones skipped\)"):
        checkpoints.resolve_resume("latest", tmp_path)


# ------------------------------------------------------------------ a full disk
def test_a_full_disk_during_a_checkpoint_says_so_and_keeps_the_last_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = tmp_path / "checkpoints"
    base.mkdir()
    with det_torch.init(hparams={"global_batch_size": 2},
                        exp_conf={"searcher": {"name": "single", "metric": "miou"}}) as ctx:
        compat.keep_local_run_under(ctx, base, tmp_path / "tb")
        with ctx._core.checkpoint.store_path({"steps_completed": 3}) as (path, first_id):
            assert path.name.startswith(".") and path.name.endswith(".partial")
            (path / "state_dict.pth").write_bytes(b"x" * 1000)
        assert checkpoints.is_complete(base / first_id)

        def full_disk(*args):
            return shutil._ntuple_diskusage(10 * 2**30, 10 * 2**30 - 4096, 4096)
        monkeypatch.setattr(shutil, "disk_usage", full_disk)
        with pytest.raises(checkpoints.CheckpointWriteError) as info:
            with ctx._core.checkpoint.store_path({"steps_completed": 6}) as (path, second_id):
                (path / "state_dict.pth").write_bytes(b"y" * 8192)
                try:  # what torch.save raises when its writer hits ENOSPC
                    raise OSError(errno.ENOSPC, "No space left on device")
                except OSError as err:
                    raise RuntimeError("PytorchStreamWriter failed writing file data/0") from err
    message = str(info.value)
    assert f"checkpoint {base / second_id} could not be written: the disk is full (0.0 MiB free " \
           f"on the file system of {base}; 0.0 MiB were written when it failed)" in message
    assert f"the last complete checkpoint, {first_id} (batch 3), is intact: --resume latest " \
           f"continues from it" in message
    assert sorted(p.name for p in base.iterdir()) == [first_id]  # the partial one is gone
    assert checkpoints.is_complete(base / first_id)


# ------------------------------------------------------------------ signals
def wait_for_training(proc, metrics: pathlib.Path, timeout=HANG_S):
    if not wait_for_report(proc, metrics, "training", timeout=timeout, poll_s=0.2):
        raise AssertionError(f"the run ended early: {proc.stderr.read()[-3000:]}")


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_checkpoints_summarises_and_says_how_to_resume(sig, code, data, tmp_path, rapl):
    out = tmp_path / "run"
    # workers: data-loader processes that must not outlive the run
    cmd = command(data, out, "workers_per_slot=2", "validation_period=1000", "checkpoint_period=1000",
                  "energy.enabled=true", batches=100000)
    env = {**os.environ, **rapl}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        wait_for_training(proc, out / "metrics.jsonl")
        children = psutil.Process(proc.pid).children(recursive=True)
        assert children, "expected data-loader workers"
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=HANG_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, stderr[-3000:]
    name = signal.Signals(sig).name
    assert f"{name}: finishing the current batch, then checkpointing and stopping" in stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    (ckpt,) = checkpoints.complete_checkpoints(out / "checkpoints")
    batches = checkpoints.batches_of(ckpt)
    assert batches >= 2
    line = next(x for x in stdout.splitlines() if "stopped by" in x)
    assert f"stopped by {name}: checkpoint {ckpt.name} (batch {batches}); continue with: " in line
    assert line.endswith(f"--output-dir {out} --resume latest")
    assert (out / "summary.json").is_file()
    time.sleep(0.5)
    assert [c.pid for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE] == []
    if sig != signal.SIGTERM:
        return  # the resume command is the same for both signals: run it once
    # and the command it prints continues the run
    resume = shlex.split(line.split("continue with: ", 1)[1])  # a shell command line
    resume[resume.index("--batches") + 1] = str(batches + 2)
    resume[0] = sys.executable
    again = subprocess.run(resume, cwd=ROOT, env=env, capture_output=True, text=True, timeout=HANG_S)
    assert again.returncode == 0, again.stderr[-3000:]
    done = checkpoints.complete_checkpoints(out / "checkpoints")
    assert checkpoints.batches_of(done[-1]) == batches + 2
    # a run that stopped cleanly: the time until the resume was not its own, nothing counted
    assert "nothing counted between the previous run and this one (ended" in again.stderr


# ------------------------------------------------------------------ kill -9, then resume
@pytest.fixture
def powercap(tmp_path):
    """A powercap tree drawing a constant 40 W while the test runs."""
    tree = FakePowercap(tmp_path / "powercap")
    tree.add_zone("intel-rapl:0", "package-0", max_uj=10**12)
    with tree.constant_power("intel-rapl:0", 40.0):
        yield tree


@pytest.fixture
def rapl(powercap):
    """The environment that points a run's energy hook at ``powercap``."""
    return {"ENERGY_SOURCES": "rapl", "ENERGY_RAPL_ROOT": str(powercap.root)}


def _killed_moment(moment: str, metrics: pathlib.Path) -> bool:
    """Whether the run is where the test kills it: training past batch 7 (past the checkpoint
    at 4 and the validation at 6), or inside the validation at 6 (its training report is in,
    the validation's not yet: a 96-image validation set keeps it there for a while)."""
    if not metrics.exists():
        return False
    recs = []
    for line in metrics.read_text().splitlines()[:-1]:  # the last may still be being written
        recs.append(json.loads(line))
    if moment == "during a batch":
        return any(r["group"] == "training" and r["steps_completed"] >= 7 for r in recs)
    trained_6 = any(r["group"] == "training" and r["steps_completed"] == 6 for r in recs)
    return trained_6 and not any(r["group"] == "validation" and r["steps_completed"] == 6 for r in recs)


@pytest.mark.parametrize("moment", ["during a batch", "during validation"])
def test_a_killed_run_resumes_as_one_run(moment, tmp_path, rapl, powercap):
    data = generate(tmp_path / "syn", num_train=16, num_val=96, num_classes=4, min_size=32,
                    max_size=48, seed=3)
    out = tmp_path / "run"
    metrics = out / "metrics.jsonl"
    settings = ["workers_per_slot=0", "validation_period=3", "checkpoint_period=4", "report_period=1",
                "energy.enabled=true", "target_miou=100"]
    env = {**os.environ, **rapl}
    proc = subprocess.Popen(command(data, out, *settings, batches=100000), cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        t0 = time.monotonic()
        while (time.monotonic() - t0 < HANG_S and proc.poll() is None
               and not _killed_moment(moment, metrics)):
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    ckpt = checkpoints.complete_checkpoints(out / "checkpoints")[-1]
    at = checkpoints.batches_of(ckpt)
    assert at >= 4 and at % 4 == 0
    again = subprocess.run(command(data, out, *settings, batches=at + 7, resume="latest"), cwd=ROOT,
                           env=env, capture_output=True, text=True, timeout=HANG_S)
    assert again.returncode == 0, again.stderr[-3000:]
    recs = [json.loads(x) for x in metrics.read_text().splitlines()]
    seen = [(r["group"], r["steps_completed"]) for r in recs if r["group"] != "run"]
    assert len(seen) == len(set(seen)), "a group's step reported twice"
    validations = [r["steps_completed"] for r in recs if r["group"] == "validation"]
    # every validation at a multiple of validation_period, the phase kept across the resume
    assert validations == [s for s in range(3, at + 8) if s % 3 == 0] + \
        ([at + 7] if (at + 7) % 3 else [])
    training = [r["steps_completed"] for r in recs if r["group"] == "training"]
    assert training == sorted(training) and training[-1] == at + 7
    superseded = [json.loads(x) for x in (out / "metrics.jsonl.superseded").read_text().splitlines()
                  if x.strip()]
    assert superseded and all(r["steps_completed"] > at for r in superseded)
    # energy: one record per validation and report, never going down, and the resumed run
    # starts from what the killed one had measured by its last report, not from the checkpoint
    energy = [r for r in recs if r["group"] == "energy"]
    assert {r["steps_completed"] for r in energy} >= set(validations)
    totals = [r["metrics"]["energy_wh"] for r in energy]
    assert totals == sorted(totals) and totals[-1] > 0
    lost = [r["metrics"]["energy_wh"] for r in superseded if r["group"] == "energy"]
    after = [r["metrics"]["energy_wh"] for r in energy if r["steps_completed"] > at]
    assert lost and after[0] >= max(lost)
    assert "continuing from the interrupted run's last report" in again.stderr
    # and what is counted is right: 40 W over the time it covers (the killed run's measured
    # time, carried over, and the resumed run's)
    last = energy[-1]["metrics"]
    assert last["cpu_wh"] == pytest.approx(40.0 * last["duration_s"] / 3600, rel=0.02)
    # and nothing is missing: the time between the killed run's last report and the restart
    # (the end of its training, the kill, the restart's start-up) is counted from the RAPL
    # counter, so the run's energy is 40 W over the wall time from the first run's meter
    # start (its first report's time less the duration it covers) to the last report
    first = min((r for r in recs + superseded if r["group"] == "energy"), key=lambda r: r["time"])
    wall = energy[-1]["time"] - (first["time"] - first["metrics"]["duration_s"])
    late = report_lateness(energy)
    assert last["duration_s"] == pytest.approx(wall, rel=0.02, abs=late + 0.3)
    # the fake counter may trail real time at a read by its longest step (a held-up thread)
    slack_s = late + powercap.max_step_s
    assert last["cpu_wh"] == pytest.approx(40.0 * wall / 3600, rel=0.02, abs=40.0 * slack_s / 3600)
    assert "between the interrupted run's last report" in again.stderr


def report_lateness(energy) -> float:
    """How late a report's timestamp (written after the ranks' allgather) can trail its meter
    read, as measured in this run: the largest difference between the time two consecutive
    energy reports were written and the meter time between them. On an idle machine a few
    ms; with other work beside it, up to seconds. The wall-time truths below are taken from
    timestamps, so they are uncertain by that much, whatever the code does."""
    return max(abs((b["time"] - a["time"]) - (b["metrics"]["duration_s"] - a["metrics"]["duration_s"]))
               for a, b in zip(energy, energy[1:]))


def test_a_killed_two_process_run_counts_the_gap_once(tmp_path, rapl, powercap):
    """kill -9 of a two-rank local run (torchrun: the workers are in sessions of their own,
    so every process is killed), then a two-rank resume: the ranks agree on the report the
    run continues from (the chief's choice is broadcast), the rank that measures the node's
    RAPL counts the gap, the other has nothing to count and says nothing, and the energy is
    40 W over the whole wall time."""
    data = generate(tmp_path / "syn", num_train=16, num_val=8, num_classes=4, min_size=32,
                    max_size=48, seed=3)
    out = tmp_path / "run"
    metrics = out / "metrics.jsonl"

    def torchrun(batches, *resume):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = command(data, out, "workers_per_slot=0", "validation_period=3", "checkpoint_period=4",
                      "report_period=1", "energy.enabled=true", "target_miou=100",
                      batches=batches, resume=resume[0] if resume else None)
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                "--master_port", str(port), *cmd[1:]]

    env = {**os.environ, **rapl, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(torchrun(100000), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    everyone = []
    try:
        t0 = time.monotonic()
        while (time.monotonic() - t0 < HANG_S and proc.poll() is None
               and not _killed_moment("during a batch", metrics)):
            time.sleep(0.02)
        everyone = psutil.Process(proc.pid).children(recursive=True) + [psutil.Process(proc.pid)]
    finally:
        for p in everyone or [psutil.Process(proc.pid)]:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        proc.wait(timeout=60)
    at = checkpoints.batches_of(checkpoints.complete_checkpoints(out / "checkpoints")[-1])
    again = subprocess.run(torchrun(at + 5, "latest"), cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=HANG_S)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("between the interrupted run's last report") == 1, again.stderr[-3000:]
    assert "counted" in again.stderr and "not counted" not in again.stderr
    recs = [json.loads(x) for x in metrics.read_text().splitlines()]
    superseded = [json.loads(x) for x in (out / "metrics.jsonl.superseded").read_text().splitlines()
                  if x.strip()]
    energy = [r for r in recs if r["group"] == "energy"]
    first = min((r for r in recs + superseded if r["group"] == "energy"), key=lambda r: r["time"])
    wall = energy[-1]["time"] - (first["time"] - first["metrics"]["duration_s"])
    # Allowed for, as measured in this run: the timestamps' uncertainty, the fake counter's
    # longest step, and the time the first report's duration covers without RAPL energy (the
    # trial's duration is its ranks' longest; the two meters start apart, by ~1 s on a busy
    # machine, and RAPL is read by rank 0 over its own window). The kill and the resume, the
    # subject here, may add nothing to that beyond 2% of the wall time.
    start = first["metrics"]
    uncovered_s = max(0.0, start["duration_s"] - start["cpu_wh"] * 3600 / 40.0)
    slack_s = report_lateness(energy) + powercap.max_step_s + uncovered_s
    assert energy[-1]["metrics"]["cpu_wh"] == pytest.approx(40.0 * wall / 3600, rel=0.02,
                                                            abs=40.0 * slack_s / 3600)
