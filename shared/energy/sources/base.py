"""The one interface every energy source implements.

A source reports *cumulative joules since it was opened*, per component. Sources with a
hardware counter (NVML energy, RAPL) read it at report time; sources that only expose
power (NVML power on old GPUs, Redfish, IPMI) integrate samples on their own thread.
"""
from __future__ import annotations

import abc
import logging
from dataclasses import dataclass, field
from typing import Dict, Literal

log = logging.getLogger("shared.energy")

# Component keys a source may report. "node" is the power-supply input of the whole node
# (contains the GPUs, CPUs and DRAM); the others are parts.
COMPONENTS = ("gpu", "cpu", "dram", "node")


class SourceUnavailable(RuntimeError):
    """Raised by ``open()`` when a source cannot work here (no device, no permission, no URL).

    The message says why, in words a user can act on; it never contains credentials.
    """


@dataclass
class SourceHealth:
    """Coverage bookkeeping: how many reads/samples worked, and the first error seen."""

    attempts: int = 0
    failures: int = 0
    first_error: str | None = None
    logged: bool = field(default=False, repr=False)

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
        text = str(err)
        if self.first_error is None:
            self.first_error = text
        if not self.logged:
            self.logged = True
            log.warning("energy source %s failed (%s); skipping, further errors are counted, "
                        "not logged", source, text)


class EnergySource(abc.ABC):
    """Cumulative energy since ``open()``, per component, in joules."""

    #: short name used in ENERGY_SOURCES and in reports: nvml, rapl, redfish, ipmi, prometheus
    name: str = ""
    #: "device": per-rank (the GPUs this process owns); "node": read by one process per node
    scope: Literal["device", "node"] = "node"

    def __init__(self) -> None:
        self.health = SourceHealth()

    @abc.abstractmethod
    def open(self) -> None:
        """Start measuring; raise SourceUnavailable with a reason if it cannot work here."""

    @abc.abstractmethod
    def read(self) -> Dict[str, float]:
        """Cumulative joules per component since ``open()``. Never raises for a transient
        failure: it records it in ``self.health`` and returns the last good totals."""

    def close(self) -> None:
        """Stop threads, release handles. Safe to call twice."""

    def describe(self) -> str:
        """One line for the log: what is measured, e.g. 'nvml: GPU 0,1 (energy counter)'."""
        return self.name
