"""Which energy sources a process builds: from the ``energy.sources`` hyperparameter, or
``ENERGY_SOURCES`` in the environment (which wins: a site sets it once for its nodes).

Rules (count each joule once): device sources (NVML) only for a process that owns GPUs,
node sources (RAPL, Redfish, IPMI, Prometheus) only in the node's reader (local rank 0).
Which source is which, their order and when ``auto`` tries them come from the sources'
declarations (``shared.energy.sources``), not from tables here.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Dict, FrozenSet, List, Mapping, Optional, Sequence, Tuple, Union

from .errors import SourceUnavailable
from .general import split_spec
from .redact import energy_logger
from .sources import registered_sources

log = energy_logger()


# SOURCE_ORDER, DEVICE_SOURCES and AUTO_ONLY_WITH_ENV are read by the packager and the tests.
# They are derived from the sources' declarations on every access (PEP 562), not frozen at
# import, so that a source registered later (a site's own, a test's) is in them.
def _source_order() -> Tuple[str, ...]:
    """Every source, in priority order: when two measure the same component the first wins
    (the meter drops the other's copy)."""
    return tuple(cls.name for cls in registered_sources())


def _device_sources() -> FrozenSet[str]:
    """Sources read per rank, for the GPUs the rank owns."""
    return frozenset(cls.name for cls in registered_sources() if cls.scope == "device")


def _auto_only_with_env() -> Dict[str, str]:
    """Sources that auto-detection tries only when their variable is set."""
    return {cls.name: cls.auto_env for cls in registered_sources() if cls.auto_env}


_DERIVED = {"SOURCE_ORDER": _source_order, "DEVICE_SOURCES": _device_sources,
            "AUTO_ONLY_WITH_ENV": _auto_only_with_env}


def __getattr__(name: str) -> Any:
    if name in _DERIVED:
        return _DERIVED[name]()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class SourceList(list):
    """A list of sources that remembers whether they were asked for by name (``explicit``),
    so that ``EnergyMeter`` logs an unavailable one as a WARNING rather than INFO."""

    explicit: bool = False


def parse_spec(spec: Union[str, Sequence[str], None],
               env: Mapping[str, str] = os.environ) -> Tuple[List[str], bool]:
    """Resolve the requested source names.

    Args:
        spec: "auto", a comma-separated string ("nvml,rapl"), a list of names, or "none".
        env: ``ENERGY_SOURCES``, when set and not empty, replaces ``spec``.

    Returns:
        (names in priority order, explicit) where explicit is False for "auto".

    Raises:
        ValueError: an unknown name; the message lists the valid ones and where the bad
            value came from.
    """
    items, origin = split_spec(spec, env)
    order = _source_order()
    if items == ["auto"]:
        return list(order), False
    if items in ([], ["none"]):
        return [], True
    unknown = [s for s in items if s not in order]
    if unknown or "auto" in items or "none" in items:
        bad = unknown or [s for s in items if s in ("auto", "none")]
        raise ValueError(f"{origin}: unknown energy source(s) {bad} in {spec!r}; valid: "
                         f"'auto', 'none' (alone) or any of {', '.join(order)}")
    return [s for s in order if s in items], True


def build_sources(spec: Union[str, Sequence[str], None] = "auto", *,
                  env: Mapping[str, str] = os.environ,
                  gpu_indices: Sequence[int] = (),
                  node_reader: bool,
                  options: Optional[Mapping[str, Any]] = None) -> SourceList:
    """Construct (not open) the energy sources this process should read.

    Args:
        spec: see ``parse_spec``.
        env: environment for the sources' settings (URLs, commands, roots).
        gpu_indices: CUDA device indices this process trains on; none -> no NVML.
        node_reader: True in one process per node (local rank 0): node sources only there.
        options: the ``energy`` hyperparameter dict, passed to every source.

    Returns:
        A ``SourceList`` in priority order; ``EnergyMeter.start()`` opens them and keeps
        those that work.
    """
    names, explicit = parse_spec(spec, env)
    options = dict(options or {})
    level = logging.WARNING if explicit else logging.INFO
    out = SourceList()
    out.explicit = explicit
    classes = {cls.name: cls for cls in registered_sources()}
    for name in names:
        cls = classes[name]
        if cls.scope == "device" and not gpu_indices:
            if explicit:
                log.warning("energy source %s requested, but this process uses no GPU", name)
            continue
        if cls.scope != "device" and not node_reader:
            continue  # another process on this node (local rank 0) reads it
        if not explicit and cls.auto_env and not env.get(cls.auto_env):
            continue
        try:
            if cls.scope == "device":
                source = cls.from_env(env, options, gpu_indices=gpu_indices)
            else:
                source = cls.from_env(env, options)
        except SourceUnavailable as err:
            # Asked for by name, or configured for this node by its variable (its URL or
            # command set): that it cannot be used is a fault to fix, not a fact of the
            # hardware, so it is a warning, with the reason.
            configured = bool(cls.auto_env and env.get(cls.auto_env))
            if configured and not explicit:
                log.warning("energy source %s unavailable: %s (it is configured for this node: "
                            "%s is set; its energy is not measured until that is fixed)",
                            name, err, cls.auto_env)
            else:
                log.log(level, "energy source %s unavailable: %s", name, err)
            continue
        out.append(source)
    return out
