"""A run's reports as time series: one wall-time axis for every group, restarts folded in.

Wall time ("elapsed") runs from the trial's start (its first ``run`` report, made at trial
start-up) and removes pauses: when a trial restarts (a later ``run`` report), its clock goes on
from the last report before the restart, so the time a trial sat paused or queued is not counted
but work redone from the checkpoint is. A restarted trial reports again from its checkpoint on;
per group, the reports of the new run replace the earlier ones from that batch on (a master
does the same by archiving them).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from .load import Run

J_PER_WH = 3600.0


@dataclass
class Point:
    """One report: batches trained, wall time since the trial started (s), its metrics."""

    steps: int
    elapsed_s: float
    metrics: Dict[str, Any]
    segment: int = 0


def timeline(run: Run) -> Dict[str, List[Point]]:
    """The run's reports per group, sorted by batches, with their elapsed wall time."""
    recs = sorted(run.records, key=lambda r: r["time"])
    out: Dict[str, List[Point]] = {}
    if not recs:
        return out
    segment, offset, seg_start, last = 0, 0.0, float(recs[0]["time"]), 0.0
    seen_in_segment: set = set()
    for i, r in enumerate(recs):
        # A run report at a (re)start begins a segment; the trials' update of the run group
        # after each validation (reported_at: validation) does not.
        if r["group"] == "run" and i > 0 and r["metrics"].get("reported_at", "start") == "start":
            segment, offset, seg_start = segment + 1, last, float(r["time"])
            seen_in_segment = set()
        elapsed = offset + float(r["time"]) - seg_start
        last = elapsed
        group, steps = r["group"], int(r["steps_completed"])
        points = out.setdefault(group, [])
        if segment > 0 and group not in seen_in_segment:
            points[:] = [p for p in points if p.steps < steps]
            seen_in_segment.add(group)
        points.append(Point(steps, elapsed, r["metrics"], segment))
    for points in out.values():
        points.sort(key=lambda p: p.steps)
    return out


def _num(v: Any) -> Optional[float]:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def power_intervals(energy: List[Point]) -> List[Tuple[float, float, float]]:
    """Average power between consecutive energy reports: ``(start_s, end_s, watts)`` on the
    elapsed axis.

    Watts = (energy_wh difference x 3600) / (duration_s difference): both figures come from the
    energy meter, so its own clock times the interval; the wall axis only places it. The first
    interval runs from the meter's start. An interval where energy was not measured, or where
    a counter went backwards (a restart from an older checkpoint), is left out: a gap, not 0 W.
    """
    out: List[Tuple[float, float, float]] = []
    prev_e: Optional[float] = 0.0
    prev_d: Optional[float] = 0.0
    prev_t: Optional[float] = None
    for p in energy:
        e, d = _num(p.metrics.get("energy_wh")), _num(p.metrics.get("duration_s"))
        start = prev_t if prev_t is not None else max(0.0, p.elapsed_s - (d or 0.0))
        if e is not None and prev_e is not None:
            dt = (d - prev_d) if (d is not None and prev_d is not None) else (p.elapsed_s - start)
            de = e - prev_e
            if dt > 0 and de >= 0:
                out.append((start, p.elapsed_s, de * J_PER_WH / dt))
        prev_e, prev_d, prev_t = e, d, p.elapsed_s
    return out


def time_unit(max_seconds: float) -> Tuple[float, str]:
    """A divisor and unit name that keep a time axis readable."""
    if max_seconds >= 3 * 3600:
        return 3600.0, "h"
    if max_seconds >= 3 * 60:
        return 60.0, "min"
    return 1.0, "s"
