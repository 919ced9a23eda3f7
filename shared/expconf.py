"""A checker of Determined 0.38 experiment configs, run before anything is submitted.

(One job, in one file: its length is Determined's config schema, written out key by key.)

Determined's master validates an experiment config against a JSON schema that ships with the
master, not with the ``determined`` wheel, and several mistakes pass that schema and fail
only once a trial runs: a misspelled hyperparameter (Determined passes whatever
``hyperparameters`` holds), a searcher metric the trial never reports, ``smaller_is_better``
left at its default ``true`` for mIoU, eight slots without a distributed launcher. So this
module checks, with messages that name the file and the key path:

- the keys Determined 0.38.1 accepts at the top level and in ``resources``, ``searcher``
  (``single``, ``random``, ``grid``, ``adaptive_asha``, ``async_halving``), ``hyperparameters``
  (``const``/``int``/``double``/``log``/``categorical`` and nested), ``bind_mounts``,
  ``environment`` and ``profiling``: unknown keys, required keys, types, ranges (written
  from ``schemas/expconf/v0/*.json`` and ``master/pkg/schemas/expconf/searcher_config.go``
  at tag v0.38.1);
- this project's rules: the entrypoint's script exists in ``trials/<model>/``, the slots
  match the file name, the per-slot batch is 16, an ASHA search measures time in batches
  and its ``max_time`` equals ``max_batches``, the searcher metric is one the trial reports
  with the right direction, and the hyperparameters (the middle of the space, a seeded random
  point, and every bound and category) resolve against the trial's schema
  (``shared.hparams.resolve``).

It knows every recipe of the registry (``shared.recipes``: ``trials/<model>/train.py`` defining
one trial class, of the segmentation or the classification family), under this repository or
under ``--repo-root``; a config whose trial cannot be loaded is reported as such.

Command line (exit status 1 if any problem)::

    python -m shared.expconf experiment_configs/*/*.yaml
    python -m shared.expconf ~/my-configs/big-batch.yaml --model unet   # a config kept elsewhere
"""
from __future__ import annotations

import argparse
import difflib
import pathlib
import random
import re
import shlex
import sys
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from shared import hparams as hpmod
from shared import recipes
from shared.energy import ENERGY_METRICS  # metrics that need the energy hook in every trial
from shared.errors import ConfigError

#: Slots a config must ask for, by its file name (other names: any number).
SLOTS_BY_NAME: Dict[str, int] = {"single_gpu": 1, "8_gpu": 8, "multi_node": 32}
#: Images per GPU per step in every recipe (memory planning and the lr rule assume it).
PER_SLOT_BATCH = 16
#: The launch layer the trials expect with more than one slot (shared/launch.py runs
#: torch.distributed under it; without it one process would own every GPU and use one).
LAUNCHER = "determined.launch.torch_distributed"

def _searcher_metrics(trial_cls: Optional[type]) -> Mapping[str, bool]:
    """Validation metrics a trial reports at every validation, and whether larger is better:
    declared by the trial class (``SEARCHER_METRICS``); segmentation's when it is unknown.
    (time_to_target_s, batches_to_target and energy_to_target_wh exist only once the target is
    reached, so a searcher cannot rank trials with them.)"""
    from shared.trial import SegmentationTrial
    return getattr(trial_cls, "SEARCHER_METRICS", None) or SegmentationTrial.SEARCHER_METRICS

Check = Callable[[Any, str, "_Problems"], None]


class _Problems:
    """Collects ``'<file>: <key.path>: <message>'`` lines."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.items: List[str] = []

    def add(self, path: str, message: str) -> None:
        line = f"{self.where}: {path}: {message}" if path else f"{self.where}: {message}"
        if line not in self.items:
            self.items.append(line)


# ----------------------------------------------------------------------------- YAML
def load_yaml(path: str | pathlib.Path) -> Dict[str, Any]:
    """Read an experiment config with the one config reader (``shared.hparams.parse_yaml``:
    duplicate keys refused with both lines, ``2e-3`` a float); errors name the file."""
    return hpmod.read_config_file(path)


# ----------------------------------------------------------------------------- small checks
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


_KINDS: Dict[str, Callable[[Any], bool]] = {
    "int": _is_int, "number": _is_num, "string": lambda v: isinstance(v, str),
    "bool": lambda v: isinstance(v, bool), "object": lambda v: isinstance(v, dict),
    "list": lambda v: isinstance(v, list), "null": lambda v: v is None,
}


def _t(*kinds: str, minimum: Optional[float] = None, maximum: Optional[float] = None,
       exclusive_minimum: Optional[float] = None, enum: Optional[Sequence[Any]] = None,
       items: Optional[str] = None) -> Check:
    """A check for one value: one of ``kinds`` (null is always allowed: Determined's schema
    lets every optional field be null, meaning its default), bounds, enum, list item kind."""
    def check(v: Any, path: str, out: _Problems) -> None:
        if v is None:
            return
        if enum is not None:
            if v not in enum:
                out.add(path, f"{v!r} is not one of {', '.join(repr(e) for e in enum)}")
            return
        if not any(_KINDS[k](v) for k in kinds):
            out.add(path, f"{v!r} has type {_yaml_type(v)}; expected {' or '.join(kinds)}")
            return
        if minimum is not None and _is_num(v) and v < minimum:
            out.add(path, f"{v!r} must be >= {minimum}")
        if maximum is not None and _is_num(v) and v > maximum:
            out.add(path, f"{v!r} must be <= {maximum}")
        if exclusive_minimum is not None and _is_num(v) and v <= exclusive_minimum:
            out.add(path, f"{v!r} must be > {exclusive_minimum}")
        if items is not None and isinstance(v, list):
            for i, item in enumerate(v):
                if not _KINDS[items](item):
                    out.add(f"{path}[{i}]", f"{item!r} has type {_yaml_type(item)}; expected {items}")
    return check


def _yaml_type(v: Any) -> str:
    return {bool: "bool", int: "int", float: "float", str: "string", list: "list",
            dict: "mapping", type(None): "null"}.get(type(v), type(v).__name__)


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _did_you_mean(key: Any, known: Iterator[str] | Sequence[str]) -> str:
    by_lower = {k.lower(): k for k in known}  # "mIoU" should find "miou"
    near = difflib.get_close_matches(str(key).lower(), list(by_lower), n=1)
    return f" (did you mean '{by_lower[near[0]]}'?)" if near else ""


def _check_mapping(value: Any, spec: Mapping[str, Check], path: str, out: _Problems,
                   required: Sequence[str] = ()) -> bool:
    """Unknown keys, required keys and each known key's check. False if not a mapping."""
    if not isinstance(value, dict):
        out.add(path, f"must be a mapping, got {_yaml_type(value)}")
        return False
    for key, v in value.items():
        if key not in spec:
            out.add(_join(path, key), f"unknown key{_did_you_mean(key, spec)}")
        else:
            spec[key](v, _join(path, key), out)
    for key in required:
        if value.get(key) is None:
            out.add(_join(path, key), "required")
    return True


def _mapping_of(spec: Mapping[str, Check], required: Sequence[str] = ()) -> Check:
    def check(v: Any, path: str, out: _Problems) -> None:
        if v is not None:
            _check_mapping(v, spec, path, out, required)
    return check


def _list_of(item: Check) -> Check:
    def check(v: Any, path: str, out: _Problems) -> None:
        if v is None:
            return
        if not isinstance(v, list):
            out.add(path, f"must be a list, got {_yaml_type(v)}")
            return
        for i, x in enumerate(v):
            item(x, f"{path}[{i}]", out)
    return check


def _removed(reason: str) -> Check:
    def check(v: Any, path: str, out: _Problems) -> None:
        out.add(path, reason)
    return check


_ANY: Check = lambda v, path, out: None  # noqa: E731  (fields this checker leaves to the master)
_LENGTH = _mapping_of({"batches": _t("int", minimum=0), "records": _t("int", minimum=0),
                       "epochs": _t("int", minimum=0)})


# ----------------------------------------------------------------------------- sections
def _check_absolute(v: Any, path: str, out: _Problems) -> None:
    _t("string")(v, path, out)
    if isinstance(v, str) and not v.startswith("/"):
        out.add(path, f"{v!r} must be an absolute path")


def _check_container_path(v: Any, path: str, out: _Problems) -> None:
    _t("string")(v, path, out)
    if v == ".":
        out.add(path, "must not be '.'")


_BIND_MOUNT = _mapping_of({"host_path": _check_absolute, "container_path": _check_container_path,
                           "read_only": _t("bool"), "propagation": _t("string")},
                          required=("host_path", "container_path"))
_DEVICE = _mapping_of({"host_path": _t("string"), "container_path": _t("string"),
                       "mode": _t("string")}, required=("host_path", "container_path"))


def _check_shm_size(v: Any, path: str, out: _Problems) -> None:
    if v is None or _is_int(v):
        return
    if not isinstance(v, str) or not re.fullmatch(r"([0-9]*[.])?[0-9]+ ?(([kmgtpKMGTP]([iI]?[bB])?)|[bB])?", v):
        out.add(path, f"{v!r} is not a memory size (e.g. 4294967296 or '4G')")


RESOURCES: Dict[str, Check] = {
    "agent_label": _removed("removed in Determined 0.20.0 (ignored); use resource_pool"),
    "devices": _list_of(_DEVICE),
    "is_single_node": _t("bool"),
    "max_slots": _t("int"),
    "native_parallel": _t("bool"),
    "priority": _t("int", minimum=1, maximum=99),
    "resource_pool": _t("string"),
    "shm_size": _check_shm_size,
    "slots": _t("int"),
    "slots_per_trial": _t("int", minimum=0),
    "weight": _t("number"),
}


def _check_env_vars(v: Any, path: str, out: _Problems) -> None:
    def one_list(lst: Any, p: str) -> None:
        if not isinstance(lst, list):
            out.add(p, f"must be a list of 'NAME=value' strings, got {_yaml_type(lst)}")
            return
        for i, item in enumerate(lst):
            if not isinstance(item, str) or "=" not in item or item.startswith("="):
                out.add(f"{p}[{i}]", f"{item!r} is not a 'NAME=value' string")
    if v is None:
        return
    if isinstance(v, dict):
        _check_mapping(v, {k: lambda x, p, o: one_list(x, p) if x is not None else None
                           for k in ("cpu", "cuda", "rocm", "gpu")}, path, out)
    else:
        one_list(v, path)


def _check_image(v: Any, path: str, out: _Problems) -> None:
    if v is None or isinstance(v, str):
        return
    if isinstance(v, dict):
        _check_mapping(v, {k: _t("string") for k in ("cpu", "cuda", "rocm", "gpu")}, path, out)
    else:
        out.add(path, f"is neither a string nor a map of cpu, cuda or rocm to strings (got {_yaml_type(v)})")


ENVIRONMENT: Dict[str, Check] = {
    "image": _check_image,
    "environment_variables": _check_env_vars,
    "proxy_ports": _t("list"),
    "ports": _t("object"),
    "force_pull_image": _t("bool"),
    "registry_auth": _t("object"),
    "add_capabilities": _t("list", items="string"),
    "drop_capabilities": _t("list", items="string"),
    "pod_spec": _t("object"),
}

PROFILING: Dict[str, Check] = {
    "enabled": _t("bool"),
    "begin_on_batch": _t("int", minimum=0),
    "end_after_batch": _t("int", minimum=0),
    "sync_timings": _t("bool"),
}

_DEPRECATED_LENGTH = _removed("deprecated in Determined 0.38 and not read by these trials; the "
                              "length is hyperparameter max_batches (and time_metric/max_time "
                              "for ASHA)")
_STOP_ONCE = _removed("deprecated in Determined 0.38 (ignored)")
_SEARCHER_COMMON: Dict[str, Check] = {
    "name": _ANY, "metric": _t("string"), "smaller_is_better": _t("bool"),
    "source_trial_id": _t("int"), "source_checkpoint_uuid": _t("string"),
    "max_length": _DEPRECATED_LENGTH,
}
_HALVING = {"max_trials": _t("int", minimum=1), "time_metric": _t("string"), "max_time": _t("int", minimum=1),
            "divisor": _t("number", exclusive_minimum=1), "max_concurrent_trials": _t("int", minimum=0),
            "stop_once": _STOP_ONCE}
#: Allowed keys and the keys the master requires (schema "required"/"eventuallyRequired" and
#: SearcherConfig.AssertCurrent) per searcher name.
SEARCHERS: Dict[str, Tuple[Dict[str, Check], Tuple[str, ...]]] = {
    "single": (dict(_SEARCHER_COMMON), ("metric",)),
    "random": ({**_SEARCHER_COMMON, "max_trials": _t("int", minimum=1),
                "max_concurrent_trials": _t("int", minimum=0)}, ("metric", "max_trials")),
    "grid": ({**_SEARCHER_COMMON, "max_concurrent_trials": _t("int", minimum=0)}, ("metric",)),
    "adaptive_asha": ({**_SEARCHER_COMMON, **_HALVING, "bracket_rungs": _t("list", items="int"),
                       "mode": _t(enum=("aggressive", "standard", "conservative")),
                       "max_rungs": _t("int", minimum=1)},
                      ("metric", "max_trials", "time_metric", "max_time")),
    "async_halving": ({**_SEARCHER_COMMON, **_HALVING, "num_rungs": _t("int", minimum=1)},
                      ("metric", "max_trials", "num_rungs", "time_metric", "max_time")),
}
REMOVED_SEARCHERS = ("custom", "adaptive", "adaptive_simple", "sync_halving")


def _check_searcher(v: Any, path: str, out: _Problems) -> None:
    if not isinstance(v, dict):
        out.add(path, f"must be a mapping, got {_yaml_type(v)}")
        return
    name = v.get("name")
    if name is None:
        out.add(f"{path}.name", f"required: one of {', '.join(SEARCHERS)}")
        return
    if name in REMOVED_SEARCHERS:
        out.add(f"{path}.name", f"the '{name}' searcher has been removed and is not valid for new experiments")
        return
    if name not in SEARCHERS:
        out.add(f"{path}.name", f"{name!r} is not a searcher{_did_you_mean(name, SEARCHERS)}; "
                                f"expected one of {', '.join(SEARCHERS)}")
        return
    spec, required = SEARCHERS[name]
    _check_mapping(v, spec, path, out, required)


# ----------------------------------------------------------------------------- hyperparameters
HP_KEYS: Dict[str, Tuple[str, ...]] = {
    "const": ("type", "val"), "int": ("type", "minval", "maxval", "count"),
    "double": ("type", "minval", "maxval", "count"), "log": ("type", "minval", "maxval", "base", "count"),
    "categorical": ("type", "vals"),
}
HP_REQUIRED: Dict[str, Tuple[str, ...]] = {
    "const": ("val",), "int": ("minval", "maxval"), "double": ("minval", "maxval"),
    "log": ("minval", "maxval", "base"), "categorical": ("vals",),
}


def _check_hp_spec(spec: Dict[str, Any], path: str, out: _Problems, grid: bool) -> None:
    t = spec["type"]
    if not isinstance(t, str) or t not in HP_KEYS:
        out.add(f"{path}.type", f"{t!r} is not a hyperparameter type{_did_you_mean(t, HP_KEYS)}; "
                                f"expected one of {', '.join(HP_KEYS)}")
        return
    for key in spec:
        if key not in HP_KEYS[t]:
            out.add(_join(path, key), f"unknown key for a '{t}' hyperparameter"
                                      f"{_did_you_mean(key, HP_KEYS[t])}")
    missing = [k for k in HP_REQUIRED[t] if k not in spec]
    for key in missing:
        out.add(_join(path, key), f"required for a '{t}' hyperparameter")
    if missing:
        return
    if t == "categorical":
        vals = spec["vals"]
        if not isinstance(vals, list) or not vals:
            out.add(f"{path}.vals", "must be a non-empty list")
        return
    if t == "const":
        return
    number = _is_int if t == "int" else _is_num
    lo, hi = spec["minval"], spec["maxval"]
    ok = True
    for key, v in (("minval", lo), ("maxval", hi)):
        if not number(v):
            out.add(f"{path}.{key}", f"{v!r} must be {'an integer' if t == 'int' else 'a number'}")
            ok = False
    if ok and not lo < hi:
        out.add(path, f"minval ({lo}) must be < maxval ({hi})")
    if t == "log":
        base = spec["base"]
        if not _is_num(base) or base <= 0 or base == 1:
            out.add(f"{path}.base", f"{base!r} must be a number > 0 and != 1")
    if "count" in spec and spec["count"] is not None and not (_is_int(spec["count"]) and spec["count"] >= 1):
        out.add(f"{path}.count", f"{spec['count']!r} must be an integer >= 1")
    if grid and spec.get("count") is None:
        out.add(f"{path}.count", f"required for a '{t}' hyperparameter with the grid searcher")


def _walk_hps(space: Mapping[str, Any], path: str, out: _Problems, grid: bool) -> None:
    for key, spec in space.items():
        p = _join(path, key)
        if isinstance(spec, dict) and "type" in spec:
            _check_hp_spec(spec, p, out, grid)
        elif isinstance(spec, dict):
            _walk_hps(spec, p, out, grid)


def _leaves(space: Mapping[str, Any], prefix: Tuple[str, ...] = ()) -> Iterator[Tuple[Tuple[str, ...], Any]]:
    for key, spec in space.items():
        if isinstance(spec, dict) and "type" not in spec:
            yield from _leaves(spec, prefix + (key,))
        else:
            yield prefix + (key,), spec


def sample_point(space: Mapping[str, Any], rng: random.Random) -> Dict[str, Any]:
    """A random point of a Determined hyperparameter space, drawn as the master draws it
    (master/pkg/searcher/hyperparameters.go): int uniform on [minval, maxval] inclusive,
    double uniform, log ``base ** uniform(minval, maxval)``, categorical uniform, nested
    sections recursively. Assumes a space that passed the checks above."""
    out: Dict[str, Any] = {}
    for key, spec in space.items():
        if isinstance(spec, dict) and "type" in spec:
            t = spec["type"]
            if t == "const":
                out[key] = spec["val"]
            elif t == "int":
                out[key] = rng.randint(spec["minval"], spec["maxval"])
            elif t == "double":
                out[key] = rng.uniform(spec["minval"], spec["maxval"])
            elif t == "log":
                out[key] = spec["base"] ** rng.uniform(spec["minval"], spec["maxval"])
            elif t == "categorical":
                out[key] = rng.choice(spec["vals"])
            else:
                raise ConfigError(f"hyperparameter '{key}' has unknown type {t!r}")
        elif isinstance(spec, dict):
            out[key] = sample_point(spec, rng)
        else:
            out[key] = spec
    return out


def _set(point: Dict[str, Any], keys: Tuple[str, ...], value: Any) -> Dict[str, Any]:
    out = dict(point)
    node = out
    for k in keys[:-1]:
        node[k] = dict(node[k])
        node = node[k]
    node[keys[-1]] = value
    return out


def points_to_check(space: Mapping[str, Any], seed: int = 0) -> List[Tuple[str, Dict[str, Any]]]:
    """The points a config's hyperparameters must all resolve at: the middle of the space
    (what a local run trains, ``shared.hparams.point_from_space``), a random point drawn with
    ``seed``, and the middle with each searched value moved to each bound or category (so a
    bad bound or category fails here rather than in one trial out of many)."""
    middle = hpmod.point_from_space(space, "hyperparameters")
    points = [("the middle point", middle),
              (f"the random point of seed {seed}", sample_point(space, random.Random(seed)))]
    for keys, spec in _leaves(space):
        if not (isinstance(spec, dict) and "type" in spec):
            continue
        name = ".".join(keys)
        t = spec["type"]
        if t == "categorical":
            for v in spec["vals"]:
                points.append((f"{name} = {v!r}", _set(middle, keys, v)))
        elif t in ("int", "double"):
            for bound in ("minval", "maxval"):
                points.append((f"{name} = {spec[bound]!r} ({bound})", _set(middle, keys, spec[bound])))
        elif t == "log":
            for bound in ("minval", "maxval"):
                v = spec["base"] ** spec[bound]
                points.append((f"{name} = {v:.4g} ({bound})", _set(middle, keys, v)))
    return points


# ----------------------------------------------------------------------------- trials
def load_trial(trial_dir: str | pathlib.Path) -> Tuple[Any, type]:
    """The loaded ``<trial_dir>/train.py`` module and the trial class it defines (a
    ``PyTorchTrial`` subclass with ``MODEL_PARAMS``: ``SegmentationTrial``'s, or another
    family's such as ``ClassificationTrial``), through the recipe registry
    (``shared.recipes``, which caches it per directory).

    Raises:
        ConfigError: no train.py, an import error, or not one trial class; the message names
            the file.
    """
    recipe = recipes.Recipe.at(trial_dir)
    try:
        trial_cls = recipe.trial_class()
    except recipes.RecipeError as e:
        raise ConfigError(str(e)) from None
    return recipe.train_module(), trial_cls


# ----------------------------------------------------------------------------- the checker
TOP_LEVEL: Dict[str, Check] = {
    "bind_mounts": _list_of(_BIND_MOUNT),
    "checkpoint_policy": _t(enum=("best", "all", "none")),
    "checkpoint_storage": _t("object"),
    "data": _t("object"),
    "integrations": _t("object"),
    "data_layer": _removed("removed in Determined 0.19.10 (ignored)"),
    "debug": _t("bool"),
    "description": _t("string"),
    "entrypoint": _t("string", "list"),
    "environment": _mapping_of(ENVIRONMENT),
    "hyperparameters": _ANY,  # checked by _check_hyperparameters
    "internal": _t("null"),
    "labels": _t("list", items="string"),
    "log_policies": _t("list"),
    "retention_policy": _t("object"),
    "max_restarts": _t("int", minimum=0),
    "min_checkpoint_period": _LENGTH,
    "min_validation_period": _LENGTH,
    "name": _t("string"),
    "optimizations": _t("object"),
    "pbs": _t("object"),
    "perform_initial_validation": _t("bool"),
    "preemption_timeout": _t("int"),
    "profiling": _mapping_of(PROFILING),
    "project": _t("string"),
    "records_per_epoch": _t("int"),
    "reproducibility": _t("object"),
    "resources": _mapping_of(RESOURCES),
    "scheduling_unit": _t("int", minimum=1),
    "searcher": _check_searcher,
    "security": _t("object"),
    "slurm": _t("object"),
    "tensorboard_storage": _t("object"),
    "workspace": _t("string"),
}
TOP_REQUIRED = ("name", "entrypoint", "searcher", "hyperparameters")


def _const_values(space: Mapping[str, Any], key: str) -> Optional[List[Any]]:
    """The values a hyperparameter can take if it is fixed or categorical, else None."""
    spec = space.get(key)
    if isinstance(spec, dict) and "type" in spec:
        if spec["type"] == "const":
            return [spec.get("val")]
        if spec["type"] == "categorical" and isinstance(spec.get("vals"), list):
            return list(spec["vals"])
        return None
    return [spec]


def _script_of(entrypoint: Any) -> Tuple[Optional[str], List[str]]:
    tokens = shlex.split(entrypoint) if isinstance(entrypoint, str) else [str(t) for t in entrypoint]
    script = next((t for t in tokens if t.endswith(".py")), None)
    return script, tokens


def check_experiment(conf: Mapping[str, Any], where: str, *, kind: Optional[str] = None,
                     trial_dir: Optional[pathlib.Path] = None, per_slot_batch: int = PER_SLOT_BATCH,
                     seed: int = 0) -> List[str]:
    """Problems of an experiment config already loaded; each names ``where`` and a key path.

    Args:
        conf: the parsed YAML.
        where: how messages name the config (its path).
        kind: the file's stem (``single_gpu``, ``8_gpu``, ``multi_node``, ...), for the slot rule.
        trial_dir: ``trials/<model>``: the entrypoint must be there and the hyperparameters
            must resolve against its trial. None skips those checks.
        per_slot_batch: images per slot per step that ``global_batch_size / slots`` must give.
        seed: seed of the random point the hyperparameters must resolve at.
    """
    out = _Problems(where)
    if not _check_mapping(conf, TOP_LEVEL, "", out, TOP_REQUIRED):
        return out.items
    space = conf.get("hyperparameters")
    if space is not None and not isinstance(space, dict):
        out.add("hyperparameters", f"must be a mapping, got {_yaml_type(space)}")
        space = None
    searcher = conf.get("searcher") if isinstance(conf.get("searcher"), dict) else {}
    if space is not None:
        _walk_hps(space, "hyperparameters", out, grid=searcher.get("name") == "grid")
    profiling = conf.get("profiling") or {}
    if isinstance(profiling, dict) and _is_int(profiling.get("begin_on_batch")) \
            and _is_int(profiling.get("end_after_batch")) \
            and profiling["begin_on_batch"] > profiling["end_after_batch"]:
        out.add("profiling", "begin_on_batch must be <= end_after_batch")
    if out.items or space is None:
        return out.items  # the rules below read values whose shape must be right first
    _check_project_rules(conf, space, searcher, kind, trial_dir, per_slot_batch, seed, out)
    return out.items


def _check_project_rules(conf: Mapping[str, Any], space: Dict[str, Any], searcher: Mapping[str, Any],
                         kind: Optional[str], trial_dir: Optional[pathlib.Path], per_slot_batch: int,
                         seed: int, out: _Problems) -> None:
    resources = conf.get("resources") or {}
    slots = resources.get("slots_per_trial")
    slots = 1 if slots is None else slots

    # slots, launcher, entrypoint
    if kind in SLOTS_BY_NAME and slots != SLOTS_BY_NAME[kind]:
        out.add("resources.slots_per_trial", f"{slots} in a '{kind}' config; expected {SLOTS_BY_NAME[kind]}")
    if trial_dir is not None and not trial_dir.is_dir():
        out.add("", f"no trial directory {trial_dir}: a config in experiment_configs/<model>/ "
                    f"is checked against trials/<model>/; for a config elsewhere, name its "
                    f"model with --model ({', '.join(sorted(recipes.discover()))})")
        trial_dir = None
    script, tokens = _script_of(conf["entrypoint"])
    if slots > 1 and LAUNCHER not in tokens:
        out.add("entrypoint", f"{slots} slots need 'python3 -m {LAUNCHER} python3 train.py' "
                              f"(without it one process would own every GPU and train on one)")
    if script is None:
        out.add("entrypoint", f"{conf['entrypoint']!r} names no Python script (expected ... train.py)")
    elif trial_dir is not None and not (trial_dir / script).is_file():
        out.add("entrypoint", f"{script} not found in {trial_dir} (the context directory "
                              f"'det experiment create' uploads)")

    # batch
    if "global_batch_size" not in space:
        out.add("hyperparameters.global_batch_size", "required (Determined's PyTorchTrial reads it)")
    else:
        values = _const_values(space, "global_batch_size")
        if values is None:
            out.add("hyperparameters.global_batch_size", "must be a constant or categorical")
        for v in values or []:
            if not _is_int(v) or v <= 0:
                out.add("hyperparameters.global_batch_size", f"{v!r} must be a positive integer")
            elif slots > 0 and v % slots:
                out.add("hyperparameters.global_batch_size", f"{v} is not divisible by "
                                                             f"resources.slots_per_trial={slots}")
            elif slots > 0 and v // slots != per_slot_batch:
                out.add("hyperparameters.global_batch_size",
                        f"{v} / {slots} slots = {v // slots} images per slot; expected {per_slot_batch} "
                        f"(global_batch_size = {per_slot_batch * slots})")

    # the trial, when known, says which metrics it reports and which hyperparameters it takes
    trial_cls: Optional[type] = None
    if trial_dir is not None:
        try:
            _, trial_cls = load_trial(trial_dir)
        except ConfigError as e:
            out.add("entrypoint", str(e))
    searcher_metrics = _searcher_metrics(trial_cls)

    # searcher: metric, direction, length
    metric = searcher.get("metric")
    if metric is not None:
        if metric not in searcher_metrics:
            hint = (" (reported only once the target is reached; use projected_energy_to_target_wh)"
                    if metric == "energy_to_target_wh" else _did_you_mean(metric, searcher_metrics))
            out.add("searcher.metric", f"{metric!r} is not a validation metric the trial reports at "
                                       f"every validation{hint}; known: {', '.join(searcher_metrics)}")
        else:
            smaller = searcher.get("smaller_is_better")
            smaller = True if smaller is None else smaller  # Determined's default
            if smaller == searcher_metrics[metric]:
                default = " (Determined's default)" if searcher.get("smaller_is_better") is None else ""
                out.add("searcher.smaller_is_better",
                        f"{str(smaller).lower()}{default} ranks '{metric}' backwards: set it to "
                        f"{str(not smaller).lower()}")
    if searcher.get("name") in ("adaptive_asha", "async_halving"):
        if searcher.get("time_metric") != "batches":
            out.add("searcher.time_metric", f"{searcher.get('time_metric')!r}: the trial measures "
                                            f"its length in batches; set time_metric: batches")
        lengths = _const_values(space, "max_batches")
        if lengths is None or len(lengths) != 1:
            out.add("hyperparameters.max_batches", "must be a constant equal to searcher.max_time")
        elif lengths[0] != searcher.get("max_time"):
            out.add("searcher.max_time", f"{searcher.get('max_time')} != hyperparameters.max_batches "
                                         f"({lengths[0]}): the trial trains max_time batches, so the "
                                         f"rungs and the lr schedule would disagree")

    # energy
    energy = space.get("energy") if isinstance(space.get("energy"), dict) else {}
    if metric in ENERGY_METRICS:
        enabled = _const_values(energy, "enabled") if "enabled" in energy else [True]
        sources = _const_values(energy, "sources") if "sources" in energy else ["auto"]
        if enabled != [True] and enabled != [None]:
            out.add("hyperparameters.energy.enabled", f"searcher.metric '{metric}' needs energy "
                                                      f"measured; energy.enabled must stay true")
        if sources is None or any(s in ("none", "", None, []) for s in sources):
            out.add("hyperparameters.energy.sources", f"searcher.metric '{metric}' needs an energy "
                                                      f"source; leave energy.sources at 'auto'")

    # data inside the container
    data_dir = _const_values(space, "data_dir")
    mounts = [m.get("container_path", "") for m in conf.get("bind_mounts") or [] if isinstance(m, dict)]
    if mounts and data_dir and len(data_dir) == 1 and isinstance(data_dir[0], str) \
            and data_dir[0].startswith("/") and not any(_under(data_dir[0], m) for m in mounts):
        out.add("hyperparameters.data_dir", f"{data_dir[0]} is under no bind_mounts container_path "
                                            f"({', '.join(mounts)}): the task would not see the data")

    if trial_cls is not None:
        _check_points(space, trial_cls, seed, out)


def _under(path: str, root: str) -> bool:
    p, r = pathlib.PurePosixPath(path), pathlib.PurePosixPath(root)
    return p == r or r in p.parents


def _check_points(space: Dict[str, Any], trial_cls: type, seed: int, out: _Problems) -> None:
    common = getattr(trial_cls, "COMMON_PARAMS", hpmod.COMMON)
    schema = {**common, **trial_cls.MODEL_PARAMS}
    for key in space:
        if key not in schema:
            out.add(f"hyperparameters.{key}", f"unknown hyperparameter for {trial_cls.__name__}"
                                              f"{_did_you_mean(key, schema)}")
    if out.items:
        return
    for label, point in points_to_check(space, seed):
        try:
            hp = hpmod.resolve(point, trial_cls.MODEL_PARAMS, where=out.where, common=common)
            if hasattr(trial_cls, "check_target"):
                trial_cls.check_target(hp, out.where)
        except ConfigError as e:
            message = str(e)
            prefix = f"{out.where}: "
            out.add("", f"{message[len(prefix):] if message.startswith(prefix) else message} (at {label})")
            continue
        for key in ("validation_period", "checkpoint_period"):
            if hp[key] > hp["max_batches"]:
                out.add(f"hyperparameters.{key}", f"{hp[key]} > max_batches ({hp['max_batches']}) "
                                                  f"(at {label})")
        if hp["warmup_batches"] >= hp["max_batches"]:
            out.add("hyperparameters.warmup_batches", f"{hp['warmup_batches']} >= max_batches "
                                                      f"({hp['max_batches']}) (at {label})")


def _default_trial_dir(path: pathlib.Path, repo_root: Optional[pathlib.Path]) -> pathlib.Path:
    """``trials/<model>`` for ``.../experiment_configs/<model>/<name>.yaml``: under
    ``repo_root`` if given, else the repository the config lives in, else the one this
    package lives in (a copy of a config elsewhere still finds its trial)."""
    model = path.resolve().parent.name
    if repo_root is None:
        candidate = path.resolve().parents[2] if len(path.resolve().parents) > 2 else None
        if candidate is not None and (candidate / "trials").is_dir():
            repo_root = candidate
        else:
            repo_root = recipes.REPO_ROOT
    return pathlib.Path(repo_root) / recipes.TRIALS / model


def check_config(path: str | pathlib.Path, *, repo_root: Optional[str | pathlib.Path] = None,
                 per_slot_batch: int = PER_SLOT_BATCH, seed: int = 0,
                 model: Optional[str] = None) -> List[str]:
    """Problems of the experiment config at ``path`` (an empty list if none).

    The model is ``model`` if given (a config kept anywhere), else the config's directory
    name (``experiment_configs/<model>/<name>.yaml``); its trial is
    ``<repo_root>/trials/<model>`` (default: the repository holding the config, else this
    one). The slot rule comes from the file name. Each problem reads
    ``'<path>: <key.path>: <what is wrong>'``.
    """
    p = pathlib.Path(path)
    try:
        conf = load_yaml(p)
    except ConfigError as e:
        return [str(e)]
    if model is not None:
        root = pathlib.Path(repo_root) if repo_root else recipes.REPO_ROOT
        trial_dir = root / recipes.TRIALS / model
    else:
        trial_dir = _default_trial_dir(p, pathlib.Path(repo_root) if repo_root else None)
    return check_experiment(conf, str(path), kind=p.stem, trial_dir=trial_dir,
                            per_slot_batch=per_slot_batch, seed=seed)


def validate_config(path: str | pathlib.Path, **kwargs: Any) -> Dict[str, Any]:
    """``check_config``, raising instead: returns the parsed config if it has no problem.

    Raises:
        ConfigError: every problem, one per line, each naming the file and the key path.
    """
    problems = check_config(path, **kwargs)
    if problems:
        raise ConfigError("\n".join(problems))
    return load_yaml(path)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m shared.expconf CONFIG...``: print every problem; exit 1 if there is one."""
    ap = argparse.ArgumentParser(prog="python -m shared.expconf",
                                 description="Check Determined 0.38 experiment configs of this project "
                                             "before submitting them.")
    ap.add_argument("configs", nargs="+", type=pathlib.Path, help="experiment config YAML files")
    ap.add_argument("--repo-root", type=pathlib.Path,
                    help="where trials/<model>/ live (default: the repository of each config)")
    ap.add_argument("--per-slot-batch", type=int, default=PER_SLOT_BATCH,
                    help=f"images per slot per step global_batch_size must give (default {PER_SLOT_BATCH})")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random hyperparameter point checked")
    ap.add_argument("--model", help="the recipe (trials/<model>/) to check the configs against, for "
                                    "configs kept outside experiment_configs/<model>/ (default: "
                                    "each config's directory name)")
    args = ap.parse_args(argv)
    if args.model is not None:
        root = args.repo_root or recipes.REPO_ROOT
        known = sorted(recipes.discover(root))
        if args.model not in known:
            ap.error(f"--model {args.model}: no trials/{args.model}/train.py under {root} "
                     f"(known: {', '.join(known)})")
    failed = 0
    for path in args.configs:
        problems = check_config(path, repo_root=args.repo_root, per_slot_batch=args.per_slot_batch,
                                seed=args.seed, model=args.model)
        for line in problems:
            print(line)
        failed += bool(problems)
    n = len(args.configs)
    print(f"{n - failed} of {n} configs ok" if failed else f"all {n} config{'s' if n > 1 else ''} ok",
          file=sys.stderr if failed else sys.stdout)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
