"""The implementation table and chart: is a model's energy the architecture or its
implementation? (README: Implementation ablation; docs/ablation.md.)

Runs of ``experiment_configs/<model>/ablation.yaml`` (and ``ablation_to_target.yaml``) differ
only in their implementation switches (``shared.hparams.IMPLEMENTATION_SWITCHES``). Per run:

- images/s = training images of the train phase / ``train_s``, and J/image = ``train_wh`` x
  3600 / those images, from the run's last energy report; training images = (batches -
  torch.compile's ``COMPILE_WARMUP_BATCHES`` when compiled) x global batch size: the
  compile warm-up is the phase ``compile`` (``compile_s``, ``compile_wh``), shown on its own;
- train W = ``train_wh`` x 3600 / ``train_s``; ``gpu_util_pct`` (whole run, NVML) and
  ``peak_memory_mb`` (``run`` group) where the run reports them;
- energy to target, from the comparison row (``tables.compare_run``), when reached.

Each figure is also given relative to the model's baseline, the variant closest to the
MMCV-era implementation (``BASELINE``: fp32, eager attention, NCHW, not compiled, the
per-parameter optimiser loop, no cuDNN benchmark); a note says when no run matches it
exactly. The conv/attention ratio compares, per pair of an attention model (its runs set
``attention_impl``) and a convolutional one, J/image and energy to target under each
model's best variant (lowest J/image) and under its worst (highest).
"""
from __future__ import annotations

import csv
import io
import pathlib
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from shared.hparams import (ABLATION_BASELINE, COMMON, COMPILE_WARMUP_BATCHES,
                            IMPLEMENTATION_SWITCHES)
from shared.mdtable import markdown_table

from .load import Run
from .series import J_PER_WH, _num
from .tables import Row, fmt

#: the variant every other is compared with: the implementation MMCV-era code ran
BASELINE: Dict[str, Any] = ABLATION_BASELINE
FILES = ("implementation.md", "implementation.csv", "implementation.png")


@dataclass
class Variant:
    """One run of the ablation; ``None``: not reported or not measured."""

    label: str
    model: str
    switches: Dict[str, Any]
    images_per_s: Optional[float]
    j_per_image: Optional[float]
    train_w: Optional[float]
    gpu_util_pct: Optional[float]
    peak_memory_mb: Optional[float]
    compile_s: Optional[float]
    compile_wh: Optional[float]
    energy_to_target_wh: Optional[float]
    batches_to_target: Optional[int]
    #: figure / the baseline's, per figure (images_per_s, j_per_image, energy_to_target_wh)
    relative: Dict[str, Optional[float]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The switches in a few words: ``bf16 NHWC compiled fused bench sdpa``."""
        s = self.switches
        words = [str(s["precision"]), "NHWC" if s["channels_last"] is True else
                 "NCHW" if s["channels_last"] is False else f"layout {s['channels_last']}"]
        words += (["compiled"] if s["compile"] is True else
                  [] if s["compile"] is False else [f"compile {s['compile']}"])
        words += ["fused" if s["fused_optimizer"] else "loop"]
        words += ["bench"] if s["cudnn_benchmark"] else []
        words += [str(s["attention_impl"])] if s.get("attention_impl") else []
        return " ".join(words)


@dataclass
class Ratio:
    """An attention model's figure over a convolutional model's, under each one's best and
    worst variant (by J/image)."""

    attention: str
    conv: str
    j_per_image_best: Optional[float]
    j_per_image_worst: Optional[float]
    energy_to_target_best: Optional[float]
    energy_to_target_worst: Optional[float]


def switches_of(run: Run) -> Optional[Dict[str, Any]]:
    """A run's implementation switches (``implementation`` overriding the flat keys, as
    ``shared.hparams.resolve`` does; unset ones at their defaults; the precision the run
    reported using, when it did), or None for a run that sets none of them (not part of an
    ablation)."""
    hp = dict(run.hparams)
    hp.update(hp.get("implementation") or {})
    if not any(k in hp for k in IMPLEMENTATION_SWITCHES):
        return None
    out = {k: hp.get(k, COMMON[k].default) for k in IMPLEMENTATION_SWITCHES if k in COMMON}
    out["attention_impl"] = hp.get("attention_impl")
    used = run.info().get("precision")
    if isinstance(used, str):
        out["precision"] = used
    compiled = run.info().get("compiled")  # compile: auto, resolved by the run
    if isinstance(compiled, bool):
        out["compile"] = compiled
    return out


def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return a / b if a is not None and b else None


def variants(runs: Sequence[Run], rows: Sequence[Row]) -> List[Variant]:
    """One :class:`Variant` per ablation run (runs without switches are left out), relative
    figures filled in per model."""
    out: List[Variant] = []
    for run, row in zip(runs, rows):
        sw = switches_of(run)
        if sw is None:
            continue
        energy = [r for r in run.records if r["group"] == "energy"
                  and _num(r["metrics"].get("train_s")) is not None]
        last = max(energy, key=lambda r: r["steps_completed"]) if energy else None
        em: Dict[str, Any] = last["metrics"] if last else {}
        gbs = row.global_batch_size
        batches = (last["steps_completed"] - (COMPILE_WARMUP_BATCHES if sw["compile"] is True else 0)
                   if last else None)
        images = batches * gbs if batches and gbs else None
        train_s, train_wh = _num(em.get("train_s")), _num(em.get("train_wh"))
        info = run.info()
        out.append(Variant(
            label=run.label, model=str(row.model or info.get("model") or "?"), switches=sw,
            images_per_s=images / train_s if images and train_s else None,
            j_per_image=train_wh * J_PER_WH / images if train_wh is not None and images else None,
            train_w=train_wh * J_PER_WH / train_s if train_wh is not None and train_s else None,
            gpu_util_pct=_num(em.get("gpu_util_pct")),
            peak_memory_mb=_num(info.get("peak_memory_mb")),
            compile_s=_num(em.get("compile_s")) if sw["compile"] is True else None,
            compile_wh=_num(em.get("compile_wh")) if sw["compile"] is True else None,
            energy_to_target_wh=row.energy_to_target_wh if row.reached else None,
            batches_to_target=row.batches_to_target if row.reached else None))
    for model in dict.fromkeys(v.model for v in out):
        mine = [v for v in out if v.model == model]
        base = baseline(mine)
        for v in mine:
            v.relative = {k: _ratio(getattr(v, k), getattr(base, k)) if base else None
                          for k in ("images_per_s", "j_per_image", "energy_to_target_wh")}
    return out


def _matches(v: Variant) -> int:
    return sum(v.switches.get(k) == want for k, want in BASELINE.items()
               if not (k == "attention_impl" and v.switches.get(k) is None))


def baseline(mine: Sequence[Variant]) -> Optional[Variant]:
    """The model's variant closest to ``BASELINE`` (most switches equal, measured first)."""
    measured = [v for v in mine if v.j_per_image is not None] or list(mine)
    return max(measured, key=_matches) if measured else None


def _is_exact(v: Variant) -> bool:
    wanted = len(BASELINE) - (1 if v.switches.get("attention_impl") is None else 0)
    return _matches(v) == wanted


def extremes(mine: Sequence[Variant]) -> Tuple[Optional[Variant], Optional[Variant]]:
    """The best (lowest J/image) and the worst (highest) measured variant of one model."""
    measured = [v for v in mine if v.j_per_image is not None]
    if not measured:
        return None, None
    return (min(measured, key=lambda v: v.j_per_image),  # type: ignore[arg-type, return-value]
            max(measured, key=lambda v: v.j_per_image))  # type: ignore[arg-type, return-value]


def ratios(vs: Sequence[Variant]) -> List[Ratio]:
    """Every (attention model, conv model) pair's ratios under best and worst variants."""
    models = list(dict.fromkeys(v.model for v in vs))
    attention = [m for m in models if any(v.switches.get("attention_impl") for v in vs
                                          if v.model == m)]
    conv = [m for m in models if m not in attention]
    out = []
    for a in attention:
        a_best, a_worst = extremes([v for v in vs if v.model == a])
        for c in conv:
            c_best, c_worst = extremes([v for v in vs if v.model == c])
            get = lambda v, k: getattr(v, k) if v is not None else None  # noqa: E731
            out.append(Ratio(a, c,
                             _ratio(get(a_best, "j_per_image"), get(c_best, "j_per_image")),
                             _ratio(get(a_worst, "j_per_image"), get(c_worst, "j_per_image")),
                             _ratio(get(a_best, "energy_to_target_wh"),
                                    get(c_best, "energy_to_target_wh")),
                             _ratio(get(a_worst, "energy_to_target_wh"),
                                    get(c_worst, "energy_to_target_wh"))))
    return out


HEADER = ["model", "variant", "run", "images/s", "x base", "J/image", "x base", "train W",
          "GPU util %", "peak MB", "compile s / Wh", "energy to target (Wh)", "x base",
          "batches to target"]
RATIO_HEADER = ["attention / conv", "J/image, best", "J/image, worst", "energy to target, best",
                "energy to target, worst"]


def _cells(v: Variant, base: Optional[Variant]) -> List[str]:
    mark = " (baseline)" if v is base else ""
    rel = v.relative
    comp = (f"{fmt(v.compile_s, '.1f')} / {fmt(v.compile_wh, '3s')}" if v.switches["compile"] is True
            else "")
    return [v.model, v.name + mark, v.label, fmt(v.images_per_s, "4s"),
            fmt(rel.get("images_per_s"), ".2f"), fmt(v.j_per_image, "3s"),
            fmt(rel.get("j_per_image"), ".2f"), fmt(v.train_w, ".0f"),
            fmt(v.gpu_util_pct, ".0f"), fmt(v.peak_memory_mb, ".0f"), comp,
            fmt(v.energy_to_target_wh, "4s"), fmt(rel.get("energy_to_target_wh"), ".2f"),
            fmt(v.batches_to_target, "d")]


def table_rows(vs: Sequence[Variant]) -> List[List[str]]:
    """The implementation table's cells, per model, fastest variant first."""
    out = []
    for model in dict.fromkeys(v.model for v in vs):
        mine = [v for v in vs if v.model == model]
        base = baseline(mine)
        mine.sort(key=lambda v: -(v.images_per_s or 0.0))
        out += [_cells(v, base) for v in mine]
    return out


def _ratio_cells(r: Ratio) -> List[str]:
    return [f"{r.attention} / {r.conv}", fmt(r.j_per_image_best, ".2f"),
            fmt(r.j_per_image_worst, ".2f"), fmt(r.energy_to_target_best, ".2f"),
            fmt(r.energy_to_target_worst, ".2f")]


def notes(vs: Sequence[Variant]) -> List[str]:
    out = []
    for model in dict.fromkeys(v.model for v in vs):
        mine = [v for v in vs if v.model == model]
        base = baseline(mine)
        if base is not None and not _is_exact(base):
            out.append(f"{model}: no run has every baseline switch; the closest, "
                       f"'{base.name}', is the baseline")
        missing = [v.label for v in mine if v.j_per_image is None]
        if missing:
            out.append(f"{model}: no train-phase energy for {', '.join(missing)}")
    return out


def to_markdown(vs: Sequence[Variant]) -> str:
    lines = ["# Implementation ablation", "",
             "Per model, each variant's train-phase images/s and J/image (torch.compile's "
             "warm-up excluded, shown as compile s / Wh), relative to the model's baseline "
             "(fp32, eager attention, NCHW, not compiled, per-parameter optimiser loop, no "
             "cuDNN benchmark); energy to target where the run reached it.", "",
             markdown_table(HEADER, table_rows(vs)), ""]
    rs = ratios(vs)
    if rs:
        lines += ["## Conv/attention ratio under the best and the worst implementation", "",
                  "The attention model's figure over the convolutional model's, each under its "
                  "own best (lowest J/image) and worst (highest) variant: if the gap is the "
                  "architecture, the two agree; if it is the implementation, they differ.", "",
                  markdown_table(RATIO_HEADER, [_ratio_cells(r) for r in rs]), ""]
    lines += [f"- {n}" for n in notes(vs)]
    return "\n".join(lines).rstrip() + "\n"


CSV_FIELDS = ["model", "run", "variant", *IMPLEMENTATION_SWITCHES, "images_per_s",
              "images_per_s_rel", "j_per_image", "j_per_image_rel", "train_w", "gpu_util_pct",
              "peak_memory_mb", "compile_s", "compile_wh", "energy_to_target_wh",
              "energy_to_target_rel", "batches_to_target"]


def to_csv(vs: Sequence[Variant]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    for v in vs:
        w.writerow({"model": v.model, "run": v.label, "variant": v.name, **v.switches,
                    "images_per_s": v.images_per_s, "j_per_image": v.j_per_image,
                    "images_per_s_rel": v.relative.get("images_per_s"),
                    "j_per_image_rel": v.relative.get("j_per_image"),
                    "train_w": v.train_w, "gpu_util_pct": v.gpu_util_pct,
                    "peak_memory_mb": v.peak_memory_mb, "compile_s": v.compile_s,
                    "compile_wh": v.compile_wh, "energy_to_target_wh": v.energy_to_target_wh,
                    "energy_to_target_rel": v.relative.get("energy_to_target_wh"),
                    "batches_to_target": v.batches_to_target})
    return buf.getvalue()


def chart(vs: Sequence[Variant], path: pathlib.Path):
    """Speed-up against energy per image, both relative to each model's baseline (1, 1):
    one point per variant, best and worst named."""
    from .plots import NO_ENERGY, Chart, _colors, _figure, _not_drawn, _save
    models = list(dict.fromkeys(v.model for v in vs))
    colors = _colors(models)
    chart_ = Chart("implementation", path, "Implementation ablation: speed and energy per image",
                   "Per variant, images/s (x) and J/image (y) of the train phase, each divided "
                   "by the model's baseline (fp32, eager attention, NCHW, not compiled, "
                   "optimiser loop): right is faster, down is cheaper; the model's best and "
                   "worst variants are labelled.")
    measured = [v for v in vs if v.relative.get("images_per_s") is not None
                and v.relative.get("j_per_image") is not None]
    if not measured:
        return _not_drawn(chart_, "no variant has train-phase energy relative to its baseline: "
                                  + NO_ENERGY)
    fig, (ax,) = _figure(7.5, 5.0)
    for model in models:
        pts = [v for v in vs if v.model == model and v.relative.get("images_per_s") is not None
               and v.relative.get("j_per_image") is not None]
        if not pts:
            chart_.left_out.append(model)
            continue
        chart_.plotted.append(model)
        ax.scatter([v.relative["images_per_s"] for v in pts],
                   [v.relative["j_per_image"] for v in pts], color=colors[model], s=28,
                   label=model, alpha=0.85)
        for v in {id(x): x for x in extremes(pts) if x is not None}.values():
            if v is not baseline(pts):  # every model's baseline is at (1, 1): named once below
                ax.annotate(v.name, (v.relative["images_per_s"], v.relative["j_per_image"]),
                            fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.axvline(1.0, ls="--", color="0.5", lw=0.8)
    ax.axhline(1.0, ls="--", color="0.5", lw=0.8)
    ax.annotate("baselines", (1.0, 1.0), fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel("images/s / baseline")
    ax.set_ylabel("J/image / baseline")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    _save(fig, path)
    return chart_


def html_section(vs: Sequence[Variant], chart_) -> str:
    """The index page's implementation section (tables and the chart): the template
    ``templates/implementation.html.j2``."""
    from .html import figure, render_template, table
    from .plots import not_drawn_line

    rs = ratios(vs)
    return render_template("implementation.html.j2", variants=table(HEADER, table_rows(vs)),
                           ratios=table(RATIO_HEADER, [_ratio_cells(r) for r in rs]) if rs else None,
                           notes=notes(vs), figure=figure(chart_) if chart_.drawn else None,
                           missing=None if chart_.drawn else not_drawn_line([chart_], chart_.missing))


def write(runs: Sequence[Run], rows: Sequence[Row], out: pathlib.Path
          ) -> Tuple[List[Variant], List[pathlib.Path], str]:
    """Write ``FILES`` into ``out`` when the runs are an ablation: some model was run under
    at least two implementations (else remove the ones an earlier report left there: every
    run resolves the switches to something, and one variant per model compares nothing);
    returns the variants, the files and the HTML section ("" when none)."""
    vs = variants(runs, rows)
    keys = {(v.model, tuple(sorted((k, repr(x)) for k, x in v.switches.items()))) for v in vs}
    if len(keys) == len({m for m, _ in keys}):  # one variant per model: nothing to compare
        for name in FILES:
            stale = out / name
            if stale.exists():
                stale.unlink()
        return [], [], ""
    md, csv_path = out / FILES[0], out / FILES[1]
    md.write_text(to_markdown(vs))
    csv_path.write_text(to_csv(vs))
    c = chart(vs, out / FILES[2])
    return vs, [md, csv_path] + ([c.path] if c.drawn else []), html_section(vs, c)
