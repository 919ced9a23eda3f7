"""The energy meter: a set of sources, read together, with named windows (Zeus style) and
phases that tile the run.

The meter knows nothing of Determined or of ranks: it measures what *this process* was
given (its own GPUs, and node-level sources when it is the node's reader). Aggregation over
ranks and nodes is ``shared.energy.aggregate``.

One window for every source: sources open one after another, and one may take seconds to
(a BMC's first answer); a sampling source that opened first would otherwise count the
time the others took to open, while ``duration_s`` did not (+61% measured with a 10 s
IPMI open). So ``start()`` opens them all, then takes one instant as the start and reads
every source there; each source's energy is counted from that reading, and ``duration_s``
from that instant. The readings follow each other within microseconds for counters and
integrals; a source that asks a far end at read time (Prometheus) adds that query's
latency.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from .redact import energy_logger
from .snapshot import EnergySnapshot
from .sources.base import COMPONENTS, EnergySource, RawCounter, SourceUnavailable
from .sources.counters import counter_step

log = energy_logger()

#: First retry of a source that was configured explicitly but failed at start (a BMC still
#: booting, a network not up yet): soon enough that a BMC a minute late loses about a
#: minute, rare enough that a dead one costs the training loop little (each try can block a
#: report for up to the source's timeout).
RETRY_FIRST_S = 30.0
#: The interval doubles after each failed try up to this: a source down for the whole run
#: then costs one timeout per 10 minutes.
RETRY_MAX_S = 600.0


@dataclass
class _Pending:
    """A source asked for by name (or by its URL/command variable) that failed at start."""

    source: EnergySource
    next_at: float
    interval_s: float
    tries: int = 1


@dataclass(frozen=True)
class Gap:
    """What ``EnergyMeter.count_gap`` counted: the energy between an interrupted run's last
    report and this meter's start.

    Attributes:
        elapsed_s: the wall-clock seconds of the gap.
        joules: per source that could measure it, joules per component.
        missed: per source that could not, why (its energy over the gap is missing, and its
            coverage says so).
    """

    elapsed_s: float
    joules: Dict[str, Dict[str, float]] = field(default_factory=dict)
    missed: Dict[str, str] = field(default_factory=dict)

    @property
    def counted(self) -> bool:
        return bool(self.joules)


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


#: The phase from ``start()`` to the first ``mark_phase``.
FIRST_PHASE = "setup"


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
                 explicit: Optional[bool] = None,
                 synchronize: Optional[Callable[[], None]] = None) -> None:
        self._candidates = list(sources)
        self._clock = clock
        # Waits until the device has run what was queued (``torch.cuda.synchronize`` for a
        # trial on a GPU; the library itself imports no torch): a GPU runs kernels after the
        # host queued them, so without it a boundary taken right after a training loop would
        # charge the tail of the training work to the window or phase that follows. Called
        # at window and phase boundaries only (a report already waits for its loss).
        self._synchronize = synchronize
        self._explicit = explicit if explicit is not None else bool(
            getattr(sources, "explicit", True))
        self._active: List[EnergySource] = []
        self._owned: Dict[str, List[str]] = {}  # source name -> components it reports
        self._last: Dict[str, Dict[str, float]] = {}
        self._start: Optional[float] = None
        self._windows: Dict[str, EnergySnapshot] = {}
        self._claimed: Dict[str, str] = {}  # component -> source measuring it
        self._pending: List[_Pending] = []  # explicit sources that failed at start
        self._since: Dict[str, float] = {}  # late sources: clock time they came up
        # Each source's reading at the common start (or when it came up late): its energy
        # is counted from there.
        self._base: Dict[str, Dict[str, float]] = {}
        self._base_bridged: Dict[str, float] = {}
        # The absolute counters (``EnergySource.raw_counters``) at the base reading, and at
        # the last reading: what ``count_gap`` and the next process difference.
        self._base_raw: Dict[str, Dict[str, RawCounter]] = {}
        self._last_raw: Dict[str, Dict[str, RawCounter]] = {}
        # Phases, per source: the boundaries not folded yet ([clock time, the phase of the
        # segment that starts there, the source's cumulative reading there or None while it
        # is not known]), and the joules of the folded segments per phase. A sampled source's
        # reading at a boundary is known once a sample after it arrived (``energy_at``):
        # each interval's energy is split over the phases by time, whenever it came in.
        self._phase = FIRST_PHASE
        self._bounds: Dict[str, List[List[Any]]] = {}
        self._folded: Dict[str, Dict[str, Dict[str, float]]] = {}
        self._phase_secs: Dict[str, float] = {}  # closed segments' seconds per phase
        self._phase_t0: Optional[float] = None    # clock time the running phase began
        self._marked = False

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> "EnergyMeter":
        """Open every source; drop (with one log line each) those that cannot work here and
        those whose components are all measured by a higher-priority source. A source that
        was configured explicitly (named in the spec, or its URL/command variable set) and
        cannot open is retried at report time (``RETRY_FIRST_S`` doubling to
        ``RETRY_MAX_S``)."""
        if self._start is not None:
            raise RuntimeError("EnergyMeter.start() called twice")
        for source in self._candidates:
            try:
                source.open()
            except SourceUnavailable as err:
                if self._configured(source):
                    # next_at is set below, from the common start
                    self._pending.append(_Pending(source, 0.0, RETRY_FIRST_S))
                    log.warning("energy source %s unavailable: %s. It was configured for "
                                "this run: fix that and it is picked up, it is retried at "
                                "report time (first in %g s, then doubling to every %g s); "
                                "until it comes up its energy is missing (not zero)",
                                source.name, err, RETRY_FIRST_S, RETRY_MAX_S)
                else:
                    log.info("energy source %s unavailable: %s", source.name, err)
                continue
            except Exception as err:  # a bug in a source must not stop training
                log.warning("energy source %s failed to open (%s: %s); skipped",
                            source.name, type(err).__name__, err)
                _close_quietly(source)
                continue
            self._activate(source)
        # The common start: after the last source opened, every source read here (see the
        # module docstring).
        self._start = self._clock()
        for item in self._pending:
            item.next_at = self._start + RETRY_FIRST_S
        for source in self._active:
            self._set_base(source)
        if self._active:
            log.info("energy sources active: %s",
                     " | ".join(s.describe() for s in self._active))
        else:
            log.info("energy: no source can measure anything in this process")
        return self

    def _configured(self, source: EnergySource) -> bool:
        # Named in the spec (explicit), or, under auto, built only because its variable
        # (ENERGY_REDFISH_URL, ENERGY_IPMI_CMD, ...) is set: someone configured it for this
        # node, so its absence is a fault to fix, not a fact of the hardware.
        return self._explicit or bool(getattr(source, "auto_env", None))

    def _activate(self, source: EnergySource) -> bool:
        """Take an opened source's first reading and claim its components; False (closed)
        when it measures nothing a higher-priority source does not."""
        first = self._safe_read(source) or {}
        mine = [c for c in first if c in COMPONENTS and c not in self._claimed]
        taken = [c for c in first if c in self._claimed]
        for comp in taken:
            # Two sources for one quantity (say IPMI and Redfish for node power): the
            # sum would count the same joules twice.
            log.warning("energy source %s also measures %r, already measured by %s: "
                        "ignoring it there to count each joule once",
                        source.name, comp, self._claimed[comp])
        if not mine:
            if not taken:
                log.warning("energy source %s opened but reports no component (%s); "
                            "skipped", source.name, sorted(first) or "nothing")
            _close_quietly(source)
            return False
        for comp in mine:
            self._claimed[comp] = source.name
        self._owned[source.name] = mine
        self._active.append(source)
        # Counted from here if it came up late; start() reads it again at the common start.
        self._set_base(source, first)
        return True

    def _set_base(self, source: EnergySource, reading: Optional[Dict[str, float]] = None) -> None:
        base = reading if reading is not None else (self._safe_read(source) or {})
        self._base[source.name] = base
        self._base_bridged[source.name] = _bridged(source)
        self._base_raw[source.name] = self._last_raw.get(source.name, {})
        # Its phases start here, in the running phase (the same dict as the base: count_gap
        # moves both).
        self._bounds[source.name] = [[self._clock(), self._phase, base]]
        self._folded[source.name] = {}

    def _retry_pending(self) -> None:
        """Try again the configured sources that failed at start, when their time has come."""
        if not self._pending or self._start is None:
            return
        now = self._clock()
        still: List[_Pending] = []
        for item in self._pending:
            if now < item.next_at:
                still.append(item)
                continue
            try:
                item.source.open()
            except Exception as err:  # SourceUnavailable, or a bug: either way, try later
                item.tries += 1
                item.interval_s = min(RETRY_MAX_S, item.interval_s * 2.0)
                item.next_at = self._clock() + item.interval_s
                log.info("energy source %s still unavailable after %d tries (%s); next try "
                         "in %g s", item.source.name, item.tries, err, item.interval_s)
                still.append(item)
                continue
            up = self._clock()
            if self._activate(item.source):
                self._since[item.source.name] = up
                log.warning("energy source %s is up now (%s), %.0f s after the start: "
                            "measured from now on; the energy before is missing (not zero) "
                            "and its coverage counts that time as missed",
                            item.source.name, item.source.describe(), up - self._start)
        self._pending = still

    @property
    def pending_sources(self) -> List[EnergySource]:
        """Configured sources that failed at start and are still being retried."""
        return [item.source for item in self._pending]

    def close(self) -> None:
        """Close every active source. Safe to call twice."""
        for source in self._active:
            _close_quietly(source)
        self._active = []
        self._pending = []

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
        try:
            self._last_raw[source.name] = dict(source.raw_counters())
        except Exception as err:  # a bug in a source must not stop training
            log.debug("energy source %s: raw_counters() failed: %s", source.name, err)
            self._last_raw[source.name] = {}
        return values

    def raw_counters(self) -> Dict[str, Dict[str, int]]:
        """Per active source with absolute counters, their values at the last reading
        (``read()``): what a later process passes to ``count_gap``. JSON-ready."""
        return {name: {key: int(c.value) for key, c in raw.items()}
                for name, raw in self._last_raw.items()
                if raw and name in self._owned}

    def count_gap(self, previous: Mapping[str, Mapping[str, int]], elapsed_s: float) -> Gap:
        """Count the energy between an earlier process's reading ``previous`` (its
        ``raw_counters()``) and this meter's start, ``elapsed_s`` wall-clock seconds before
        it: for a resumed run, what was spent between the interrupted run's last report and
        the restart (the end of its training, the crash, the restart's start-up), which no
        report of either run contains.

        Only a source whose every component is an absolute counter read in both processes
        can tell (RAPL, NVML energy counters), and only on the same node and boot (the
        caller checks that); a counter that went back implausibly (``counter_step``: a
        driver reload, a reboot) makes its source miss the gap. When at least one source
        counted it, the meter's window is moved back by ``elapsed_s`` (``duration_s`` then
        spans the gap) and the joules are charged to the first phase; a source that could
        not count it has its coverage reduced by that time, as a source that came up late.
        Must be called before the first ``mark_phase``.
        """
        if self._start is None:
            raise RuntimeError("EnergyMeter.count_gap() before start()")
        if self._marked or self._phase != FIRST_PHASE:
            raise RuntimeError("EnergyMeter.count_gap() after a phase mark: call it right after start()")
        elapsed_s = float(elapsed_s)
        if not math.isfinite(elapsed_s) or elapsed_s < 0:
            # a hand-over from the future, or no time at all: nothing can be differenced
            return Gap(elapsed_s=0.0, missed={s.name: f"the gap is {elapsed_s!r} s"
                                              for s in self._active})
        joules: Dict[str, Dict[str, float]] = {}
        missed: Dict[str, str] = {}
        for source in self._active:
            name = source.name
            now_raw = self._base_raw.get(name) or {}
            before = previous.get(name)
            if not now_raw:
                missed[name] = "it has no absolute counter (sampled power or a far end's series)"
                continue
            if not before:
                missed[name] = "the interrupted run recorded no reading of it"
                continue
            if set(before) != set(now_raw):
                missed[name] = (f"it reads other counters now ({', '.join(sorted(now_raw))}) than "
                                f"then ({', '.join(sorted(before))})")
                continue
            per: Dict[str, float] = {}
            for key, counter in now_raw.items():
                then = before[key]
                if not isinstance(then, int) or isinstance(then, bool):
                    missed[name] = f"counter {key} was recorded as {then!r}, not an integer"
                    break
                step = counter_step(then, counter.value, elapsed_s=elapsed_s,
                                    joules_per_unit=counter.joules_per_unit,
                                    max_power_w=counter.max_power_w, modulus=counter.modulus)
                if not step.counted:
                    missed[name] = f"counter {key}: {step.why} (a {step.kind} reading)"
                    break
                per[counter.component] = (per.get(counter.component, 0.0)
                                          + step.delta * counter.joules_per_unit)
            else:
                joules[name] = {c: j for c, j in per.items() if c in self._owned[name]}
        if joules:
            real_start = self._start
            self._start -= elapsed_s
            for name, per in joules.items():
                base = self._base[name]
                for comp, j in per.items():
                    base[comp] = base.get(comp, 0.0) - j
            for name in missed:
                if name in self._owned:
                    self._since.setdefault(name, real_start)
        return Gap(elapsed_s=elapsed_s, joules=joules, missed=missed)

    def read(self) -> EnergySnapshot:
        """Energy since ``start()``, per component and per source."""
        if self._start is None:
            raise RuntimeError("EnergyMeter.read() before start()")
        self._retry_pending()
        joules: Dict[str, float] = {}
        per_source: Dict[str, Dict[str, float]] = {}
        phases: Dict[str, Dict[str, float]] = {}
        for source in self._active:
            values = self._safe_read(source) or {}
            base = self._base.get(source.name, {})
            own = {c: values.get(c, 0.0) - base.get(c, 0.0) for c in self._owned[source.name]}
            per_source[source.name] = own
            for comp, j in own.items():
                joules[comp] = joules.get(comp, 0.0) + j
            for phase, per in self._source_phases(source, values).items():
                into = phases.setdefault(phase, {})
                for comp, j in per.items():
                    into[comp] = into.get(comp, 0.0) + j
        now = self._clock()
        phase_s = dict(self._phase_secs)
        began = self._start if self._phase_t0 is None else self._phase_t0
        phase_s[self._phase] = phase_s.get(self._phase, 0.0) + max(0.0, now - began)
        utils = [u for u in (_utilisation(s) for s in self._active) if u is not None]
        return EnergySnapshot(
            duration_s=now - self._start,
            joules=joules,
            per_source=per_source,
            coverage={s.name: self._coverage(s, now) for s in self._active},
            sources=[_attr(s, "label", s.name) for s in self._active],
            bridged_s={s.name: max(0.0, _bridged(s) - self._base_bridged.get(s.name, 0.0))
                       for s in self._active},
            lag_s={s.name: float(_attr(s, "lag_s", 0.0)) for s in self._active},
            phases=phases,
            phase_s=phase_s,
            gpu_util_pct=sum(utils) / len(utils) if utils else None,
        )

    def _source_phases(self, source: EnergySource, values: Mapping[str, float]
                       ) -> Dict[str, Dict[str, float]]:
        """The source's joules per phase up to ``values`` (its reading now), its own
        components only: the folded segments, then each segment still open. A boundary whose
        reading is not known yet (a sampled source's, before a sample after it came in) takes
        the reading now: the energy known so far is before it, none after it yet."""
        name = source.name
        bounds, folded = self._bounds[name], self._folded[name]
        owned = self._owned[name]
        for b in bounds:
            if b[2] is None:
                try:
                    b[2] = source.energy_at(b[0])
                except Exception as err:  # a bug in a source must not stop training
                    log.debug("energy source %s: energy_at() failed: %s", name, err)
        # Fold the segments whose both ends are known, and let the source forget before.
        while len(bounds) >= 2 and bounds[0][2] is not None and bounds[1][2] is not None:
            (t0, phase, e0), (_, _, e1) = bounds[0], bounds[1]
            into = folded.setdefault(phase, {})
            for comp in owned:
                into[comp] = into.get(comp, 0.0) + e1.get(comp, 0.0) - e0.get(comp, 0.0)
            bounds.pop(0)
            try:
                source.release(bounds[0][0])
            except Exception as err:
                log.debug("energy source %s: release() failed: %s", name, err)
        out = {p: dict(j) for p, j in folded.items()}
        for i, (_, phase, e0) in enumerate(bounds):
            start = e0 if e0 is not None else values
            end = bounds[i + 1][2] if i + 1 < len(bounds) else values
            end = end if end is not None else values
            into = out.setdefault(phase, {})
            for comp in owned:
                into[comp] = into.get(comp, 0.0) + end.get(comp, 0.0) - start.get(comp, 0.0)
        return out

    def _coverage(self, source: EnergySource, now: float) -> float:
        try:
            covered = float(source.coverage())
        except Exception as err:  # a bug in a source must not stop training
            log.debug("energy source %s: coverage() failed: %s", source.name, err)
            covered = source.health.coverage
        since = self._since.get(source.name)
        if since is None or self._start is None or now <= self._start:
            return covered
        # Came up late: the time before it did is as missed as a failed sample.
        return covered * max(0.0, now - since) / (now - self._start)

    # -- phases -----------------------------------------------------------------------------
    @property
    def phase(self) -> str:
        """The running phase (``FIRST_PHASE`` until the first ``mark_phase``)."""
        return self._phase

    def mark_phase(self, following: str, *, ended: Optional[str] = None) -> None:
        """Close the running phase at one reading and start ``following`` there.

        Phases tile the time from ``start()``: every joule is in exactly one, so per
        component they sum to the total (named windows may overlap or leave gaps, and would
        not). ``ended`` charges the segment that ends here to another phase than the one it
        was opened as: for a phase whose start is only known at its end (Determined tells
        the ranks other than the chief of a checkpoint only once it is over).
        """
        self.sync()
        snap = self.read()
        closing = ended if ended is not None else self._phase
        at = self._start + snap.duration_s  # the clock time of that reading
        for source in self._active:
            bounds = self._bounds[source.name]
            bounds[-1][1] = closing  # the segment that ends here is charged to ``closing``
            # A source read at this moment knows its energy here; a sampled one knows it once
            # a sample after this instant came in (``energy_at``, resolved in ``read``).
            lagging = _lagging(source)
            reading = None if lagging else dict(self._last.get(source.name) or {})
            bounds.append([at, following, reading])
        began = self._start if self._phase_t0 is None else self._phase_t0
        self._phase_secs[closing] = self._phase_secs.get(closing, 0.0) + max(0.0, at - began)
        self._phase_t0 = at
        self._phase = following
        self._marked = True

    # -- windows ----------------------------------------------------------------------------
    def sync(self) -> None:
        """Wait for the device's queued work (the ``synchronize`` given, if any)."""
        if self._synchronize is not None:
            self._synchronize()

    def begin_window(self, name: str, sync_execution: bool = True) -> None:
        """Start measuring a named window (names must be unique among open windows); with
        ``sync_execution``, after the device has run what was queued before it."""
        if name in self._windows:
            raise ValueError(f"energy window {name!r} is already open")
        if sync_execution:
            self.sync()
        self._windows[name] = self.read()

    def end_window(self, name: str, sync_execution: bool = True) -> Window:
        """Close a window and return its duration and joules per component; with
        ``sync_execution``, once the device has run the window's queued work."""
        try:
            begin = self._windows.pop(name)
        except KeyError:
            raise ValueError(f"energy window {name!r} was never begun (open windows: "
                             f"{sorted(self._windows) or 'none'})") from None
        if sync_execution:
            self.sync()
        end = self.read()
        joules = {c: end.joules[c] - begin.joules.get(c, 0.0) for c in end.joules}
        return Window(name=name, duration_s=end.duration_s - begin.duration_s, joules=joules)


def _lagging(source: EnergySource) -> bool:
    """Whether the source's figure trails the present and it tells its energy at a past
    instant (``energy_at``): a sampled source."""
    try:
        return bool(source.lags)
    except Exception as err:  # a bug in a source must not stop training
        log.debug("energy source %s: lags failed: %s", source.name, err)
        return False


def _bridged(source: EnergySource) -> float:
    try:
        return float(source.bridged_s())
    except Exception as err:  # a bug in a source must not stop training
        log.debug("energy source %s: bridged_s() failed: %s", source.name, err)
        return 0.0


def _attr(source: EnergySource, attr: str, default: Any) -> Any:
    """A display property of a source (``label``, ``lag_s``), its default when it fails: a
    bug in one must not stop training."""
    try:
        return getattr(source, attr)
    except Exception as err:
        log.debug("energy source %s: %s failed: %s", source.name, attr, err)
        return default


def _utilisation(source: EnergySource) -> Optional[float]:
    """A source's mean GPU utilisation since it opened, % (None: it does not sample one, or
    has no sample yet); a bug in one must not stop training."""
    fn = getattr(source, "utilisation_pct", None)
    if fn is None:
        return None
    try:
        return fn()
    except Exception as err:
        log.debug("energy source %s: utilisation_pct() failed: %s", source.name, err)
        return None


def _close_quietly(source: EnergySource) -> None:
    try:
        source.close()
    except Exception as err:  # closing is best effort; the process may be exiting
        log.debug("energy source %s: close failed: %s", source.name, err)
