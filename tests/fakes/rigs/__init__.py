"""Each registered energy source's fake, set up for one round trip: the one place where a
source says how it is tested without its hardware.

A source called ``<name>`` (``shared.energy.sources``) has its rig in ``rigs/<name>.py``:
a context manager ``rig(tmp_path, monkeypatch)`` that starts the fake (a powercap tree, the
NVML module, a BMC or Prometheus over real HTTP, ipmitool on PATH) and yields a ``Rig``.
``tests/test_every_source.py`` runs every registered source against its rig, so adding a
source means adding its module and its rig file, and no test is edited; a registered source
without a rig fails that test, which names the file to add.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import sys
import time
from pathlib import Path
from typing import Any, Callable, ContextManager, Dict, List, Tuple

RIGS = Path(__file__).resolve().parent


@dataclasses.dataclass
class Rig:
    """A source's fake, running.

    Attributes:
        env: the environment the source is built from (its ``ENERGY_*`` variables).
        drive: called after ``open()``: makes the fake deliver energy (advances its counters
            or clock, or waits for the source to take samples).
        expect: called right after ``read()``: per component, the (lowest, highest) joules
            the read may hold, from the fake's truth.
        options: the ``energy`` options (defaults are filled in as training does).
    """

    env: Dict[str, str]
    drive: Callable[[Any], None]
    expect: Callable[[Any], Dict[str, Tuple[float, float]]]
    options: Dict[str, Any] = dataclasses.field(default_factory=dict)


class SampledWindow:
    """``drive`` and ``expect`` for a source that samples power on its own thread
    (``sampling.SampledPowerSource``) from a fake at constant ``watts``: the integral spans its
    samples, so it is at least ``watts`` times the span up to the last sample taken before the
    read, and never ahead of the read (times measured, not assumed: a busy machine samples
    late, which moves the bounds, not the verdict)."""

    def __init__(self, watts: float, component: str, samples: int = 5) -> None:
        self.watts, self.component, self.samples = float(watts), component, samples
        self.last = 0.0

    def drive(self, source: Any) -> None:
        hang = time.monotonic() + 120.0  # a hang guard only
        while source.health.attempts < self.samples and time.monotonic() < hang:
            time.sleep(0.01)
        self.last = source._sampler.last_sample_time()

    def expect(self, source: Any) -> Dict[str, Tuple[float, float]]:
        first = source._sampler.first_sample_time()
        return {self.component: (self.watts * (self.last - first) - 1e-6,
                                 self.watts * (time.monotonic() - first) + 1e-6)}


def no_proxy(monkeypatch: Any) -> None:
    """No proxy variables: the sources honour them, and a loopback simulator is reached directly."""
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


def rig_names() -> List[str]:
    """The sources that have a rig here, sorted."""
    return sorted(p.stem for p in RIGS.glob("*.py") if p.stem != "__init__")


def rig_for(name: str) -> Callable[..., ContextManager[Rig]]:
    """The ``rig`` context manager of source ``name``.

    Raises:
        LookupError: there is no ``rigs/<name>.py``; the message names the file to write.
    """
    path = RIGS / f"{name}.py"
    if not path.is_file():
        raise LookupError(f"energy source {name!r} has no fake: write {path} with a context "
                          f"manager rig(tmp_path, monkeypatch) that yields a Rig "
                          f"(see {RIGS / '__init__.py'})")
    modname = f"energy_rig_{name}"
    if modname not in sys.modules:
        spec = importlib.util.spec_from_file_location(modname, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[modname] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[modname]
            raise
    return sys.modules[modname].rig
