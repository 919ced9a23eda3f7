"""Whole-node energy from the BMC over Redfish: an energy counter read at each report, or
power integrated on a sampling thread.

(One job, in one file: the Redfish source, reading the node's resource once it is found.
Finding it, across the tree shapes BMCs publish, is ``redfish_discovery.py``'s; its docstring
says which URLs ``ENERGY_REDFISH_URL`` may name and the order in which a chassis' readings are
preferred.)

What is measured: the power supplies' input, i.e. everything the node draws (GPUs, CPUs,
DRAM, fans, PSU losses). It is a *node* figure: read by one process per node, and it already
contains the GPUs (never add NVML on top of it).

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
import stat
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from ..redact import energy_logger, register_secrets
from ..deadline import Deadline
from ..http import (HttpFailure, JsonHttpClient, check_http_url, make_ssl_context,
                    redact_url)
from ..schema import EnvVar, boolean_text, env_flag, positive_option, refuse_secret_options
from .base import MAX_NODE_POWER_W, SourceUnavailable
from .counters import counter_step
from .node_identity import NodeIdentity
from .redfish_discovery import (ENV_CHASSIS, ENV_URL, BadReading, PowerResource,
                                RedfishDiscovery, short_path)
from .sampling import SampledPowerSource, bmc_options, plausible_watts

log = energy_logger(__name__)

ENV_CREDENTIALS = "ENERGY_REDFISH_CREDENTIALS_FILE"
ENV_CA_BUNDLE = "ENERGY_REDFISH_CA_BUNDLE"
ENV_INSECURE = "ENERGY_REDFISH_INSECURE"
ENV_ALLOW_HTTP_CREDENTIALS = "ENERGY_REDFISH_ALLOW_HTTP_CREDENTIALS"

#: About the BMC's refresh period: sampling faster only reads the same value again.
DEFAULT_PERIOD_S = 5.0
DEFAULT_TIMEOUT_S = 3.0




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
        return f"{self.name}:{short_path(self.resource.url)}:{self.resource.tag}"

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
                                    f"energy counter {short_path(self.resource.url)}: {step.why} "
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
        return resource.read(self._get)

    # -- requests -----------------------------------------------------------------------------
    def _get(self, url: str) -> Any:
        assert self._client is not None
        return self._client.get_json(url, self._deadline)

    def _read_within_deadline(self, what: str) -> float:
        """One reading of the chosen resource, all its documents (one per power supply)
        within one ``timeout_s`` deadline, however slowly the BMC answers."""
        assert self.resource is not None
        with Deadline(self.timeout_s, what) as self._deadline:
            try:
                return self._read_resource(self.resource)
            finally:
                self._deadline = None

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
        discovery = RedfishDiscovery(self.url, self._get, chassis=self.chassis,
                                     identity=self.identity)
        try:
            return discovery.find()
        except (HttpFailure, BadReading) as err:
            raise self._unavailable(err) from None
