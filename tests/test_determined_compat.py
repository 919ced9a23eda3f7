"""shared.determined_compat against the real Determined: each private access it makes does
what the code relies on, in 0.38.1's local mode. A future Determined that moves one of them
fails here, by name, rather than somewhere in a training run."""
from __future__ import annotations

import pathlib

import pytest
import torch

import determined
from determined import pytorch as det_torch

from shared import determined_compat as compat
from shared.data.transforms import PhotometricDistortion
from shared.engine import Engine, LocalRuntime, SegmentationTask
from shared.hparams import COMMON, ENGINE_KEYS
from shared.metrics import DeviceMean

HP = {"global_batch_size": 2}
CONF = {"searcher": {"name": "single", "metric": "miou"}, "hyperparameters": HP}


@pytest.fixture
def ctx(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # local mode may write next to the working directory
    with det_torch.init(hparams=HP, exp_conf=CONF) as context:
        yield context


def test_the_installed_determined_is_the_pinned_release():
    # Not a formality: every other test here checks an access written against this release.
    assert determined.__version__ == compat.PINNED_VERSION


def test_custom_groups_and_builtin_reports_pass_the_tap(ctx):
    seen = []
    compat.tap_reports(ctx, lambda group, step, metrics: seen.append((group, step, dict(metrics))))
    compat.report_group(ctx, "energy", 3, {"energy_wh": 1.5})
    ctx._core.train.report_training_metrics(steps_completed=4, metrics={"loss": 0.25})
    ctx._core.train.report_validation_metrics(steps_completed=4, metrics={"miou": 10.0})
    assert seen == [("energy", 3, {"energy_wh": 1.5}), ("training", 4, {"loss": 0.25}),
                    ("validation", 4, {"miou": 10.0})]


def test_a_local_run_keeps_checkpoints_and_tensorboard_under_its_directory(ctx, tmp_path):
    ckpt, tb = tmp_path / "run" / "checkpoints", tmp_path / "run" / "tensorboard"
    ckpt.mkdir(parents=True)
    compat.keep_local_run_under(ctx, ckpt, tb)
    assert pathlib.Path(ctx._core.train.get_tensorboard_path()) == tb
    with ctx._core.checkpoint.store_path({"steps_completed": 1}) as (path, storage_id):
        (pathlib.Path(path) / "probe").write_text("x")
    assert (ckpt / storage_id / "probe").read_text() == "x"


def test_our_plain_reducers_are_accepted_and_batches_are_not_moved(ctx):
    runtime = compat.DeterminedRuntime(ctx)
    reducer = DeviceMean()
    assert runtime.wrap_reducer(reducer, name="loss", for_validation=False) is not None
    assert isinstance(reducer, det_torch.MetricReducer)  # registered, not inherited
    # disable_auto_to_device: Determined hands train_batch the batch as the loader made it
    assert ctx.experimental._auto_to_device is False


def test_engine_on_determined_equals_engine_on_the_local_runtime(ctx):
    hp = {k: p.default for k, p in COMMON.items() if k in ENGINE_KEYS}
    hp.update({"precision": "fp32", "channels_last": False, "lr": 1e-3, "base_batch_size": 2,
               "warmup_batches": 0, "grad_clip_norm": 1.0})

    def net():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1))

    cpu = torch.device("cpu")
    on_det = Engine(net(), hp, compat.DeterminedRuntime(ctx), SegmentationTask(4), device=cpu,
                    max_batches=10)
    local = LocalRuntime(cpu, 2)
    plain = Engine(net(), hp, local, SegmentationTask(4), device=cpu, max_batches=10)
    g = torch.Generator().manual_seed(1)
    torch.manual_seed(1)  # the colour augmentation's draws, as a loader worker makes them
    aug = torch.tensor([[*PhotometricDistortion().draw(), 8, 8] for _ in range(2)])
    batch = (torch.randint(0, 256, (2, 3, 8, 8), generator=g, dtype=torch.uint8),
             torch.randint(0, 4, (2, 8, 8), generator=g, dtype=torch.uint8),
             aug.float(), torch.zeros(2, dtype=torch.int64))
    for i in range(2):
        ctx._current_batch_idx = i  # as Determined's Trainer sets it before train_batch
        on_det.train_batch(batch)
        for s in ctx.lr_schedulers:  # as Determined's Trainer steps them after each batch
            s.step()
        plain.train_batch(batch)
        local.end_batch()
        assert torch.equal(on_det.last_loss, plain.last_loss)
    for a, b in zip(on_det.model.parameters(), plain.model.parameters()):
        assert torch.equal(a, b)
