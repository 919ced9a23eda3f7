"""The Determined trials every recipe derives from: ``RecipeTrial`` (what both families share)
and ``SegmentationTrial`` (``ClassificationTrial`` is in ``shared.classification.trial``).

A trial is a thin Determined adapter around ``shared.engine.Engine``, the one training and
evaluation step (also what the benchmark times): it resolves the hyperparameters, builds the
model (``build_model``, the one place that maps hyperparameters to a model's arguments), the
engine, the data loaders and the callbacks (time to target, the ``run`` group, the energy
hook), so that ``trials/<model>/train.py`` only says which model to build.

(One job, in one file: the Determined adapter around the engine. Its length is the two base
classes and the callbacks they install: time to target, the ``run`` group, the trial's own
checkpointed state; and the loader workers' set-up.)
"""
from __future__ import annotations

import functools
import json
import logging
import math
import random
import time
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch
from determined import pytorch as det_torch

from shared import determined_compat as compat
from shared import hparams as hpmod
from shared import runlog
from shared import energy
from shared.data.sampling import SeededSampler, derive_seed
from shared.energy import ENERGY_METRICS
from shared.engine import Engine, SegmentationTask
from shared.metrics import per_class_dict
from shared.tensorboard_scalars import add_scalars

log = logging.getLogger("shared.trial")

#: (group, name, meaning) of one reported metric
MetricDoc = Tuple[str, str, str]


class TargetCallback(det_torch.PyTorchCallback):
    """Time and batches to the first validation whose ``target_metric`` reaches
    ``target_value`` in its direction (``target_smaller_is_better``; see
    ``shared.hparams.resolve_target``).

    Wall time counts from the trial's start and carries over pause/resume through the
    checkpoint (state_dict), so a resumed trial does not restart its clock. It adds
    ``time_to_target_s`` and ``batches_to_target`` to that validation's metrics (and to every
    later one, so the WebUI's latest-validation columns show them) by updating the metrics dict
    that Determined reports right after ``on_validation_end``.

    Early stopping (``early_stop_patience`` = N) lives here too, since it watches the same
    metric in the same direction: a validation improves when its value is strictly better
    than the best so far; after N validations in a row that do not, the trial asks Determined
    to stop (``set_stop_requested``: a checkpoint, then the end of the trial; ASHA counts it as
    a finished trial). Every validation then carries ``validations_without_improvement``. The
    best value and the count are in the checkpoint, so a resumed trial keeps counting.
    """

    def __init__(self, trial: "RecipeTrial") -> None:
        self.trial = trial
        self.metric = trial.hp["target_metric"]
        self.target = float(trial.hp["target_value"])
        self.smaller_is_better = bool(trial.hp["target_smaller_is_better"])
        self.elapsed_before = 0.0
        self.t0 = time.monotonic()
        self.reached: Optional[Dict[str, float]] = None
        self.patience: Optional[int] = trial.hp["early_stop_patience"]
        self.best: Optional[float] = None
        self.without_improvement = 0

    def elapsed(self) -> float:
        return self.elapsed_before + (time.monotonic() - self.t0)

    def on_trial_startup(self, first_batch_idx: int, checkpoint_uuid: Optional[str]) -> None:
        # Runs before the checkpoint is loaded. On a cluster first_batch_idx is the batches
        # already trained; in local mode it is always 0 and load_state_dict sets the count.
        self.t0 = time.monotonic()
        self.trial.batches_trained = first_batch_idx

    def on_validation_end(self, metrics: Dict[str, Any]) -> None:
        if self.reached is None and hpmod.target_reached(metrics.get(self.metric), self.target,
                                                   self.smaller_is_better):
            self.reached = {"time_to_target_s": round(self.elapsed(), 3),
                            "batches_to_target": int(self.trial.batches_trained)}
            log.info("target %s %.2f reached: %.2f at batch %d after %.1f s", self.metric, self.target,
                     metrics[self.metric], self.reached["batches_to_target"], self.reached["time_to_target_s"])
            if self.trial.hp["stop_at_target"]:
                self.trial.context.set_stop_requested(True)
        if self.reached is not None:
            metrics.update(self.reached)
        if self.patience is not None:
            self._early_stop(metrics)
        if self.trial.context.distributed.rank == 0:
            self.trial.write_local_details()

    def _early_stop(self, metrics: Dict[str, Any]) -> None:
        value = metrics.get(self.metric)
        finite = (isinstance(value, (int, float)) and not isinstance(value, bool)
                  and math.isfinite(value))
        if finite and (self.best is None or (value < self.best if self.smaller_is_better
                                             else value > self.best)):
            self.best, self.without_improvement = float(value), 0
        else:  # a worse, equal, missing or non-finite value
            self.without_improvement += 1
        metrics["validations_without_improvement"] = self.without_improvement
        if self.without_improvement >= self.patience:
            if self.trial.context.distributed.rank == 0:
                log.info("early stopping at batch %d: %s has not improved on its best, %.4g, for %d "
                         "validations (early_stop_patience %d)", self.trial.batches_trained,
                         self.metric, self.best if self.best is not None else math.nan,
                         self.without_improvement, self.patience)
            self.trial.context.set_stop_requested(True)

    def state_dict(self) -> Dict[str, Any]:
        return {"elapsed_s": self.elapsed(), "reached": self.reached,
                "batches_trained": self.trial.batches_trained,
                "best": self.best, "without_improvement": self.without_improvement}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self.elapsed_before = float(state_dict.get("elapsed_s", 0.0))
        self.t0 = time.monotonic()
        self.reached = state_dict.get("reached")
        self.trial.batches_trained = int(state_dict.get("batches_trained", self.trial.batches_trained))
        self.best = state_dict.get("best")
        self.without_improvement = int(state_dict.get("without_improvement", 0))


class RecipeTrial(det_torch.PyTorchTrial):
    """What every recipe's trial shares. Subclasses set the class attributes below and
    implement ``build_model``, ``build_task``, the two data loaders and ``write_local_details``.
    """

    #: model-specific hyperparameters: name -> shared.energy.schema.Param (the one declaration
    #: class, also importable as shared.hparams.Param)
    MODEL_PARAMS: Mapping[str, hpmod.Param] = {}
    #: the hyperparameters every trial of this family shares
    COMMON_PARAMS: Mapping[str, hpmod.Param] = hpmod.COMMON
    #: validation metrics shown in local progress lines
    SHOWN_METRICS: tuple = ()
    #: validation metrics reported at every validation, and whether larger is better: what a
    #: searcher may rank trials by (time/energy to target exist only once the target is reached)
    SEARCHER_METRICS: Mapping[str, bool] = {}
    #: a short name for logs and reports
    MODEL_NAME = "model"
    #: the family's own training and validation metrics: name -> meaning (see metric_docs)
    TRAINING_METRICS: Mapping[str, str] = {}
    VALIDATION_METRICS: Mapping[str, str] = {}
    #: the family's own custom metric groups: group -> {name: meaning}
    EXTRA_GROUPS: Mapping[str, Mapping[str, str]] = {}

    @classmethod
    def metric_docs(cls) -> List[MetricDoc]:
        """Every metric this trial can report, with its meaning: the one list the README's
        Metrics table, the customer package's README and the tests check names against."""
        validation = {
            **cls.VALIDATION_METRICS,
            "time_to_target_s": "wall time from the trial's start to the first validation whose "
                                "target_metric reaches target_value (carried over pause/resume)",
            "batches_to_target": "batches trained at that validation",
            "validations_without_improvement": "with early_stop_patience set: validations in a row "
                                               "since target_metric last improved (0 at an "
                                               "improvement); the trial stops when it reaches "
                                               "early_stop_patience",
            **energy.VALIDATION_METRICS,
            "skipped_samples": "samples skipped as bad (skip_bad_samples)",
        }
        groups = {"training": cls.TRAINING_METRICS, "validation": validation,
                  "energy": energy.ENERGY_GROUP, "run": RUN_GROUP, **cls.EXTRA_GROUPS}
        return [(g, name, meaning) for g, names in groups.items() for name, meaning in names.items()]

    @classmethod
    def check_target(cls, hp: Mapping[str, Any], where: str = "hyperparameters") -> None:
        """Refuse a ``target_metric`` this trial never reports: its target could never be
        reached, and the energy projection would have nothing to project from."""
        known = cls.VALIDATION_METRICS
        if known and hp["target_metric"] not in known:
            raise hpmod.ConfigError(f"{where}: hyperparameter 'target_metric' = {hp['target_metric']!r} "
                                    f"is not a validation metric of {cls.MODEL_NAME}; known: "
                                    f"{', '.join(sorted(known))}")

    def build_model(self, hp: Mapping[str, Any]) -> torch.nn.Module:
        raise NotImplementedError

    def build_task(self, hp: Mapping[str, Any]) -> Any:
        """The engine's task (``shared.engine.SegmentationTask``, or the family's own)."""
        raise NotImplementedError

    def prepare(self, hp: Mapping[str, Any]) -> None:
        """Work to do before the model is built (the classification trial checks its data)."""

    def model_built(self, model: torch.nn.Module, hp: Mapping[str, Any]) -> None:
        """Called with the model before the engine takes it (moves it, wraps it)."""

    def describe(self) -> str:
        """The start-up log line's family-specific part."""
        return ""

    # ------------------------------------------------------------------ construction
    def __init__(self, context: det_torch.PyTorchTrialContext) -> None:
        self.context = context
        compat.load_checkpoints_as_data()  # a checkpoint is read as data, never run as code
        self.hp = hp = hpmod.resolve(context.get_hparams(), self.MODEL_PARAMS,
                                     where="hyperparameters", common=self.COMMON_PARAMS)
        self.check_target(hp)
        exp_conf = _experiment_config(context)
        self.max_batches = hpmod.training_length(hp, exp_conf)
        metric = (exp_conf.get("searcher") or {}).get("metric")
        self.energy_required = metric in ENERGY_METRICS
        if self.energy_required and not hp["energy"]["enabled"]:
            raise hpmod.ConfigError(f"the searcher minimises '{metric}' but energy.enabled is false: "
                                    f"the trial would never report it")
        self._seed(hp)
        #: bad samples per split (shared.data.skips.BadSamples of this rank's data sets), the
        #: problems the scans skipped (file messages), and every rank's findings at the last
        #: validation (see skip_state)
        self._bad: Dict[str, Any] = {}
        self._scan_skipped: set = set()
        self._skips_everywhere: Dict[str, List[int]] = {}
        self.prepare(hp)
        self.device = context.device
        model = self.build_model(hp)
        self.model_built(model, hp)
        self.engine = Engine(model, hp, compat.DeterminedRuntime(context), self.build_task(hp),
                             device=self.device, max_batches=self.max_batches)
        self.target_callback = TargetCallback(self)
        e = self.engine
        rule = e.lr_scaling if hp["lr_scaling"] != "auto" else f"auto = {e.lr_scaling} for {hp['optimizer']}"
        compiled = (f"compiled ({e.compile_mode})" if e.compiled else "eager")
        if hp["compile"] == "auto":
            compiled += (f" (compile: auto: {self.device.type}, {self.max_batches} batches; "
                         f"compiles on CUDA from {hpmod.COMPILE_AUTO_MIN_BATCHES})")
        log.info("%s: %.2fM parameters%s, precision %s, channels_last %s, %s, lr %.3g (%.3g at "
                 "base batch %d, scaled to %d by lr_scaling %s)",
                 self.MODEL_NAME, e.num_parameters / 1e6, self.describe(), e.precision,
                 e.channels_last, compiled, e.lr, hp["lr"], hp["base_batch_size"],
                 context.get_global_batch_size(), rule)

    #: the trial's own state in the checkpoint it resumes from (``trial_state.json``: the data
    #: seed, bad samples, the family's sampler state), read at startup before the data loaders
    #: are built; None for a fresh start
    restored: Optional[Dict[str, Any]] = None

    @property
    def data_seed(self) -> int:
        """The seed of the training data's order and augmentation (``shared.data.sampling``):
        Determined's trial seed on a cluster (stable across the trial's restarts), the
        hyperparameter ``seed`` locally; a resumed trial keeps the one its checkpoint recorded."""
        recorded = ((self.restored or {}).get("data") or {}).get("seed")
        if recorded is not None:
            return int(recorded)
        import determined as det
        if det.get_cluster_info() is not None:
            return int(self.context.get_trial_seed())
        return int(self.hp["seed"])

    def data_state(self) -> Dict[str, Any]:
        """The family's data state beyond the seed, for the checkpoint (JSON)."""
        return {}

    def trial_state(self) -> Dict[str, Any]:
        """What the checkpoint's ``trial_state.json`` holds: plain JSON, read back without
        unpickling anything (``_TrialStateCallback``); also what a local resume compares its
        hyperparameters with (``shared.resume``)."""
        return {"format": 1, "model": self.MODEL_NAME,
                "trial_class": f"{type(self).__module__}.{type(self).__qualname__}",
                "batches_trained": self.batches_trained, "hparams": dict(self.hp),
                "data": {"seed": self.data_seed, **self.data_state()},
                "skipped": self.skip_state()}

    # ------------------------------------------------------------------ bad samples
    def track_skips(self, split: str, bad: Any, scan_problems: Any = ()) -> None:
        """Count the bad samples of ``split``'s data set (its ``BadSamples``, or None) and the
        problems its scan skipped, once per run: a resumed trial starts from the checkpoint's."""
        self._bad[split] = bad
        self._scan_skipped.update(map(str, scan_problems))
        recorded = (self.restored or {}).get("skipped") or {}
        if bad is not None and recorded.get(split):
            bad.restore(recorded[split])
        self._scan_skipped.update(map(str, recorded.get("scan", [])))

    def local_skips(self) -> Dict[str, List[int]]:
        """This rank's bad samples per split (indices)."""
        return {split: bad.indices() for split, bad in self._bad.items() if bad is not None}

    def skip_state(self) -> Dict[str, Any]:
        """Every bad sample known here: this rank's, and every rank's at the last validation."""
        out: Dict[str, Any] = {k: set(v) for k, v in self._skips_everywhere.items()}
        for split, found in self.local_skips().items():
            out.setdefault(split, set()).update(found)
        state: Dict[str, Any] = {k: sorted(v) for k, v in out.items()}
        state["scan"] = sorted(self._scan_skipped)
        return state

    @property
    def skipped_samples(self) -> int:
        """Bad samples skipped so far, each file once (this rank's and the last validation's)."""
        return sum(len(v) for v in self.skip_state().values())

    @staticmethod
    def _seed(hp: Mapping[str, Any]) -> None:
        # On a cluster Determined seeds from the trial seed before the trial is built; locally
        # there is none, so the hyperparameter ``seed`` is used. Seeding again on a cluster with
        # the same hp["seed"] would give every trial of a search the same init, so skip it there.
        import determined as det
        if det.get_cluster_info() is None:
            random.seed(hp["seed"])
            np.random.seed(hp["seed"])
            torch.manual_seed(hp["seed"])

    # The engine's state, under the names launch.py, the callbacks and the tests read.
    model = property(lambda self: self.engine.model)
    optimizer = property(lambda self: self.engine.optimizer)
    scheduler = property(lambda self: self.engine.scheduler)
    scaler = property(lambda self: self.engine.scaler)
    train_loss = property(lambda self: self.engine.train_loss)
    precision = property(lambda self: self.engine.precision)
    compiled = property(lambda self: self.engine.compiled)
    channels_last = property(lambda self: self.engine.channels_last)
    lr = property(lambda self: self.engine.lr)
    num_parameters = property(lambda self: self.engine.num_parameters)

    @property
    def batches_trained(self) -> int:
        return self.engine.batches_trained

    @batches_trained.setter
    def batches_trained(self, value: int) -> None:
        self.engine.batches_trained = int(value)

    # ------------------------------------------------------------------ data
    def _loader_kwargs(self) -> Dict[str, Any]:
        workers = self.hp["workers_per_slot"]
        # the generator seeds the workers (base seed): a function of the trial seed too
        generator = torch.Generator()
        generator.manual_seed(derive_seed(self.data_seed, 1))
        return {"num_workers": workers, "pin_memory": self.device.type == "cuda",
                "persistent_workers": workers > 0, "worker_init_fn": loader_worker_init(),
                "generator": generator}

    def _check_training_set(self, size: int) -> None:
        if size < self.context.get_global_batch_size():
            raise hpmod.ConfigError(f"{self.hp['data_dir']}: {size} training images is fewer than "
                                    f"global_batch_size={self.context.get_global_batch_size()}")

    # ------------------------------------------------------------------ steps
    #: set by the local launcher when SIGTERM or SIGINT arrives (shared.launch._StopOnSignal):
    #: a single process stops at its next batch
    stop_signal: Optional[str] = None
    #: the same in a multi-process local run, where the ranks agree on it at the next report
    #: boundary (``agree_on_signals``, set by the launcher): see _RunInfoCallback
    stop_signal_pending: Optional[str] = None
    agree_on_signals: bool = False
    #: the energy hook, once build_callbacks made it
    _energy: Any = None
    #: set by the local launcher on a resume after a crash: the interrupted run's last
    #: ``energy`` record past the checkpoint (EnergyCallback's ``carried``)
    energy_carried: Optional[Mapping[str, Any]] = None
    #: its batch (``steps_completed``)
    energy_carried_step: Optional[int] = None
    #: set by the local launcher: where each rank keeps its absolute energy counters for a
    #: run that resumes this one after a kill (``shared.energy.handover``); None on a cluster
    energy_counters_dir: Optional[Any] = None

    def train_batch(self, batch: Any, epoch_idx: int, batch_idx: int) -> Dict[str, Any]:
        if self.stop_signal is not None:
            # Every batch before this one is trained: checkpoint them and return from fit.
            compat.exit_after_checkpoint()
        if self.engine.compiled and self._energy is not None:
            self._energy.compile_phase(self.engine.compiling)  # torch.compile's warm-up
        return self.engine.train_batch(batch)

    def evaluate_batch(self, batch: Any, batch_idx: int) -> Dict[str, Any]:
        self.engine.evaluate_batch(batch)
        return {}  # every validation metric comes from the task's reducers

    def validation_follows(self, step: int) -> bool:
        """Whether Determined validates right after the training chunk ending at ``step``
        (every ``validation_period`` batches, and at the end of training)."""
        return step % self.hp["validation_period"] == 0 or step >= self.max_batches

    def write_local_details(self) -> None:
        """Per-class results of the last validation, to the local metrics file only."""

    # ------------------------------------------------------------------ hooks
    def build_callbacks(self) -> Dict[str, det_torch.PyTorchCallback]:
        # Order matters: the energy callback reads time_to_target_s, added by the target one.
        callbacks: Dict[str, det_torch.PyTorchCallback] = {"trial_state": _TrialStateCallback(self),
                                                            "target": self.target_callback,
                                                            "run_info": _RunInfoCallback(self)}
        if self.hp["energy"]["enabled"]:
            from shared.energy.callback import EnergyCallback
            callbacks["energy"] = EnergyCallback(self.context, self.hp["energy"],
                                                 steps_completed=lambda: self.batches_trained,
                                                 target=self.hp["target_value"],
                                                 target_metric=self.hp["target_metric"],
                                                 target_smaller_is_better=self.hp["target_smaller_is_better"],
                                                 validation_follows=self.validation_follows,
                                                 required=self.energy_required,
                                                 carried=self.energy_carried,
                                                 carried_step=self.energy_carried_step,
                                                 counters_dir=self.energy_counters_dir,
                                                 report=functools.partial(compat.report_group,
                                                                          self.context))
            self._energy = callbacks["energy"]
        return callbacks


class SegmentationTrial(RecipeTrial):
    """Subclasses set ``MODEL_NAME``, ``MODEL_PARAMS`` (their own hyperparameter schema) and
    implement ``build_model``."""

    SHOWN_METRICS = ("miou", "pixel_accuracy")
    TRAINING_METRICS = {"loss": "training loss (cross-entropy, label 0 ignored)",
                        "lr": "learning rate",
                        "batches_without_labels": "batches of the report period (all ranks) "
                                                  "without any labelled pixel: their loss is 0 "
                                                  "with a zero gradient (MMSegmentation's), "
                                                  "never a divergence"}
    VALIDATION_METRICS = {
        "miou": "mean IoU over classes, % (the searcher metric)",
        "pixel_accuracy": "correctly classified labelled pixels, %",
        "mean_accuracy": "mean over classes of the per-class accuracy, %",
        "validation_loss": "validation loss",
    }
    SEARCHER_METRICS: Mapping[str, bool] = {
        "miou": True, "pixel_accuracy": True, "mean_accuracy": True, "validation_loss": False,
        "energy_wh": False, "projected_energy_to_target_wh": False,
    }

    @classmethod
    def training_samples(cls, hp: Mapping[str, Any]) -> int:
        """Training images under ``hp["data_dir"]`` (for ``--epochs`` on the command line)."""
        from shared.data import find_samples
        pairs, _ = find_samples(hp["data_dir"], "training", hp["skip_bad_samples"])
        return len(pairs)

    def build_task(self, hp: Mapping[str, Any]) -> SegmentationTask:
        return SegmentationTask(hp["num_classes"], hp["val_mode"],
                                hp["val_crop_size"] or hp["crop_size"], hp["val_stride"],
                                hp["val_kernels"])

    confusion = property(lambda self: self.engine.task.confusion)
    val_loss = property(lambda self: self.engine.task.val_loss)

    def build_training_data_loader(self) -> det_torch.DataLoader:
        from shared.data import build_dataset
        ds = build_dataset(self.hp, "training")
        self._check_training_set(len(ds))
        self.track_skips("training", ds.bad, ds.skipped_at_scan)
        # drop_last keeps every step at the configured batch (BatchNorm statistics, lr scaling);
        # the order and the augmentation follow the trial seed (resume = uninterrupted run)
        return det_torch.DataLoader(ds, batch_size=self.context.get_per_slot_batch_size(),
                                    sampler=SeededSampler(len(ds), self.data_seed),
                                    drop_last=True, **self._loader_kwargs())

    def build_validation_data_loader(self) -> det_torch.DataLoader:
        from shared.data import build_dataset, val_collate
        ds = build_dataset(self.hp, "validation")
        self.track_skips("validation", ds.bad, ds.skipped_at_scan)
        # shape buckets for whole-image inference (slide windows have the crop's shape already)
        multiple = self.hp["val_pad_multiple"] if self.hp["val_mode"] == "whole" else 0
        return det_torch.DataLoader(ds, batch_size=self.hp["val_batch_size_per_slot"], shuffle=False,
                                    collate_fn=functools.partial(val_collate, pad_multiple=multiple),
                                    **self._loader_kwargs())

    def write_local_details(self) -> None:
        """Per-class IoU of the last validation: to the local metrics file (``per_class_iou``,
        ``iou/<class>``) and to TensorBoard (``per_class_iou/<class>``, locally and on a
        cluster); not a Determined metric group (150 columns would crowd the WebUI)."""
        last = self.confusion.last
        if last is not None:
            values = per_class_dict(last["per_class_iou"], self.hp["class_names"])
            runlog.write_extra("per_class_iou", self.batches_trained, values)
            add_scalars(self.context, "per_class_iou", self.batches_trained,
                        {k.split("/", 1)[1]: v for k, v in values.items()})


#: the custom group ``run``, reported once per trial start by _RunInfoCallback
RUN_GROUP = {
    "model": "model name", "params": "parameter count", "target_metric": "the metric compared "
    "with the target (hyperparameter target_metric)", "target": "the target value (target_value)",
    "target_smaller_is_better": "the target's direction: true = reached at target_metric <= "
                                "target, false = at >= target",
    "slots": "GPUs (or processes) of the trial",
    "precision": "precision in use", "compiled": "whether the training step runs under "
    "torch.compile (the hyperparameter compile resolved: auto decides by device and run length)",
    "global_batch_size": "images per step",
    "lr": "the scaled peak learning rate", "device": "device name",
    "early_stop_patience": "the early_stop_patience hyperparameter (0: early stopping off)",
    "reported_at": "'start' (the trial (re)started: readers start a new segment of the run's "
                   "time axis there) or 'validation' (the update after a validation)",
    "peak_memory_mb": "peak memory of the largest rank so far, MB (2^20 bytes): on CUDA the peak "
                      "of tensor memory (torch.cuda.max_memory_allocated; the caching allocator's "
                      "reserve is more), on CPU the training process's peak resident set "
                      "(getrusage ru_maxrss: Python, libraries and tensors; data-loader workers "
                      "not counted); reported at trial start and again after every validation",
    "search_point": "local runs of a config with a search space: the point trained in the "
                    "searcher's place (metrics.jsonl only)",
}

MB = 1024 * 1024


def peak_memory_mb(device: torch.device) -> float:
    """This process's peak memory so far, MB (see ``RUN_GROUP["peak_memory_mb"]``)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / MB
    import resource
    import sys
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is in kilobytes on Linux, in bytes on macOS
    return peak / MB if sys.platform == "darwin" else peak / 1024


class _RunInfoCallback(det_torch.PyTorchCallback):
    """Reports the facts a comparison needs as the custom metric group ``run`` (parameters,
    slots, precision) once per trial start, and again after every validation with the peak
    memory so far (the latest ``run`` report is the one readers take), and keeps the
    bad-sample count visible."""

    def __init__(self, trial: "RecipeTrial") -> None:
        self.trial = trial
        self.reported_skips = 0
        #: this rank's peak memory so far, MB; kept here because the classification trial's
        #: resources callback resets CUDA's peak counter at each of its samples: this callback
        #: comes first in build_callbacks (Determined calls them in that order) and reads the
        #: counter at the same hooks, just before each reset
        self.peak_mb = 0.0
        self.started_at: Optional[int] = None

    def _peak(self) -> float:
        self.peak_mb = max(self.peak_mb, peak_memory_mb(self.trial.device))
        return self.peak_mb

    def on_trial_startup(self, first_batch_idx: int, checkpoint_uuid: Optional[str]) -> None:
        self.started_at = first_batch_idx
        # No collective here (ranks may start at different moments): the chief's own figure.
        self._report(first_batch_idx, self._peak(), "start")

    def _report(self, step: int, peak_mb: float, at: str) -> None:
        t = self.trial
        if t.context.distributed.rank == 0:
            compat.report_group(
                t.context, "run", step,
                {"model": t.MODEL_NAME, "params": t.num_parameters,
                 "target_metric": t.hp["target_metric"], "target": t.hp["target_value"],
                 "target_smaller_is_better": bool(t.hp["target_smaller_is_better"]),
                 "slots": t.context.distributed.size, "precision": t.precision,
                 "compiled": bool(t.compiled),
                 "global_batch_size": t.context.get_global_batch_size(), "lr": t.lr,
                 "device": torch.cuda.get_device_name() if t.device.type == "cuda" else "cpu",
                 "early_stop_patience": t.hp["early_stop_patience"] or 0,
                 "peak_memory_mb": round(peak_mb, 2), "reported_at": at})

    def on_training_workload_end(self, avg_metrics: Dict[str, Any], batch_metrics: Any) -> None:
        self._peak()
        t = self.trial
        if t.agree_on_signals:
            # A signal reaches the ranks at different moments (one inside a collective runs its
            # handler only when the collective returns): stopping each rank on its own stopped
            # them at different batches, and the first to checkpoint waited for the others
            # until torchrun killed them all, checkpoint unfinished. Every rank is here, at the
            # same boundary: any rank's signal stops them all at Determined's next check.
            if any(t.context.distributed.allgather(t.stop_signal_pending)):
                t.context.set_stop_requested(True)
        # Runs on every rank with the same (broadcast) averages, so all ranks stop together.
        loss = avg_metrics.get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise FloatingPointError(
                f"training loss is {float(loss)} at batch {self.trial.batches_trained}: the run "
                f"diverged; lower 'lr' or set 'grad_clip_norm'")

    def on_validation_end(self, metrics: Dict[str, Any]) -> None:
        # Every rank's peak, the largest reported (a collective: on every rank, every time).
        peak = max(self.trial.context.distributed.allgather(self._peak()))
        # One report of a group per step: not at the step the startup report used (a
        # validation right after a resume); the next validation carries the peak.
        if self.trial.batches_trained != self.started_at:
            self._report(self.trial.batches_trained, peak, "validation")
        # Bad samples are found by each rank's loaders: the union over ranks, each file once.
        union: Dict[str, set] = {}
        for found in self.trial.context.distributed.allgather(self.trial.local_skips()):
            for split, indices in found.items():
                union.setdefault(split, set()).update(indices)
        for split, indices in self.trial._skips_everywhere.items():
            union.setdefault(split, set()).update(indices)
        self.trial._skips_everywhere = {k: sorted(v) for k, v in union.items()}
        total = self.trial.skipped_samples
        if total:
            metrics["skipped_samples"] = total
            if total != self.reported_skips and self.trial.context.distributed.rank == 0:
                log.warning("skip_bad_samples: %d bad samples skipped so far (see the warnings "
                            "above for the files)", total)
            self.reported_skips = total


class _TrialStateCallback(det_torch.PyTorchCallback):
    """The trial's own state in every checkpoint, as JSON (``trial_state.json``: see
    ``RecipeTrial.trial_state``), written with the checkpoint's files and read back at startup,
    before the data loaders exist (Determined loads its own state later, after building them,
    which is too late for a sampler whose loader workers have already prefetched)."""

    FILE = "trial_state.json"

    def __init__(self, trial: "RecipeTrial") -> None:
        self.trial = trial
        self.resuming = False

    def on_trial_startup(self, first_batch_idx: int, checkpoint_uuid: Optional[str]) -> None:
        self.resuming = bool(checkpoint_uuid)
        if not checkpoint_uuid:
            return
        raw = compat.read_checkpoint_file(self.trial.context, checkpoint_uuid, self.FILE)
        if raw is None:
            log.warning("checkpoint %s has no %s (written before it existed): the data order "
                        "and bad-sample counts start afresh", checkpoint_uuid, self.FILE)
            return
        state = json.loads(raw)
        # A checkpoint of another trial (a continued or forked one starts at 0) is only weights.
        if int(state.get("batches_trained", -1)) == int(first_batch_idx):
            self.trial.restored = state

    def on_training_start(self) -> None:
        # after Determined loaded the checkpoint: this run's schedule (a resume may change lr,
        # warm-up or length: shared.resume), not the one stored with the scheduler's state
        if self.resuming:
            self.trial.engine.apply_schedule()

    def on_checkpoint_write_end(self, checkpoint_dir: str) -> None:
        import pathlib
        path = pathlib.Path(checkpoint_dir) / self.FILE
        path.write_text(json.dumps(self.trial.trial_state(), indent=1) + "\n")


_loaders_ending: Any = None


def _loaders_ending_event() -> Any:
    """Set when this process ends (atexit): from then on its loader workers obey SIGTERM."""
    global _loaders_ending
    if _loaders_ending is None:
        import atexit
        import multiprocessing
        _loaders_ending = multiprocessing.get_context().Event()
        # runs before multiprocessing's own exit handler (registered earlier, run later),
        # which terminates daemonic children (the workers) with SIGTERM and joins them
        atexit.register(_loaders_ending.set)
    return _loaders_ending


def loader_worker_init() -> Any:
    """The ``worker_init_fn`` of every loader of the trials (see ``worker_init``)."""
    import functools
    return functools.partial(worker_init, ending=_loaders_ending_event())


def worker_init(worker_id: int, ending: Any = None) -> None:
    """In a data-loader worker: SIGINT and SIGTERM are ignored while the trial's process runs.
    A Ctrl-C in the terminal, and a SIGTERM from ``timeout``, Slurm's ``scancel``, ``kill
    -TERM -PGID`` or torchrun's agent (which signals each rank's process group), reach every
    process of the group; the trial's own process decides how to stop (it finishes the batch,
    checkpoints, then shuts the loader down, which ends the workers). A worker that died of the
    signal instead made the main process fail ("DataLoader worker ... is killed by signal:
    Terminated") before it could checkpoint. Once the trial's process is exiting (``ending``
    set), SIGTERM ends a worker again, as multiprocessing's exit handler expects."""
    import os
    import signal

    def on_signal(signum: int, frame: Any) -> None:
        if ending is not None and ending.is_set():
            os._exit(0)  # a clean end: the exiting process counts no worker failure

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, on_signal)


def _experiment_config(context: det_torch.PyTorchTrialContext) -> Dict[str, Any]:
    try:
        return context.get_experiment_config() or {}
    except Exception:  # local runs without an experiment config
        return {}
