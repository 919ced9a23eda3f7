"""The one interface every energy source implements, and what each source declares.

A source reports *cumulative joules since it was opened*, per component. Sources with a
hardware counter (NVML energy, RAPL) read it at report time; sources that only expose
power (NVML power on old GPUs, Redfish, IPMI) integrate samples on their own thread
(``sampling.SampledPowerSource``).

A source describes itself with class attributes (``name``, ``covers``, ``scope``,
``priority``, ``auto_env``, ``env_vars``, ``options``, ``summary``); selection
(``shared.energy.select``), option checking (``shared.energy.options``) and the docs tables
(``shared.energy_docs``) are derived from them. ``shared.energy.sources`` holds the registry
and says how to add a source.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Dict, Literal, Mapping, Optional, Tuple

from ..errors import SourceUnavailable
from ..redact import energy_logger, redact
from ..schema import EnvVar, Param

log = energy_logger()

# Component keys a source may report. "node" is the power-supply input of the whole node
# (contains the GPUs, CPUs and DRAM); the others are parts.
COMPONENTS = ("gpu", "cpu", "dram", "node")

#: The most one node can draw, watts: a reading above it (a BMC's ``PowerConsumedWatts``, a node
#: energy counter's rate) is not believed. 20 kW is twice an 8-GPU H200 node at full power
#: (8 x 700 W GPUs plus CPUs, memory, fans and supplies' losses is under 10 kW).
MAX_NODE_POWER_W = 20_000.0


@dataclass
class SourceHealth:
    """Coverage bookkeeping: how many reads/samples worked, and the first error seen."""

    attempts: int = 0
    failures: int = 0
    first_error: str | None = None
    logged: bool = field(default=False, repr=False)
    #: keys (e.g. "rapl/intel-rapl:0") already warned about by ``record_lost``
    warned: set = field(default_factory=set, repr=False)

    @property
    def coverage(self) -> float:
        """Fraction of reads or samples that succeeded (1.0 when nothing was attempted yet)."""
        if self.attempts == 0:
            return 1.0
        return (self.attempts - self.failures) / self.attempts

    def record_ok(self) -> None:
        self.attempts += 1

    def record_failure(self, source: str, err: BaseException | str) -> None:
        """Count a failure; log it once per source (training must go on, logs must not flood)."""
        self.attempts += 1
        self.failures += 1
        text = redact(err)  # first_error is shown in reports, not only in the log
        if self.first_error is None:
            self.first_error = text
        if not self.logged:
            self.logged = True
            log.warning("energy source %s failed (%s); skipping, further errors are counted, "
                        "not logged", source, text)


    def record_lost(self, source: str, key: str, message: str) -> None:
        """Count an interval whose energy is unknown and left out (a counter reset), and
        warn once per ``key`` (a domain, a GPU): each distinct counter that lies is named,
        a counter that keeps resetting does not flood the log."""
        self.attempts += 1
        self.failures += 1
        if self.first_error is None:
            self.first_error = redact(message)
        if key not in self.warned:
            self.warned.add(key)
            log.warning("energy source %s: %s; further resets of it are counted in coverage, "
                        "not logged", source, message)


@dataclass(frozen=True)
class RawCounter:
    """One hardware energy counter as last read: an absolute value that survives the process
    (RAPL's ``energy_uj``, NVML's total energy since driver load), so that two processes can
    difference it (``shared.energy.meter.EnergyMeter.count_gap``: the energy between a killed
    run's last report and the restart). The arguments of ``counters.counter_step``.

    Attributes:
        component: the component it counts ("cpu", "dram", "gpu").
        value: the raw reading, in counter units.
        joules_per_unit: 1e-6 for uJ, 1e-3 for mJ.
        modulus: where it wraps (None: it never wraps in practice, a decrease is a reset).
        max_power_w: the most the domain can draw (a wrap implying more is a reset).
    """

    component: str
    value: int
    joules_per_unit: float
    modulus: Any = None
    max_power_w: Optional[float] = None


class EnergySource(abc.ABC):
    """Cumulative energy since ``open()``, per component, in joules.

    A subclass declares itself with the class attributes below and builds itself with
    ``from_env``; ``shared.energy.sources.register_source`` checks the declaration.
    """

    #: short name used in ENERGY_SOURCES, ``energy.sources`` and reports (lower case)
    name: str = ""
    #: the components it reports (keys of ``read()``), among ``COMPONENTS``
    covers: Tuple[str, ...] = ()
    #: "device": per rank (the GPUs this process owns), built only in a process that uses a
    #: GPU; "node": node-wide, built only in one process per node (local rank 0)
    scope: Literal["device", "node"] = "node"
    #: order of preference, lower first: when two sources measure the same component the
    #: first wins (the meter drops the other's copy)
    priority: int = 100
    #: when set, ``auto`` tries the source only if this variable is set (and not empty):
    #: probing it otherwise costs network timeouts or a fork on every node
    auto_env: Optional[str] = None
    #: the ENERGY_* variables it reads, with their docs
    env_vars: Tuple["EnvVar", ...] = ()
    #: its own keys of the ``energy`` hyperparameter, with defaults, checks and docs
    options: Tuple["Param", ...] = ()
    #: how it measures, one line for the docs' sources table
    summary: str = ""

    def __init__(self) -> None:
        self.health = SourceHealth()

    @classmethod
    def from_env(cls, env: Mapping[str, str], options: Mapping[str, Any]) -> "EnergySource":
        """Build (not open) the source from its environment variables and the ``energy``
        options (defaults filled in, None values dropped).

        A "device" source is also given ``gpu_indices=`` (the CUDA indices of this process).

        Raises:
            SourceUnavailable: it is not configured here (a variable unset or unusable).
            ValueError: a bad option value.
        """
        raise NotImplementedError(f"{cls.__name__} does not implement from_env")

    @abc.abstractmethod
    def open(self) -> None:
        """Start measuring; raise SourceUnavailable with a reason if it cannot work here."""

    @abc.abstractmethod
    def read(self) -> Dict[str, float]:
        """Cumulative joules per component since ``open()``. Never raises for a transient
        failure: it records it in ``self.health`` and returns the last good totals."""

    def raw_counters(self) -> Dict[str, RawCounter]:
        """The absolute hardware counters behind the figure of the last ``read()``, by a key
        that names the same counter in another process on this node (a RAPL domain, a GPU's
        UUID); empty for a source whose figure does not come entirely from such counters
        (sampled power, a far end's series): the energy between two of its processes cannot
        be measured. No I/O: the values of the last read."""
        return {}

    def bridged_s(self) -> float:
        """Seconds of the energy so far that were bridged over failed samples with a straight
        line rather than measured (``sampling.PowerSampler``); 0.0 for a source that reads a
        counter or a stored series and therefore bridges nothing."""
        return 0.0

    def coverage(self) -> float:
        """The share of the time since ``open()`` that the figure measured (0-1): by default the
        share of reads that succeeded (``health``); a sampled source, the share of its time
        between good samples with no failure in between (``sampling.PowerSampler``)."""
        return self.health.coverage

    @property
    def lags(self) -> bool:
        """True for a source whose figure trails the present (sampled power) and that tells
        its energy at a past instant (``energy_at``); False for one read at the moment it is
        asked."""
        return False

    def energy_at(self, t: float) -> Optional[Dict[str, float]]:
        """Cumulative joules per component at an earlier clock time ``t``, for a source whose
        figure comes in behind the present (sampled power): the meter splits each interval's
        energy over the phases by time with it. None: not known (yet), or a source that is
        read at the moment it is asked (counters), whose reading at a phase mark is exact."""
        return None

    def release(self, before: float) -> None:
        """``energy_at`` will not be asked about times before ``before`` again."""

    @property
    def label(self) -> str:
        """What the ``sources`` list of a report shows for it: ``name`` unless the source
        chose among several things to read and the reader must know which (Redfish: the
        resource, ``redfish:Chassis/Node0/Sensors/NodeEnergy:energy-counter``). Display only:
        every key inside the library stays ``name``."""
        return self.name

    @property
    def lag_s(self) -> float:
        """Most, in seconds, that the figure ``read()`` returns may trail the moment of the
        read: 0.0 for a counter read then (RAPL, NVML energy counters, a Redfish energy
        counter); one period for a sampled source; two steps for Prometheus."""
        return 0.0

    def close(self) -> None:
        """Stop threads, release handles. Safe to call twice."""

    def describe(self) -> str:
        """One line for the log: what is measured, e.g. 'nvml: GPU 0,1 (energy counter)'."""
        return self.name
