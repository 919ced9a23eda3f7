"""The report's charts, as PNG files (matplotlib, Agg canvas: no display needed).

Figures are built with matplotlib's object API (``Figure`` + ``FigureCanvasAgg``), not pyplot,
so making a report changes no global matplotlib state of the program that calls it.

A chart whose data no run has (energy on a machine without a power counter, say) is not drawn
as an empty frame: it becomes one line saying what is missing and why (``Chart.missing``), and
any PNG an earlier report left under its name is removed.
"""
from __future__ import annotations

import math
import pathlib
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from .load import ReportError, Run, Target, metric_label, validation_phrase
from .series import Point, _num, power_intervals, time_unit
from .tables import Row, ScalingPoint

DPI = 100

#: Why a run has no energy figures, and how to get them: what an energy chart says instead
#: of drawing an empty frame.
NO_ENERGY = ("no run measured energy: the machine exposed no power counter to them. A run "
             "measures energy when it can read one: RAPL on Intel and AMD CPUs (readable by "
             "root only since Linux 5.10; in a container only when /sys/class/powercap is "
             "mounted and made readable: docs/cluster.md, \"Power sources inside the task "
             "container\"), NVML on an NVIDIA GPU (nvidia-ml-py), or the node's BMC (Redfish, "
             "IPMI) or a Prometheus server (README, \"Energy measurement\"). Most laptops and "
             "unprivileged containers have none.")


def no_energy(tls: Sequence[Dict[str, List[Point]]]) -> str:
    """Why no run has energy figures: the hook was off in all of them, or no counter."""
    if not any(tl.get("energy") for tl in tls):
        return ("no run reported energy: the energy hook was off (energy.enabled: false) in "
                "every run")
    return NO_ENERGY


@dataclass
class Chart:
    """A PNG written by this module; ``plotted`` and ``left_out`` name the runs that have /
    lack the data it shows. ``missing``: why no run has that data; the chart is then not
    drawn (``path`` does not exist) and the report shows that sentence in its place."""

    name: str
    path: pathlib.Path
    title: str
    caption: str
    plotted: List[str] = field(default_factory=list)
    left_out: List[str] = field(default_factory=list)
    missing: Optional[str] = None

    @property
    def drawn(self) -> bool:
        return self.missing is None


def _figure(width: float, height: float, ncols: int = 1, nrows: int = 1):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:  # pragma: no cover - matplotlib is in requirements.txt
        raise ReportError("the report's charts need matplotlib: pip install matplotlib") from None
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, [ax for row in axes for ax in row]


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


def _not_drawn(chart: Chart, why: str) -> Chart:
    """``chart`` without a PNG: ``why`` says what is missing (a PNG of an earlier report under
    the same name is removed, since it no longer belongs to these runs)."""
    chart.missing = why
    if chart.path.exists():
        chart.path.unlink()
    return chart


def not_drawn(charts: Sequence[Chart]) -> List[Tuple[List[Chart], str]]:
    """The charts without data, grouped by their reason (in order): one line each, so that
    the energy charts of a machine without a counter share one explanation."""
    groups: Dict[str, List[Chart]] = {}
    for c in charts:
        if not c.drawn:
            groups.setdefault(c.missing or "", []).append(c)
    return [(cs, why) for why, cs in groups.items()]


def join_titles(titles: Sequence[str]) -> str:
    """``A``, ``A and B``, ``A, B and C``."""
    return titles[0] if len(titles) == 1 else ", ".join(titles[:-1]) + " and " + titles[-1]


def not_drawn_line(charts: Sequence[Chart], why: str) -> str:
    """``Validation mIoU vs energy (Wh) and Power over time: not drawn, <why>``."""
    return f"{join_titles([c.title for c in charts])}: not drawn, {why}"


def _title(what: str) -> str:
    return what[0].upper() + what[1:]


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
    colors = _colors([r.label for r in runs])
    label, what = metric_label(metric), validation_phrase(metric)
    chart = Chart(f"{metric}_vs_energy", path, f"{_title(what)} vs energy (Wh)",
                  f"{_title(what)} against the energy spent so far (Wh, cumulative, "
                  f"measured at each validation). Left of another curve at a given {label} means "
                  f"less energy to get there. {_star(target)}")
    series = [(run, row, [p for p in tl.get("validation", [])
                          if _num(p.metrics.get("energy_wh")) is not None
                          and _num(p.metrics.get(metric)) is not None])
              for run, tl, row in zip(runs, tls, rows)]
    if not any(pts for _, _, pts in series):
        return _not_drawn(chart, no_energy(tls))
    fig, (ax,) = _figure(8.5, 5.0)
    for run, row, pts in series:
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
    _target_line(ax, target)
    ax.set_xlabel("energy (Wh, cumulative)")
    ax.set_ylabel(what)
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    _legend(ax, len(chart.plotted))
    ax.set_title(chart.title)
    _left_out_note(ax, f"no energy (see {label} vs wall time)", chart.left_out)
    _save(fig, path)
    return chart


def metric_vs_time(runs: Sequence[Run], tls: Sequence[Dict[str, List[Point]]], rows: Sequence[Row],
                   target: Optional[Target], path: pathlib.Path, metric: str = "miou") -> Chart:
    """The target metric (validation mIoU by default) against wall time since the trial
    started, every run (with or without energy) on one chart. Named ``<metric>_vs_time``."""
    what = validation_phrase(metric)
    chart = Chart(f"{metric}_vs_time", path, f"{_title(what)} vs wall time",
                  f"{_title(what)} against wall time since the trial started (pauses "
                  f"removed). Every run appears here, with or without energy figures; seconds "
                  f"depend on the machine and its load. {_star(target)}")
    return _progress(chart, runs, tls, rows, target, metric, "time")


def metric_vs_batches(runs: Sequence[Run], tls: Sequence[Dict[str, List[Point]]], rows: Sequence[Row],
                      target: Optional[Target], path: pathlib.Path, metric: str = "miou") -> Chart:
    """The target metric against batches trained, every run on one chart: the one axis that
    reproduces from machine to machine (a run's batches to target do not depend on its
    hardware or its neighbours). Named ``<metric>_vs_batches``."""
    what = validation_phrase(metric)
    chart = Chart(f"{metric}_vs_batches", path, f"{_title(what)} vs batches",
                  f"{_title(what)} at each validation against the batches trained: the same on "
                  f"any machine for the same recipe and seed, unlike seconds and watt-hours. "
                  f"{_star(target)}")
    return _progress(chart, runs, tls, rows, target, metric, "batches")


def _progress(chart: Chart, runs: Sequence[Run], tls: Sequence[Dict[str, List[Point]]],
              rows: Sequence[Row], target: Optional[Target], metric: str, axis: str) -> Chart:
    """``metric`` at each validation against wall time (``axis`` "time") or batches."""
    colors = _colors([r.label for r in runs])
    series = [(run, row, [p for p in tl.get("validation", []) if _num(p.metrics.get(metric)) is not None])
              for run, tl, row in zip(runs, tls, rows)]
    if not any(pts for _, _, pts in series):
        return _not_drawn(chart, f"no run reported a validation with {metric}, so there is "
                                 f"nothing to draw against {axis}")
    div, unit = time_unit(max((p.elapsed_s for _, _, pts in series for p in pts), default=0.0))
    x = (lambda p: p.elapsed_s / div) if axis == "time" else (lambda p: p.steps)
    fig, (ax,) = _figure(8.5, 5.0)
    for run, row, pts in series:
        if not pts:
            chart.left_out.append(run.label)
            continue
        chart.plotted.append(run.label)
        ax.plot([x(p) for p in pts], [p.metrics[metric] for p in pts], "o-", ms=3.5,
                lw=1.6, color=colors[run.label], label=run.label, zorder=3)
        hit = _crossing(pts, row)
        if hit is not None:
            ax.plot([x(hit)], [hit.metrics[metric]], "*", ms=14, color=colors[run.label],
                    mec="black", mew=0.6, zorder=4)
    _target_line(ax, target)
    if axis == "batches":
        from matplotlib.ticker import MaxNLocator
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(f"wall time ({unit})" if axis == "time" else "batches")
    ax.set_ylabel(validation_phrase(metric))
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    _legend(ax, len(chart.plotted))
    ax.set_title(chart.title)
    _left_out_note(ax, "no validation reports", chart.left_out)
    _save(fig, chart.path)
    return chart


def power_over_time(runs: Sequence[Run], tls: Sequence[Dict[str, List[Point]]],
                    path: pathlib.Path) -> Chart:
    """Average power in each interval between two energy reports, per run."""
    colors = _colors([r.label for r in runs])
    chart = Chart("power", path, "Power over time",
                  "Average power between consecutive energy reports (energy difference / meter "
                  "time difference), per run. Gaps: intervals not measured.")
    per_run: List[Tuple[Run, List[Tuple[float, float, float]]]] = [
        (run, power_intervals(tl.get("energy", []))) for run, tl in zip(runs, tls)]
    if not any(ivs for _, ivs in per_run):
        return _not_drawn(chart, no_energy(tls))
    fig, (ax,) = _figure(8.5, 4.6)
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
    ax.set_xlabel(f"wall time ({unit})")
    ax.set_ylabel("power (W)")
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    _legend(ax, len(chart.plotted))
    ax.set_title(chart.title)
    _left_out_note(ax, "energy not measured", chart.left_out)
    _save(fig, path)
    return chart


def losses(runs: Sequence[Run], tls: Sequence[Dict[str, List[Point]]], path: pathlib.Path) -> Chart:
    """Training loss and validation loss against batches, per run (a panel only for the loss
    some run reported)."""
    from matplotlib.ticker import MaxNLocator
    colors = _colors([r.label for r in runs])
    chart = Chart("loss", path, "Training and validation loss",
                  "Training loss (averaged over each reporting period) and validation loss, "
                  "against batches trained.")
    panels = []
    for group, key, name in (("training", "loss", "training loss"),
                             ("validation", "validation_loss", "validation loss")):
        series = [(run, [p for p in tl.get(group, []) if _num(p.metrics.get(key)) is not None])
                  for run, tl in zip(runs, tls)]
        if any(pts for _, pts in series):
            panels.append((key, name, series))
    if not panels:
        return _not_drawn(chart, "no run reported a training or validation loss")
    if len(panels) == 1:
        chart.title = _title(panels[0][1])
    fig, axes = _figure(6.0 * len(panels), 4.6, ncols=len(panels))
    for ax, (key, name, series) in zip(axes, panels):
        n = 0
        for run, pts in series:
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
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("batches")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        _legend(ax, n)
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
