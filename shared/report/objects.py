"""The rare-objects recipe's chart: object precision and recall against energy.

For runs that report object metrics (``trials/rare_objects``: ``object_precision``,
``object_recall`` at each validation), two panels side by side, each validation a point at the
cumulative energy it was measured at: how much energy buys how many of the objects
(recall) and how clean the detections are (precision). A run without object metrics is not
drawn at all (segmentation and classification runs have none); a run with them but without
energy is named under the chart, never drawn at 0 Wh.
"""
from __future__ import annotations

import pathlib
from typing import Dict, List, Sequence

from .load import Run
from .plots import Chart, _colors, _empty, _figure, _left_out_note, _legend, _save
from .series import Point, _num

__all__ = ["OBJECT_METRICS", "object_charts", "objects_vs_energy"]

#: the validation metrics the chart shows: (metric, panel title)
OBJECT_METRICS = (("object_precision", "object precision (%)"), ("object_recall", "object recall (%)"))


def _reports_objects(tl: Dict[str, List[Point]]) -> bool:
    return any(_num(p.metrics.get(m)) is not None for p in tl.get("validation", [])
               for m, _ in OBJECT_METRICS)


def objects_vs_energy(runs: Sequence[Run], tls: Sequence[Dict[str, List[Point]]],
                      path: pathlib.Path) -> Chart:
    """Object precision and recall against cumulative energy, one curve per run."""
    fig, axes = _figure(11.0, 4.5, ncols=2)
    colors = _colors([r.label for r in runs])
    chart = Chart("objects_vs_energy", path, "Object precision and recall vs energy (Wh)",
                  "Object precision (left) and recall (right, objects matched one-to-one at IoU "
                  ">= object_iou) at each validation, against the energy spent so far (Wh, "
                  "cumulative). Higher at less energy is better.")
    for run, tl in zip(runs, tls):
        pts = [p for p in tl.get("validation", []) if _num(p.metrics.get("energy_wh")) is not None]
        if not pts:
            chart.left_out.append(run.label)
            continue
        chart.plotted.append(run.label)
        for ax, (metric, _) in zip(axes, OBJECT_METRICS):
            xy = [(p.metrics["energy_wh"], p.metrics[metric]) for p in pts
                  if _num(p.metrics.get(metric)) is not None]
            ax.plot([x for x, _ in xy], [y for _, y in xy], "o-", ms=3.5, lw=1.6,
                    color=colors[run.label], label=run.label)
    for ax, (_, label) in zip(axes, OBJECT_METRICS):
        if chart.plotted:
            ax.set_xlabel("energy (Wh, cumulative)")
            ax.set_ylabel(label)
            ax.set_xlim(left=0)
            ax.set_ylim(0, 100)
            ax.grid(alpha=0.3)
            _legend(ax, len(chart.plotted))
        else:
            _empty(ax, "no run measured energy")
        ax.set_title(label + " vs energy")
    _left_out_note(axes[1], "no energy", chart.left_out)
    _save(fig, path)
    return chart


def object_charts(runs: Sequence[Run], tls: Sequence[Dict[str, List[Point]]],
                  out_dir: pathlib.Path) -> List[Chart]:
    """The chart for the runs that report object metrics; none when no run does."""
    pairs = [(r, t) for r, t in zip(runs, tls) if _reports_objects(t)]
    if not pairs:
        return []
    return [objects_vs_energy([r for r, _ in pairs], [t for _, t in pairs],
                              out_dir / "objects_vs_energy.png")]
