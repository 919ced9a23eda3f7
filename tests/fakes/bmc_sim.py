"""A Redfish BMC simulator: a real HTTP(S) server on 127.0.0.1 serving the power resources that
``shared.energy.sources.redfish`` reads, in the three shapes found on real BMCs.

Modes (the resource trees are modelled on what the BMCs publish; values are the simulator's):

- ``ilo``: HPE iLO 4/5 style. ``/redfish/v1/Chassis/1/Power`` with
  ``PowerControl[0].PowerConsumedWatts``; links carry a trailing slash, as iLO writes them.
- ``envmetrics``: a newer BMC (Redfish 2020.4+). The chassis collection lists a GPU baseboard
  first (``ContainedBy`` chassis 1, with its own EnvironmentMetrics reporting only part of the
  power, as HGX systems do), then chassis ``1`` exposing EnvironmentMetrics (``PowerWatts``),
  the deprecated Power and PowerSubsystem all at once.
- ``powersubsystem``: chassis ``1`` exposes only PowerSubsystem: two PSUs whose
  ``Metrics`` (PowerSupplyMetrics) give ``InputPowerWatts.Reading`` (45% / 55% of the total) and a
  third, absent PSU slot without metrics. A storage enclosure without power resources comes
  first in the chassis collection.

- ``fixture``: a vendor-shaped tree from ``tests/fixtures/redfish/<name>.json`` (``fixture=``),
  served as it is written, except the readings its ``live`` table names: those follow the
  simulator's power over time (``watts`` x the entry's share), and energy counters
  (``joules``, ``kwh`` rounded down to 0.001 kWh as BMCs publish it) follow the energy the
  simulator has integrated since it started (``energy_j()``, the truth a test compares
  with), plus the entry's offset; ``reset_counters()`` sends every counter back to 0.

Failure injection (``failure`` attribute, switchable while serving, or ``fail_after``): ``"500"``
(HTTP 500), ``"garbage"`` (200 with a body that is not JSON), ``"missing"`` (200, valid JSON
without the power reading), ``"timeout"`` (the handler hangs ``hang_s`` seconds before answering),
``"trickle"`` (a correct answer, status line included, sent one byte every ``trickle_s`` seconds:
a BMC on a bad link, which a per-read socket timeout never catches), ``"zero"`` (every power
reading reads 0 W while the node goes on drawing ``watts``: a BMC whose sensor dropped out).
A failing BMC fails every request, as a sick BMC does.

Collections answer ``$expand=.($levels=1)`` with their members' documents (``expand``
attribute; False ignores the query, as many BMCs do).

With ``user``/``password`` every resource except the service root requires HTTP Basic auth
(the service root is public in Redfish); a wrong or missing header gets 401. With
``redirect_to`` set, every request is answered ``301 Moved Permanently`` to that URL.

Command line (serves until interrupted, prints the service-root URL first)::

    python tests/fakes/bmc_sim.py --port 0 --watts 500 [--fail-after 5] [--mode ilo|envmetrics|powersubsystem] [--user u --password p]
"""
from __future__ import annotations

import argparse
import base64
import copy
import json
import math
import signal
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

MODES = ("ilo", "envmetrics", "powersubsystem", "fixture")
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "redfish"
FAILURES = ("500", "garbage", "missing", "timeout", "trickle", "zero")

# Fractions of the total drawn by each PSU in powersubsystem mode; uneven so that a reader that
# takes one PSU instead of the sum is caught.
PSU_SHARES = (0.45, 0.55)
# Share of the node power the GPU baseboard chassis reports in envmetrics mode: a reader that
# picks this sub-chassis would read 60% of the truth.
BASEBOARD_SHARE = 0.6


def _link(path: str) -> Dict[str, str]:
    return {"@odata.id": path}


class BmcSimulator:
    """A simulated BMC. ``start()`` returns the service-root URL; change ``watts`` or
    ``failure`` at any time from the test thread; ``stop()`` shuts it down promptly."""

    def __init__(self, watts: float = 500.0, mode: str = "ilo", *, user: Optional[str] = None,
                 password: Optional[str] = None, fail_after: Optional[int] = None,
                 failure_after: str = "500", certfile: Optional[str] = None,
                 keyfile: Optional[str] = None, hang_s: float = 5.0, trickle_s: float = 0.5,
                 port: int = 0, host: str = "127.0.0.1",
                 fixture: Optional[str] = None) -> None:
        if fixture is not None:
            mode = "fixture"
        if mode == "fixture" and fixture is None:
            raise ValueError("mode 'fixture' needs fixture=<name under tests/fixtures/redfish>")
        if mode not in MODES:
            raise ValueError(f"unknown BMC simulator mode {mode!r}; choose one of {MODES}")
        if failure_after not in FAILURES:
            raise ValueError(f"unknown failure {failure_after!r}; choose one of {FAILURES}")
        if (user is None) != (password is None):
            raise ValueError("give both user and password, or neither")
        # The truth: energy integrated exactly over every change of ``watts`` (the setter).
        self._energy_lock = threading.Lock()
        self._energy = 0.0
        self._since = time.monotonic()
        self._watts = float(watts)
        self._counter_base = 0.0
        self._counter_offsets = True
        self.mode = mode
        self.tree: Dict[str, Any] = {}
        self.live: Dict[str, Dict[str, List[Any]]] = {}
        if fixture is not None:
            path = Path(fixture) if fixture.endswith(".json") else FIXTURES / f"{fixture}.json"
            loaded = json.loads(path.read_text())
            self.tree, self.live = loaded["resources"], loaded.get("live", {})
        self.user = user
        self.password = password
        self.fail_after = fail_after
        self.failure_after = failure_after
        self.failure: Optional[str] = None
        self.redirect_to: Optional[str] = None
        #: answer ``$expand`` on collections (False: ignore it, as many BMCs do)
        self.expand = True
        self.hang_s = hang_s
        self.trickle_s = trickle_s
        self._certfile = certfile
        self._keyfile = keyfile
        self._host = host
        self._port = port
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None
        #: (path, had an Authorization header, status sent) for every request, in order
        self.requests: List[Tuple[str, bool, int]] = []
        #: successful reads of a power resource (what ``fail_after`` counts)
        self.power_reads = 0

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("simulator not started")
        scheme = "https" if self._certfile else "http"
        return f"{scheme}://{self._host}:{self._server.server_address[1]}"

    @property
    def url(self) -> str:
        """The service root, ``.../redfish/v1``."""
        return self.base_url + "/redfish/v1"

    def start(self) -> str:
        sim = self

        class Handler(_Handler):
            simulator = sim

        server = ThreadingHTTPServer((self._host, self._port), Handler)
        # Hanging handlers must not keep the test process alive or block server_close().
        server.daemon_threads = True
        if self._certfile:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(self._certfile, self._keyfile)
            server.socket = ctx.wrap_socket(server.socket, server_side=True)
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="bmc-sim", daemon=True)
        self._thread.start()
        return self.url

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "BmcSimulator":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- the truth -------------------------------------------------------------------------------
    @property
    def watts(self) -> float:
        return self._watts

    @watts.setter
    def watts(self, value: float) -> None:
        with self._energy_lock:
            now = time.monotonic()
            self._energy += self._watts * (now - self._since)
            self._watts, self._since = float(value), now

    def energy_j(self) -> float:
        """Joules drawn since the simulator was made: what a perfect meter would read."""
        with self._energy_lock:
            return self._energy + self._watts * (time.monotonic() - self._since)

    def reset_counters(self) -> None:
        """Every energy counter of the fixture goes back to 0 (a BMC reboot, ResetMetrics)."""
        energy = self.energy_j()
        with self._energy_lock:
            self._counter_base, self._counter_offsets = energy, False

    def reported_watts(self) -> float:
        """What the power readings say: ``watts``, or 0 under the ``"zero"`` failure."""
        return 0.0 if self.current_failure() == "zero" else self.watts

    def _live_value(self, kind: str, share: float, offset: float) -> float:
        if kind == "power":
            return self.reported_watts() * share
        energy = self.energy_j()
        with self._energy_lock:
            since = (energy - self._counter_base) * share
            base = offset if self._counter_offsets else 0.0
        if kind == "joules":
            return float(math.floor(base + since))  # whole joules, as BMCs publish them
        if kind == "kwh":
            return math.floor((base + since / 3.6e6) * 1000.0) / 1000.0  # 0.001 kWh steps
        raise ValueError(f"unknown live kind {kind!r}")

    def _fixture_resource(self, path: str) -> Tuple[Optional[Dict[str, Any]], bool]:
        doc = self.tree.get(path)
        if doc is None:
            return None, False
        live = self.live.get(path)
        if not live:
            return doc, False
        doc = copy.deepcopy(doc)
        for dotted, (kind, share, *rest) in live.items():
            node: Any = doc
            keys = [int(k) if k.isdigit() else k for k in dotted.split(".")]
            for key in keys[:-1]:
                node = node[key]
            node[keys[-1]] = self._live_value(kind, float(share), float(rest[0]) if rest else 0.0)
        return doc, True

    # -- state used by the handler ------------------------------------------------------------
    def _record(self, path: str, had_auth: bool, status: int) -> None:
        with self._lock:
            self.requests.append((path, had_auth, status))

    def current_failure(self) -> Optional[str]:
        with self._lock:
            if self.failure is not None:
                return self.failure
            if self.fail_after is not None and self.power_reads >= self.fail_after:
                return self.failure_after
            return None

    def auth_ok(self, header: Optional[str]) -> bool:
        if self.user is None:
            return True
        token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        return header == f"Basic {token}"

    # -- the resource tree ----------------------------------------------------------------------
    def resource(self, path: str) -> Tuple[Optional[Dict[str, Any]], bool]:
        """(JSON document or None for 404, is it a power resource)."""
        if self.mode == "fixture":
            return self._fixture_resource(path)
        w = self.reported_watts()
        root = "/redfish/v1"
        if path == root:
            return {"@odata.id": root + "/", "@odata.type": "#ServiceRoot.v1_5_0.ServiceRoot",
                    "Id": "RootService", "Name": "Root Service", "RedfishVersion": "1.11.0",
                    "Chassis": _link(self._p(root + "/Chassis")),
                    "Systems": _link(self._p(root + "/Systems"))}, False
        if path == root + "/Chassis":
            members = [_link(self._p(f"{root}/Chassis/{cid}")) for cid in self._chassis_ids()]
            return {"@odata.id": self._p(root + "/Chassis"),
                    "@odata.type": "#ChassisCollection.ChassisCollection",
                    "Name": "Chassis Collection", "Members": members,
                    "Members@odata.count": len(members)}, False

        c1 = root + "/Chassis/1"
        if path == c1:
            doc: Dict[str, Any] = {"@odata.id": self._p(c1), "@odata.type": "#Chassis.v1_14_0.Chassis",
                                   "Id": "1", "Name": "Computer System Chassis",
                                   "ChassisType": "RackMount",
                                   "Thermal": _link(self._p(c1 + "/Thermal"))}
            if self.mode in ("ilo", "envmetrics"):
                doc["Power"] = _link(self._p(c1 + "/Power"))
            if self.mode == "envmetrics":
                doc["EnvironmentMetrics"] = _link(c1 + "/EnvironmentMetrics")
            if self.mode in ("envmetrics", "powersubsystem"):
                doc["PowerSubsystem"] = _link(c1 + "/PowerSubsystem")
            return doc, False
        if path == c1 + "/Thermal":
            return {"@odata.id": self._p(c1 + "/Thermal"), "@odata.type": "#Thermal.v1_5_0.Thermal",
                    "Id": "Thermal", "Name": "Thermal",
                    "Temperatures": [{"MemberId": "0", "ReadingCelsius": 24}]}, False
        if path == c1 + "/Power" and self.mode in ("ilo", "envmetrics"):
            return {"@odata.id": self._p(c1 + "/Power"), "@odata.type": "#Power.v1_3_0.Power",
                    "Id": "Power", "Name": "PowerMetrics",
                    "PowerControl": [{
                        "@odata.id": c1 + "/Power#/PowerControl/0", "MemberId": "0",
                        "Name": "Server Power Control", "PowerCapacityWatts": 1600,
                        "PowerConsumedWatts": w,
                        "PowerMetrics": {"AverageConsumedWatts": w, "IntervalInMin": 20,
                                         "MaxConsumedWatts": w, "MinConsumedWatts": w}}]}, True
        if path == c1 + "/EnvironmentMetrics" and self.mode == "envmetrics":
            return {"@odata.id": c1 + "/EnvironmentMetrics",
                    "@odata.type": "#EnvironmentMetrics.v1_3_0.EnvironmentMetrics",
                    "Id": "EnvironmentMetrics", "Name": "Chassis Environment Metrics",
                    "TemperatureCelsius": {"Reading": 24.0},
                    "PowerWatts": {"DataSourceUri": c1 + "/Sensors/TotalPower",
                                   "Reading": w}}, True

        if self.mode == "envmetrics":
            bb = root + "/Chassis/GPU_Baseboard"
            if path == bb:
                return {"@odata.id": bb, "@odata.type": "#Chassis.v1_14_0.Chassis",
                        "Id": "GPU_Baseboard", "Name": "GPU Baseboard", "ChassisType": "Module",
                        "EnvironmentMetrics": _link(bb + "/EnvironmentMetrics"),
                        "Links": {"ContainedBy": _link(c1)}}, False
            if path == bb + "/EnvironmentMetrics":
                return {"@odata.id": bb + "/EnvironmentMetrics",
                        "@odata.type": "#EnvironmentMetrics.v1_3_0.EnvironmentMetrics",
                        "Id": "EnvironmentMetrics", "Name": "Baseboard Environment Metrics",
                        "PowerWatts": {"Reading": w * BASEBOARD_SHARE}}, True

        if self.mode == "powersubsystem":
            enc = root + "/Chassis/Enclosure0"
            if path == enc:
                return {"@odata.id": enc, "@odata.type": "#Chassis.v1_14_0.Chassis",
                        "Id": "Enclosure0", "Name": "Drive Enclosure",
                        "ChassisType": "StorageEnclosure",
                        "Drives": _link(enc + "/Drives")}, False

        if self.mode in ("envmetrics", "powersubsystem"):
            ps = c1 + "/PowerSubsystem"
            psus = ps + "/PowerSupplies"
            if path == ps:
                return {"@odata.id": ps, "@odata.type": "#PowerSubsystem.v1_1_0.PowerSubsystem",
                        "Id": "PowerSubsystem", "Name": "Power Subsystem", "CapacityWatts": 2400,
                        "PowerSupplies": _link(psus)}, False
            if path == psus:
                members = [_link(f"{psus}/{i}") for i in range(len(PSU_SHARES) + 1)]
                return {"@odata.id": psus,
                        "@odata.type": "#PowerSupplyCollection.PowerSupplyCollection",
                        "Name": "Power Supply Collection", "Members": members,
                        "Members@odata.count": len(members)}, False
            for i, share in enumerate(PSU_SHARES):
                if path == f"{psus}/{i}":
                    return {"@odata.id": path, "@odata.type": "#PowerSupply.v1_5_0.PowerSupply",
                            "Id": str(i), "Name": f"PSU {i}",
                            "Status": {"State": "Enabled", "Health": "OK"},
                            "Metrics": _link(path + "/Metrics")}, False
                if path == f"{psus}/{i}/Metrics":
                    return {"@odata.id": path,
                            "@odata.type": "#PowerSupplyMetrics.v1_0_0.PowerSupplyMetrics",
                            "Id": "Metrics", "Name": f"PSU {i} Metrics",
                            "InputPowerWatts": {"Reading": w * share},
                            "OutputPowerWatts": {"Reading": w * share * 0.94}}, True
            absent = f"{psus}/{len(PSU_SHARES)}"
            if path == absent:
                return {"@odata.id": absent, "@odata.type": "#PowerSupply.v1_5_0.PowerSupply",
                        "Id": str(len(PSU_SHARES)), "Name": "PSU slot (empty)",
                        "Status": {"State": "Absent"}}, False
        return None, False

    def _chassis_ids(self) -> List[str]:
        if self.mode == "envmetrics":
            return ["GPU_Baseboard", "1"]
        if self.mode == "powersubsystem":
            return ["Enclosure0", "1"]
        return ["1"]

    def _p(self, path: str) -> str:
        # iLO writes its links with a trailing slash; readers must cope with both spellings.
        return path + "/" if self.mode == "ilo" else path


def _strip_missing(doc: Dict[str, Any]) -> Dict[str, Any]:
    """The same document without its power reading: a BMC that is up but has no value yet."""
    doc = dict(doc)
    if "ReadingType" in doc:  # a Sensor
        doc["Reading"] = None
    for key in ("PowerControl", "PowerWatts", "InputPowerWatts"):
        if key in doc:
            doc[key] = [] if key == "PowerControl" else {"Reading": None}
    return doc


class _Handler(BaseHTTPRequestHandler):
    simulator: BmcSimulator
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
        pass  # the tests read the simulator's request log instead of stderr noise

    def do_GET(self) -> None:  # noqa: N802 (stdlib name)
        sim = self.simulator
        path = self.path.split("?", 1)[0].split("#", 1)[0]
        if len(path) > 1:
            path = path.rstrip("/")
        auth = self.headers.get("Authorization")
        if sim.redirect_to is not None:
            self._send(301, {}, path, auth, extra={"Location": sim.redirect_to})
            return
        failure = sim.current_failure()
        if failure == "timeout":
            sim._stopping.wait(sim.hang_s)
            failure = "500"  # if the client is still there after the hang, it gets an error
        if failure == "500":
            self._send(500, {"error": {"code": "Base.1.8.InternalError",
                                       "message": "simulated BMC failure"}}, path, auth)
            return
        if path != "/redfish/v1" and not sim.auth_ok(auth):
            self._send(401, {"error": {"code": "Base.1.8.NoValidSession",
                                       "message": "authentication required"}}, path, auth,
                       extra={"WWW-Authenticate": 'Basic realm="bmc-sim"'})
            return
        doc, is_power = sim.resource(path)
        if doc is not None and sim.expand and "$expand" in self.path and "Members" in doc:
            # $expand=.($levels=1): each member's document in place of its link
            doc = dict(doc, Members=[sim.resource(m["@odata.id"].rstrip("/"))[0] or m
                                     for m in doc["Members"]])
        if doc is None:
            self._send(404, {"error": {"code": "Base.1.8.ResourceMissingAtURI",
                                       "message": f"no resource at {path}"}}, path, auth)
            return
        if failure == "garbage":
            self._send_raw(200, b'{"PowerControl": [{"PowerConsumedWatts": 5<html>oops', path, auth)
            return
        if failure == "missing":
            doc = _strip_missing(doc)
        elif is_power:
            with sim._lock:
                sim.power_reads += 1
        self._send(200, doc, path, auth)

    def _send(self, status: int, doc: Dict[str, Any], path: str, auth: Optional[str],
              extra: Optional[Dict[str, str]] = None) -> None:
        self._send_raw(status, json.dumps(doc).encode(), path, auth, extra)

    def _send_raw(self, status: int, body: bytes, path: str, auth: Optional[str],
                  extra: Optional[Dict[str, str]] = None) -> None:
        self.simulator._record(path, auth is not None, status)
        if self.simulator.current_failure() == "trickle":
            self._trickle(status, body)
            return
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("OData-Version", "4.0")
            self.send_header("Content-Length", str(len(body)))
            for key, value in (extra or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout test): nothing to answer

    def _trickle(self, status: int, body: bytes) -> None:
        sim = self.simulator
        head = (f"HTTP/1.1 {status} OK\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        for i in range(len(head) + len(body)):
            byte = (head + body)[i:i + 1]
            try:
                self.wfile.write(byte)
                self.wfile.flush()
            except OSError:
                return  # the client gave up: what the test wants to see
            if sim._stopping.wait(sim.trickle_s):
                return


def main(argv: Optional[List[str]] = None) -> int:
    """Serve until SIGINT/SIGTERM; print the service-root URL on stdout once listening."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--watts", type=float, default=500.0)
    parser.add_argument("--mode", choices=MODES, default="ilo")
    parser.add_argument("--fixture", help="serve tests/fixtures/redfish/<FIXTURE>.json (or a "
                                          "path to such a file); implies --mode fixture")
    parser.add_argument("--fail-after", type=int, default=None,
                        help="fail every request after this many successful power reads")
    parser.add_argument("--failure", choices=FAILURES, default="500",
                        help="how it fails after --fail-after (default 500)")
    parser.add_argument("--user")
    parser.add_argument("--password")
    parser.add_argument("--certfile", help="serve HTTPS with this PEM certificate")
    parser.add_argument("--keyfile", help="private key of --certfile")
    args = parser.parse_args(argv)
    if (args.user is None) != (args.password is None):
        parser.error("give both --user and --password, or neither")
    sim = BmcSimulator(args.watts, args.mode, user=args.user, password=args.password,
                       fail_after=args.fail_after, failure_after=args.failure,
                       certfile=args.certfile, keyfile=args.keyfile, port=args.port,
                       host=args.host, fixture=args.fixture)
    url = sim.start()
    print(url, flush=True)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    sim.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
