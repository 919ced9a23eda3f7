"""The learning curves' data (``benchmarks.curves`` records them, ``benchmarks.search_replay``
replays ASHA over them): one curve per trial (``Curve``, ``Validation``), its JSON file, the
set's manifest and its provenance, loading a directory of curves, and the conversion of a local
run directory into a curve (``curve_from_run``). What the figures are (energy from a counter,
else a nominal power times CPU time) is said in ``benchmarks/curves.py``.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import pathlib
import subprocess
from typing import Any, Dict, Iterable, List, Mapping, Optional

from shared import recipes
from shared.hparams import smaller_is_better as default_smaller_is_better
from shared.hparams import target_reached


ROOT = recipes.REPO_ROOT
DEFAULT_DIR = ROOT / "benchmarks" / "results" / "curves"
FORMAT = "energy-seg-recipes/learning-curve"
VERSION = 1
MANIFEST = "manifest.json"
#: the fixed power (W) that turns seconds into energy when a run had no energy counter
NOMINAL_POWER_W = 10.0
#: the file ``record`` writes beside a run's metrics.jsonl: the process's CPU seconds at each
#: validation (one JSON object a line: steps_completed, cpu_s)
CPU_STAMPS = "cpu_times.jsonl"
#: validation metrics that are bookkeeping or derived from the energy, not learning-curve values
NOT_CURVE_METRICS = frozenset({
    "batches", "epochs", "energy_wh", "energy_to_target_wh", "projected_energy_to_target_wh",
    "time_to_target_s", "batches_to_target", "validations_without_improvement"})


class CurveError(ValueError):
    """A curve file, manifest or run directory that cannot be used; the message names it."""


# ============================================================================ the data model
@dataclasses.dataclass
class Validation:
    """One validation of a trial."""

    batches: int
    elapsed_s: float
    energy_wh: float
    metrics: Dict[str, Optional[float]]
    cpu_s: Optional[float] = None


@dataclasses.dataclass
class Curve:
    """One trial's learning curve (see the module docstring)."""

    name: str
    search: str
    model: str
    target_metric: str
    target: float
    smaller_is_better: bool
    validations: List[Validation]
    energy_source: str
    hparams: Dict[str, Any] = dataclasses.field(default_factory=dict)
    max_batches: Optional[int] = None
    nominal_power_w: Optional[float] = None
    device: Optional[str] = None
    source: Optional[str] = None
    #: how the recorded run ended: "max_batches" (trained its length), "target" (stopped at
    #: the target), "early_stop", "error" (failed: a diverged loss, say; ``note`` says why),
    #: or "unknown"
    ended: str = "unknown"
    note: Optional[str] = None

    # -- reading ---------------------------------------------------------------------------
    def values(self, metric: Optional[str] = None) -> List[Optional[float]]:
        """The metric at every validation (None where it was not finite or not reported)."""
        metric = metric or self.target_metric
        return [v.metrics.get(metric) for v in self.validations]

    def energies(self) -> List[float]:
        return [v.energy_wh for v in self.validations]

    def first_reaching(self, metric: Optional[str] = None, target: Optional[float] = None,
                       smaller: Optional[bool] = None) -> Optional[int]:
        """Index of the first validation at the target (None: never reached)."""
        metric = metric or self.target_metric
        target = self.target if target is None else target
        smaller = self.smaller_is_better if smaller is None else smaller
        for i, value in enumerate(self.values(metric)):
            if target_reached(value, target, smaller):
                return i
        return None

    def energy_to_target_wh(self, metric: Optional[str] = None, target: Optional[float] = None,
                            smaller: Optional[bool] = None) -> Optional[float]:
        """The energy at the first validation at the target, None if never reached."""
        i = self.first_reaching(metric, target, smaller)
        return None if i is None else self.validations[i].energy_wh

    # -- files -----------------------------------------------------------------------------
    def to_json(self) -> Dict[str, Any]:
        out = {"format": FORMAT, "version": VERSION}
        out.update(dataclasses.asdict(self))
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str) -> "Curve":
        if data.get("format") != FORMAT:
            raise CurveError(f"{where}: not a learning curve (format {data.get('format')!r}, "
                             f"expected {FORMAT!r})")
        if data.get("version") != VERSION:
            raise CurveError(f"{where}: curve format version {data.get('version')!r}; this code "
                             f"reads version {VERSION}")
        fields = {f.name for f in dataclasses.fields(cls)}
        missing = [k for k in ("name", "search", "model", "target_metric", "target",
                               "smaller_is_better", "validations", "energy_source")
                   if k not in data]
        if missing:
            raise CurveError(f"{where}: missing {', '.join(missing)}")
        kwargs = {k: v for k, v in data.items() if k in fields}
        vals = []
        for n, v in enumerate(data["validations"]):
            try:
                vals.append(Validation(batches=int(v["batches"]), elapsed_s=float(v["elapsed_s"]),
                                       energy_wh=float(v["energy_wh"]),
                                       metrics=dict(v["metrics"]), cpu_s=v.get("cpu_s")))
            except (KeyError, TypeError, ValueError) as e:
                raise CurveError(f"{where}: validation {n}: {type(e).__name__}: {e} (each needs "
                                 f"batches, elapsed_s, energy_wh and metrics)") from None
        kwargs["validations"] = vals
        curve = cls(**kwargs)
        curve.check(where)
        return curve

    def check(self, where: str) -> None:
        """Raises CurveError naming ``where`` if the curve cannot be replayed."""
        if not self.validations:
            raise CurveError(f"{where}: no validations")
        if not (isinstance(self.target, (int, float)) and math.isfinite(self.target)
                and self.target > 0):
            raise CurveError(f"{where}: target {self.target!r} must be a number > 0")
        last_b, last_e = 0, 0.0
        for n, v in enumerate(self.validations):
            if v.batches <= last_b:
                raise CurveError(f"{where}: validation {n}: batches {v.batches} do not increase "
                                 f"(previous {last_b})")
            if not math.isfinite(v.energy_wh) or v.energy_wh <= 0 or v.energy_wh < last_e:
                raise CurveError(f"{where}: validation {n}: energy_wh {v.energy_wh!r} must be "
                                 f"finite, > 0 and not below the previous ({last_e})")
            if self.target_metric not in v.metrics:
                raise CurveError(f"{where}: validation {n} has no {self.target_metric!r} "
                                 f"(the target metric)")
            last_b, last_e = v.batches, v.energy_wh


def dumps_curve(curve: Curve) -> str:
    """A curve's file: its fields one a line, each validation on one line (diffs stay small)."""
    data = curve.to_json()
    vals = data.pop("validations")
    lines = [f" {json.dumps(k)}: {json.dumps(v)}," for k, v in data.items()]
    body = ",\n".join(f"  {json.dumps(v)}" for v in vals)
    return "{\n" + "\n".join(lines) + '\n "validations": [\n' + body + "\n ]\n}\n"


def _finite_or_none(value: Any) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


# ============================================================================ loading
def load_curves(directory: pathlib.Path | str) -> List[Curve]:
    """Every curve the manifest of ``directory`` lists, checked, in manifest order.

    Raises:
        CurveError: no manifest, a listed file missing or unreadable, a bad curve.
    """
    directory = pathlib.Path(directory)
    manifest = read_manifest(directory, must_exist=True)
    curves, seen = [], set()
    for rec in manifest["recordings"]:
        for rel in rec.get("files", []):
            if rel in seen:
                continue  # a later recording re-wrote it; listed once
            seen.add(rel)
            path = directory / rel
            try:
                data = json.loads(path.read_text())
            except FileNotFoundError:
                raise CurveError(f"{path}: listed in {directory / MANIFEST} but missing") from None
            except (OSError, json.JSONDecodeError) as e:
                raise CurveError(f"{path}: unreadable: {e}") from None
            curves.append(Curve.from_json(data, str(path)))
    if not curves:
        raise CurveError(f"{directory / MANIFEST}: lists no curves")
    return curves


def group_by_search(curves: Iterable[Curve]) -> Dict[str, List[Curve]]:
    """Curves by search, each search checked to share one target.

    Raises:
        CurveError: two curves of one search with different targets (names both).
    """
    groups: Dict[str, List[Curve]] = {}
    for c in curves:
        groups.setdefault(c.search, []).append(c)
    for name, members in groups.items():
        first = members[0]
        for c in members[1:]:
            if (c.target_metric, c.target, c.smaller_is_better) != (
                    first.target_metric, first.target, first.smaller_is_better):
                raise CurveError(
                    f"search {name!r}: trials {first.name!r} (target {first.target_metric} "
                    f"{first.target:g}) and {c.name!r} (target {c.target_metric} {c.target:g}) "
                    f"differ; a search has one target")
    return groups


def read_manifest(directory: pathlib.Path, must_exist: bool = False) -> Dict[str, Any]:
    path = directory / MANIFEST
    if not path.exists():
        if must_exist:
            raise CurveError(f"{path}: no manifest (is {directory} a curves directory? "
                             f"python -m benchmarks.curves record/convert writes one)")
        return {"format": FORMAT + "-manifest", "version": VERSION, "recordings": []}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CurveError(f"{path}: unreadable: {e}") from None
    if data.get("format") != FORMAT + "-manifest" or not isinstance(data.get("recordings"), list):
        raise CurveError(f"{path}: not a curves manifest (format {data.get('format')!r})")
    if data.get("version") != VERSION:
        raise CurveError(f"{path}: manifest version {data.get('version')!r}; this code reads "
                         f"version {VERSION}")
    return data


def _write_atomic(path: pathlib.Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class Recording:
    """One ``record``/``convert`` invocation's entry in the manifest, rewritten after every
    curve it adds, so that an interrupted grid keeps the trials it finished."""

    def __init__(self, out: pathlib.Path, command: str, note: Optional[str] = None) -> None:
        self.out = out
        self.entry: Dict[str, Any] = {"command": command, **provenance(), "files": []}
        if note:
            self.entry["note"] = note
        self._index: Optional[int] = None

    def fail(self, trial: str, reason: str) -> None:
        """A trial that gave no curve (it failed before its first validation)."""
        self.entry.setdefault("failed", {})[trial] = reason
        self._save()

    def add(self, curve: Curve) -> pathlib.Path:
        rel = f"{curve.search}/{curve.name}.json"
        _write_atomic(self.out / rel, dumps_curve(curve))
        if rel not in self.entry["files"]:
            self.entry["files"].append(rel)
        self.entry.get("failed", {}).pop(f"{curve.search}/{curve.name}", None)
        self._save(rel)
        return self.out / rel

    def _save(self, rel: Optional[str] = None) -> None:
        manifest = read_manifest(self.out)
        recs = manifest["recordings"]
        if self._index is None:
            recs.append(self.entry)
            self._index = len(recs) - 1
        else:
            recs[self._index] = self.entry
        if rel is not None:  # a file written again belongs to this recording only
            for i, rec in enumerate(recs):
                if i != self._index:
                    rec["files"] = [f for f in rec.get("files", []) if f != rel]
        keep = [i for i, r in enumerate(recs)
                if r.get("files") or r.get("failed") or i == self._index]
        manifest["recordings"] = [recs[i] for i in keep]
        self._index = keep.index(self._index)
        _write_atomic(self.out / MANIFEST, json.dumps(manifest, indent=1) + "\n")


def provenance() -> Dict[str, Any]:
    """The commit, the machine and the date of a recording."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                                  timeout=20).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""
    import platform

    import torch

    from benchmarks.campaign import cpu_model
    machine = {"cpu_model": cpu_model(), "cpus": os.cpu_count(),
               "python": platform.python_version(), "torch": torch.__version__}
    if torch.cuda.is_available():
        machine["device_name"] = torch.cuda.get_device_name(0)
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return {"commit": git("rev-parse", "HEAD") or None,
            # changes to tracked code or configs (results and docs do not count)
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no", "--",
                              "*.py", "*.yaml", "requirements.txt")),
            "machine": machine, "date": date}


# ============================================================================ run -> curve
def _records(path: pathlib.Path) -> List[Dict[str, Any]]:
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            raise CurveError(f"{path}: line {n} is not JSON") from None
    return out


def curve_from_run(run_dir: pathlib.Path | str, search: str, name: Optional[str] = None,
                   nominal_power_w: float = NOMINAL_POWER_W,
                   hparams: Optional[Mapping[str, Any]] = None,
                   max_batches: Optional[int] = None, source: Optional[str] = None) -> Curve:
    """The learning curve of a local run (``metrics.jsonl``, and ``summary.json`` when it
    finished).

    Elapsed time at a validation is the energy group's ``duration_s`` at that step (the hook's
    clock from the trial's start), else the record's time since the run's first record. Energy
    is the validation's measured ``energy_wh`` where there is one; else ``nominal_power_w``
    times the CPU seconds of ``cpu_times.jsonl`` (written by ``record``), else times the
    elapsed time. A run without ``summary.json`` did not finish (it failed, a diverged loss
    say, or was killed): its curve ends at its last validation with ``ended: "error"``, which
    the replay treats as Determined treats a trial that errored.

    Raises:
        CurveError: no metrics.jsonl, no target, no validation, or a validation without the
            target metric.
    """
    run_dir = pathlib.Path(run_dir)
    metrics_path, summary_path = run_dir / "metrics.jsonl", run_dir / "summary.json"
    if not metrics_path.is_file():
        raise CurveError(f"{metrics_path}: missing (a run directory holds metrics.jsonl and, "
                         f"once the run finished, summary.json)")
    summary: Dict[str, Any] = {}
    if summary_path.is_file():
        try:
            summary = json.loads(summary_path.read_text())
        except json.JSONDecodeError as e:
            raise CurveError(f"{summary_path}: not JSON: {e}") from None
    records = _records(metrics_path)
    if not records:
        raise CurveError(f"{metrics_path}: empty")
    run_info = next((r["metrics"] for r in records if r["group"] == "run"), {})
    metric = summary.get("target_metric") or run_info.get("target_metric") or "miou"
    target = summary.get("target", run_info.get("target"))
    if target is None:
        raise CurveError(f"{run_dir}: no target (target_metric/target in summary.json or the "
                         f"run record): not a trial's run")
    smaller = summary.get("target_smaller_is_better", run_info.get("target_smaller_is_better"))
    if smaller is None:
        smaller = default_smaller_is_better(metric)
    stamps: Dict[int, float] = {}
    if (run_dir / CPU_STAMPS).is_file():
        stamps = {int(r["steps_completed"]): float(r["cpu_s"])
                  for r in _records(run_dir / CPU_STAMPS)}
    t0 = records[0]["time"]
    energy_at = {r["steps_completed"]: r["metrics"] for r in records if r["group"] == "energy"}
    vals: List[Validation] = []
    sources = set()
    for r in records:
        if r["group"] != "validation":
            continue
        step = int(r["steps_completed"])
        m = r["metrics"]
        eg = energy_at.get(step, {})
        elapsed = eg.get("duration_s")
        if elapsed is None:
            elapsed = r["time"] - t0
        measured = _finite_or_none(m.get("energy_wh"))
        if measured is not None and measured > 0:
            energy, kind = measured, f"counter:{eg.get('sources') or summary.get('energy_sources') or '?'}"
        elif step in stamps:
            energy, kind = nominal_power_w * stamps[step] / 3600.0, "nominal_power_x_cpu_time"
        else:
            energy, kind = nominal_power_w * float(elapsed) / 3600.0, "nominal_power_x_wall_time"
        sources.add(kind)
        values = {k: _finite_or_none(v) for k, v in m.items()
                  if k not in NOT_CURVE_METRICS and not isinstance(v, (str, bool))
                  and (v is None or isinstance(v, (int, float)))}
        if metric not in values:
            raise CurveError(f"{metrics_path}: the validation at batch {step} has no {metric!r}")
        vals.append(Validation(batches=int(m.get("batches", step)), elapsed_s=float(elapsed),
                               energy_wh=float(energy), metrics=values, cpu_s=stamps.get(step)))
    if not vals:
        raise CurveError(f"{metrics_path}: no validation record")
    if len(sources) > 1:
        raise CurveError(f"{run_dir}: energy measured at some validations and not at others "
                         f"({', '.join(sorted(sources))}); such a run cannot be one curve")
    trained = int(summary.get("batches") or vals[-1].batches)
    if not summary:
        ended = "error"
    elif summary.get("early_stopped"):
        ended = "early_stop"
    elif max_batches is not None and trained >= max_batches:
        ended = "max_batches"
    elif summary.get("reached_target") and trained == summary.get("batches_to_target"):
        ended = "target"
    else:
        ended = "unknown"
    hp = {k: run_info[k] for k in ("params", "global_batch_size", "lr", "precision")
          if k in run_info}
    hp.update(hparams or {})
    kind = sources.pop()
    return Curve(name=name or run_dir.name, search=search,
                 model=str(summary.get("model") or run_info.get("model") or "?"),
                 target_metric=metric, target=float(target), smaller_is_better=bool(smaller),
                 validations=vals, energy_source=kind, hparams=hp,
                 max_batches=max_batches if max_batches is not None else trained,
                 nominal_power_w=None if kind.startswith("counter:") else nominal_power_w,
                 device=summary.get("device") or run_info.get("device"),
                 source=source or str(run_dir), ended=ended)
