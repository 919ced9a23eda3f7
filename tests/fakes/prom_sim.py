"""A Prometheus HTTP API simulator: a real HTTP server on 127.0.0.1 answering
``/api/v1/query_range`` the way Prometheus does, for a node whose power is known.

It does not parse PromQL: whatever the query, it returns ``series`` series that sum to the
node power, which is ``power_fn(t)`` if given, else the constant ``watts``. Points are
evaluated on Prometheus' grid ``start + k * step`` (milliseconds, as Prometheus parses times),
values as strings.

``kind="power"`` (default): gauges ``{"__name__": "node_power_watts", "psu": "<i>"}`` in
watts. ``kind="energy"``: energy counters ``{"__name__": "node_energy_total", "gpu": "<i>"}``,
each the energy its share of the (constant) power delivered since ``counter_origin`` (Unix
time; default 1000 s before the simulator was built, so counters do not start at 0), in
units of ``joules_per_unit`` (1e-3: mJ, as DCGM). ``resets``: (series index, Unix time)
pairs where that counter restarts from 0 (a driver reload, an exporter restart).

Behaviour copied from Prometheus (``web/api/v1``): missing/unparsable parameters, ``end`` before
``start``, a non-positive step and more than ``max_points`` (11,000) points per series are
answered with HTTP 400 and ``{"status": "error", "errorType": "bad_data", ...}``.

Test controls: ``failure`` = ``"500"`` (HTTP 500 from a proxy), ``"error"`` (HTTP 422 with
``status: error``, as for a query that times out), ``"garbage"`` (200, not JSON); ``gaps``:
(start, end) Unix-time intervals where series 0 has no data; ``token``: require
``Authorization: Bearer <token>`` (as an authenticating reverse proxy in front of Prometheus
does), else 401. ``requests`` records each request's parameters and Authorization header.

Command line (serves until interrupted, prints the base URL first)::

    python tests/fakes/prom_sim.py --port 0 --watts 300 [--series 2] [--token-file FILE]
        [--kind energy --joules-per-unit 0.001]
"""
from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Dict, List, Optional, Tuple

FAILURES = ("500", "error", "garbage")


class PrometheusSimulator:
    """A simulated Prometheus; ``start()`` returns its base URL."""

    def __init__(self, watts: float = 300.0, *, series: int = 2,
                 power_fn: Optional[Callable[[float], float]] = None,
                 token: Optional[str] = None, max_points: int = 11_000, port: int = 0,
                 host: str = "127.0.0.1", kind: str = "power", joules_per_unit: float = 1.0,
                 counter_origin: Optional[float] = None) -> None:
        if series < 1:
            raise ValueError("series must be >= 1")
        if kind not in ("power", "energy"):
            raise ValueError(f"kind must be 'power' or 'energy', got {kind!r}")
        self.kind = kind
        self.joules_per_unit = float(joules_per_unit)
        self.counter_origin = time.time() - 1000.0 if counter_origin is None else counter_origin
        self.resets: List[Tuple[int, float]] = []
        self.watts = float(watts)
        self.series = series
        self.power_fn = power_fn
        self.token = token
        self.max_points = max_points
        self.failure: Optional[str] = None
        self.gaps: List[Tuple[float, float]] = []
        self.requests: List[Dict[str, Any]] = []
        self._host = host
        self._port = port
        self._lock = threading.Lock()
        self._server: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("simulator not started")
        return f"http://{self._host}:{self._server.server_address[1]}"

    def start(self) -> str:
        sim = self

        class Handler(_Handler):
            simulator = sim

        server = ThreadingHTTPServer((self._host, self._port), Handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="prom-sim", daemon=True)
        self._thread.start()
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "PrometheusSimulator":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def power(self, t: float) -> float:
        return self.power_fn(t) if self.power_fn is not None else self.watts

    def in_gap(self, t: float) -> bool:
        return any(a <= t <= b for a, b in self.gaps)

    def counter(self, i: int, t: float) -> float:
        """Series ``i``'s energy counter at ``t``, in its units: its share of the constant
        power since the origin or since its latest restart, whichever is later."""
        if self.power_fn is not None:
            raise ValueError("counters are simulated for a constant power only")
        since = max([self.counter_origin] + [r for j, r in self.resets if j == i and r <= t])
        return (self.watts / self.series) * (t - since) / self.joules_per_unit

    def matrix(self, start_ms: int, end_ms: int, step_ms: int) -> Dict[str, Any]:
        result = []
        for i in range(self.series):
            values = []
            for ts_ms in range(start_ms, end_ms + 1, step_ms):
                t = ts_ms / 1000.0
                if i == 0 and self.in_gap(t):
                    continue
                value = (self.counter(i, t) if self.kind == "energy"
                         else self.power(t) / self.series)
                values.append([t, repr(value)])
            if values:
                metric = ({"__name__": "node_energy_total", "gpu": str(i)}
                          if self.kind == "energy"
                          else {"__name__": "node_power_watts", "psu": str(i)})
                result.append({"metric": metric, "values": values})
        return {"status": "success", "data": {"resultType": "matrix", "result": result}}


def _bad_data(message: str) -> Tuple[int, Dict[str, Any]]:
    return 400, {"status": "error", "errorType": "bad_data", "error": message}


def _parse_time_ms(raw: str) -> int:
    # Prometheus parses a float of seconds and keeps millisecond resolution.
    value = float(raw)
    if not math.isfinite(value):
        raise ValueError(raw)
    return round(value * 1000)


class _Handler(BaseHTTPRequestHandler):
    simulator: PrometheusSimulator
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
        pass

    def do_GET(self) -> None:  # noqa: N802 (stdlib name)
        url = urllib.parse.urlsplit(self.path)
        self._answer(url.path, urllib.parse.parse_qs(url.query))

    def do_POST(self) -> None:  # noqa: N802 (stdlib name)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode()
        self._answer(urllib.parse.urlsplit(self.path).path, urllib.parse.parse_qs(body))

    def _answer(self, path: str, params: Dict[str, List[str]]) -> None:
        sim = self.simulator
        auth = self.headers.get("Authorization")
        with sim._lock:
            sim.requests.append({"path": path, "params": {k: v[0] for k, v in params.items()},
                                 "authorization": auth})
        if sim.token is not None and auth != f"Bearer {sim.token}":
            self._send(401, b"Unauthorized\n", "text/plain")
            return
        if path != "/api/v1/query_range":
            self._send(404, b"404 page not found\n", "text/plain")
            return
        if sim.failure == "500":
            self._send(500, b"<html><body>502 Bad Gateway</body></html>", "text/html")
            return
        if sim.failure == "garbage":
            self._send(200, b'{"status": "success", "data": {"resultType": "matr', "application/json")
            return
        if sim.failure == "error":
            status, doc = 422, {"status": "error", "errorType": "execution",
                                "error": "query timed out in expression evaluation"}
        else:
            status, doc = self._query_range(params)
        self._send(status, json.dumps(doc).encode(), "application/json")

    def _query_range(self, params: Dict[str, List[str]]) -> Tuple[int, Dict[str, Any]]:
        sim = self.simulator
        for name in ("query", "start", "end", "step"):
            if not params.get(name):
                return _bad_data(f'invalid parameter "{name}": missing')
        try:
            start_ms = _parse_time_ms(params["start"][0])
            end_ms = _parse_time_ms(params["end"][0])
        except ValueError:
            return _bad_data('invalid parameter "start" or "end": cannot parse to a valid timestamp')
        try:
            step_ms = round(float(params["step"][0]) * 1000)
        except ValueError:
            return _bad_data('invalid parameter "step": cannot parse to a valid duration')
        if end_ms < start_ms:
            return _bad_data('invalid parameter "end": end timestamp must not be before start time')
        if step_ms <= 0:
            return _bad_data("zero or negative query resolution step widths are not accepted. "
                             "Try a positive integer")
        if (end_ms - start_ms) // step_ms > sim.max_points:
            return _bad_data(f"exceeded maximum resolution of {sim.max_points:,} points per "
                             "timeseries. Try decreasing the query resolution (?step=XX)")
        return 200, sim.matrix(start_ms, end_ms, step_ms)

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass


def main(argv: Optional[List[str]] = None) -> int:
    """Serve until SIGINT/SIGTERM; print the base URL on stdout once listening."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--watts", type=float, default=300.0)
    parser.add_argument("--series", type=int, default=2)
    parser.add_argument("--kind", choices=("power", "energy"), default="power",
                        help="power gauges (W) or energy counters")
    parser.add_argument("--joules-per-unit", type=float, default=1.0,
                        help="counter unit, e.g. 0.001 for mJ (DCGM)")
    parser.add_argument("--token-file", help="require this bearer token (file content)")
    args = parser.parse_args(argv)
    token = None
    if args.token_file:
        with open(args.token_file, encoding="utf-8") as handle:
            token = handle.read().strip()
    sim = PrometheusSimulator(args.watts, series=args.series, token=token, port=args.port,
                              host=args.host, kind=args.kind,
                              joules_per_unit=args.joules_per_unit)
    print(sim.start(), flush=True)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    sim.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
