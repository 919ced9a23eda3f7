"""The restated Determined schema (``shared/expconf_schema.py``) held against Determined's
published schema files, when a checkout of them is given::

    DETERMINED_SCHEMAS=/path/to/determined python -m pytest tests/test_expconf_schema.py

``DETERMINED_SCHEMAS`` names a checkout of github.com/determined-ai/determined at the tag the
project pins (v0.38.1), or its ``schemas`` folder. The files ship with the master, not with
the ``determined`` wheel, so without it every test here is skipped, saying so.

For each section the checker restates (the top level, ``resources``, ``environment`` and its
accelerator maps, ``profiling``, a bind mount, a device, each searcher, each hyperparameter
type) it checks: the same keys as the published file's ``properties``; the published
``required`` keys required; no key required that the files do not require (``required`` or
``eventuallyRequired``) unless the master's code does (listed below, with why); and every
constraint a property states (``type``, ``enum``, ``minimum``, ``maximum``,
``exclusiveMinimum``, ``items``, ``compareProperties``) refused by ``check_schema`` when a
value breaks it, and null accepted wherever the checker does not refuse the key outright
(the keys Determined 0.38 removed or deprecated).
"""
from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import pytest

from shared import expconf_schema as schema

ENV = "DETERMINED_SCHEMAS"

#: Required by the master's code rather than by the JSON files (the checker says so before
#: submission): an experiment needs an entrypoint to run anything; ASHA and async halving
#: need time_metric and max_time once max_length is gone (searcher_config.go AssertCurrent).
REQUIRED_BY_MASTER_CODE: Dict[str, Tuple[str, ...]] = {
    "experiment": ("entrypoint",),
    "searcher-adaptive-asha": ("time_metric", "max_time"),
    "searcher-async-halving": ("time_metric", "max_time"),
}
#: ``eventuallyRequired`` keys the master fills from the cluster's defaults before it checks
#: them (checkpoint storage, reproducibility's seed, the task image): a config need not give them.
FILLED_BY_MASTER: Dict[str, Tuple[str, ...]] = {
    "experiment": ("checkpoint_storage", "reproducibility"),
    "environment": ("image",),
    "environment-image-map": ("cpu", "cuda", "rocm"),
}
#: Keys the checker refuses whatever their value: removed or deprecated in Determined 0.38
#: (the schema still lists them so that old configs parse).
REFUSED = {"agent_label", "data_layer", "max_length", "stop_once"}

# A config check_schema passes; each probe changes one value in it.
BASE: Dict[str, Any] = {"name": "probe", "entrypoint": "python3 train.py",
                        "searcher": {"name": "single", "metric": "loss"},
                        "hyperparameters": {"global_batch_size": 16}}
SEARCHER_BASE = {"metric": "loss", "max_trials": 2, "time_metric": "batches", "max_time": 10,
                 "num_rungs": 2}
HP_BASE = {"const": {"val": 1}, "int": {"minval": 1, "maxval": 3},
           "double": {"minval": 0.1, "maxval": 0.3}, "log": {"minval": -3, "maxval": -1, "base": 10},
           "categorical": {"vals": [1, 2]}}


def _schema_dir() -> pathlib.Path:
    given = os.environ.get(ENV)
    if not given:
        pytest.skip(f"{ENV} is not set: point it at a checkout of Determined 0.38.1 "
                    "(github.com/determined-ai/determined, tag v0.38.1) or its schemas folder "
                    "to hold shared/expconf_schema.py against the published schema files")
    root = pathlib.Path(given).expanduser()
    for candidate in (root / "expconf" / "v0", root / "schemas" / "expconf" / "v0"):
        if (candidate / "experiment.json").is_file():
            return candidate
    pytest.fail(f"{ENV}={given}: no expconf/v0/experiment.json under it or under its schemas/ "
                "folder (expected a Determined checkout or its schemas folder)")


def _published(name: str) -> Dict[str, Any]:
    path = _schema_dir() / f"{name}.json"
    if not path.is_file():
        pytest.fail(f"{path}: not in the checkout given by {ENV}")
    return json.loads(path.read_text(encoding="utf-8"))


def _problems(conf: Mapping[str, Any]) -> List[str]:
    out = schema.Problems("c.yaml")
    schema.check_schema(conf, out)
    return out.items


def _with(conf: Mapping[str, Any], keys: Sequence[Any], value: Any) -> Dict[str, Any]:
    """A deep copy of ``conf`` with ``value`` at ``keys`` (dict keys and list indices)."""
    out = json.loads(json.dumps(conf))
    node = out
    for key in keys[:-1]:
        node = node[key]
    node[keys[-1]] = value
    return out


def _searcher_base(name: str) -> Dict[str, Any]:
    spec, _ = schema.SEARCHERS[name]
    return {"name": name, **{k: v for k, v in SEARCHER_BASE.items() if k in spec}}


# Each section: the published file, the checker's keys and required keys, and where in a
# config a value of the section sits (the base config holding it, and the key path).
def _sections() -> List[Tuple[str, Mapping[str, Any], Sequence[str], Dict[str, Any], Tuple[Any, ...]]]:
    mount = {"host_path": "/data", "container_path": "/data"}
    out: List[Tuple[str, Mapping[str, Any], Sequence[str], Dict[str, Any], Tuple[Any, ...]]] = [
        ("experiment", schema.TOP_LEVEL, schema.TOP_REQUIRED, BASE, ()),
        ("resources", schema.RESOURCES, (), {**BASE, "resources": {}}, ("resources",)),
        ("environment", schema.ENVIRONMENT, (), {**BASE, "environment": {}}, ("environment",)),
        ("profiling", schema.PROFILING, (), {**BASE, "profiling": {}}, ("profiling",)),
        ("bind-mount", schema.BIND_MOUNT, schema.MOUNT_REQUIRED,
         {**BASE, "bind_mounts": [mount]}, ("bind_mounts", 0)),
        ("device", schema.DEVICE, schema.MOUNT_REQUIRED,
         {**BASE, "resources": {"devices": [mount]}}, ("resources", "devices", 0)),
        ("environment-image-map", dict.fromkeys(schema.ACCELERATOR_KEYS), (),
         {**BASE, "environment": {"image": {}}}, ("environment", "image")),
        ("environment-variables-map", dict.fromkeys(schema.ACCELERATOR_KEYS), (),
         {**BASE, "environment": {"environment_variables": {}}},
         ("environment", "environment_variables")),
    ]
    for name, (spec, required) in schema.SEARCHERS.items():
        out.append((f"searcher-{name.replace('_', '-')}", spec, ("name", *required),
                    {**BASE, "searcher": _searcher_base(name)}, ("searcher",)))
    for kind, keys in schema.HP_KEYS.items():
        out.append((f"hyperparameter-{kind}", dict.fromkeys(keys), ("type", *schema.HP_REQUIRED[kind]),
                    {**BASE, "hyperparameters": {"global_batch_size": 16,
                                                 "x": {"type": kind, **HP_BASE[kind]}}},
                    ("hyperparameters", "x")))
    return out


SECTIONS = {s[0]: s for s in _sections()}


@pytest.mark.parametrize("name", list(SECTIONS))
def test_keys_and_required_keys_match_the_published_schema(name):
    _, spec, required, _, _ = SECTIONS[name]
    published = _published(name)
    keys = set(published.get("properties", {}))
    assert set(spec) == keys, (f"{name}.json: only in the published schema "
                               f"{sorted(keys - set(spec))}, only in the checker "
                               f"{sorted(set(spec) - keys)}")
    hard = set(published.get("required") or ())
    eventually = set(published.get("eventuallyRequired") or ())
    ours = set(required)
    assert hard <= ours, f"{name}.json requires {sorted(hard - ours)}; the checker does not"
    extra = ours - hard - eventually - set(REQUIRED_BY_MASTER_CODE.get(name, ()))
    assert not extra, f"the checker requires {sorted(extra)}, which {name}.json does not"
    unfilled = eventually - ours - set(FILLED_BY_MASTER.get(name, ()))
    assert not unfilled, (f"{name}.json eventually requires {sorted(unfilled)}; the checker "
                          "neither requires them nor knows the master fills them")


def test_searcher_names_are_the_published_ones():
    names = set()
    for path in sorted(_schema_dir().glob("searcher-*.json")):
        const = json.loads(path.read_text(encoding="utf-8")).get("properties", {}).get("name", {})
        if isinstance(const, dict) and "const" in const:
            names.add(const["const"])
    assert names == set(schema.SEARCHERS) | set(schema.REMOVED_SEARCHERS)


def test_the_base_config_passes():
    _schema_dir()
    for name, (_, _, _, conf, _) in SECTIONS.items():
        assert _problems(conf) == [], name


_PROBES = {"integer": 3, "number": 2.5, "string": "probe", "boolean": True, "array": [1],
           "object": {"probe": 1}}


def _broken_values(prop: Mapping[str, Any]) -> List[Tuple[str, Any]]:
    """(what, value) pairs that break one constraint ``prop`` states."""
    out: List[Tuple[str, Any]] = []
    types = prop.get("type")
    types = [types] if isinstance(types, str) else list(types or [])
    if types:
        allowed = set(types) | ({"integer"} if "number" in types else set())
        out += [(f"a {kind} where {types} is allowed", value)
                for kind, value in _PROBES.items() if kind not in allowed]
    if "enum" in prop:
        out.append((f"a value not in {prop['enum']}", "not-in-the-enum"))
    for bound, delta in (("minimum", -1), ("maximum", 1), ("exclusiveMinimum", 0)):
        if bound in prop:
            out.append((f"{bound} {prop[bound]} broken", prop[bound] + delta))
    item_type = (prop.get("items") or {}).get("type") if isinstance(prop.get("items"), dict) else None
    if isinstance(item_type, str):
        wrong = next(v for k, v in _PROBES.items() if k != item_type and not
                     (item_type == "number" and k == "integer"))
        out.append((f"an item that is not {item_type}", [wrong]))
    return out


@pytest.mark.parametrize("name", list(SECTIONS))
def test_every_published_constraint_is_enforced(name):
    _, spec, required, conf, at = SECTIONS[name]
    published = _published(name)
    checked = 0
    for key, prop in published.get("properties", {}).items():
        if not isinstance(prop, dict) or "const" in prop:
            continue  # the searcher's name, the hyperparameter's type: what picks the section
        shown = _key_path(at + (key,))
        for what, value in _broken_values(prop):
            problems = _problems(_with(conf, at + (key,), value))
            assert any(f": {shown}" in line for line in problems), \
                f"{name}.json: {key} = {value!r} ({what}) passes the checker: {problems}"
            checked += 1
        types = prop.get("type")
        if key not in REFUSED and key not in required and (None in prop.get("enum", ()) or "null" in (
                [types] if isinstance(types, str) else types or [])):
            assert not [p for p in _problems(_with(conf, at + (key,), None)) if f": {shown}" in p], \
                f"{name}.json: {key}: null refused, though the schema allows it"
    compare = published.get("compareProperties")
    if compare:
        a, b = compare["a"], compare["b"]
        base_b = _at(conf, at)[b] if b in _at(conf, at) else 5
        broken = _with(_with(conf, at + (b,), base_b), at + (a,),
                       base_b if compare["type"] == "a<b" else base_b + 1)
        assert _problems(broken), f"{name}.json: {a} {compare['type']} {b} broken passes the checker"
        checked += 1
    if published.get("properties") and name not in ("environment-image-map",
                                                    "hyperparameter-const"):
        assert checked, f"{name}.json: no constraint probed"


def _key_path(keys: Sequence[Any]) -> str:
    """How a problem names the value at ``keys``: ``resources.devices[0].mode``."""
    out = ""
    for key in keys:
        out += f"[{key}]" if isinstance(key, int) else (f".{key}" if out else str(key))
    return out


def _at(conf: Mapping[str, Any], keys: Sequence[Any]) -> Any:
    node: Any = conf
    for key in keys:
        node = node[key]
    return node
