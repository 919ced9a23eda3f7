"""Redfish: the BMC simulator (tests/fakes/bmc_sim.py) over real HTTP on loopback, an iLO-style
``Power`` resource at 500 W, found from the service root; the source samples it and integrates."""
from __future__ import annotations

import contextlib

from fakes.loader import load_fake
from fakes.rigs import Rig, SampledWindow

WATTS = 500.0


@contextlib.contextmanager
def rig(tmp_path, monkeypatch):
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)  # the loopback simulator is reached directly
    window = SampledWindow(WATTS, "node")
    with load_fake("bmc_sim").BmcSimulator(WATTS, "ilo") as sim:
        yield Rig(env={"ENERGY_REDFISH_URL": sim.url}, options={"redfish_sample_period_s": 0.05},
                  drive=window.drive, expect=window.expect)
