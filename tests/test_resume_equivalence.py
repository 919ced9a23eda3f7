"""A restored or preempted trial is the same trial (issue 22): metric for metric equal to the
uninterrupted run, for every family.

The shape is Determined 0.38.1's own checkpoint-and-restore test (``harness/tests/experiment``:
``checkpoint_and_check_metrics`` and ``utils.assert_equivalent_metrics``): trial A trains some
batches and checkpoints, a new trial restores that checkpoint and trains on, trial B trains
the whole length uninterrupted, and every training and validation report of A equals B's at
the same batch. Here it runs through ``det.pytorch.Trainer`` (what ``train.py`` runs), twice
per family: a restore after a checkpoint at batch 2, and a preemption at batch 3 (the trial
asked to stop: it checkpoints what it trained and returns from ``fit``, as on a cluster). The
batches each run trains on are compared too: a restore that trained on other images (the
defect: ``DataLoader(shuffle=True)`` reseeded from the restored global RNG) fails there first.
"""
from __future__ import annotations

import hashlib
import pathlib
from typing import Any, Dict, List, Tuple

import pytest
import torch
from determined import pytorch as det_torch

from shared import determined_compat as compat
from shared import launch, recipes

ROOT = pathlib.Path(__file__).resolve().parents[1]
Report = Tuple[str, int, Dict[str, Any]]


def _equivalent(a: Dict[str, Any], b: Dict[str, Any]) -> None:
    """Determined's ``assert_equivalent_metrics``: the same keys, floats approximately equal,
    everything else equal."""
    assert set(a) == set(b)
    for key in a:
        if isinstance(a[key], float):
            assert a[key] == pytest.approx(b[key], nan_ok=True), key
        else:
            assert a[key] == b[key], key


class Run:
    """One ``Trainer.fit`` of a trial in local mode, its checkpoints kept under ``ckpt``."""

    def __init__(self, model: str, data: pathlib.Path, sets: List[str], ckpt: pathlib.Path) -> None:
        recipe = recipes.get(model)
        self.trial_cls = recipe.trial_class()
        args = launch.parse_args(["--config", str(recipe.configs_dir / "single_gpu.yaml"),
                                  "--data-dir", str(data), "--set", *sets], model)
        self.hp, self.conf, _ = launch._local_hparams(self.trial_cls, args)
        self.ckpt = ckpt
        ckpt.mkdir(parents=True, exist_ok=True)

    def fit(self, batches: int, latest: str | None = None, resumed_at: int = 0,
            stop_after: int | None = None) -> Tuple[List[Report], List[str]]:
        reports: List[Report] = []
        seen: List[str] = []
        hp = self.hp
        with det_torch.init(hparams=hp, exp_conf=self.conf) as ctx:
            compat.keep_local_run_under(ctx, self.ckpt, self.ckpt.parent / "tb")
            compat.tap_reports(ctx, lambda g, s, m: reports.append((g, s, dict(m))))
            trial = self.trial_cls(ctx)
            train_batch = trial.train_batch

            def recording(batch: Any, epoch_idx: int, batch_idx: int) -> Dict[str, Any]:
                # what each batch holds (images), before it trains; preempted after stop_after
                if stop_after is not None and trial.batches_trained >= stop_after:
                    trial.stop_signal = "SIGTERM"
                else:
                    seen.append(hashlib.sha1(batch[0].numpy().tobytes()).hexdigest()[:12])
                return train_batch(batch, epoch_idx, batch_idx)

            trial.train_batch = recording
            with compat.local_fit_resumes_at(resumed_at):
                det_torch.Trainer(trial, ctx).fit(
                    max_length=det_torch.Batch(batches),
                    validation_period=det_torch.Batch(hp["validation_period"]),
                    checkpoint_period=det_torch.Batch(hp["checkpoint_period"]),
                    reporting_period=det_torch.Batch(1), checkpoint_policy="none",
                    latest_checkpoint=latest)
        return [r for r in reports if r[0] in ("training", "validation")], seen

    def checkpoint_at(self, batches: int) -> str:
        from shared import checkpoints
        found = [p for p in checkpoints.complete_checkpoints(self.ckpt)
                 if checkpoints.batches_of(p) == batches]
        assert found, f"no checkpoint at batch {batches} in {self.ckpt}"
        return found[-1].name


def _compare(interrupted: List[Report], whole: List[Report]) -> None:
    at = {(g, s): m for g, s, m in whole}
    assert interrupted, "nothing reported"
    for group, step, metrics in interrupted:
        _equivalent(metrics, at[(group, step)])
    assert sorted((g, s) for g, s, _ in interrupted) == sorted(at)


def _families(tmp_path_factory):
    from shared.classification.synthetic import generate as classes
    from shared.data.synthetic import generate as scenes
    from shared.data.synthetic_rare import generate as rare
    seg = scenes(tmp_path_factory.mktemp("seg"), num_train=12, num_val=2, num_classes=4,
                 min_size=32, max_size=48, seed=3)
    seg_sets = ["crop_size=32", "scale=[64,32]", "num_classes=4", "global_batch_size=2",
                "base_batch_size=2", "warmup_batches=1", "energy.enabled=false",
                "validation_period=2", "checkpoint_period=2", "target_value=100"]
    return {
        "unet": (seg, seg_sets + ["unet_base_channels=4", "unet_depth=2", "workers_per_slot=0"]),
        # loader workers: each sample's augmentation follows its own seed, not the worker's
        "unet-workers": (seg, seg_sets + ["unet_base_channels=4", "unet_depth=2", "workers_per_slot=2"]),
        "segformer": (seg, seg_sets + ["workers_per_slot=0", "drop_path_rate=0.1"]),
        "image_classification": (
            classes(tmp_path_factory.mktemp("cls") / "d", num_classes=3, per_class=6, val_per_class=2,
                    size=32, seed=1),
            ["arch=resnet18", "image_size=32", "global_batch_size=4", "base_batch_size=4",
             "workers_per_slot=0", "warmup_batches=1", "energy.enabled=false", "validation_period=2",
             "checkpoint_period=2", "target_value=100", "stop_at_target=false"]),
        # mining every 2 batches: the hard-negative pool is part of what a restore must bring back
        "rare_objects": (
            rare(tmp_path_factory.mktemp("rare") / "d", num_train=3, num_val=1, size=64, seed=1),
            ["tile_size=32", "global_batch_size=4", "base_batch_size=4", "unet_base_channels=4",
             "unet_depth=2", "workers_per_slot=0", "warmup_batches=1", "energy.enabled=false",
             "validation_period=2", "checkpoint_period=2", "mine_period=2", "mine_tiles=8",
             "hard_negative_fraction=0.5", "val_batch_size_per_slot=4", "early_stop_patience=null"]),
    }


@pytest.fixture(scope="module")
def families(tmp_path_factory):
    return _families(tmp_path_factory)


@pytest.mark.parametrize("family", ["unet", "unet-workers", "segformer", "image_classification",
                                    "rare_objects"])
def test_restore_and_preemption_equal_the_uninterrupted_run(family, families, tmp_path, monkeypatch):
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")  # local mode copies the working directory into checkpoints
    data, sets = families[family]
    model = family.split("-")[0]
    whole, whole_seen = Run(model, data, sets, tmp_path / "b").fit(4)
    assert [s for g, s, _ in whole if g == "validation"] == [2, 4]

    # restore: 2 batches and a checkpoint, then a new trial from it to 4
    run = Run(model, data, sets, tmp_path / "a")
    first, first_seen = run.fit(2)
    rest, rest_seen = run.fit(4, latest=run.checkpoint_at(2), resumed_at=2)
    assert first_seen + rest_seen == whole_seen, "the restored run trained on other samples"
    _compare(first + rest, whole)

    # preemption: stopped after batch 3 (a checkpoint of 3 batches), resumed to 4
    pre = Run(model, data, sets, tmp_path / "p")
    head, head_seen = pre.fit(4, stop_after=3)
    assert len(head_seen) == 3
    tail, tail_seen = pre.fit(4, latest=pre.checkpoint_at(3), resumed_at=3)
    assert head_seen + tail_seen == whole_seen, "the resumed run trained on other samples"
    _compare(head + tail, whole)


def test_the_sample_order_is_a_function_of_the_seed(families):
    """Two epochs of the sampler, twice: the same pairs; another seed: another order; and the
    augmentation of a sample does not depend on what the process drew before."""
    from shared.data import build_dataset
    from shared.data.sampling import SeededSampler, sample_rng
    a, b = SeededSampler(12, seed=5), SeededSampler(12, seed=5)
    first = [list(a), list(a)]
    assert first == [list(b), list(b)] and first[0] != first[1]
    assert sorted(i for i, _ in first[0]) == list(range(12))
    assert [i for i, _ in SeededSampler(12, seed=6)] != [i for i, _ in first[0]]
    data, sets = families["unet"]
    hp = Run("unet", data, sets, pathlib.Path("/tmp/unused")).hp
    from shared import hparams as hpmod
    ds = build_dataset(hpmod.resolve(hp, recipes.get("unet").trial_class().MODEL_PARAMS), "training")
    index, seed = first[0][0]
    x = ds[(index, seed)]
    torch.rand(100)  # whatever the process's RNG did meanwhile
    state = torch.get_rng_state()
    y = ds[(index, seed)]
    assert all(torch.equal(p, q) for p, q in zip(x[:2], y[:2]))
    assert torch.equal(torch.get_rng_state(), state)  # the trial's own RNG is left alone
    with sample_rng(None):
        pass
