"""The energy-aware search metric, as pure functions: what ASHA minimises in
``asha_energy.yaml`` (``projected_energy_to_target_wh``).

Two rules make it safe to rank trials by:

- **Measured, or ranked last.** A figure counts as measured when its coverage (the share of
  the trial's time its sources measured) is at least ``MIN_COVERAGE``. A trial with nothing
  measured, or less than that, gets ``UNMEASURED_WH``: a finite number (Determined needs one
  in every validation), larger than any real projection, so that it ranks after every measured
  trial. The trial's log and its ``summary.json`` say so.
- **Scaled to the elapsed time.** The projection starts from the measured energy divided by
  its coverage: the measured average power times the whole elapsed time. A figure whose
  source stopped (a BMC that died mid-run) keeps growing with the time the trial runs, as its
  energy does, instead of freezing at what was measured before the source stopped (a lower
  bound that the searcher would take as exact).

How a trial that has not reached its target is projected is ``energy.projection``: the linear
rule (``projected_energy_to_target``) or the learning-curve fit (``shared.energy.curve_fit``),
``searcher_metric`` picks.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

from .curve_fit import curve_projection_wh

#: below this coverage a figure is "not measured": the trial ranks last
MIN_COVERAGE = 0.5
#: the searcher metric of a trial whose energy was not measured, Wh (one terawatt-hour): larger
#: than any real projection, so that such a trial ranks after every measured one
UNMEASURED_WH = 1e12
#: the linear projection's floor on the target metric (an increasing metric near 0)
PROJECTION_FLOOR = 0.5
#: the projections ``energy.projection`` selects among (``searcher_metric``)
PROJECTIONS = ("linear", "curve")


def is_measured(energy_wh: Optional[float], coverage: Optional[float]) -> bool:
    """Whether an energy figure counts as measured (``MIN_COVERAGE``)."""
    return (energy_wh is not None and math.isfinite(float(energy_wh)) and coverage is not None
            and float(coverage) >= MIN_COVERAGE)


def scaled_energy_wh(energy_wh: Optional[float], coverage: Optional[float]) -> Optional[float]:
    """The measured energy scaled to the whole elapsed time (``energy_wh / coverage``), or
    None when it is not measured."""
    if not is_measured(energy_wh, coverage):
        return None
    return float(energy_wh) / min(1.0, float(coverage))  # type: ignore[arg-type]


def projected_energy_to_target(energy_wh: Optional[float], value: Optional[float],
                               target: Optional[float],
                               energy_to_target_wh: Optional[float],
                               smaller_is_better: bool = False) -> Optional[float]:
    """The linear projection of the energy to the target (smaller is better), from an energy
    figure (already scaled: ``scaled_energy_wh``).

    Once the target was reached it is ``energy_to_target_wh``. Before, it is the energy spent so
    far scaled by how far the trial still is from the target (``value`` is the target metric,
    e.g. ``miou``): ``energy_wh * target / max(value, 0.5)``, a linear projection through the
    origin. It lets ASHA compare, at one rung, trials that reached the target with trials that
    did not. Limits: learning curves are concave, so the projection is optimistic for a trial
    that is plateauing below the target, and the 0.5 floor caps the penalty of a trial that has
    learned nothing yet. None when there is no energy figure.

    A decreasing metric (``smaller_is_better``, e.g. ``validation_loss`` down to a target) has
    its own rule, the same projection applied to the metric's reciprocal (which increases):
    ``energy_wh * value / target``, i.e. the metric is taken to fall in inverse proportion to
    the energy spent. Before the target is reached ``value > target``, so the projection is
    larger than the energy spent, and the further the loss is above the target the larger; no
    floor is needed (a loss does not start near zero), a non-finite value (a diverged run)
    gives None.
    """
    if energy_to_target_wh is not None:
        return float(energy_to_target_wh)
    if energy_wh is None or value is None or not target:
        return None
    if smaller_is_better:
        if not math.isfinite(float(value)):
            return None
        return float(energy_wh) * float(value) / float(target)
    return float(energy_wh) * float(target) / max(float(value), PROJECTION_FLOOR)


def searcher_metric(energy_wh: Optional[float], coverage: Optional[float],
                    value: Optional[float], target: Optional[float],
                    energy_to_target_wh: Optional[float] = None,
                    smaller_is_better: bool = False, *, projection: str = "linear",
                    history: Sequence[Tuple[float, Optional[float]]] = ()) -> float:
    """``projected_energy_to_target_wh`` at one validation: always a finite number.

    ``energy_wh`` and ``coverage``: the trial's measured energy so far and its coverage;
    ``energy_to_target_wh``: once the target was reached, the energy then, already scaled by
    the coverage then (``scaled_energy_wh``). ``UNMEASURED_WH`` when nothing usable was
    measured, or the projection is not defined (a diverged loss).

    ``projection`` (``energy.projection``): ``linear`` (``projected_energy_to_target``) or
    ``curve``: the learning curve fitted to ``history`` (the trial's earlier validations,
    (scaled energy, target metric) pairs, oldest first) and this one
    (``shared.energy.curve_fit``: a trial whose fitted curve levels off below the target gets
    a finite value in [1e10, 2e10] Wh, after every trial projected to reach it and before
    ``UNMEASURED_WH``); with too few validations the linear rule."""
    if projection not in PROJECTIONS:
        raise ValueError(f"energy.projection {projection!r}: one of {', '.join(PROJECTIONS)}")
    if energy_to_target_wh is not None and math.isfinite(float(energy_to_target_wh)):
        return float(energy_to_target_wh)
    scaled = scaled_energy_wh(energy_wh, coverage)
    if scaled is None:
        return UNMEASURED_WH
    projected = None
    if (projection == "curve" and target and value is not None
            and math.isfinite(float(value))):
        projected = curve_projection_wh([e for e, _ in history] + [scaled],
                                        [v for _, v in history] + [float(value)],
                                        float(target), smaller_is_better)
    if projected is None:
        projected = projected_energy_to_target(scaled, value, target, None, smaller_is_better)
    if projected is None or not math.isfinite(projected):
        return UNMEASURED_WH
    return min(projected, UNMEASURED_WH)
