"""The one place that turns two readings of a hardware energy counter into energy.

Every source that reads a cumulative counter (RAPL's ``energy_uj``, NVML's total energy)
calls ``counter_step``: it alone decides whether a counter that went *down* wrapped (the
energy across the wrap is counted) or was reset (a driver reload, a firmware or BMC reset,
someone writing the file: the interval is not counted, because any figure for it would be
invented).

The rule: a decrease is a wrap only if the counter has a modulus (it is a fixed-width
register that wraps) *and* the energy a wrap implies, over the time since the previous
reading, is a power the domain can draw (``max_power_w``, the same ceiling that sizes the
RAPL poll thread). A counter reset to 0 from 500 J reads as a wrap of ~262 kJ, several kW to
several hundred kW over a report interval: not plausible, so a reset.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional


@dataclass(frozen=True)
class CounterStep:
    """What happened between two readings of a counter.

    Attributes:
        delta: energy in counter units to add (0 for a reset).
        kind: "up" (counter increased or stayed), "wrap" (wrapped once, counted) or
            "reset" (went backwards implausibly: the interval is not counted).
        implied_w: for a decrease, the power a wrap would have meant (None otherwise, or
            when the counter has no modulus).
    """

    delta: float
    kind: str
    implied_w: Optional[float] = None


def counter_step(prev: int, cur: int, *, elapsed_s: float, joules_per_unit: float,
                 max_power_w: Optional[float], modulus: Any = None) -> CounterStep:
    """Energy between readings ``prev`` and ``cur`` of a counter, or a reset.

    Args:
        prev, cur: the two raw readings (counter units: uJ for RAPL, mJ for NVML).
        elapsed_s: seconds between the two readings (monotonic clock).
        joules_per_unit: 1e-6 for uJ, 1e-3 for mJ.
        max_power_w: the most the measured domain can draw; a wrap implying more is a reset.
            None: no ceiling known (then a decrease is a wrap whenever there is a modulus).
        modulus: the counter's modulus in units (it wraps to 0 at this value; an int or a
            Fraction, kept exact); None for a
            counter that never wraps in practice (NVML's 64-bit mJ counter: 584 million
            years at 1 kW), for which any decrease is a reset.
    """
    if cur >= prev:
        return CounterStep(float(cur - prev), "up")
    if modulus is None:
        return CounterStep(0.0, "reset")
    # (modulus - prev) first, in the modulus' own type (int or Fraction, exact): adding a
    # small remainder to a ~1e11 float would round it.
    wrapped = float((modulus - prev) + cur)
    if max_power_w is None:
        return CounterStep(wrapped, "wrap")
    implied_w = wrapped * joules_per_unit / elapsed_s if elapsed_s > 0 else float("inf")
    if implied_w <= max_power_w:
        return CounterStep(wrapped, "wrap", implied_w)
    return CounterStep(0.0, "reset", implied_w)
