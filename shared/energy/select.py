"""Which energy sources a process builds: from the ``energy.sources`` hyperparameter, or
``ENERGY_SOURCES`` in the environment (which wins: a site sets it once for its nodes).

Rules (count each joule once): device sources (NVML) only for a process that owns GPUs,
node sources (RAPL, Redfish, IPMI, Prometheus) only in the node's reader (local rank 0).
"""
from __future__ import annotations

import importlib
import logging
import os
from typing import Any, List, Mapping, Optional, Sequence, Tuple, Union

from .sources.base import SourceUnavailable

log = logging.getLogger("shared.energy")

#: Every source, in priority order: when two measure the same component the first wins
#: (the meter drops the other's copy). Redfish before IPMI (same BMC figure, no fork per
#: sample); Prometheus last (a copy of some other instrument, scraped late).
SOURCE_ORDER = ("nvml", "rapl", "redfish", "ipmi", "prometheus")
DEVICE_SOURCES = frozenset({"nvml"})
#: Sources that auto-detection tries only when their variable is set: probing them
#: otherwise means network timeouts or forking ipmitool on every node.
AUTO_ONLY_WITH_ENV = {
    "redfish": "ENERGY_REDFISH_URL",
    "ipmi": "ENERGY_IPMI_CMD",
    "prometheus": "ENERGY_PROMETHEUS_URL",
}
_CLASSES = {
    "nvml": ("shared.energy.sources.nvml", "NvmlSource"),
    "rapl": ("shared.energy.sources.rapl", "RaplSource"),
    "redfish": ("shared.energy.sources.redfish", "RedfishSource"),
    "ipmi": ("shared.energy.sources.ipmi", "IpmiSource"),
    "prometheus": ("shared.energy.sources.prometheus", "PrometheusSource"),
}


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
    origin = "energy.sources hyperparameter"
    override = env.get("ENERGY_SOURCES", "").strip()
    if override:
        spec, origin = override, "ENERGY_SOURCES"
    if spec is None:
        spec = "auto"
    if isinstance(spec, str):
        items = [s.strip().lower() for s in spec.split(",") if s.strip()]
    elif isinstance(spec, (list, tuple)):
        if not all(isinstance(s, str) for s in spec):
            raise ValueError(f"{origin}: expected names of sources, got {spec!r}")
        items = [s.strip().lower() for s in spec if s.strip()]
    else:
        raise ValueError(f"{origin}: expected 'auto', a comma-separated string or a list of "
                         f"names, got {type(spec).__name__} {spec!r}")
    if items == ["auto"]:
        return list(SOURCE_ORDER), False
    if items in ([], ["none"]):
        return [], True
    unknown = [s for s in items if s not in _CLASSES]
    if unknown or "auto" in items or "none" in items:
        bad = unknown or [s for s in items if s in ("auto", "none")]
        raise ValueError(f"{origin}: unknown energy source(s) {bad} in {spec!r}; valid: "
                         f"'auto', 'none' (alone) or any of {', '.join(SOURCE_ORDER)}")
    return [s for s in SOURCE_ORDER if s in items], True


def _source_class(name: str) -> Any:
    module_name, class_name = _CLASSES[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name == module_name:
            raise SourceUnavailable(f"{name}: module {module_name} is not installed here")
        raise
    return getattr(module, class_name)


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
    for name in names:
        if name in DEVICE_SOURCES and not gpu_indices:
            if explicit:
                log.warning("energy source %s requested, but this process uses no GPU", name)
            continue
        if name not in DEVICE_SOURCES and not node_reader:
            continue  # another process on this node (local rank 0) reads it
        if not explicit and name in AUTO_ONLY_WITH_ENV and not env.get(AUTO_ONLY_WITH_ENV[name]):
            continue
        try:
            cls = _source_class(name)
            if name == "nvml":
                source = cls.from_env(env, options, gpu_indices=gpu_indices)
            else:
                source = cls.from_env(env, options)
        except SourceUnavailable as err:
            log.log(level, "energy source %s unavailable: %s", name, err)
            continue
        out.append(source)
    return out
