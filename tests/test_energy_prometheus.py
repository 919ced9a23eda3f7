"""PrometheusSource against a real HTTP server speaking Prometheus' query_range API
(tests/fakes/prom_sim.py)."""
from __future__ import annotations

import logging
import re
import sys
import time
from pathlib import Path
from typing import Iterator, List

import pytest

from shared.energy.aggregate import RankEnergy, combine
from shared.energy.meter import EnergyMeter
from shared.energy.sources.base import SourceUnavailable
from shared.energy.sources.prometheus import PrometheusError, PrometheusSource, parse_matrix

FAKES = Path(__file__).resolve().parent / "fakes"
sys.path.insert(0, str(FAKES))
from prom_sim import PrometheusSimulator  # noqa: E402

WATTS = 300.0
TOKEN = "prom-t0ken-abc123"
QUERY = 'sum(node_power_watts{instance=~"{node}:.*"})'


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # The source honours proxy variables; the loopback simulator must be reached directly.
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy",
                 "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def sim() -> Iterator[PrometheusSimulator]:
    with PrometheusSimulator(WATTS, series=2) as server:
        yield server


def range_requests(server: PrometheusSimulator) -> List[dict]:
    return [r for r in server.requests if r["path"] == "/api/v1/query_range"]


def test_constant_power_integrates_to_watts_times_time(sim):
    source = PrometheusSource(sim.url, "node_power_watts", step_s=0.02)
    t_before = time.time()
    source.open()
    t_opened = time.time()
    time.sleep(1.0)
    joules = source.read()["node"]
    t_read = time.time()
    assert joules == pytest.approx(WATTS * (t_read - t_opened), rel=0.05)
    assert joules <= WATTS * (t_read - t_before)  # never ahead of the truth
    # Exactly the grid that was covered, from the window's first grid point (the start of the
    # first query, taken inside open()) to covered_until: two series of WATTS/2 summed.
    t0 = float(range_requests(sim)[0]["params"]["start"])
    assert t_before - 0.001 <= t0 <= t_opened
    assert joules == pytest.approx(WATTS * (source.covered_until - t0), abs=WATTS * 1e-6)
    assert source.health.failures == 0


def test_trapezoid_is_exact_for_a_ramp(sim):
    origin = time.time()
    sim.power_fn = lambda t: 200.0 + 400.0 * (t - origin)  # linear in time: trapezoid is exact
    source = PrometheusSource(sim.url, "node_power_watts", step_s=0.01)
    source.open()
    t0 = range_requests(sim)[0]["params"]["start"]
    time.sleep(0.5)
    joules = source.read()["node"]
    a, b = float(t0), source.covered_until
    exact = 200.0 * (b - a) + 200.0 * ((b - origin) ** 2 - (a - origin) ** 2)
    assert joules == pytest.approx(exact, rel=1e-9)
    assert b - a > 0.4


def test_reads_are_cached_for_a_step(sim):
    source = PrometheusSource(sim.url, "node_power_watts", step_s=0.2)
    source.open()
    time.sleep(0.25)
    first = source.read()["node"]
    n = len(range_requests(sim))
    for _ in range(50):
        assert source.read()["node"] == first  # cheap: no request until a step has passed
    assert len(range_requests(sim)) == n == 2


def test_window_shorter_than_a_step_returns_the_last_value(sim):
    source = PrometheusSource(sim.url, "node_power_watts", step_s=5.0)
    source.open()
    time.sleep(0.05)
    assert source.read() == {"node": 0.0}
    assert len(range_requests(sim)) == 1  # only open()'s check


def test_from_env_node_name_and_token(tmp_path, sim, caplog):
    caplog.set_level(logging.DEBUG)
    sim.token = TOKEN
    token_file = tmp_path / "prom.token"
    token_file.write_text(TOKEN + "\n")
    env = {"ENERGY_PROMETHEUS_URL": sim.url + "/", "ENERGY_PROMETHEUS_QUERY": QUERY,
           "ENERGY_PROMETHEUS_STEP_S": "0.05", "ENERGY_NODE_NAME": "gpu-node-07",
           "ENERGY_PROMETHEUS_TOKEN_FILE": str(token_file)}
    # the simulator is plain http: a token is refused there unless the site says so
    with pytest.raises(SourceUnavailable, match=r"is plain http and a bearer token is configured "
                                                r"\(ENERGY_PROMETHEUS_TOKEN_FILE\); it is not sent "
                                                r"unencrypted\. Use https, or set "
                                                r"ENERGY_PROMETHEUS_ALLOW_HTTP_CREDENTIALS=1"):
        PrometheusSource.from_env(env, {}).open()
    assert not range_requests(sim)  # nothing was sent
    env["ENERGY_PROMETHEUS_ALLOW_HTTP_CREDENTIALS"] = "1"
    source = PrometheusSource.from_env(env, {})
    source.open()
    time.sleep(0.3)
    assert source.read()["node"] > 0
    requests = range_requests(sim)
    assert len(requests) == 2
    assert all(r["authorization"] == f"Bearer {TOKEN}" for r in requests)
    assert requests[0]["params"]["query"] == 'sum(node_power_watts{instance=~"gpu-node-07:.*"})'
    assert requests[0]["params"]["step"] == "0.050"
    assert source.scope == "node" and source.name == "prometheus"
    for text in (caplog.text, source.describe(), repr(source)):
        assert TOKEN not in text


def test_node_defaults_to_the_host_name(monkeypatch, sim):
    monkeypatch.setattr("socket.gethostname", lambda: "this-host")
    env = {"ENERGY_PROMETHEUS_URL": sim.url, "ENERGY_PROMETHEUS_QUERY": QUERY}
    source = PrometheusSource.from_env(env, {})
    assert source.query == 'sum(node_power_watts{instance=~"this-host:.*"})'
    assert source.step_s == 15.0


@pytest.mark.parametrize("token", [None, "wrong"])
def test_missing_or_wrong_token_fails_open(tmp_path, sim, token):
    sim.token = TOKEN
    source = PrometheusSource(sim.url, "node_power_watts", step_s=0.05, token=token,
                              allow_http_credentials=True)
    with pytest.raises(SourceUnavailable, match=r"prometheus: HTTP 401 Unauthorized from "
                                                r"http://127\.0\.0\.1:\d+/api/v1/query_range$"):
        source.open()


@pytest.mark.parametrize("failure, match", [
    ("error", r"HTTP 422 Unprocessable Entity from http://127\.0\.0\.1:\d+/api/v1/query_range "
              r"\(execution: query timed out in expression evaluation\)"),
    ("500", r"HTTP 500 Internal Server Error from http://127\.0\.0\.1:\d+/api/v1/query_range"),
    ("garbage", "is not valid JSON"),
])
def test_failure_mid_run_is_counted_and_nothing_is_lost(sim, failure, match, caplog):
    source = PrometheusSource(sim.url, "node_power_watts", step_s=0.02)
    source.open()
    t_opened = time.time()
    time.sleep(0.3)
    good = source.read()["node"]
    assert good > 0
    sim.failure = failure
    time.sleep(0.3)
    assert source.read()["node"] == good  # the last good total, no exception
    assert source.health.failures == 1
    assert re.search(match, source.health.first_error or "")
    sim.failure = None
    time.sleep(0.3)
    joules = source.read()["node"]
    t_read = time.time()
    # Prometheus kept the history: the failed interval is picked up by the next query.
    assert joules == pytest.approx(WATTS * (t_read - t_opened), rel=0.05)
    assert source.health.coverage == pytest.approx(2 / 3)
    assert caplog.text.count("energy source prometheus failed") == 1


def test_backoff_while_prometheus_keeps_failing(sim):
    source = PrometheusSource(sim.url, "node_power_watts", step_s=0.02, max_backoff_s=0.16)
    source.open()
    sim.failure = "500"
    n0 = len(range_requests(sim))
    deadline = time.monotonic() + 0.8
    while time.monotonic() < deadline:  # a report every 5 ms: far more often than real ones
        source.read()
        time.sleep(0.005)
    tries = len(range_requests(sim)) - n0
    # Without backoff one query per step, ~40; with it 0.02, 0.04, 0.08, then every 0.16 s.
    assert 4 <= tries <= 10
    assert source.health.failures == tries


@pytest.mark.parametrize("failure, match", [
    ("error", r"prometheus: HTTP 422 .*\(execution: query timed out"),
    ("garbage", "prometheus: response from .* is not valid JSON"),
])
def test_open_fails_with_the_reason(sim, failure, match):
    sim.failure = failure
    with pytest.raises(SourceUnavailable, match=match):
        PrometheusSource(sim.url, "node_power_watts").open()


def test_query_without_data_fails_open(sim):
    sim.series = 1
    sim.gaps = [(0.0, 4e9)]  # the only series has no data at all
    with pytest.raises(SourceUnavailable, match="query 'x' returned no data .*ENERGY_NODE_NAME"):
        PrometheusSource(sim.url, "x").open()


def test_hole_in_a_series_is_bridged(sim, caplog):
    source = PrometheusSource(sim.url, "node_power_watts", step_s=0.02)
    t_before = time.time()
    source.open()
    start = float(range_requests(sim)[0]["params"]["start"])
    sim.gaps = [(start + 0.2, start + 0.5)]  # series 0 (half the power) is missing 0.3 s
    time.sleep(0.8)
    joules = source.read()["node"]
    covered = source.covered_until - start
    # Series 0's hole (0.3 s plus up to two steps) is bridged with a straight line at its
    # constant power: the total is exact, and the bridged time and the failure are said.
    assert source.bridged_s() == pytest.approx(0.34, abs=0.025)
    assert joules == pytest.approx(WATTS * covered, rel=1e-6)
    assert source.health.failures == 1 and "series" in source.health.first_error
    assert "that interval is bridged" in caplog.text
    assert start == pytest.approx(t_before, abs=0.2)


def test_long_windows_are_queried_in_chunks_below_the_point_limit():
    with PrometheusSimulator(WATTS, series=1, max_points=30) as server:
        source = PrometheusSource(server.url, "node_power_watts", step_s=0.01,
                                  max_points_per_query=25)
        source.open()
        start = float(range_requests(server)[0]["params"]["start"])
        time.sleep(1.0)
        joules = source.read()["node"]
        requests = range_requests(server)[1:]
    assert len(requests) >= 4
    for r in requests:
        span = float(r["params"]["end"]) - float(r["params"]["start"])
        assert span <= 24 * 0.01 + 1e-6
    assert source.health.failures == 0
    assert joules == pytest.approx(WATTS * (source.covered_until - start), rel=1e-6)


def test_point_limit_error_is_reported_if_exceeded():
    with PrometheusSimulator(WATTS, series=1, max_points=10) as server:
        source = PrometheusSource(server.url, "node_power_watts", step_s=0.01,
                                  max_points_per_query=50)
        source.open()
        time.sleep(0.3)
        source.read()
    assert source.health.first_error.endswith(
        "(bad_data: exceeded maximum resolution of 10 points per timeseries. Try decreasing "
        "the query resolution (?step=XX))")


# -- configuration -------------------------------------------------------------------------------
BASE_ENV = {"ENERGY_PROMETHEUS_URL": "http://prom.example:9090", "ENERGY_PROMETHEUS_QUERY": "x"}


@pytest.mark.parametrize("env, match", [
    ({}, "ENERGY_PROMETHEUS_URL is not set"),
    ({"ENERGY_PROMETHEUS_URL": "http://prom:9090"}, "ENERGY_PROMETHEUS_QUERY is not set"),
    ({**BASE_ENV, "ENERGY_PROMETHEUS_STEP_S": "fast"}, "ENERGY_PROMETHEUS_STEP_S='fast' must be a positive"),
    ({**BASE_ENV, "ENERGY_PROMETHEUS_STEP_S": "-15"}, "ENERGY_PROMETHEUS_STEP_S='-15' must be a positive"),
    ({**BASE_ENV, "ENERGY_PROMETHEUS_URL": "prom:9090"}, "ENERGY_PROMETHEUS_URL=.* must be an http"),
    ({**BASE_ENV, "ENERGY_PROMETHEUS_URL": "https://u:p@prom"},
     r"ENERGY_PROMETHEUS_URL=https://\*\*\*@prom contains credentials.*ENERGY_PROMETHEUS_TOKEN_FILE"),
    ({**BASE_ENV, "ENERGY_PROMETHEUS_INSECURE": "sure"}, "ENERGY_PROMETHEUS_INSECURE='sure' is not a boolean"),
    ({**BASE_ENV, "ENERGY_PROMETHEUS_CA_BUNDLE": "/nonexistent/ca.pem"},
     "ENERGY_PROMETHEUS_CA_BUNDLE=/nonexistent/ca.pem: no such file"),
])
def test_bad_configuration_is_named(env, match):
    with pytest.raises(SourceUnavailable, match=match):
        PrometheusSource.from_env(env, {})


def test_bad_token_files_are_named(tmp_path):
    missing = tmp_path / "absent.token"
    with pytest.raises(SourceUnavailable, match=f"ENERGY_PROMETHEUS_TOKEN_FILE={missing}: no such file"):
        PrometheusSource.from_env({**BASE_ENV, "ENERGY_PROMETHEUS_TOKEN_FILE": str(missing)}, {})
    empty = tmp_path / "empty.token"
    empty.write_text("\n")
    with pytest.raises(SourceUnavailable, match=f"{empty}: expected one line holding the bearer token"):
        PrometheusSource.from_env({**BASE_ENV, "ENERGY_PROMETHEUS_TOKEN_FILE": str(empty)}, {})


def test_token_in_hyperparameters_is_refused():
    with pytest.raises(ValueError, match="energy option 'prometheus_token' looks like a credential"
                                         ".*ENERGY_PROMETHEUS_TOKEN_FILE") as info:
        PrometheusSource.from_env(BASE_ENV, {"prometheus_token": TOKEN})
    assert TOKEN not in str(info.value)


@pytest.mark.parametrize("kwargs, match", [
    ({"step_s": 0}, "step_s must be a positive number"),
    ({"step_s": 0.0001}, "step_s must be at least 1 ms"),
    ({"max_gap_steps": 0.5}, "max_gap_steps must be >= 1"),
    ({"max_points_per_query": 1}, "max_points_per_query must be an integer >= 2"),
    ({"max_backoff_s": -1}, "max_backoff_s must be a positive number"),
])
def test_bad_constructor_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PrometheusSource("http://prom:9090", "x", **kwargs)


def test_empty_query_is_refused():
    with pytest.raises(ValueError, match="the PromQL query is empty"):
        PrometheusSource("http://prom:9090", "  ")


# -- parsing -------------------------------------------------------------------------------------------
def test_parse_matrix_sums_nothing_and_drops_non_finite():
    doc = {"status": "success", "data": {"resultType": "matrix", "result": [
        {"metric": {"psu": "1"}, "values": [[2.0, "10"], [1.0, "NaN"], [3.0, "+Inf"], [0.0, "5"]]},
    ]}}
    assert parse_matrix(doc) == {'{"psu": "1"}': [(0.0, 5.0), (2.0, 10.0)]}


@pytest.mark.parametrize("doc, match", [
    ({"status": "error", "errorType": "bad_data", "error": "parse error"}, "Prometheus error bad_data: parse error"),
    ({"status": "success", "data": {"resultType": "vector", "result": []}}, "expected a matrix result, got 'vector'"),
    ({"status": "success", "data": {"resultType": "matrix", "result": [{"metric": {}, "values": [[1, "x"]]}]}},
     "malformed point"),
    ({"status": "success", "data": {"resultType": "matrix", "result": [{"metric": {}}]}}, "has no 'values' list"),
    ({"status": "pending"}, "answer has status 'pending'"),
    ([1, 2], "answer is not a JSON object"),
])
def test_parse_matrix_rejects_bad_answers(doc, match):
    with pytest.raises(PrometheusError, match=match):
        parse_matrix(doc)


def test_close_keeps_the_total(sim):
    source = PrometheusSource(sim.url, "node_power_watts", step_s=0.02)
    source.open()
    time.sleep(0.2)
    total = source.read()["node"]
    source.close()
    source.close()
    time.sleep(0.05)
    assert source.read()["node"] == total


# -- energy counters (ENERGY_PROMETHEUS_KIND=energy) ----------------------------------------------
@pytest.fixture
def counters() -> Iterator[PrometheusSimulator]:
    # Two counters in mJ (as DCGM's DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION, one per GPU), which
    # did not start at 0 (the GPU ran before the trial).
    with PrometheusSimulator(WATTS, series=2, kind="energy", joules_per_unit=1e-3) as server:
        yield server


def test_counters_are_differenced_not_integrated(counters):
    source = PrometheusSource(counters.url, "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
                              kind="energy", unit="mJ", step_s=0.02)
    source.open()
    t0 = float(range_requests(counters)[0]["params"]["start"])
    time.sleep(0.5)
    joules = source.read()["node"]
    # The counters' difference over the covered grid, in J, summed over both series.
    assert joules == pytest.approx(WATTS * (source.covered_until - t0), rel=1e-6)
    assert joules > 0.4 * WATTS * 0.9
    assert (source.resets, source.gap_s, source.health.failures) == (0, 0.0, 0)
    assert "energy counter, differenced, mJ" in source.describe()
    assert "lag_s 0.04" in source.describe()


def test_counter_restart_counts_its_new_value_as_prometheus_increase_does(counters, caplog):
    caplog.set_level(logging.WARNING, logger="shared.energy")
    source = PrometheusSource(counters.url, "x", kind="energy", unit="mJ", step_s=0.02)
    source.open()
    t0_ms = round(float(range_requests(counters)[0]["params"]["start"]) * 1000)
    restart_ms = t0_ms + 305  # between two grid points (t0 + 300 ms and t0 + 320 ms)
    counters.resets = [(0, restart_ms / 1000)]  # GPU 0's counter restarts from 0 (a driver reload)
    time.sleep(0.6)
    joules = source.read()["node"]
    time.sleep(0.1)
    joules = source.read()["node"]
    covered = source.covered_until - t0_ms / 1000
    # Series 1 is complete; series 0 loses only what it counted between its last point
    # before the restart (t0 + 300 ms) and the restart: 5 ms at WATTS / 2.
    lost = (WATTS / 2) * 0.005
    assert joules == pytest.approx(WATTS * covered - lost, rel=1e-6)
    assert source.resets == 1
    assert source.health.failures == 1 and source.health.coverage < 1.0
    assert caplog.text.count("counted as restarted from 0, as Prometheus' increase() does") == 1


def test_a_hole_in_a_counter_series_costs_nothing(counters):
    source = PrometheusSource(counters.url, "x", kind="energy", unit="mJ", step_s=0.02)
    source.open()
    start = float(range_requests(counters)[0]["params"]["start"])
    counters.gaps = [(start + 0.2, start + 0.5)]  # exporter down: series 0 has no points
    time.sleep(0.8)
    joules = source.read()["node"]
    # The hardware counter kept counting: the first point after the hole contains it.
    assert joules == pytest.approx(WATTS * (source.covered_until - start), rel=1e-6)
    assert (source.gap_s, source.health.failures) == (0.0, 0)


@pytest.mark.parametrize("points, unit, max_power_w, expected_j, lost", [
    # rising counter, in Wh: differences scaled to J
    ([(0.0, 10.0), (15.0, 10.5), (30.0, 11.0)], "Wh", 50_000.0, 3600.0, 0),
    # a drop: restarted from 0, the new value (400 J in 15 s, 27 W) is the increase
    ([(0.0, 1000.0), (15.0, 5000.0), (30.0, 400.0), (45.0, 900.0)], "J", 50_000.0,
     4000.0 + 400.0 + 500.0, 1),
    # a "restart" whose new value would mean 267 W from one counter capped at 100 W: no
    # restart (a sum of counters, one of which restarted): that step counts nothing
    ([(0.0, 1000.0), (15.0, 5000.0), (30.0, 4000.0), (45.0, 4100.0)], "J", 100.0,
     4000.0 + 100.0, 1),
])
def test_counter_steps(points, unit, max_power_w, expected_j, lost):
    source = PrometheusSource("http://prom:9090", "x", kind="energy", unit=unit,
                              max_power_w=max_power_w)
    source._ingest({'{"gpu": "0"}': points})
    assert source._energy_j == pytest.approx(expected_j, rel=1e-12)
    assert source.health.failures == lost == source.resets


def test_gauge_units_are_scaled():
    source = PrometheusSource("http://prom:9090", "x", unit="kW")
    source._ingest({"{}": [(0.0, 0.3), (10.0, 0.5)]})
    assert source._energy_j == pytest.approx(4000.0)  # 0.4 kW x 10 s


@pytest.mark.parametrize("env, kind, unit", [
    ({}, "power", "W"),
    ({"ENERGY_PROMETHEUS_KIND": "energy"}, "energy", "J"),
    ({"ENERGY_PROMETHEUS_KIND": " Energy ", "ENERGY_PROMETHEUS_UNIT": "mJ"}, "energy", "mJ"),
    ({"ENERGY_PROMETHEUS_KIND": "power", "ENERGY_PROMETHEUS_UNIT": "kW"}, "power", "kW"),
])
def test_kind_and_unit_from_env(env, kind, unit):
    source = PrometheusSource.from_env({**BASE_ENV, **env}, {})
    assert (source.kind, source.unit) == (kind, unit)


@pytest.mark.parametrize("env, match", [
    ({"ENERGY_PROMETHEUS_KIND": "counter"}, "ENERGY_PROMETHEUS_KIND='counter' must be 'power'"),
    ({"ENERGY_PROMETHEUS_KIND": "energy", "ENERGY_PROMETHEUS_UNIT": "MJ"},
     r"ENERGY_PROMETHEUS_UNIT='MJ' is not a unit of energy \(ENERGY_PROMETHEUS_KIND=energy\); "
     r"one of J, mJ"),
    ({"ENERGY_PROMETHEUS_UNIT": "mJ"}, "ENERGY_PROMETHEUS_UNIT='mJ' is not a unit of power"),
])
def test_bad_kind_or_unit_is_named(env, match):
    with pytest.raises(SourceUnavailable, match=match):
        PrometheusSource.from_env({**BASE_ENV, **env}, {})


@pytest.mark.parametrize("kind, query, warning", [
    ("power", "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "looks like an energy counter"),
    ("power", 'node_rapl_package_joules_total{instance="{node}"}', "looks like an energy counter"),
    ("power", "sum(rate(node_rapl_package_joules_total[1m]))", None),
    ("power", "ipmi_dcmi_power_consumption_watts", None),
    ("energy", "rate(node_rapl_package_joules_total[1m])", "takes a rate"),
    ("energy", "sum(DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION)", "sums counters"),
    ("energy", "max by (gpu) (DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION)", None),
])
def test_a_query_of_the_other_kind_is_warned_about(sim, caplog, kind, query, warning):
    caplog.set_level(logging.WARNING, logger="shared.energy")
    PrometheusSource(sim.url, query, kind=kind, step_s=0.05).open()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    if warning is None:
        assert warnings == []
    else:
        assert len(warnings) == 1 and warning in warnings[0]


def test_the_figure_lags_a_read_by_at_most_one_grid_step(sim):
    """After a successful query the next one is not held back: at any read the integral
    reaches the last grid point before it (lag_s = 2 steps adds the scrape interval)."""
    source = PrometheusSource(sim.url, "node_power_watts", step_s=0.1)
    source.open()
    assert source.lag_s == pytest.approx(0.2)
    for pause in (0.13, 0.04, 0.09, 0.05, 0.12, 0.03, 0.08):
        time.sleep(pause)
        t_read = time.time()
        source.read()
        assert source.covered_until > t_read - source.step_s - 0.002


def test_counters_from_env_state_their_kind_unit_and_lag(counters, caplog):
    caplog.set_level(logging.INFO, logger="shared.energy")
    env = {"ENERGY_PROMETHEUS_URL": counters.url, "ENERGY_NODE_NAME": "gpu-node-07",
           "ENERGY_PROMETHEUS_QUERY": 'max by (gpu) (DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION'
                                      '{Hostname="{node}"})',
           "ENERGY_PROMETHEUS_KIND": "energy", "ENERGY_PROMETHEUS_UNIT": "mJ",
           "ENERGY_PROMETHEUS_STEP_S": "0.05"}
    source = PrometheusSource.from_env(env, {})
    source.open()
    t0 = float(range_requests(counters)[0]["params"]["start"])
    time.sleep(0.3)
    joules = source.read()["node"]
    assert joules == pytest.approx(WATTS * (source.covered_until - t0), rel=1e-6)
    assert range_requests(counters)[0]["params"]["query"] == (
        'max by (gpu) (DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{Hostname="gpu-node-07"})')
    assert "node energy counters, differenced (mJ)" in caplog.text
    assert "figures lag by up to 0.1 s (lag_s: two steps)" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_report_says_the_two_step_lag(sim):
    """Issue 12 item 5: a Prometheus figure may trail its read by two steps, and the energy
    report says so in ``lag_s`` (the rest of the pipeline carries the worst source's lag)."""
    source = PrometheusSource(sim.url, "node_power_watts", step_s=0.05)
    with EnergyMeter([source]) as meter:  # started on entry, closed on exit
        time.sleep(0.2)
        snap = meter.read()
    assert snap.lag_s == {"prometheus": pytest.approx(0.1)}
    report = RankEnergy.from_snapshot(snap, node_id="n", rank=0, local_rank=0,
                                      slots_on_node_for_trial=1, gpus_on_node=0)
    metrics = combine([report.to_dict()]).to_metrics()
    assert metrics["sources"] == "prometheus"
    assert metrics["lag_s"] == pytest.approx(2 * source.step_s)
