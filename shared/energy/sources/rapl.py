"""CPU package and DRAM energy from the Linux powercap RAPL interface.

Layout read (``/sys/class/powercap``, or ``ENERGY_RAPL_ROOT`` for a copy or a test tree)::

    intel-rapl:0/            name = package-0   -> component "cpu"
    intel-rapl:0:0/          name = core        (inside the package: ignored)
    intel-rapl:0:1/          name = uncore      (inside the package: ignored)
    intel-rapl:0:2/          name = dram        -> component "dram"
    intel-rapl:1/            name = package-1   -> "cpu" (second socket)
    intel-rapl:2/            name = psys        (platform domain: contains the packages, ignored)
    intel-rapl-mmio:0/       (MMIO copy of package-0 on client CPUs: ignored)

each zone with ``energy_uj`` (counter) and ``max_energy_range_uj`` (its range). Subzones
appear both at the top level (sysfs symlinks) and inside their package; both are accepted
and deduplicated. Recent kernels expose AMD Zen packages through the same tree (names
``package-N`` and ``core``), so AMD needs nothing special.

The counters are node-wide: one process per node reads them (scope "node"). Reads happen
when ``read()`` is called, without a thread, unless a counter could wrap more than once
between two reports (see ``RaplSource.poll_period_s``).
"""
from __future__ import annotations

import math
import os
import re
import threading
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional

from ..redact import energy_logger
from ..schema import EnvVar, Param, Positive
from .base import EnergySource, RawCounter, SourceUnavailable
from .counters import counter_step

log = energy_logger()

ENV_ROOT = "ENERGY_RAPL_ROOT"
DEFAULT_ROOT = "/sys/class/powercap"
#: Ceiling used to compute how fast a counter can wrap: no current server CPU package or
#: DRAM domain draws 1 kW. Param ``rapl_max_power_w`` changes it.
DEFAULT_MAX_POWER_W = 1000.0
#: A poll thread is started when a counter can wrap within this many seconds: reports can be
#: this far apart (long training chunks, validation) and a double wrap between two reads is
#: undetectable. Param ``rapl_poll_below_s`` changes it.
DEFAULT_POLL_BELOW_S = 3600.0
#: The kernel's RAPL counters are 32-bit (ENERGY_STATUS_MASK = 0xFFFFFFFF energy units).
_COUNTER_STEPS = 2**32 - 1

_PACKAGE_RE = re.compile(r"^intel-rapl:(\d+)$")
_SUBZONE_RE = re.compile(r"^intel-rapl:(\d+):(\d+)$")

_PERMISSION_HELP = (
    "RAPL energy counters are readable by root only since Linux 5.10 (CVE-2020-8694). "
    "Fix: run the trial as root, or make them readable on each node, e.g. "
    "`chmod a+r /sys/class/powercap/intel-rapl:*/energy_uj "
    "/sys/class/powercap/intel-rapl:*:*/energy_uj` (lost at reboot) or a udev rule "
    "`SUBSYSTEM==\"powercap\", ACTION==\"add\", RUN+=\"/bin/chmod a+r /sys%p/energy_uj\"`, "
    "or set energy.sources without rapl")


def rapl_modulus_uj(max_range_uj: int) -> Fraction:
    """The value at which a RAPL counter wraps to 0, in uJ.

    The kernel reports ``energy_uj = raw * unit`` with ``raw`` a 32-bit counter of
    hardware energy units, and ``max_energy_range_uj = 0xFFFFFFFF * unit`` (see
    ``get_max_energy_counter`` in drivers/powercap/intel_rapl_common.c). ``raw`` wraps from
    0xFFFFFFFF to 0, so the modulus is ``(0xFFFFFFFF + 1) * unit``, that is ``max + unit``
    with ``unit = max / 0xFFFFFFFF``: neither ``max`` nor ``max + 1 uJ``. The difference is
    one energy unit (15-61 uJ) per wrap, negligible, but this is the exact rule. A Fraction,
    so that ``modulus - prev`` stays exact (as a ~1e11 float it would round the unit).
    """
    return Fraction(max_range_uj) + Fraction(max_range_uj, _COUNTER_STEPS)


def wrap_delta_uj(prev_uj: int, cur_uj: int, max_range_uj: int) -> float:
    """Energy between two readings of a RAPL counter taken as at most one wrap, with no
    plausibility check (``counter_step`` with no power ceiling). Two wraps between readings
    cannot be seen here; the poll thread prevents them."""
    return counter_step(prev_uj, cur_uj, elapsed_s=0.0, joules_per_unit=1e-6,
                        max_power_w=None, modulus=rapl_modulus_uj(max_range_uj)).delta


@dataclass
class _Domain:
    path: Path
    name: str
    component: str  # "cpu" or "dram"
    max_uj: int
    last_uj: int = 0
    last_t: float = 0.0  # clock time of last_uj
    acc_uj: float = 0.0

    @property
    def energy_file(self) -> Path:
        return self.path / "energy_uj"


class RaplSource(EnergySource):
    """CPU packages ("cpu") and DRAM ("dram") energy of the whole node, from RAPL.

    Args:
        root: the powercap directory (default ``/sys/class/powercap``).
        max_power_w: power ceiling per domain used to compute the fastest wrap.
        poll_below_s: start a poll thread when a counter can wrap faster than this.
        clock: monotonic clock in seconds (tests inject a fake one); the time between two
            reads tells a wrap (plausible power) from a reset.
    """

    name = "rapl"
    covers = ("cpu", "dram")
    scope = "node"
    priority = 20
    summary = ("powercap `energy_uj` of every CPU package and DRAM domain, read at report "
               "time, wrap through `max_energy_range_uj`; a slow poll thread only when a "
               "counter could wrap twice between reports. `energy_uj` is root-only since "
               "Linux 5.10: unreadable is reported once as unavailable")
    env_vars = (
        EnvVar(ENV_ROOT, f"powercap directory to read (default `{DEFAULT_ROOT}`), e.g. a "
                         "read-only bind mount of the host's "
                         "`/sys/devices/virtual/powercap/intel-rapl`"),
    )
    options = (
        Param(None, name="rapl_max_power_w",
              help="power ceiling per RAPL domain, W, used to size the counter-wrap poll and to "
                   "tell a wrap from a counter reset (a drop implying more is a reset, not "
                   f"counted) (default {DEFAULT_MAX_POWER_W:g})", check=Positive()),
        Param(None, name="rapl_poll_below_s",
              help="read RAPL on a thread when a counter can wrap faster than this, seconds "
                   f"(default {DEFAULT_POLL_BELOW_S:g})", check=Positive()),
    )

    def __init__(self, root: str | os.PathLike = DEFAULT_ROOT, *,
                 max_power_w: float = DEFAULT_MAX_POWER_W,
                 poll_below_s: float = DEFAULT_POLL_BELOW_S,
                 clock: Optional[Callable[[], float]] = None) -> None:
        super().__init__()
        self._clock = clock or time.monotonic
        for label, value in (("rapl_max_power_w", max_power_w),
                             ("rapl_poll_below_s", poll_below_s)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{label} must be a positive number, got {value!r}")
        self.root = Path(root)
        self.max_power_w = float(max_power_w)
        self.poll_below_s = float(poll_below_s)
        self._domains: List[_Domain] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.poll_period_s: Optional[float] = None  # set by open() when a poll thread runs
        self.polls = 0
        self.resets = 0  # counter decreases judged resets (not counted)

    @classmethod
    def from_env(cls, env: Mapping[str, str], options: Mapping[str, Any]) -> "RaplSource":
        """Root from ``ENERGY_RAPL_ROOT``; ``rapl_max_power_w`` / ``rapl_poll_below_s`` from
        the energy options."""
        return cls(env.get(ENV_ROOT) or DEFAULT_ROOT,
                   max_power_w=options.get("rapl_max_power_w", DEFAULT_MAX_POWER_W),
                   poll_below_s=options.get("rapl_poll_below_s", DEFAULT_POLL_BELOW_S))

    # -- discovery --------------------------------------------------------------------------
    def _discover(self) -> List[_Domain]:
        if not self.root.is_dir():
            raise SourceUnavailable(f"rapl: {self.root} does not exist (no powercap interface "
                                    f"on this machine, or not mounted in the container)")
        packages: Dict[str, Path] = {}
        subzones: Dict[str, Path] = {}
        for entry in sorted(self.root.iterdir()):
            if _PACKAGE_RE.match(entry.name):
                packages[str(entry.resolve())] = entry
                for child in sorted(entry.iterdir()) if entry.is_dir() else ():
                    if _SUBZONE_RE.match(child.name):
                        subzones.setdefault(str(child.resolve()), child)
            elif _SUBZONE_RE.match(entry.name):
                subzones.setdefault(str(entry.resolve()), entry)
        domains: List[_Domain] = []
        for path in packages.values():
            name = _read_text(path / "name")
            if name.startswith("package"):
                domains.append(self._domain(path, name, "cpu"))
            elif name == "dram":  # some platforms expose DRAM as a top-level zone
                domains.append(self._domain(path, name, "dram"))
            # "psys" covers the whole SoC including the packages: counting it would count twice
        for path in subzones.values():
            name = _read_text(path / "name")
            if name == "dram":
                domains.append(self._domain(path, name, "dram"))
            # "core" and "uncore" are parts of their package: already in "cpu"
        if not any(d.component == "cpu" for d in domains):
            raise SourceUnavailable(f"rapl: no package domain (intel-rapl:N with name "
                                    f"package-N) under {self.root}")
        return domains

    def _domain(self, path: Path, name: str, component: str) -> _Domain:
        max_file = path / "max_energy_range_uj"
        max_uj = _read_uj(max_file)
        if max_uj <= 0:
            raise SourceUnavailable(f"rapl: {max_file} holds {max_uj}, expected a positive range")
        start = _read_uj(path / "energy_uj")
        return _Domain(path=path, name=name, component=component, max_uj=max_uj, last_uj=start,
                       last_t=self._clock())

    # -- lifecycle --------------------------------------------------------------------------
    def open(self) -> None:
        try:
            self._domains = self._discover()
        except PermissionError as err:
            raise SourceUnavailable(f"rapl: cannot read {err.filename}: permission denied. "
                                    f"{_PERMISSION_HELP}")
        wrap_s = self.fastest_wrap_s()
        if wrap_s < self.poll_below_s:
            # A quarter of the fastest wrap: even at twice the assumed ceiling power a counter
            # is read at least twice per wrap, so no wrap can be missed.
            self.poll_period_s = wrap_s / 4.0
            self._thread = threading.Thread(target=self._poll_loop, name="energy-rapl-poll",
                                            daemon=True)
            self._thread.start()
            log.info("rapl: a counter can wrap every %.3g s at %g W; polling every %.3g s",
                     wrap_s, self.max_power_w, self.poll_period_s)

    def fastest_wrap_s(self) -> float:
        """Seconds for the smallest-range counter to wrap at ``max_power_w``."""
        return min(d.max_uj for d in self._domains) / 1e6 / self.max_power_w

    def _poll_loop(self) -> None:
        assert self.poll_period_s is not None
        while not self._stop.wait(self.poll_period_s):
            self._update()
            self.polls += 1

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None

    # -- reading ----------------------------------------------------------------------------
    def _update(self) -> None:
        with self._lock:
            for d in self._domains:
                try:
                    cur = _read_uj(d.energy_file)
                except (OSError, SourceUnavailable) as err:
                    self.health.record_failure(self.name, err)
                    continue
                now = self._clock()
                step = counter_step(d.last_uj, cur, elapsed_s=now - d.last_t,
                                    joules_per_unit=1e-6, max_power_w=self.max_power_w,
                                    modulus=rapl_modulus_uj(d.max_uj))
                prev, d.last_uj, d.last_t = d.last_uj, cur, now
                if not step.counted:
                    self.resets += 1
                    self.health.record_lost(
                        self.name, f"{self.name}/{d.path.name}",
                        f"{d.energy_file}: {step.why} (rapl_max_power_w = "
                        f"{self.max_power_w:g} W), a {step.kind} reading; the energy since the "
                        f"previous read is not counted")
                    continue
                d.acc_uj += step.delta
                self.health.record_ok()

    def read(self) -> Dict[str, float]:
        self._update()
        totals: Dict[str, float] = {}
        with self._lock:
            for d in self._domains:
                totals[d.component] = totals.get(d.component, 0.0) + d.acc_uj / 1e6
        return totals

    def raw_counters(self) -> Dict[str, RawCounter]:
        """Each domain's ``energy_uj`` as last read, by its powercap directory name."""
        with self._lock:
            return {d.path.name: RawCounter(d.component, d.last_uj, 1e-6,
                                            rapl_modulus_uj(d.max_uj), self.max_power_w)
                    for d in self._domains}

    def describe(self) -> str:
        parts = [f"{d.path.name} ({d.name})" for d in self._domains]
        poll = f"; polled every {self.poll_period_s:.1f} s" if self.poll_period_s else ""
        return f"rapl: {', '.join(parts)} under {self.root}{poll}"


def _read_text(path: Path) -> str:
    try:
        return path.read_text().strip()
    except PermissionError:
        raise
    except OSError as err:
        raise SourceUnavailable(f"rapl: cannot read {path}: {err.strerror or err}")


def _read_uj(path: Path) -> int:
    text = _read_text(path)
    try:
        value = int(text)
    except ValueError:
        raise SourceUnavailable(f"rapl: {path} holds {text[:40]!r}, expected an integer (uJ)")
    if value < 0:
        raise SourceUnavailable(f"rapl: {path} holds {value}, expected a non-negative integer")
    return value
