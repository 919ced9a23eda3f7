"""The one place that turns two readings of a hardware energy counter into energy.

Every source that reads a cumulative counter (RAPL's ``energy_uj``, NVML's total energy), and
the meter when it counts the gap between two processes, calls ``counter_step``: it alone
decides whether the energy between two readings is known, and how much it is.

A reading is believed only if it is plausible; otherwise the interval is *not counted*: its
energy is missing, which the caller records as missing time (coverage), never as a number.

- ``up``: the counter increased (or stayed), by an amount whose power over the elapsed time
  is within what the domain can draw (``max_power_w``): counted.
- ``wrap``: it went down, it has a modulus (a fixed-width register that wraps) and the energy
  a single wrap implies is a power the domain can draw: counted across the wrap.
- ``reset``: it went down otherwise (a driver reload, a firmware or BMC reset, someone writing
  the file): a counter reset to 0 from 500 J reads as a wrap of ~262 kJ, several kW over a
  report interval, which no domain draws.
- ``implausible``: a reading the counter cannot hold (negative, at or above its declared
  range), an increase whose power exceeds the ceiling, or an interval so long that the counter
  could have wrapped more than once (at the ceiling power, the fastest a wrap can come: the
  number of wraps is then unknowable).

So no figure built from a counter can be negative or absurd: a delta is counted only when the
power it implies is between 0 and the ceiling.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

#: the kinds whose energy is counted
COUNTED = ("up", "wrap")
#: the shortest interval a power check divides by, seconds: counters refresh in steps (NVML's
#: every 20-100 ms) and are read with jitter, so two reads a millisecond apart can show a step's
#: worth of energy; an absurd reading is off by orders of magnitude, not by that
MIN_CHECK_INTERVAL_S = 1.0


@dataclass(frozen=True)
class CounterStep:
    """What happened between two readings of a counter.

    Attributes:
        delta: energy in counter units to add (0 when not counted).
        kind: "up", "wrap" (counted), "reset" or "implausible" (not counted).
        implied_w: the power the counted (or refused) delta means over the elapsed time, when
            it could be computed (None otherwise).
        why: for a refused step, what was wrong, in words a log line can carry.
    """

    delta: float
    kind: str
    implied_w: Optional[float] = None
    why: str = ""

    @property
    def counted(self) -> bool:
        return self.kind in COUNTED


def _power(delta: float, joules_per_unit: float, elapsed_s: float) -> Optional[float]:
    """The power a delta means over ``elapsed_s`` (at least ``MIN_CHECK_INTERVAL_S``); None
    when the interval is not known (0)."""
    return delta * joules_per_unit / max(elapsed_s, MIN_CHECK_INTERVAL_S) if elapsed_s > 0 else None


def min_wrap_s(modulus: Any, joules_per_unit: float, max_power_w: Optional[float]) -> Optional[float]:
    """The shortest time in which the counter can wrap: its whole range at the ceiling power
    (None when it has no modulus or no ceiling)."""
    if modulus is None or not max_power_w:
        return None
    return float(modulus) * joules_per_unit / float(max_power_w)


def counter_step(prev: int, cur: int, *, elapsed_s: float, joules_per_unit: float,
                 max_power_w: Optional[float], modulus: Any = None) -> CounterStep:
    """Energy between readings ``prev`` and ``cur`` of a counter, or why it is not counted.

    Args:
        prev, cur: the two raw readings (counter units: uJ for RAPL, mJ for NVML).
        elapsed_s: seconds between the two readings (monotonic clock); 0 when the caller
            does not know it (the power checks are then skipped).
        joules_per_unit: 1e-6 for uJ, 1e-3 for mJ.
        max_power_w: the most the measured domain can draw; a step implying more is refused.
            None: no ceiling known.
        modulus: the counter's modulus in units (it wraps to 0 at this value; an int or a
            Fraction, kept exact); None for a counter that never wraps in practice (NVML's
            64-bit mJ counter: 584 million years at 1 kW), for which any decrease is a reset.
    """
    for name, value in (("previous", prev), ("current", cur)):
        if value < 0:
            return CounterStep(0.0, "implausible", why=f"the {name} reading {value} is negative")
        if modulus is not None and value >= modulus:
            return CounterStep(0.0, "implausible",
                               why=f"the {name} reading {value} is beyond the counter's range "
                                   f"({float(modulus):.6g})")
    fastest = min_wrap_s(modulus, joules_per_unit, max_power_w)
    if fastest is not None and elapsed_s > fastest:
        return CounterStep(0.0, "implausible",
                           why=f"{elapsed_s:.1f} s between the readings is longer than the "
                               f"counter's shortest wrap period ({fastest:.1f} s at "
                               f"{max_power_w:g} W): how many times it wrapped is unknowable")
    if cur >= prev:
        delta = float(cur - prev)
        implied = _power(delta, joules_per_unit, elapsed_s)
        if max_power_w is not None and implied is not None and implied > max_power_w:
            return CounterStep(0.0, "implausible", implied,
                               f"an increase of {delta:.6g} units in {elapsed_s:.3g} s means "
                               f"{implied:.4g} W, more than the {max_power_w:g} W the domain can draw")
        return CounterStep(delta, "up", implied)
    if modulus is None:
        return CounterStep(0.0, "reset", why=f"it went back from {prev} to {cur}")
    # (modulus - prev) first, in the modulus' own type (int or Fraction, exact): adding a
    # small remainder to a ~1e11 float would round it.
    wrapped = float((modulus - prev) + cur)
    implied = _power(wrapped, joules_per_unit, elapsed_s)
    if max_power_w is None:
        return CounterStep(wrapped, "wrap", implied)
    if implied is None:
        implied = math.inf
    if implied <= max_power_w:
        return CounterStep(wrapped, "wrap", implied)
    return CounterStep(0.0, "reset", implied,
                       f"it went back from {prev} to {cur}: a wrap would mean {implied:.4g} W, "
                       f"more than the {max_power_w:g} W the domain can draw")
