"""Targets in general (issue 15): target_metric / target_value / target_smaller_is_better, the
legacy target_miou / target_accuracy, the target callback in both directions, early stopping,
and the energy projection of a decreasing metric."""
from __future__ import annotations

import math
import pathlib
import re
from types import SimpleNamespace

import pytest

from shared import configfile
from shared import expconf
from shared import hparams as hp
from shared import recipes
from shared.classification.trial import ClassificationTrial
from shared.energy.projection import projected_energy_to_target
from shared.trial import SegmentationTrial, TargetCallback


def resolve(given, trial=SegmentationTrial, where="c.yaml"):
    return hp.resolve(given, trial.MODEL_PARAMS, where=where, common=trial.COMMON_PARAMS)


def target(out):
    return out["target_metric"], out["target_value"], out["target_smaller_is_better"]


# ------------------------------------------------------------------ hyperparameters
def test_family_defaults_and_direction_rule():
    assert target(resolve({})) == ("miou", 16.0, False)
    assert target(resolve({}, ClassificationTrial)) == ("accuracy", 90.0, False)
    # a name containing "loss" gets smaller as the model improves; the config can say otherwise
    assert target(resolve({"target_metric": "validation_loss", "target_value": 0.6})) == \
        ("validation_loss", 0.6, True)
    assert target(resolve({"target_metric": "pixel_accuracy", "target_value": 70,
                           "target_smaller_is_better": True}))[2] is True


def test_legacy_keys_still_work_and_resolve_to_themselves():
    out = resolve({"target_miou": 20})
    assert target(out) == ("miou", 20.0, False) and out["target_miou"] == 20.0
    assert target(resolve({"target_accuracy": 60}, ClassificationTrial)) == ("accuracy", 60.0, False)
    # the same target said both ways is accepted
    assert target(resolve({"target_miou": 20, "target_metric": "miou", "target_value": 20})) == \
        ("miou", 20.0, False)
    # with another metric the legacy key is null, and the resolved set resolves to itself
    out = resolve({"target_metric": "validation_loss", "target_value": 0.6})
    assert out["target_miou"] is None and resolve(out) == out


@pytest.mark.parametrize("given, trial, message", [
    ({"target_miou": 20, "target_value": 18}, SegmentationTrial,
     "c.yaml: hyperparameters 'target_miou' and 'target_value' disagree: 'target_miou' = 20 means "
     "target_metric: miou, target_value: 20, but target_value is 18; keep one of the two"),
    ({"target_miou": 20, "target_metric": "validation_loss", "target_value": 20}, SegmentationTrial,
     "c.yaml: hyperparameters 'target_miou' and 'target_metric' disagree: 'target_miou' = 20 means "
     "target_metric: miou, target_value: 20, but target_metric is 'validation_loss'; keep one of the two"),
    ({"target_accuracy": 60, "target_smaller_is_better": True}, ClassificationTrial,
     "c.yaml: hyperparameters 'target_accuracy' and 'target_smaller_is_better' disagree: "
     "'target_accuracy' = 60 means target_metric: accuracy, target_value: 60, larger is better; "
     "keep one of the two"),
    ({"target_metric": "validation_loss"}, SegmentationTrial,
     "c.yaml: hyperparameter 'target_metric' = 'validation_loss' needs a 'target_value' (the "
     "default 16 is the target of miou)"),
    ({"target_value": 0}, SegmentationTrial, "c.yaml: hyperparameter 'target_value' = 0 must be in (0, 1e+12]"),
    ({"early_stop_patience": 0}, SegmentationTrial,
     "c.yaml: hyperparameter 'early_stop_patience' = 0 must be in 1..1000000"),
])
def test_conflicting_or_incomplete_targets_are_refused_naming_the_keys(given, trial, message):
    with pytest.raises(hp.ConfigError) as e:
        resolve(given, trial)
    assert str(e.value) == message


def test_a_metric_the_trial_never_reports_is_refused():
    with pytest.raises(hp.ConfigError, match=re.escape(
            "c.yaml: hyperparameter 'target_metric' = 'mio' is not a validation metric of "
            "image_classification; known: accuracy, mean_class_accuracy,")):
        ClassificationTrial.check_target(resolve({"target_metric": "mio", "target_value": 1},
                                                 ClassificationTrial), "c.yaml")
    SegmentationTrial.check_target(resolve({"target_metric": "validation_loss", "target_value": 1}))


def test_an_old_style_config_file_still_passes_the_checker_and_resolves(tmp_path):
    """A customer's copy of a config from before target_metric: ``target_miou: 20``."""
    root = pathlib.Path(__file__).resolve().parents[1]
    text = (root / "experiment_configs" / "unet" / "single_gpu.yaml").read_text()
    old = re.sub(r"\n  target_metric: miou[^\n]*\n  target_value: 16\n", "\n  target_miou: 20\n", text)
    assert old != text and "target_metric" not in old
    path = tmp_path / "unet" / "single_gpu.yaml"
    path.parent.mkdir()
    path.write_text(old)
    assert expconf.check_config(path, repo_root=root) == []
    conf = configfile.load_experiment_config(path)
    unet = recipes.get("unet").trial_class()
    assert target(resolve(configfile.point_from_space(conf["hyperparameters"], str(path)), unet)) == \
        ("miou", 20.0, False)
    # and one that says the target both ways, differently, is refused by the checker by name
    path.write_text(old.replace("  target_miou: 20\n", "  target_miou: 20\n  target_value: 16\n"))
    problems = expconf.check_config(path, repo_root=root)
    assert problems and all(p.startswith(f"{path}: hyperparameters 'target_miou' and 'target_value' "
                                         f"disagree") for p in problems)


def test_a_command_line_target_replaces_the_configs_other_form():
    config = {"target_metric": "miou", "target_value": 16}
    assert target(resolve(configfile.apply_overrides(config, ["target_miou=1"]))) == ("miou", 1.0, False)
    assert target(resolve(configfile.apply_overrides({"target_miou": 16}, ["target_value=5"]))) == \
        ("miou", 5.0, False)
    # a new metric alone drops the old metric's value: the user is asked for one
    with pytest.raises(hp.ConfigError, match="'target_metric' = 'validation_loss' needs a 'target_value'"):
        resolve(configfile.apply_overrides(config, ["target_metric=validation_loss"]))


# ------------------------------------------------------------------ the callback
class _Context:
    def __init__(self):
        self.distributed = SimpleNamespace(rank=0)
        self.stop_requested = False

    def set_stop_requested(self, value):
        self.stop_requested = value


def _callback(**given):
    trial = SimpleNamespace(hp=resolve(given), context=_Context(), batches_trained=0,
                            write_local_details=lambda: None)
    return trial, TargetCallback(trial)


def _validate(trial, cb, step, **metrics):
    trial.batches_trained = step
    cb.on_validation_end(metrics)
    return metrics


@pytest.mark.parametrize("given, series, hit", [
    ({"target_miou": 16}, [4.0, 15.9, 16.0, 12.0], 3),                                # >=, legacy
    ({"target_metric": "validation_loss", "target_value": 0.6}, [1.2, 0.61, 0.6, 0.9], 3),  # <=
    ({"target_metric": "validation_loss", "target_value": 0.6}, [0.4, 0.7], 1),
    ({"target_metric": "validation_loss", "target_value": 0.6}, [math.nan, 0.9, 0.5], 3),
])
def test_target_reached_at_the_right_validation_in_either_direction(given, series, hit):
    trial, cb = _callback(**given, stop_at_target=True)
    metric = trial.hp["target_metric"]
    out = [_validate(trial, cb, 10 * (i + 1), **{metric: v}) for i, v in enumerate(series)]
    first = next(i for i, m in enumerate(out) if "batches_to_target" in m) + 1
    assert first == hit and out[-1]["batches_to_target"] == 10 * hit
    assert all("time_to_target_s" in m for m in out[hit - 1:])
    assert trial.context.stop_requested


def test_early_stopping_after_patience_validations_without_improvement():
    trial, cb = _callback(target_metric="validation_loss", target_value=0.1, early_stop_patience=2)
    counts = []
    for step, loss in zip((10, 20, 30, 40, 50), (1.0, 0.8, 0.8, 0.9, 0.7)):
        counts.append(_validate(trial, cb, step, validation_loss=loss)["validations_without_improvement"])
        if trial.context.stop_requested:
            break
    # 0.8 equal to the best is no improvement: stop at the second validation without one
    assert counts == [0, 0, 1, 2] and trial.context.stop_requested
    # the count and the best survive a pause: a resumed trial keeps counting
    state = cb.state_dict()
    trial2, cb2 = _callback(target_metric="validation_loss", target_value=0.1, early_stop_patience=3)
    cb2.load_state_dict(state)
    assert (cb2.best, cb2.without_improvement) == (0.8, 2)
    assert _validate(trial2, cb2, 60, validation_loss=0.5)["validations_without_improvement"] == 0


def test_no_early_stopping_and_no_count_when_patience_is_null():
    trial, cb = _callback()
    for step in (10, 20, 30, 40):
        assert "validations_without_improvement" not in _validate(trial, cb, step, miou=1.0)
    assert not trial.context.stop_requested


# ------------------------------------------------------------------ energy projection
def test_projection_of_a_decreasing_metric_scales_by_value_over_target():
    # loss at twice the target: twice the energy so far; reached: the measured figure
    assert projected_energy_to_target(3.0, 1.2, 0.6, None, smaller_is_better=True) == pytest.approx(6.0)
    assert projected_energy_to_target(3.0, 0.5, 0.6, 2.5, smaller_is_better=True) == 2.5
    assert projected_energy_to_target(3.0, math.inf, 0.6, None, smaller_is_better=True) is None
    # the increasing rule is unchanged
    assert projected_energy_to_target(3.0, 8.0, 16.0, None) == pytest.approx(6.0)
