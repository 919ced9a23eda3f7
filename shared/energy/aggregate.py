"""From per-rank measurements to the trial's energy, counting each joule once.

Each rank sends a ``RankEnergy`` (a plain dict on the wire, for Determined's allgather):
its own GPUs' energy, and, on the node's reader (local rank 0), the node-level figures.
``combine`` applies the team's measurement standard (count each joule once):

- per node: GPU energy = sum over the node's ranks (each rank reads only its own GPUs);
- node-level figures (RAPL cpu/dram, BMC/Prometheus "node") come from the one reader and
  are multiplied by the trial's share of the node: slots used / GPUs on the node
  (``apportion="gpu_share"``), or 1.0 (``"none"``; also for CPU-only nodes);
- node total = node input power x share when a PSU-level source measured it (it already
  contains the GPUs and CPUs), else GPU + cpu x share + dram x share;
- trial total = sum of the node totals.

The same rule, applied to each phase's joules (``PHASES``, from the meter's ``mark_phase``),
gives the energy per phase; the phases tile each rank's time, so they sum to the total.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import (Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence,
                    Tuple, Union)

from .general import APPORTION_RULES
from .redact import energy_logger
from .snapshot import EnergySnapshot
from .projection import is_measured

log = energy_logger()

J_PER_WH = 3600.0
#: The phases a trial's energy is split into (``<phase>_wh`` in the ``energy`` group); the
#: meter's first phase (``meter.FIRST_PHASE``) is the first of them.
PHASES = ("setup", "train", "validation", "checkpoint", "compile", "mining")


def _add(a: Optional[float], b: Optional[float]) -> Optional[float]:
    if a is None:
        return b
    if b is None:
        return a
    return a + b


def _sum(values: Iterable[Optional[float]]) -> Optional[float]:
    total: Optional[float] = None
    for v in values:
        total = _add(total, v)
    return total


def _weighted_mean(pairs: Iterable[Tuple[Optional[float], float]]) -> Optional[float]:
    """Mean of the (value, weight) pairs whose value is known (None when none is); equal
    weights when all are zero."""
    known = [(v, w) for v, w in pairs if v is not None]
    if not known:
        return None
    total = sum(w for _, w in known)
    if total <= 0:
        return sum(v for v, _ in known) / len(known)
    return sum(v * w for v, w in known) / total


def _scale(value: Optional[float], factor: float) -> Optional[float]:
    return None if value is None else value * factor


@dataclass
class RankEnergy:
    """One rank's measurements since its meter started (joules; None = not measured)."""

    node_id: str
    rank: int
    local_rank: int
    gpu_j: Optional[float]
    cpu_j: Optional[float]
    dram_j: Optional[float]
    node_j: Optional[float]
    slots_on_node_for_trial: int
    gpus_on_node: int
    sources: List[str] = field(default_factory=list)
    coverage: Dict[str, float] = field(default_factory=dict)
    duration_s: float = 0.0
    #: the longest time one of its sources bridged over failed samples, seconds
    bridged_s: float = 0.0
    #: most its figures may trail the reading, seconds (the source that lags most)
    lag_s: float = 0.0
    #: joules per component for each phase (they sum to the components above)
    phases: Dict[str, Dict[str, float]] = field(default_factory=dict)
    #: seconds of each phase (they sum to duration_s)
    phase_s: Dict[str, float] = field(default_factory=dict)
    #: mean utilisation of its GPUs since its meter started, % (None: not sampled)
    gpu_util_pct: Optional[float] = None

    @classmethod
    def from_snapshot(cls, snapshot: EnergySnapshot, *, node_id: str, rank: int,
                      local_rank: int, slots_on_node_for_trial: int,
                      gpus_on_node: int) -> "RankEnergy":
        """Build from a meter snapshot; components the meter did not measure stay None."""
        j = snapshot.joules
        return cls(node_id=node_id, rank=rank, local_rank=local_rank,
                   gpu_j=j.get("gpu"), cpu_j=j.get("cpu"), dram_j=j.get("dram"),
                   node_j=j.get("node"), slots_on_node_for_trial=slots_on_node_for_trial,
                   gpus_on_node=gpus_on_node, sources=list(snapshot.sources),
                   coverage=dict(snapshot.coverage), duration_s=snapshot.duration_s,
                   bridged_s=max(snapshot.bridged_s.values(), default=0.0),
                   lag_s=max(snapshot.lag_s.values(), default=0.0),
                   phases={p: dict(j) for p, j in snapshot.phases.items()},
                   phase_s=dict(snapshot.phase_s), gpu_util_pct=snapshot.gpu_util_pct)

    def to_dict(self) -> Dict[str, Any]:
        """Plain, picklable dict (what goes through allgather)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RankEnergy":
        """Inverse of ``to_dict``; a missing or unknown key is a ValueError naming it."""
        names = {f.name for f in fields(cls)}
        required = names - {"sources", "coverage", "duration_s", "bridged_s", "lag_s",
                            "phases", "phase_s", "gpu_util_pct"}  # those have defaults
        missing = sorted(required - set(data))
        unknown = sorted(set(data) - names)
        if missing or unknown:
            raise ValueError(f"RankEnergy dict: missing keys {missing}, unknown keys {unknown} "
                             f"(got {sorted(data)})")
        return cls(**dict(data))


@dataclass
class TrialEnergy:
    """The trial's energy (joules; None = nothing measured it)."""

    duration_s: float
    energy_j: Optional[float]
    gpu_j: Optional[float]
    cpu_j: Optional[float]
    dram_j: Optional[float]
    node_j: Optional[float]
    sources: List[str]
    nodes: int
    nodes_measured: int
    coverage: Optional[float]
    apportion: str
    #: Always False: every figure is a measurement. Reserved for a future TDP-based
    #: estimate, so that a reader never mistakes one for the other.
    estimate: bool = False
    #: seconds bridged over failed samples by the source that bridged longest
    bridged_s: float = 0.0
    #: most the figures may trail the report's end, seconds (the source that lags most)
    lag_s: float = 0.0
    #: joules per phase (``PHASES``); together they make ``energy_j``
    phase_j: Dict[str, Optional[float]] = field(default_factory=dict)
    #: seconds per phase (the longest rank's); together about ``duration_s``
    phase_s: Dict[str, float] = field(default_factory=dict)
    #: mean GPU utilisation, % (each rank's mean over its time, averaged over the ranks that
    #: sampled it; segments of a resumed trial weighted by their duration); None: not sampled
    gpu_util_pct: Optional[float] = None

    @classmethod
    def empty(cls, apportion: str = "gpu_share") -> "TrialEnergy":
        """Nothing measured yet (the offset of a trial that has not been resumed)."""
        return cls(0.0, None, None, None, None, None, [], 0, 0, None, apportion)

    def plus(self, earlier: "TrialEnergy") -> "TrialEnergy":
        """This segment added to an earlier one (a resumed trial continues its total)."""
        coverages = [c for c in (self.coverage, earlier.coverage) if c is not None]
        return TrialEnergy(
            duration_s=self.duration_s + earlier.duration_s,
            energy_j=_add(self.energy_j, earlier.energy_j),
            gpu_j=_add(self.gpu_j, earlier.gpu_j),
            cpu_j=_add(self.cpu_j, earlier.cpu_j),
            dram_j=_add(self.dram_j, earlier.dram_j),
            node_j=_add(self.node_j, earlier.node_j),
            sources=sorted(set(self.sources) | set(earlier.sources)),
            nodes=max(self.nodes, earlier.nodes),
            nodes_measured=max(self.nodes_measured, earlier.nodes_measured),
            coverage=min(coverages) if coverages else None,
            apportion=self.apportion,
            estimate=self.estimate or earlier.estimate,
            # the segments cover different times: bridged time adds up
            bridged_s=self.bridged_s + earlier.bridged_s,
            # a lag is at the end of each segment, not a quantity: the worst one stands
            lag_s=max(self.lag_s, earlier.lag_s),
            phase_j={p: _add(self.phase_j.get(p), earlier.phase_j.get(p))
                     for p in set(self.phase_j) | set(earlier.phase_j)},
            phase_s={p: self.phase_s.get(p, 0.0) + earlier.phase_s.get(p, 0.0)
                     for p in set(self.phase_s) | set(earlier.phase_s)},
            gpu_util_pct=_weighted_mean(((self.gpu_util_pct, self.duration_s),
                                         (earlier.gpu_util_pct, earlier.duration_s))),
        )

    def to_dict(self) -> Dict[str, Any]:
        """Plain dict (checkpoint state)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrialEnergy":
        """Inverse of ``to_dict``; a missing key is a ValueError naming it."""
        names = [f.name for f in fields(cls)]
        # estimate, bridged_s, lag_s, phase_j, phase_s and gpu_util_pct came later: a
        # checkpoint written before has none
        missing = [n for n in names if n not in data
                   and n not in ("estimate", "bridged_s", "lag_s", "phase_j", "phase_s",
                                 "gpu_util_pct")]
        if missing:
            raise ValueError(f"TrialEnergy state: missing keys {missing} (got {sorted(data)})")
        return cls(**{n: data[n] for n in names if n in data})

    @classmethod
    def from_metrics(cls, metrics: Mapping[str, Any]) -> "TrialEnergy":
        """Inverse of ``to_metrics`` (an ``energy`` record as reported): what a run that was
        killed after its last checkpoint had measured by its last report."""
        j = lambda wh: None if wh is None else float(wh) * J_PER_WH  # noqa: E731
        sources = metrics.get("sources") or "none"
        return cls(duration_s=float(metrics.get("duration_s") or 0.0),
                   energy_j=j(metrics.get("energy_wh")), gpu_j=j(metrics.get("gpu_wh")),
                   cpu_j=j(metrics.get("cpu_wh")), dram_j=j(metrics.get("dram_wh")),
                   node_j=j(metrics.get("node_wh")),
                   sources=[] if sources == "none" else sorted(str(sources).split(",")),
                   nodes=int(metrics.get("nodes") or 0),
                   nodes_measured=int(metrics.get("nodes_measured") or 0),
                   coverage=metrics.get("coverage"), apportion=str(metrics.get("apportion") or "gpu_share"),
                   estimate=bool(metrics.get("estimate", False)),
                   bridged_s=float(metrics.get("bridged_s") or 0.0),
                   lag_s=float(metrics.get("lag_s") or 0.0),
                   phase_j={p: j(metrics.get(f"{p}_wh")) for p in PHASES
                            if metrics.get(f"{p}_wh") is not None},
                   phase_s={p: float(metrics[f"{p}_s"]) for p in PHASES
                            if metrics.get(f"{p}_s") is not None},
                   gpu_util_pct=metrics.get("gpu_util_pct"))

    @property
    def energy_wh(self) -> Optional[float]:
        """Total energy in watt-hours (None when nothing was measured)."""
        return None if self.energy_j is None else self.energy_j / J_PER_WH

    def to_metrics(self, *, pue: Optional[float] = None,
                   carbon_intensity_g_per_kwh: Optional[float] = None) -> Dict[str, Any]:
        """The public metric names (group "energy").

        ``facility_wh`` = energy x PUE, when ``pue`` is given. ``co2e_g`` = facility energy
        (or IT energy without a PUE) x grid carbon intensity, when the intensity is given:
        the grid supplies the whole facility, so the PUE is included when known.
        """
        wh = lambda j: None if j is None else j / J_PER_WH  # noqa: E731
        energy_wh = wh(self.energy_j)
        metrics: Dict[str, Any] = {
            "energy_wh": energy_wh,
            "gpu_wh": wh(self.gpu_j),
            "cpu_wh": wh(self.cpu_j),
            "dram_wh": wh(self.dram_j),
            "node_wh": wh(self.node_j),
            # A number whenever energy_wh is one (0.0 for a phase that has not happened),
            # so a column never mixes null and numbers within a trial.
            **{f"{p}_wh": (None if self.energy_j is None
                           else (self.phase_j.get(p) or 0.0) / J_PER_WH) for p in PHASES},
            # seconds are known whether or not energy was measured: always numbers
            **{f"{p}_s": float(self.phase_s.get(p, 0.0)) for p in PHASES},
            "avg_power_w": (self.energy_j / self.duration_s
                            if self.energy_j is not None and self.duration_s > 0 else None),
            "duration_s": self.duration_s,
            "sources": ",".join(sorted(self.sources)) if self.sources else "none",
            "nodes": self.nodes,
            "nodes_measured": self.nodes_measured,
            "coverage": self.coverage,
            "measured": is_measured(energy_wh, self.coverage),
            "bridged_s": float(self.bridged_s),
            "lag_s": float(self.lag_s),
            "apportion": self.apportion,
            "estimate": self.estimate,
        }
        # Only where NVML sampled it (as facility_wh only with a PUE): a trial either has it
        # in every report or in none, so the column never mixes null and numbers.
        if self.gpu_util_pct is not None:
            metrics["gpu_util_pct"] = float(self.gpu_util_pct)
        facility_wh = None
        if pue is not None:
            facility_wh = None if energy_wh is None else energy_wh * pue
            metrics["facility_wh"] = facility_wh
        if carbon_intensity_g_per_kwh is not None:
            basis = facility_wh if pue is not None else energy_wh
            metrics["co2e_g"] = (None if basis is None
                                 else basis / 1000.0 * carbon_intensity_g_per_kwh)
        return metrics


def _share(reader: RankEnergy, apportion: str) -> float:
    if apportion == "none" or reader.gpus_on_node <= 0:
        return 1.0  # "none" asked for, or a CPU-only node: no GPU share to compute
    if reader.slots_on_node_for_trial > reader.gpus_on_node:
        log.warning("energy: node %s reports %d slots for this trial but %d GPUs; charging "
                    "the whole node", reader.node_id, reader.slots_on_node_for_trial,
                    reader.gpus_on_node)
        return 1.0
    return reader.slots_on_node_for_trial / reader.gpus_on_node


def combine(reports: Sequence[Union[RankEnergy, Mapping[str, Any]]],
            apportion: str = "gpu_share") -> TrialEnergy:
    """Combine every rank's report into the trial's energy (see the module docstring).

    Raises:
        ValueError: unknown ``apportion`` rule, or a malformed report dict.
    """
    if apportion not in APPORTION_RULES:
        raise ValueError(f"energy.apportion must be one of {APPORTION_RULES}, got {apportion!r}")
    ranks = [r if isinstance(r, RankEnergy) else RankEnergy.from_dict(r) for r in reports]
    by_node: Dict[str, List[RankEnergy]] = {}
    for r in ranks:
        by_node.setdefault(r.node_id, []).append(r)

    node_totals: List[Optional[float]] = []
    gpu: List[Optional[float]] = []
    cpu: List[Optional[float]] = []
    dram: List[Optional[float]] = []
    node: List[Optional[float]] = []
    phase_totals: Dict[str, List[Optional[float]]] = {p: [] for p in PHASES}
    for node_id, group in sorted(by_node.items()):
        group.sort(key=lambda r: r.local_rank)
        readers = [r for r in group if (r.cpu_j, r.dram_j, r.node_j) != (None, None, None)]
        if len(readers) > 1:
            log.warning("energy: %d ranks on node %s report node-level energy (local ranks "
                        "%s); using local rank %d only, so it is counted once", len(readers),
                        node_id, [r.local_rank for r in readers], readers[0].local_rank)
        reader = readers[0] if readers else group[0]
        share = _share(reader, apportion)
        node_gpu, n_cpu, n_dram, n_node, total = _node_figures(group, reader, share, _whole)
        node_totals.append(total)
        gpu.append(node_gpu)
        cpu.append(n_cpu)
        dram.append(n_dram)
        node.append(n_node)
        for phase in PHASES:
            phase_totals[phase].append(
                _node_figures(group, reader, share, _in_phase(phase))[4])

    coverages = [c for r in ranks for c in r.coverage.values()]
    return TrialEnergy(
        duration_s=max((r.duration_s for r in ranks), default=0.0),
        energy_j=_sum(node_totals),
        gpu_j=_sum(gpu),
        cpu_j=_sum(cpu),
        dram_j=_sum(dram),
        node_j=_sum(node),
        sources=sorted({s for r in ranks for s in r.sources}),
        nodes=len(by_node),
        nodes_measured=sum(t is not None for t in node_totals),
        coverage=min(coverages) if coverages else None,
        apportion=apportion,
        bridged_s=max((r.bridged_s for r in ranks), default=0.0),
        lag_s=max((r.lag_s for r in ranks), default=0.0),
        phase_j={p: _sum(t) for p, t in phase_totals.items()},
        phase_s={p: max((r.phase_s.get(p, 0.0) for r in ranks), default=0.0)
                 for p in PHASES},
        gpu_util_pct=_weighted_mean((r.gpu_util_pct, 1.0) for r in ranks),
    )


_Parts = Tuple[Optional[float], Optional[float], Optional[float], Optional[float]]


def _whole(r: RankEnergy) -> _Parts:
    return r.gpu_j, r.cpu_j, r.dram_j, r.node_j


def _in_phase(phase: str) -> Callable[[RankEnergy], _Parts]:
    def parts(r: RankEnergy) -> _Parts:
        # A component the rank measured is a number in every phase (0.0 where the phase
        # did not happen), so the phases are combined exactly as the whole is.
        joules = r.phases.get(phase, {})
        return tuple(None if whole is None else joules.get(comp, 0.0)  # type: ignore[return-value]
                     for comp, whole in zip(("gpu", "cpu", "dram", "node"), _whole(r)))
    return parts


def _node_figures(group: Sequence[RankEnergy], reader: RankEnergy, share: float,
                  parts: Callable[[RankEnergy], _Parts]
                  ) -> Tuple[Optional[float], Optional[float], Optional[float],
                             Optional[float], Optional[float]]:
    """One node's gpu, cpu, dram, node and total joules (the module docstring's rule), of
    the whole run or of one phase (``parts``)."""
    node_gpu = _sum(parts(r)[0] for r in group)
    _, cpu_j, dram_j, node_j = parts(reader)
    n_cpu = _scale(cpu_j, share)
    n_dram = _scale(dram_j, share)
    n_node = _scale(node_j, share)
    if n_node is not None:
        # The PSU input already contains GPUs, CPUs and DRAM: it IS the node total.
        total = n_node
    else:
        total = _sum((node_gpu, n_cpu, n_dram))
    return node_gpu, n_cpu, n_dram, n_node, total
