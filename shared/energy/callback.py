"""The thin Determined layer: a PyTorchCallback that meters the trial and reports it.

Facts this relies on (Determined 0.38.1, determined/pytorch/_pytorch_trial.py):

- ``on_trial_startup`` runs on every rank before the checkpoint is loaded; the meter starts
  there, and ``load_state_dict`` (called later, from the checkpoint) sets the offset.
- ``on_training_workload_end`` runs on every rank after each training chunk;
  ``on_validation_end(metrics)`` runs on every rank *before* the chief reports ``metrics``
  as the validation metrics, so keys added to it in place are reported with them.
- ``state_dict()`` is called on the chief only, when it writes a checkpoint.
- Phases (``train_wh``, ``validation_wh``, ``checkpoint_wh``, ``setup_wh``, ``compile_wh``,
  ``mining_wh``; their seconds ``<phase>_s``), marked on
  every rank: setup runs from ``on_trial_startup`` (the meter's start) to
  ``on_training_start`` (data loaders built, checkpoint loaded; the first batch follows);
  validation from ``on_validation_start`` to ``on_validation_end``; a checkpoint from the
  hook before it (``on_training_workload_end`` or ``on_validation_end``: Determined
  checkpoints right after those) to ``on_checkpoint_upload_end``, the one checkpoint hook
  every rank gets (``on_checkpoint_save_start`` and ``on_checkpoint_write_end`` run on the
  chief only, while the other ranks wait in the checkpoint's broadcast); compile: the
  torch.compile warm-up batches, which Determined has no hook for, so the trial calls
  ``compile_phase`` from ``train_batch``; the rest is train.
- Reporting the same custom group twice at one step with overlapping keys is refused, so
  the "energy" group is reported at most once per ``steps_completed`` value.

Collective rule: every rank calls ``allgather`` exactly once per workload end and per
validation end, whatever happened locally (a rank whose measurement failed sends an empty
report). Only work *after* the allgather, on the chief, may take a different path.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import pathlib
import socket
import time
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple

import torch
from determined import pytorch as det_pytorch

from .redact import energy_logger
from .aggregate import RankEnergy, TrialEnergy, combine
from . import handover, resume
from .meter import EnergyMeter
from .snapshot import EnergySnapshot
from .options import validate_options
from .projection import MIN_COVERAGE, UNMEASURED_WH, is_measured, scaled_energy_wh, searcher_metric
from .select import build_sources

log = energy_logger()


class EnergyCallback(det_pytorch.PyTorchCallback):
    """Meters the trial's energy and reports it (group "energy", and ``energy_wh`` /
    ``energy_to_target_wh`` in the validation metrics).

    Args:
        context: the ``PyTorchTrialContext`` (uses ``.distributed`` and ``.device``).
        options: the ``energy`` hyperparameter dict (see ``options.default_options``).
        steps_completed: returns the number of batches trained so far.
        target, target_metric, target_smaller_is_better: the trial's target value, the
            validation metric compared with it (``miou`` for segmentation) and its direction,
            for ``projected_energy_to_target_wh``.
        validation_follows: step -> whether a validation comes right after this training
            report; then the energy group is reported once, after the validation, so the
            last figure of the run includes it (one group cannot be reported twice at one step).
        required: the searcher ranks trials by an energy metric: fail at start, on every
            rank, when no source can measure anything on any node.
        carried: after a crash, the last ``energy`` record the interrupted run reported after
            the checkpoint this run resumes from: energy that was spent, and that the
            checkpoint does not know of. When it is ahead of the checkpoint's total, the trial
            continues from it, so that the totals never go down across a crash.
        carried_step: the batch of that record.
        counters_dir: a local run's ``energy_counters/`` directory: each rank keeps there its
            absolute counters at its last reports, and a resumed run counts from them the
            energy between the interrupted run's last report and its own start
            (``shared.energy.handover``). None on a cluster.
        report: ``report(group, steps_completed, metrics)`` sends a custom metric group to
            Determined (the trial passes ``shared.determined_compat.report_group``, which
            also writes the group to TensorBoard): the library itself reaches into no
            Determined internals and imports nothing else of the project.

    Raises:
        ValueError: bad options (at construction, before training starts).
    """

    def __init__(self, context: Any, options: Optional[Mapping[str, Any]],
                 steps_completed: Callable[[], int], target: Optional[float] = None,
                 target_metric: str = "miou", target_smaller_is_better: bool = False,
                 validation_follows: Optional[Callable[[int], bool]] = None,
                 required: bool = False,
                 carried: Optional[Mapping[str, Any]] = None,
                 carried_step: Optional[int] = None,
                 counters_dir: Optional[pathlib.Path] = None, *,
                 report: Callable[[str, int, Dict[str, Any]], None]) -> None:
        self._context = context
        self._report_group = report
        self._opts = validate_options(options)
        self._enabled: bool = self._opts["enabled"]
        self._steps_completed = steps_completed
        self._target = target
        self._target_metric = target_metric
        self._target_smaller_is_better = target_smaller_is_better
        self._validation_follows = validation_follows
        self._required = required
        self._meter: Optional[EnergyMeter] = None
        self._started_at: Optional[float] = None
        self._node_id = os.environ.get("ENERGY_NODE_NAME") or socket.gethostname()
        self._gpus_on_node = 0
        self._offset = TrialEnergy.empty(self._opts["apportion"])
        self._latest: Optional[TrialEnergy] = None
        self._latest_at: Optional[float] = None
        self._last_reported_step: Optional[int] = None
        self._target_reached = False
        self._energy_to_target_wh: Optional[float] = None
        self._failure_logged = False
        self._carried = dict(carried) if carried else None
        self._carried_step = carried_step
        self._counters_dir = counters_dir
        #: this rank's last good meter read and the monotonic time it was taken
        self._last_good: Optional[Tuple[EnergySnapshot, float]] = None
        #: the energy_wh of the last validation that had one (the searcher metric's basis)
        self._validation_energy_wh: Optional[float] = None
        #: the energy to target scaled to the elapsed time then (the searcher metric after it)
        self._target_scaled_wh: Optional[float] = None
        self._held_logged = False
        self._unmeasured_logged = False
        #: whether the last validation's energy counted as measured (``projection``)
        self.measured: Optional[bool] = None
        #: (scaled energy, target metric) at each earlier measured validation: what
        #: ``energy.projection: curve`` fits (in the checkpoint, so a resumed trial keeps it)
        self._history: List[Tuple[float, float]] = []

    # -- helpers ----------------------------------------------------------------------------
    def _failed(self, where: str, err: BaseException) -> None:
        # One traceback in the log, then silence: training must go on and logs not flood.
        if not self._failure_logged:
            self._failure_logged = True
            log.warning("energy: %s failed (%s: %s); training continues, energy figures may "
                        "be incomplete", where, type(err).__name__, err, exc_info=True)
        else:
            log.debug("energy: %s failed again: %s", where, err)

    def _device_sync(self) -> Optional[Callable[[], None]]:
        """How the meter waits for this rank's GPU at phase boundaries (None off a GPU)."""
        device = getattr(self._context, "device", None)
        if device is not None and getattr(device, "type", None) == "cuda":
            return lambda: torch.cuda.synchronize(device)
        return None

    def _gpu_indices(self) -> List[int]:
        device = getattr(self._context, "device", None)
        if device is not None:
            if getattr(device, "type", None) != "cuda":
                return []
            return [device.index if device.index is not None else torch.cuda.current_device()]
        return [torch.cuda.current_device()] if torch.cuda.is_available() else []

    def _count_gpus_on_node(self, meter: EnergyMeter, uses_gpu: bool) -> int:
        if not uses_gpu:
            return 0  # a CPU-only trial is charged the whole node (share 1.0)
        raw = os.environ.get("ENERGY_GPUS_ON_NODE")
        if raw:
            return int(raw)
        if self._opts["gpus_on_node"]:
            return int(self._opts["gpus_on_node"])
        # Inside a container both NVML and CUDA see only the GPUs given to it, so on a node
        # shared through containers this is the trial's own count: sites that share nodes
        # set ENERGY_GPUS_ON_NODE. On bare metal NVML sees every GPU of the node.
        counts = [getattr(s, "device_count", 0) for s in meter.active_sources]
        if torch.cuda.is_available():
            counts.append(torch.cuda.device_count())
        return max(counts, default=0)

    # -- lifecycle --------------------------------------------------------------------------
    def on_trial_startup(self, first_batch_idx: int, checkpoint_uuid: Optional[str]) -> None:
        if not self._enabled:
            return
        self._started_at = time.monotonic()
        try:
            dist = self._context.distributed
            gpu_indices = self._gpu_indices()
            sources = build_sources(self._opts["sources"], env=os.environ,
                                    gpu_indices=gpu_indices,
                                    node_reader=dist.local_rank == 0,
                                    options={k: v for k, v in self._opts.items()
                                             if v is not None})
            meter = EnergyMeter(sources, synchronize=self._device_sync()).start()
            self._gpus_on_node = self._count_gpus_on_node(meter, bool(gpu_indices))
            self._meter = meter
        except Exception as err:
            self._failed("starting the energy meter", err)
        if self._required:
            # Collective on every rank: a trial whose searcher ranks it by energy must not run
            # for hours and then fail the search on a missing metric.
            active = len(self._meter.active_sources) if self._meter is not None else 0
            if sum(self._context.distributed.allgather(active)) == 0:
                raise RuntimeError(
                    "the searcher ranks trials by energy, but no energy source can measure on "
                    "any node of this trial (see the 'energy source ... unavailable' lines "
                    "above); set ENERGY_SOURCES and the source's variables (README: Energy "
                    "measurement) or use a searcher metric that is not an energy figure")

    def _mark(self, following: str, ended: Optional[str] = None) -> None:
        """A phase boundary on this rank (see the module docstring); never a collective."""
        if self._meter is None:
            return
        try:
            self._meter.mark_phase(following, ended=ended)
        except Exception as err:
            self._failed("marking an energy phase", err)

    def on_training_start(self) -> None:
        if self._enabled:
            self._mark("train")  # the end of setup

    def on_validation_start(self) -> None:
        if self._enabled:
            self._mark("validation")

    def compile_phase(self, compiling: bool) -> None:
        """Called by the trial before each training batch: ``compiling`` while the batch is
        one of torch.compile's warm-up batches (``Engine.compiling``), which are then the
        phase ``compile`` (``compile_wh``, ``compile_s``) instead of ``train``. No collective
        (every rank compiles its own copy)."""
        if not self._enabled or self._meter is None:
            return
        if compiling and self._meter.phase == "train":
            self._mark("compile")
        elif not compiling and self._meter.phase == "compile":
            self._mark("train")

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """A phase the trial runs inside training (``mining``: the rare-objects trial's
        hard-negative search, from inside ``train_batch``): its energy goes to ``<name>_wh``
        (a name of ``aggregate.PHASES``), training resumes after it. Never a collective."""
        if self._enabled:
            self._mark(name)
        try:
            yield
        finally:
            if self._enabled:
                self._mark("train")

    def on_checkpoint_upload_end(self, uuid: str) -> None:
        if self._enabled:
            # The segment since the last workload or validation end was the checkpoint.
            self._mark("train", ended="checkpoint")

    def on_trial_shutdown(self) -> None:
        if self._counters_dir is not None:
            try:
                handover.close(self._counters_dir, self._context.distributed.rank)
            except Exception as err:
                self._failed(f"closing the energy counters in {self._counters_dir}", err)
        if self._meter is not None:
            self._meter.close()
            self._meter = None

    # -- collection -------------------------------------------------------------------------
    def _local_report(self) -> Dict[str, Any]:
        dist = self._context.distributed
        meta = dict(node_id=self._node_id, rank=dist.rank, local_rank=dist.local_rank,
                    slots_on_node_for_trial=dist.local_size, gpus_on_node=self._gpus_on_node)
        try:
            if self._meter is None:
                raise RuntimeError("no energy meter (it failed to start)")
            snapshot = self._meter.read()
            self._last_good = (snapshot, time.monotonic())
        except Exception as err:
            self._failed("reading the energy meter", err)
            snapshot = resume.held_snapshot(self._last_good, self._started_at, dist.rank)
        else:
            self._hand_over(dist.rank)
        return RankEnergy.from_snapshot(snapshot, **meta).to_dict()

    def _hand_over(self, rank: int) -> None:
        """Keep this reading's absolute counters for a run that resumes this one; a directory
        that cannot take them is given up for the rest of the run (``resume.hand_over``)."""
        if self._counters_dir is None or self._meter is None:
            return
        if not resume.hand_over(self._meter, self._counters_dir, rank,
                                int(self._steps_completed()), self._node_id):
            self._counters_dir = None

    def _collect(self) -> Optional[TrialEnergy]:
        """Allgather every rank's report; on the chief, combine and add the offset."""
        local = self._local_report()
        # Collective, on every rank, not guarded: an exception here means the ranks can no
        # longer talk to each other, and hiding it would leave the others waiting forever.
        reports = self._context.distributed.allgather(local)
        if self._context.distributed.rank != 0:
            return None
        try:
            trial = combine(reports, self._opts["apportion"]).plus(self._offset)
        except Exception as err:
            self._failed("combining the ranks' energy", err)
            return None
        self._latest = trial
        self._latest_at = time.monotonic()
        return trial

    def _report(self, trial: TrialEnergy) -> None:
        try:
            step = int(self._steps_completed())
            if step == self._last_reported_step:
                return
            metrics = trial.to_metrics(
                pue=self._opts["pue"],
                carbon_intensity_g_per_kwh=self._opts["carbon_intensity_g_per_kwh"])
            self._report_group("energy", step, metrics)
            self._last_reported_step = step
        except Exception as err:
            self._failed("reporting the energy group", err)

    # -- hooks ------------------------------------------------------------------------------
    def on_training_workload_end(self, avg_metrics: Dict[str, Any],
                                 batch_metrics: Dict[str, Any]) -> None:
        if not self._enabled:
            return
        # Training until here; a checkpoint that follows claims the time from here.
        self._mark("train")
        # The same answer on every rank (a function of the step), so the collective is skipped
        # by all ranks or by none.
        if self._validation_follows is not None and self._validation_follows(int(self._steps_completed())):
            return
        trial = self._collect()
        if trial is not None:
            self._report(trial)

    def on_validation_end(self, metrics: Dict[str, Any]) -> None:
        if not self._enabled:
            return
        self._mark("train")  # the end of the validation
        trial = self._collect()
        if trial is None:
            if self._context.distributed.rank != 0:
                return  # the chief reports the validation metrics
            # Combining the ranks' reports failed this time: the figures of the last time it
            # worked carry the searcher metric (nothing measured before any), their coverage
            # scaled by the share of the time since the start that they cover, so that the
            # projection keeps growing with the time the trial runs.
            trial = self._held_trial()
        else:
            self._report(trial)
        try:
            self._add_validation_energy(metrics, trial)
        except Exception as err:
            self._failed("adding energy to the validation metrics", err)

    def _held_trial(self) -> Optional[TrialEnergy]:
        if self._latest is None or self._latest_at is None:
            return None
        held = self._latest
        span = held.duration_s + (time.monotonic() - self._latest_at)
        share = held.duration_s / span if span > 0 else 0.0
        return dataclasses.replace(held, coverage=None if held.coverage is None
                                   else held.coverage * share)

    def _add_validation_energy(self, metrics: Dict[str, Any], trial: Optional[TrialEnergy]) -> None:
        """``energy_wh``, ``energy_to_target_wh`` and the searcher metric
        ``projected_energy_to_target_wh`` (always, a finite number: ``projection``)."""
        energy_wh = trial.energy_wh if trial is not None else None
        coverage = trial.coverage if trial is not None else None
        measured = is_measured(energy_wh, coverage)
        self.measured = measured
        if self._validation_energy_wh is not None:
            # Once the trial has reported energy, every validation carries it: a key that is
            # a number in one validation and missing or null in the next makes a string
            # column in the WebUI. Both figures are lower bounds of what was spent (what went
            # unmeasured is missing, coverage says how much), so the larger stands.
            if energy_wh is None and not self._held_logged:
                self._held_logged = True
                log.warning("energy: no energy figure at this validation (coverage %s); "
                            "reporting the energy measured so far, %.6g Wh, so that the "
                            "validation metrics keep energy_wh", coverage,
                            self._validation_energy_wh)
            energy_wh = max(energy_wh or 0.0, self._validation_energy_wh)
        elif not measured:
            energy_wh = None  # not measured: not reported as a number (never as 0)
        if energy_wh is not None:
            metrics["energy_wh"] = energy_wh
            self._validation_energy_wh = energy_wh
        if not self._target_reached and metrics.get("time_to_target_s") is not None:
            self._target_reached = True
            self._energy_to_target_wh = energy_wh if measured else None
            self._target_scaled_wh = scaled_energy_wh(trial.energy_wh if trial else None, coverage)
            if not measured:
                why = (f"coverage {coverage:.3g}, below {MIN_COVERAGE:g}" if coverage is not None
                       else "no source measured anything")
                log.warning("energy: target reached, but the energy was not measured (%s): "
                            "energy_to_target_wh is not available", why)
        if self._energy_to_target_wh is not None:
            metrics["energy_to_target_wh"] = self._energy_to_target_wh
        value = metrics.get(self._target_metric)
        projected = searcher_metric(trial.energy_wh if trial is not None else None, coverage,
                                    value, self._target, self._target_scaled_wh,
                                    self._target_smaller_is_better,
                                    projection=self._opts["projection"], history=self._history)
        scaled = scaled_energy_wh(trial.energy_wh if trial is not None else None, coverage)
        if (scaled is not None and isinstance(value, (int, float)) and not isinstance(value, bool)
                and math.isfinite(value)):
            self._history.append((scaled, float(value)))
        if projected >= UNMEASURED_WH and not self._unmeasured_logged:
            self._unmeasured_logged = True
            why = (f"its coverage is {coverage:.3g}, below {MIN_COVERAGE:g}" if coverage is not None
                   else "no source measured anything")
            if measured:
                why = f"{self._target_metric} = {metrics.get(self._target_metric)!r} gives no projection"
            log.warning("energy: projected_energy_to_target_wh = %g (the searcher ranks this "
                        "trial after every measured one): %s", UNMEASURED_WH, why)
        metrics["projected_energy_to_target_wh"] = projected

    # -- checkpoint state -------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        """Trial totals so far (per component and duration), and energy to target."""
        if not self._enabled:
            return {}
        total = self._latest if self._latest is not None else self._offset
        return {
            "version": 1,
            "total": total.to_dict(),
            "target_reached": self._target_reached,
            "energy_to_target_wh": self._energy_to_target_wh,
            "target_scaled_wh": self._target_scaled_wh,
            "last_reported_step": self._last_reported_step,
            "projection_history": [list(p) for p in self._history],
        }

    def _carried_is_ahead(self, offset: TrialEnergy) -> bool:
        if self._carried is None:
            return False
        problem = resume.carried_problem(self._carried, float(self._opts["node_max_power_w"]))
        if problem is not None:
            log.warning("energy: the interrupted run's last energy report is not used (%s); "
                        "continuing from the checkpoint's totals", problem)
            self._carried = None
            return False
        return (TrialEnergy.from_metrics(self._carried).energy_j or 0.0) > (offset.energy_j or 0.0)

    def _continues_from(self, state_dict: Mapping[str, Any]) -> Optional[int]:
        """The batch of the report whose totals this run continues from."""
        try:
            if self._carried_step is not None and \
                    self._carried_is_ahead(TrialEnergy.from_dict(state_dict["total"])):
                return int(self._carried_step)
            step = state_dict.get("last_reported_step")
            return None if step is None else int(step)
        except Exception:  # a bad state: load_state_dict says so below
            return None

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Restore the totals of the run before a pause as the offset of this one."""
        if not self._enabled or not state_dict:
            return
        # The report whose totals this run continues from: the interrupted run's last (on the
        # chief, when it is ahead of the checkpoint) or the checkpoint's. Every rank counts
        # the gap from its own counters at that same report, so the chief's choice goes to
        # all (each rank loads the checkpoint, so each is here).
        step = self._continues_from(state_dict)
        if self._counters_dir is not None and self._context.distributed.size > 1:
            step = self._context.distributed.broadcast(step)
        try:
            if state_dict.get("version") != 1:
                raise ValueError(f"unknown energy state version {state_dict.get('version')!r}")
            self._offset = TrialEnergy.from_dict(state_dict["total"])
            if self._carried_is_ahead(self._offset):
                carried = TrialEnergy.from_metrics(self._carried)
                log.info("energy: continuing from the interrupted run's last report "
                         "(%.6f Wh, %.1f s) rather than the checkpoint's (%.6f Wh)",
                         carried.energy_wh, carried.duration_s, self._offset.energy_wh or 0.0)
                self._offset = carried
            self._target_reached = bool(state_dict.get("target_reached", False))
            self._energy_to_target_wh = state_dict.get("energy_to_target_wh")
            self._target_scaled_wh = state_dict.get("target_scaled_wh", self._energy_to_target_wh)
            self._last_reported_step = state_dict.get("last_reported_step")
            self._history = [(float(e), float(v))
                             for e, v in state_dict.get("projection_history", [])]
            self._latest = None
        except Exception as err:
            self._failed("restoring energy from the checkpoint", err)
            # The energy before the pause is unknown: say so through coverage 0, which
            # every later report carries, rather than silently restarting from zero.
            self._offset = TrialEnergy.empty(self._opts["apportion"])
            self._offset.coverage = 0.0
            return
        # The gap since the interrupted run's last report: whatever goes wrong there (a
        # counters file that lies, a bug) leaves the totals above as they are.
        try:
            if self._meter is not None and self._counters_dir is not None:
                resume.count_gap(self._meter, self._counters_dir, self._context.distributed.rank,
                                 step, self._node_id)
        except Exception as err:
            self._failed("counting the energy between the interrupted run and this one", err)
