"""Whole-node input power from the BMC over Redfish, integrated on a sampling thread.

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
- the service root ``.../redfish/v1`` (or just ``https://bmc``): discovery. Chassis that are
  not contained in another (no ``Links.ContainedBy``; a GPU baseboard or a drive enclosure is)
  come first, in collection order; in each, EnvironmentMetrics, then Power, then
  PowerSubsystem is tried, and the first that gives a reading wins. The chosen URL is logged
  once. On a BMC with several top-level chassis, name the resource directly.

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
JSON, missing key, null reading) is counted in ``health``; after consecutive failures the
next tries back off exponentially (period x 2^(n-1), capped by ``max_backoff_s``), those
skipped slots count as failed samples; holes longer than ``max_gap_s`` are not bridged
(a ``SampledPowerSource``: see ``sampling.py`` for the integration and its bias).

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
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ..redact import energy_logger, register_secrets
from ..deadline import Deadline
from ..http import (HttpFailure, JsonHttpClient, check_http_url, make_ssl_context,
                    redact_url)
from ..schema import EnvVar, env_flag, positive_option, refuse_secret_options
from .base import SourceUnavailable
from .sampling import SampledPowerSource, bmc_options

log = energy_logger(__name__)

ENV_URL = "ENERGY_REDFISH_URL"
ENV_CREDENTIALS = "ENERGY_REDFISH_CREDENTIALS_FILE"
ENV_CA_BUNDLE = "ENERGY_REDFISH_CA_BUNDLE"
ENV_INSECURE = "ENERGY_REDFISH_INSECURE"
ENV_ALLOW_HTTP_CREDENTIALS = "ENERGY_REDFISH_ALLOW_HTTP_CREDENTIALS"

#: About the BMC's refresh period: sampling faster only reads the same value again.
DEFAULT_PERIOD_S = 5.0
DEFAULT_TIMEOUT_S = 3.0

# Order of preference inside one chassis: EnvironmentMetrics is the current schema and gives
# one total; Power is deprecated but what iLO and many BMCs still serve; PowerSubsystem needs
# one request per power supply.
POWER_KINDS = ("EnvironmentMetrics", "Power", "PowerSubsystem")


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


@dataclass
class PowerResource:
    """What one sample reads: the documents to GET and where the watts are in each."""

    kind: str
    url: str
    read_urls: Tuple[str, ...]
    path: Tuple[Any, ...]

    def describe(self) -> str:
        detail = f"{len(self.read_urls)} power supplies, " if self.kind == "PowerSubsystem" else ""
        return f"{self.kind} at {redact_url(self.url)} ({detail}{_dotted(self.path)})"


_PATHS: Dict[str, Tuple[Any, ...]] = {
    "Power": ("PowerControl", 0, "PowerConsumedWatts"),
    "EnvironmentMetrics": ("PowerWatts", "Reading"),
    "PowerSubsystem": ("InputPowerWatts", "Reading"),  # in each PowerSupplyMetrics document
}


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
        max_backoff_s: longest pause between tries once the BMC keeps failing.
        max_gap_s: longest hole between good samples that is still bridged (default 3 periods).
    """

    name = "redfish"
    covers = ("node",)
    scope = "node"
    # Before IPMI: the same BMC figure, without a fork per sample.
    priority = 30
    auto_env = ENV_URL
    summary = ("the node at its power supplies, what the study measured: BMC power sampled "
               f"on its own thread (default every {DEFAULT_PERIOD_S:g} s) and integrated; HPE "
               "iLO `Chassis/1/Power` (`PowerControl[0].PowerConsumedWatts`), "
               "`EnvironmentMetrics` (`PowerWatts.Reading`), `PowerSubsystem`; the chassis is "
               "discovered from the service root")
    env_vars = (
        EnvVar(ENV_URL, "the BMC's Redfish service root or its `Chassis/<id>/Power`, "
                        "`EnvironmentMetrics` or `PowerSubsystem` resource; no credentials "
                        "in it"),
        EnvVar(ENV_CREDENTIALS, "file holding `user:password` (first line) or "
                                "`{\"username\": ..., \"password\": ...}`; mode 600"),
        EnvVar(ENV_CA_BUNDLE, "PEM file of the CA that signed the BMC's certificate"),
        EnvVar(ENV_INSECURE, "1: do not verify the BMC's certificate (warned)"),
        EnvVar(ENV_ALLOW_HTTP_CREDENTIALS, "1: send the credentials over plain http (else "
                                           "plain http works, with a warning, only without "
                                           "credentials)"),
    )
    options = bmc_options("redfish", "Redfish", DEFAULT_PERIOD_S, "Redfish request",
                          DEFAULT_TIMEOUT_S)

    def __init__(self, url: str, *, credentials: Optional[BasicCredentials] = None,
                 ca_bundle: Optional[str] = None, insecure: bool = False,
                 allow_http_credentials: bool = False,
                 sample_period_s: float = DEFAULT_PERIOD_S,
                 timeout_s: float = DEFAULT_TIMEOUT_S, max_backoff_s: float = 60.0,
                 max_gap_s: Optional[float] = None) -> None:
        super().__init__()
        for label, value in (("sample_period_s", sample_period_s), ("timeout_s", timeout_s),
                             ("max_backoff_s", max_backoff_s)):
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
        self.max_backoff_s = float(max_backoff_s)
        self.max_gap_s = max_gap_s
        self.resource: Optional[PowerResource] = None
        self._client: Optional[JsonHttpClient] = None
        self._consecutive_failures = 0
        self._retry_at = 0.0
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
                   sample_period_s=period, timeout_s=timeout)

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
        log.info("redfish: node power from %s: %.1f W now, sampled every %g s",
                 self.resource.describe(), watts, self.sample_period_s)
        self.start_sampling(self.sample_period_s, max_gap_s=self.max_gap_s, first_watts=watts)

    def describe(self) -> str:
        if self.resource is None:
            return f"redfish: {redact_url(self.url)} (not opened)"
        return (f"redfish: node input power, {self.resource.describe()}, sampled every "
                f"{self.sample_period_s:g} s")

    # -- sampling -----------------------------------------------------------------------------
    def read_watts(self) -> float:
        """One sample, for the sampler. Raises on failure (the sampler counts it)."""
        now = time.monotonic()
        if now < self._retry_at:
            raise HttpFailure(f"backing off after {self._consecutive_failures} consecutive "
                              f"failures; next try in {self._retry_at - now:.1f} s")
        assert self.resource is not None
        try:
            # One deadline for all the documents of one sample (one per power supply).
            with Deadline(self.timeout_s, "redfish sample") as self._deadline:
                try:
                    watts = self._read_resource(self.resource)
                finally:
                    self._deadline = None
        except Exception as err:
            self._consecutive_failures += 1
            exponent = min(self._consecutive_failures - 1, 30)
            self._retry_at = now + min(self.max_backoff_s, self.sample_period_s * 2.0 ** exponent)
            if isinstance(err, HttpFailure) and err.status in (401, 403) and not self._auth_logged:
                self._auth_logged = True
                log.error("redfish: %s; %s", err, self._auth_advice())
            raise
        self._consecutive_failures = 0
        self._retry_at = 0.0
        return watts

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
        """Resolve ``self.url`` to a power resource and read it once."""
        try:
            doc = self._get(self.url)
        except HttpFailure as err:
            raise self._unavailable(err) from None
        kind = resource_kind(doc, self.url)
        try:
            if kind in POWER_KINDS:
                return self._checked(kind, self.url, doc)
            if kind == "Chassis":
                return self._from_chassis([(self.url, doc)])
            if kind == "ChassisCollection":
                return self._from_collection(self.url, doc)
            if kind == "ServiceRoot":
                chassis = self._link(doc, "Chassis", self.url)
                if chassis is None:
                    raise BadReading(f"the service root {redact_url(self.url)} has no Chassis link")
                return self._from_collection(chassis, self._get(chassis))
        except (HttpFailure, BadReading) as err:
            raise self._unavailable(err) from None
        raise SourceUnavailable(
            f"redfish: {redact_url(self.url)} is a {kind or 'unrecognised'} resource; "
            f"{ENV_URL} must name the service root (.../redfish/v1), a chassis, or a chassis' "
            "Power, EnvironmentMetrics or PowerSubsystem resource")

    def _from_collection(self, url: str, collection: Any) -> Tuple[PowerResource, float]:
        docs: List[Tuple[str, Any]] = []
        for member in self._members(collection, url):
            try:
                docs.append((member, self._get(member)))
            except HttpFailure as err:
                if err.status in (401, 403):
                    raise
                log.info("redfish: skipping chassis %s (%s)", redact_url(member), err)
        return self._from_chassis(docs)

    def _from_chassis(self, chassis: List[Tuple[str, Any]]) -> Tuple[PowerResource, float]:
        def contained(doc: Any) -> bool:
            links = doc.get("Links") if isinstance(doc, dict) else None
            return isinstance(links, dict) and bool(links.get("ContainedBy"))

        # sorted() is stable: top-level chassis first, each group in collection order.
        ordered = sorted(chassis, key=lambda item: contained(item[1]))
        tried: List[str] = []
        for url, doc in ordered:
            links = [(kind, self._link(doc, kind, url)) for kind in POWER_KINDS]
            links = [(kind, link) for kind, link in links if link is not None]
            if not links:
                tried.append(f"{redact_url(url)}: no power resource")
                continue
            for kind, link in links:
                try:
                    return self._checked(kind, link, self._get(link))
                except (HttpFailure, BadReading) as err:
                    if isinstance(err, HttpFailure) and err.status in (401, 403):
                        raise
                    tried.append(str(err))
        raise BadReading("no chassis gave a node power reading; tried: "
                         + ("; ".join(tried) if tried else "no chassis listed"))

    def _checked(self, kind: str, url: str, doc: Any) -> Tuple[PowerResource, float]:
        """The power resource at ``url`` (document ``doc``) and its current reading."""
        resource = self._power_resource(kind, url, doc)
        if resource.read_urls == (url,):  # the reading is in the document already fetched
            return resource, reading_at(doc, resource.path, redact_url(url))
        return resource, self._read_resource(resource)

    def _power_resource(self, kind: str, url: str, doc: Any) -> PowerResource:
        if kind != "PowerSubsystem":
            return PowerResource(kind, url, (url,), _PATHS[kind])
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
        return PowerResource(kind, url, tuple(metrics), _PATHS[kind])
