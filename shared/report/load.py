"""Runs to report on: local run directories (``metrics.jsonl``) and trials on a Determined master.

Both become a :class:`Run`: the trial's metric reports in the ``metrics.jsonl`` record shape
(``{"group", "steps_completed", "time", "metrics"}``, see :mod:`shared.runlog`) and its
hyperparameters where they can be found. Everything downstream reads only that shape, so a
local run and a cluster trial go through the same code and come out the same.

Master access goes through the Determined Python SDK (``determined.experimental.client``),
logging in as the ``det`` CLI does: ``--master`` or ``DET_MASTER``, ``--user`` or
``DET_USER``, the password from ``DET_PASS`` or a token cached by ``det user login``.
"""
from __future__ import annotations

import json
import logging
import os
import pathlib
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from shared import runlog
from shared.hparams import LEGACY_TARGETS, smaller_is_better, target_reached

log = logging.getLogger("shared.report")

#: the metric groups a report reads (per_class_iou is local-only detail, not needed here)
GROUPS = ("run", "training", "validation", "energy")


class ReportError(Exception):
    """Bad input to a report: the message names the file, directory, experiment or value."""


#: how a metric is written in tables and charts (others: as named, underscores as spaces)
METRIC_LABELS = {"miou": "mIoU", "validation_loss": "validation loss",
                 "pixel_accuracy": "pixel accuracy", "mean_accuracy": "mean accuracy",
                 "object_precision": "object precision", "object_recall": "object recall",
                 "object_f1": "object F1", "false_positives_per_image": "false positives per image",
                 "average_precision": "average precision"}


def metric_label(metric: str) -> str:
    """How a metric reads in a sentence: ``mIoU``, ``validation loss``, ``object recall``."""
    return METRIC_LABELS.get(metric, metric.replace("_", " "))


def validation_phrase(metric: str) -> str:
    """``validation mIoU``, ``validation loss`` (never "validation validation_loss")."""
    label = metric_label(metric)
    return label if label.startswith("validation") else f"validation {label}"


@dataclass(frozen=True)
class Target:
    """What time and energy to target are measured at: the first validation whose ``metric``
    reaches ``value``, at or below it when ``smaller_is_better``, else at or above."""

    metric: str
    value: float
    smaller_is_better: bool = False

    @property
    def label(self) -> str:
        return metric_label(self.metric)

    @property
    def phrase(self) -> str:
        """The metric in a sentence: ``validation mIoU``, ``validation loss``."""
        return validation_phrase(self.metric)

    def reached(self, metrics: Dict[str, Any]) -> bool:
        """Whether a validation's metrics reach the target (``shared.hparams.target_reached``)."""
        return target_reached(metrics.get(self.metric), self.value, self.smaller_is_better)

    def describe(self) -> str:
        """``validation mIoU >= 16``, ``validation loss <= 0.6``."""
        return f"{self.phrase} {'<=' if self.smaller_is_better else '>='} {self.value:g}"


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass
class Run:
    """One trial's reports.

    Attributes:
        label: a short unique name for tables and legends (the run directory's name, or
            ``exp <id> trial <id>``).
        source: where it came from (a path, or the master URL with experiment and trial).
        records: the metric reports, each ``{"group", "steps_completed", "time", "metrics"}``
            with ``time`` in seconds since the epoch.
        hparams: the trial's hyperparameters where known (from the master, or from the newest
            local checkpoint's ``load_data.json``); empty otherwise.
    """

    label: str
    source: str
    records: List[Dict[str, Any]]
    hparams: Dict[str, Any] = field(default_factory=dict)

    def info(self) -> Dict[str, Any]:
        """The latest ``run`` group report (model, params, slots, global_batch_size, ...)."""
        runs = [r for r in self.records if r["group"] == "run"]
        return dict(max(runs, key=lambda r: r["time"])["metrics"]) if runs else {}

    @property
    def target(self) -> Optional[Target]:
        """The trial's own target: from its ``run`` report (trials report their target there;
        a run recorded before the direction was reported compared upwards unless its metric
        is a loss), else its hyperparameters (``target_metric`` + ``target_value``, or the
        legacy ``target_miou`` / ``target_accuracy``), when known."""
        info, hp = self.info(), self.hparams
        metric, value = info.get("target_metric"), info.get("target")
        smaller = info.get("target_smaller_is_better")
        if not (isinstance(metric, str) and _is_number(value)):
            legacy = next(((k, m) for k, m in LEGACY_TARGETS.items() if _is_number(hp.get(k))), None)
            if legacy is not None:
                metric, value, smaller = legacy[1], hp[legacy[0]], False
            else:
                metric, value = hp.get("target_metric"), hp.get("target_value")
                smaller = hp.get("target_smaller_is_better")
                if not (isinstance(metric, str) and _is_number(value)):
                    return None
        if not isinstance(smaller, bool):
            smaller = smaller_is_better(metric)
        return Target(metric, float(value), smaller)

    @property
    def target_miou(self) -> Optional[float]:
        """The trial's own target value when its target metric is mIoU."""
        t = self.target
        return t.value if t is not None and t.metric == "miou" else None


# ---------------------------------------------------------------------------------- local
def _check_records(path: pathlib.Path, records: List[Any]) -> List[Dict[str, Any]]:
    for i, r in enumerate(records, 1):
        ok = (isinstance(r, dict) and isinstance(r.get("group"), str)
              and isinstance(r.get("steps_completed"), int)
              and isinstance(r.get("time"), (int, float)) and isinstance(r.get("metrics"), dict))
        if not ok:
            raise ReportError(f"{path}: record {i} is not a metric report "
                              f"{{group, steps_completed, time, metrics}}: {str(r)[:120]}")
    return records


def _local_hparams(run_dir: pathlib.Path) -> Dict[str, Any]:
    """Hyperparameters from the newest checkpoint: Determined writes them into every
    checkpoint's ``load_data.json``; metrics.jsonl itself does not carry them."""
    found = sorted((p for p in (run_dir / "checkpoints").glob("*/load_data.json") if p.is_file()),
                   key=lambda p: p.stat().st_mtime)
    if not found:
        return {}
    try:
        hp = json.loads(found[-1].read_text()).get("hparams")
    except (OSError, ValueError, AttributeError) as e:
        # Optional information (only the target comes from it): say so and go on.
        log.warning("%s: unreadable (%s); the run's target mIoU is unknown", found[-1], e)
        return {}
    return hp if isinstance(hp, dict) else {}


def _load_run_dir(run_dir: pathlib.Path) -> Run:
    path = run_dir / "metrics.jsonl"
    try:
        records = runlog.read(path)
    except ValueError as e:  # runlog names the file and line
        raise ReportError(str(e)) from None
    except OSError as e:
        raise ReportError(f"{path}: cannot read: {e}") from None
    return Run(label=run_dir.name, source=str(run_dir), records=_check_records(path, records),
               hparams=_local_hparams(run_dir))


def load_local(path: str | os.PathLike) -> List[Run]:
    """The run in ``path`` (a directory holding ``metrics.jsonl``, or that file itself), or
    every run in its immediate subdirectories (e.g. the demo's output directory).

    Raises:
        ReportError: the path does not exist, holds no metrics.jsonl, or one is malformed.
    """
    p = pathlib.Path(path)
    if p.is_file() and p.name == "metrics.jsonl":
        p = p.parent
    if not p.is_dir():
        raise ReportError(f"{p}: no such run directory")
    if (p / "metrics.jsonl").is_file():
        return [_load_run_dir(p)]
    subdirs = sorted(d for d in p.iterdir() if (d / "metrics.jsonl").is_file())
    if not subdirs:
        raise ReportError(f"{p}: no metrics.jsonl in it or in its subdirectories (a run directory "
                          f"is the --output-dir of a local training run)")
    return [_load_run_dir(d) for d in subdirs]


# ---------------------------------------------------------------------------------- master
class MasterReader:
    """Reads experiments' trials and their metric groups through the Determined SDK.

    Args:
        master: the master URL; default ``DET_MASTER`` (or ``DET_MASTER_ADDR``).
        user: the user; default as the ``det`` CLI (``DET_USER``, else the active cached user).
        password: default ``DET_PASS``; unused when a token cached by ``det user login`` is valid.

    Raises:
        ReportError: no master given, the master cannot be reached, or the login is refused.
    """

    def __init__(self, master: Optional[str] = None, user: Optional[str] = None,
                 password: Optional[str] = None) -> None:
        import requests
        from determined.common.api import bindings, errors
        from determined.experimental import client

        self._errors, self._bindings, self._requests = errors, bindings, requests
        self.master = master or os.environ.get("DET_MASTER") or os.environ.get("DET_MASTER_ADDR")
        if not self.master:
            raise ReportError("experiment IDs were given but no master: pass --master URL or set "
                              "DET_MASTER")
        if user and password is None:
            # The SDK reads DET_PASS only when no user is named; the det CLI reads it either way.
            password = os.environ.get("DET_PASS")
        who = user or os.environ.get("DET_USER") or "the default user"
        try:
            self._det = client.Determined(master=self.master, user=user, password=password)
        except errors.MasterNotFoundException as e:
            raise ReportError(f"cannot reach the Determined master at {self.master}: {e}") from None
        except (errors.ForbiddenException, errors.UnauthenticatedException) as e:
            hint = f"det -m {self.master} user login {user or ''}".strip()
            raise ReportError(f"login to {self.master} as {who} failed: {e} (set DET_PASS, or "
                              f"run '{hint}')") from None
        except (errors.BadRequestException, requests.exceptions.RequestException) as e:
            raise ReportError(f"login to {self.master} as {who} failed: {e}") from None

    def experiment_runs(self, experiment_id: int) -> List[Run]:
        """One :class:`Run` per trial of the experiment, in trial ID order.

        Raises:
            ReportError: the experiment does not exist, is not readable, or has no trial yet.
        """
        errors = self._errors
        where = f"experiment {experiment_id} on {self.master}"
        try:
            exp = self._det.get_experiment(experiment_id)
            trials = exp.list_trials()
            if not trials:
                raise ReportError(f"{where} has no trials yet")
            return [Run(label=f"exp {experiment_id} trial {t.id}",
                        source=f"{self.master} experiment {experiment_id} ({exp.name}) trial {t.id}",
                        records=self._trial_records(t), hparams=dict(t.hparams or {}))
                    for t in trials]
        except errors.NotFoundException:
            raise ReportError(f"{where}: not found") from None
        except errors.ForbiddenException as e:
            raise ReportError(f"{where}: access refused: {e}") from None
        except errors.MasterNotFoundException as e:
            raise ReportError(f"{where}: master unreachable: {e}") from None
        except (errors.BadRequestException, errors.BadResponseException,
                self._requests.exceptions.RequestException) as e:
            raise ReportError(f"{where}: reading it failed: {e}") from None
        except (self._bindings.APIHttpError, KeyError, TypeError, ValueError) as e:
            # a response the SDK could not parse: a proxy page, or a master of another version
            raise ReportError(f"{where}: unexpected answer from the master "
                              f"({type(e).__name__}: {e})") from None

    @staticmethod
    def _trial_records(trial: Any) -> List[Dict[str, Any]]:
        out = []
        for group in GROUPS:
            for m in trial.iter_metrics(group):
                # Defensive: some master versions stream every generic group for a custom
                # group request; keep only the one asked for.
                if m.group != group:
                    continue
                out.append({"group": group, "steps_completed": int(m.steps_completed),
                            "time": m.end_time.timestamp(), "metrics": dict(m.metrics or {})})
        out.sort(key=lambda r: r["time"])
        return out


def _unique_labels(runs: List[Run]) -> None:
    """Two local runs both called ``unet`` (runs/a/unet, runs/b/unet) need telling apart."""
    seen: Dict[str, int] = {}
    for r in runs:
        seen[r.label] = seen.get(r.label, 0) + 1
    for r in runs:
        if seen[r.label] > 1 and pathlib.Path(r.source).exists():
            r.label = "/".join(pathlib.Path(r.source).parts[-2:])
    counts: Dict[str, int] = {}
    for r in runs:
        n = counts[r.label] = counts.get(r.label, 0) + 1
        if n > 1:
            r.label = f"{r.label} #{n}"


#: hyperparameters that say where a run read or wrote, not what it trained: never a label
_NOT_A_DIFFERENCE = ("data_dir", "tile_cache_dir", "pretrained_path")
#: at most this many differing hyperparameters in a label (the rest: "+N more")
LABEL_KEYS = 3


def _flat(hp: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for k, v in hp.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _short(v: Any) -> str:
    text = format(v, "g") if isinstance(v, float) else json.dumps(v) if isinstance(v, (list, dict)) \
        else "unset" if v is None else str(v)
    return text if len(text) <= 24 else text[:21] + "..."


def differences(runs: Sequence[Run]) -> Dict[str, Dict[str, Any]]:
    """Per run label, the hyperparameters whose values differ between the runs of its model
    (its ``run`` report's ``model``), in the order the first run lists them; a key another
    run of the model does not set counts as different (``None`` = unset). Runs whose
    hyperparameters are unknown, and models run once, have none."""
    by_model: Dict[Any, List[Run]] = {}
    for r in runs:
        if r.hparams:
            by_model.setdefault(r.info().get("model"), []).append(r)
    out: Dict[str, Dict[str, Any]] = {}
    for group in by_model.values():
        if len(group) < 2:
            continue
        flats = [_flat(r.hparams) for r in group]
        keys = list(dict.fromkeys(k for f in flats for k in f))
        differ = [k for k in keys if k not in _NOT_A_DIFFERENCE
                  and len({json.dumps(f.get(k), sort_keys=True, default=str) for f in flats}) > 1]
        for r, f in zip(group, flats):
            if differ:
                out[r.label] = {k: f.get(k) for k in differ}
    return out


def difference_label(diff: Dict[str, Any]) -> str:
    """``positive_fraction=0.5, hard_negative_fraction=0.25`` (at most LABEL_KEYS keys)."""
    items = [f"{k}={_short(v)}" for k, v in diff.items()]
    more = f", +{len(items) - LABEL_KEYS} more" if len(items) > LABEL_KEYS else ""
    return ", ".join(items[:LABEL_KEYS]) + more


def label_runs(runs: List[Run], labels: Optional[Sequence[str]] = None) -> None:
    """Name each run by what sets it apart: ``labels`` (one per run, in order: ``--label``)
    when given; otherwise the run's name followed by the hyperparameters that differ between
    it and the other runs of its model (``balanced (positive_fraction=0.5, ...)``), so that
    three runs in directories 1, 2, 3 are not told apart by their directory names alone.

    Raises:
        ReportError: ``labels`` not one per run, or a label given twice.
    """
    if labels:
        if len(labels) != len(runs):
            found = ", ".join(r.label for r in runs)
            raise ReportError(f"{len(labels)} --label given for {len(runs)} runs ({found}): give "
                              f"one per run, in the order the runs are listed")
        twice = sorted({x for x in labels if list(labels).count(x) > 1})
        if twice:
            raise ReportError(f"--label {twice[0]!r} given twice: each run needs its own label")
        for r, name in zip(runs, labels):
            r.label = name
        return
    diffs = differences(runs)
    for r in runs:
        if r.label in diffs:
            r.label = f"{r.label} ({difference_label(diffs[r.label])})"


def load_inputs(inputs: Sequence[str], master: Optional[str] = None,
                user: Optional[str] = None, labels: Optional[Sequence[str]] = None) -> List[Run]:
    """Runs from a mix of local run directories and Determined experiment IDs, in the order
    given (a directory that exists wins over an experiment ID of the same spelling), labelled
    by :func:`label_runs` (``labels``: one per run, replacing the names).

    Raises:
        ReportError: an input that is neither, ``labels`` that do not fit, or any error of
            :func:`load_local` and :class:`MasterReader`.
    """
    if not inputs:
        raise ReportError("nothing to report on: give run directories and/or experiment IDs")
    runs: List[Run] = []
    reader: Optional[MasterReader] = None
    for item in inputs:
        if pathlib.Path(item).exists():
            runs.extend(load_local(item))
        elif item.isdigit():
            if reader is None:
                reader = MasterReader(master, user)
            runs.extend(reader.experiment_runs(int(item)))
        else:
            raise ReportError(f"{item}: neither a run directory nor a Determined experiment ID")
    _unique_labels(runs)
    label_runs(runs, labels)
    return runs
