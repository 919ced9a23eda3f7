"""The comparison (time and energy to target per run) and the scaling study, as rows, Markdown
and CSV.

A figure that was not measured stays ``None`` all the way to the output, where it reads
"not measured" (Markdown, HTML) or an empty cell (CSV): never 0.
"""
from __future__ import annotations

import csv
import io
import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from shared.energy.aggregate import PHASES
from shared.hparams import smaller_is_better
from shared.mdtable import markdown_table

from .load import ReportError, Run, Target
from .series import J_PER_WH, Point, _num, timeline

NOT_REACHED = "not reached"
NOT_MEASURED = "not measured"


@dataclass
class Row:
    """One run of the comparison. ``None`` means unknown or not measured."""

    label: str
    source: str
    model: Optional[str]
    params: Optional[int]
    slots: Optional[int]
    global_batch_size: Optional[int]
    target_miou: Optional[float]
    reached: bool
    #: "trial": the trial's own time_to_target_s / energy_to_target_wh; "recomputed": from the
    #: validation series for a target the trial did not use (time on the elapsed axis)
    target_basis: Optional[str]
    batches_to_target: Optional[int]
    miou_at_target: Optional[float]
    time_to_target_s: Optional[float]
    energy_to_target_wh: Optional[float]
    energy_wh: Optional[float]
    avg_power_w: Optional[float]
    images: Optional[int]
    j_per_image: Optional[float]
    final_miou: Optional[float]
    best_miou: Optional[float]
    facility_wh: Optional[float]
    co2e_g: Optional[float]
    energy_sources: Optional[str]
    nodes: Optional[int]
    nodes_measured: Optional[int]
    coverage: Optional[float]
    estimate: bool
    notes: List[str] = field(default_factory=list)
    #: the whole run's energy per phase (``<phase>_wh`` of the last energy report), Wh
    phase_wh: Dict[str, Optional[float]] = field(default_factory=dict)
    #: the target the row is compared at, in general (``target_miou`` and the ``*miou*``
    #: fields above are the mIoU series', None for a run without one): the metric, its value
    #: and direction, the metric at the crossing, at the last validation and at the best one
    target_metric: str = "miou"
    target_value: Optional[float] = None
    target_smaller_is_better: bool = False
    value_at_target: Optional[float] = None
    final_value: Optional[float] = None
    best_value: Optional[float] = None

    @property
    def energy_measured(self) -> bool:
        return self.energy_wh is not None


def report_target(runs: Sequence[Run], override: Optional[float] = None,
                  metric: Optional[str] = None, flag: str = "--target-miou") -> Optional[Target]:
    """The target the report compares at: ``override`` (a value of ``metric``; without
    ``metric``, of the metric the runs' own targets use), else the runs' own target. The
    direction is the one the runs recorded for that metric, else ``shared.hparams``' rule
    (smaller is better for a name containing ``loss``). ``flag`` names the option in messages.

    Raises:
        ReportError: ``override`` is not a number > 0 (mIoU: in (0, 100]), the runs' targets
            use different metrics and ``metric`` is not given, or the runs were trained to
            different targets and no override says which one to compare at.
    """
    targets = {r.label: r.target for r in runs if r.target is not None}
    if override is not None:
        if metric is None:
            metrics = {t.metric for t in targets.values()}
            if len(metrics) > 1:
                raise ReportError(f"the runs' targets use different metrics ({', '.join(sorted(metrics))}); "
                                  f"pass --target-metric with {flag}")
            metric = metrics.pop() if metrics else "miou"
        bad = (isinstance(override, bool) or not isinstance(override, (int, float))
               or not math.isfinite(override) or override <= 0)
        if metric == "miou" and (bad or override > 100):
            raise ReportError(f"{flag} must be a number in (0, 100], got {override!r}")
        if bad:
            raise ReportError(f"{flag} must be a number > 0, got {override!r}")
        directions = {t.smaller_is_better for t in targets.values() if t.metric == metric}
        smaller = directions.pop() if len(directions) == 1 else smaller_is_better(metric)
        return Target(metric, float(override), smaller)
    if len(set(targets.values())) > 1:
        one_metric = len({t.metric for t in targets.values()}) == 1
        listed = ", ".join(f"{k}: {v.value:g}" if one_metric else f"{k}: {v.describe()}"
                           for k, v in targets.items())
        raise ReportError(f"the runs were trained to different targets ({listed}); pass "
                          f"--target-value (--target-miou for mIoU) to compare them at one")
    return next(iter(targets.values()), None)


def _first(points: List[Point], pred) -> Optional[Point]:
    return next((p for p in points if pred(p.metrics)), None)


def compare_run(run: Run, target: Optional[Target]) -> Row:
    """The comparison row of one run at ``target`` (None: the trial's own, unknown, target;
    a plain number: an mIoU target, as before targets had a metric)."""
    if isinstance(target, (int, float)) and not isinstance(target, bool):
        target = Target("miou", float(target))
    tl = timeline(run)
    info = run.info()
    vals = tl.get("validation", [])
    energy = tl.get("energy", [])
    notes: List[str] = []
    own = run.target
    goal = target if target is not None else own
    metric = goal.metric if goal is not None else "miou"
    smaller = goal.smaller_is_better if goal is not None else False

    recorded = _first(vals, lambda m: _num(m.get("time_to_target_s")) is not None)
    if target is None:
        crossing = recorded
    else:
        crossing = _first(vals, target.reached)
    basis = None
    ttt = ettt = None
    if crossing is not None and crossing is recorded:
        basis = "trial"
        ttt = _num(crossing.metrics.get("time_to_target_s"))
        # energy_to_target_wh is by definition the validation's energy_wh at the first hit
        ettt = _num(crossing.metrics.get("energy_to_target_wh"))
        if ettt is None:
            ettt = _num(crossing.metrics.get("energy_wh"))
    elif crossing is not None:
        basis = "recomputed"
        ttt = crossing.elapsed_s
        ettt = _num(crossing.metrics.get("energy_wh"))
        notes.append(f"time/energy to target recomputed from the validation series (the trial's "
                     f"own target was {own.describe() if own is not None else 'unknown'})")
    if target is None and crossing is None and vals and own is None:
        notes.append("target unknown: pass --target-miou (or --target-value)")

    measured = [p for p in energy if _num(p.metrics.get("energy_wh")) is not None]
    last_e = measured[-1] if measured else None
    em: Dict[str, Any] = last_e.metrics if last_e else {}
    if last_e is not None and last_e is not energy[-1]:
        notes.append(f"energy measured only up to batch {last_e.steps}")
    energy_wh = _num(em.get("energy_wh"))
    avg_power = _num(em.get("avg_power_w"))
    duration = _num(em.get("duration_s"))
    if avg_power is None and energy_wh is not None and duration:
        avg_power = energy_wh * J_PER_WH / duration

    gbs = info.get("global_batch_size", run.hparams.get("global_batch_size"))
    gbs = int(gbs) if _num(gbs) else None
    images = last_e.steps * gbs if (last_e is not None and gbs) else None
    j_per_image = energy_wh * J_PER_WH / images if (energy_wh is not None and images) else None
    if energy_wh is not None and gbs is None:
        notes.append("J/img unknown: no global_batch_size in the run report")

    coverage = _num(em.get("coverage"))
    if coverage is not None and coverage < 1.0:
        notes.append(f"coverage {coverage:.2f} < 1: part of the run was not measured")
    bridged = _num(em.get("bridged_s"))
    if bridged:
        notes.append(f"{bridged:.1f} s of energy bridged over failed samples (straight line)")
    nodes, nodes_measured = em.get("nodes"), em.get("nodes_measured")
    if isinstance(nodes, int) and isinstance(nodes_measured, int) and nodes_measured < nodes:
        notes.append(f"energy measured on {nodes_measured} of {nodes} nodes")
    estimate = bool(em.get("estimate", False))
    if estimate:
        notes.append("energy is an estimate, not a measurement")
    sources = em.get("sources") if energy_wh is not None else None
    if crossing is not None and ettt is None and energy_wh is not None:
        notes.append("no energy at the validation that reached the target")

    mious = [(_num(p.metrics.get("miou"))) for p in vals]
    mious = [m for m in mious if m is not None]
    values = [v for v in (_num(p.metrics.get(metric)) for p in vals) if v is not None]
    return Row(
        label=run.label, source=run.source, model=info.get("model"),
        params=info.get("params"), slots=info.get("slots"), global_batch_size=gbs,
        target_miou=goal.value if goal is not None and metric == "miou" else None,
        reached=crossing is not None, target_basis=basis,
        batches_to_target=crossing.steps if crossing else None,
        miou_at_target=_num(crossing.metrics.get("miou")) if crossing else None,
        time_to_target_s=ttt, energy_to_target_wh=ettt,
        energy_wh=energy_wh, avg_power_w=avg_power if energy_wh is not None else None,
        images=images, j_per_image=j_per_image,
        final_miou=mious[-1] if mious else None, best_miou=max(mious) if mious else None,
        facility_wh=_num(em.get("facility_wh")), co2e_g=_num(em.get("co2e_g")),
        energy_sources=sources if sources and sources != "none" else None,
        nodes=nodes if isinstance(nodes, int) else None,
        nodes_measured=nodes_measured if isinstance(nodes_measured, int) else None,
        coverage=coverage, estimate=estimate, notes=notes,
        # the four phases every report has, and the later ones (compile, mining) where the
        # run's reports name them
        phase_wh=({p: _num(em.get(f"{p}_wh")) for p in PHASES if f"{p}_wh" in em or p in PHASES[:4]}
                  if energy_wh is not None else {}),
        target_metric=metric, target_value=goal.value if goal is not None else None,
        target_smaller_is_better=smaller,
        value_at_target=_num(crossing.metrics.get(metric)) if crossing else None,
        final_value=values[-1] if values else None,
        best_value=(min(values) if smaller else max(values)) if values else None)


def compare(runs: Sequence[Run], target: Optional[Target]) -> List[Row]:
    """One :class:`Row` per run, in the order given."""
    return [compare_run(r, target) for r in runs]


# ------------------------------------------------------------------------------ scaling
@dataclass
class ScalingPoint:
    """One slot count of one model's scaling study (means over the runs that reached the
    target; ``runs``/``reached`` count all runs at this slot count)."""

    model: str
    slots: int
    runs: int
    reached: int
    time_to_target_s: Optional[float]
    energy_to_target_wh: Optional[float]
    baseline_slots: int
    speedup: Optional[float]
    efficiency: Optional[float]


def scaling(rows: Sequence[Row]) -> List[ScalingPoint]:
    """Speed-up and parallel efficiency per model, for models run at two or more slot counts.

    speed-up(n) = time_to_target(n0) / time_to_target(n) and efficiency(n) = speed-up(n) /
    (n / n0), with n0 the smallest slot count run (1 in the usual study: speed-up =
    T(1)/T(n), efficiency = speed-up / n). Repeated runs at one slot count are averaged; a slot
    count where no run reached the target has no time, so no speed-up.
    """
    by_model: Dict[str, Dict[int, List[Row]]] = {}
    for r in rows:
        if r.model and isinstance(r.slots, int) and r.slots > 0:
            by_model.setdefault(r.model, {}).setdefault(r.slots, []).append(r)
    out: List[ScalingPoint] = []
    for model, by_slots in by_model.items():
        if len(by_slots) < 2:
            continue
        n0 = min(by_slots)
        means: Dict[int, Optional[float]] = {}
        for n, rs in by_slots.items():
            times = [r.time_to_target_s for r in rs if r.reached and r.time_to_target_s is not None]
            means[n] = statistics.fmean(times) if times else None
        for n in sorted(by_slots):
            rs = by_slots[n]
            energies = [r.energy_to_target_wh for r in rs
                        if r.reached and r.energy_to_target_wh is not None]
            t, t0 = means[n], means[n0]
            speedup = t0 / t if (t and t0) else None
            out.append(ScalingPoint(
                model=model, slots=n, runs=len(rs), reached=sum(r.reached for r in rs),
                time_to_target_s=t,
                energy_to_target_wh=statistics.fmean(energies) if energies else None,
                baseline_slots=n0, speedup=speedup,
                efficiency=speedup / (n / n0) if speedup is not None else None))
    return out


# ------------------------------------------------------------------------------ output
def fmt(v: Any, spec: str, missing: str = "-") -> str:
    """``v`` formatted, or ``missing`` for None. Spec ``"3s"``/``"4s"``: that many significant
    digits, trailing zeros kept (22 Wh reads 22.00, not 22: the precision is visible)."""
    if v is None:
        return missing
    if spec in ("3s", "4s"):
        digits = int(spec[0])
        if v == 0 or not math.isfinite(v):
            return format(v, "g")
        decimals = max(0, digits - 1 - math.floor(math.log10(abs(v))))
        return f"{v:.{decimals}f}"
    return format(v, spec)


def display_cells(r: Row) -> Dict[str, str]:
    """The human-readable cells of a row (Markdown and HTML share them)."""
    if not r.reached:
        ttt = ettt = NOT_REACHED
    else:
        mark = " \u2020" if r.target_basis == "recomputed" else ""
        ttt = fmt(r.time_to_target_s, ".1f") + mark
        ettt = (fmt(r.energy_to_target_wh, "4s") + mark if r.energy_to_target_wh is not None
                else NOT_MEASURED)
    em = r.energy_measured
    src = NOT_MEASURED
    if em:
        src = r.energy_sources or "unnamed"
        if r.nodes:
            src += f" ({r.nodes_measured}/{r.nodes} nodes)"
    cov = fmt(r.coverage, ".2f")
    if r.coverage is not None and r.coverage < 1.0:
        cov += " \u26a0"
    return {
        "run": r.label,
        "model": r.model or "?",
        "params (M)": fmt(r.params / 1e6 if r.params else None, ".2f"),
        "slots": fmt(r.slots, "d"),
        "target reached": "yes" if r.reached else "no",
        "time to target (s)": ttt,
        "energy to target (Wh)": ettt,
        "avg power (W)": fmt(r.avg_power_w, ".1f") if em else NOT_MEASURED,
        "J/img": fmt(r.j_per_image, "3s") if em else NOT_MEASURED,
        "final": fmt(r.final_value, ".4g"),
        "best": fmt(r.best_value, ".4g"),
        "facility (Wh)": fmt(r.facility_wh, "4s"),
        "CO2e (g)": fmt(r.co2e_g, "3s"),
        SPLIT_COLUMN: split_cell(r),
        "energy sources": src,
        "coverage": cov,
        "notes": "; ".join(r.notes),
    }


#: The energy per phase in one cell, in the order of ``PHASES``.
SPLIT_COLUMN = "setup / train / val / ckpt [/ mining] (Wh)"


def split_cell(r: Row) -> str:
    """``setup / train / validation / checkpoint [/ mining]`` Wh (the phases the run's reports
    name: mining since it exists); "-" for a run whose reports have no
    split (older runs), NOT_MEASURED without energy."""
    if not r.energy_measured:
        return NOT_MEASURED
    if all(r.phase_wh.get(p) is None for p in PHASES):
        return "-"
    cell = " / ".join(fmt(r.phase_wh.get(p), "3s") for p in PHASES[:4])
    # torch.compile's warm-up (compile: true) and hard-negative mining (rare_objects) are
    # further phases, shown only where they happened
    return cell + "".join(f" + {p} {fmt(r.phase_wh[p], '3s')}" for p in PHASES[4:]
                          if r.phase_wh.get(p))


DISPLAY_HEADER = ["run", "model", "params (M)", "slots", "target reached", "time to target (s)",
                  "energy to target (Wh)", "avg power (W)", "J/img", "final", "best",
                  "facility (Wh)", "CO2e (g)", SPLIT_COLUMN, "energy sources", "coverage",
                  "notes"]


SCALING_HEADER = ["model", "slots", "runs (reached)", "time to target (s)", "speed-up",
                  "efficiency", "energy to target (Wh)"]


def scaling_cells(p: ScalingPoint) -> List[str]:
    return [p.model, str(p.slots), f"{p.runs} ({p.reached})",
            fmt(p.time_to_target_s, ".1f", NOT_REACHED), fmt(p.speedup, ".2f"),
            fmt(p.efficiency, ".2f"), fmt(p.energy_to_target_wh, "4s", NOT_MEASURED)]


def target_sentence(target: Optional[Target]) -> str:
    if target is None:
        return ("Target mIoU: unknown (no run records it; pass --target-miou, or --target-metric "
                "and --target-value). \"Reached\" uses each trial's own time_to_target_s; "
                "final and best: of each run's own target metric.")
    return (f"Target: {target.describe()}. Final and best: the {target.phrase} at the last "
            f"validation and at the best one.")


@dataclass
class Section:
    """A further table of the report (per-class IoU, object metrics): its title, a sentence
    saying what it shows, the table, and notes under it. Markdown and HTML render the same
    object (``to_markdown``, ``html.render``)."""

    name: str
    title: str
    intro: str
    header: List[str]
    rows: List[List[str]]
    notes: List[str] = field(default_factory=list)

    def markdown(self) -> List[str]:
        out = [f"## {self.title}", "", self.intro, ""]
        if self.rows:
            out += [markdown_table(self.header, self.rows), ""]
        out += [f"- {n}" for n in self.notes]
        return out + ([""] if self.notes else [])


def to_markdown(rows: Sequence[Row], points: Sequence[ScalingPoint], target: Optional[Target],
                title: str = "Time and energy to target", sections: Sequence[Section] = ()) -> str:
    """``comparison.md``: the table, what its columns mean, the further sections (per-class
    IoU, object metrics) and the scaling study if any."""
    cells = [display_cells(r) for r in rows]
    parts = [f"# {title}", "", target_sentence(target), "",
             markdown_table(DISPLAY_HEADER, [[c[k] for k in DISPLAY_HEADER] for c in cells]), ""]
    if any(r.target_basis == "recomputed" for r in rows):
        parts += ["\u2020 recomputed from the validation series for this target (time on the "
                  "wall-time axis, pauses removed); other rows are the trial's own figures.", ""]
    parts += [
        "Columns: time and energy to target are taken at the first validation whose target "
        "metric reaches the target. Avg power and J/img cover the whole measured run (J/img = energy / "
        "(batches x global_batch_size), validation and start-up included). Facility and CO2e "
        "are whole-run figures, present when the run was configured with a PUE / carbon "
        "intensity. \"not measured\" means no energy source measured it; it is never 0. "
        "Coverage below 1 (\u26a0) means part of the run or of its nodes was not measured.", ""]
    for section in sections:
        parts += section.markdown()
    if points:
        parts += ["## Scaling", "",
                  "speed-up = T(n0) / T(n), efficiency = speed-up / (n / n0), n0 = the smallest "
                  "slot count run (n0 = 1: speed-up = T(1) / T(n), efficiency = speed-up / n); "
                  "T = time to target, averaged over the runs at a slot count that reached it.",
                  "", markdown_table(SCALING_HEADER, [scaling_cells(p) for p in points]), ""]
    sources = [f"- {r.label}: {r.source}" for r in rows]
    parts += ["## Runs", "", *sources, ""]
    return "\n".join(parts)


CSV_FIELDS = ["run", "source", "model", "params", "slots", "global_batch_size", "target_miou",
              "reached_target", "target_basis", "batches_to_target", "miou_at_target",
              "time_to_target_s", "energy_to_target_wh", "energy_wh",
              *(f"{p}_wh" for p in PHASES), "avg_power_w", "images",
              "j_per_image", "final_miou", "best_miou", "facility_wh", "co2e_g",
              "energy_sources", "nodes_measured", "nodes", "coverage", "estimate", "notes",
              # the target in general (the *miou* columns above are the mIoU series')
              "target_metric", "target_value", "target_smaller_is_better", "value_at_target",
              "final_value", "best_value"]


def to_csv(rows: Sequence[Row]) -> str:
    """``comparison.csv``: full precision, an empty cell for anything unknown or not measured
    (so numeric columns parse as numbers), ``reached_target`` yes/no, ``energy_sources``
    "not measured" for a run without energy."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({
            "run": r.label, "source": r.source, "model": r.model, "params": r.params,
            "slots": r.slots, "global_batch_size": r.global_batch_size,
            "target_miou": r.target_miou, "reached_target": "yes" if r.reached else "no",
            "target_basis": r.target_basis, "batches_to_target": r.batches_to_target,
            "miou_at_target": r.miou_at_target, "time_to_target_s": r.time_to_target_s,
            "energy_to_target_wh": r.energy_to_target_wh, "energy_wh": r.energy_wh,
            **{f"{p}_wh": r.phase_wh.get(p) for p in PHASES},
            "avg_power_w": r.avg_power_w, "images": r.images, "j_per_image": r.j_per_image,
            "final_miou": r.final_miou, "best_miou": r.best_miou, "facility_wh": r.facility_wh,
            "co2e_g": r.co2e_g,
            "energy_sources": r.energy_sources if r.energy_measured else NOT_MEASURED,
            "nodes_measured": r.nodes_measured, "nodes": r.nodes, "coverage": r.coverage,
            "estimate": "yes" if r.estimate else "no", "notes": "; ".join(r.notes),
            "target_metric": r.target_metric, "target_value": r.target_value,
            "target_smaller_is_better": "yes" if r.target_smaller_is_better else "no",
            "value_at_target": r.value_at_target, "final_value": r.final_value,
            "best_value": r.best_value})
    return buf.getvalue()


def scaling_csv(points: Sequence[ScalingPoint]) -> str:
    """``scaling.csv``: one line per model and slot count."""
    buf = io.StringIO()
    names = ["model", "slots", "runs", "reached", "time_to_target_s", "speedup", "efficiency",
             "energy_to_target_wh", "baseline_slots"]
    w = csv.DictWriter(buf, fieldnames=names, lineterminator="\n")
    w.writeheader()
    for p in points:
        w.writerow({n: getattr(p, n) for n in names})
    return buf.getvalue()
