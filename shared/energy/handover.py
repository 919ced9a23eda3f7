"""What a run leaves for the run that resumes it after a crash: the absolute energy counters at
each of its last energy reports, so that the energy spent between its last report and the
restart can be counted (``EnergyMeter.count_gap``).

A kill -9 leaves the last report as the last figure the run wrote; the checkpoint it resumes
from is older still. The report's totals are carried over (``EnergyCallback``'s ``carried``),
but what was spent after it (the training until the kill, the time down, the restart's own
start-up) is in no report. An absolute counter (RAPL's ``energy_uj``, NVML's total energy)
knows it: its value at that report, kept here, differenced with its value at the restart.

Only a run that was killed is continued this way: a run that ends (a clean stop, an error,
the end of training) marks its file closed, and the time until a later resume is idle time,
not the run's. A gap longer than ``MAX_GAP_S`` is not counted either: it is mostly the node
waiting for someone to restart the run.

One file per rank (``rank<N>.json`` in the run's ``energy_counters/`` directory), replaced
atomically at each report: the last ``KEEP`` reports, each with its step, the wall-clock time,
the node and the boot it was taken on (a counter only compares with itself on one node in one
boot: a reboot resets RAPL and NVML counters). Local runs only: on a cluster Determined
resumes from a checkpoint on any node, and the counters of another node say nothing.
"""
from __future__ import annotations

import json
import os
import pathlib
import time
from typing import Any, Dict, List, Mapping, Optional

from .redact import energy_logger

log = energy_logger()

#: reports kept per rank: the resumed run continues from the chief's last *written* report,
#: which may be one behind a rank's last reading if the kill came between the two
KEEP = 4
VERSION = 1
#: longest gap counted, seconds: a restart by hand or by a scheduler within a quarter of an
#: hour; beyond, the node's idle draw would dominate what is charged to the run
MAX_GAP_S = 900.0
_BOOT_ID = pathlib.Path("/proc/sys/kernel/random/boot_id")


def boot_id() -> str:
    """This boot's identity (Linux), or "" where the system does not say."""
    try:
        return _BOOT_ID.read_text().strip()
    except OSError:
        return ""


def path_for(directory: pathlib.Path, rank: int) -> pathlib.Path:
    return pathlib.Path(directory) / f"rank{int(rank)}.json"


def record(directory: pathlib.Path, rank: int, step: int, node: str,
           counters: Mapping[str, Mapping[str, int]]) -> None:
    """Add this rank's counters at the report of ``step`` (replacing an entry of that step),
    keeping the last ``KEEP``. Written to a temporary name and renamed: a kill leaves the
    previous file or this one, never half of one. No fsync: a killed process's writes
    survive in the page cache; only a power cut could lose them, and that resets the
    counters anyway."""
    path = path_for(directory, rank)
    entries = [e for e in _entries(path) if e.get("step") != step]
    entries.append({"step": int(step), "wall_time": time.time(), "node": node,
                    "boot_id": boot_id(),
                    "counters": {s: {k: int(v) for k, v in c.items()} for s, c in counters.items()}})
    entries = sorted(entries, key=lambda e: e["step"])[-KEEP:]
    _write(path, {"version": VERSION, "closed": False, "entries": entries})


def close(directory: pathlib.Path, rank: int) -> None:
    """Mark this rank's readings as those of a run that ended (not killed): a later resume
    counts no gap from them."""
    path = path_for(directory, rank)
    if path.exists():
        _write(path, {"version": VERSION, "closed": True, "entries": _entries(path)})


def _write(path: pathlib.Path, data: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def _closed(path: pathlib.Path) -> bool:
    try:
        return bool(json.loads(path.read_text()).get("closed"))
    except (OSError, ValueError, AttributeError):
        return False


def _entries(path: pathlib.Path) -> List[Dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as err:
        log.warning("energy: %s is unreadable (%s); the energy between the interrupted run's "
                    "last report and this start cannot be counted", path, err)
        return []
    if not isinstance(data, dict) or data.get("version") != VERSION:
        return []
    return [e for e in data.get("entries", []) if isinstance(e, dict) and "step" in e]


def find(directory: pathlib.Path, rank: int, step: int, node: str) -> tuple[Optional[Dict[str, Any]], str]:
    """This rank's entry for the report of ``step``, and why not when it cannot be used
    (the run ended rather than being killed, no entry, another node, another boot, a gap
    too long). The reason of a run that ended starts with "ended": nothing is missing then."""
    path = path_for(directory, rank)
    if _closed(path):
        return None, "ended: the interrupted run ended rather than being killed"
    entry = next((e for e in _entries(path) if e["step"] == step), None)
    if entry is None:
        return None, f"{path} has no reading at batch {step}"
    if entry.get("node") != node:
        return None, f"the interrupted run measured on node {entry.get('node')!r}, this one on {node!r}"
    if entry.get("boot_id") != boot_id() or not entry.get("boot_id"):
        return None, "the node rebooted since (or does not say its boot id): counters restarted"
    gap = time.time() - float(entry.get("wall_time", 0.0))
    if gap > MAX_GAP_S:
        return None, (f"it was {gap:.0f} s ago, more than {MAX_GAP_S:.0f} s: mostly the node "
                      f"idling until the restart, not this run")
    return entry, ""
