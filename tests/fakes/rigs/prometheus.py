"""Prometheus: a server speaking the query_range API over real HTTP (tests/fakes/prom_sim.py),
two series summing to 300 W; the source integrates the range it has covered."""
from __future__ import annotations

import contextlib
import time

from fakes.loader import load_fake
from fakes.rigs import Rig, no_proxy

WATTS = 300.0


@contextlib.contextmanager
def rig(tmp_path, monkeypatch):
    no_proxy(monkeypatch)
    with load_fake("prom_sim").PrometheusSimulator(WATTS, series=2) as sim:

        def expect(source):
            # exactly the grid it covered, from the start of its first query (taken in open())
            start = float(next(r for r in sim.requests
                               if r["path"] == "/api/v1/query_range")["params"]["start"])
            joules = WATTS * (source.covered_until - start)
            return {"node": (joules - WATTS * 1e-6, joules + WATTS * 1e-6)}

        env = {"ENERGY_PROMETHEUS_URL": sim.url, "ENERGY_NODE_NAME": "node-1",
               "ENERGY_PROMETHEUS_QUERY": 'sum(node_power_watts{instance=~"{node}:.*"})',
               "ENERGY_PROMETHEUS_STEP_S": "0.02"}
        yield Rig(env=env, drive=lambda source: time.sleep(0.3), expect=expect)
