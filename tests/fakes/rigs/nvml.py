"""NVML: the fake ``pynvml`` module (tests/fakes/pynvml_fake.py) with one GPU drawing 250 W
on a clock the rig advances; the source reads the GPU's energy counter."""
from __future__ import annotations

import contextlib
import sys

from fakes.loader import FakeClock, load_fake
from fakes.rigs import Rig

WATTS, SECONDS = 250.0, 10.0


@contextlib.contextmanager
def rig(tmp_path, monkeypatch):
    fake = load_fake("pynvml_fake")
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    clock = FakeClock(1000.0)
    fake.reset([fake.FakeGpu(power_w=WATTS)], clock=clock)
    slack = 2 * fake.COUNTER_REFRESH_S * WATTS  # the counter refreshes every 0.1 s
    yield Rig(env={}, drive=lambda source: clock.advance(SECONDS),
              expect=lambda source: {"gpu": (WATTS * SECONDS - slack, WATTS * SECONDS + slack)})
