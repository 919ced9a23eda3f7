"""The report's charts, as PNG files (matplotlib, Agg canvas: no display needed).

Figures are built with matplotlib's object API (``Figure`` + ``FigureCanvasAgg``), not pyplot,
so making a report changes no global matplotlib state of the program that calls it.
"""
from __future__ import annotations

import math
import pathlib
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from .load import METRIC_LABELS, ReportError, Run, Target
from .series import Point, _num, power_intervals, time_unit
from .tables import Row, ScalingPoint

DPI = 100


@dataclass
class Chart:
    """A PNG written by this module; ``plotted`` and ``left_out`` name the runs that have /
    lack the data it shows."""

    name: str
    path: pathlib.Path
    title: str
    caption: str
    plotted: List[str] = field(default_factory=list)
    left_out: List[str] = field(default_factory=list)


def _figure(width: float, height: float, ncols: int = 1):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:  # pragma: no cover - matplotlib is in requirements.txt
        raise ReportError("the report's charts need matplotlib: pip install matplotlib") from None
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def _colors(labels: Sequence[str]) -> Dict[str, str]:
    from matplotlib import colormaps
    cmap = colormaps["tab10" if len(labels) <= 10 else "tab20"]
    return {lab: cmap(i % cmap.N) for i, lab in enumerate(labels)}


def _legend(ax, n: int) -> None:
    if not ax.get_legend_handles_labels()[0]:
        return
    if n <= 5:
        ax.legend(fontsize=8, loc="best", frameon=False)
    else:  # many runs: below the axes, where it hides no curve
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=min(3, n),
                  frameon=False)


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def _left_out_note(ax, what: str, labels: List[str]) -> None:
    """Name the runs a chart cannot show, as a legend entry: absent must not look like zero."""
    if labels and ax.get_legend_handles_labels()[0]:
        ax.plot([], [], " ", label=f"{what}: " + ", ".join(labels))
        _legend(ax, len(ax.get_legend_handles_labels()[0]))


def _save(fig, path: pathlib.Path) -> None:
    fig.savefig(path, format="png")


def _crossing(points: List[Point], row: Row) -> Optional[Point]:
    if not row.reached:
        return None
    return next((p for p in points if p.steps == row.batches_to_target), None)


def _target_line(ax, target: Optional[Target]) -> None:
    if target is not None:
        ax.axhline(target.value, ls="--", lw=1.2, color="0.25",
                   label=f"target {'<=' if target.smaller_is_better else '>='} {target.value:g}", zorder=1)


def _star(target: Optional[Target]) -> str:
    side = "at or below" if target is not None and target.smaller_is_better else "at or above"
    return f"Star: first validation {side} the target."


def metric_vs_energy(runs: Sequence[Run], tls: Sequence[Dict[str, List[Point]]], rows: Sequence[Row],
                     target: Optional[Target], path: pathlib.Path, metric: str = "miou") -> Chart:
    """The target metric (validation mIoU by default) against the cumulative energy at each
    validation, every run on one chart, the target as a horizontal line: which model reaches
    a given value for the least energy. Named ``<metric>_vs_energy``."""
    fig, (ax,) = _figure(8.5, 5.0)
    colors = _colors([r.label for r in runs])
    label = METRIC_LABELS.get(metric, metric)
    what = label if metric.startswith("validation") else f"validation {label}"
    chart = Chart(f"{metric}_vs_energy", path, f"{what[0].upper()}{what[1:]} vs energy (Wh)",
                  f"{what[0].upper()}{what[1:]} against the energy spent so far (Wh, cumulative, "
                  f"measured at each validation). Left of another curve at a given {label} means "
                  f"less energy to get there. {_star(target)}")
    for run, tl, row in zip(runs, tls, rows):
        pts = [p for p in tl.get("validation", [])
               if _num(p.metrics.get("energy_wh")) is not None and _num(p.metrics.get(metric)) is not None]
        if not pts:
            chart.left_out.append(run.label)
            continue
        chart.plotted.append(run.label)
        ax.plot([p.metrics["energy_wh"] for p in pts], [p.metrics[metric] for p in pts], "o-",
                ms=3.5, lw=1.6, color=colors[run.label], label=run.label, zorder=3)
        hit = _crossing(pts, row)
        if hit is not None:
            ax.plot([hit.metrics["energy_wh"]], [hit.metrics[metric]], "*", ms=14,
                    color=colors[run.label], mec="black", mew=0.6, zorder=4)
    if chart.plotted:
        _target_line(ax, target)
        ax.set_xlabel("energy (Wh, cumulative)")
        ax.set_ylabel(what)
        ax.set_xlim(left=0)
        ax.grid(alpha=0.3)
        _legend(ax, len(chart.plotted))
    else:
        _empty(ax, f"no run measured energy: see {label} vs wall time")
    ax.set_title(chart.title)
    _left_out_note(ax, f"no energy (see {label} vs wall time)", chart.left_out)
    _save(fig, path)
    return chart


def metric_vs_time(runs: Sequence[Run], tls: Sequence[Dict[str, List[Point]]], rows: Sequence[Row],
                   target: Optional[Target], path: pathlib.Path, metric: str = "miou") -> Chart:
    """The target metric (validation mIoU by default) against wall time since the trial
    started, every run (with or without energy) on one chart. Named ``<metric>_vs_time``."""
    fig, (ax,) = _figure(8.5, 5.0)
    colors = _colors([r.label for r in runs])
    label = METRIC_LABELS.get(metric, metric)
    what = label if metric.startswith("validation") else f"validation {label}"
    chart = Chart(f"{metric}_vs_time", path, f"{what[0].upper()}{what[1:]} vs wall time",
                  f"{what[0].upper()}{what[1:]} against wall time since the trial started (pauses "
                  f"removed). Every run appears here, with or without energy figures. {_star(target)}")
    series = [(run, row, [p for p in tl.get("validation", []) if _num(p.metrics.get(metric)) is not None])
              for run, tl, row in zip(runs, tls, rows)]
    tmax = max((p.elapsed_s for _, _, pts in series for p in pts), default=0.0)
    div, unit = time_unit(tmax)
    for run, row, pts in series:
        if not pts:
            chart.left_out.append(run.label)
            continue
        chart.plotted.append(run.label)
        ax.plot([p.elapsed_s / div for p in pts], [p.metrics[metric] for p in pts], "o-", ms=3.5,
                lw=1.6, color=colors[run.label], label=run.label, zorder=3)
        hit = _crossing(pts, row)
        if hit is not None:
            ax.plot([hit.elapsed_s / div], [hit.metrics[metric]], "*", ms=14, color=colors[run.label],
                    mec="black", mew=0.6, zorder=4)
    if chart.plotted:
        _target_line(ax, target)
        ax.set_xlabel(f"wall time ({unit})")
        ax.set_ylabel(what)
        ax.set_xlim(left=0)
        ax.grid(alpha=0.3)
        _legend(ax, len(chart.plotted))
    else:
        _empty(ax, "no validation reports")
    ax.set_title(chart.title)
    _left_out_note(ax, "no validation reports", chart.left_out)
    _save(fig, path)
    return chart


def power_over_time(runs: Sequence[Run], tls: Sequence[Dict[str, List[Point]]],
                    path: pathlib.Path) -> Chart:
    """Average power in each interval between two energy reports, per run."""
    fig, (ax,) = _figure(8.5, 4.6)
    colors = _colors([r.label for r in runs])
    chart = Chart("power", path, "Power over time",
                  "Average power between consecutive energy reports (energy difference / meter "
                  "time difference), per run. Gaps: intervals not measured.")
    per_run: List[Tuple[Run, List[Tuple[float, float, float]]]] = [
        (run, power_intervals(tl.get("energy", []))) for run, tl in zip(runs, tls)]
    tmax = max((iv[1] for _, ivs in per_run for iv in ivs), default=0.0)
    div, unit = time_unit(tmax)
    for run, ivs in per_run:
        if not ivs:
            chart.left_out.append(run.label)
            continue
        chart.plotted.append(run.label)
        xs: List[float] = []
        ys: List[float] = []
        prev_end: Optional[float] = None
        for start, end, watts in ivs:
            if prev_end is not None and not math.isclose(start, prev_end):
                xs.append(math.nan)
                ys.append(math.nan)
            xs += [start / div, end / div]
            ys += [watts, watts]
            prev_end = end
        ax.plot(xs, ys, lw=1.6, color=colors[run.label], label=run.label)
    if chart.plotted:
        ax.set_xlabel(f"wall time ({unit})")
        ax.set_ylabel("power (W)")
        ax.set_xlim(left=0)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        _legend(ax, len(chart.plotted))
    else:
        _empty(ax, "no run measured energy")
    ax.set_title(chart.title)
    _left_out_note(ax, "energy not measured", chart.left_out)
    _save(fig, path)
    return chart


def losses(runs: Sequence[Run], tls: Sequence[Dict[str, List[Point]]], path: pathlib.Path) -> Chart:
    """Training loss and validation loss against batches, per run."""
    from matplotlib.ticker import MaxNLocator
    fig, (ax_t, ax_v) = _figure(12.0, 4.6, ncols=2)
    colors = _colors([r.label for r in runs])
    chart = Chart("loss", path, "Training and validation loss",
                  "Training loss (averaged over each reporting period) and validation loss, "
                  "against batches trained.")
    for ax, group, key, name in ((ax_t, "training", "loss", "training loss"),
                                 (ax_v, "validation", "validation_loss", "validation loss")):
        n = 0
        for run, tl in zip(runs, tls):
            pts = [p for p in tl.get(group, []) if _num(p.metrics.get(key)) is not None]
            if not pts:
                if run.label not in chart.left_out:
                    chart.left_out.append(run.label)
                continue
            n += 1
            if run.label not in chart.plotted:
                chart.plotted.append(run.label)
            ax.plot([p.steps for p in pts], [p.metrics[key] for p in pts], "-", lw=1.5,
                    marker="o" if len(pts) < 30 else None, ms=3, color=colors[run.label],
                    label=run.label)
        ax.set_title(name)
        if n:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel("batches")
            ax.set_ylabel(key)
            ax.grid(alpha=0.3)
            _legend(ax, n)
        else:
            _empty(ax, f"no {name} reported")
    chart.left_out = [lab for lab in chart.left_out if lab not in chart.plotted]
    _save(fig, path)
    return chart


def scaling_chart(points: Sequence[ScalingPoint], path: pathlib.Path) -> Chart:
    """Speed-up, parallel efficiency and energy to target against slots, per model."""
    fig, (ax_s, ax_e, ax_w) = _figure(13.0, 4.4, ncols=3)
    models = list(dict.fromkeys(p.model for p in points))
    colors = _colors(models)
    chart = Chart("scaling", path, "Scaling: speed-up, efficiency and energy to target vs slots",
                  "Speed-up T(n0)/T(n) and efficiency speed-up/(n/n0) of time to target, with n0 "
                  "the smallest slot count run (dashed: ideal), and energy to target, against "
                  "slots, per model.", plotted=models)
    all_slots = sorted({p.slots for p in points})
    for model in models:
        pts = [p for p in points if p.model == model]
        c = colors[model]
        for ax, attr in ((ax_s, "speedup"), (ax_e, "efficiency"), (ax_w, "energy_to_target_wh")):
            xy = [(p.slots, getattr(p, attr)) for p in pts if getattr(p, attr) is not None]
            if xy:
                ax.plot(*zip(*xy), "o-", color=c, lw=1.6, ms=5, label=model)
        n0 = pts[0].baseline_slots
        ax_s.plot([n0, max(p.slots for p in pts)], [1.0, max(p.slots for p in pts) / n0], "--",
                  color=c, lw=0.9, alpha=0.6)
    ax_e.axhline(1.0, ls="--", color="0.4", lw=0.9)
    for ax, ylabel, title in ((ax_s, "speed-up", "speed-up"), (ax_e, "parallel efficiency",
                                                                "parallel efficiency"),
                              (ax_w, "energy to target (Wh)", "energy to target")):
        if all_slots[-1] / all_slots[0] >= 4:
            ax.set_xscale("log", base=2)
        ax.set_xticks(all_slots)
        ax.set_xticklabels([str(s) for s in all_slots])
        ax.minorticks_off()
        ax.set_xlabel("slots")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, frameon=False)
    ax_e.set_ylim(bottom=0)
    ax_w.set_ylim(bottom=0)
    _save(fig, path)
    return chart


def make_charts(runs: Sequence[Run], tls: Sequence[Dict[str, List[Point]]], rows: Sequence[Row],
                points: Sequence[ScalingPoint], target: Optional[Target],
                out_dir: pathlib.Path) -> List[Chart]:
    """Every chart of the report, written under ``out_dir``; the scaling chart only when a
    model was run at two or more slot counts. The target metric's charts are named after it
    (``miou_vs_energy.png``, ``validation_loss_vs_time.png``); without a target, after the
    rows' own target metric."""
    metric = target.metric if target is not None else (rows[0].target_metric if rows else "miou")
    for stale in out_dir.glob("*_vs_*.png"):  # an earlier report's, of another metric
        if stale.name not in (f"{metric}_vs_energy.png", f"{metric}_vs_time.png"):
            stale.unlink()
    charts = [metric_vs_energy(runs, tls, rows, target, out_dir / f"{metric}_vs_energy.png", metric),
              metric_vs_time(runs, tls, rows, target, out_dir / f"{metric}_vs_time.png", metric),
              power_over_time(runs, tls, out_dir / "power.png"),
              losses(runs, tls, out_dir / "loss.png")]
    if points:
        charts.append(scaling_chart(points, out_dir / "scaling.png"))
    from .objects import object_charts  # the rare-objects recipe's chart, when a run has its metrics
    charts += object_charts(runs, tls, out_dir)
    return charts
