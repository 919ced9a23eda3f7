"""The one entry point behind every ``trials/<model>/train.py``: the same script trains
locally and on a Determined cluster.

Locally (no cluster info)::

    python trials/unet/train.py --config experiment_configs/unet/single_gpu.yaml \\
        [--data-dir DIR] [--output-dir DIR] [--batches N | --epochs N] \\
        [--set key=value ...] [--resume CHECKPOINT|latest]

reads the hyperparameters from the experiment config (a search space gives a fixed, stated
point), validates them before any model or data work, runs Determined's local training mode,
and writes ``<output-dir>/metrics.jsonl``, checkpoints under ``<output-dir>/checkpoints``,
TensorBoard files under ``<output-dir>/tensorboard`` and ``<output-dir>/summary.json``.
Several local processes work too (``torchrun --nproc_per_node N trials/unet/train.py ...``).

On a cluster (``det experiment create CONFIG trials/unet``) Determined supplies the
hyperparameters, the distributed backend and the checkpoint to resume; the arguments are
ignored.
"""
from __future__ import annotations

import argparse
import datetime
import errno
import json
import logging
import math
import os
import pathlib
import shlex
import signal
import sys
import threading
import time
from typing import Any, Dict, Optional, Sequence, Type

import determined as det
import torch
from determined import pytorch as det_torch

from shared import configfile
from shared import checkpoints
from shared import determined_compat as compat
from shared import hparams as hpmod
from shared import localargs, outdir, resume, runlog, threads
from shared.summary import format_summary, summarize_run
from shared.data.workers import release_loader_workers

log = logging.getLogger("shared.launch")


def parse_args(argv: Optional[Sequence[str]], model_name: str,
               family: str = "segmentation") -> argparse.Namespace:
    """The local command line (``shared.localargs``, the parser ``train.py`` also runs before
    importing torch)."""
    return localargs.parse_args(argv, model_name, family)


def main(trial_cls: Type[det_torch.PyTorchTrial], argv: Optional[Sequence[str]] = None) -> int:
    info = det.get_cluster_info()
    if info is not None and info.task_type == "TRIAL":
        return run_on_cluster(trial_cls, info)
    from shared.recipes import family_of
    args = parse_args(argv, trial_cls.MODEL_NAME, family_of(trial_cls) or "segmentation")
    _setup_logging(args.verbose)
    try:
        return run_local(trial_cls, args)
    except hpmod.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # data problems surface from inside Determined's loader building
        from shared.data import DataError
        if isinstance(e, DataError):
            print(f"error: {e}", file=sys.stderr)
            return 2
        raise


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", force=True)
    # Determined logs every report at INFO (a dict per line); the progress lines below say the
    # same thing readably, so its logger is quieted unless asked for.
    logging.getLogger("determined").setLevel(logging.INFO if verbose else logging.WARNING)


# ---------------------------------------------------------------------------- cluster
def run_on_cluster(trial_cls: Type[det_torch.PyTorchTrial], info: Any) -> int:
    _setup_logging(verbose=True)
    conf = info.trial._config
    hp = hpmod.resolve(info.trial.hparams, trial_cls.MODEL_PARAMS,
                       where=f"experiment {info.trial.experiment_id} hyperparameters",
                       common=trial_cls.COMMON_PARAMS)
    with det_torch.init() as ctx:
        trial = trial_cls(ctx)
        try:
            det_torch.Trainer(trial, ctx).fit(
                max_length=det_torch.Batch(hpmod.training_length(hp, conf)),
                validation_period=det_torch.Batch(hp["validation_period"]),
                checkpoint_period=det_torch.Batch(hp["checkpoint_period"]),
                reporting_period=det_torch.Batch(hp["report_period"]),
                latest_checkpoint=info.latest_checkpoint,
                profiling_enabled=bool((conf.get("profiling") or {}).get("enabled", False)),
            )
        finally:  # a trial stopped early exits at once, not 5 s per loader worker later
            release_loader_workers()
    return 0


# ---------------------------------------------------------------------------- local
def _local_hparams(trial_cls: Type[det_torch.PyTorchTrial], args: argparse.Namespace
                   ) -> tuple[Dict[str, Any], Dict[str, Any], Dict[str, Any]]:
    """The point to train (``--set``, ``--data-dir``, ``--batches``/``--epochs`` applied), the
    config to hand Determined (its hyperparameters that point), and the config's own
    hyperparameter section (the search space, if any)."""
    if args.config is None:
        raise hpmod.ConfigError(f"--config is required locally (e.g. experiment_configs/"
                                f"{trial_cls.MODEL_NAME}/single_gpu.yaml)")
    where = str(args.config)
    conf = configfile.load_experiment_config(args.config)
    hp = configfile.point_from_space(conf["hyperparameters"], where)
    hp = configfile.apply_overrides(hp, args.set)
    if args.data_dir:
        hp["data_dir"] = args.data_dir
    if args.batches is not None:
        if not 0 < args.batches <= hpmod.MAX_BATCHES:
            raise hpmod.ConfigError(f"--batches must be in 1..{hpmod.MAX_BATCHES} (got {args.batches})")
        hp["max_batches"] = args.batches
    resolved = hpmod.resolve(hp, trial_cls.MODEL_PARAMS, where=where, common=trial_cls.COMMON_PARAMS)
    if args.epochs is not None:
        if not 0 < args.epochs <= 10 ** 6:
            raise hpmod.ConfigError(f"--epochs must be in 1..{10 ** 6} (got {args.epochs})")
        n_train = trial_cls.training_samples(resolved)
        per_epoch = n_train // resolved["global_batch_size"]
        if per_epoch == 0:
            raise hpmod.ConfigError(f"{resolved['data_dir']}: {n_train} training images is fewer "
                                    f"than global_batch_size={resolved['global_batch_size']}")
        hp["max_batches"] = resolved["max_batches"] = args.epochs * per_epoch
    if not resolved["data_dir"]:
        raise hpmod.ConfigError(f"{where}: no data_dir: pass --data-dir DIR")
    # The searcher's max_time wins on a cluster (see training_length); a local length given on
    # the command line must win here, so the local copy of the config says the same.
    searcher = dict(conf.get("searcher") or {})
    if (args.batches or args.epochs) and searcher.get("time_metric") == "batches":
        searcher["max_time"] = hp["max_batches"]
    space = conf["hyperparameters"]
    conf = {**conf, "searcher": searcher, "hyperparameters": hp}
    return hp, conf, space


def _search_point(space: Dict[str, Any], hp: Dict[str, Any]) -> Dict[str, Any]:
    """The value a local run uses for each searched hyperparameter of the config (dotted
    names; empty for a config without a search space)."""
    out: Dict[str, Any] = {}
    for name in configfile.searched_specs(space):
        node: Any = hp
        for part in name.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        out[name] = node
    return out


def _format_search_point(model: str, config: str, searcher: str, space: Dict[str, Any],
                         point: Dict[str, Any], overrides: Sequence[str]) -> str:
    """A local run trains one point of a search space, chosen without a searcher; say which,
    so that a result is never mistaken for the search's."""
    specs = configfile.searched_specs(space)
    set_keys = {item.split("=", 1)[0].strip() for item in overrides}
    lines = [f"[{model}] search point: {config} searches {len(point)} hyperparameter"
             f"{'s' if len(point) != 1 else ''} ({searcher}); a local run has no searcher and "
             f"trains this one fixed point in its place:"]
    for name, value in point.items():
        shown = format(value, ".4g") if isinstance(value, float) else str(value)
        searched, rule = configfile.describe_spec(specs[name])
        lines.append(f"  {name} = {shown}  ({searched}: {'set by --set' if name in set_keys else rule})")
    return "\n".join(lines)


def _with_search_point(write: compat.ReportTap, point: Dict[str, Any]) -> compat.ReportTap:
    """``write`` with the search point added to the ``run`` record of the local metrics file
    (what the run trained at is part of what it is; nothing else is changed)."""
    def tap(group: str, steps_completed: int, metrics: Dict[str, Any]) -> None:
        if group == "run":
            metrics = {**metrics, "search_point": point}
        write(group, steps_completed, metrics)
    return tap


def _distributed_context() -> Optional[det.core.DistributedContext]:
    """torchrun sets WORLD_SIZE; Determined's controller then wants USE_TORCH_DISTRIBUTED."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    os.environ.setdefault("USE_TORCH_DISTRIBUTED", "1")
    if not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        torch.distributed.init_process_group(backend)
    return det_distributed_context()


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def det_distributed_context() -> det.core.DistributedContext:
    """Determined's DistributedContext for the processes of an initialised torch.distributed
    group (torchrun's environment: RANK, WORLD_SIZE, LOCAL_RANK, ...), its chief's two ZMQ
    ports chosen free by rank 0 and sent to the others.

    ``DistributedContext.from_torch_distributed`` binds the chief to fixed ports (12360 and
    12360 + 16, ``INTER_TRAIN_PROCESS_COMM_PORT_1``/``_2``), so two multi-process runs on one
    machine (two users, two test suites) collided there. Set those variables to choose the
    ports yourself (a firewall between nodes); they are then used as given."""
    env = os.environ
    ports = [None, None]
    if "INTER_TRAIN_PROCESS_COMM_PORT_1" not in env:
        if torch.distributed.get_rank() == 0:
            ports = [_free_port(), _free_port()]
        torch.distributed.broadcast_object_list(ports, src=0)
    chosen = {"pub_port": ports[0], "pull_port": ports[1]} if ports[0] else {}
    return det.core.DistributedContext(
        rank=int(env["RANK"]), size=int(env["WORLD_SIZE"]), local_rank=int(env["LOCAL_RANK"]),
        local_size=int(env["LOCAL_WORLD_SIZE"]), cross_rank=int(env["GROUP_RANK"]),
        cross_size=int(env["GROUP_WORLD_SIZE"]), chief_ip=env.get("DET_CHIEF_IP"), **chosen)


class _Progress:
    """One readable line per report, with throughput and time left. With ``stop_at_target``
    the time to the target is unknown: the time left to ``max_batches`` is its bound, shown
    as ``eta <= H:MM:SS (or at the target)``."""

    def __init__(self, model: str, max_batches: int, global_batch: int, first_batch: int = 0,
                 shown: Sequence[str] = ("miou", "pixel_accuracy"), stop_at_target: bool = False) -> None:
        self.model, self.max_batches, self.gbs, self.shown = model, max_batches, global_batch, shown
        self.stop_at_target = stop_at_target
        self.t0 = time.monotonic()
        self.last = (self.t0, first_batch)

    def __call__(self, group: str, steps: int, m: Dict[str, Any]) -> None:
        now = time.monotonic()
        if group == "training":
            t_prev, s_prev = self.last
            rate = (steps - s_prev) / max(1e-9, now - t_prev)
            left = (self.max_batches - steps) / rate if rate > 0 else float("nan")
            self.last = (now, steps)
            eta = f"eta <= {_hms(left)} (or at the target)" if self.stop_at_target else f"eta {_hms(left)}"
            print(f"[{self.model}] batch {steps}/{self.max_batches}  loss {float(m.get('loss', 'nan')):.4f}  "
                  f"lr {float(m.get('lr', 'nan')):.2e}  {rate * self.gbs:.1f} img/s  "
                  f"{eta}", flush=True)
        elif group == "validation":
            extra = "".join(f"  {k} {m[k]}" for k in ("time_to_target_s", "energy_wh") if k in m)
            shown = "".join(f"  {k} {float(m[k]):.2f}" for k in self.shown if k in m)
            print(f"[{self.model}] validation at batch {steps}:{shown}  "
                  f"validation_loss {float(m['validation_loss']):.4f}{extra}", flush=True)


def _hms(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    s = int(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _enter_trial_dir(trial_cls: Type[det_torch.PyTorchTrial], hp: Dict[str, Any]) -> None:
    """Run from the trial directory, as a cluster runs from the context directory.

    Determined's local mode copies the working directory into every checkpoint (``code/``,
    filtered by ``.detignore``); started from the repository root that is the whole checkout,
    virtualenv included (gigabytes per checkpoint). Paths the user gave are made absolute first.
    """
    for key in ("data_dir", "pretrained_path"):
        if hp.get(key):
            hp[key] = str(pathlib.Path(hp[key]).expanduser().resolve())
    module = sys.modules.get(trial_cls.__module__)
    trial_dir = pathlib.Path(getattr(module, "__file__", "") or ".").resolve().parent
    os.chdir(trial_dir)


def _chief_does(distributed: Optional[det.core.DistributedContext], fn: Any) -> Any:
    """``fn()`` on the chief only (the output directory is the chief's to open), its result
    or its error on every rank: a rank must not wait in a collective for a chief that failed."""
    if distributed is None:
        return fn()
    outcome: Any = None
    if distributed.rank == 0:
        try:
            outcome = ("ok", fn())
        except hpmod.ConfigError as e:
            outcome = ("error", e)
    outcome = distributed.broadcast(outcome)
    if outcome[0] == "error":
        raise outcome[1]
    return outcome[1]


def _open_output(trial_cls: Type[det_torch.PyTorchTrial], args: argparse.Namespace,
                 hp: Dict[str, Any], out: pathlib.Path, lock: outdir.RunLock) -> Optional[str]:
    """Make and lock the output directory, find the checkpoint to resume and compare its
    hyperparameters with these (``shared.resume``); returns the checkpoint's id or None."""
    outdir.prepare(out)
    lock.acquire()
    try:
        ckpt_dir = out / "checkpoints"
        if (out / "metrics.jsonl").exists() and not args.resume:
            raise hpmod.ConfigError(f"{out} already holds a run (metrics.jsonl); pass --resume "
                                    f"latest to continue it, or choose another --output-dir")
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        latest = checkpoints.resolve_resume(args.resume, ckpt_dir)
        if latest:
            resolved = hpmod.resolve(hp, trial_cls.MODEL_PARAMS, where=str(args.config),
                                     common=trial_cls.COMMON_PARAMS)
            changed = resume.check(ckpt_dir / latest, trial_cls, resolved)
            if changed:
                log.warning("--resume: hyperparameters changed since checkpoint %s, in effect from "
                            "its batch %d on: %s", latest, checkpoints.batches_of(ckpt_dir / latest),
                            "; ".join(changed))
        return latest
    except BaseException:
        lock.release()
        raise


#: errors of a write that are the output directory's (its file system), not the program's
_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO,
                 errno.ENOTDIR, errno.EFBIG)


def run_local(trial_cls: Type[det_torch.PyTorchTrial], args: argparse.Namespace) -> int:
    hp, conf, space = _local_hparams(trial_cls, args)
    point = _search_point(space, hp)
    out = args.output_dir or pathlib.Path("runs") / (
        f"{trial_cls.MODEL_NAME}-{datetime.datetime.now():%Y%m%d-%H%M%S}")
    out = pathlib.Path(out).expanduser().resolve()
    if args.resume and args.resume != "latest":
        args.resume = str(pathlib.Path(args.resume).expanduser().resolve())
    _enter_trial_dir(trial_cls, hp)
    distributed = _distributed_context()
    lock = outdir.RunLock(out)  # held by the chief for the whole run
    latest = _chief_does(distributed, lambda: _open_output(trial_cls, args, hp, out, lock))
    try:
        return _train(trial_cls, args, hp, conf, space, point, out, latest, distributed)
    except OSError as err:
        # a full disk, a read-only remount, a quota: one line, the path and what is safe
        path = pathlib.Path(err.filename) if err.filename else out
        if err.errno not in _WRITE_ERRNOS or not path.is_relative_to(out):
            raise
        raise outdir.write_error(path, err, checkpoints.what_is_safe(out / "checkpoints")) from None
    finally:
        lock.release()


def _train(trial_cls: Type[det_torch.PyTorchTrial], args: argparse.Namespace, hp: Dict[str, Any],
           conf: Dict[str, Any], space: Dict[str, Any], point: Dict[str, Any], out: pathlib.Path,
           latest: Optional[str], distributed: Optional[det.core.DistributedContext]) -> int:
    ckpt_dir = out / "checkpoints"
    chief = distributed is None or distributed.rank == 0
    # torch's one thread per core stalls on a busy machine: the idle cores, or OMP_NUM_THREADS
    cpu = threads.choose()
    threads.apply(cpu)
    if chief:
        print(f"[{trial_cls.MODEL_NAME}] {cpu.line()}", flush=True)
    if chief and point:
        print(_format_search_point(trial_cls.MODEL_NAME, args.config.name,
                                   str(conf["searcher"].get("name", "?")), space, point, args.set),
              flush=True)
    with det_torch.init(hparams=hp, exp_conf=conf, distributed=distributed) as ctx:
        # Local mode would store checkpoints in ~/.local/share/determined and TensorBoard files
        # in ./runs; keep everything of a run under its output directory instead.
        compat.keep_local_run_under(ctx, ckpt_dir, out / "tensorboard")
        energy: list = []
        if chief:
            if latest:
                # Reports made after the checkpoint by the interrupted run are superseded by
                # this one's: moved aside, so that the file reads as one run.
                superseded = runlog.supersede_after(out / "metrics.jsonl",
                                                    checkpoints.batches_of(ckpt_dir / latest))
                energy = [r for r in superseded if r.get("group") == "energy"]
            mf = runlog.attach(out / "metrics.jsonl")
            compat.tap_reports(ctx, _with_search_point(mf.write, point) if point else mf.write)
        trial = trial_cls(ctx)
        trial.energy_counters_dir = out / "energy_counters"
        if energy:
            trial.energy_carried = energy[-1]["metrics"]
            trial.energy_carried_step = int(energy[-1]["steps_completed"])
        if chief:
            first = checkpoints.batches_of(ckpt_dir / latest) if latest else 0
            mf.listeners.append(_Progress(trial_cls.MODEL_NAME, trial.max_batches,
                                          ctx.get_global_batch_size(), first, trial_cls.SHOWN_METRICS,
                                          stop_at_target=bool(trial.hp["stop_at_target"])))
            print(f"[{trial_cls.MODEL_NAME}] output {out}  ({trial.num_parameters / 1e6:.2f}M parameters, "
                  f"{trial.max_batches} batches, device {trial.device}, precision {trial.precision})",
                  flush=True)
        try:
            resumed_at = checkpoints.batches_of(ckpt_dir / latest) if latest else 0
            with _StopOnSignal(trial, ctx, distributed is not None) as stop, \
                    compat.local_fit_resumes_at(resumed_at):
                det_torch.Trainer(trial, ctx).fit(
                    max_length=det_torch.Batch(trial.max_batches),
                    validation_period=det_torch.Batch(trial.hp["validation_period"]),
                    checkpoint_period=det_torch.Batch(trial.hp["checkpoint_period"]),
                    reporting_period=det_torch.Batch(trial.hp["report_period"]),
                    checkpoint_policy="none",
                    latest_checkpoint=latest,
                )
        finally:
            release_loader_workers()  # a run stopped early exits at once (shared.data.workers)
            runlog.detach()
    if chief:
        summary = summarize_run(out)
        with outdir.naming(out / "summary.json"):
            (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        print(format_summary(summary, trial_cls.MODEL_NAME), flush=True)
    if stop.signum is not None and trial.batches_trained < trial.max_batches:
        done = checkpoints.complete_checkpoints(ckpt_dir)
        where = (f"checkpoint {done[-1].name} (batch {checkpoints.batches_of(done[-1])})" if done
                 else "no checkpoint")
        if chief:
            print(f"[{trial_cls.MODEL_NAME}] stopped by {signal.Signals(stop.signum).name}: {where}; "
                  f"continue with: {_resume_command(out)}", flush=True)
        return 128 + stop.signum  # the shell's convention for "ended by signal N"
    return 0


def _resume_command(out: pathlib.Path) -> str:
    argv = list(sys.argv)
    for flag in ("--resume", "--output-dir"):  # replaced below, with their values
        while flag in argv:
            i = argv.index(flag)
            del argv[i:i + 2]
    return " ".join(shlex.quote(a) for a in ["python", *argv, "--output-dir", str(out),
                                             "--resume", "latest"])


class _StopOnSignal:
    """SIGTERM or SIGINT during a local run: finish the batch in progress, checkpoint, write
    the summary, close the energy sources, and exit with 128 + the signal's number.

    A single process stops at its next batch (``RecipeTrial.train_batch`` raises Determined's
    checkpoint-and-exit); processes of a multi-process run stop together at the next report
    boundary, where every rank learns whether any rank got a signal (``_RunInfoCallback``), since
    the signal reaches them at different batches.
    A second Ctrl-C aborts at once. On a cluster none of this is installed: Determined's
    preemption does the same there."""

    def __init__(self, trial: Any, context: Any, distributed: bool) -> None:
        self.trial, self.context, self.distributed = trial, context, distributed
        self.signum: Optional[int] = None
        self._previous: Dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # asked twice: stop without checkpointing
        self.signum = signum
        name = signal.Signals(signum).name
        if self.distributed:  # agreed by every rank at the next report (shared.trial)
            self.trial.stop_signal_pending = name
        else:
            self.trial.stop_signal = name
        log.warning("%s: finishing the current batch, then checkpointing and stopping%s", name,
                    " (Ctrl-C again to abort without a checkpoint)" if signum == signal.SIGINT else "")

    def __enter__(self) -> "_StopOnSignal":
        self.trial.agree_on_signals = self.distributed
        if threading.current_thread() is threading.main_thread():  # signals reach it only
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
