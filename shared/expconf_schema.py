"""Determined 0.38.1's experiment-config schema, restated key by key for the config checker.

(One thing, in one file: the schema. Its length is Determined's keys, written out section by
section; the project's own rules, the trials and the command line are ``shared/expconf.py``'s.)

Determined's master validates an experiment config against JSON schemas that ship with the
master, not with the ``determined`` wheel, so the checker carries what it needs of them: the
keys Determined 0.38.1 accepts at the top level and in ``resources``, ``searcher``
(``single``, ``random``, ``grid``, ``adaptive_asha``, ``async_halving``), ``hyperparameters``
(``const``/``int``/``double``/``log``/``categorical`` and nested), ``bind_mounts``,
``environment`` and ``profiling``: unknown keys, required keys, types, ranges, written from
``schemas/expconf/v0/*.json`` and ``master/pkg/schemas/expconf/searcher_config.go`` at tag
v0.38.1. Fields the project has no rule for (``checkpoint_storage``, ``data``, ...) are checked
for their type only and left to the master. ``tests/test_expconf_schema.py`` holds these
tables against a checkout of Determined's published schema files (``DETERMINED_SCHEMAS``).

A check is ``check(value, key_path, problems)``: it adds ``'<file>: <key.path>: <message>'``
lines to ``problems`` and never raises.
"""
from __future__ import annotations

import difflib
import re
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

Check = Callable[[Any, str, "Problems"], None]


class Problems:
    """Collects ``'<file>: <key.path>: <message>'`` lines."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.items: List[str] = []

    def add(self, path: str, message: str) -> None:
        line = f"{self.where}: {path}: {message}" if path else f"{self.where}: {message}"
        if line not in self.items:
            self.items.append(line)


# ----------------------------------------------------------------------------- small checks
def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


_KINDS: Dict[str, Callable[[Any], bool]] = {
    "int": is_int, "number": is_num, "string": lambda v: isinstance(v, str),
    "bool": lambda v: isinstance(v, bool), "object": lambda v: isinstance(v, dict),
    "list": lambda v: isinstance(v, list), "null": lambda v: v is None,
}


def _t(*kinds: str, minimum: Optional[float] = None, maximum: Optional[float] = None,
       exclusive_minimum: Optional[float] = None, enum: Optional[Sequence[Any]] = None,
       items: Optional[str] = None) -> Check:
    """A check for one value: one of ``kinds`` (null is always allowed: Determined's schema
    lets every optional field be null, meaning its default), bounds, enum, list item kind."""
    def check(v: Any, path: str, out: Problems) -> None:
        if v is None:
            return
        if enum is not None:
            if v not in enum:
                out.add(path, f"{v!r} is not one of {', '.join(repr(e) for e in enum)}")
            return
        if not any(_KINDS[k](v) for k in kinds):
            out.add(path, f"{v!r} has type {yaml_type(v)}; expected {' or '.join(kinds)}")
            return
        if minimum is not None and is_num(v) and v < minimum:
            out.add(path, f"{v!r} must be >= {minimum}")
        if maximum is not None and is_num(v) and v > maximum:
            out.add(path, f"{v!r} must be <= {maximum}")
        if exclusive_minimum is not None and is_num(v) and v <= exclusive_minimum:
            out.add(path, f"{v!r} must be > {exclusive_minimum}")
        if items is not None and isinstance(v, list):
            for i, item in enumerate(v):
                if not _KINDS[items](item):
                    out.add(f"{path}[{i}]", f"{item!r} has type {yaml_type(item)}; expected {items}")
    return check


def yaml_type(v: Any) -> str:
    return {bool: "bool", int: "int", float: "float", str: "string", list: "list",
            dict: "mapping", type(None): "null"}.get(type(v), type(v).__name__)


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def did_you_mean(key: Any, known: Iterator[str] | Sequence[str]) -> str:
    by_lower = {k.lower(): k for k in known}  # "mIoU" should find "miou"
    near = difflib.get_close_matches(str(key).lower(), list(by_lower), n=1)
    return f" (did you mean '{by_lower[near[0]]}'?)" if near else ""


def check_mapping(value: Any, spec: Mapping[str, Check], path: str, out: Problems,
                   required: Sequence[str] = ()) -> bool:
    """Unknown keys, required keys and each known key's check. False if not a mapping."""
    if not isinstance(value, dict):
        out.add(path, f"must be a mapping, got {yaml_type(value)}")
        return False
    for key, v in value.items():
        if key not in spec:
            out.add(_join(path, key), f"unknown key{did_you_mean(key, spec)}")
        else:
            spec[key](v, _join(path, key), out)
    for key in required:
        if value.get(key) is None:
            out.add(_join(path, key), "required")
    return True


def _mapping_of(spec: Mapping[str, Check], required: Sequence[str] = ()) -> Check:
    def check(v: Any, path: str, out: Problems) -> None:
        if v is not None:
            check_mapping(v, spec, path, out, required)
    return check


def _list_of(item: Check) -> Check:
    def check(v: Any, path: str, out: Problems) -> None:
        if v is None:
            return
        if not isinstance(v, list):
            out.add(path, f"must be a list, got {yaml_type(v)}")
            return
        for i, x in enumerate(v):
            item(x, f"{path}[{i}]", out)
    return check


def _removed(reason: str) -> Check:
    def check(v: Any, path: str, out: Problems) -> None:
        out.add(path, reason)
    return check


_ANY: Check = lambda v, path, out: None  # noqa: E731  (fields this checker leaves to the master)
_LENGTH = _mapping_of({"batches": _t("int", minimum=0), "records": _t("int", minimum=0),
                       "epochs": _t("int", minimum=0)})


# ----------------------------------------------------------------------------- sections
def _check_absolute(v: Any, path: str, out: Problems) -> None:
    _t("string")(v, path, out)
    if isinstance(v, str) and not v.startswith("/"):
        out.add(path, f"{v!r} must be an absolute path")


def _check_container_path(v: Any, path: str, out: Problems) -> None:
    _t("string")(v, path, out)
    if v == ".":
        out.add(path, "must not be '.'")


BIND_MOUNT: Dict[str, Check] = {"host_path": _check_absolute,
                                 "container_path": _check_container_path,
                                 "read_only": _t("bool"), "propagation": _t("string")}
DEVICE: Dict[str, Check] = {"host_path": _t("string"), "container_path": _t("string"),
                            "mode": _t("string")}
#: the keys a bind mount and a device require
MOUNT_REQUIRED = ("host_path", "container_path")
_BIND_MOUNT = _mapping_of(BIND_MOUNT, required=MOUNT_REQUIRED)
_DEVICE = _mapping_of(DEVICE, required=MOUNT_REQUIRED)
#: the accelerator kinds ``environment.image`` and ``environment.environment_variables`` may map
ACCELERATOR_KEYS = ("cpu", "cuda", "rocm", "gpu")


def _check_shm_size(v: Any, path: str, out: Problems) -> None:
    if v is None or is_int(v):
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


def _check_env_vars(v: Any, path: str, out: Problems) -> None:
    def one_list(lst: Any, p: str) -> None:
        if not isinstance(lst, list):
            out.add(p, f"must be a list of 'NAME=value' strings, got {yaml_type(lst)}")
            return
        for i, item in enumerate(lst):
            if not isinstance(item, str) or "=" not in item or item.startswith("="):
                out.add(f"{p}[{i}]", f"{item!r} is not a 'NAME=value' string")
    if v is None:
        return
    if isinstance(v, dict):
        check_mapping(v, {k: lambda x, p, o: one_list(x, p) if x is not None else None
                           for k in ACCELERATOR_KEYS}, path, out)
    else:
        one_list(v, path)


def _check_image(v: Any, path: str, out: Problems) -> None:
    if v is None or isinstance(v, str):
        return
    if isinstance(v, dict):
        check_mapping(v, {k: _t("string") for k in ACCELERATOR_KEYS}, path, out)
    else:
        out.add(path, f"is neither a string nor a map of cpu, cuda or rocm to strings (got {yaml_type(v)})")


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


def _check_searcher(v: Any, path: str, out: Problems) -> None:
    if not isinstance(v, dict):
        out.add(path, f"must be a mapping, got {yaml_type(v)}")
        return
    name = v.get("name")
    if name is None:
        out.add(f"{path}.name", f"required: one of {', '.join(SEARCHERS)}")
        return
    if name in REMOVED_SEARCHERS:
        out.add(f"{path}.name", f"the '{name}' searcher has been removed and is not valid for new experiments")
        return
    if name not in SEARCHERS:
        out.add(f"{path}.name", f"{name!r} is not a searcher{did_you_mean(name, SEARCHERS)}; "
                                f"expected one of {', '.join(SEARCHERS)}")
        return
    spec, required = SEARCHERS[name]
    check_mapping(v, spec, path, out, required)


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


def _check_hp_spec(spec: Dict[str, Any], path: str, out: Problems, grid: bool) -> None:
    t = spec["type"]
    if not isinstance(t, str) or t not in HP_KEYS:
        out.add(f"{path}.type", f"{t!r} is not a hyperparameter type{did_you_mean(t, HP_KEYS)}; "
                                f"expected one of {', '.join(HP_KEYS)}")
        return
    for key in spec:
        if key not in HP_KEYS[t]:
            out.add(_join(path, key), f"unknown key for a '{t}' hyperparameter"
                                      f"{did_you_mean(key, HP_KEYS[t])}")
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
    number = is_int if t == "int" else is_num
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
        if not is_num(base) or base <= 0 or base == 1:
            out.add(f"{path}.base", f"{base!r} must be a number > 0 and != 1")
    if "count" in spec and spec["count"] is not None and not (is_int(spec["count"]) and spec["count"] >= 1):
        out.add(f"{path}.count", f"{spec['count']!r} must be an integer >= 1")
    if grid and spec.get("count") is None:
        out.add(f"{path}.count", f"required for a '{t}' hyperparameter with the grid searcher")


def _walk_hps(space: Mapping[str, Any], path: str, out: Problems, grid: bool) -> None:
    for key, spec in space.items():
        p = _join(path, key)
        if isinstance(spec, dict) and "type" in spec:
            _check_hp_spec(spec, p, out, grid)
        elif isinstance(spec, dict):
            _walk_hps(spec, p, out, grid)



# ----------------------------------------------------------------------------- the top level
TOP_LEVEL: Dict[str, Check] = {
    "bind_mounts": _list_of(_BIND_MOUNT),
    "checkpoint_policy": _t(enum=("best", "all", "none")),
    "checkpoint_storage": _t("object"),
    "data": _t("object"),
    "integrations": _t("object"),
    "data_layer": _removed("removed in Determined 0.19.10 (ignored)"),
    "debug": _t("bool"),
    "description": _t("string"),
    "entrypoint": _t("string", "list", items="string"),
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



def check_schema(conf: Any, out: Problems) -> None:
    """Every problem Determined's schema finds in ``conf`` (a parsed experiment config), added
    to ``out``: the top level and its sections, each hyperparameter's definition (a grid
    search needs every searched one's ``count``), and ``profiling``'s batch range."""
    if not check_mapping(conf, TOP_LEVEL, "", out, TOP_REQUIRED):
        return
    space = conf.get("hyperparameters")
    if space is not None and not isinstance(space, dict):
        out.add("hyperparameters", f"must be a mapping, got {yaml_type(space)}")
        space = None
    searcher = conf.get("searcher") if isinstance(conf.get("searcher"), dict) else {}
    if space is not None:
        _walk_hps(space, "hyperparameters", out, grid=searcher.get("name") == "grid")
    profiling = conf.get("profiling") or {}
    if isinstance(profiling, dict) and is_int(profiling.get("begin_on_batch")) \
            and is_int(profiling.get("end_after_batch")) \
            and profiling["begin_on_batch"] > profiling["end_after_batch"]:
        out.add("profiling", "begin_on_batch must be <= end_after_batch")
