"""Redfish: the BMC simulator (tests/fakes/bmc_sim.py) over real HTTP on loopback, an iLO-style
``Power`` resource at 500 W, found from the service root; the source samples it and integrates."""
from __future__ import annotations

import contextlib

from fakes.loader import load_fake
from fakes.rigs import Rig, SampledWindow, no_proxy

WATTS = 500.0


@contextlib.contextmanager
def rig(tmp_path, monkeypatch):
    no_proxy(monkeypatch)
    window = SampledWindow(WATTS, "node")
    with load_fake("bmc_sim").BmcSimulator(WATTS, "ilo") as sim:
        yield Rig(env={"ENERGY_REDFISH_URL": sim.url}, options={"redfish_sample_period_s": 0.05},
                  drive=window.drive, expect=window.expect)
