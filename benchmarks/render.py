"""The results in words: each target's verdict (ours against the reference), the effect of
torch.compile, and the dated Markdown section ``--markdown`` appends to BENCHMARKS.md.

Pure functions of the results dictionary (``--render`` uses them on a results file), so they
import nothing that measures.
"""
from __future__ import annotations

import math
import pathlib
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from benchmarks.specs import ROOT, TARGETS, BenchError, Target
from shared.mdtable import markdown_table

DEFAULT_MARKDOWN = ROOT / "BENCHMARKS.md"
#: end to end: the fraction of wall time the GPU must be busy, validations included
E2E_BUSY_TARGET_PCT = 90.0
#: end to end: the first validation (every image shape new) at most this many times a later
#: one over the same images
E2E_FIRST_VALIDATION_MAX = 2.0
#: the verdict of a GPU target on a CPU run
CPU_VERDICT = "n/a (CPU run)"
#: a compiled model "helped" when it is this much faster than eager (below: timing noise)
COMPILE_NOISE = 0.03


# ============================================================================ targets
def _row_value(rows: Mapping[str, Mapping[str, Any]], name: str, metric: str
               ) -> Tuple[Optional[float], str]:
    row = rows.get(name)
    if row is None:
        return None, f"n/a ({name} not measured)"
    if row.get("status") != "ok":
        return None, f"n/a ({name}: {row.get('status')})"
    v = row.get(metric)
    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0:
        return float(v), ""
    return None, v if isinstance(v, str) else f"n/a ({name} {metric} = {v!r})"


def evaluate_targets(step_rows: Sequence[Mapping[str, Any]],
                     e2e_rows: Sequence[Mapping[str, Any]] = (),
                     targets: Sequence[Target] = TARGETS, device_type: str = "cuda"
                     ) -> List[Dict[str, Any]]:
    """Each target (and informational ratio) with ours, the reference, the ratio and
    "pass", "FAIL", "info" or "n/a (why)". A compiled row of ours (``<name>+compile``) is
    compared too, after the eager one (every compile mode measured). End-to-end rows give two
    targets each: GPU busy, and the first validation against a later one. The targets are GPU
    targets: on a CPU run the ratios are shown and the verdicts are n/a."""
    rows = {r["name"]: r for r in step_rows}
    cpu = device_type == "cpu"
    out: List[Dict[str, Any]] = []
    for t in targets:
        if t.ours not in rows and t.reference not in rows:
            continue  # neither side was asked for (--only, --no-reference)
        compiled = [r["name"] for r in step_rows if r.get("compile") and r.get("base") == t.ours
                    and "@" not in r["name"]]
        for ours in (t.ours, *compiled):
            a, why_a = _row_value(rows, ours, t.metric)
            b, why_b = _row_value(rows, t.reference, t.metric)
            rule = f"{t.op} {t.threshold:g}x" if t.threshold is not None else ""
            entry: Dict[str, Any] = {"ours": ours, "reference": t.reference, "metric": t.metric,
                                     "rule": rule, "ours_value": a if a is not None else why_a,
                                     "reference_value": b if b is not None else why_b,
                                     "ratio": None}
            if a is None or b is None:
                entry["result"] = why_a or why_b
            else:
                ratio = a / b
                entry["ratio"] = ratio
                if t.threshold is None:
                    entry["result"] = "info"
                elif cpu:
                    entry["result"] = CPU_VERDICT
                else:
                    ok = ratio >= t.threshold if t.op == ">=" else ratio <= t.threshold
                    entry["result"] = "pass" if ok else "FAIL"
            out.append(entry)
    for r in e2e_rows:
        v = r.get("gpu_busy_pct")
        entry = {"ours": r["name"], "reference": "end to end", "metric": "gpu_busy_pct",
                 "rule": f">= {E2E_BUSY_TARGET_PCT:g}%", "ours_value": v, "reference_value": None,
                 "ratio": None}
        if r.get("status") != "ok":
            entry["result"] = f"n/a ({r['name']}: {r.get('status')})"
        elif cpu:
            entry["result"] = CPU_VERDICT
        elif isinstance(v, (int, float)):
            entry["result"] = "pass" if v >= E2E_BUSY_TARGET_PCT else "FAIL"
        else:
            entry["result"] = v
        out.append(entry)
        ratio = r.get("validation_first_over_later")
        entry = {"ours": r["name"], "reference": "its later validations",
                 "metric": "first_validation_s", "rule": f"<= {E2E_FIRST_VALIDATION_MAX:g}x",
                 "ours_value": r.get("validation_first_s"),
                 "reference_value": r.get("validation_later_s"), "ratio": ratio}
        if r.get("status") != "ok":
            entry["result"] = f"n/a ({r['name']}: {r.get('status')})"
        elif cpu:
            entry["result"] = CPU_VERDICT
        elif isinstance(ratio, (int, float)):
            entry["result"] = "pass" if ratio <= E2E_FIRST_VALIDATION_MAX else "FAIL"
        else:
            entry["result"] = "n/a (fewer than two validations)"
        out.append(entry)
    return out


def compile_effects(step_rows: Sequence[Mapping[str, Any]]) -> List[Dict[str, Any]]:
    """For each ``<name>+compile`` row: eager and compiled img/s, the speed-up, whether it
    helped (beyond COMPILE_NOISE), and the warm-up time that includes compilation."""
    rows = {r["name"]: r for r in step_rows}
    out = []
    for r in step_rows:
        if not r.get("compile"):
            continue
        eager = rows.get(r["base"], {})
        entry: Dict[str, Any] = {"name": r["base"], "mode": r.get("compile_mode", "default"),
                                 "eager_img_s": eager.get("img_s"),
                                 "compiled_img_s": r.get("img_s"), "speedup": None,
                                 "compile_warmup_s": r.get("warmup_s")}
        if r.get("status") != "ok":
            entry["helped"] = f"n/a (compiled: {r.get('error', r.get('status'))})"
        elif eager.get("status") != "ok":
            entry["helped"] = "n/a (no eager row)"
        else:
            s = r["img_s"] / eager["img_s"]
            entry["speedup"] = s
            entry["helped"] = ("yes" if s >= 1 + COMPILE_NOISE else
                               "no: slower" if s <= 1 - COMPILE_NOISE else "no: within noise")
        out.append(entry)
    return out


def ablation_effects(step_rows: Sequence[Mapping[str, Any]]) -> List[Dict[str, Any]]:
    """The implementation ablation's rows (``<model>@<variant>[+compile]``, ``--ablation``)
    relative to their model's ``@baseline``: img/s and J/img ratios, and which variant of
    each model is fastest."""
    rows = [r for r in step_rows if "@" in r.get("name", "")]
    ok = {r["name"]: r for r in rows if r.get("status") == "ok"}
    out = []
    for r in rows:
        model = r["name"].split("@", 1)[0]
        base = ok.get(f"{model}@baseline", {})
        entry: Dict[str, Any] = {"model": model, "variant": r["name"].split("@", 1)[1],
                                 "img_s": r.get("img_s"), "j_per_img": r.get("j_per_img"),
                                 "gpu_util_pct": r.get("gpu_util_pct"),
                                 "peak_mem_gib": r.get("peak_mem_gib"), "status": _status(r),
                                 "speedup": None, "energy_ratio": None, "fastest": False}
        if r["name"] in ok and base:
            entry["speedup"] = r["img_s"] / base["img_s"]
            if all(isinstance(x.get("j_per_img"), (int, float)) for x in (r, base)):
                entry["energy_ratio"] = r["j_per_img"] / base["j_per_img"]
        out.append(entry)
    for model in {e["model"] for e in out}:
        mine = [e for e in out if e["model"] == model and e["speedup"] is not None]
        if mine:
            max(mine, key=lambda e: e["speedup"])["fastest"] = True
    return out


# ============================================================================ output
def _fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _num(v: Any, digits: int) -> str:
    """A number, or "n/a" (the reason is in the row's result column)."""
    return _fmt(v, digits) if isinstance(v, (int, float)) or v is None else "n/a"


def _rate(flops: float) -> str:
    return f"{flops / 1e12:.1f} TFLOP/s" if flops >= 1e12 else f"{flops / 1e9:.1f} GFLOP/s"


STEP_COLUMNS = ("model", "kind", "params M", "precision", "img/s", "step ms", "peak GiB",
                "J/img", "avg W", "GPU util %", "GFLOP/img", "MFU %", "status")
E2E_COLUMNS = ("model", "batches timed", "window s", "validation s", "first / later validation s",
               "img/s loop", "img/s training", "training / step", "GPU busy %",
               "GPU busy % training", "J/img", "status")


#: what an MFU above 100% means: the model cannot run faster than the device's peak, so the
#: measured peak is too low (a matmul loop slowed by a busy machine, a CPU's few threads)
MFU_ABOVE_PEAK = ("above 100 %: not a utilisation; the measured matmul peak is too low, an "
                  "error of the peak")


def mfu_error(pct: Any) -> Optional[str]:
    """The error an MFU figure (percent) shows, or None when it can be true."""
    return MFU_ABOVE_PEAK if isinstance(pct, (int, float)) and pct > 100.0 else None


def mfu_text(pct: Any, unit: str = "") -> str:
    """An MFU figure (percent) as printed and tabulated, flagged when above 100%."""
    if not isinstance(pct, (int, float)):
        return "-" if pct is None else str(pct)
    error = mfu_error(pct)
    return f"{pct:.2f}{unit}" + (f" ({error})" if error else "")


def _status(r: Mapping[str, Any]) -> str:
    return "ok" if r.get("status") == "ok" else f"{r.get('status')}: {r.get('error', '')}"


def markdown_section(results: Mapping[str, Any]) -> str:
    """The dated section ``--markdown`` appends to BENCHMARKS.md: the command, the device and
    software, every step row, the ratios and targets, torch.compile's effect, end to end."""
    m = results["meta"]
    cpu = m.get("device_type") == "cpu"
    title = f"### {m['date']}: {m['device_name']}"
    if cpu:
        title += " (CPU smoke run)"
    s = m["settings"]
    lines = [title, ""]
    if cpu:
        lines += ["> CPU smoke run at toy size: it shows that the benchmark runs end to end; "
                  "its figures say nothing about GPU performance.", ""]
    lines += [f"- command: `{m['command']}`",
              f"- device: {m['device_name']}; torch {m['torch']}"
              + (f", CUDA {m['cuda']}, cuDNN {m['cudnn']}" if m.get("cuda") else "")
              + f"; Python {m['python']}",
              f"- settings: {s['res']}x{s['res']}, batch {s['batch']}, {s['steps']} timed steps "
              f"after {s['warmup']} warm-up, {s['num_classes']} classes, cudnn.benchmark "
              f"{'on' if s.get('cudnn_benchmark') else 'off'}",
              f"- matmul peak ({m.get('peak_dtype', '?')}): "
              + (_rate(m["peak_flops"]) if m.get("peak_flops") else "not measured"),
              f"- NVML: {m.get('nvml', '?')}",
              "- batch preparation on the device (`shared.data.on_device.training_batch`: colour "
              "augmentation, normalisation; part of every step row): "
              + (f"{m['device_prep_ms']:.2f} ms per batch" if m.get("device_prep_ms") is not None
                 else f"not measured ({m.get('device_prep_error', 'not run')})"), ""]
    steps = results.get("steps", [])
    if steps:
        lines += ["#### Training step (SegmentationTrial.train_batch's step)", ""]
        lines.append(markdown_table(STEP_COLUMNS, [
            [r["name"], r.get("kind", ""), _fmt(r.get("params_m"), 2), _fmt(r.get("precision")),
             _fmt(r.get("img_s")), _fmt(r.get("step_ms"), 2), _fmt(r.get("peak_mem_gib"), 2),
             _fmt(r.get("j_per_img"), 3), _fmt(r.get("avg_power_w")), _fmt(r.get("gpu_util_pct")),
             _fmt(r.get("gflop_per_img"), 2), mfu_text(r.get("mfu_pct")), _status(r)]
            for r in steps]))
        lines.append("")
        notes = [f"- {r['name']}: " + "; ".join(
                     [r["note"]] * bool(r.get("note"))
                     + [f"{k} {v}" for k, v in (r.get("versions") or {}).items()])
                 for r in steps if r.get("note") or r.get("versions")]
        lines += notes + [""] * bool(notes)
    targets = results.get("targets", [])
    if targets:
        lines += ["#### Ours / reference", ""]
        lines.append(markdown_table(("ours", "reference", "metric", "ours", "reference", "ratio",
                             "target", "result"), [
            [t["ours"], t["reference"], t["metric"],
             _num(t["ours_value"], 3 if t["metric"] == "j_per_img" else 1),
             _num(t["reference_value"], 3 if t["metric"] == "j_per_img" else 1),
             f"{t['ratio']:.2f}x" if t.get("ratio") is not None else "-",
             t["rule"] or "(info)", t["result"]] for t in targets]))
        lines.append("")
    comp = results.get("compile", [])
    if comp:
        lines += ["#### torch.compile", ""]
        lines.append(markdown_table(("model", "mode", "eager img/s", "compiled img/s", "speed-up",
                             "warm-up s (incl. compile)", "helped"), [
            [c["name"], c.get("mode", "default"), _fmt(c["eager_img_s"]), _fmt(c["compiled_img_s"]),
             f"{c['speedup']:.2f}x" if c.get("speedup") else "-", _fmt(c.get("compile_warmup_s")),
             c["helped"]] for c in comp]))
        lines.append("")
    abl = ablation_effects(steps)
    if abl:
        lines += ["#### Implementation ablation (relative to each model's MMCV-era baseline: "
                  "fp32, eager attention, NCHW, optimiser loop, no cuDNN benchmark)", ""]
        lines.append(markdown_table(("model", "variant", "img/s", "speed-up", "J/img", "J/img ratio",
                             "GPU util %", "peak GiB", "status"), [
            [e["model"], e["variant"] + (" (fastest)" if e["fastest"] else ""), _fmt(e["img_s"]),
             f"{e['speedup']:.2f}x" if e["speedup"] else "-", _fmt(e["j_per_img"], 3),
             f"{e['energy_ratio']:.2f}" if e["energy_ratio"] else "-", _fmt(e["gpu_util_pct"]),
             _fmt(e["peak_mem_gib"], 2), e["status"]] for e in abl]))
        lines.append("")
    e2e = results.get("e2e", [])
    if e2e:
        lines += ["#### End to end (trials/<model>/train.py, synthetic JPEGs, augmentation, "
                  "periodic validation)", ""]
        eager = {r["name"]: r.get("img_s") for r in steps if r.get("status") == "ok"}

        def over_step(r: Mapping[str, Any]) -> str:
            # the loop's training throughput against the step alone, same model, same run: the
            # share of the step's pace the loop keeps (data loading, Determined's bookkeeping)
            a, b = r.get("img_s_train"), eager.get(r["name"])
            ok = all(isinstance(v, (int, float)) and v > 0 for v in (a, b))
            return f"{a / b:.3f}" if ok else "-"

        lines.append(markdown_table(E2E_COLUMNS, [
            [r["name"], _fmt(r.get("timed_batches")), _fmt(r.get("window_s")),
             _fmt(r.get("validation_s")),
             f"{_fmt(r.get('validation_first_s'), 2)} / {_fmt(r.get('validation_later_s'), 2)}",
             _fmt(r.get("img_s_loop")), _fmt(r.get("img_s_train")),
             over_step(r), _fmt(r.get("gpu_busy_pct")), _fmt(r.get("gpu_busy_train_pct")),
             _fmt(r.get("j_per_img"), 3), _status(r)] for r in e2e]))
        lines.append("")
    return "\n".join(lines) + "\n"


def append_markdown(path: pathlib.Path, section: str) -> None:
    """Append ``section`` to ``path`` (created if missing), after a blank line."""
    path = pathlib.Path(path)
    if not path.parent.is_dir():
        raise BenchError(f"--markdown {path}: directory {path.parent} does not exist")
    prefix = ""
    if path.is_file():
        text = path.read_text()
        prefix = "" if not text or text.endswith("\n\n") else ("\n" if text.endswith("\n") else "\n\n")
    with path.open("a") as f:
        f.write(prefix + section)

