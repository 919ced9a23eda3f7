"""A fake Linux powercap (RAPL) tree in a temporary directory, advanced by the test.

Same layout as /sys/class/powercap: package zones ``intel-rapl:N`` with subzones nested
inside (``intel-rapl:N/intel-rapl:N:M``) and also linked at the top level, each with
``name``, ``energy_uj`` and ``max_energy_range_uj``. Counters wrap like the hardware: the
kernel's ``max_energy_range_uj`` is 0xFFFFFFFF energy units, so the modulus is
``max + max / 0xFFFFFFFF``.
"""
from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path
from typing import Dict, Iterator

STEPS = 2**32 - 1


class FakePowercap:
    """Builds and drives a powercap tree under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._value: Dict[str, float] = {}
        self._max: Dict[str, int] = {}
        self._dir: Dict[str, Path] = {}
        self.truth_uj: Dict[str, float] = {}
        #: the longest interval between two advances of ``constant_power`` (see there)
        self.max_step_s = 0.0

    def add_zone(self, zone: str, name: str, *, max_uj: int = 262_143_328_850,
                 energy_uj: int = 0) -> Path:
        """Add ``intel-rapl:N`` or ``intel-rapl:N:M`` (nested in its package, plus a
        top-level symlink as sysfs has)."""
        parts = zone.split(":")
        if len(parts) == 3:
            parent = self._dir[":".join(parts[:2])]
            path = parent / zone
            path.mkdir()
            os.symlink(path, self.root / zone)
        else:
            path = self.root / zone
            path.mkdir()
        (path / "name").write_text(name + "\n")
        (path / "max_energy_range_uj").write_text(f"{max_uj}\n")
        self._dir[zone] = path
        self._max[zone] = max_uj
        self._value[zone] = float(energy_uj)
        self.truth_uj[zone] = 0.0
        self._write(zone)
        return path

    def _write(self, zone: str) -> None:
        # Atomic replace: a poll thread must never see a half-written file.
        path = self._dir[zone] / "energy_uj"
        tmp = path.with_name("energy_uj.tmp")
        tmp.write_text(f"{int(self._value[zone])}\n")
        os.replace(tmp, path)

    def advance(self, zone: str, joules: float) -> None:
        """Add energy to a zone's counter, wrapping it as the hardware does."""
        modulus = self._max[zone] + self._max[zone] / STEPS
        self._value[zone] = (self._value[zone] + joules * 1e6) % modulus
        self.truth_uj[zone] += joules * 1e6
        self._write(zone)

    @contextlib.contextmanager
    def constant_power(self, zone: str, watts: float, period_s: float = 0.05) -> Iterator[None]:
        """While the block runs, a thread advances ``zone`` as a package drawing ``watts``
        would (every ``period_s``, by the time that really passed). A busy machine can hold
        the thread up, so that a read sees the counter behind real time by up to
        ``max_step_s`` (the longest interval between two advances so far): energy that is
        late, not lost, but a test comparing a read with a wall clock must allow for it."""
        stop = threading.Event()

        def advance() -> None:
            last = time.monotonic()
            while not stop.wait(period_s):
                now = time.monotonic()
                self.advance(zone, watts * (now - last))
                self.max_step_s = max(self.max_step_s, now - last)
                last = now

        thread = threading.Thread(target=advance, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def set_raw(self, zone: str, text: str) -> None:
        """Write anything into energy_uj (garbage, for failure tests)."""
        (self._dir[zone] / "energy_uj").write_text(text)

    def restore(self, zone: str) -> None:
        """Rewrite the current counter value after ``set_raw``."""
        self._write(zone)

    def path(self, zone: str) -> Path:
        return self._dir[zone]
