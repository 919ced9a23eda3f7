"""Node energy from a site's Prometheus: difference the energy counter it already scrapes, or
integrate its power gauge.

Many HPC sites already collect node or GPU energy in Prometheus: DCGM's
``DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION`` (a counter, mJ), node_exporter's
``node_rapl_*_joules_total`` and ``node_hwmon_energy_joule_total`` (counters, J), and power
gauges from ipmi_exporter / redfish_exporter (W). This source does not sample anything
itself: ``read()`` asks ``/api/v1/query_range`` for the configured PromQL expression over the
trial's window and differences (a counter) or integrates (a gauge) what comes back.

Configuration (environment, so that site details stay out of the experiment config):

- ``ENERGY_PROMETHEUS_URL``: base URL, e.g. ``http://prometheus:9090`` (a path prefix such as
  ``https://host/prometheus`` is kept).
- ``ENERGY_PROMETHEUS_QUERY``: PromQL giving *this node's* power or energy counters.
  ``{node}`` is replaced by this host's name (``socket.gethostname()``, or
  ``ENERGY_NODE_NAME``); other braces are PromQL's own, e.g.
  ``sum(ipmi_dcmi_power_consumption_watts{instance=~"{node}:.*"})``.
- ``ENERGY_PROMETHEUS_KIND``: ``power`` (default: the query gives a power gauge) or
  ``energy`` (the query gives energy counters). Declared, not guessed from the metric name:
  a ``_total`` suffix is a convention that exporters do not all follow (DCGM's counter has
  none) and ``rate(x_joules_total)`` is a power with a counter's name in it. A query that
  looks like the other kind is warned about once, at open().
- ``ENERGY_PROMETHEUS_UNIT``: the unit of the query's values: ``W`` (default for power),
  ``kW``, ``mW``; ``J`` (default for energy), ``mJ`` (DCGM), ``uJ``, ``kJ``, ``Wh``, ``kWh``.
- ``ENERGY_PROMETHEUS_STEP_S``: evaluation step in seconds (default 15; keep it at or above the
  scrape interval).
- ``ENERGY_PROMETHEUS_TOKEN_FILE``: optional bearer token (file content, stripped), never logged.
- ``ENERGY_PROMETHEUS_CA_BUNDLE`` / ``ENERGY_PROMETHEUS_INSECURE=1``: TLS, as for Redfish.
  Proxies from the environment (``https_proxy``, ``no_proxy``) are honoured.

How the energy is formed, and its bias:

- The window starts at ``open()`` (wall clock, Unix time, which is what Prometheus speaks) and
  is evaluated on a fixed grid ``t0 + k * step``. Prometheus evaluates each grid point from
  the latest raw sample within its lookback (5 min by default), so a grid value is the last
  scrape at or before that point.
- **Counters** (``kind=energy``): each series is differenced between consecutive grid points
  and the increases of all series are summed (one series per GPU or per RAPL domain gives
  the node's total). A counter that goes down restarted from 0 (a driver reload, an exporter
  or BMC restart, or a RAPL counter wrapping, which node_exporter does not unwrap): as
  Prometheus' ``increase()`` does, its new value is the increase since the previous point.
  ``counters.counter_step`` makes that decision, as for every counter source. The energy
  between the previous point and the restart is unknown: it is not counted, it is logged
  once per series and lowers ``health.coverage``. A "restart" whose new value would mean
  more than ``max_power_w`` over the step is no restart (counters summed inside the query,
  where one restarted: sum their increases instead, one series per counter; or not a counter
  at all): nothing is counted for that step. A hole in a series (exporter down) costs
  nothing: the hardware counter kept counting, the next point's difference contains it.
  A counter is exact between the scrapes it is read at, so its figure is not smoothed.
- **Gauges** (``kind=power``): each series is integrated with the trapezoidal rule between
  consecutive grid points; Prometheus holds a gauge's last scrape until the next, so a gauge
  scraped every 15 s is read as a step function of its scrapes, smoothed by the trapezoid.
  Two consecutive points of a series more than ``max_gap_steps`` steps apart (exporter
  down, series stale) are bridged with a straight line, as every power source bridges its
  gaps: the hole is logged once, lowers ``health.coverage`` and is reported as
  ``bridged_s``. Non-finite values (NaN, Inf) are treated as holes.
- All returned series are summed: make sure they do not overlap (node power plus DCGM GPU
  power would count the GPUs twice).
- Lag (``lag_s``, stated in ``describe()`` and the log line at open): the figure ends at the
  last grid point at or before the latest read, at most one step earlier, and that point's
  value is the last scrape, up to one scrape interval (at most a step) older still: the
  figure lags the read by at most two steps (30 s at the default 15 s step). Reports are
  cumulative, so the lag is carried into the next report, not lost; the last report of a
  trial is short of at most that much.
- Each query asks only for the part of the window not done yet (points already used are
  skipped), in chunks of at most ``max_points_per_query`` points (Prometheus refuses more
  than 11,000 per series), so ``read()`` stays cheap over a long training run. ``read()``
  queries only once a new grid point exists (at most once per step); in between it returns
  the last computed total. A window shorter than one step therefore returns the last value
  (0 J right after ``open()``).
- A failed query (HTTP error, ``"status": "error"``, garbage) is counted in ``health`` and the
  last good total is returned; the next query starts where the last good one ended, so the
  data of the failed interval is picked up later (Prometheus keeps history), not lost.
  ``read()`` runs on the caller's thread and a query can block it up to ``timeout_s``, so
  after consecutive failures the next tries back off exponentially (step x 2^(n-1), capped
  by ``max_backoff_s``): an unreachable Prometheus costs the training loop one timeout per
  backoff interval, and no data.
"""
from __future__ import annotations

import json
import math
import os
import re
import socket
import time
import urllib.parse
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from ..redact import energy_logger, register_secret
from .base import EnergySource, SourceUnavailable
from ..http import HttpFailure, JsonHttpClient, check_http_url, make_ssl_context, redact_url
from ..schema import (EnvVar, Param, Positive, boolean_text, choice_text, env_flag,
                      positive_number_text, positive_option, refuse_secret_options)
from .counters import counter_step

log = energy_logger(__name__)

ENV_URL = "ENERGY_PROMETHEUS_URL"
ENV_QUERY = "ENERGY_PROMETHEUS_QUERY"
ENV_STEP = "ENERGY_PROMETHEUS_STEP_S"
ENV_KIND = "ENERGY_PROMETHEUS_KIND"
ENV_UNIT = "ENERGY_PROMETHEUS_UNIT"
ENV_TOKEN_FILE = "ENERGY_PROMETHEUS_TOKEN_FILE"
ENV_CA_BUNDLE = "ENERGY_PROMETHEUS_CA_BUNDLE"
ENV_INSECURE = "ENERGY_PROMETHEUS_INSECURE"
ENV_ALLOW_HTTP_CREDENTIALS = "ENERGY_PROMETHEUS_ALLOW_HTTP_CREDENTIALS"
ENV_NODE_NAME = "ENERGY_NODE_NAME"

DEFAULT_STEP_S = 15.0
DEFAULT_TIMEOUT_S = 5.0

#: What the query's values are, and the factor of each unit to watts or joules. Case matters:
#: mJ is not MJ.
KINDS = ("power", "energy")
UNITS: Dict[str, Dict[str, float]] = {
    "power": {"W": 1.0, "kW": 1e3, "mW": 1e-3},
    "energy": {"J": 1.0, "mJ": 1e-3, "uJ": 1e-6, "kJ": 1e3, "Wh": 3600.0, "kWh": 3.6e6},
}
DEFAULT_UNIT = {"power": "W", "energy": "J"}
#: Most one counter (one series) can draw: a counter "restarted from 0" whose new value
#: would mean more over one step is no restart (counters summed inside the query, one of
#: which restarted; or not a counter), and nothing is counted for that step. Far above any
#: node (an 8-GPU node draws about 10 kW), so a real restart is never refused.
DEFAULT_MAX_POWER_W = 50_000.0

# A query that looks like the other kind (warned about at open, never acted upon): a counter
# name without a rate-like function, or a rate-like function over what is declared a counter.
_RATE_RE = re.compile(r"\b(rate|irate|increase|deriv|delta|idelta)\s*\(")
_COUNTER_NAME_RE = re.compile(r"(_total|_joules?|_ENERGY_CONSUMPTION)\b", re.IGNORECASE)
_SUM_RE = re.compile(r"\bsum\b\s*(\(|by\b|without\b)")

# Prometheus refuses query_range answers above 11,000 points per series; stay well below.
DEFAULT_MAX_POINTS = 10_000

SeriesKey = str
Point = Tuple[float, float]


class PrometheusError(Exception):
    """An answer that arrived but is not a usable range-query result."""


def parse_matrix(doc: Any) -> Dict[SeriesKey, List[Point]]:
    """Series of a ``query_range`` answer, keyed by their label set, points sorted by time.

    Raises PrometheusError for ``status: error``, a result that is not a matrix, or malformed
    points. Non-finite values are dropped (they are holes, not readings).
    """
    if not isinstance(doc, dict):
        raise PrometheusError("answer is not a JSON object")
    status = doc.get("status")
    if status == "error":
        raise PrometheusError(f"Prometheus error {doc.get('errorType', '?')}: "
                              f"{str(doc.get('error', ''))[:300]}")
    if status != "success":
        raise PrometheusError(f"answer has status {str(status)[:40]!r}, expected 'success'")
    data = doc.get("data")
    if not isinstance(data, dict) or data.get("resultType") != "matrix":
        kind = data.get("resultType") if isinstance(data, dict) else None
        raise PrometheusError(f"expected a matrix result, got {str(kind)[:40]!r}")
    result = data.get("result")
    if not isinstance(result, list):
        raise PrometheusError("data.result is not a list")
    series: Dict[SeriesKey, List[Point]] = {}
    for item in result:
        if not isinstance(item, dict) or not isinstance(item.get("values"), list):
            raise PrometheusError("a series has no 'values' list")
        key = json.dumps(item.get("metric", {}), sort_keys=True)
        points: List[Point] = []
        for pair in item["values"]:
            try:
                ts, raw = pair
                ts, value = float(ts), float(raw)
            except (TypeError, ValueError):
                raise PrometheusError(f"malformed point {str(pair)[:60]} in series {key}") from None
            if math.isfinite(value) and math.isfinite(ts):
                points.append((ts, value))
        points.sort()
        series.setdefault(key, []).extend(points)
    return series


class PrometheusSource(EnergySource):
    """Node power from Prometheus, integrated over the window since ``open()``.

    Args:
        base_url: Prometheus base URL (``/api/v1/query_range`` is appended).
        query: PromQL expression for this node's power, or its energy counters (``{node}``
            already replaced).
        kind: "power" (a gauge, integrated) or "energy" (counters, differenced).
        unit: unit of the query's values (see ``UNITS``); default W for power, J for energy.
        step_s: evaluation step in seconds.
        token: bearer token, or None.
        ca_bundle, insecure: TLS verification (see make_ssl_context).
        timeout_s: per-request timeout.
        max_gap_steps: longest hole (in steps) between two points that is still bridged.
        max_points_per_query: chunk size of one query_range request.
        max_backoff_s: longest pause between tries once queries keep failing.
        max_power_w: most one counter can draw (see ``DEFAULT_MAX_POWER_W``).
        clock: wall clock in Unix seconds (Prometheus' time base); injectable for tests.
    """

    name = "prometheus"
    covers = ("node",)
    scope = "node"
    # Last: a copy of some other instrument, scraped late.
    priority = 50
    auto_env = ENV_URL
    summary = ("the node from what the site already scrapes: a PromQL range query over the "
               "trial's window, energy counters (DCGM, node_exporter RAPL/hwmon) differenced or "
               "power gauges (ipmi/redfish exporters) integrated; lags by up to two steps "
               f"({2 * DEFAULT_STEP_S:g} s by default)")
    env_vars = (
        EnvVar(ENV_URL, "base URL of the site's Prometheus"),
        EnvVar(ENV_QUERY, "PromQL for this node's power, or its energy counters (one "
                          f"series per counter, see `{ENV_KIND}`); `{{node}}` is replaced by "
                          f"the node name (`{ENV_NODE_NAME}`, else the host name)"),
        EnvVar(ENV_KIND, "`power` (default): the query gives a power gauge, integrated; "
                         "`energy`: it gives energy counters, differenced (a drop is a "
                         "restart from 0, as for Prometheus' `increase()`)", choice_text(*KINDS)),
        EnvVar(ENV_UNIT, "unit of the query's values: `W` (default for power), `kW`, `mW`; "
                         "`J` (default for energy), `mJ` (DCGM), `uJ`, `kJ`, `Wh`, `kWh`"),
        EnvVar(ENV_STEP, f"evaluation step, seconds (default {DEFAULT_STEP_S:g}; not below "
                         "the scrape interval); figures lag the read by up to two steps "
                         f"({2 * DEFAULT_STEP_S:g} s by default)", positive_number_text),
        EnvVar(ENV_TOKEN_FILE, "file holding a bearer token"),
        EnvVar(ENV_CA_BUNDLE, "PEM CA file for an https Prometheus"),
        EnvVar(ENV_INSECURE, "1: do not verify Prometheus' certificate", boolean_text),
        EnvVar(ENV_ALLOW_HTTP_CREDENTIALS, "1: send the bearer token over plain http (else a "
                                           "token is sent only over https)", boolean_text),
    )
    options = (
        Param(None, name="prometheus_timeout_s",
              help=f"timeout of one Prometheus query, seconds (default {DEFAULT_TIMEOUT_S:g})",
              check=Positive()),
    )

    def __init__(self, base_url: str, query: str, *, kind: str = "power",
                 unit: Optional[str] = None, step_s: float = DEFAULT_STEP_S,
                 token: Optional[str] = None, ca_bundle: Optional[str] = None,
                 insecure: bool = False, timeout_s: float = DEFAULT_TIMEOUT_S, max_gap_steps: float = 3.0,
                 max_points_per_query: int = DEFAULT_MAX_POINTS, max_backoff_s: float = 300.0,
                 max_power_w: float = DEFAULT_MAX_POWER_W,
                 allow_http_credentials: bool = False,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"prometheus: kind must be one of {KINDS}, got {kind!r}")
        unit = DEFAULT_UNIT[kind] if unit is None else unit
        if unit not in UNITS[kind]:
            raise ValueError(f"prometheus: unit {unit!r} is not a unit of {kind} (one of "
                             f"{', '.join(UNITS[kind])})")
        for label, value in (("step_s", step_s), ("timeout_s", timeout_s),
                             ("max_gap_steps", max_gap_steps), ("max_backoff_s", max_backoff_s),
                             ("max_power_w", max_power_w)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"prometheus: {label} must be a positive number, got {value!r}")
        if step_s < 0.001:
            raise ValueError(f"prometheus: step_s must be at least 1 ms (Prometheus' time "
                             f"resolution), got {step_s!r}")
        if max_gap_steps < 1:
            raise ValueError(f"prometheus: max_gap_steps must be >= 1, got {max_gap_steps!r}")
        if not isinstance(max_points_per_query, int) or max_points_per_query < 2:
            raise ValueError("prometheus: max_points_per_query must be an integer >= 2, got "
                             f"{max_points_per_query!r}")
        if not query.strip():
            raise ValueError("prometheus: the PromQL query is empty")
        parts = check_http_url(base_url.strip(), ENV_URL, ENV_TOKEN_FILE)
        self.base_url = urllib.parse.urlunsplit(parts._replace(query="", fragment="")).rstrip("/")
        self.query = query
        self.kind = kind
        self.unit = unit
        #: watts (power) or joules (energy) per unit of the query's values
        self._scale = UNITS[kind][unit]
        self.max_power_w = float(max_power_w)
        self.step_s = float(step_s)
        # The grid is kept in integer milliseconds, Prometheus' own time base, so that chunk
        # boundaries land exactly on points it evaluates (no float drift over days).
        self._step_ms = round(self.step_s * 1000)
        self.step_s = self._step_ms / 1000.0
        self.timeout_s = float(timeout_s)
        self.max_gap_s = float(max_gap_steps) * self.step_s
        self.max_points_per_query = max_points_per_query
        self.max_backoff_s = float(max_backoff_s)
        self._clock = clock
        self._token = token
        register_secret(token)  # redacted wherever it shows up (an error body may quote it)
        self._ca_bundle = ca_bundle
        self._insecure = insecure
        self._allow_http_credentials = allow_http_credentials
        self._client: Optional[JsonHttpClient] = None
        self._energy_j = 0.0
        self._covered_ms: Optional[int] = None
        #: seconds of holes bridged in the integral (summed over series; gauges only: a
        #: counter's next point contains what happened in a hole)
        self.gap_s = 0.0
        #: counter restarts seen (a series that went down), counted or refused
        self.resets = 0
        self._last_point: Dict[SeriesKey, Point] = {}
        self._next_attempt = -math.inf  # time.monotonic() before which read() does not query
        self._consecutive_failures = 0

    def __repr__(self) -> str:  # the token must never show up, even in a debugger dump
        return (f"PrometheusSource({redact_url(self.base_url)!r}, {self.query!r}, "
                f"kind={self.kind!r}, unit={self.unit!r}, step_s={self.step_s})")

    @property
    def lag_s(self) -> float:
        """Most the figure can lag the read, seconds: one step to the last grid point at or
        before the read, and up to one scrape interval (at most a step) from that point to
        the scrape it holds."""
        return 2.0 * self.step_s

    # -- construction from the environment ---------------------------------------------------
    @classmethod
    def from_env(cls, env: Mapping[str, str], options: Optional[Mapping[str, Any]] = None
                 ) -> "PrometheusSource":
        """Build from ``ENERGY_PROMETHEUS_*`` variables (and ``ENERGY_NODE_NAME``).

        Raises SourceUnavailable when the URL or query is not set or the configuration is
        unusable (step, token file, CA bundle), ValueError for a bad hyperparameter.
        """
        options = options or {}
        refuse_secret_options(options, "prometheus", ENV_TOKEN_FILE)
        url = env.get(ENV_URL, "").strip()
        if not url:
            raise SourceUnavailable(f"{ENV_URL} is not set (the Prometheus base URL, e.g. "
                                    "http://prometheus:9090)")
        query = env.get(ENV_QUERY, "").strip()
        if not query:
            raise SourceUnavailable(f"{ENV_QUERY} is not set (PromQL giving this node's power "
                                    "or energy counters; {node} is replaced by the host name)")
        kind = env.get(ENV_KIND, "").strip().lower() or "power"
        if kind not in KINDS:
            raise SourceUnavailable(f"{ENV_KIND}={env.get(ENV_KIND)!r} must be 'power' (the "
                                    "query gives watts) or 'energy' (it gives energy counters)")
        unit = env.get(ENV_UNIT, "").strip() or DEFAULT_UNIT[kind]
        if unit not in UNITS[kind]:
            raise SourceUnavailable(f"{ENV_UNIT}={env.get(ENV_UNIT)!r} is not a unit of {kind} "
                                    f"({ENV_KIND}={kind}); one of {', '.join(UNITS[kind])}")
        node = env.get(ENV_NODE_NAME, "").strip() or socket.gethostname()
        # str.replace, not str.format: PromQL label matchers use braces themselves.
        query = query.replace("{node}", node)
        raw_step = env.get(ENV_STEP, "").strip()
        step = DEFAULT_STEP_S
        if raw_step:
            try:
                step = float(raw_step)
            except ValueError:
                step = math.nan
            if not (math.isfinite(step) and step > 0):
                raise SourceUnavailable(f"{ENV_STEP}={raw_step!r} must be a positive number of "
                                        "seconds")
        token = None
        token_path = env.get(ENV_TOKEN_FILE, "").strip()
        if token_path:
            try:
                with open(token_path, "r", encoding="utf-8") as handle:
                    token = handle.read().strip()
            except FileNotFoundError:
                raise SourceUnavailable(f"{ENV_TOKEN_FILE}={token_path}: no such file") from None
            except (OSError, UnicodeDecodeError) as err:
                reason = getattr(err, "strerror", None) or type(err).__name__
                raise SourceUnavailable(f"{ENV_TOKEN_FILE}={token_path}: cannot read it "
                                        f"({reason})") from None
            if not token or any(c in token for c in "\r\n"):
                raise SourceUnavailable(f"{ENV_TOKEN_FILE}={token_path}: expected one line "
                                        "holding the bearer token")
        ca_bundle = env.get(ENV_CA_BUNDLE, "").strip() or None
        if ca_bundle and not os.path.isfile(ca_bundle):
            raise SourceUnavailable(f"{ENV_CA_BUNDLE}={ca_bundle}: no such file")
        timeout = positive_option(options, ("prometheus_timeout_s",), DEFAULT_TIMEOUT_S)
        return cls(url, query, kind=kind, unit=unit, step_s=step, token=token,
                   ca_bundle=ca_bundle, insecure=env_flag(env, ENV_INSECURE), timeout_s=timeout,
                   allow_http_credentials=env_flag(env, ENV_ALLOW_HTTP_CREDENTIALS))

    # -- EnergySource -------------------------------------------------------------------------
    def open(self) -> None:
        """Start the window now; one real query checks the URL, token and that the query
        returns data (an empty answer usually means ``{node}`` does not match the labels)."""
        if self._covered_ms is not None:
            raise RuntimeError("prometheus: open() called twice (a window is opened once)")
        headers = {"Accept": "application/json"}
        shown = redact_url(self.base_url)
        if self._token is not None:
            if self.base_url.startswith("http://"):
                if not self._allow_http_credentials:
                    raise SourceUnavailable(
                        f"prometheus: {shown} is plain http and a bearer token is configured "
                        f"({ENV_TOKEN_FILE}); it is not sent unencrypted. Use https, or set "
                        f"{ENV_ALLOW_HTTP_CREDENTIALS}=1 if this network is trusted")
                log.warning("prometheus: sending the bearer token over plain http to %s (%s=1)",
                            shown, ENV_ALLOW_HTTP_CREDENTIALS)
            headers["Authorization"] = f"Bearer {self._token}"
        ssl_context = (make_ssl_context(self._ca_bundle, self._insecure, "prometheus")
                       if self.base_url.startswith("https://") else None)
        self._client = JsonHttpClient(
            timeout_s=self.timeout_s, headers=headers, ssl_context=ssl_context,
            use_env_proxies=True,
            tls_hint=f"set {ENV_CA_BUNDLE} to the PEM file of the CA that signed its certificate")
        t0_ms = math.floor(self._clock() * 1000)
        try:
            series = self._query_range(t0_ms, t0_ms)
        except (HttpFailure, PrometheusError) as err:
            self._client = None
            raise SourceUnavailable(f"prometheus: {err}") from None
        if not series or not any(series.values()):
            self._client = None
            raise SourceUnavailable(
                f"prometheus: query {self.query!r} returned no data at {shown} (check the "
                f"metric and that the host name, or {ENV_NODE_NAME}, matches its labels)")
        self._covered_ms = t0_ms
        self._ingest(series)
        self._warn_if_other_kind()
        what = ("energy counters, differenced" if self.kind == "energy"
                else "power, integrated")
        log.info("prometheus: node %s (%s) from %s, query %r (%d series), step %g s: figures "
                 "lag by up to %g s (lag_s: two steps)", what, self.unit, shown, self.query,
                 len(series), self.step_s, self.lag_s)

    def _warn_if_other_kind(self) -> None:
        """One warning when the query looks like the other kind: a hint, never a decision
        (the declared kind is used)."""
        rated = _RATE_RE.search(self.query) is not None
        if self.kind == "power" and not rated and _COUNTER_NAME_RE.search(self.query):
            log.warning("prometheus: query %r looks like an energy counter but is read as a "
                        "power gauge; set %s=energy (and %s), or take rate() of it for watts",
                        self.query, ENV_KIND, ENV_UNIT)
        elif self.kind == "energy" and rated:
            log.warning("prometheus: query %r is read as energy counters but takes a rate; "
                        "rate() gives power: give the counters themselves, or set %s=power",
                        self.query, ENV_KIND)
        elif self.kind == "energy" and _SUM_RE.search(self.query):
            log.warning("prometheus: query %r sums counters: a restart of one of them then "
                        "looks like a drop of the sum and that step is not counted. Give one "
                        "series per counter (the source sums their increases)", self.query)

    def read(self) -> Dict[str, float]:
        """Joules since open(), up to the latest grid point integrated (see module doc)."""
        if self._client is not None:
            self._refresh()
        return {"node": self._energy_j}

    def close(self) -> None:
        """Stop querying (later read() calls return the last total). Safe to call twice."""
        self._client = None

    def describe(self) -> str:
        how = "counter, differenced" if self.kind == "energy" else "gauge, integrated"
        return (f"prometheus: {self.query!r} at {redact_url(self.base_url)} ({self.kind} "
                f"{how}, {self.unit}), step {self.step_s:g} s, lag_s {self.lag_s:g}")

    # -- querying and integrating -------------------------------------------------------------
    @property
    def covered_until(self) -> Optional[float]:
        """Unix time up to which the integral is complete (None before open())."""
        return None if self._covered_ms is None else self._covered_ms / 1000.0

    def _refresh(self) -> None:
        assert self._covered_ms is not None
        now = time.monotonic()
        if now < self._next_attempt:
            return
        now_ms = math.floor(self._clock() * 1000)
        n_new = (now_ms - self._covered_ms) // self._step_ms
        if n_new < 1:
            return
        end_ms = self._covered_ms + n_new * self._step_ms
        chunk_ms = (self.max_points_per_query - 1) * self._step_ms
        try:
            # Bounded: each pass advances _covered_ms by at least one step, up to end_ms.
            while self._covered_ms < end_ms:
                stop_ms = min(end_ms, self._covered_ms + chunk_ms)
                self._ingest(self._query_range(self._covered_ms, stop_ms))
                self._covered_ms = stop_ms
        except (HttpFailure, PrometheusError) as err:
            self._consecutive_failures += 1
            exponent = min(self._consecutive_failures - 1, 30)
            self._next_attempt = now + min(self.max_backoff_s, self.step_s * 2.0 ** exponent)
            self.health.record_failure(self.name, err)
            return
        self._consecutive_failures = 0
        # No wait after a success: the grid already limits queries to one per step, and a
        # wait of a step on top would double the lag.
        self._next_attempt = -math.inf
        self.health.record_ok()

    def _query_range(self, start_ms: int, end_ms: int) -> Dict[SeriesKey, List[Point]]:
        assert self._client is not None
        params = urllib.parse.urlencode({"query": self.query, "start": f"{start_ms / 1000:.3f}",
                                         "end": f"{end_ms / 1000:.3f}",
                                         "step": f"{self._step_ms / 1000:.3f}"})
        doc = self._client.get_json(f"{self.base_url}/api/v1/query_range?{params}")
        return parse_matrix(doc)

    def _ingest(self, series: Mapping[SeriesKey, List[Point]]) -> None:
        """Add, between each series' last point used and its new points, the counter's
        increase (energy) or the trapezoid (power)."""
        for key, points in series.items():
            previous = self._last_point.get(key)
            for ts, value in points:
                if previous is not None:
                    dt = ts - previous[0]
                    if dt <= 0:
                        continue  # the chunk's first point repeats the last one used
                    if self.kind == "energy":
                        self._energy_j += self._increase_j(key, previous, ts, value)
                    else:
                        # A hole in a power series is bridged with a straight line, as the
                        # sampled sources bridge theirs (zero is the one value known to be
                        # wrong for a running node); it is said in bridged_s and coverage.
                        self._energy_j += 0.5 * (previous[1] + value) * self._scale * dt
                        if dt > self.max_gap_s:
                            self.gap_s += dt
                            self.health.record_failure(
                                self.name, f"series {key} has no data for {dt:.3g} s before "
                                           f"t={ts:.3f}; that interval is bridged")
                previous = (ts, value)
            if previous is not None:
                self._last_point[key] = previous

    def bridged_s(self) -> float:
        """Seconds of power series holes bridged with a straight line (``gap_s``)."""
        return self.gap_s

    def _increase_j(self, key: SeriesKey, previous: Point, ts: float, value: float) -> float:
        """Joules between two points of one counter series; a drop is a restart from 0."""
        dt = ts - previous[0]
        step = counter_step(previous[1], value, elapsed_s=dt, joules_per_unit=self._scale,
                            max_power_w=None)
        if step.kind == "up":
            return step.delta * self._scale
        # No modulus is known here (node_exporter does not unwrap RAPL), so every drop is a
        # "reset" to counter_step. Prometheus' increase() rule: the counter restarted from 0,
        # so its new value is what it counted since. What it counted between the previous
        # point and the restart is lost (at most one step of one series).
        self.resets += 1
        counted = max(value, 0.0) * self._scale
        if counted > self.max_power_w * dt:
            self.health.record_lost(
                self.name, f"{self.name}/{key}",
                f"counter {key} went down from {previous[1]:.6g} to {value:.6g} {self.unit} at "
                f"t={ts:.3f}; a restart from 0 {dt:.3g} s earlier cannot have counted that "
                f"much (more than {self.max_power_w:g} W), so nothing is counted for that "
                f"step (a sum of counters in the query? give one series per counter)")
            return 0.0
        self.health.record_lost(
            self.name, f"{self.name}/{key}",
            f"counter {key} went down from {previous[1]:.6g} to {value:.6g} {self.unit} at "
            f"t={ts:.3f}: counted as restarted from 0, as Prometheus' increase() does; the "
            f"energy between the previous point and the restart is not counted")
        return counted
