"""The one deadline of every network and subprocess read of the energy sources.

A socket timeout bounds each ``recv``, not a request: a BMC that trickles one byte every
0.5 s never trips a 1 s timeout and holds the caller for as long as it likes (issue 13.2:
the trial's first batch waited more than 90 s). A ``Deadline`` bounds the whole exchange:

- HTTP (``shared.energy.http``): at expiry a watchdog shuts the connection's socket down,
  which ends any read in progress (TLS handshake, headers, body), however the far end
  behaves; the request then fails as a timeout.
- subprocess (``ipmi``): ``communicate`` waits ``remaining()`` at most, then the child's
  process group is killed.

A source that needs several requests for one answer (Redfish discovery, one reading per
power supply) shares one deadline among them, so its timeout bounds the answer, not each
request.
"""
from __future__ import annotations

import threading
import time
from typing import Callable, List

#: Shortest wait handed to a blocking call once the deadline is (nearly) spent: 0 would mean
#: "non-blocking" to a socket and "no wait" to communicate(), which fail differently.
MIN_WAIT_S = 0.001


class Deadline:
    """``seconds`` from now, for ``what`` (named in messages).

    Use as a context manager (or call ``cancel()``) so that watchdogs armed with
    ``on_expiry`` do not fire after the work is done.
    """

    def __init__(self, seconds: float, what: str = "",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = float(seconds)
        self.what = what
        self._clock = clock
        self._end = clock() + self.seconds
        self._timers: List[threading.Timer] = []
        self._lock = threading.Lock()
        self.fired = False  # a watchdog acted: what it interrupted must be read as a timeout

    def remaining(self) -> float:
        """Seconds left (0 when spent)."""
        return max(0.0, self._end - self._clock())

    @property
    def expired(self) -> bool:
        return self._clock() >= self._end

    def wait_s(self, timeout: float | None = None) -> float:
        """What a blocking call may wait now: ``remaining()``, capped at ``timeout``."""
        left = self.remaining() if timeout is None else min(timeout, self.remaining())
        return max(MIN_WAIT_S, left)

    def on_expiry(self, action: Callable[[], None]) -> None:
        """Run ``action`` (on a watchdog thread) if the deadline passes before ``cancel()``."""
        def fire() -> None:
            with self._lock:
                self.fired = True
            try:
                action()
            except Exception:  # the socket or process is already gone: nothing to interrupt
                pass

        timer = threading.Timer(self.remaining(), fire)
        timer.daemon = True
        with self._lock:
            self._timers.append(timer)
        timer.start()

    def cancel(self) -> None:
        """Disarm the watchdogs (the work finished in time). Safe to call twice."""
        with self._lock:
            timers, self._timers = self._timers, []
        for timer in timers:
            timer.cancel()

    def __enter__(self) -> "Deadline":
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()
