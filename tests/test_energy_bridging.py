"""Issue 12, item 2: a BMC hiccup must not bias energy low. End to end: the Redfish source
against the BMC simulator over real HTTP, the meter, the combination over ranks and the
``energy`` group, with a fault made of HTTP 500s, a garbage body and a hang longer than
the request timeout, many sample periods long."""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import pytest

from shared.energy import ENERGY_GROUP
from shared.energy.aggregate import RankEnergy, combine
from shared.energy.meter import EnergyMeter
from shared.energy.sources.redfish import RedfishSource

sys.path.insert(0, str(Path(__file__).resolve().parent / "fakes"))
from bmc_sim import BmcSimulator  # noqa: E402

WATTS = 300.0
PERIOD = 0.05


def energy_group(snapshot) -> dict:
    rank = RankEnergy.from_snapshot(snapshot, node_id="node0", rank=0, local_rank=0,
                                    slots_on_node_for_trial=1, gpus_on_node=0)
    return combine([rank.to_dict()]).to_metrics()


def test_a_bmc_fault_is_bridged_and_reported(caplog):
    caplog.set_level(logging.INFO, logger="shared.energy")
    with BmcSimulator(WATTS, "ilo", hang_s=0.6) as sim:
        source = RedfishSource(sim.url, sample_period_s=PERIOD, timeout_s=0.2,
                               max_backoff_s=0.1)
        meter = EnergyMeter([source]).start()
        time.sleep(1.0)
        before = energy_group(meter.read())
        assert before["bridged_s"] == 0.0  # a number before any fault too
        t_fault = time.monotonic()
        # 500s, a garbage body, then a hang 3x the timeout: about 25 periods without a
        # good sample (the issue measured -33% for such a hole left out)
        for failure, seconds in (("500", 0.4), ("garbage", 0.15), ("timeout", 0.7)):
            sim.failure = failure
            time.sleep(seconds)
        sim.failure = None
        fault_s = time.monotonic() - t_fault
        time.sleep(1.5)
        snapshot = meter.read()
        meter.close()
    m = energy_group(snapshot)
    truth_wh = WATTS * snapshot.duration_s / 3600
    assert fault_s > 3 * PERIOD
    assert m["node_wh"] == pytest.approx(truth_wh, rel=0.03)
    assert m["energy_wh"] == m["node_wh"]
    # the bridged time is the fault, give or take the samples around it
    assert fault_s - 2 * PERIOD <= m["bridged_s"] <= fault_s + 0.5
    assert 0 < m["coverage"] < 1  # bridged time is not measured time
    assert set(m) == set(before) and all(k in ENERGY_GROUP for k in m)


def test_a_run_that_ends_inside_a_fault_is_said_so(caplog):
    with BmcSimulator(WATTS, "ilo") as sim:
        source = RedfishSource(sim.url, sample_period_s=PERIOD, timeout_s=0.2,
                               max_backoff_s=0.1)
        meter = EnergyMeter([source]).start()
        time.sleep(0.5)
        sim.failure = "500"
        time.sleep(0.5)
        snapshot = meter.read()
        with caplog.at_level(logging.WARNING, logger="shared.energy"):
            meter.close()
    sampler = source.sampler
    # integrated to the last good sample, nothing after it
    assert snapshot.joules["node"] <= WATTS * (sampler.last_sample_time()
                                               - sampler.first_sample_time()) + 1e-6
    assert any("the run ended" in r.getMessage() and "last good sample" in r.getMessage()
               for r in caplog.records)
