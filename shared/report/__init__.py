"""Reports: time and energy to a target (mIoU by default, any validation metric in either
direction) per run, the scaling study, and their charts.

    python -m shared.report runs/unet runs/segformer --out report/
    python -m shared.report --master https://det:8080 --user alice 12 15 --out report/

From local run directories (``metrics.jsonl``) and/or Determined experiments (every trial,
through the Determined SDK), :func:`build_report` writes ``comparison.md``, ``comparison.csv``,
``scaling.csv`` (when a model was run at several slot counts), PNG charts and one
self-contained ``index.html``. See docs/reports.md.
"""
from __future__ import annotations

import pathlib
from dataclasses import dataclass, field
from typing import Any, List, Optional, Sequence

from .load import MasterReader, ReportError, Run, Target, label_runs, load_inputs, load_local
from . import objects, plots
from .plots import Chart, not_drawn, not_drawn_line
from .series import Point, power_intervals, timeline
from .tables import Row, ScalingPoint, compare, report_target, scaling

__all__ = ["Chart", "MasterReader", "Point", "Report", "ReportError", "Row", "Run", "ScalingPoint",
           "build_report", "compare", "label_runs", "load_inputs", "load_local", "power_intervals",
           "report_target", "scaling", "Target", "timeline"]


@dataclass
class Report:
    """What :func:`build_report` computed and wrote."""

    out_dir: pathlib.Path
    target: Optional[Target]
    rows: List[Row]
    scaling: List[ScalingPoint]
    charts: List[Chart]
    files: List[pathlib.Path]
    #: the implementation ablation's variants (``implementation.Variant``), when any run has
    #: implementation switches
    implementation: List[Any] = field(default_factory=list)
    #: the further tables (``tables.Section``): per-class IoU, object metrics, when any run has them
    sections: List[Any] = field(default_factory=list)

    @property
    def target_miou(self) -> Optional[float]:
        """The target's value when it is an mIoU target."""
        return self.target.value if self.target is not None and self.target.metric == "miou" else None



def make_charts(runs: Sequence[Run], tls: Sequence[Dict[str, List[Point]]], rows: Sequence[Row],
                points: Sequence[ScalingPoint], target: Optional[Target],
                out_dir: pathlib.Path) -> List[Chart]:
    """Every chart of the report, written under ``out_dir``, those with data first (a chart
    no run has data for is a :class:`Chart` with ``missing`` set, and no file); the scaling
    chart only when a model was run at two or more slot counts. The target metric's charts
    are named after it (``miou_vs_energy.png``, ``validation_loss_vs_batches.png``); without
    a target, after the rows' own target metric."""
    metric = target.metric if target is not None else (rows[0].target_metric if rows else "miou")
    mine = {f"{metric}_vs_{axis}.png" for axis in ("energy", "batches", "time")}
    for stale in out_dir.glob("*_vs_*.png"):  # an earlier report's, of another metric
        if stale.name not in mine and not stale.name.startswith("objects_vs_"):
            stale.unlink()
    charts = [plots.metric_vs_energy(runs, tls, rows, target, out_dir / f"{metric}_vs_energy.png", metric),
              plots.metric_vs_batches(runs, tls, rows, target, out_dir / f"{metric}_vs_batches.png", metric),
              *objects.object_charts(runs, tls, out_dir),
              plots.metric_vs_time(runs, tls, rows, target, out_dir / f"{metric}_vs_time.png", metric),
              plots.power_over_time(runs, tls, out_dir / "power.png"),
              plots.losses(runs, tls, out_dir / "loss.png")]
    if points:
        charts.append(plots.scaling_chart(points, out_dir / "scaling.png"))
    return [c for c in charts if c.drawn] + [c for c in charts if not c.drawn]

def build_report(runs: Sequence[Run], out_dir: str | pathlib.Path,
                 target_miou: Optional[float] = None,
                 title: str = "Time and energy to target",
                 target_value: Optional[float] = None, target_metric: Optional[str] = None) -> Report:
    """Compare ``runs`` at ``target_miou`` (mIoU >= it), or at ``target_value`` of
    ``target_metric`` (default: the metric of the runs' own targets; its direction is theirs),
    or by default at the runs' own target, and write the report into ``out_dir`` (created;
    files of an earlier report there are replaced).

    Raises:
        ReportError: no runs, a bad target, both ``target_miou`` and ``target_value``, or runs
            trained to different targets with no target given.
    """
    from . import html, implementation, objects, perclass, tables

    if not runs:
        raise ReportError("nothing to report on: no runs")
    if target_miou is not None and (target_value is not None or target_metric not in (None, "miou")):
        raise ReportError("--target-miou and --target-value/--target-metric both given: use one")
    if target_miou is not None:
        target = report_target(runs, target_miou, metric="miou")
    elif target_value is not None:
        target = report_target(runs, target_value, metric=target_metric, flag="--target-value")
    elif target_metric is not None:
        raise ReportError("--target-metric needs --target-value")
    else:
        target = report_target(runs)
    out = pathlib.Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ReportError(f"{out}: cannot create the output directory: {e}") from None
    rows = compare(runs, target)
    points = scaling(rows)
    tls = [timeline(r) for r in runs]
    files = []
    md = out / "comparison.md"
    csv_path = out / "comparison.csv"
    csv_path.write_text(tables.to_csv(rows))
    files += [md, csv_path]
    scaling_path = out / "scaling.csv"
    if points:
        scaling_path.write_text(tables.scaling_csv(points))
        files.append(scaling_path)
    elif scaling_path.exists():
        scaling_path.unlink()  # from an earlier report in this directory: no longer true
    stale = out / "scaling.png"
    if not points and stale.exists():
        stale.unlink()
    charts = make_charts(runs, tls, rows, points, target, out)
    files += [c.path for c in charts if c.drawn]
    sections = [s for s in (perclass.section(runs), objects.section(runs, tls)) if s is not None]
    md.write_text(tables.to_markdown(rows, points, target, title, sections)
                  + "".join(charts_markdown(charts)))
    files += perclass.write(runs, out)
    variants, impl_files, impl_html = implementation.write(runs, rows, out)
    files += impl_files
    index = out / "index.html"
    index.write_text(html.render(rows, points, charts, target, title, extra=impl_html,
                                 sections=sections))
    files.append(index)
    return Report(out, target, rows, points, charts, files, variants, sections)


def charts_markdown(charts: Sequence[Chart]) -> List[str]:
    """``comparison.md``'s list of charts: each PNG with its title, then one line per chart
    no run had data for, saying why."""
    if not charts:
        return []
    lines = ["## Charts", ""]
    lines += [f"- `{c.path.name}`: {c.title}" for c in charts if c.drawn]
    lines += [f"- {not_drawn_line(cs, why)}" for cs, why in not_drawn(charts)]
    return lines + [""]
