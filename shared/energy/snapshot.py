"""What one process measured since its meter started (``EnergySnapshot``): the value the meter
returns at every read, which aggregation (``aggregate``) and the hand-over between a run and
its resume (``handover``, the callback) pass around. A plain record with no behaviour, in a
module of its own so that those modules need not import the meter and its sources.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional


@dataclass(frozen=True)
class EnergySnapshot:
    """Energy measured by this process since ``EnergyMeter.start()``.

    Attributes:
        duration_s: seconds since start.
        joules: joules per component ("gpu", "cpu", "dram", "node"); a component no active
            source measures is absent (not zero).
        per_source: joules per component for each active source.
        coverage: fraction of good reads/samples per active source (0-1); a source that
            came up late (retried) also counts the time before it came up as missed.
        sources: the active sources as a report shows them (their ``label``: the name, or
            for Redfish the resource it chose); every dict here is keyed by ``name``.
        bridged_s: per active source, seconds of its energy bridged over failed samples
            with a straight line (``SampledPowerSource``) rather than measured.
        lag_s: per active source, most its figure may trail this reading (its ``lag_s``).
        phases: joules per component for each phase (``mark_phase``) up to this reading,
            the running phase included: per component, the phases sum to ``joules``.
        phase_s: seconds of each phase up to this reading (they sum to ``duration_s``).
        gpu_util_pct: mean GPU utilisation since the start, %, over the sources that sample
            it (``utilisation_pct()``: NVML); None when none does.
    """

    duration_s: float
    joules: Dict[str, float]
    per_source: Dict[str, Dict[str, float]]
    coverage: Dict[str, float]
    sources: List[str]
    bridged_s: Dict[str, float] = field(default_factory=dict)
    lag_s: Dict[str, float] = field(default_factory=dict)
    phases: Dict[str, Dict[str, float]] = field(default_factory=dict)
    phase_s: Dict[str, float] = field(default_factory=dict)
    gpu_util_pct: Optional[float] = None
