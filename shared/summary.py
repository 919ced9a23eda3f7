"""A run's headline figures from its metrics.jsonl: what 000's Table 2 reports per model.

Everything is derived from the recorded reports (never from in-memory state), so a resumed
or crashed run summarises the same way, and a figure that was never measured stays None.
"""
from __future__ import annotations

import math
import pathlib
from typing import Any, Dict, List, Optional

from shared import runlog
from shared.energy.projection import MIN_COVERAGE, is_measured


def summarize_run(run_dir: str | pathlib.Path) -> Dict[str, Any]:
    run_dir = pathlib.Path(run_dir)
    records = runlog.read(run_dir / "metrics.jsonl")
    by_group: Dict[str, List[Dict[str, Any]]] = {}
    for r in records:
        by_group.setdefault(r["group"], []).append(r)
    run = (by_group.get("run") or [{"metrics": {}}])[-1]["metrics"]
    vals = by_group.get("validation", [])
    train = by_group.get("training", [])
    energy = by_group.get("energy", [])
    first_hit = next((v for v in vals if "time_to_target_s" in v["metrics"]), None)
    # The metric compared with the target and its direction: the run says which (miou for
    # segmentation, accuracy for classification); runs recorded before it said so are
    # segmentation runs, and runs recorded before the direction was said compared upwards.
    metric = run.get("target_metric", "miou")
    smaller = bool(run.get("target_smaller_is_better", False))
    scored = [v for v in vals if _number(v["metrics"].get(metric))]
    pick = min if smaller else max
    best = pick(scored, key=lambda v: v["metrics"][metric], default=None)
    last_seen = vals[-1]["metrics"] if vals else {}
    patience = run.get("early_stop_patience") or 0
    last_val = vals[-1] if vals else None
    last_energy = energy[-1]["metrics"] if energy else {}
    # A figure whose coverage is below the searcher's threshold is not measured: None here,
    # with the reason, never a number that reads as a measurement (shared.energy.projection).
    coverage = last_energy.get("coverage")
    measured = is_measured(last_energy.get("energy_wh"), coverage)
    why_not = None
    if energy and not measured:
        why_not = ("no source measured energy" if last_energy.get("energy_wh") is None or coverage is None
                   else f"coverage {coverage:.3g} is below {MIN_COVERAGE:g}")
    out: Dict[str, Any] = {
        "run_dir": str(run_dir),
        "model": run.get("model"),
        "params": run.get("params"),
        "slots": run.get("slots"),
        "device": run.get("device"),
        "batches": max((r["steps_completed"] for r in train + vals), default=0),
        "target_metric": metric,
        "target": run.get("target"),
        "target_smaller_is_better": smaller,
        f"final_{metric}": last_val["metrics"].get(metric) if last_val else None,
        f"best_{metric}": best["metrics"].get(metric) if best else None,
        "reached_target": first_hit is not None,
        "time_to_target_s": first_hit["metrics"]["time_to_target_s"] if first_hit else None,
        "batches_to_target": first_hit["metrics"]["batches_to_target"] if first_hit else None,
        "energy_to_target_wh": first_hit["metrics"].get("energy_to_target_wh") if first_hit else None,
        "energy_wh": last_energy.get("energy_wh") if measured else None,
        "energy_coverage": coverage,
        "energy_measured": measured,
        "energy_not_measured": why_not,
        "avg_power_w": last_energy.get("avg_power_w") if measured else None,
        "energy_sources": last_energy.get("sources"),
        "final_loss": train[-1]["metrics"].get("loss") if train else None,
        "peak_memory_mb": run.get("peak_memory_mb"),
        "early_stop_patience": patience or None,
        # the last validation's count reached the patience: that validation asked to stop
        "early_stopped": bool(patience) and last_seen.get("validations_without_improvement", 0) >= patience,
    }
    return out


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def fmt(v: Any, spec: str = "") -> str:
    if v is None:
        return "-"
    return format(v, spec) if spec else str(v)


def format_summary(s: Dict[str, Any], name: Optional[str] = None) -> str:
    """The run's last line, ``[name] done: ...``: ``name`` is the prefix of the run's other
    lines (the trial's name); the model it reports, when another (the classification
    recipe's architecture), follows in parentheses."""
    name = name or s["model"]
    model = f" ({s['model']})" if s.get("model") and s["model"] != name else ""
    target = (f"reached at batch {s['batches_to_target']} after {s['time_to_target_s']:.1f} s"
              if s["reached_target"] else "not reached")
    energy = (f"{s['energy_wh']:.4g} Wh ({s['energy_sources']})" if s.get("energy_wh") is not None
              else f"not measured ({s.get('energy_not_measured') or s.get('energy_sources') or 'no energy report'})")
    m = s.get("target_metric", "miou")
    stopped = (f"; early stopped ({s['early_stop_patience']} validations without improvement)"
               if s.get("early_stopped") else "")
    peak = (f"; peak memory {s['peak_memory_mb']:.0f} MB" if s.get("peak_memory_mb") is not None else "")
    return (f"[{name}] done{model}: {s['batches']} batches, best {m} {fmt(s.get(f'best_{m}'), '.4g')}, "
            f"final {fmt(s.get(f'final_{m}'), '.4g')}; target {target}{stopped}; energy {energy}{peak}")
