"""The energy meter: a set of sources, read together, with named windows (Zeus style).

The meter knows nothing of Determined or of ranks: it measures what *this process* was
given (its own GPUs, and node-level sources when it is the node's reader). Aggregation over
ranks and nodes is ``shared.energy.aggregate``.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

from .redact import energy_logger
from .sources.base import COMPONENTS, EnergySource, SourceUnavailable

log = energy_logger()


@dataclass(frozen=True)
class EnergySnapshot:
    """Energy measured by this process since ``EnergyMeter.start()``.

    Attributes:
        duration_s: seconds since start.
        joules: joules per component ("gpu", "cpu", "dram", "node"); a component no active
            source measures is absent (not zero).
        per_source: joules per component for each active source.
        coverage: fraction of good reads/samples per active source (0-1).
        sources: names of the active sources.
    """

    duration_s: float
    joules: Dict[str, float]
    per_source: Dict[str, Dict[str, float]]
    coverage: Dict[str, float]
    sources: List[str]


@dataclass(frozen=True)
class Window:
    """What happened between ``begin_window(name)`` and ``end_window(name)``."""

    name: str
    duration_s: float
    joules: Dict[str, float] = field(default_factory=dict)

    @property
    def total_j(self) -> float:
        """Sum of the components. Only meaningful when they do not overlap (no "node"
        component next to parts); ``aggregate.combine`` applies the full rule."""
        return sum(self.joules.values())


class EnergyMeter:
    """Reads a set of energy sources together.

    Args:
        sources: sources to open at ``start()``; their order is their priority when two
            measure the same component (``select.build_sources`` orders them).
        clock: monotonic clock in seconds.
        explicit: log unavailable sources as WARNING (they were asked for by name) rather
            than INFO (auto-detection). Default: the ``explicit`` attribute of ``sources``
            when it has one (``build_sources`` sets it), else True.
    """

    def __init__(self, sources: Sequence[EnergySource],
                 clock: Callable[[], float] = time.monotonic, *,
                 explicit: Optional[bool] = None) -> None:
        self._candidates = list(sources)
        self._clock = clock
        self._explicit = explicit if explicit is not None else bool(
            getattr(sources, "explicit", True))
        self._active: List[EnergySource] = []
        self._owned: Dict[str, List[str]] = {}  # source name -> components it reports
        self._last: Dict[str, Dict[str, float]] = {}
        self._start: Optional[float] = None
        self._windows: Dict[str, EnergySnapshot] = {}

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> "EnergyMeter":
        """Open every source; drop (with one log line each) those that cannot work here and
        those whose components are all measured by a higher-priority source."""
        if self._start is not None:
            raise RuntimeError("EnergyMeter.start() called twice")
        level = logging.WARNING if self._explicit else logging.INFO
        claimed: Dict[str, str] = {}
        for source in self._candidates:
            try:
                source.open()
            except SourceUnavailable as err:
                log.log(level, "energy source %s unavailable: %s", source.name, err)
                continue
            except Exception as err:  # a bug in a source must not stop training
                log.warning("energy source %s failed to open (%s: %s); skipped",
                            source.name, type(err).__name__, err)
                _close_quietly(source)
                continue
            first = self._safe_read(source) or {}
            mine = [c for c in first if c in COMPONENTS and c not in claimed]
            taken = [c for c in first if c in claimed]
            for comp in taken:
                # Two sources for one quantity (say IPMI and Redfish for node power): the
                # sum would count the same joules twice.
                log.warning("energy source %s also measures %r, already measured by %s: "
                            "ignoring it there to count each joule once",
                            source.name, comp, claimed[comp])
            if not mine:
                if not taken:
                    log.warning("energy source %s opened but reports no component (%s); "
                                "skipped", source.name, sorted(first) or "nothing")
                _close_quietly(source)
                continue
            for comp in mine:
                claimed[comp] = source.name
            self._owned[source.name] = mine
            self._active.append(source)
        self._start = self._clock()
        if self._active:
            log.info("energy sources active: %s",
                     " | ".join(s.describe() for s in self._active))
        else:
            log.info("energy: no source can measure anything in this process")
        return self

    def close(self) -> None:
        """Close every active source. Safe to call twice."""
        for source in self._active:
            _close_quietly(source)
        self._active = []

    def __enter__(self) -> "EnergyMeter":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def active_sources(self) -> List[EnergySource]:
        """Sources that opened and measure at least one component."""
        return list(self._active)

    # -- reading ----------------------------------------------------------------------------
    def _safe_read(self, source: EnergySource) -> Optional[Dict[str, float]]:
        # Sources do not raise for transient failures; a raise here is a bug in a source,
        # and must not stop training either: count it and use the last good values.
        try:
            values = {k: float(v) for k, v in source.read().items()}
        except Exception as err:
            source.health.record_failure(source.name, f"read() raised {type(err).__name__}: "
                                                      f"{err}")
            return self._last.get(source.name)
        self._last[source.name] = values
        return values

    def read(self) -> EnergySnapshot:
        """Energy since ``start()``, per component and per source."""
        if self._start is None:
            raise RuntimeError("EnergyMeter.read() before start()")
        joules: Dict[str, float] = {}
        per_source: Dict[str, Dict[str, float]] = {}
        for source in self._active:
            values = self._safe_read(source) or {}
            own = {c: values.get(c, 0.0) for c in self._owned[source.name]}
            per_source[source.name] = own
            for comp, j in own.items():
                joules[comp] = joules.get(comp, 0.0) + j
        return EnergySnapshot(
            duration_s=self._clock() - self._start,
            joules=joules,
            per_source=per_source,
            coverage={s.name: s.health.coverage for s in self._active},
            sources=[s.name for s in self._active],
        )

    # -- windows ----------------------------------------------------------------------------
    def begin_window(self, name: str) -> None:
        """Start measuring a named window (names must be unique among open windows)."""
        if name in self._windows:
            raise ValueError(f"energy window {name!r} is already open")
        self._windows[name] = self.read()

    def end_window(self, name: str) -> Window:
        """Close a window and return its duration and joules per component."""
        try:
            begin = self._windows.pop(name)
        except KeyError:
            raise ValueError(f"energy window {name!r} was never begun (open windows: "
                             f"{sorted(self._windows) or 'none'})") from None
        end = self.read()
        joules = {c: end.joules[c] - begin.joules.get(c, 0.0) for c in end.joules}
        return Window(name=name, duration_s=end.duration_s - begin.duration_s, joules=joules)


def _close_quietly(source: EnergySource) -> None:
    try:
        source.close()
    except Exception as err:  # closing is best effort; the process may be exiting
        log.debug("energy source %s: close failed: %s", source.name, err)
