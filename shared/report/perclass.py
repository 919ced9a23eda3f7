"""Per-class IoU: which classes a run learned and which it did not.

Segmentation trials record the IoU of every class at each validation (the ``per_class_iou``
record of a local run's ``metrics.jsonl``: ``iou/<class>``, the class's name when the
hyperparameter ``class_names`` is set, else its index; null for a class absent from both the
ground truth and the predictions) and write it to TensorBoard as ``per_class_iou/<class>``. The
report shows, per run, the best and the worst classes of its last validation, and writes
every value to ``per_class_iou.csv``. A master does not hold the record (it is not a metric
group, so that 150 columns do not crowd the WebUI): runs read from a master are named in a
note instead.
"""
from __future__ import annotations

import csv
import io
import pathlib
from typing import Dict, List, Optional, Sequence, Tuple

from .load import Run
from .tables import Section, fmt

__all__ = ["GROUP", "SHOWN", "last_per_class", "section", "to_csv", "write"]

#: the record (metric group of metrics.jsonl) holding the values
GROUP = "per_class_iou"
#: best and worst classes shown per run
SHOWN = 5
FILE = "per_class_iou.csv"


def last_per_class(run: Run) -> Optional[Tuple[int, Dict[str, Optional[float]]]]:
    """The batch and the per-class IoU of the run's last validation (``None`` for a class
    absent from ground truth and predictions), or None when the run recorded none."""
    recs = [r for r in run.records if r["group"] == GROUP]
    if not recs:
        return None
    last = max(recs, key=lambda r: (r["steps_completed"], r["time"]))
    values = {k.split("/", 1)[1] if k.startswith("iou/") else k: v
              for k, v in last["metrics"].items()}
    return int(last["steps_completed"]), {k: (float(v) if isinstance(v, (int, float))
                                              and not isinstance(v, bool) else None)
                                          for k, v in values.items()}


def _name(cls: str) -> str:
    return f"class {cls}" if cls.isdigit() else cls


def _cell(items: Sequence[Tuple[str, float]]) -> str:
    return ", ".join(f"{_name(k)} {fmt(v, '.1f')}" for k, v in items)


def section(runs: Sequence[Run]) -> Optional[Section]:
    """The per-class table, or None when no run recorded per-class IoU and none came from a
    master (classification and rare-objects runs record none)."""
    rows: List[List[str]] = []
    notes: List[str] = []
    for run in runs:
        found = last_per_class(run)
        if found is None:
            if not pathlib.Path(run.source).exists():
                notes.append(f"{run.label}: read from a master, which does not hold per-class "
                             f"IoU (in the trial's TensorBoard: per_class_iou/<class>)")
            continue
        steps, values = found
        scored = sorted(((k, v) for k, v in values.items() if v is not None), key=lambda kv: -kv[1])
        absent = len(values) - len(scored)
        # best and worst never overlap: with fewer than 2 x SHOWN classes, half each
        n = min(SHOWN, len(scored) // 2)
        best = scored[:n] if n else scored
        rows.append([run.label, str(steps), f"{len(scored)} of {len(values)}",
                     _cell(best) if best else "-", _cell(scored[::-1][:n]) if n else "-",
                     str(absent)])
    if not rows and not notes:
        return None
    return Section(
        "per_class_iou", "Per-class IoU",
        f"At each run's last validation: the {SHOWN} best and the {SHOWN} worst classes by IoU "
        f"(%; names from the hyperparameter class_names, else class indices), how many "
        f"classes were scored, and how many were absent from both the ground truth and the "
        f"predictions (left out of the mean, as in mIoU). Every class: {FILE}.",
        ["run", "batches", "classes scored", "best", "worst", "absent"], rows, notes)


def to_csv(runs: Sequence[Run]) -> str:
    """``per_class_iou.csv``: run, batches, class, iou (empty: absent), one line per class."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["run", "batches", "class", "iou"])
    for run in runs:
        found = last_per_class(run)
        if found is None:
            continue
        steps, values = found
        for cls, v in values.items():
            w.writerow([run.label, steps, cls, "" if v is None else v])
    return buf.getvalue()


def write(runs: Sequence[Run], out: pathlib.Path) -> List[pathlib.Path]:
    """Write ``per_class_iou.csv`` when some run recorded per-class IoU (else remove the one
    an earlier report left); returns the files written."""
    path = out / FILE
    if not any(last_per_class(r) for r in runs):
        if path.exists():
            path.unlink()
        return []
    path.write_text(to_csv(runs))
    return [path]
