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

The file is input, and is checked before anything in it is believed (``check_entry``): types
(a step and counters that are non-negative integers, a finite wall-clock time, a node and a
boot id that are strings), wall-clock times that increase from entry to entry and are not in
the future. An entry that fails is skipped with one warning naming the file and the reason;
the counters' own plausibility (a delta whose power is negative or above the ceiling, a gap
longer than a counter's shortest wrap) is ``counters.counter_step``'s, when they are
differenced. Nothing here can remove the totals the checkpoint carries: at worst the gap is
not counted, and the log says why.
"""
from __future__ import annotations

import json
import math
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
#: a wall-clock time this far ahead of now is in the future (clocks of one node agree better)
FUTURE_TOLERANCE_S = 5.0
_BOOT_ID = pathlib.Path("/proc/sys/kernel/random/boot_id")
#: files already warned about (one warning each per process)
_warned: set = set()


def _warn_once(path: pathlib.Path, message: str, *args: Any) -> None:
    key = (str(path), message)
    if key not in _warned:
        _warned.add(key)
        log.warning(message, *args)


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def check_entry(entry: Any) -> Optional[str]:
    """Why an entry of a counters file cannot be used, or None when it can (types and ranges;
    the order of entries and the clock are ``_entries``' and ``find``'s)."""
    if not isinstance(entry, dict):
        return f"an entry is {type(entry).__name__}, not an object"
    if not _is_count(entry.get("step")):
        return f"step {entry.get('step')!r} is not a batch count"
    wall = entry.get("wall_time")
    if not isinstance(wall, (int, float)) or isinstance(wall, bool) or not math.isfinite(wall) or wall <= 0:
        return f"wall_time {wall!r} is not a time"
    for key in ("node", "boot_id"):
        if not isinstance(entry.get(key), str):
            return f"{key} {entry.get(key)!r} is not a string"
    counters = entry.get("counters")
    if not isinstance(counters, dict):
        return f"counters {counters!r} is not an object"
    for source, values in counters.items():
        if not isinstance(values, dict) or not values:
            return f"counters of {source!r} are {values!r}, not an object of counters"
        for name, value in values.items():
            if not _is_count(value):
                return f"counter {source}/{name} is {value!r}, not a non-negative integer"
    return None


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
    # quietly: what cannot be read back is replaced, and a path that cannot be written is
    # the caller's one warning
    entries = [e for e in _entries(path, quiet=True) if e.get("step") != step]
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
        return json.loads(path.read_text()).get("closed") is True
    except (OSError, ValueError, AttributeError):
        return False


def _entries(path: pathlib.Path, quiet: bool = False) -> List[Dict[str, Any]]:
    """The file's usable entries, in order; what cannot be used is skipped with one warning
    naming the file and the reason (none when ``quiet``)."""
    warn = (lambda *args: None) if quiet else _warn_once
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as err:
        warn(path, "energy: %s is unreadable (%s); the energy between the interrupted "
             "run's last report and this start cannot be counted from it", path, err)
        return []
    if not isinstance(data, dict) or data.get("version") != VERSION \
            or not isinstance(data.get("entries"), list):
        warn(path, "energy: %s is not a counters file of this version; it is not used", path)
        return []
    out: List[Dict[str, Any]] = []
    for entry in data["entries"]:
        why = check_entry(entry)
        if why is None and out and entry["wall_time"] <= out[-1]["wall_time"]:
            why = (f"its wall_time {entry['wall_time']} is not after the previous entry's "
                   f"({out[-1]['wall_time']})")
        if why is not None:
            warn(path, "energy: %s: an entry is skipped: %s", path, why)
            continue
        out.append(entry)
    return out


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
    gap = time.time() - float(entry["wall_time"])
    if gap < -FUTURE_TOLERANCE_S:
        return None, (f"its wall_time is {-gap:.0f} s in the future: the file is not what this "
                      f"node wrote")
    if gap > MAX_GAP_S:
        return None, (f"it was {gap:.0f} s ago, more than {MAX_GAP_S:.0f} s: mostly the node "
                      f"idling until the restart, not this run")
    return entry, ""
