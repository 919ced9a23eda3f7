"""Whole-node energy from the BMC over Redfish: an energy counter read at each report, or
power integrated on a sampling thread.

(One job, in one file: the Redfish source. Its length is the discovery of the node's
resource across the tree shapes BMCs publish: legacy Power, EnvironmentMetrics,
PowerSubsystem, Sensors, energy counters, several chassis.)

What is measured: the power supplies' input, i.e. everything the node draws (GPUs, CPUs,
DRAM, fans, PSU losses). It is a *node* figure: read by one process per node, and it already
contains the GPUs (never add NVML on top of it).

Where the reading comes from (``ENERGY_REDFISH_URL`` may name any of these):

- ``.../redfish/v1/Chassis/{id}/EnvironmentMetrics`` (Redfish 2020.4+): ``PowerWatts.Reading``.
- ``.../redfish/v1/Chassis/{id}/Power`` (the older schema, HPE iLO 4/5 among others):
  ``PowerControl[0].PowerConsumedWatts``.
- ``.../redfish/v1/Chassis/{id}/PowerSubsystem`` (2020.4+): the sum over the power supplies
  (``PowerSupplies`` collection) of each one's ``Metrics`` (PowerSupplyMetrics)
  ``InputPowerWatts.Reading``. The schema has no node total here, so the input of every
  present supply is added; an absent slot (``Status.State == "Absent"``) is skipped; a present
  supply without a reading makes the sample fail rather than silently under-count. The
  supplies are listed once at ``open()`` (a supply hot-plugged later is not seen).
- ``.../redfish/v1/Chassis/{id}`` or the chassis collection: that chassis' power resource.
- ``.../redfish/v1/Chassis/{id}/Sensors/{sensor}``: a Sensor with ``ReadingType`` Power
  (watts, sampled) or EnergyJoules / EnergykWh (a counter, read at each report).
- the service root ``.../redfish/v1`` (or just ``https://bmc``): discovery, in two steps.

  *Which chassis is the node.* Candidates are the chassis with a power link that are
  top-level (no ``Links.ContainedBy``) or themselves a node type (Blade, Sled, RackMount,
  StandAlone: the nodes of an HPE Cray EX blade or of a sled enclosure), minus any chassis
  that contains another candidate (an enclosure's total covers several nodes). A GPU
  baseboard or a drive enclosure is a part, tried only if every candidate fails; where some
  candidates are nodes by type, only those are (never an enclosure or a card). With several,
  ``ENERGY_REDFISH_CHASSIS`` (an id or a path) names this node's; unset, this node's is found
  from facts on the node (``node_identity``: the ComputerSystem whose UUID or HostName is this
  host's, followed through ``Links.Chassis``; the Cray xname), else the source refuses,
  naming the candidates.

  *Which reading of that chassis* (``_from_one_chassis`` holds the order and its reasons): a
  joule energy counter (EnvironmentMetrics.EnergyJoules, or the node's EnergyJoules sensor),
  the node's power sensor, EnvironmentMetrics.PowerWatts, the PowerSubsystem sum, the
  deprecated Power.PowerControl, and last an EnergykWh counter (0.001 kWh = 3600 J steps: too
  coarse for a short run, so any power reading is preferred to it). Among a chassis' dozens of
  sensors (per CPU, memory, GPU, voltage regulator, supply) the node's is the one that
  EnvironmentMetrics names as its DataSourceUri, else the one with PhysicalContext
  "Chassis", else the one named "Node..." / "Total..."; two such sensors and none is taken:
  sensors that contain each other are never summed. Of several PowerControl entries the
  first with a reading is used, with a warning (they may overlap: never summed).

  The choice and its reason are logged once and shown by ``describe()``
  (``redfish:Chassis/Node0/Sensors/NodeEnergy:energy-counter: ...``), and the report's
  ``sources`` shows it as the source's ``label`` (``redfish:Chassis/Node0/Sensors/NodeEnergy:
  energy-counter``). Its ``name``, the key everywhere else, stays ``redfish``.

An energy counter is differenced against its value at open (``counters.counter_step``): a
counter that goes back (BMC reboot, ResetMetrics) is a reset, that interval is not counted
and shows in coverage. It is read at each report (one request, bounded by the timeout; a
failure keeps the last total and is counted) and once more at ``close()``, then frozen.

Secrets: credentials only from the file named by ``ENERGY_REDFISH_CREDENTIALS_FILE``, either a
first line ``user:password`` (the password may contain ``:``) or a JSON object
``{"username": "...", "password": "..."}``; HTTP Basic auth, sent preemptively. Never from
hyperparameters (they are shown in the WebUI; options that look like secrets are refused) nor
from the URL (``user:pass@host`` is refused: the URL is typically set in the experiment
config's environment, which the WebUI shows too). No message, log line or ``repr`` contains
them. Redirects are not followed, so the Authorization header never travels to another URL,
and a link in a BMC document that points off the BMC is refused for the same reason.
Proxies from the environment are ignored: BMCs live on a management network, and Basic
credentials must not go through an HTTP proxy.

Transport: TLS verified by default (``ENERGY_REDFISH_CA_BUNDLE`` names a PEM CA file for the
BMC's usually self-signed certificate; ``ENERGY_REDFISH_INSECURE=1`` turns verification off,
with a warning). Plain ``http://`` works with a warning, but credentials are not sent over it
unless ``ENERGY_REDFISH_ALLOW_HTTP_CREDENTIALS=1``.

Failures never stop training: a sample that fails (timeout, HTTP error, 401/403, garbage
JSON, missing key, null or zero reading) is counted in ``health``; the sampler tries again a
period later, after consecutive failures at most 4 periods apart, so a BMC that recovers is
read again within that; every hole between two good samples is bridged with a straight line
and reported as ``bridged_s``, and a last sample is taken at close (a ``SampledPowerSource``:
see ``sampling.py`` for the schedule, the integration and its bias).

Options (the ``energy`` hyperparameters): ``redfish_sample_period_s`` (or the shared
``sample_period_s``; default 5 s, about the BMC's refresh period: sampling faster only reads the
same value again and loads the BMC), ``redfish_timeout_s`` (default 3 s: a total deadline for
the whole discovery at open, and for each sample, however slowly the BMC sends).
"""
from __future__ import annotations

import base64
import json
import math
import os
import re
import stat
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from ..redact import energy_logger, register_secrets
from ..deadline import Deadline
from ..http import (HttpFailure, JsonHttpClient, check_http_url, make_ssl_context,
                    redact_url)
from ..schema import EnvVar, boolean_text, env_flag, positive_option, refuse_secret_options
from .base import MAX_NODE_POWER_W, SourceUnavailable
from .counters import counter_step
from .node_identity import NodeIdentity, SystemFacts, pick_chassis, system_facts
from .sampling import SampledPowerSource, bmc_options, plausible_watts

log = energy_logger(__name__)

ENV_URL = "ENERGY_REDFISH_URL"
ENV_CREDENTIALS = "ENERGY_REDFISH_CREDENTIALS_FILE"
ENV_CA_BUNDLE = "ENERGY_REDFISH_CA_BUNDLE"
ENV_INSECURE = "ENERGY_REDFISH_INSECURE"
ENV_ALLOW_HTTP_CREDENTIALS = "ENERGY_REDFISH_ALLOW_HTTP_CREDENTIALS"
ENV_CHASSIS = "ENERGY_REDFISH_CHASSIS"

#: About the BMC's refresh period: sampling faster only reads the same value again.
DEFAULT_PERIOD_S = 5.0
DEFAULT_TIMEOUT_S = 3.0

# The resources a URL may name directly, and the chassis links that lead to a power or
# energy reading (the order of preference is in ``RedfishSource._from_one_chassis``).
POWER_KINDS = ("EnvironmentMetrics", "Power", "PowerSubsystem")
CHASSIS_LINKS = ("EnvironmentMetrics", "Sensors", "PowerSubsystem", "Power")


# ------------------------------------------------------------------------------------------
# Credentials
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BasicCredentials:
    """HTTP Basic credentials and the file they came from (the file name is not secret)."""

    username: str
    password: str = field(repr=False)
    origin: str = ""

    def __post_init__(self) -> None:
        # Redacted wherever they show up: a BMC's error page may quote them back.
        register_secrets((self.password, self._token()))

    def _token(self) -> str:
        return base64.b64encode(f"{self.username}:{self.password}".encode("utf-8")).decode("ascii")

    def header(self) -> str:
        return f"Basic {self._token()}"


def load_credentials(path: str) -> BasicCredentials:
    """Read ``user:password`` (first line) or JSON ``{"username", "password"}`` from ``path``.

    Errors name the file, never its content. A file readable by group or others is accepted
    with a warning (the training image may not allow chmod on a mounted secret).
    """
    where = f"{ENV_CREDENTIALS}={path}"
    try:
        with open(path, "r", encoding="utf-8") as handle:
            text = handle.read()
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise SourceUnavailable(f"{where}: no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else type(err).__name__
        raise SourceUnavailable(f"{where}: cannot read it ({reason})") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("redfish: credentials file %s is readable by group/others (mode %o); "
                    "chmod 600 it", path, stat.S_IMODE(mode))
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            doc = json.loads(stripped)
        except ValueError:
            raise SourceUnavailable(f"{where}: starts with '{{' but is not valid JSON") from None
        user, password = doc.get("username"), doc.get("password")
        if not (isinstance(user, str) and user.strip() and isinstance(password, str) and password):
            raise SourceUnavailable(f"{where}: the JSON object needs non-empty string fields "
                                    "'username' and 'password'")
        return BasicCredentials(user.strip(), password, path)
    first_line = text.splitlines()[0] if text else ""
    user, sep, password = first_line.partition(":")
    if not sep or not user.strip() or not password:
        raise SourceUnavailable(f"{where}: expected 'user:password' on the first line, or a JSON "
                                "object with 'username' and 'password'")
    return BasicCredentials(user.strip(), password, path)


# ------------------------------------------------------------------------------------------
# Reading Redfish documents
# ------------------------------------------------------------------------------------------
class BadReading(Exception):
    """A document that arrived but does not hold a usable power reading."""


def _dotted(path: Sequence[Any]) -> str:
    out = ""
    for key in path:
        out += f"[{key}]" if isinstance(key, int) else (f".{key}" if out else str(key))
    return out


def reading_at(doc: Any, path: Sequence[Any], where: str) -> float:
    """The number at ``path`` (keys and list indices) in ``doc``, as watts.

    Missing keys, null, strings, booleans, NaN and negative values are BadReading: a BMC that
    is up but has no value yet must not be integrated as 0 W.
    """
    node = doc
    for depth, key in enumerate(path):
        if isinstance(key, int):
            ok = isinstance(node, list) and -len(node) <= key < len(node)
        else:
            ok = isinstance(node, dict) and key in node
        if not ok:
            raise BadReading(f"{_dotted(path[:depth + 1])} missing in {where}")
        node = node[key]
    if isinstance(node, bool) or not isinstance(node, (int, float)):
        raise BadReading(f"{_dotted(path)} is {str(json.dumps(node))[:40]}, not a number, in {where}")
    if not math.isfinite(node) or node < 0:
        raise BadReading(f"{_dotted(path)} is {node!r}, not a power in watts, in {where}")
    return float(node)


def resource_kind(doc: Any, url: str) -> str:
    """Schema name of a Redfish document ("Power", "ServiceRoot", ...): from ``@odata.type``
    (``#Power.v1_5_0.Power``, iLO's ``#Power.1.0.1.Power``), else guessed from the URL."""
    if isinstance(doc, dict):
        odata_type = doc.get("@odata.type")
        if isinstance(odata_type, str) and odata_type.lstrip("#"):
            return odata_type.lstrip("#").split(".", 1)[0]
    segments = [s for s in urllib.parse.urlsplit(url).path.split("/") if s]
    if segments[-2:] == ["redfish", "v1"]:
        return "ServiceRoot"
    if segments and segments[-1] in POWER_KINDS:
        return segments[-1]
    if segments and segments[-1] == "Chassis":
        return "ChassisCollection"
    if len(segments) >= 2 and segments[-2] == "Chassis":
        return "Chassis"
    return ""


#: Joules per unit of the energy counters Redfish defines (Sensor.ReadingType and the
#: EnvironmentMetrics property of the same name).
COUNTER_UNITS: Dict[str, float] = {"EnergyJoules": 1.0, "EnergykWh": 3.6e6}
#: the most two figures of the same node's power may differ at open (a fraction) before a
#: warning lists them all
CROSS_CHECK_SPREAD = 0.10
#: Chassis types that are a whole node (a server, a blade, a sled). A chassis contained in
#: another one is a candidate for "the node" only with one of these types: a GPU baseboard
#: ("Module") or a drive enclosure is a part of a node, never the node.
NODE_CHASSIS_TYPES = frozenset({"Blade", "Sled", "RackMount", "StandAlone"})
#: Names of the one sensor that is the node's input when the sensor says no PhysicalContext
#: "Chassis": HPE Cray EX nodes call it "Node" (beside dozens of CPU, memory, GPU and voltage
#: regulator sensors contained in it); others "Total Power" / "TotalEnergy".
_NODE_SENSOR_NAME = re.compile(r"^(node|total|chassis|system)[ _-]?(input[ _-]?)?"
                               r"(power|energy)?$", re.IGNORECASE)


@dataclass
class PowerResource:
    """What one reading reads: the documents to GET and where the number is in each.

    ``counter_j`` is None for a power reading (watts, sampled and integrated), else the
    joules per unit of an energy counter (read at report time and differenced). ``tag`` is
    the short name of the choice (``energy-counter``, ``power-sensor``...), ``why`` the
    reason it was chosen, both logged once and shown by ``describe()``.
    """

    kind: str
    url: str
    read_urls: Tuple[str, ...]
    path: Tuple[Any, ...]
    counter_j: Optional[float] = None
    tag: str = ""
    why: str = ""

    def describe(self) -> str:
        detail = f"{len(self.read_urls)} power supplies, " if self.kind == "PowerSubsystem" else ""
        text = f"{self.kind} at {redact_url(self.url)} ({detail}{_dotted(self.path)})"
        if self.tag:
            text = f"redfish:{_short(self.url)}:{self.tag}: {text}"
        return f"{text}; {self.why}" if self.why else text


def _short(url: str) -> str:
    """``Chassis/Node0/Sensors/NodePower`` from a full resource URL (for log lines)."""
    path = urllib.parse.urlsplit(url).path.rstrip("/")
    marker = "/redfish/v1/"
    return path.split(marker, 1)[1] if marker in path else path


_PATHS: Dict[str, Tuple[Any, ...]] = {
    "Power": ("PowerControl", 0, "PowerConsumedWatts"),
    "EnvironmentMetrics": ("PowerWatts", "Reading"),
    "PowerSubsystem": ("InputPowerWatts", "Reading"),  # in each PowerSupplyMetrics document
    "Sensor": ("Reading",),
}
_TAGS = {"Power": "power-control", "EnvironmentMetrics": "power-watts",
         "PowerSubsystem": "psu-input-sum", "Sensor": "power-sensor"}


class RedfishSource(SampledPowerSource):
    """Node input power from the BMC's Redfish service, sampled and integrated.

    Args:
        url: service root, chassis, or power resource (see the module docstring).
        credentials: HTTP Basic credentials, or None for a BMC that needs none.
        ca_bundle: PEM file of CAs to trust for the BMC's certificate.
        insecure: skip TLS verification (logged as a warning).
        allow_http_credentials: send credentials over plain http (otherwise open() refuses).
        sample_period_s: time between samples (the BMC refreshes every few seconds).
        timeout_s: per-request timeout.
        max_backoff_s: longest pause between tries once the BMC keeps failing (default 4
            sample periods: ``sampling.MAX_BACKOFF_PERIODS``).
        max_gap_s: an interval between good samples longer than this, with no failure in it,
            is logged once as slow (default 3 periods).
        max_power_w: readings above it (and a counter rate above it) are refused.
        clock, sampling_thread: the sampler's clock, and whether it runs on its own thread
            (tests: a fake clock, and ``sampler.step()`` driven by hand).
    """

    name = "redfish"
    covers = ("node",)
    scope = "node"
    # Before IPMI: the same BMC figure, without a fork per sample.
    priority = 30
    auto_env = ENV_URL
    summary = ("the node at its power supplies, what the study measured: the BMC's energy "
               "counter in joules (`EnvironmentMetrics.EnergyJoules`, an `EnergyJoules` "
               "sensor) read at each report, else its power sampled on its own thread "
               f"(default every {DEFAULT_PERIOD_S:g} s) and integrated: the node's power "
               "sensor, `EnvironmentMetrics.PowerWatts`, the `PowerSubsystem` supplies' sum, "
               "HPE iLO's `Power` (`PowerControl`), and a kWh counter last (too coarse); the "
               "node's chassis is discovered from the service root "
               "(`ENERGY_REDFISH_CHASSIS` when there are several)")
    env_vars = (
        EnvVar(ENV_URL, "the BMC's Redfish service root, a chassis, a `Sensors/<id>` sensor, "
                        "or a chassis' `Power`, `EnvironmentMetrics` or `PowerSubsystem` "
                        "resource; no credentials in it"),
        EnvVar(ENV_CREDENTIALS, "file holding `user:password` (first line) or "
                                "`{\"username\": ..., \"password\": ...}`; mode 600"),
        EnvVar(ENV_CA_BUNDLE, "PEM file of the CA that signed the BMC's certificate"),
        EnvVar(ENV_INSECURE, "1: do not verify the BMC's certificate (warned)", boolean_text),
        EnvVar(ENV_ALLOW_HTTP_CREDENTIALS, "1: send the credentials over plain http (else "
                                           "plain http works, with a warning, only without "
                                           "credentials)", boolean_text),
        EnvVar(ENV_CHASSIS, "the chassis that is this node, by id (`Node1`) or path "
                            "(`/redfish/v1/Chassis/Node1`), when the BMC serves several "
                            "(a blade with two nodes, an enclosure); unset: found from the "
                            "ComputerSystem whose UUID or HostName is this host's, or the "
                            "Cray xname, else the source refuses, naming them"),
    )
    options = bmc_options("redfish", "Redfish", DEFAULT_PERIOD_S, "Redfish request",
                          DEFAULT_TIMEOUT_S)

    def __init__(self, url: str, *, credentials: Optional[BasicCredentials] = None,
                 ca_bundle: Optional[str] = None, insecure: bool = False,
                 allow_http_credentials: bool = False,
                 sample_period_s: float = DEFAULT_PERIOD_S,
                 timeout_s: float = DEFAULT_TIMEOUT_S, max_backoff_s: Optional[float] = None,
                 max_gap_s: Optional[float] = None, chassis: Optional[str] = None,
                 max_power_w: float = MAX_NODE_POWER_W,
                 clock: Callable[[], float] = time.monotonic,
                 sampling_thread: bool = True,
                 identity: Optional[NodeIdentity] = None) -> None:
        super().__init__()
        for label, value in (("sample_period_s", sample_period_s), ("timeout_s", timeout_s),
                             ("max_backoff_s", max_backoff_s)):
            if value is None:
                continue
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"redfish: {label} must be a positive number, got {value!r}")
        parts = check_http_url(url.strip(), ENV_URL, ENV_CREDENTIALS)
        if parts.path.rstrip("/") == "":
            # A bare host: the service root is at a fixed place (Redfish spec).
            parts = parts._replace(path="/redfish/v1")
        self.url = urllib.parse.urlunsplit(parts)
        self._origin = (parts.scheme, parts.netloc.lower())
        self.credentials = credentials
        self.ca_bundle = ca_bundle
        self.insecure = insecure
        self.allow_http_credentials = allow_http_credentials
        self.sample_period_s = float(sample_period_s)
        self.timeout_s = float(timeout_s)
        self.max_backoff_s = None if max_backoff_s is None else float(max_backoff_s)
        self.max_gap_s = max_gap_s
        #: readings (and a counter's rate) above this are refused (``node_max_power_w``)
        self.max_power_w = float(max_power_w)
        # the sampler's clock, and whether it runs on its own thread (tests drive a fake
        # clock and the sampler's ``step`` instead)
        self._clock = clock
        self._sampling_thread = sampling_thread
        #: this node's facts, to find its chassis behind a BMC serving several (default: read
        #: from this host when needed)
        self.identity = identity
        self._systems_url: Optional[str] = None
        #: ENERGY_REDFISH_CHASSIS: which chassis is this node when the BMC serves several
        self.chassis = (chassis or "").strip() or None
        self.resource: Optional[PowerResource] = None
        # Energy counter (resource.counter_j set): the last good raw value and when it was
        # read, and the joules counted since open.
        self._counter_last: Optional[Tuple[float, float]] = None
        self._counter_joules = 0.0
        self._counter_closed = False
        self._client: Optional[JsonHttpClient] = None
        self._auth_logged = False
        # Bounds every request of one answer (discovery at open, one sample) together.
        self._deadline: Optional[Deadline] = None

    # -- construction from the environment ---------------------------------------------------
    @classmethod
    def from_env(cls, env: Mapping[str, str], options: Optional[Mapping[str, Any]] = None
                 ) -> "RedfishSource":
        """Build from ``ENERGY_REDFISH_*`` variables and the ``energy`` hyperparameters.

        Raises SourceUnavailable when the URL is not set or the site configuration is unusable
        (credentials file, CA bundle, flags), ValueError for a bad hyperparameter.
        """
        options = options or {}
        refuse_secret_options(options, "redfish", ENV_CREDENTIALS)
        url = env.get(ENV_URL, "").strip()
        if not url:
            raise SourceUnavailable(
                f"{ENV_URL} is not set (the BMC's Redfish service root, e.g. "
                "https://bmc.example/redfish/v1, or its Chassis/<id>/Power resource)")
        cred_path = env.get(ENV_CREDENTIALS, "").strip()
        credentials = load_credentials(cred_path) if cred_path else None
        ca_bundle = env.get(ENV_CA_BUNDLE, "").strip() or None
        if ca_bundle and not os.path.isfile(ca_bundle):
            raise SourceUnavailable(f"{ENV_CA_BUNDLE}={ca_bundle}: no such file")
        period = positive_option(options, ("redfish_sample_period_s", "sample_period_s"),
                                 DEFAULT_PERIOD_S)
        timeout = positive_option(options, ("redfish_timeout_s",), DEFAULT_TIMEOUT_S)
        return cls(url, credentials=credentials, ca_bundle=ca_bundle,
                   insecure=env_flag(env, ENV_INSECURE),
                   allow_http_credentials=env_flag(env, ENV_ALLOW_HTTP_CREDENTIALS),
                   sample_period_s=period, timeout_s=timeout,
                   chassis=env.get(ENV_CHASSIS, "").strip() or None,
                   max_power_w=options.get("node_max_power_w", MAX_NODE_POWER_W))

    # -- EnergySource -------------------------------------------------------------------------
    def open(self) -> None:
        """Check the transport, find the power resource, read it once, start sampling."""
        if self.sampler is not None:
            raise RuntimeError("redfish: open() called twice")
        shown = redact_url(self.url)
        headers = {"Accept": "application/json", "OData-Version": "4.0"}
        if self._origin[0] == "http":
            if self.credentials is not None and not self.allow_http_credentials:
                raise SourceUnavailable(
                    f"redfish: {shown} is plain http and credentials are configured "
                    f"({ENV_CREDENTIALS}); they are not sent unencrypted. Use https, or set "
                    f"{ENV_ALLOW_HTTP_CREDENTIALS}=1 if this network is trusted")
            log.warning("redfish: %s is plain http: readings%s travel unencrypted", shown,
                        " and credentials" if self.credentials is not None else "")
        if self.credentials is not None:
            headers["Authorization"] = self.credentials.header()
        if self.sample_period_s < 1.0:
            log.warning("redfish: sampling every %.3g s; a BMC refreshes its power reading "
                        "every few seconds, faster sampling only loads it", self.sample_period_s)
        ssl_context = (make_ssl_context(self.ca_bundle, self.insecure, "redfish")
                       if self._origin[0] == "https" else None)
        self._client = JsonHttpClient(
            timeout_s=self.timeout_s, headers=headers, ssl_context=ssl_context,
            use_env_proxies=False,
            tls_hint=f"set {ENV_CA_BUNDLE} to the PEM file of the CA that signed the BMC's "
                     f"certificate (or {ENV_INSECURE}=1 to skip verification)")
        # One deadline for the whole discovery (several requests) and the first sample: the
        # trial's first batch waits for open(), and must not wait more than timeout_s.
        with Deadline(self.timeout_s, f"redfish discovery at {shown}") as self._deadline:
            try:
                self.resource, watts = self._discover()
            finally:
                self._deadline = None
        if self.resource.counter_j is not None:
            # A counter: read at report time and differenced, nothing to sample.
            self._counter_last = (watts, time.monotonic())
            log.info("redfish: node energy from %s: counter reads %g now (%g J a unit), read "
                     "at each report", self.resource.describe(), watts, self.resource.counter_j)
            return
        log.info("redfish: node power from %s: %.1f W now, sampled every %g s",
                 self.resource.describe(), watts, self.sample_period_s)
        self.start_sampling(self.sample_period_s, max_gap_s=self.max_gap_s,
                            max_backoff_s=self.max_backoff_s, first_watts=watts,
                            plausible=plausible_watts(self.max_power_w), clock=self._clock,
                            thread=self._sampling_thread)

    def describe(self) -> str:
        if self.resource is None:
            return f"redfish: {redact_url(self.url)} (not opened)"
        if self.resource.counter_j is not None:
            return f"redfish: node energy counter, {self.resource.describe()}, read at each report"
        return (f"redfish: node input power, {self.resource.describe()}, sampled every "
                f"{self.sample_period_s:g} s")

    @property
    def label(self) -> str:
        """``redfish:<resource>:<tag>`` once open (``redfish:Chassis/Node0/Sensors/NodeEnergy:
        energy-counter``): a BMC offers several figures of the node, and which one measured
        says what the number includes. The path only, never the host (it may hold a secret)."""
        if self.resource is None or not self.resource.tag:
            return self.name
        return f"{self.name}:{_short(self.resource.url)}:{self.resource.tag}"

    # -- energy counter -----------------------------------------------------------------------
    def read(self) -> Dict[str, float]:
        """Joules since open(): the counter's difference, or the sampled integral."""
        if self.resource is None or self.resource.counter_j is None:
            return super().read()
        assert self._counter_last is not None
        if self._counter_closed:
            return {"node": self._counter_joules}
        try:
            raw = self._read_within_deadline("redfish energy counter")
        except Exception as err:  # never fatal: counted, the last total stands
            self.health.record_failure(self.name, err)
            return {"node": self._counter_joules}
        now = time.monotonic()
        prev, prev_t = self._counter_last
        # No modulus: a BMC energy counter is a number that does not wrap; a decrease is a
        # reset (BMC reboot, Sensor.ResetMetrics), an increase faster than a node can draw a
        # counter that lies: neither interval is counted.
        step = counter_step(prev, raw, elapsed_s=now - prev_t,
                            joules_per_unit=self.resource.counter_j, max_power_w=self.max_power_w)
        self._counter_last = (raw, now)
        if not step.counted:
            self.health.record_lost(self.name, self.resource.url,
                                    f"energy counter {_short(self.resource.url)}: {step.why} "
                                    f"(a {step.kind} reading); the {now - prev_t:.1f} s since "
                                    "the previous read are not counted")
        else:
            self.health.record_ok()
            self._counter_joules += step.delta * self.resource.counter_j
        return {"node": self._counter_joules}

    def close(self) -> None:
        """Stop sampling; a counter is read a last time and frozen (the window ends here)."""
        if (self.resource is not None and self.resource.counter_j is not None
                and not self._counter_closed):
            self.read()
            self._counter_closed = True
        super().close()

    # -- sampling -----------------------------------------------------------------------------
    def read_watts(self) -> float:
        """One sample, for the sampler (which schedules the tries, and backs off a little
        while they fail). Raises on failure (the sampler counts it)."""
        assert self.resource is not None
        try:
            return self._read_within_deadline("redfish sample")
        except Exception as err:
            if isinstance(err, HttpFailure) and err.status in (401, 403) and not self._auth_logged:
                self._auth_logged = True
                log.error("redfish: %s; %s", err, self._auth_advice())
            raise

    def _read_resource(self, resource: PowerResource) -> float:
        total = 0.0
        for url in resource.read_urls:
            total += reading_at(self._get(url), resource.path, redact_url(url))
        return total

    # -- discovery ----------------------------------------------------------------------------
    def _get(self, url: str) -> Any:
        assert self._client is not None
        return self._client.get_json(url, self._deadline)

    def _resolve(self, ref: Any, base: str, what: str) -> Optional[str]:
        """Absolute URL of a Redfish reference ``{"@odata.id": path}``, None if malformed;
        BadReading if it leaves the BMC (the Authorization header would follow it)."""
        target = ref.get("@odata.id") if isinstance(ref, dict) else None
        if not isinstance(target, str) or not target:
            return None
        url = urllib.parse.urljoin(base, target)
        parts = urllib.parse.urlsplit(url)
        if (parts.scheme, parts.netloc.lower()) != self._origin:
            raise BadReading(f"{what} link in {redact_url(base)} points outside the BMC "
                             f"({redact_url(url)}); refused")
        return url

    def _link(self, doc: Any, key: str, base: str) -> Optional[str]:
        """Absolute URL of ``doc[key]``, None if the document has no such link."""
        return self._resolve(doc.get(key) if isinstance(doc, dict) else None, base, key)

    def _members(self, collection: Any, url: str) -> List[str]:
        members = collection.get("Members") if isinstance(collection, dict) else None
        if not isinstance(members, list):
            raise BadReading(f"Members missing in {redact_url(url)}")
        links = (self._resolve(member, url, "Members") for member in members)
        return [link for link in links if link is not None]

    def _read_within_deadline(self, what: str) -> float:
        """One reading of the chosen resource, all its documents (one per power supply)
        within one ``timeout_s`` deadline, however slowly the BMC answers."""
        assert self.resource is not None
        with Deadline(self.timeout_s, what) as self._deadline:
            try:
                return self._read_resource(self.resource)
            finally:
                self._deadline = None

    def _get_members(self, collection: Any, url: str,
                     skipped: Callable[[str, HttpFailure], None]) -> List[Tuple[str, Any]]:
        """(link, document) of each member of ``collection``; a member that fails is passed to
        ``skipped`` and left out, except a refusal (401/403), which no other member would
        escape either."""
        out: List[Tuple[str, Any]] = []
        for member in self._members(collection, url):
            try:
                out.append((member, self._get(member)))
            except HttpFailure as err:
                if err.status in (401, 403):
                    raise
                skipped(member, err)
        return out

    def _auth_advice(self) -> str:
        if self.credentials is None:
            return f"the BMC wants credentials: put them in a file named by {ENV_CREDENTIALS}"
        return (f"the BMC refused the credentials from {self.credentials.origin or 'the file'}; "
                f"check that file ({ENV_CREDENTIALS}) and the account's Redfish privileges")

    def _unavailable(self, err: Exception, context: str = "") -> SourceUnavailable:
        message = f"redfish: {context}{err}"
        if isinstance(err, HttpFailure) and err.status in (401, 403):
            message += f"; {self._auth_advice()}"
        return SourceUnavailable(message)

    def _discover(self) -> Tuple[PowerResource, float]:
        """Resolve ``self.url`` to a power or energy resource and read it once."""
        try:
            doc = self._get(self.url)
        except HttpFailure as err:
            raise self._unavailable(err) from None
        kind = resource_kind(doc, self.url)
        try:
            if kind in POWER_KINDS or kind == "Sensor":
                return self._direct(kind, self.url, doc)
            if kind == "Chassis":
                return self._from_chassis([(self.url, doc)], select=False)
            if kind == "ChassisCollection":
                return self._from_collection(self.url, doc)
            if kind == "ServiceRoot":
                self._systems_url = self._link(doc, "Systems", self.url)
                chassis = self._link(doc, "Chassis", self.url)
                if chassis is None:
                    raise BadReading(f"the service root {redact_url(self.url)} has no Chassis link")
                return self._from_collection(chassis, self._get(chassis))
        except (HttpFailure, BadReading) as err:
            raise self._unavailable(err) from None
        raise SourceUnavailable(
            f"redfish: {redact_url(self.url)} is a {kind or 'unrecognised'} resource; "
            f"{ENV_URL} must name the service root (.../redfish/v1), a chassis, a Sensor, or "
            "a chassis' Power, EnvironmentMetrics or PowerSubsystem resource")

    def _direct(self, kind: str, url: str, doc: Any) -> Tuple[PowerResource, float]:
        """The reading of a resource named by the URL itself."""
        why = f"named by {ENV_URL}"
        if kind == "Sensor":
            return self._sensor(url, doc, why)
        if kind == "EnvironmentMetrics":
            errors: List[BadReading] = []
            for prop in ("EnergyJoules", "PowerWatts", "EnergykWh"):
                if prop == "PowerWatts" or prop in doc:
                    try:
                        return self._env_reading(url, doc, prop, why)
                    except BadReading as err:
                        errors.append(err)
            raise errors[0]
        if kind == "Power":
            return self._power_control(url, doc, why)
        resource = self._psu_sum(url, doc, why)
        return resource, self._read_resource(resource)

    def _from_collection(self, url: str, collection: Any) -> Tuple[PowerResource, float]:
        docs = self._get_members(
            collection, url,
            lambda member, err: log.info("redfish: skipping chassis %s (%s)", redact_url(member), err))
        return self._from_chassis(docs, select=True)

    def _is_selected(self, url: str, doc: Any) -> bool:
        """Does ENERGY_REDFISH_CHASSIS (an id, or a path or its tail) name this chassis?"""
        wanted = (self.chassis or "").rstrip("/")
        path = _path(url)
        return ((isinstance(doc, dict) and doc.get("Id") == wanted) or path == wanted
                or path.endswith("/" + wanted.lstrip("/")))

    def _from_chassis(self, chassis: List[Tuple[str, Any]], *, select: bool
                      ) -> Tuple[PowerResource, float]:
        """The node's reading among ``chassis`` (the collection's members, in its order).

        "The node" candidates: chassis with a power link that are top-level (no
        ``Links.ContainedBy``) or themselves a node type (a blade in an enclosure), minus
        any that contains another candidate (an enclosure's total covers several nodes, the
        blade's total both of its nodes); where some are nodes by type, only those. Several
        candidates: ENERGY_REDFISH_CHASSIS picks one; unset, ``_this_node`` finds this
        node's from its identity, or refuses naming them.
        Contained parts (a GPU baseboard) are tried only after every candidate failed.
        """
        parent: Dict[str, Optional[str]] = {}
        for url, doc in chassis:
            links = doc.get("Links") if isinstance(doc, dict) else None
            up = links.get("ContainedBy") if isinstance(links, dict) else None
            target = up.get("@odata.id") if isinstance(up, dict) else None
            parent[url] = (_path(urllib.parse.urljoin(url, target)) if isinstance(target, str)
                           else ("?" if up else None))

        def powered(doc: Any) -> bool:
            return isinstance(doc, dict) and any(isinstance(doc.get(k), dict)
                                                 for k in CHASSIS_LINKS)

        candidates = [(u, d) for u, d in chassis if powered(d) and (
            parent[u] is None or d.get("ChassisType") in NODE_CHASSIS_TYPES)]
        holders = {parent[u] for u, _ in candidates if parent[u]}
        candidates = [(u, d) for u, d in candidates if _path(u) not in holders]
        # Where some are nodes by type (blades, sleds), only those are: an enclosure's or a
        # mezzanine card's figure is never one node's.
        nodes = [(u, d) for u, d in candidates if d.get("ChassisType") in NODE_CHASSIS_TYPES]
        candidates = nodes or candidates
        if select and self.chassis:
            picked = [(u, d) for u, d in chassis if self._is_selected(u, d)]
            if not picked:
                raise SourceUnavailable(
                    f"redfish: {ENV_CHASSIS}={self.chassis} names none of the chassis this BMC "
                    f"serves: {', '.join(_chassis_id(u, d) for u, d in chassis) or 'none'}")
            log.info("redfish: chassis %s selected by %s", _short(picked[0][0]), ENV_CHASSIS)
            ordered = picked[:1]
        elif select and len(candidates) > 1:
            ordered = [self._this_node(candidates)]
        else:
            # sorted() is stable: candidates and top-level chassis first, each group in
            # collection order; a holder of candidates never (it would count other nodes).
            first = {u for u, _ in candidates}
            ordered = sorted([(u, d) for u, d in chassis if _path(u) not in holders],
                             key=lambda item: not (item[0] in first
                                                   or parent[item[0]] is None))
        tried: List[str] = []
        for url, doc in ordered:
            found = self._from_one_chassis(url, doc, tried)
            if found is not None:
                return found
        raise BadReading("no chassis gave a node power reading; tried: "
                         + ("; ".join(tried) if tried else "no chassis listed"))

    def _this_node(self, candidates: List[Tuple[str, Any]]) -> Tuple[str, Any]:
        """This node's chassis among several node chassis (``node_identity``), or
        SourceUnavailable naming them and the remedy."""
        identity = self.identity or NodeIdentity.of_this_host()
        systems_url = self._systems_url or urllib.parse.urljoin(self.url, "/redfish/v1/Systems")
        facts: List[SystemFacts] = []
        try:
            for url, doc in self._get_members(self._get(systems_url), systems_url,
                                              lambda member, err: None):
                facts.append(system_facts(url, doc, lambda ref: self._ref_path(ref, url)))
        except (HttpFailure, BadReading) as err:
            log.info("redfish: no ComputerSystem to tell the nodes apart (%s)", err)
        ids = [(_path(u), str(d.get("Id") or _short(u))) for u, d in candidates]
        picked, why = pick_chassis(identity, ids, facts)
        if picked is None:
            raise SourceUnavailable(
                f"redfish: this BMC serves {len(candidates)} node chassis "
                f"({', '.join(_chassis_id(u, d) for u, d in candidates)}) and none could be "
                f"matched to this node ({why}); set {ENV_CHASSIS} to the id of this node's "
                f"chassis")
        chosen = next((u, d) for u, d in candidates if _path(u) == picked)
        log.info("redfish: this node is chassis %s: %s", _chassis_id(*chosen), why)
        return chosen

    def _ref_path(self, ref: Any, base: str) -> Optional[str]:
        try:
            url = self._resolve(ref, base, "Links.Chassis")
        except BadReading:
            return None
        return _path(url) if url else None

    def _attempt(self, tried: List[str], step: Callable[[], Tuple[PowerResource, float]]
                 ) -> Optional[Tuple[PowerResource, float]]:
        """Run one way of reading; None (and the reason in ``tried``) if it does not work."""
        try:
            return step()
        except (HttpFailure, BadReading) as err:
            if isinstance(err, HttpFailure) and err.status in (401, 403):
                raise
            tried.append(str(err))
            return None

    def _from_one_chassis(self, url: str, doc: Any, tried: List[str]
                          ) -> Optional[Tuple[PowerResource, float]]:
        """The best reading of one chassis, in this order of preference:

        1. an energy counter in joules (EnvironmentMetrics.EnergyJoules, or the node's
           Sensor with ReadingType EnergyJoules): exact, nothing lost between samples;
        2. the node's power Sensor (ReadingType Power), one sensor, never a sum of sensors
           that may contain each other;
        3. EnvironmentMetrics.PowerWatts (one request; usually that same sensor);
        4. PowerSubsystem: the sum of the present supplies' InputPowerWatts;
        5. the deprecated Power.PowerControl;
        6. an EnergykWh counter, only when there is no power reading at all: Redfish gives kWh
           to 0.001 at best, 3600 J a step, +-1.2% of a 10-minute run at 500 W, worse for a
           shorter one, while the power integral holds to about 1%.
        """
        links = {kind: self._link(doc, kind, url) for kind in CHASSIS_LINKS}
        if not any(links.values()):
            tried.append(f"{redact_url(url)}: no power resource")
            return None
        env_url = links["EnvironmentMetrics"]
        env: Any = None
        if env_url is not None:
            try:
                env = self._get(env_url)
            except HttpFailure as err:
                if err.status in (401, 403):
                    raise
                tried.append(str(err))
        sensors: Dict[str, Tuple[str, Any]] = {}
        if links["Sensors"] is not None:
            sensors = self._node_sensors(links["Sensors"], env, env_url or url, tried)

        def env_has(prop: str) -> bool:
            return isinstance(env, dict) and isinstance(env.get(prop), dict)

        kwh = ([f"{_short(env_url)}.EnergykWh"] if env_url and env_has("EnergykWh") else []) + \
              ([_short(sensors["EnergykWh"][0])] if "EnergykWh" in sensors else [])
        power_why = ("" if not kwh else f"preferred to the EnergykWh counter {kwh[0]}, too "
                     "coarse (3600 J per 0.001 kWh step)")
        steps: List[Callable[[], Tuple[PowerResource, float]]] = []
        power_steps: List[Callable[[], Tuple[PowerResource, float]]] = []
        if env_url and env_has("EnergyJoules"):
            steps.append(lambda: self._env_reading(env_url, env, "EnergyJoules",
                                                   "energy counter in joules"))
        if "EnergyJoules" in sensors:
            steps.append(lambda: self._sensor(*sensors["EnergyJoules"],
                                              "the node's energy counter in joules"))
        if "Power" in sensors:
            power_steps.append(lambda: self._sensor(*sensors["Power"], power_why or
                                                    "the node's power sensor, no joule counter"))
        if env_url and env is not None:
            power_steps.append(lambda: self._env_reading(env_url, env, "PowerWatts", power_why))
        if links["PowerSubsystem"] is not None:
            ps_url = links["PowerSubsystem"]

            def psu() -> Tuple[PowerResource, float]:
                resource = self._psu_sum(ps_url, self._get(ps_url), power_why)
                return resource, self._read_resource(resource)
            power_steps.append(psu)
        if links["Power"] is not None:
            power_url = links["Power"]
            power_steps.append(lambda: self._power_control(power_url, self._get(power_url),
                                                           power_why))
        steps += power_steps
        coarse = "only an EnergykWh counter: coarse (3600 J per 0.001 kWh step), no power reading"
        if env_url and env_has("EnergykWh"):
            steps.append(lambda: self._env_reading(env_url, env, "EnergykWh", coarse))
        if "EnergykWh" in sensors:
            steps.append(lambda: self._sensor(*sensors["EnergykWh"], coarse))
        for step in steps:
            found = self._attempt(tried, step)
            if found is not None:
                self._cross_check(found, [s for s in power_steps if s is not step])
                return found
        return None

    def _cross_check(self, found: Tuple[PowerResource, float],
                     others: List[Callable[[], Tuple[PowerResource, float]]]) -> None:
        """Compare, at open, the chosen power reading with the other power figures the tree
        offers for the same node (its sensor, EnvironmentMetrics.PowerWatts, the supplies' sum,
        PowerControl): more than ``CROSS_CHECK_SPREAD`` apart, one warning with every value and
        which was taken, and why. A counter is read as it is (no second figure in watts to
        compare at open); a figure that cannot be read is left out."""
        chosen, watts = found
        if chosen.counter_j is not None or not others:
            return
        values = [(chosen, watts)]
        for step in others:
            got = self._attempt([], step)
            if got is not None and got[0].counter_j is None:
                values.append(got)
        readings = [w for _, w in values if w > 0]
        if len(values) < 2 or not readings or max(readings) <= min(readings) * (1 + CROSS_CHECK_SPREAD):
            return
        shown = ", ".join(f"{r.describe()} {w:.1f} W" for r, w in values)
        log.warning("redfish: this node's power readings differ by more than %d%% at open: %s. "
                    "Taken: %s (the order of preference: the node's own sensor, then "
                    "EnvironmentMetrics.PowerWatts, the supplies' sum, PowerControl); check it "
                    "against the node's supplies or PDU, and set %s to a resource to take "
                    "another", round(100 * CROSS_CHECK_SPREAD), shown, chosen.describe(), ENV_URL)

    def _node_sensors(self, sensors_url: str, env: Any, base: str, tried: List[str]
                      ) -> Dict[str, Tuple[str, Any]]:
        """The node's own sensor for each of Power, EnergyJoules, EnergykWh, when it is known.

        A node publishes dozens of power sensors (per CPU, memory, GPU, voltage regulator,
        supply) that contain each other: never summed. The node's one is the sensor that
        EnvironmentMetrics names as the source of its PowerWatts/Energy* (DataSourceUri),
        else the one with PhysicalContext "Chassis", else the one named "Node" or "Total"
        (HPE Cray EX: "Node Power"/"Node Energy"). Two such sensors: none is taken.
        """
        referenced = set()
        if isinstance(env, dict):
            for prop in ("PowerWatts", "EnergyJoules", "EnergykWh"):
                item = env.get(prop)
                uri = item.get("DataSourceUri") if isinstance(item, dict) else None
                if isinstance(uri, str):
                    referenced.add(_path(urllib.parse.urljoin(base, uri)))
        groups: Dict[str, List[Tuple[str, Any]]] = {}
        for member, doc in self._sensor_docs(sensors_url, tried):
            if not isinstance(doc, dict):
                continue
            reading_type = doc.get("ReadingType")
            status = doc.get("Status")
            state = status.get("State") if isinstance(status, dict) else None
            if reading_type in ("Power", *COUNTER_UNITS) and state not in ("Absent", "Disabled"):
                groups.setdefault(reading_type, []).append((member, doc))
        chosen: Dict[str, Tuple[str, Any]] = {}
        for reading_type, group in groups.items():
            for rule in (lambda u, d: _path(u) in referenced,
                         lambda u, d: d.get("PhysicalContext") == "Chassis",
                         lambda u, d: any(isinstance(d.get(k), str) and
                                          _NODE_SENSOR_NAME.match(d[k].strip())
                                          for k in ("Name", "Id"))):
                hits = [(u, d) for u, d in group if rule(u, d)]
                if len(hits) == 1:
                    chosen[reading_type] = hits[0]
                    break
                if len(hits) > 1:
                    tried.append(f"{len(hits)} {reading_type} sensors could be the node's "
                                 f"({', '.join(_short(u) for u, _ in hits)}); none taken, "
                                 "they may contain each other")
                    break
            else:
                tried.append(f"{len(group)} {reading_type} sensors in {_short(sensors_url)}, "
                             "none is the node's (DataSourceUri, PhysicalContext Chassis, "
                             "or named Node/Total)")
        return chosen

    def _sensor_docs(self, sensors_url: str, tried: List[str]) -> List[Tuple[str, Any]]:
        """Every sensor of a collection: in one request where the BMC supports ``$expand``
        (an HPE Cray EX node has about a hundred sensors; one request each, at the 50-100 ms
        a BMC takes to answer, would not fit in the discovery deadline), else one a member.
        A BMC without ``$expand`` ignores it (links only) or refuses it (HTTP 4xx/5xx)."""
        collection: Any = None
        try:
            collection = self._get(sensors_url + "?$expand=.($levels=1)")
        except HttpFailure as err:
            if err.status in (401, 403):
                raise
        members = collection.get("Members") if isinstance(collection, dict) else None
        if (isinstance(members, list) and members
                and all(isinstance(m, dict) and len(m) > 1 for m in members)):
            docs = [(self._resolve(m, sensors_url, "Members"), m) for m in members]
            return [(url, doc) for url, doc in docs if url is not None]
        if not isinstance(members, list):
            collection = self._get(sensors_url)
        return self._get_members(collection, sensors_url, lambda member, err: tried.append(str(err)))

    def _sensor(self, url: str, doc: Any, why: str) -> Tuple[PowerResource, float]:
        reading_type = doc.get("ReadingType") if isinstance(doc, dict) else None
        if reading_type == "Power":
            resource = PowerResource("Sensor", url, (url,), _PATHS["Sensor"],
                                     tag=_TAGS["Sensor"], why=why)
        elif reading_type in COUNTER_UNITS:
            resource = PowerResource("Sensor", url, (url,), ("Reading",),
                                     counter_j=COUNTER_UNITS[reading_type],
                                     tag="energy-counter", why=why)
        else:
            raise BadReading(f"{redact_url(url)} is a {reading_type or 'untyped'} sensor, not "
                             "power or energy")
        return resource, reading_at(doc, resource.path, redact_url(url))

    def _env_reading(self, url: str, doc: Any, prop: str, why: str
                     ) -> Tuple[PowerResource, float]:
        counter = COUNTER_UNITS.get(prop)
        resource = PowerResource("EnvironmentMetrics", url, (url,), (prop, "Reading"),
                                 counter_j=counter,
                                 tag="energy-counter" if counter else _TAGS["EnvironmentMetrics"],
                                 why=why)
        return resource, reading_at(doc, resource.path, redact_url(url))

    def _power_control(self, url: str, doc: Any, why: str) -> Tuple[PowerResource, float]:
        """The first PowerControl entry with a PowerConsumedWatts reading. Several entries may
        overlap (a whole-chassis one and a per-CPU one): one is used, never their sum."""
        where = redact_url(url)
        entries = doc.get("PowerControl") if isinstance(doc, dict) else None
        count = len(entries) if isinstance(entries, list) else 0
        readable: List[Tuple[int, float]] = []
        errors: List[BadReading] = []
        for index in range(max(count, 1)):  # [0] at least, for the error when there is none
            try:
                readable.append((index, reading_at(doc, ("PowerControl", index,
                                                         "PowerConsumedWatts"), where)))
            except BadReading as err:
                errors.append(err)
        if not readable:
            raise errors[0]
        index, watts = readable[0]
        if count > 1:
            names = ", ".join(f"[{i}] {_entry_name(entries[i])}" for i in range(count))
            note = f"PowerControl[{index}] of {count} ({names}), never their sum"
            if len(readable) > 1:
                log.warning("redfish: %s has %d PowerControl entries with a reading (%s); "
                            "using [%d] only: they may overlap", where, len(readable), names,
                            index)
            why = f"{why}; {note}" if why else note
        path = ("PowerControl", index, "PowerConsumedWatts")
        return PowerResource("Power", url, (url,), path, tag=_TAGS["Power"], why=why), watts

    def _psu_sum(self, url: str, doc: Any, why: str) -> PowerResource:
        supplies_url = self._link(doc, "PowerSupplies", url)
        if supplies_url is None:
            raise BadReading(f"PowerSupplies link missing in {redact_url(url)}")
        metrics: List[str] = []
        for member in self._members(self._get(supplies_url), supplies_url):
            supply = self._get(member)
            status = supply.get("Status") if isinstance(supply, dict) else None
            state = status.get("State") if isinstance(status, dict) else None
            if state == "Absent":
                continue
            link = self._link(supply, "Metrics", member)
            if link is None:
                raise BadReading(f"power supply {redact_url(member)} (State {state}) has no "
                                 "Metrics link: its input power cannot be read, the node total "
                                 "would be short")
            metrics.append(link)
        if not metrics:
            raise BadReading(f"no power supply present under {redact_url(supplies_url)}")
        return PowerResource("PowerSubsystem", url, tuple(metrics), _PATHS["PowerSubsystem"],
                             tag=_TAGS["PowerSubsystem"], why=why)


def _path(url: str) -> str:
    """The path of a URL without its trailing slash (iLO writes links with one)."""
    return urllib.parse.urlsplit(url).path.rstrip("/")


def _chassis_id(url: str, doc: Any) -> str:
    ident = doc.get("Id") if isinstance(doc, dict) else None
    return f"{ident} ({_short(url)})" if isinstance(ident, str) else _short(url)


def _entry_name(entry: Any) -> str:
    if isinstance(entry, dict):
        for key in ("Name", "MemberId"):
            if isinstance(entry.get(key), str):
                return entry[key]
    return "unnamed"
