"""Experiment config files and ``--set`` overrides as a local run reads them: one YAML reader
with Determined's semantics (ruamel.yaml, YAML 1.2, duplicate keys refused with both lines),
the fixed point a local run trains in a search space's place, and the overrides. The schema
these values are then checked against is ``shared.hparams``.
"""
from __future__ import annotations

import pathlib
import warnings
from typing import Any, Dict, Mapping, Sequence, Tuple

from ruamel.yaml import YAML
from ruamel.yaml.constructor import SafeConstructor
from ruamel.yaml.error import YAMLError

from shared.errors import ConfigError
from shared.hparams import LEGACY_TARGETS


# --------------------------------------------------------------------------- YAML
class YAMLSyntaxError(ConfigError):
    """Text that is not YAML at all (``--set`` then takes the value as a plain string)."""


class _DuplicateKey(Exception):
    def __init__(self, key: Any, line: int, first: int) -> None:
        super().__init__(f"duplicate key {key!r}")
        self.key, self.line, self.first = key, line, first


class _ConfigConstructor(SafeConstructor):
    """ruamel.yaml's safe constructor (YAML 1.2) that refuses a key given twice in one mapping
    with both lines. (ruamel refuses duplicates too, but names only the mapping's start and
    the second key; a merge key ``<<: *base`` may still be overridden by the mapping's own keys.)"""

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: Dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: the constructor refuses it with its own message
                continue
            line = key_node.start_mark.line + 1
            if first is not None:
                raise _DuplicateKey(key, line, first)
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _reader() -> YAML:
    # What Determined's CLI reads configs with (determined.common.util: YAML(typ="safe",
    # pure=True), YAML 1.2): one object per call, a YAML object is not thread-safe.
    reader = YAML(typ="safe", pure=True)
    reader.Constructor = _ConfigConstructor
    return reader


def parse_yaml(text: str, where: str) -> Any:
    """The one reader of YAML for configs and ``--set`` values, with Determined's semantics:
    YAML 1.2 as ruamel.yaml reads it (``yes``/``on`` are strings, ``010`` is 10, ``1:30`` is a
    string, ``2e-3`` and ``1E5`` are floats, ``0o10`` is 8), so that a file means here what
    it means to the cluster's CLI and trial; a key given twice in a mapping is refused. Errors
    name ``where`` (a file, or the ``--set`` item) and the lines.

    Raises:
        ConfigError: ``<where>: line 12: duplicate key 'lr' (first at line 5)``.
        YAMLSyntaxError: ``<where>: not valid YAML: ...``.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ruamel's future-warnings are about its own API
            return _reader().load(text)
    except _DuplicateKey as e:
        # on one line (a --set value) the line numbers say nothing
        lines = f"line {e.line}: " if "\n" in text.strip() else ""
        first = f" (first at line {e.first})" if lines else ""
        raise ConfigError(f"{where}: {lines}duplicate key {e.key!r}{first}") from None
    except YAMLError as e:
        raise YAMLSyntaxError(f"{where}: not valid YAML: {e}") from None


# --------------------------------------------------------------------------- experiment configs
HP_TYPES = ("const", "int", "double", "log", "categorical")


def read_config_file(path: str | pathlib.Path, missing: str = "{path}: no such file") -> Dict[str, Any]:
    """An experiment config file as a mapping (``parse_yaml``); ``missing`` is the message for
    a file that does not exist."""
    p = pathlib.Path(path)
    if not p.is_file():
        raise ConfigError(missing.format(path=p))
    conf = parse_yaml(p.read_text(encoding="utf-8"), str(p))
    if not isinstance(conf, dict):
        raise ConfigError(f"{p}: an experiment config must be a YAML mapping, got {type(conf).__name__}")
    return conf


def load_experiment_config(path: str | pathlib.Path) -> Dict[str, Any]:
    """Read a Determined experiment config YAML, with errors that name the file."""
    conf = read_config_file(path, missing="experiment config {path} does not exist")
    if not isinstance(conf.get("hyperparameters"), dict):
        raise ConfigError(f"{path}: no 'hyperparameters' mapping")
    return conf


def point_from_space(space: Mapping[str, Any], where: str, prefix: str = "") -> Dict[str, Any]:
    """Concrete values from a Determined hyperparameter section.

    A plain value or ``{type: const, val: v}`` gives v. For a search space (int, double, log,
    categorical) a local run has no searcher, so it takes a fixed, stated point: the middle of
    the range (geometric middle for ``log``) or the first category.
    """
    out: Dict[str, Any] = {}
    for key, spec in space.items():
        name = f"{prefix}{key}"
        if isinstance(spec, dict) and "type" in spec:
            t = spec["type"]
            try:
                if t == "const":
                    out[key] = spec["val"]
                elif t == "int":
                    out[key] = int(round((spec["minval"] + spec["maxval"]) / 2))
                elif t == "double":
                    out[key] = (spec["minval"] + spec["maxval"]) / 2
                elif t == "log":
                    base = spec.get("base", 10)
                    out[key] = base ** ((spec["minval"] + spec["maxval"]) / 2)
                elif t == "categorical":
                    out[key] = spec["vals"][0]
                else:
                    raise ConfigError(f"{where}: hyperparameter '{name}' has unknown type '{t}'; "
                                      f"expected one of {', '.join(HP_TYPES)}")
            except KeyError as e:
                raise ConfigError(f"{where}: hyperparameter '{name}' of type '{t}' lacks "
                                  f"'{e.args[0]}'") from None
        elif isinstance(spec, dict):
            out[key] = point_from_space(spec, where, prefix=f"{name}.")
        else:
            out[key] = spec
    return out


SEARCHED_TYPES = ("int", "double", "log", "categorical")


def searched_specs(space: Mapping[str, Any], prefix: str = "") -> Dict[str, Mapping[str, Any]]:
    """The searched hyperparameters of a Determined hyperparameter section (not ``const``),
    by dotted name (``energy.x`` for nested sections), in the file's order."""
    out: Dict[str, Mapping[str, Any]] = {}
    for key, spec in space.items():
        if isinstance(spec, dict) and "type" in spec:
            if spec["type"] in SEARCHED_TYPES:
                out[f"{prefix}{key}"] = spec
        elif isinstance(spec, dict):
            out.update(searched_specs(spec, prefix=f"{prefix}{key}."))
    return out


def describe_spec(spec: Mapping[str, Any]) -> Tuple[str, str]:
    """A searched hyperparameter's space and how ``point_from_space`` picks from it, in words
    (``("int 200..2000", "the middle")``); kept beside it so the two say the same."""
    t = spec["type"]
    if t in ("int", "double"):
        return f"{t} {spec['minval']}..{spec['maxval']}", "the middle"
    if t == "log":
        return (f"log, base {spec.get('base', 10)}, exponents {spec['minval']}..{spec['maxval']}",
                "the geometric middle")
    return f"categorical {', '.join(str(v) for v in spec['vals'])}", "the first"


def _parse_value(raw: str, item: str) -> Any:
    """A command-line value, read as YAML by the config files' reader (``parse_yaml``: ``2e-3``
    is a float there too). Text that is not YAML at all (``/data/a: b``) is taken as typed, a
    string; a duplicated key (``energy={sources: a, sources: b}``) is refused."""
    if not raw.strip():
        return None
    try:
        return parse_yaml(raw, f"--set {item!r}")
    except YAMLSyntaxError:
        return raw


def apply_overrides(hp: Dict[str, Any], overrides: Sequence[str]) -> Dict[str, Any]:
    """``--set key=value`` (values parsed as YAML: 64, 1e-3, true, [64, 64], null); dotted keys
    reach nested sections (``energy.sources=nvml``). Unknown keys are caught by ``resolve``.

    The target can be said two ways (``target_miou: X`` or ``target_metric`` +
    ``target_value``, see ``resolve_target``); an override in one way replaces the config's
    target said the other way, and an override of ``target_metric`` alone drops the config's
    ``target_value`` (it was the old metric's), rather than making them disagree."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in hp.items()}
    keys = [item.split("=", 1)[0].strip() for item in overrides]
    if any(k in LEGACY_TARGETS for k in keys):
        for k in ("target_metric", "target_value"):
            if k not in keys:
                out.pop(k, None)
    if any(k in ("target_metric", "target_value") for k in keys):
        for k in LEGACY_TARGETS:
            if k not in keys:
                out.pop(k, None)
        if "target_value" not in keys:
            out.pop("target_value", None)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"--set {item!r}: empty key")
        value = _parse_value(raw, item)
        parts = key.split(".")
        node = out
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {} if node.get(part) is None else node[part]
                if not isinstance(node[part], dict):
                    raise ConfigError(f"--set {item!r}: '{part}' is not a section")
            node = node[part]
        node[parts[-1]] = value
    return out
