"""Every use of Determined that is not its documented public API, in one file.

Determined 0.38.1 (March 2025) is its last release; a later fork, or a site's patched build,
may move what is touched here. Each function below says what it relies on, and
``tests/test_determined_compat.py`` pins each of them to 0.38.1's behaviour against the real
package, so that adapting to another Determined means editing this file and nothing else.
Code elsewhere in the repository reaches Determined's internals only through here.

What is private, and why we need it:

- ``PyTorchTrialContext._core``: the trial context keeps its Core API context private, yet
  custom metric groups (``run``, ``energy``, ``resources``) can only be reported through
  ``core_context.train.report_metrics(group=...)`` (``report_group``).
- ``TrainContext._report_trial_metrics``: in local mode every report, built-in and custom,
  passes through this one method; the local ``metrics.jsonl`` taps it to see exactly what a
  master would (``tap_reports``).
- the dummy (off-cluster) checkpoint storage manager and TensorBoard directory: local mode
  would write to ``~/.local/share/determined`` and ``./runs``; a local run keeps everything
  under its output directory instead, each checkpoint written atomically
  (``keep_local_run_under``);
- the local trial controller's ``steps_completed``: Determined's local mode restarts its batch
  count at 0 after a resume, so validations and checkpoints drift from their period; a local
  resume passes the checkpoint's count, as the master does on a cluster
  (``local_fit_resumes_at``);
- ``det.pytorch._ShouldExit``: the exception the trial controller treats as "checkpoint and
  stop"; a local run raises it on SIGTERM/SIGINT (``exit_after_checkpoint``).
"""
from __future__ import annotations

import contextlib
import pathlib
import shutil
from typing import Any, Callable, Dict, Iterator, List, Optional

import torch
from determined import pytorch as det_torch

#: the release every access below was written against and is tested with
PINNED_VERSION = "0.38.1"

ReportTap = Callable[[str, int, Dict[str, Any]], None]


def report_group(context: det_torch.PyTorchTrialContext, group: str, steps_completed: int,
                 metrics: Dict[str, Any]) -> None:
    """Report ``metrics`` as the custom group ``group`` (shown under its name in the WebUI),
    and write its numbers to the trial's TensorBoard as ``<group>/<metric>`` (Determined
    writes only training and validation there: ``shared.tensorboard_scalars``). The scalars
    are written first, so that the upload Determined makes with this report carries them.

    Relies on: ``PyTorchTrialContext._core`` being the Core API context (0.38.1 sets it in the
    constructor; the public ``report_metrics`` of the trial context does not exist)."""
    from shared.tensorboard_scalars import add_scalars
    add_scalars(context, group, steps_completed, metrics)
    context._core.train.report_metrics(group=group, steps_completed=steps_completed,
                                       metrics=metrics)


def tap_reports(context: det_torch.PyTorchTrialContext, tap: ReportTap) -> None:
    """Call ``tap(group, steps_completed, metrics)`` for every metric report the trial makes,
    built-in (training, validation) and custom, before it is sent on.

    Relies on: every report going through ``TrainContext._report_trial_metrics(group,
    steps_completed, metrics, batch_metrics=None)`` (true of 0.38.1's local and cluster
    modes)."""
    train = context._core.train
    original = train._report_trial_metrics

    def report(group: str, steps_completed: int, metrics: Dict[str, Any],
               batch_metrics: Any = None) -> Any:
        tap(group, steps_completed, metrics)
        return original(group, steps_completed, metrics, batch_metrics)

    train._report_trial_metrics = report


def keep_local_run_under(context: det_torch.PyTorchTrialContext, checkpoints: pathlib.Path,
                         tensorboard: pathlib.Path) -> None:
    """Off-cluster, write checkpoints to ``checkpoints`` (atomically: see
    ``shared.checkpoints``) and TensorBoard files to ``tensorboard`` rather than Determined's
    defaults.

    Relies on: the dummy checkpoint context's ``_storage_manager`` and the dummy train
    context's ``_tbd_directory`` attributes, and the storage manager's ``store_path(dst)``
    context manager wrapping the whole write, ``metadata.json`` included (0.38.1)."""
    context._core.checkpoint._storage_manager = _atomic_shared_fs(checkpoints)
    context._core.train._tbd_directory = pathlib.Path(tensorboard)


def _atomic_shared_fs(base: pathlib.Path) -> Any:
    from determined.common import storage

    from shared import checkpoints

    class AtomicSharedFS(storage.SharedFSStorageManager):
        """Determined's shared-file-system storage, writing each checkpoint under a hidden
        name and renaming it into place once complete."""

        @contextlib.contextmanager
        def store_path(self, dst: str) -> Iterator[pathlib.Path]:
            final = pathlib.Path(self._base_path) / dst
            partial = checkpoints.partial_path(final.parent, dst)
            partial.mkdir(parents=True)
            try:
                yield partial
            except (OSError, RuntimeError) as err:  # a full disk, an I/O error, torch's writer
                raise checkpoints.write_failed(partial, final, err) from err
            except BaseException:
                shutil.rmtree(partial, ignore_errors=True)
                raise
            checkpoints.commit(partial, final)

    return AtomicSharedFS(str(base))


@contextlib.contextmanager
def local_fit_resumes_at(batches: int) -> Iterator[None]:
    """Within this block, a local ``Trainer.fit`` that resumes from a checkpoint of ``batches``
    batches counts on from there, as a cluster trial does: batch indices (hence the phase of
    validation, checkpoint and report periods, the epoch number, the data loader's position)
    continue at ``batches`` instead of restarting at 0.

    Relies on: local mode building ``_PyTorchTrialController`` with keyword arguments
    ``local_training=True`` and ``steps_completed=0`` (a cluster passes the master's count),
    and the controller starting its batch enumeration and data skipping at
    ``steps_completed`` (0.38.1)."""
    from determined.pytorch import _pytorch_trial
    cls = _pytorch_trial._PyTorchTrialController
    original = cls.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("local_training") and not kwargs.get("steps_completed"):
            kwargs["steps_completed"] = batches
        original(self, *args, **kwargs)

    cls.__init__ = init
    try:
        yield
    finally:
        cls.__init__ = original


def read_checkpoint_file(context: det_torch.PyTorchTrialContext, storage_id: str,
                         name: str) -> Optional[bytes]:
    """The bytes of the file ``name`` of checkpoint ``storage_id`` (None if it has none), read
    at trial startup, before Determined loads the checkpoint: on a cluster only that file is
    downloaded. Every rank must call it (the download is shared by each node's ranks).

    Relies on: ``PyTorchTrialContext._core`` (as ``report_group``), the core checkpoint
    context's ``restore_path(storage_id, selector=...)`` and its ``_storage_manager``: a
    shared file system exposes the checkpoint directly and warns at a selector (0.38.1)."""
    from determined.common import storage

    checkpoint = context._core.checkpoint
    manager = checkpoint._storage_manager
    if isinstance(manager, storage.SharedFSStorageManager):  # read in place, on every rank
        opened = manager.restore_path(storage_id, None)
    else:
        opened = checkpoint.restore_path(storage_id, selector=lambda p: p == name)
    with opened as path:
        f = pathlib.Path(path) / name
        return f.read_bytes() if f.is_file() else None


#: what ``torch.load(weights_only=True)`` must also accept to read a Determined 0.38 checkpoint
#: (``state_dict.pth``): the numpy arrays and scalars of its saved RNG state (numpy's own
#: state is an array of uint32) and of callback states. Types and numpy's array constructor
#: only: nothing that runs code of the file's choosing.
def _numpy_safe_globals() -> List[Any]:
    import numpy as np
    core = getattr(np, "_core", None) or np.core
    names = ("UInt32DType", "Int64DType", "Int32DType", "Float64DType", "Float32DType",
             "BoolDType")
    return [core.multiarray._reconstruct, core.multiarray.scalar, np.ndarray, np.dtype,
            *(getattr(np.dtypes, n) for n in names if hasattr(np.dtypes, n))]


def load_checkpoints_as_data() -> None:
    """Make Determined's own ``torch.load`` of a checkpoint (in ``_PyTorchTrialController._load``,
    which passes no ``weights_only``: torch >= 2.6 then loads with ``weights_only=True``)
    accept the numpy RNG state Determined saves, instead of turning the check off
    (``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``, which let a crafted checkpoint run code), and make
    its ``pickle.load`` of ``trial_state.pkl`` refuse every global (that file holds a dict of
    numbers and strings). Idempotent; process-wide, as torch's allow-list is.

    Relies on: ``_load`` calling ``torch.load(path, map_location="cpu")`` and
    ``pickle.load(f)`` through the module's ``pickle`` name, and ``_save`` calling
    ``pickle.dump`` through it (0.38.1)."""
    import torch.serialization
    from determined.pytorch import _pytorch_trial

    torch.serialization.add_safe_globals(_numpy_safe_globals())
    if not isinstance(_pytorch_trial.pickle, _DataOnlyPickle):
        _pytorch_trial.pickle = _DataOnlyPickle()


class _DataOnlyPickle:
    """The ``pickle`` module as Determined's trial controller sees it: ``dump`` as usual,
    ``load`` through ``shared.checkpoints.load_data_pickle`` (no globals)."""

    def __getattr__(self, name: str) -> Any:
        import pickle
        return getattr(pickle, name)

    @staticmethod
    def load(f: Any) -> Any:
        from shared.checkpoints import load_data_pickle
        return load_data_pickle(f)


def exit_after_checkpoint() -> None:
    """From ``train_batch``: make Determined checkpoint what has been trained (the batches
    before this one) and return from ``Trainer.fit``, as a preemption does.

    Relies on: ``det.pytorch._ShouldExit`` raised inside the training loop being caught by
    the trial controller, which checkpoints unsaved work and exits (0.38.1)."""
    raise det_torch._ShouldExit()


class DeterminedRuntime:
    """``shared.engine``'s runtime inside a Determined trial: the trial context's own wrapping
    methods, set up so that no batch waits for the GPU.

    Determined 0.38 adds two host-GPU synchronisations per batch by default: it moves the batch
    with a blocking copy, which waits for every kernel already queued, and it copies each
    tensor that ``train_batch``/``evaluate_batch`` return to the host. Either keeps the host
    from queueing batch n+1 while the GPU runs batch n, and the GPU idles for the Python
    between them. So automatic moving is turned off (the engine moves batches itself,
    non-blocking) and the losses live in reducers summed on the device and read once per
    report; the batch methods return only host numbers.
    """

    def __init__(self, context: det_torch.PyTorchTrialContext) -> None:
        self.context = context
        # public but "experimental" in 0.38.1
        context.experimental.disable_auto_to_device()

    def get_global_batch_size(self) -> int:
        return self.context.get_global_batch_size()

    def wrap_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return self.context.wrap_model(model)

    def wrap_optimizer(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        return self.context.wrap_optimizer(optimizer)

    def wrap_lr_scheduler(self, scheduler: Any) -> Any:
        # The engine's schedules are per batch (warm-up, then poly decay).
        return self.context.wrap_lr_scheduler(
            scheduler, step_mode=det_torch.LRScheduler.StepMode.STEP_EVERY_BATCH)

    def wrap_scaler(self, scaler: Any) -> Any:
        return self.context.wrap_scaler(scaler)

    def wrap_reducer(self, reducer: Any, name: Optional[str], for_training: bool = True,
                     for_validation: bool = True) -> Any:
        # Our reducers (shared.metrics) have MetricReducer's three methods without inheriting
        # from it, so that they import no Determined; MetricReducer is an abc, and registering
        # the class is what wrap_reducer's isinstance check asks for.
        if not isinstance(reducer, det_torch.MetricReducer):
            det_torch.MetricReducer.register(type(reducer))
        return self.context.wrap_reducer(reducer, name=name, for_training=for_training,
                                         for_validation=for_validation)

    def backward(self, loss: torch.Tensor) -> None:
        self.context.backward(loss)

    def step_optimizer(self, optimizer: torch.optim.Optimizer,
                       clip_grads: Optional[Callable[[List[torch.Tensor]], None]] = None,
                       scaler: Any = None) -> None:
        self.context.step_optimizer(optimizer, clip_grads=clip_grads, scaler=scaler)
