"""The local metrics file: every metric report of a local run, one JSON object a line.

``<output dir>/metrics.jsonl`` holds ``{"group", "steps_completed", "time", "metrics"}`` for
the training, validation, energy, run and per_class_iou groups. Reports (issue: reports) and
the demo's table read it; it is appended to and flushed at each report, so a crash loses
nothing that was reported.

The launcher makes Determined hand every report, built-in and custom, to ``MetricsFile.write``
(``shared.determined_compat.tap_reports``), so the file sees exactly what a master would.
"""
from __future__ import annotations

import json
import math
import os
import pathlib
import threading
import time
from typing import Any, Callable, Dict, List, Optional

from shared.outdir import naming

_active: Optional["MetricsFile"] = None


def _clean(v: Any) -> Any:
    """JSON has no NaN/inf and no numpy scalars: map them to plain values (NaN -> null)."""
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if hasattr(v, "item") and callable(v.item) and getattr(v, "ndim", 1) == 0:
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


class MetricsFile:
    def __init__(self, path: pathlib.Path) -> None:
        self.path = pathlib.Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.listeners: List[Callable[[str, int, Dict[str, Any]], None]] = []

    def write(self, group: str, steps_completed: int, metrics: Dict[str, Any]) -> None:
        line = json.dumps({"group": group, "steps_completed": int(steps_completed),
                           "time": round(time.time(), 3), "metrics": _clean(dict(metrics))})
        with self._lock, naming(self.path), self.path.open("a") as f:
            f.write(line + "\n")
        for fn in self.listeners:
            fn(group, steps_completed, metrics)


#: listeners every metrics file opened by ``attach`` starts with: a tool that runs a trial in
#: its own process (``benchmarks.curves`` stamps each validation with the process's CPU
#: time) adds one here before the launcher opens the file.
ATTACH_LISTENERS: List[Callable[[str, int, Dict[str, Any]], None]] = []


def attach(path: pathlib.Path) -> MetricsFile:
    """The run's metrics file, also the target of ``write_extra`` until ``detach``."""
    global _active
    _active = MetricsFile(path)
    _active.listeners.extend(ATTACH_LISTENERS)
    return _active


def detach() -> None:
    global _active
    _active = None


def write_extra(group: str, steps_completed: int, metrics: Dict[str, Any]) -> None:
    """Local-only detail (per-class IoU) that is not sent to a master. No-op on a cluster."""
    if _active is not None:
        _active.write(group, steps_completed, metrics)


SUPERSEDED_SUFFIX = ".superseded"


def supersede_after(path: pathlib.Path, steps: int) -> List[Dict[str, Any]]:
    """Before a resume from a checkpoint of ``steps`` batches: move every record of ``path``
    reported after that point (by the run that went on past the checkpoint and was then
    interrupted) to ``<path>.superseded``, so that each group's ``steps_completed`` appears
    once in ``path`` and the resumed run's records follow on. The file is rewritten through a
    temporary file and a rename, so a crash here loses nothing. Returns the records moved
    (the torn line of a killed run, moved too, is not among them)."""
    path = pathlib.Path(path)
    if not path.exists():
        return []
    keep, moved, records = [], [], []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            later = record["steps_completed"] > steps
        except (ValueError, KeyError, TypeError):
            record, later = None, True  # a torn last line of the killed run: nothing may follow it
        (moved if later else keep).append(line)
        if later and record is not None:
            records.append(record)
    if moved:
        aside = path.parent / (path.name + SUPERSEDED_SUFFIX)
        with naming(aside), aside.open("a") as f:
            f.write("\n".join(moved) + "\n")
        tmp = path.with_name(path.name + ".tmp")
        with naming(tmp):
            tmp.write_text("".join(x + "\n" for x in keep))
        os.replace(tmp, path)
    return records


def read(path: str | pathlib.Path) -> List[Dict[str, Any]]:
    """All records of a metrics.jsonl; a torn last line (a killed run) is ignored."""
    out = []
    p = pathlib.Path(path)
    lines = p.read_text().splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{p}: line {i + 1} is not valid JSON") from None
    return out
