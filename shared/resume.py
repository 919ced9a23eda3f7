"""What a local ``--resume`` may change: the checkpoint's hyperparameters against the new ones.

A resume continues a run, so it must train the same model with the same optimiser on the same
data. Before, a changed config was a traceback (``--set optimizer=sgd``: ``KeyError:
'momentum'``; ``--set unet_base_channels=8``: ``size mismatch for head.weight``; another
model's checkpoint) or, worse, silent (``global_batch_size`` or ``lr`` changed without a word;
the lr change did not even take effect, the schedule's state came from the checkpoint).

Here every key of the trial's schema is one of:

- **refused** (model, optimiser or data): a different network or objective, another optimiser
  or its decay, other samples or another order. Each changed key is named with both values,
  and the message says how to start a new run from the checkpoint's weights instead
  (``--set pretrained_path=<checkpoint>/state_dict.pth`` and another ``--output-dir``);
- **stated** (everything else: the learning-rate schedule and length, periods, target,
  energy, validation, implementation switches, loader workers, and ``data_dir``, which a
  moved copy of the same data changes): logged with both values, and
  in effect from the first resumed batch (the engine re-applies the schedule after Determined
  loads the checkpoint's: ``Engine.apply_schedule``).

The checkpoint's hyperparameters come from its ``trial_state.json`` (resolved, with the model
that wrote it), or, for a checkpoint written before that file existed, from Determined's
``load_data.json`` (as given), resolved with the trial's own schema.
"""
from __future__ import annotations

import json
import logging
import pathlib
from typing import Any, Dict, List, Mapping, Optional, Tuple

from shared import hparams as hpmod

log = logging.getLogger("shared.resume")

#: keys of the shared schemas that change the network or the meaning of its outputs
MODEL_KEYS = frozenset({"num_classes", "in_channels", "arch"})
#: keys that change the optimiser, its state or the objective it minimises
OPTIMISER_KEYS = frozenset({"optimizer", "weight_decay", "momentum", "freeze_backbone", "loss",
                            "pos_weight", "focal_gamma", "label_smoothing"})
#: keys that change which samples a batch holds, their order or their augmentation
DATA_KEYS = frozenset({"global_batch_size", "seed", "crop_size", "scale",
                       "ratio_range", "cat_max_ratio", "image_size", "augment", "val_fraction",
                       "tile_size", "positive_fraction", "hard_negative_fraction", "mine_period",
                       "mine_tiles", "hard_negative_pool"})


def kind(key: str, model_params: Mapping[str, Any]) -> str:
    """'model', 'optimiser', 'data' (refused on resume) or 'stated'."""
    if key in MODEL_KEYS or (key in model_params and key not in hpmod.IMPLEMENTATION_SWITCHES):
        return "model"
    if key in OPTIMISER_KEYS:
        return "optimiser"
    if key in DATA_KEYS:
        return "data"
    return "stated"


def recorded(checkpoint: pathlib.Path, trial_cls: type) -> Tuple[Optional[str], Dict[str, Any]]:
    """(the model that wrote ``checkpoint`` when recorded, its resolved hyperparameters).

    Raises:
        hpmod.ConfigError: the checkpoint records no hyperparameters, or they are not this
            trial's (another model's checkpoint).
    """
    state_file = checkpoint / "trial_state.json"
    if state_file.is_file():
        state = json.loads(state_file.read_text())
        return state.get("model"), dict(state["hparams"])
    data_file = checkpoint / "load_data.json"
    try:
        given = json.loads(data_file.read_text())["hparams"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise hpmod.ConfigError(f"--resume {checkpoint}: no trial_state.json and no readable "
                                f"hyperparameters in {data_file} ({err}); is it a checkpoint of "
                                f"this project?") from None
    try:
        return None, hpmod.resolve(given, trial_cls.MODEL_PARAMS, where=str(data_file),
                                   common=trial_cls.COMMON_PARAMS)
    except hpmod.ConfigError as err:
        raise hpmod.ConfigError(f"--resume {checkpoint}: its hyperparameters are not those of "
                                f"{trial_cls.MODEL_NAME} ({err}): a checkpoint of another "
                                f"model?") from None


def _shown(v: Any) -> str:
    return format(v, ".6g") if isinstance(v, float) else repr(v)


def check(checkpoint: pathlib.Path, trial_cls: type, hp: Mapping[str, Any]) -> List[str]:
    """Compare the hyperparameters a resume of ``checkpoint`` would train with (``hp``,
    resolved) with the checkpoint's; returns the stated changes as ``key: old -> new``.

    Raises:
        hpmod.ConfigError: another model's checkpoint, or changes of the model, optimiser or
            data, each key named with both values.
    """
    model, old = recorded(checkpoint, trial_cls)
    if model is not None and model != trial_cls.MODEL_NAME:
        raise hpmod.ConfigError(f"--resume {checkpoint}: a checkpoint of {model}, not of "
                                f"{trial_cls.MODEL_NAME}; resume it with trials/{model}/train.py")
    refused: List[str] = []
    stated: List[str] = []
    for key in sorted(set(old) | set(hp)):
        if key == "energy" or old.get(key) == hp.get(key):
            continue
        what = kind(key, trial_cls.MODEL_PARAMS)
        change = f"{key} {_shown(old.get(key))} -> {_shown(hp.get(key))}"
        (stated if what == "stated" else refused).append(change if what == "stated"
                                                         else f"{change} (the {what})")
    if (old.get("energy") or {}) != (hp.get("energy") or {}):
        stated.append("energy (the energy hook's options)")
    if refused:
        raise hpmod.ConfigError(
            f"--resume {checkpoint}: a resume continues the same run, but these hyperparameters "
            f"differ from the checkpoint's: {'; '.join(refused)}. Keep the checkpoint's values, "
            f"or start a new run from its weights: --set pretrained_path="
            f"{checkpoint / 'state_dict.pth'} with another --output-dir (and without --resume)")
    return stated
