"""Which node am I? The facts a node knows about itself, and how they pick its own chassis
behind a BMC that serves several nodes (an HPE Cray EX blade's two, an enclosure's sleds).

A BMC that manages several nodes lists one chassis per node (``Node0``, ``Node1``) and one
``ComputerSystem`` per node. Taking the first listed chassis would measure one node as its
neighbour on half the blades. The node's own chassis is found from facts on the node:

1. the ``ComputerSystem`` whose ``UUID`` is this host's SMBIOS system UUID
   (``/sys/class/dmi/id/product_uuid``, readable by root), or whose ``HostName`` is this
   host's name (or ``ENERGY_NODE_NAME``), followed through its ``Links.Chassis``;
2. on HPE Cray EX, the node's component name (xname, ``x1000c0s0b0n1``: ``n1`` is node 1 of
   its blade's BMC ``b0``), from ``/etc/cray/xname`` or the ``XNAME`` variable, which names the
   chassis ``Node1``;

else the source refuses, naming the candidates and ``ENERGY_REDFISH_CHASSIS`` as the remedy.
"""
from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

#: where Linux shows the SMBIOS system UUID (root only on most distributions)
SMBIOS_UUID = Path("/sys/class/dmi/id/product_uuid")
#: where an HPE Cray EX node keeps its component name
CRAY_XNAME = Path("/etc/cray/xname")
_XNAME = re.compile(r"^x\d+c\d+s\d+b\d+n(\d+)$", re.IGNORECASE)


def _read(path: Path) -> Optional[str]:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return text or None


@dataclass(frozen=True)
class NodeIdentity:
    """This node's identity: its SMBIOS system UUID (lower case), its names, its Cray xname."""

    system_uuid: Optional[str] = None
    hostnames: Tuple[str, ...] = ()
    xname: Optional[str] = None

    @classmethod
    def of_this_host(cls, env: Mapping[str, str] = os.environ,
                     smbios: Path = SMBIOS_UUID, cray: Path = CRAY_XNAME) -> "NodeIdentity":
        uuid = _read(smbios)
        names = [env.get("ENERGY_NODE_NAME", ""), socket.gethostname()]
        try:
            names.append(socket.getfqdn())
        except OSError:  # no resolver: the plain host name is enough
            pass
        return cls(system_uuid=uuid.lower() if uuid else None,
                   hostnames=tuple(dict.fromkeys(n for n in names if n)),
                   xname=env.get("XNAME") or _read(cray))

    def describe(self) -> str:
        parts = [f"SMBIOS UUID {self.system_uuid}" if self.system_uuid else "no SMBIOS UUID "
                 f"(unreadable: {SMBIOS_UUID} is usually root's)"]
        parts.append(f"host name {', '.join(repr(h) for h in self.hostnames) or 'none'}")
        parts.append(f"Cray xname {self.xname}" if self.xname else "no Cray xname")
        return "; ".join(parts)

    def matches_name(self, name: Any) -> bool:
        if not isinstance(name, str) or not name:
            return False
        mine = {h.lower() for h in self.hostnames} | {h.lower().split(".")[0] for h in self.hostnames}
        return name.lower() in mine or name.lower().split(".")[0] in mine


@dataclass
class SystemFacts:
    """One ``ComputerSystem`` of the BMC: its id, UUID, host name and the chassis it links."""

    ident: str
    uuid: Optional[str]
    hostname: Optional[str]
    chassis_paths: List[str] = field(default_factory=list)


def system_facts(url: str, doc: Any, chassis_path_of: Any) -> SystemFacts:
    """The facts of a ComputerSystem document (``chassis_path_of(ref)``: a link's path)."""
    doc = doc if isinstance(doc, dict) else {}
    links = doc.get("Links") if isinstance(doc.get("Links"), dict) else {}
    refs = links.get("Chassis") if isinstance(links.get("Chassis"), list) else []
    paths = [p for p in (chassis_path_of(r) for r in refs) if p]
    uuid = doc.get("UUID")
    return SystemFacts(ident=str(doc.get("Id") or url.rstrip("/").rsplit("/", 1)[-1]),
                       uuid=uuid.lower() if isinstance(uuid, str) and uuid else None,
                       hostname=doc.get("HostName") if isinstance(doc.get("HostName"), str) else None,
                       chassis_paths=paths)


def pick_chassis(identity: NodeIdentity, candidates: Sequence[Tuple[str, str]],
                 systems: Iterable[SystemFacts]) -> Tuple[Optional[str], str]:
    """This node's chassis among ``candidates`` ((path, id) of each node chassis), and how it
    was found; (None, what was tried) when nothing matches."""
    paths = {p for p, _ in candidates}
    systems = list(systems)
    for facts in systems:
        why = None
        if identity.system_uuid and facts.uuid == identity.system_uuid:
            why = f"ComputerSystem {facts.ident}'s UUID is this host's SMBIOS UUID"
        elif identity.matches_name(facts.hostname):
            why = f"ComputerSystem {facts.ident}'s HostName {facts.hostname!r} is this host's name"
        if why:
            linked = [p for p in facts.chassis_paths if p in paths]
            if len(linked) == 1:
                return linked[0], why
    if identity.xname:
        m = _XNAME.match(identity.xname.strip())
        if m:
            wanted = f"node{int(m.group(1))}"
            hits = [p for p, ident in candidates if ident.lower() == wanted]
            if len(hits) == 1:
                return hits[0], f"this node's Cray xname {identity.xname} is node {int(m.group(1))} of its BMC"
    tried = f"{identity.describe()}; {len(systems)} ComputerSystem(s) listed"
    return None, tried
