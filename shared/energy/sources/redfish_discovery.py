"""Redfish discovery: which resource of the BMC's tree is this node's power or energy.

(One job, in one file: finding the node's reading, across the tree shapes BMCs publish:
legacy Power, EnvironmentMetrics, PowerSubsystem, Sensors, energy counters, several chassis.
``RedfishDiscovery`` runs once, at the source's ``open()``, and hands back a ``PowerResource``:
the documents to GET and where the number is in each. Reading it afterwards, sampling,
credentials and transport are ``redfish.py``'s.)

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

Every link followed must stay on the BMC (the Authorization header would follow it off);
every request of the discovery shares one deadline (the source's ``timeout_s``).
"""
from __future__ import annotations

import json
import math
import re
import urllib.parse
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ..redact import energy_logger
from ..http import HttpFailure, redact_url
from .base import SourceUnavailable
from .node_identity import NodeIdentity, SystemFacts, pick_chassis, system_facts

log = energy_logger(__name__)

ENV_URL = "ENERGY_REDFISH_URL"
ENV_CHASSIS = "ENERGY_REDFISH_CHASSIS"

# The resources a URL may name directly, and the chassis links that lead to a power or
# energy reading (the order of preference is in ``RedfishDiscovery._from_one_chassis``).
POWER_KINDS = ("EnvironmentMetrics", "Power", "PowerSubsystem")
CHASSIS_LINKS = ("EnvironmentMetrics", "Sensors", "PowerSubsystem", "Power")


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

    def read(self, get: Callable[[str], Any]) -> float:
        """The reading now: the number at ``path`` in each of ``read_urls``, summed."""
        total = 0.0
        for url in self.read_urls:
            total += reading_at(get(url), self.path, redact_url(url))
        return total

    def describe(self) -> str:
        detail = f"{len(self.read_urls)} power supplies, " if self.kind == "PowerSubsystem" else ""
        text = f"{self.kind} at {redact_url(self.url)} ({detail}{_dotted(self.path)})"
        if self.tag:
            text = f"redfish:{short_path(self.url)}:{self.tag}: {text}"
        return f"{text}; {self.why}" if self.why else text


def short_path(url: str) -> str:
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

class RedfishDiscovery:
    """Finds the node's power or energy resource from the URL ``ENERGY_REDFISH_URL`` names.

    Args:
        url: service root, chassis collection, chassis, sensor or power resource (see the
            module docstring); links off its scheme and host are refused.
        get: fetches one document (the source's client, under its deadline); raises
            HttpFailure.
        chassis: ``ENERGY_REDFISH_CHASSIS``, which chassis is this node when the BMC serves
            several.
        identity: this node's facts, to find its chassis behind a BMC serving several
            (default: read from this host when needed).
    """

    def __init__(self, url: str, get: Callable[[str], Any], *, chassis: Optional[str] = None,
                 identity: Optional[NodeIdentity] = None) -> None:
        self.url = url
        parts = urllib.parse.urlsplit(url)
        self._origin = (parts.scheme, parts.netloc.lower())
        self._get = get
        self.chassis = chassis
        self.identity = identity
        self._systems_url: Optional[str] = None

    def find(self) -> Tuple[PowerResource, float]:
        """Resolve ``url`` to a power or energy resource and read it once. Raises HttpFailure
        or BadReading (the source words them), SourceUnavailable for a choice it refuses."""
        doc = self._get(self.url)
        kind = resource_kind(doc, self.url)
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
        raise SourceUnavailable(
            f"redfish: {redact_url(self.url)} is a {kind or 'unrecognised'} resource; "
            f"{ENV_URL} must name the service root (.../redfish/v1), a chassis, a Sensor, or "
            "a chassis' Power, EnvironmentMetrics or PowerSubsystem resource")

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
        return resource, resource.read(self._get)

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
            log.info("redfish: chassis %s selected by %s", short_path(picked[0][0]), ENV_CHASSIS)
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
        ids = [(_path(u), str(d.get("Id") or short_path(u))) for u, d in candidates]
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

        kwh = ([f"{short_path(env_url)}.EnergykWh"] if env_url and env_has("EnergykWh") else []) + \
              ([short_path(sensors["EnergykWh"][0])] if "EnergykWh" in sensors else [])
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
                return resource, resource.read(self._get)
            power_steps.append(psu)
        if links["Power"] is not None:
            power_url = links["Power"]
            power_steps.append(lambda: self._power_control(power_url, self._get(power_url),
                                                           power_why))
        coarse = "only an EnergykWh counter: coarse (3600 J per 0.001 kWh step), no power reading"
        kwh_steps: List[Callable[[], Tuple[PowerResource, float]]] = []
        if env_url and env_has("EnergykWh"):
            kwh_steps.append(lambda: self._env_reading(env_url, env, "EnergykWh", coarse))
        if "EnergykWh" in sensors:
            kwh_steps.append(lambda: self._sensor(*sensors["EnergykWh"], coarse))
        counter = next((found for found in (self._attempt(tried, step) for step in steps)
                        if found is not None), None)
        # Every power figure of the node, read once now: compared with each other, and the one
        # to sample when there is no joule counter.
        figures = [found for found in (self._attempt(tried, step) for step in power_steps)
                   if found is not None and found[0].counter_j is None]
        chosen = counter or (self._agreed(figures) if figures else None)
        self._cross_check(figures, chosen)
        if chosen is not None:
            return chosen
        for step in kwh_steps:
            found = self._attempt(tried, step)
            if found is not None:
                return found
        return None

    @staticmethod
    def _agreed(figures: List[Tuple[PowerResource, float]]) -> Tuple[PowerResource, float]:
        """The power figure to sample: the first in the order of preference, unless more of
        the others agree (within ``CROSS_CHECK_SPREAD``) with another one: then the first of
        those (a sensor that reads a part while three figures agree on the whole node)."""
        def agree(a: float, b: float) -> bool:
            return a > 0 and b > 0 and max(a, b) <= min(a, b) * (1 + CROSS_CHECK_SPREAD)
        support = [sum(agree(w, other) for _, other in figures) for _, w in figures]
        best = max(range(len(figures)), key=lambda i: (support[i], -i))
        return figures[best] if support[best] > support[0] else figures[0]

    @staticmethod
    def _cross_check(figures: List[Tuple[PowerResource, float]],
                     chosen: Optional[Tuple[PowerResource, float]]) -> None:
        """At open: the node's power figures (its sensor, EnvironmentMetrics.PowerWatts, the
        supplies' sum, PowerControl) more than ``CROSS_CHECK_SPREAD`` apart are one warning
        with every value, which one is taken, and why. A figure that cannot be read is left
        out."""
        readings = [w for _, w in figures if w > 0]
        if len(readings) < 2 or max(readings) <= min(readings) * (1 + CROSS_CHECK_SPREAD):
            return
        shown = ", ".join(f"{r.describe()} {w:.1f} W" for r, w in figures)
        if chosen is None:
            taken = "none of them gave a usable reading"
        elif chosen[0].counter_j is not None:
            taken = (f"the energy counter {chosen[0].describe()} (a counter is exact; the power "
                     "figures are only compared)")
        elif chosen[0] is figures[0][0]:
            taken = (f"{chosen[0].describe()}, the first in the order of preference (the node's "
                     "own sensor, EnvironmentMetrics.PowerWatts, the supplies' sum, PowerControl)")
        else:
            agreeing = sum(1 for _, w in figures if max(w, chosen[1]) <= min(w, chosen[1]) * (1 + CROSS_CHECK_SPREAD))
            taken = (f"{chosen[0].describe()}, on which {agreeing} of the {len(figures)} figures "
                     f"agree, rather than {figures[0][0].describe()}")
        log.warning("redfish: this node's power readings differ by more than %d%% at open: %s. "
                    "Taken: %s. Check them against the node's supplies or PDU; %s names a "
                    "resource to take another", round(100 * CROSS_CHECK_SPREAD), shown, taken,
                    ENV_URL)

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
                                 f"({', '.join(short_path(u) for u, _ in hits)}); none taken, "
                                 "they may contain each other")
                    break
            else:
                tried.append(f"{len(group)} {reading_type} sensors in {short_path(sensors_url)}, "
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
    return f"{ident} ({short_path(url)})" if isinstance(ident, str) else short_path(url)


def _entry_name(entry: Any) -> str:
    if isinstance(entry, dict):
        for key in ("Name", "MemberId"):
            if isinstance(entry.get(key), str):
                return entry[key]
    return "unnamed"
