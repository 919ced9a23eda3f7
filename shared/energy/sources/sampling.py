"""Energy from power samples: one sampling thread, trapezoidal integration.

``PowerSampler`` is the one integrator, and ``SampledPowerSource`` the one base of every
source that can only read *power*: IPMI DCMI and Redfish, and NVML for its GPUs without an
energy counter. Sources with a hardware energy counter (RAPL, NVML's counter) do not need
it; Prometheus integrates the series the site already stored, not samples of its own.

Bias, stated once for all these sources:

- ``energy_j()`` is the integral up to the *latest* sample, so it lags the present by at
  most one period (plus the read latency). Reports are cumulative, so the lag is not lost:
  it shows up in the next report.
- The trapezoidal rule is exact for power that varies linearly between samples; power
  spikes shorter than the period are smoothed or missed. On the H100 the team measured
  NVML power sampled at 50 ms reading 5-10% under the NVML energy counter, which is why
  the counter is always preferred.
- A BMC refreshes its reading every few seconds: sampling faster than that only repeats
  the same value (harmless, the integral is unchanged).
- A failed sample is skipped and counted. The next good sample bridges the hole with a
  straight line (the trapezoid, as for any interval), however long it is: a node that was
  running drew power all along, and zero is the one value known to be wrong. The time so
  bridged is reported (``bridged_s()``, the ``energy`` group's ``bridged_s``) and the
  failed samples lower coverage, which says what fraction was *measured*; a hole longer
  than ``max_gap_s`` also counts as one more failure and is logged once.
- A run that ends inside a hole is integrated up to its last good sample (nothing is
  extrapolated past it), and ``stop()`` logs how long the end was without a good sample.
"""
from __future__ import annotations

import abc
import math
import threading
import time
from typing import Callable, Dict, Optional, Tuple

from ..redact import energy_logger
from ..schema import Option, Positive
from .base import EnergySource, SourceHealth

log = energy_logger()


class PowerSampler:
    """Samples ``read_watts_fn`` every ``period_s`` on a daemon thread and integrates it.

    Args:
        period_s: time between samples (seconds, > 0).
        read_watts_fn: returns the instantaneous power in watts; may raise on failure.
        health: the owning source's ``SourceHealth``; every sample is counted in it.
        name: the owning source's name (for the one log line a failure produces).
        max_gap_s: an interval between two good samples longer than this is still bridged,
            and also counted as a failure (it hides more than the odd missed sample);
            default 3 periods.
        clock: monotonic clock in seconds; injectable so tests can drive time.
    """

    def __init__(
        self,
        period_s: float,
        read_watts_fn: Callable[[], float],
        health: SourceHealth,
        name: str,
        *,
        max_gap_s: Optional[float] = None,
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
        self.period_s = float(period_s)
        self.max_gap_s = float(max_gap_s)
        self.name = name
        self.health = health
        self._read = read_watts_fn
        self._clock = clock
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._energy_j = 0.0
        self._last: Optional[tuple[float, float]] = None  # (time, watts) of the last good sample
        self._first_time: Optional[float] = None
        self._bridged_s = 0.0
        # a sample failed since the last good one: the next interval is bridged, not measured
        self._missed = False
        self._end_logged = False

    # -- sampling ---------------------------------------------------------------------------
    def sample(self) -> Optional[float]:
        """Take one sample now and integrate it; return the watts, or None if it failed.

        The thread calls this every period; tests call it directly with a fake clock.
        """
        try:
            watts = float(self._read())
            if not math.isfinite(watts) or watts < 0:
                raise ValueError(f"implausible power reading {watts!r} W")
        except Exception as err:  # a failed sample must never kill the thread
            self.health.record_failure(self.name, err)
            with self._lock:
                self._missed = True
            return None
        self._integrate(watts)
        return watts

    def _integrate(self, watts: float) -> None:
        with self._lock:
            # Timestamp under the lock so that samples are ordered even if two threads sample.
            now = self._clock()
            if self._last is None:
                self._first_time = now
            else:
                t0, w0 = self._last
                dt = now - t0
                # Bridged like any interval: leaving a hole out would count the node's
                # power there as zero, the one value known to be wrong (-33% on a 68 s
                # run with 20 s of BMC errors). The straight line is a guess, so its
                # length is reported, and coverage keeps counting it as not measured.
                self._energy_j += 0.5 * (w0 + watts) * dt
                if self._missed or dt > self.max_gap_s:
                    self._bridged_s += dt
                if dt > self.max_gap_s:
                    self.health.record_failure(
                        self.name, f"{dt:.2f} s without a good sample (> max_gap_s "
                                   f"{self.max_gap_s:.2f} s); bridged with a straight line")
            self._missed = False
            self._last = (now, watts)
        self.health.record_ok()

    def _run(self) -> None:
        # Event.wait rather than sleep so stop() returns within one wake-up, not one period.
        while not self._stop.wait(self.period_s):
            self.sample()

    def start(self, first_watts: Optional[float] = None) -> None:
        """Take a first sample synchronously (the integration starts there), then start the
        daemon thread. Calling start twice is an error.

        ``first_watts``: a reading the source has just taken (its open() check), used as the
        first sample instead of reading again: a second synchronous read would let a slow
        far end delay the caller by two timeouts instead of one.
        """
        if self._thread is not None:
            raise RuntimeError(f"{self.name}: PowerSampler already started")
        if first_watts is not None and math.isfinite(first_watts) and first_watts >= 0:
            self._integrate(float(first_watts))
        else:
            self.sample()
        self._thread = threading.Thread(target=self._run, name=f"energy-{self.name}",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the thread (prompt: it waits on an Event). Safe to call twice."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)
        with self._lock:
            missed, last, logged = self._missed, self._last, self._end_logged
            self._end_logged = True
        # A sample still hanging when the thread was told to stop has not failed yet: a last
        # good sample older than max_gap_s says the same.
        if not logged and last is not None and (missed or
                                                self._clock() - last[0] > self.max_gap_s):
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
        samples failed in between (or because they were more than ``max_gap_s`` apart)."""
        with self._lock:
            return self._bridged_s


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
                       clock: Callable[[], float] = time.monotonic,
                       first_watts: Optional[float] = None) -> PowerSampler:
        """Take the first sample now, or use ``first_watts`` just read by open() (the
        integral starts there), and start the thread.

        Raises:
            RuntimeError: sampling was started already (a source is opened once).
        """
        if self._sampler is not None:
            raise RuntimeError(f"{self.name}: sampling already started (open() called twice?)")
        self._sampler = PowerSampler(period_s, read_watts or self.read_watts, self.health,
                                     self.name, max_gap_s=max_gap_s, clock=clock)
        self._sampler.start(first_watts)
        return self._sampler

    def bridged_s(self) -> float:
        """Seconds of this source's integral bridged over failed samples (0 before sampling)."""
        return self._sampler.bridged_s() if self._sampler is not None else 0.0

    @property
    def lag_s(self) -> float:
        """One period: the integral ends at the latest sample (0.0 before sampling, and for
        a source that does not sample, e.g. NVML with energy counters on every GPU)."""
        return self._sampler.period_s if self._sampler is not None else 0.0

    def sampled_energy_j(self) -> float:
        """Joules integrated up to the latest good sample (0 before sampling starts)."""
        return self._sampler.energy_j() if self._sampler is not None else 0.0

    def stop_sampling(self, timeout_s: float = 5.0) -> None:
        """Stop the thread, waiting at most ``timeout_s`` (a reading in progress finishes).
        The integral stays readable. Safe to call twice."""
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
                default_timeout_s: float) -> Tuple[Option, Option]:
    """The two options of a source that samples a BMC (``<name>_sample_period_s``,
    ``<name>_timeout_s``), declared alike for every such source: ``label`` names it in the
    docs ("IPMI"), ``one_read`` says what one reading is ("ipmitool call")."""
    return (
        Option(f"{name}_sample_period_s", None,
               f"{label}'s own sampling period, seconds (else sample_period_s, else "
               f"{default_period_s:g})", Positive()),
        Option(f"{name}_timeout_s", None,
               f"timeout of one {one_read}, seconds (default {default_timeout_s:g})", Positive()),
    )
