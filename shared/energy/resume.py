"""What the energy hook does across a pause, a crash and a resume, apart from Determined: the
figures a rank reports when its meter cannot be read, the absolute counters a run keeps for
the run that resumes it, the energy counted over the gap between the two, and whether an
interrupted run's last record can be believed. The callback (``shared.energy.callback``) calls
these with its state; they keep none of their own.
"""
from __future__ import annotations

import math
import pathlib
import time
from typing import Any, Mapping, Optional, Tuple

from . import handover
from .meter import EnergyMeter
from .redact import energy_logger
from .snapshot import EnergySnapshot

log = energy_logger()


def held_snapshot(last_good: Optional[Tuple[EnergySnapshot, float]], started_at: Optional[float],
                  rank: int, now: Optional[float] = None) -> EnergySnapshot:
    """What a rank reports when its meter cannot be read; ``last_good`` is its last good read
    and the monotonic time of it, ``started_at`` the monotonic time its meter started.

    Before any good read: nothing measured here, and coverage 0 says so. After one: the
    energy of the last good read, with the same components, so that no figure of the trial
    turns from a number into null mid-run (a column that mixes them becomes a string column
    in the WebUI, and the searcher metric would vanish); its duration is the span those
    joules cover, and coverage is scaled by the share of the time since the start that they
    cover: the rest is missing, and said to be.
    """
    now = time.monotonic() if now is None else now
    if last_good is None:
        elapsed = now - (started_at or now)
        return EnergySnapshot(duration_s=elapsed, joules={}, per_source={},
                              coverage={f"rank{rank}": 0.0}, sources=[])
    last, read_at = last_good
    span = last.duration_s + (now - read_at)
    share = last.duration_s / span if span > 0 else 0.0
    return EnergySnapshot(duration_s=last.duration_s, joules=dict(last.joules),
                          per_source={k: dict(v) for k, v in last.per_source.items()},
                          coverage={k: c * share for k, c in last.coverage.items()},
                          sources=list(last.sources),
                          # the figures are those of the last good read: what they bridged
                          # and how far they may trail stay theirs
                          bridged_s=dict(last.bridged_s), lag_s=dict(last.lag_s),
                          phase_s=dict(last.phase_s), gpu_util_pct=last.gpu_util_pct)


def hand_over(meter: EnergyMeter, counters_dir: pathlib.Path, rank: int, step: int,
              node_id: str) -> bool:
    """Keep this reading's absolute counters (``handover.record``) for a run that resumes this
    one. False, after one warning, when the directory cannot take them: it will not take them
    at the next report either, and the run goes on without (a later resume counts no gap)."""
    counters = meter.raw_counters()
    if not counters:
        return True
    try:
        handover.record(counters_dir, rank, step, node_id, counters)
    except Exception as err:
        log.warning("energy: cannot keep the energy counters in %s (%s: %s); they are not "
                    "kept for this run (a resume will not count the energy of a crash)",
                    handover.path_for(counters_dir, rank), type(err).__name__, err)
        return False
    return True


def count_gap(meter: EnergyMeter, counters_dir: pathlib.Path, rank: int, step: Optional[int],
              node_id: str) -> None:
    """Count on ``meter``, from this rank's absolute counters, the energy between the
    interrupted run's report at ``step`` (the one whose totals this run continues from) and
    this run's start; say in the log what was counted and what could not be."""
    if step is None:
        return
    if not meter.active_sources:
        return  # nothing is measured in this process (a rank without a node source)
    if not meter.raw_counters():
        log.warning("energy: the energy between the interrupted run's last report (batch %d) "
                    "and this start is not counted: no source here has an absolute counter "
                    "(%s)", step, ", ".join(s.name for s in meter.active_sources))
        return
    entry, why = handover.find(counters_dir, rank, step, node_id)
    if entry is None and why.startswith("ended"):
        log.info("energy: nothing counted between the previous run and this one (%s)", why)
        return
    if entry is None:
        log.warning("energy: the energy between the interrupted run's last report (batch "
                    "%d) and this start is not counted: %s", step, why)
        return
    gap = meter.count_gap(entry["counters"], time.time() - float(entry["wall_time"]))
    counted = {name: sum(j.values()) for name, j in gap.joules.items()}
    if counted:
        log.info("energy: counted %.6f Wh over the %.1f s between the interrupted run's last "
                 "report (batch %d) and this start, from the counters of %s",
                 sum(counted.values()) / 3600.0, gap.elapsed_s, step, ", ".join(sorted(counted)))
    for name, reason in sorted(gap.missed.items()):
        log.warning("energy: %s cannot count the %.1f s between the interrupted run's last "
                    "report and this start (%s): its energy then is missing, its coverage "
                    "says so", name, gap.elapsed_s, reason)


def carried_problem(carried: Mapping[str, Any], node_max_power_w: float) -> Optional[str]:
    """Why an interrupted run's last ``energy`` record (read back from its metrics file)
    cannot be believed, or None: numbers that are not numbers or negative, or an average
    power no node could draw (``node_max_power_w`` per node)."""
    for key in ("energy_wh", "gpu_wh", "cpu_wh", "dram_wh", "node_wh", "duration_s"):
        v = carried.get(key)
        if v is None:
            continue
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
            return f"{key} is {v!r}"
    duration, energy = carried.get("duration_s") or 0.0, carried.get("energy_wh")
    if energy is not None and energy > 0:
        if duration <= 0:
            return f"energy_wh {energy:g} over a duration of {duration!r} s"
        nodes = carried.get("nodes")
        nodes = nodes if isinstance(nodes, int) and not isinstance(nodes, bool) and nodes > 0 else 1
        ceiling = node_max_power_w * nodes
        power = energy * 3600.0 / duration
        if power > ceiling:
            return (f"energy_wh {energy:g} over {duration:g} s is {power:.4g} W, more than "
                    f"{nodes} node(s) can draw ({ceiling:g} W)")
    return None
