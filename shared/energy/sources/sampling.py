"""Energy from power samples: one sampling thread, trapezoidal integration.

``PowerSampler`` is the one integrator, and ``SampledPowerSource`` the one base of every
source that can only read *power*: IPMI DCMI and Redfish, and NVML for its GPUs without an
energy counter. Sources with a hardware energy counter (RAPL, NVML's counter) do not need
it; Prometheus integrates the series the site already stored, not samples of its own.

How it samples, and what its figures mean:

- **A fixed-rate schedule.** Samples are due every ``period_s`` from the first one (deadlines
  on a grid, not a pause after each call): a call that takes longer than a period is followed
  by the next due deadline, so a slow far end (IPMI over lanplus, 10 s a call) stretches each
  interval to its call time, no more. After a failure the next try comes one period later;
  after more than ``BACKOFF_AFTER`` failures in a row the pauses double, up to
  ``max_backoff_s`` (default 4 periods): a BMC that recovers is sampled again within that,
  however long it failed.
- **One last sample at ``stop()``**, so that the integral reaches the end of the run; a run
  that ends during a fault is integrated to its last good sample, and said so.
- **A reading is plausible or it is missing.** Zero or negative watts from a running node,
  a non-number, or more than the source's ceiling (``MAX_NODE_POWER_W`` by default) is a
  failed sample, warned once with the value.
- **Bridging.** The next good sample closes a hole with a straight line (the trapezoid, as for
  any interval), however long it is and however many faults lie in it: a node that was running
  drew power all along, and zero is the one value known to be wrong. The time so bridged is
  reported (``bridged_s``); an interval is bridged only when samples failed inside it (a slow
  but healthy source bridges nothing).
- **Coverage is time.** ``coverage()`` is the share of the time since the first sample that
  was measured: every interval between consecutive good samples, except those in which samples
  failed and that are longer than ``max_gap_s`` (3 periods by default: a missed sample among
  good ones is bridged at the source's own resolution, an outage is a guess), and except the
  time since the last good sample once samples fail for longer than that.
- **Lag.** ``energy_j()`` is the integral up to the latest good sample; ``lag_s()`` is how long
  ago that was.
- **Energy at a past instant** (``energy_at``): the integral's value at any time between the
  first and the latest good sample, interpolated linearly within the interval around it (its
  energy spread evenly over its time). The meter splits the energy over its phases with it, by
  their overlap with each interval, whenever the interval's closing sample arrived.

Bias, stated once for all these sources: the trapezoidal rule is exact for power that varies
linearly between samples; spikes shorter than the period are smoothed or missed. On the H100
the team measured NVML power sampled at 50 ms reading 5-10% under the NVML energy counter,
which is why the counter is always preferred. A BMC refreshes its reading every few seconds:
sampling faster only repeats the same value (harmless, the integral is unchanged).
"""
from __future__ import annotations

import abc
import bisect
import math
import threading
import time
from typing import Callable, Dict, List, Optional, Tuple

from ..redact import energy_logger
from ..schema import Param, Positive
from .base import MAX_NODE_POWER_W, EnergySource, SourceHealth

log = energy_logger()

#: ``max_backoff_s`` by default: this many sample periods at most between two tries
MAX_BACKOFF_PERIODS = 4.0
#: failures in a row retried one period later before the pauses grow
BACKOFF_AFTER = 3


def plausible_watts(ceiling_w: float = MAX_NODE_POWER_W) -> Callable[[float], Optional[str]]:
    """The check of a power reading: None when plausible, else why not."""
    def check(watts: float) -> Optional[str]:
        if not math.isfinite(watts):
            return f"{watts!r} W is not a number"
        if watts <= 0:
            return f"{watts:g} W from a running machine"
        if watts > ceiling_w:
            return f"{watts:g} W, more than the {ceiling_w:g} W ceiling"
        return None
    return check


class PowerSampler:
    """Samples ``read_watts_fn`` on a fixed-rate schedule on a daemon thread and integrates it.

    Args:
        period_s: time between samples (seconds, > 0).
        read_watts_fn: returns the instantaneous power in watts; may raise on failure.
        health: the owning source's ``SourceHealth``; every attempt is counted in it.
        name: the owning source's name (for the log lines).
        max_gap_s: an interval between two good samples longer than this, with no failure in
            it, is logged once as slow (not counted as a failure; default 3 periods).
        max_backoff_s: longest pause between two tries while samples keep failing (default
            ``MAX_BACKOFF_PERIODS`` periods; never less than one period).
        plausible: a reading's check (``plausible_watts()`` by default): returns why it is
            not believable, or None.
        clock: monotonic clock in seconds; injectable so tests can drive time (with ``step``).
    """

    def __init__(
        self,
        period_s: float,
        read_watts_fn: Callable[[], float],
        health: SourceHealth,
        name: str,
        *,
        max_gap_s: Optional[float] = None,
        max_backoff_s: Optional[float] = None,
        plausible: Optional[Callable[[float], Optional[str]]] = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not (isinstance(period_s, (int, float)) and math.isfinite(period_s) and period_s > 0):
            raise ValueError(f"{name}: sample period must be a positive number of seconds, "
                             f"got {period_s!r}")
        if max_gap_s is None:
            max_gap_s = 3.0 * period_s
        if not (math.isfinite(max_gap_s) and max_gap_s >= period_s):
            raise ValueError(f"{name}: max_gap_s must be >= the sample period ({period_s} s), "
                             f"got {max_gap_s!r}")
        if max_backoff_s is None:
            max_backoff_s = MAX_BACKOFF_PERIODS * period_s
        if not (isinstance(max_backoff_s, (int, float)) and math.isfinite(max_backoff_s)
                and max_backoff_s > 0):
            raise ValueError(f"{name}: max_backoff_s must be a positive number of seconds, "
                             f"got {max_backoff_s!r}")
        self.period_s = float(period_s)
        self.max_gap_s = float(max_gap_s)
        self.max_backoff_s = max(float(max_backoff_s), self.period_s)
        self.name = name
        self.health = health
        self._read = read_watts_fn
        self._plausible = plausible or plausible_watts()
        self._clock = clock
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._stopped = False
        self._energy_j = 0.0
        self._last: Optional[Tuple[float, float]] = None  # (time, watts) of the last good sample
        self._first_time: Optional[float] = None
        self._bridged_s = 0.0
        self._measured_s = 0.0
        self._unmeasured_s = 0.0
        # a sample failed since the last good one: the next interval is bridged, not measured
        self._missed = False
        self._slow_logged = False
        self._end_logged = False
        # the schedule: the grid's origin, the next due time, failures in a row
        self._origin: Optional[float] = None
        self._next_due: Optional[float] = None
        self._streak = 0
        #: time of the last attempt's end (good or failed)
        self._last_attempt: Optional[float] = None
        # (time, cumulative joules) at each good sample since ``release``: for energy_at
        self._times: List[float] = []
        self._energies: List[float] = []

    # -- one sample -------------------------------------------------------------------------
    def sample(self) -> Optional[float]:
        """Take one sample now and integrate it; return the watts, or None if it failed or
        was not plausible (then counted as a failure, and the value warned about once)."""
        try:
            watts = float(self._read())
        except Exception as err:  # a failed sample must never kill the thread
            self.health.record_failure(self.name, err)
            self._failed()
            return None
        why = self._plausible(watts)
        if why is not None:
            self.health.record_lost(self.name, f"{self.name}/implausible",
                                    f"implausible reading ({why}): not believed, counted as "
                                    f"a failed sample (its time is bridged, not measured)")
            self._failed()
            return None
        self._integrate(watts)
        return watts

    def _failed(self) -> None:
        with self._lock:
            self._missed = True
            self._last_attempt = self._clock()

    def _integrate(self, watts: float) -> None:
        with self._lock:
            # Timestamp under the lock so that samples are ordered even if two threads sample.
            now = self._clock()
            self._last_attempt = now
            if self._last is None:
                self._first_time = now
            else:
                t0, w0 = self._last
                dt = max(0.0, now - t0)
                # Bridged like any interval: leaving a hole out would count the node's
                # power there as zero, the one value known to be wrong (-33% on a 68 s
                # run with 20 s of BMC errors). The straight line is a guess, so its
                # length is reported, and coverage counts it as not measured.
                self._energy_j += 0.5 * (w0 + watts) * dt
                if self._missed:
                    self._bridged_s += dt
                # An interval counts as measured unless samples failed in it and it is longer
                # than max_gap_s: one missed sample among good ones bridges a short line at the
                # source's own resolution; an outage is a guess.
                if self._missed and dt > self.max_gap_s:
                    self._unmeasured_s += dt
                else:
                    self._measured_s += dt
                    if dt > self.max_gap_s and not self._slow_logged:
                        self._slow_logged = True
                        log.info("energy source %s: %.2f s between two good samples (the "
                                 "period is %.3g s): the far end answers slowly; each "
                                 "interval is measured as it came", self.name, dt, self.period_s)
            self._missed = False
            self._last = (now, watts)
            self._times.append(now)
            self._energies.append(self._energy_j)
        self.health.record_ok()

    # -- the schedule -------------------------------------------------------------------------
    def _schedule_after(self, ok: bool) -> None:
        """Set the next due time after an attempt that ended now."""
        with self._lock:
            now = self._clock()
            origin = self._origin if self._origin is not None else now
            if ok:
                self._streak = 0
                # the first deadline at or after now: after a call longer than a period, the
                # next one is due at once (a slow far end is read back to back)
                k = max(1, math.ceil((now - origin) / self.period_s - 1e-9))
                self._next_due = origin + k * self.period_s
            else:
                self._streak += 1
                # a period after each of the first BACKOFF_AFTER failures in a row (a BMC that
                # misses one answer in two is still sampled every period or two), then
                # doubling, at most max_backoff_s apart
                excess = max(0, self._streak - BACKOFF_AFTER)
                pause = min(self.max_backoff_s, self.period_s * 2.0 ** min(excess, 30))
                self._next_due = now + pause

    def step(self) -> Optional[float]:
        """One scheduled attempt: the thread's loop body (tests with a fake clock call it after
        advancing the clock to ``next_due``)."""
        watts = self.sample()
        self._schedule_after(watts is not None)
        return watts

    @property
    def next_due(self) -> Optional[float]:
        with self._lock:
            return self._next_due

    def _run(self) -> None:
        while True:
            due = self.next_due
            wait = 0.0 if due is None else max(0.0, due - self._clock())
            # Event.wait rather than sleep so stop() returns within one wake-up, not one period.
            if self._stop.wait(wait):
                return
            self.step()

    def start(self, first_watts: Optional[float] = None, *, thread: bool = True) -> None:
        """Take a first sample synchronously (the integration and the schedule start there),
        then start the daemon thread (``thread=False``: none, tests drive ``step``). Calling
        start twice is an error.

        ``first_watts``: a reading the source has just taken (its open() check), used as the
        first sample instead of reading again: a second synchronous read would let a slow
        far end delay the caller by two timeouts instead of one.
        """
        if self._origin is not None:
            raise RuntimeError(f"{self.name}: PowerSampler already started")
        if first_watts is not None and self._plausible(float(first_watts)) is None:
            self._integrate(float(first_watts))
            ok = True
        else:
            ok = self.sample() is not None
        with self._lock:
            self._origin = self._clock()
        self._schedule_after(ok)
        if thread:
            self._thread = threading.Thread(target=self._run, name=f"energy-{self.name}",
                                            daemon=True)
            self._thread.start()

    def stop(self, timeout_s: float = 5.0, final: bool = True) -> None:
        """Stop the thread (prompt: it waits on an Event), then take one last sample so that
        the integral reaches the end of the run (``final``; skipped when an attempt ended
        less than a tenth of a period ago). Safe to call twice."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)
        with self._lock:
            first_stop, self._stopped = not self._stopped, True
            recent = (self._last_attempt is not None
                      and self._clock() - self._last_attempt < 0.1 * self.period_s)
        if first_stop and final and self._origin is not None and not recent and (
                thread is None or not thread.is_alive()):
            self.sample()
        with self._lock:
            missed, last, logged = self._missed, self._last, self._end_logged
            self._end_logged = True
        if not logged and last is not None and missed:
            # No good sample closes the hole, so there is nothing to bridge to: the integral
            # ends at the last good sample, and the time after it is not in the figures.
            log.warning("energy source %s: the run ended %.1f s after its last good sample "
                        "(samples failing since); its energy is integrated up to that sample",
                        self.name, self._clock() - last[0])

    # -- results ----------------------------------------------------------------------------
    def energy_j(self) -> float:
        """Joules integrated from the first good sample up to the latest good sample."""
        with self._lock:
            return self._energy_j

    def energy_at(self, t: float) -> Optional[float]:
        """The integral at clock time ``t`` (0 before the first sample), interpolated linearly
        in the interval around it; None when ``t`` is after the latest good sample (not known
        yet) or before the history kept (``release``)."""
        with self._lock:
            times, energies = self._times, self._energies
            if not times:
                return None if self._first_time is None else 0.0
            if t > times[-1]:
                return None
            if t < times[0]:  # before the first sample the integral is 0; before the kept
                return energies[0] if times[0] == self._first_time else None  # history: unknown
            if t == times[0]:
                return energies[0]
            i = bisect.bisect_left(times, t)
            t0, t1, e0, e1 = times[i - 1], times[i], energies[i - 1], energies[i]
            return e0 + (e1 - e0) * (t - t0) / (t1 - t0) if t1 > t0 else e1

    def release(self, before: float) -> None:
        """Forget the history before clock time ``before`` (keeping the sample at or before
        it): ``energy_at`` is no longer asked about earlier times."""
        with self._lock:
            i = bisect.bisect_right(self._times, before) - 1
            if i > 0:
                del self._times[:i]
                del self._energies[:i]

    def last_sample_time(self) -> Optional[float]:
        """Clock time of the latest good sample (None before the first)."""
        with self._lock:
            return None if self._last is None else self._last[0]

    def first_sample_time(self) -> Optional[float]:
        """Clock time of the first good sample (None before it)."""
        with self._lock:
            return self._first_time

    def bridged_s(self) -> float:
        """Seconds between good samples that were bridged with a straight line because
        samples failed in between."""
        with self._lock:
            return self._bridged_s

    def lag_s(self) -> float:
        """Seconds since the latest good sample: how far the figure trails now (0 before it)."""
        with self._lock:
            return 0.0 if self._last is None else max(0.0, self._clock() - self._last[0])

    def coverage(self) -> float:
        """Share of the time since the first good sample that was measured (see the module
        docstring). Before any interval was measured: 1.0 while no sample has failed yet
        (nothing is known to be missing), 0.0 once one has (a BMC that answered once and then
        failed has measured nothing, however short the failing tail is)."""
        with self._lock:
            if self._last is None:
                return 0.0 if self._missed else 1.0
            tail = max(0.0, self._clock() - self._last[0]) if self._missed else 0.0
            unmeasured = self._unmeasured_s + (tail if tail > self.max_gap_s else 0.0)
            total = self._measured_s + unmeasured
            if total > 0:
                return self._measured_s / total
            return 0.0 if self._missed else 1.0


class SampledPowerSource(EnergySource):
    """Base of the sources whose energy is, in whole or in part, integrated power samples.

    A power-only source implements ``read_watts()`` (one reading; raise on failure, the
    sampler counts it) and calls ``start_sampling(period_s)`` at the end of a successful
    ``open()``; ``read()``, ``close()`` and ``sampler`` come from here, and report the
    integral under the first component it ``covers``. A source that samples only part of
    what it covers (NVML: the GPUs without an energy counter) passes its own ``read_watts``,
    adds ``sampled_energy_j()`` to its counters in its own ``read()`` and calls
    ``stop_sampling()`` from its ``close()``.
    """

    #: longest one reading may take, seconds; ``close()`` waits that long plus 1 s for the
    #: thread (subclasses with a configurable timeout set it per instance)
    timeout_s: float = 4.0

    def __init__(self) -> None:
        super().__init__()
        self._sampler: Optional[PowerSampler] = None

    @abc.abstractmethod
    def read_watts(self) -> float:
        """One power reading in watts; raises on failure (counted, never fatal)."""

    def start_sampling(self, period_s: float, *,
                       read_watts: Optional[Callable[[], float]] = None,
                       max_gap_s: Optional[float] = None,
                       max_backoff_s: Optional[float] = None,
                       plausible: Optional[Callable[[float], Optional[str]]] = None,
                       clock: Callable[[], float] = time.monotonic,
                       first_watts: Optional[float] = None,
                       thread: bool = True) -> PowerSampler:
        """Take the first sample now, or use ``first_watts`` just read by open() (the
        integral starts there), and start the thread (``thread=False``: tests drive it).

        Raises:
            RuntimeError: sampling was started already (a source is opened once).
        """
        if self._sampler is not None:
            raise RuntimeError(f"{self.name}: sampling already started (open() called twice?)")
        self._sampler = PowerSampler(period_s, read_watts or self.read_watts, self.health,
                                     self.name, max_gap_s=max_gap_s, max_backoff_s=max_backoff_s,
                                     plausible=plausible, clock=clock)
        self._sampler.start(first_watts, thread=thread)
        return self._sampler

    def bridged_s(self) -> float:
        """Seconds of this source's integral bridged over failed samples (0 before sampling)."""
        return self._sampler.bridged_s() if self._sampler is not None else 0.0

    @property
    def lag_s(self) -> float:
        """Seconds since the latest good sample: the integral ends there (0.0 before sampling,
        and for a source that does not sample, e.g. NVML with energy counters on every GPU)."""
        return self._sampler.lag_s() if self._sampler is not None else 0.0

    def coverage(self) -> float:
        """The sampler's time-based coverage (``PowerSampler.coverage``) with the health's
        count of failed reads otherwise (a source that also reads counters)."""
        if self._sampler is None:
            return self.health.coverage
        return self._sampler.coverage()

    @property
    def lags(self) -> bool:
        return self._sampler is not None

    def energy_at(self, t: float) -> Optional[Dict[str, float]]:
        """The integral at clock time ``t`` under the source's component (see
        ``PowerSampler.energy_at``); None when not known (yet)."""
        if not self.lags or self._sampler is None:
            return None
        joules = self._sampler.energy_at(t)
        return None if joules is None else {self.covers[0]: joules}

    def release(self, before: float) -> None:
        if self._sampler is not None:
            self._sampler.release(before)

    def sampled_energy_j(self) -> float:
        """Joules integrated up to the latest good sample (0 before sampling starts)."""
        return self._sampler.energy_j() if self._sampler is not None else 0.0

    def stop_sampling(self, timeout_s: float = 5.0) -> None:
        """Stop the thread, waiting at most ``timeout_s`` (a reading in progress finishes),
        and take the last sample. The integral stays readable. Safe to call twice."""
        if self._sampler is not None:
            self._sampler.stop(timeout_s=timeout_s)

    @property
    def sampler(self) -> Optional[PowerSampler]:
        """The sampling thread's integrator (None before sampling starts)."""
        return self._sampler

    def read(self) -> Dict[str, float]:
        """Joules since open() under the source's component, up to the latest good sample."""
        return {self.covers[0]: self.sampled_energy_j()}

    def close(self) -> None:
        """Stop sampling; a reading in progress may take up to the source's ``timeout_s``."""
        self.stop_sampling(timeout_s=self.timeout_s + 1.0)


def bmc_options(name: str, label: str, default_period_s: float, one_read: str,
                default_timeout_s: float) -> Tuple[Param, Param]:
    """The two options of a source that samples a BMC (``<name>_sample_period_s``,
    ``<name>_timeout_s``), declared alike for every such source: ``label`` names it in the
    docs ("IPMI"), ``one_read`` says what one reading is ("ipmitool call")."""
    return (
        Param(None, name=f"{name}_sample_period_s",
              help=f"{label}'s own sampling period, seconds (else sample_period_s, else "
                   f"{default_period_s:g})", check=Positive()),
        Param(None, name=f"{name}_timeout_s",
              help=f"timeout of one {one_read}, seconds (default {default_timeout_s:g})",
              check=Positive()),
    )
