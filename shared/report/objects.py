"""The rare-objects recipe's own figures: object precision, recall, F1 and false positives
per image, in a table and against batches and energy.

For runs that report object metrics (``trials/rare_objects``: ``object_precision``,
``object_recall``, ``object_f1``, ``false_positives_per_image``, ``average_precision`` at
each validation):

- a table (``section``): each run's figures at its last validation;
- ``objects_vs_batches.png``: the four figures against batches trained (the axis that
  reproduces across machines), one curve per run;
- ``objects_vs_energy.png``: precision and recall against the cumulative energy at each
  validation: how much energy buys how many of the objects (recall) and how clean the
  detections are (precision). No run with energy: one line saying why, no frame.

A run without object metrics is not drawn at all (segmentation and classification runs have
none); a run with them but without energy is named under the energy chart, never drawn at 0 Wh.
"""
from __future__ import annotations

import pathlib
from typing import Dict, List, Optional, Sequence

from .load import Run, metric_label
from .plots import Chart, _colors, _figure, _left_out_note, _not_drawn, _save, no_energy
from .series import Point, _num
from .tables import Section, fmt

__all__ = ["OBJECT_METRICS", "object_charts", "objects_vs_batches", "objects_vs_energy",
           "section"]

#: the validation metrics of the table and the charts: (metric, unit); "%" ones run 0..100
OBJECT_METRICS = (("object_precision", "%"), ("object_recall", "%"), ("object_f1", "%"),
                  ("false_positives_per_image", ""), ("average_precision", "%"))
#: those drawn against energy
ENERGY_PANELS = ("object_precision", "object_recall")
#: those drawn against batches
BATCH_PANELS = ("object_precision", "object_recall", "object_f1", "false_positives_per_image")


def _reports_objects(tl: Dict[str, List[Point]]) -> bool:
    return any(_num(p.metrics.get(m)) is not None for p in tl.get("validation", [])
               for m, _ in OBJECT_METRICS)


def _axis_label(metric: str) -> str:
    unit = dict(OBJECT_METRICS)[metric]
    return metric_label(metric) + (f" ({unit})" if unit else "")


def _curves(charted: Chart, fig, axes, runs: Sequence[Run], series: Sequence[List[Point]],
            metrics: Sequence[str], x) -> None:
    """One curve per run and metric; one legend for the figure, below the panels."""
    colors = _colors([r.label for r in runs])
    for run, pts in zip(runs, series):
        if not pts:
            charted.left_out.append(run.label)
            continue
        charted.plotted.append(run.label)
        for ax, metric in zip(axes, metrics):
            xy = [(x(p), p.metrics[metric]) for p in pts if _num(p.metrics.get(metric)) is not None]
            ax.plot([a for a, _ in xy], [b for _, b in xy], "o-", ms=3.5, lw=1.6,
                    color=colors[run.label], label=run.label)
    for ax, metric in zip(axes, metrics):
        ax.set_ylabel(_axis_label(metric))
        ax.set_xlim(left=0)
        if dict(OBJECT_METRICS)[metric] == "%":
            ax.set_ylim(-2, 102)  # a run at 0 or 100 stays visible
        else:
            ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.set_title(metric_label(metric))
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=1,
                   fontsize=8, frameon=False)


def objects_vs_batches(runs: Sequence[Run], tls: Sequence[Dict[str, List[Point]]],
                       path: pathlib.Path) -> Chart:
    """Object precision, recall, F1 and false positives per image against batches."""
    chart = Chart("objects_vs_batches", path, "Object precision, recall, F1 and false positives vs batches",
                  "At each validation (objects matched one-to-one at IoU >= object_iou over whole "
                  "images), against the batches trained: the axis that reproduces across "
                  "machines. Higher precision, recall and F1 and fewer false positives per image "
                  "are better.")
    from matplotlib.ticker import MaxNLocator
    fig, axes = _figure(10.0, 7.6, ncols=2, nrows=2)
    _curves(chart, fig, axes, runs, [tl.get("validation", []) for tl in tls], BATCH_PANELS,
            lambda p: p.steps)
    for ax in axes:
        ax.set_xlabel("batches")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _save(fig, path)
    return chart


def objects_vs_energy(runs: Sequence[Run], tls: Sequence[Dict[str, List[Point]]],
                      path: pathlib.Path) -> Chart:
    """Object precision and recall against cumulative energy, one curve per run."""
    chart = Chart("objects_vs_energy", path, "Object precision and recall vs energy (Wh)",
                  "Object precision (left) and recall (right, objects matched one-to-one at IoU "
                  ">= object_iou) at each validation, against the energy spent so far (Wh, "
                  "cumulative). Higher at less energy is better.")
    series = [[p for p in tl.get("validation", []) if _num(p.metrics.get("energy_wh")) is not None]
              for tl in tls]
    if not any(series):
        return _not_drawn(chart, no_energy(tls))
    fig, axes = _figure(10.0, 4.6, ncols=len(ENERGY_PANELS))
    _curves(chart, fig, axes, runs, series, ENERGY_PANELS, lambda p: p.metrics["energy_wh"])
    for ax in axes:
        ax.set_xlabel("energy (Wh, cumulative)")
    _left_out_note(axes[-1], "no energy", chart.left_out)
    _save(fig, path)
    return chart


def _pairs(runs: Sequence[Run], tls: Sequence[Dict[str, List[Point]]]):
    return [(r, t) for r, t in zip(runs, tls) if _reports_objects(t)]


def object_charts(runs: Sequence[Run], tls: Sequence[Dict[str, List[Point]]],
                  out_dir: pathlib.Path) -> List[Chart]:
    """The charts for the runs that report object metrics; none when no run does (and the
    files of an earlier report removed)."""
    pairs = _pairs(runs, tls)
    if not pairs:
        for name in ("objects_vs_batches.png", "objects_vs_energy.png"):
            if (out_dir / name).exists():
                (out_dir / name).unlink()
        return []
    rs, ts = [r for r, _ in pairs], [t for _, t in pairs]
    return [objects_vs_batches(rs, ts, out_dir / "objects_vs_batches.png"),
            objects_vs_energy(rs, ts, out_dir / "objects_vs_energy.png")]


HEADER = ["run", "batches", *(_axis_label(m) for m, _ in OBJECT_METRICS), "best object F1 (%)",
          "at batch"]


def _row(run: Run, tl: Dict[str, List[Point]]) -> List[str]:
    vals = [p for p in tl.get("validation", []) if _reports_objects({"validation": [p]})]
    last = vals[-1]
    f1 = [p for p in vals if _num(p.metrics.get("object_f1")) is not None]
    best: Optional[Point] = max(f1, key=lambda p: p.metrics["object_f1"]) if f1 else None
    return [run.label, str(last.steps),
            *(fmt(_num(last.metrics.get(m)), ".2f") for m, _ in OBJECT_METRICS),
            fmt(_num(best.metrics["object_f1"]) if best else None, ".2f"),
            str(best.steps) if best else "-"]


def section(runs: Sequence[Run], tls: Sequence[Dict[str, List[Point]]]) -> Optional[Section]:
    """The object-metrics table, or None when no run reports object metrics."""
    pairs = _pairs(runs, tls)
    if not pairs:
        return None
    return Section(
        "objects", "Object metrics (rare-objects recipe)",
        "At each run's last validation, over whole images: object precision, recall and F1 "
        "(connected components matched one-to-one at IoU >= object_iou; an unmatched "
        "prediction is a false positive), false positives per image, and average precision "
        "(area under the object precision-recall curve); then the best object F1 of any "
        "validation and its batch. \"-\": not reported.",
        HEADER, [_row(r, t) for r, t in pairs])
