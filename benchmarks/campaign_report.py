"""The GPU campaign's results: their analysis and their Markdown.

(One job, in one file: what the campaign's figures say, computed from what it recorded, and
how ``python -m benchmarks.campaign --render FOLDER`` shows them. The plan and the running of
its parts are ``benchmarks/campaign.py``'s.)

- the energy hook's cost: ``hook_share`` (one meter read per report, against a step's time);
- the cross-check: the hook's ``gpu_wh`` between its first and last report against the NVML
  counter's own difference between the same instants (``interpolate``, ``cross_check``);
- the study's runs (``analyse_study``: summary, cross-check, GPU busy per run);
- the Markdown of a result folder (``load_folder``, ``render``, ``study_section``).

Pure functions of recorded data: nothing here measures or imports torch at module level.
"""
from __future__ import annotations

import json
import math
import pathlib
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence

if TYPE_CHECKING:  # only annotations
    from benchmarks.gpu_monitor import Sample

from shared.mdtable import markdown_table as _table

#: cross-check tolerance: the hook's gpu_wh against the counter's own difference
CROSS_CHECK_TOLERANCE = 0.01
#: the configs' report_period: the hook reads its sources once per report
DEFAULT_REPORT_PERIOD = 50


class CampaignError(RuntimeError):
    """A bad option or results folder; the message names it."""


def hook_share(read_us: float, step_ms: float, report_period: int) -> float:
    """Share of training time the hook's reads take: one meter read per report."""
    return (read_us / 1e6) / (report_period * step_ms / 1e3)


# ============================================================================ cross-check
def interpolate(samples: Sequence[Sample], t: float) -> Optional[float]:
    """The GPU's cumulative energy (J) at wall time ``t``, linear between the two samples
    around it; None when ``t`` is outside the samples or they hold no energy."""
    pts = [(s.time, s.energy_j) for s in samples if s.energy_j is not None]
    for (ta, ea), (tb, eb) in zip(pts, pts[1:]):
        if ta <= t <= tb:
            return ea + (eb - ea) * ((t - ta) / (tb - ta) if tb > ta else 0.0)
    return None


def cross_check(records: Sequence[Mapping[str, Any]], samples: Sequence[Sample]
                ) -> Dict[str, Any]:
    """The hook's ``gpu_wh`` between its first and last ``energy`` report against the NVML
    counter's difference between the same instants, read by the campaign's own monitor (its
    own ``EnergyMeter`` in this process: the same counter, read apart from the trainer's hook,
    so the check covers the hook's reads, report times, aggregation and units).

    The reports' ``time`` is stamped just after the hook's read; the monitor samples every
    50 ms, and the counter itself refreshes every 20-100 ms: over a window of a minute at a
    few hundred watts that is well under 1 %.
    """
    energy = [r for r in records if r.get("group") == "energy"
              and isinstance((r.get("metrics") or {}).get("gpu_wh"), (int, float))]
    if len(energy) < 2:
        return {"status": f"n/a ({len(energy)} energy report(s) with gpu_wh; two are needed)"}
    first, last = energy[0], energy[-1]
    t0, t1 = float(first["time"]), float(last["time"])
    c0, c1 = interpolate(samples, t0), interpolate(samples, t1)
    hook_j = (last["metrics"]["gpu_wh"] - first["metrics"]["gpu_wh"]) * 3600.0
    out: Dict[str, Any] = {"window_s": t1 - t0, "hook_j": hook_j,
                           "first_step": first["steps_completed"], "last_step": last["steps_completed"]}
    if c0 is None or c1 is None:
        out["status"] = "n/a (the monitor's samples do not bracket the reports)"
        return out
    counter_j = c1 - c0
    out.update(counter_j=counter_j)
    if counter_j <= 0:
        out["status"] = "n/a (the counter did not advance)"
        return out
    rel = hook_j / counter_j - 1.0
    out.update(relative_error=rel, status="pass" if abs(rel) <= CROSS_CHECK_TOLERANCE else "FAIL")
    return out


# ============================================================================ the study
def analyse_study(study_dir: pathlib.Path, samples: Sequence[Sample], batch: int) -> Dict[str, Any]:
    """Per run of the demo folder: summary, cross-check and GPU busy."""
    from benchmarks.e2e import analyse_e2e
    from benchmarks.gpu_monitor import NA_NO_NVML
    from shared import runlog
    from shared.summary import summarize_run
    runs: Dict[str, Any] = {}
    for run_dir in sorted(p for p in study_dir.iterdir() if (p / "metrics.jsonl").is_file()):
        records = runlog.read(run_dir / "metrics.jsonl")
        entry: Dict[str, Any] = {"run_dir": run_dir.name, "summary": summarize_run(run_dir)}
        entry["cross_check"] = (cross_check(records, samples) if samples
                                else {"status": NA_NO_NVML})
        try:
            entry["loop"] = analyse_e2e(records, samples, batch)
        except Exception as e:
            entry["loop"] = {"status": f"n/a ({e})"}
        runs[run_dir.name] = entry
    return runs


# ============================================================================ rendering
def load_folder(folder: pathlib.Path) -> Dict[str, Any]:
    """The campaign's files; CampaignError naming the folder if it is not one."""
    if not (folder / "summary.json").is_file():
        raise CampaignError(f"{folder}: no summary.json (not a campaign's output folder)")
    out: Dict[str, Any] = {"summary": json.loads((folder / "summary.json").read_text())}
    out["env"] = out["summary"]["parts"].get("env")
    p = folder / "study.json"
    study = json.loads(p.read_text()) if p.is_file() else None
    if study is not None and "seeds" not in study:  # a campaign before the seeds (one study)
        study = {"seeds": [{"seed": 0, "status": "ok", **study}]}
    out["study"] = study
    return out


def _f(v: Any, digits: int = 1) -> str:
    if isinstance(v, bool) or v is None:
        return "-" if v is None else str(v)
    if isinstance(v, (int, float)):
        return f"{v:.{digits}f}" if math.isfinite(v) else "-"
    return str(v)


def render(folder: pathlib.Path) -> str:
    """The Markdown of the campaign's own figures (the bench's tables come from
    ``benchmarks.bench --render``): NVML read cost, cross-check, the study runs, the A/B."""
    data = load_folder(folder)
    s = data["summary"]
    parts = s["parts"]
    env = data["env"] or {}
    lines = ["#### The campaign's parts", ""]
    lines.append(_table(("part", "status", "seconds"), [
        [k, str(v.get("status", ""))[:160], _f(v.get("seconds"))]
        for k, v in parts.items()]))
    lines += ["", f"- device: {env.get('device_name', 'CPU')} ({env.get('nvidia_smi', 'no nvidia-smi')}); "
              f"torch {env.get('torch')}, CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}; "
              f"Python {env.get('python')}; {env.get('cpus')} CPUs ({env.get('cpu_model')}); "
              f"torchvision {env.get('torchvision_version')}, timm {env.get('timm_version')}, "
              f"determined {env.get('determined_version')}", ""]
    cost = parts.get("nvml_read_cost", {})
    if cost.get("status") == "ok":
        share = ""
        bench_json = folder / "bench.json"
        if bench_json.is_file():
            unet = next((r for r in json.loads(bench_json.read_text()).get("steps", [])
                         if r.get("name") == "unet" and r.get("status") == "ok"), None)
            if unet is not None:
                share = (f"; one read per report of {DEFAULT_REPORT_PERIOD} batches is "
                         f"{100 * hook_share(cost['meter_read_us'], unet['step_ms'], DEFAULT_REPORT_PERIOD):.3f} % "
                         f"of U-Net's {unet['step_ms']:.1f} ms steps")
        lines += [f"- energy hook, one `EnergyMeter.read()` over the real `NvmlSource`: "
                  f"{cost['meter_read_us']:.1f} us (the bare counter call "
                  f"{cost['counter_call_us']:.1f} us), mean of {cost['reads']} reads{share}", ""]
    study = data["study"]
    if study and study.get("seeds"):
        lines += study_section(study["seeds"])
    # (campaigns of 2026-12-04 recorded the choice under the hyperparameter's name then,
    # val_depthwise, whose value "native" is now val_kernels: native_depthwise)
    for key in ("val_kernels", "val_depthwise"):
        vk = s.get(key)
        if vk:
            lines += [f"- validation kernels of the training runs: `{key}={vk['value']}` "
                      f"({vk['why']})", ""]
    warm = folder / "shape_warmup.json"
    if warm.is_file():
        from benchmarks.shape_warmup import markdown as warmup_table
        rows = json.loads(warm.read_text())["rows"]
        lines += ["#### A new input shape's first forward (`python -m benchmarks.shape_warmup`)", "",
                  warmup_table(rows)]
    lines += ablation_target_section(parts.get("ablation_target", {}))
    ab = parts.get("hook_ab", {})
    if ab.get("runs"):
        lines += ["#### The energy hook on and off (U-Net, same batches)", ""]
        lines.append(_table(("run", "img/s training", "window s", "status"), [
            [k, _f(v.get("img_s_train")), _f(v.get("window_s")), str(v.get("status"))]
            for k, v in ab["runs"].items()]))
        if "on_over_off" in ab:
            lines += ["", f"- on / off: {ab['on_over_off']:.4f}"
                      + (f"; the two 'on' runs differ by {100 * ab['on_spread']:.2f} % (the noise "
                         f"of this comparison)" if "on_spread" in ab else "")]
        lines.append("")
    return "\n".join(lines) + "\n"


def ablation_target_section(part: Mapping[str, Any]) -> List[str]:
    """The ablation-to-target part: each run's figures, its command, and the report's
    implementation table (its own Markdown under a heading of this section)."""
    if not part.get("runs"):
        return []
    lines = ["#### The implementation ablation to a target (the baseline and every fast switch, seed 0)", ""]
    lines.append(_table(
        ("run", "batches", "best mIoU", "target reached", "batches to target", "time to target s",
         "energy to target Wh", "energy Wh", "status"),
        [[k, _f(v.get("batches"), 0), _f(v.get("best_miou"), 2),
          {True: "yes", False: "no"}.get(v.get("reached_target"), "-"), _f(v.get("batches_to_target"), 0),
          _f(v.get("time_to_target_s")), _f(v.get("energy_to_target_wh"), 3), _f(v.get("energy_wh"), 3),
          str(v.get("status"))[:120]] for k, v in part["runs"].items()]))
    lines += [""] + [f"- `python {c}`" for c in part.get("commands", [])] + [""]
    table = part.get("implementation_md")
    if table:
        lines += ["##### The report's implementation table (`python -m shared.report`)", ""]
        # its own title is the heading above; its other headings go below it
        body = "\n".join(line for line in table.splitlines() if not line.startswith("# "))
        lines += [("####" + line) if line.startswith("#") else line
                  for line in body.strip("\n").splitlines()]
        lines.append("")
    elif "report_log_tail" in part:
        lines += [f"- the report failed: {part['report_log_tail']}", ""]
    return lines


STUDY_COLUMNS = ("seed", "model", "batches", "best mIoU", "target reached", "batches to target",
                 "time to target s", "energy to target Wh", "energy Wh", "avg W", "img/s training",
                 "GPU busy %", "GPU busy % training", "hook J (first to last report)",
                 "counter J (same instants)", "hook vs counter", "cross-check (<= 1 %)")


def _spread(values: Sequence[Any], digits: int) -> str:
    v = [x for x in values if isinstance(x, (int, float)) and not isinstance(x, bool)]
    if not v:
        return "-"
    if len(v) == 1:
        return _f(v[0], digits)
    return f"{_f(sum(v) / len(v), digits)} ({_f(min(v), digits)}-{_f(max(v), digits)})"


def study_section(seeds: Sequence[Mapping[str, Any]]) -> List[str]:
    """The study's runs, one row per seed and model, then per model the mean (range) over the
    seeds of batches, time and GPU energy to the target."""
    first = seeds[0]
    nvml = bool(first.get("energy_sources_env"))
    lines = ["#### The study in miniature (`shared.demo`, energy from "
             f"{'NVML' if nvml else 'no source (smoke run)'})", ""]
    lines += [f"- seed {st['seed']}: `{'ENERGY_SOURCES=nvml ' if st.get('energy_sources_env') else ''}"
              f"python {st['command']}` ({st['status']})" for st in seeds]
    lines.append("")
    rows, by_model = [], {}
    for st in seeds:
        for name, r in st["runs"].items():
            sm, cc, lp = r["summary"], r["cross_check"], r["loop"]
            model = sm.get("model") or name
            by_model.setdefault(model, []).append(sm)
            rows.append([str(st["seed"]), model, _f(sm.get("batches"), 0), _f(sm.get("best_miou"), 2),
                         "yes" if sm.get("reached_target") else "no",
                         _f(sm.get("batches_to_target"), 0), _f(sm.get("time_to_target_s")),
                         _f(sm.get("energy_to_target_wh"), 3), _f(sm.get("energy_wh"), 3),
                         _f(sm.get("avg_power_w")), _f(lp.get("img_s_train")),
                         _f(lp.get("gpu_busy_pct")), _f(lp.get("gpu_busy_train_pct")),
                         _f(cc.get("hook_j"), 0), _f(cc.get("counter_j"), 0),
                         (f"{100 * cc['relative_error']:+.3f} %"
                          if isinstance(cc.get("relative_error"), float) else "-"),
                         str(cc.get("status"))])
    lines += [_table(STUDY_COLUMNS, rows), ""]
    if by_model:
        lines += [f"Over {len(seeds)} seed(s), mean (range) among the runs that reached the target:", ""]
        lines.append(_table(("model", "runs at the target", "batches to target", "time to target s",
                             "energy to target Wh"), [
            [m, f"{sum(bool(x.get('reached_target')) for x in sms)} of {len(sms)}",
             _spread([x.get("batches_to_target") for x in sms if x.get("reached_target")], 0),
             _spread([x.get("time_to_target_s") for x in sms if x.get("reached_target")], 1),
             _spread([x.get("energy_to_target_wh") for x in sms if x.get("reached_target")], 3)]
            for m, sms in by_model.items()]))
        lines.append("")
    return lines
