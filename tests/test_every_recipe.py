"""Every recipe the registry finds (``shared.recipes.discover``) trains one batch and validates
once on a tiny generated set of its family, in-process through the same ``main()`` as its
``train.py`` (Determined's local mode): the forward and backward pass ran (its parameters
moved, the loss is finite) and every metric it reported is one its trial documents, with each
validation metric of its family and its config's searcher metric present. Adding a model
edits no test; a model whose forward pass raises fails here."""
from __future__ import annotations

import math
import os
import pathlib
from typing import Any, Callable, Dict, Sequence, Tuple

import pytest
import torch

from shared import launch, recipes, runlog
from shared.configfile import load_experiment_config

RECIPES = recipes.discover()
#: what every run sets: one batch, reported and validated at once, no energy, no checkpoint
SHORT = ["workers_per_slot=0", "warmup_batches=0", "report_period=1", "validation_period=1",
         "checkpoint_period=100", "energy.enabled=false", "stop_at_target=false"]
#: what Determined adds to every training and validation report
DETERMINED_ADDS = {"batches", "epochs"}


def _segmentation(out: pathlib.Path) -> Tuple[pathlib.Path, Sequence[str]]:
    from shared.data.synthetic import generate
    data = generate(out, num_train=2, num_val=2, num_classes=4, min_size=32, max_size=48, seed=3)
    return data, ["crop_size=32", "scale=[64,32]", "num_classes=4", "global_batch_size=2"]


def _classification(out: pathlib.Path) -> Tuple[pathlib.Path, Sequence[str]]:
    from shared.classification.synthetic import generate
    data = generate(out, num_classes=3, per_class=2, val_per_class=1, size=32)
    return data, ["image_size=32", "num_classes=3", "global_batch_size=2", "base_batch_size=2"]


def _binary_segmentation(out: pathlib.Path) -> Tuple[pathlib.Path, Sequence[str]]:
    from shared.data.synthetic_rare import generate
    data = generate(out, num_train=2, num_val=1, size=64)
    return data, ["tile_size=32", "global_batch_size=2", "base_batch_size=2",
                  "val_batch_size_per_slot=4"]


#: per trial family (``shared.recipes.FAMILIES``): a tiny data set and the settings that fit it
FAMILY_DATA: Dict[str, Callable[[pathlib.Path], Tuple[pathlib.Path, Sequence[str]]]] = {
    "segmentation": _segmentation, "classification": _classification,
    "binary_segmentation": _binary_segmentation,
}


def test_every_family_has_tiny_data():
    assert sorted(FAMILY_DATA) == sorted(recipes.FAMILIES)


def _probe(trial_cls: type, seen: Dict[str, Any]) -> type:
    """``trial_cls`` that records, at its one training batch, its model's size and how many of
    its trainable parameters the step changed."""

    class Probe(trial_cls):  # type: ignore[misc, valid-type]
        def train_batch(self, batch: Any, epoch_idx: int, batch_idx: int) -> Dict[str, Any]:
            params = [p for p in self.model.parameters() if p.requires_grad]
            before = [p.detach().clone() for p in params]
            out = super().train_batch(batch, epoch_idx, batch_idx)
            seen["trainable"] = len(params)
            seen["parameters"] = sum(p.numel() for p in self.model.parameters())
            seen["changed"] = sum(not torch.equal(b, p.detach()) for b, p in zip(before, params))
            return out

    # main() enters the directory of the trial's module, as a cluster runs from the context
    Probe.__module__, Probe.__name__, Probe.__qualname__ = (trial_cls.__module__, trial_cls.__name__,
                                                           trial_cls.__qualname__)
    return Probe


@pytest.mark.parametrize("name", list(RECIPES))
def test_recipe_trains_one_batch_and_validates(name, tmp_path, monkeypatch, capsys):
    recipe = RECIPES[name]
    config = recipe.configs_dir / "single_gpu.yaml"
    assert config.is_file(), f"{config}: every recipe needs a single_gpu.yaml"
    trial_cls = recipe.trial_class()
    data, family_set = FAMILY_DATA[recipe.family](tmp_path / "data")
    monkeypatch.chdir(tmp_path)  # main() enters the trial directory; this puts it back
    monkeypatch.setattr(launch, "_setup_logging", lambda verbose: None)  # keep pytest's logging
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # what main() sets, undone after
    for var in [v for v in os.environ if v.startswith("ENERGY_")]:
        monkeypatch.delenv(var)
    seen: Dict[str, Any] = {}
    out = tmp_path / "run"
    argv = ["--config", str(config), "--data-dir", str(data), "--output-dir", str(out),
            "--batches", "1", "--set", *family_set, *SHORT]
    code = launch.main(_probe(trial_cls, seen), argv)
    assert code == 0, capsys.readouterr().err[-3000:]
    # forward and backward: the one step moved the weights
    assert seen["trainable"] > 0 and seen["changed"] > 0, seen
    by: Dict[str, list] = {}
    for record in runlog.read(out / "metrics.jsonl"):
        by.setdefault(record["group"], []).append(record)
    assert [r["steps_completed"] for r in by["training"]] == [1]
    assert [r["steps_completed"] for r in by["validation"]] == [1]
    training, validation = by["training"][0]["metrics"], by["validation"][0]["metrics"]
    assert math.isfinite(training["loss"])
    # metric names: only documented ones, and every one the family promises
    documented: Dict[str, set] = {}
    for group, metric, _ in trial_cls.metric_docs():
        documented.setdefault(group, set()).add(metric)
    assert set(training) - documented["training"] - DETERMINED_ADDS == set()
    assert set(validation) - documented["validation"] - DETERMINED_ADDS == set()
    searcher = load_experiment_config(config)["searcher"]["metric"]
    assert set(trial_cls.VALIDATION_METRICS) | {searcher} <= set(validation)
    assert all(math.isfinite(validation[m]) for m in trial_cls.VALIDATION_METRICS)
    assert by["run"][0]["metrics"]["params"] == seen["parameters"]  # the run's settings
