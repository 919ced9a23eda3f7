"""``SegmentationTrial``: the Determined PyTorchTrial every segmentation recipe derives from.

It owns what the recipes share (data, loss, optimiser, schedule, mixed precision, mIoU,
time-to-target and the energy hook), so that ``trials/<model>/train.py`` only says which model
to build. The training step is written out below in plain PyTorch on purpose: the source study
(000, section 4.1.3) could not optimise a framework whose loop it could not see.
"""
from __future__ import annotations

import logging
import math
import random
import time
from typing import Any, Dict, Mapping, Optional

import numpy as np
import torch
import torch.nn.functional as F
from determined import pytorch as det_torch

from shared import hparams as hpmod
from shared import runlog
from shared.data.on_device import training_batch
from shared.metrics import ConfusionMatrix, DeviceMean, per_class_dict
from shared.schedule import WarmupPoly, scaled_lr

log = logging.getLogger("shared.trial")

IGNORE_INDEX = 255
#: validation metrics that only exist when some energy source measured something
ENERGY_METRICS = ("projected_energy_to_target_wh", "energy_to_target_wh", "energy_wh")


def segmentation_loss(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Cross-entropy in float32 at label resolution, pixels labelled 255 ignored.

    Models return logits at their own stride (SegFormer 1/4, Segmenter 1/16); the loss is taken
    at label resolution, as in the reference implementations. The logits are widened to float32
    before upsampling, not after: upsampled in bf16 and then cast, the full-resolution
    150-channel tensor would be written once in bf16 and again in float32, and its gradient
    cast back on the way down (16 x 150 x 512 x 512 elements, 8 bytes each way instead of 4).
    Interpolating in float32 is also the more exact of the two.
    """
    logits = logits.float()
    if logits.shape[-2:] != masks.shape[-2:]:
        logits = F.interpolate(logits, size=masks.shape[-2:], mode="bilinear", align_corners=False)
    return F.cross_entropy(logits, masks, ignore_index=IGNORE_INDEX)


def pick_precision(requested: str, device: torch.device) -> str:
    """bf16 where the GPU supports it, fp16 with a grad scaler on older GPUs, fp32 on CPU.

    CPU autocast in bf16 exists but is slower than fp32 on most CPUs and changes numerics, so
    "auto" keeps fp32 there; asking for bf16 explicitly on CPU is honoured.
    """
    if requested == "fp16" and device.type != "cuda":
        raise hpmod.ConfigError("hyperparameter 'precision' = 'fp16' needs a CUDA GPU "
                                "(its grad scaler is CUDA only); use 'auto', 'bf16' or 'fp32'")
    if requested != "auto":
        return requested
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def wrap_optimisation(context: det_torch.PyTorchTrialContext, model: torch.nn.Module,
                      hp: Mapping[str, Any], max_batches: int, precision: str):
    """What every recipe's optimisation shares, wrapped for Determined: the lr scaled
    linearly from ``base_batch_size`` to the global batch, AdamW/SGD without decay on norms and
    biases, warm-up then poly decay stepped every batch, and a grad scaler under fp16.
    Returns (lr, optimizer, scheduler, scaler or None)."""
    lr = scaled_lr(hp["lr"], hp["base_batch_size"], context.get_global_batch_size())
    optimizer = context.wrap_optimizer(SegmentationTrial._build_optimizer(model, hp, lr))
    schedule = WarmupPoly(hp["warmup_batches"], max_batches, hp["poly_power"],
                          hp["warmup_ratio"], hp["min_lr_ratio"])
    scheduler = context.wrap_lr_scheduler(
        torch.optim.lr_scheduler.LambdaLR(optimizer, schedule),
        step_mode=det_torch.LRScheduler.StepMode.STEP_EVERY_BATCH)
    scaler = context.wrap_scaler(torch.amp.GradScaler("cuda")) if precision == "fp16" else None
    return lr, optimizer, scheduler, scaler


class TargetCallback(det_torch.PyTorchCallback):
    """Time and batches to the first validation whose target metric (``trial.TARGET_METRIC``,
    ``miou`` for segmentation) reaches its target (hyperparameter ``trial.TARGET_PARAM``).

    Wall time counts from the trial's start and carries over pause/resume through the
    checkpoint (state_dict), so a resumed trial does not restart its clock. It adds
    ``time_to_target_s`` and ``batches_to_target`` to that validation's metrics (and to every
    later one, so the WebUI's latest-validation columns show them) by updating the metrics dict
    that Determined reports right after ``on_validation_end``.
    """

    def __init__(self, trial: "SegmentationTrial") -> None:
        self.trial = trial
        self.metric = trial.TARGET_METRIC
        self.target = float(trial.hp[trial.TARGET_PARAM])
        self.elapsed_before = 0.0
        self.t0 = time.monotonic()
        self.reached: Optional[Dict[str, float]] = None

    def elapsed(self) -> float:
        return self.elapsed_before + (time.monotonic() - self.t0)

    def on_trial_startup(self, first_batch_idx: int, checkpoint_uuid: Optional[str]) -> None:
        # Runs before the checkpoint is loaded. On a cluster first_batch_idx is the batches
        # already trained; in local mode it is always 0 and load_state_dict sets the count.
        self.t0 = time.monotonic()
        self.trial.batches_trained = first_batch_idx

    def on_validation_end(self, metrics: Dict[str, Any]) -> None:
        if self.reached is None and metrics.get(self.metric, -1.0) >= self.target:
            self.reached = {"time_to_target_s": round(self.elapsed(), 3),
                            "batches_to_target": int(self.trial.batches_trained)}
            log.info("target %s %.2f reached: %.2f at batch %d after %.1f s", self.metric, self.target,
                     metrics[self.metric], self.reached["batches_to_target"], self.reached["time_to_target_s"])
            if self.trial.hp["stop_at_target"]:
                self.trial.context.set_stop_requested(True)
        if self.reached is not None:
            metrics.update(self.reached)
        if self.trial.context.distributed.rank == 0:
            self.trial.write_local_details()

    def state_dict(self) -> Dict[str, Any]:
        return {"elapsed_s": self.elapsed(), "reached": self.reached,
                "batches_trained": self.trial.batches_trained}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self.elapsed_before = float(state_dict.get("elapsed_s", 0.0))
        self.t0 = time.monotonic()
        self.reached = state_dict.get("reached")
        self.trial.batches_trained = int(state_dict.get("batches_trained", self.trial.batches_trained))


class SegmentationTrial(det_torch.PyTorchTrial):
    """Subclasses set ``MODEL_PARAMS`` (their own hyperparameter schema) and ``build_model``."""

    #: model-specific hyperparameters: name -> shared.hparams.Param
    MODEL_PARAMS: Mapping[str, hpmod.Param] = {}
    #: the hyperparameters every trial of this family shares
    COMMON_PARAMS: Mapping[str, hpmod.Param] = hpmod.COMMON
    #: the validation metric compared with the target, and the hyperparameter holding it
    TARGET_METRIC = "miou"
    TARGET_PARAM = "target_miou"
    #: validation metrics shown in local progress lines
    SHOWN_METRICS = ("miou", "pixel_accuracy")
    #: validation metrics reported at every validation, and whether larger is better: what a
    #: searcher may rank trials by (time/energy to target exist only once the target is reached)
    SEARCHER_METRICS: Mapping[str, bool] = {
        "miou": True, "pixel_accuracy": True, "mean_accuracy": True, "validation_loss": False,
        "energy_wh": False, "projected_energy_to_target_wh": False,
    }
    #: a short name for logs and reports
    MODEL_NAME = "model"

    def build_model(self, hp: Mapping[str, Any]) -> torch.nn.Module:
        raise NotImplementedError

    @classmethod
    def training_samples(cls, hp: Mapping[str, Any]) -> int:
        """Training images under ``hp["data_dir"]`` (for ``--epochs`` on the command line)."""
        from shared.data import find_samples
        pairs, _ = find_samples(hp["data_dir"], "training", hp["skip_bad_samples"])
        return len(pairs)

    # ------------------------------------------------------------------ construction
    def __init__(self, context: det_torch.PyTorchTrialContext) -> None:
        self.context = context
        self.hp = hpmod.resolve(context.get_hparams(), self.MODEL_PARAMS, where="hyperparameters",
                                common=self.COMMON_PARAMS)
        hp = self.hp
        exp_conf = _experiment_config(context)
        self.max_batches = hpmod.training_length(hp, exp_conf)
        metric = (exp_conf.get("searcher") or {}).get("metric")
        self.energy_required = metric in ENERGY_METRICS
        if self.energy_required and not hp["energy"]["enabled"]:
            raise hpmod.ConfigError(f"the searcher minimises '{metric}' but energy.enabled is false: "
                                    f"the trial would never report it")
        self._seed(hp)

        self.device = context.device
        self.precision = pick_precision(hp["precision"], self.device)
        cl = hp["channels_last"]
        # channels_last lets cuDNN pick NHWC kernels (tensor cores without transposes); on CPU
        # it is usually slower, so "auto" turns it on for CUDA only.
        self.channels_last = (self.device.type == "cuda") if cl == "auto" else bool(cl)
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)

        model = self.build_model(hp)
        self.num_parameters = count_parameters(model)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = context.wrap_model(model)

        global_bs = context.get_global_batch_size()
        self.lr, self.optimizer, self.scheduler, self.scaler = wrap_optimisation(
            context, model, hp, self.max_batches, self.precision)

        self.confusion = context.wrap_reducer(
            ConfusionMatrix(hp["num_classes"], IGNORE_INDEX), name=None, for_training=False)
        self.train_loss, self.val_loss = no_host_sync_per_batch(context, "validation_loss")
        self.batches_trained = 0
        self._skipped: Optional[torch.Tensor] = None
        self.target_callback = TargetCallback(self)
        log.info("%s: %.2fM parameters, precision %s, channels_last %s, lr %.3g (base %.3g x %d/%d)",
                 self.MODEL_NAME, self.num_parameters / 1e6, self.precision, self.channels_last,
                 self.lr, hp["lr"], global_bs, hp["base_batch_size"])

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

    @staticmethod
    def _build_optimizer(model: torch.nn.Module, hp: Mapping[str, Any], lr: float) -> torch.optim.Optimizer:
        # No weight decay on norms and biases (1-D tensors): decaying them only fights the
        # normalisation and is the usual practice for both AdamW and SGD recipes.
        decay, no_decay = [], []
        for p in model.parameters():
            if p.requires_grad:
                (no_decay if p.ndim <= 1 else decay).append(p)
        groups = [{"params": decay, "weight_decay": hp["weight_decay"]},
                  {"params": no_decay, "weight_decay": 0.0}]
        fused = {"fused": True} if torch.cuda.is_available() and next(model.parameters()).is_cuda else {}
        if hp["optimizer"] == "adamw":
            return torch.optim.AdamW(groups, lr=lr, **fused)
        return torch.optim.SGD(groups, lr=lr, momentum=hp["momentum"], **fused)

    # ------------------------------------------------------------------ data
    def _dataset(self, split: str):
        from shared.data import build_dataset
        return build_dataset(self.hp, split)

    def _loader_kwargs(self) -> Dict[str, Any]:
        workers = self.hp["workers_per_slot"]
        return {"num_workers": workers, "pin_memory": self.device.type == "cuda",
                "persistent_workers": workers > 0}

    def build_training_data_loader(self) -> det_torch.DataLoader:
        ds = self._dataset("training")
        bs = self.context.get_per_slot_batch_size()
        if len(ds) < self.context.get_global_batch_size():
            raise hpmod.ConfigError(f"{self.hp['data_dir']}: {len(ds)} training images is fewer than "
                                    f"global_batch_size={self.context.get_global_batch_size()}")
        # drop_last keeps every step at the configured batch (BatchNorm statistics, lr scaling)
        return det_torch.DataLoader(ds, batch_size=bs, shuffle=True, drop_last=True,
                                    **self._loader_kwargs())

    def build_validation_data_loader(self) -> det_torch.DataLoader:
        from shared.data import val_collate
        ds = self._dataset("validation")
        return det_torch.DataLoader(ds, batch_size=self.hp["val_batch_size_per_slot"], shuffle=False,
                                    collate_fn=val_collate, **self._loader_kwargs())

    # ------------------------------------------------------------------ steps
    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.autocast_dtype,
                              enabled=self.autocast_dtype is not None)

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    def _to_device(self, *tensors: torch.Tensor) -> list:
        # Queued behind the previous step instead of waiting for it (no_host_sync_per_batch);
        # the loader's batches are in pinned memory on a GPU, which makes the copy asynchronous.
        return [t.to(self.device, non_blocking=True) for t in tensors]

    def train_batch(self, batch: Any, epoch_idx: int, batch_idx: int) -> Dict[str, Any]:
        images, masks, aug, skipped = self._to_device(*batch)
        self._count_skipped(skipped)
        # The loader's uint8 crops become the model's input here, on the device: colour
        # augmentation, normalisation, channels_last (shared/data/on_device.py).
        images, masks = training_batch(images, masks, aug, self.channels_last)
        with self._autocast():
            logits = self.model(images)
            loss = segmentation_loss(logits, masks)
        return self._optimise(loss)

    def _optimise(self, loss: torch.Tensor) -> Dict[str, Any]:
        """The rest of a training step, shared by both trial families: backward, optimiser
        step (clipping, fp16 scaler), the batch count and the loss kept on the device."""
        # No isfinite(loss) check here: reading a GPU value every step stalls the CPU before it
        # queues the backward pass. A diverged loss is caught at the next report instead
        # (_RunInfoCallback.on_training_workload_end).
        self.context.backward(self.scaler.scale(loss) if self.scaler else loss)
        self.context.step_optimizer(self.optimizer, clip_grads=self._clip_fn(), scaler=self.scaler)
        if self.scaler:
            self.scaler.update()
        # Counted here, not taken from batch_idx: Determined's local mode restarts batch_idx at
        # 0 after a resume while its own batch count goes on.
        self.batches_trained += 1
        self.train_loss.update(loss)  # reported as "loss", averaged over the report period
        return {"lr": self.scheduler.get_last_lr()[0]}

    def _count_skipped(self, skipped: torch.Tensor) -> None:
        # Summed on the device, read only at validation: int() here would sync every step.
        s = skipped.sum()
        self._skipped = s if self._skipped is None else self._skipped + s

    @property
    def skipped_samples(self) -> int:
        """Bad samples this rank's loaders skipped so far (skip_bad_samples)."""
        return 0 if self._skipped is None else int(self._skipped)

    def _clip_fn(self):
        max_norm = self.hp["grad_clip_norm"]
        if not max_norm:
            return None

        def clip(params):
            if self.scaler:
                self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(params, max_norm)
        return clip

    def evaluate_batch(self, batch: Any, batch_idx: int) -> Dict[str, Any]:
        images, masks, sizes, skipped = batch
        images, masks, skipped = self._to_device(images, masks, skipped)
        self._count_skipped(skipped)
        with self._autocast():
            logits = self.model(self._prepare(images))
        logits = logits.float()
        # Whole-image inference: logits to the padded input size, crop the padding, then to the
        # original annotation size, where the metric is taken (MMSegmentation's protocol).
        # A resize to the same size is an exact copy, so it is skipped.
        logits = _resize(logits, images.shape[-2:])
        total_loss = counted = logits.new_zeros(())
        # sizes stay on the host (not moved above): reading them costs no wait for the GPU,
        # and nothing below reads a GPU value either.
        for i, (h, w, H, W) in enumerate(sizes.tolist()):
            li = _resize(logits[i:i + 1, :, :h, :w], (H, W))
            mi = masks[i:i + 1, :H, :W]
            # the mean over the image's labelled pixels, and images without any left out
            pixels = (mi != IGNORE_INDEX).sum()
            loss_sum = F.cross_entropy(li, mi, ignore_index=IGNORE_INDEX, reduction="sum")
            total_loss = total_loss + loss_sum / pixels.clamp(min=1)
            counted = counted + (pixels > 0)
            self.confusion.update(li.argmax(1), mi)
        self.val_loss.update(total_loss / counted.clamp(min=1))
        return {}

    def validation_follows(self, step: int) -> bool:
        """Whether Determined validates right after the training chunk ending at ``step``
        (every ``validation_period`` batches, and at the end of training)."""
        return step % self.hp["validation_period"] == 0 or step >= self.max_batches

    def write_local_details(self) -> None:
        """Per-class IoU of the last validation, to the local metrics file only."""
        last = self.confusion.last
        if last is not None:
            runlog.write_extra("per_class_iou", self.batches_trained,
                               per_class_dict(last["per_class_iou"], self.hp["class_names"]))

    # ------------------------------------------------------------------ hooks
    def build_callbacks(self) -> Dict[str, det_torch.PyTorchCallback]:
        # Order matters: the energy callback reads time_to_target_s, added by the target one.
        callbacks: Dict[str, det_torch.PyTorchCallback] = {"target": self.target_callback,
                                                            "run_info": _RunInfoCallback(self)}
        if self.hp["energy"]["enabled"]:
            from shared.energy.callback import EnergyCallback
            callbacks["energy"] = EnergyCallback(self.context, self.hp["energy"],
                                                 steps_completed=lambda: self.batches_trained,
                                                 target=self.hp[self.TARGET_PARAM],
                                                 target_metric=self.TARGET_METRIC,
                                                 validation_follows=self.validation_follows,
                                                 required=self.energy_required)
        return callbacks


def _resize(x: torch.Tensor, size) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def no_host_sync_per_batch(context: det_torch.PyTorchTrialContext, val_loss_name: Optional[str]
                           ) -> tuple:
    """Set a trial up to run without one host-GPU synchronisation per batch.

    Determined 0.38 adds two per batch by default: it moves the batch with a blocking copy,
    which waits for every kernel already queued, and it copies each tensor that
    ``train_batch``/``evaluate_batch`` return to the host. Either keeps the host from queueing
    batch n+1 while the GPU runs batch n, and the GPU idles for the Python between them. So the
    trial moves its batches itself (``_to_device``, non-blocking) and keeps its losses in
    reducers summed on the device and read once per report; the batch methods return only host
    numbers. The reported ``loss`` (and ``val_loss_name``, if given) is the mean over the
    period's batches and all ranks, as Determined's own averaging gives.
    Returns the training loss reducer and the validation one (None without a name).
    """
    context.experimental.disable_auto_to_device()
    train = context.wrap_reducer(DeviceMean(), name="loss", for_training=True, for_validation=False)
    val = (context.wrap_reducer(DeviceMean(), name=val_loss_name, for_training=False)
           if val_loss_name else None)
    return train, val


class _RunInfoCallback(det_torch.PyTorchCallback):
    """Reports the facts a comparison needs once per trial start, as the custom metric group
    ``run`` (parameters, slots, precision), and keeps the bad-sample count visible."""

    def __init__(self, trial: SegmentationTrial) -> None:
        self.trial = trial
        self.reported_skips = 0

    def on_trial_startup(self, first_batch_idx: int, checkpoint_uuid: Optional[str]) -> None:
        t = self.trial
        if t.context.distributed.rank == 0:
            t.context._core.train.report_metrics(  # the core context is private on the trial context
                group="run", steps_completed=first_batch_idx,
                metrics={"model": t.MODEL_NAME, "params": t.num_parameters,
                         "target_metric": t.TARGET_METRIC, "target": t.hp[t.TARGET_PARAM],
                         "slots": t.context.distributed.size, "precision": t.precision,
                         "global_batch_size": t.context.get_global_batch_size(),
                         "lr": t.lr, "device": torch.cuda.get_device_name() if t.device.type == "cuda" else "cpu"})

    def on_training_workload_end(self, avg_metrics: Dict[str, Any], batch_metrics: Any) -> None:
        # Runs on every rank with the same (broadcast) averages, so all ranks stop together.
        loss = avg_metrics.get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise FloatingPointError(
                f"training loss is {float(loss)} at batch {self.trial.batches_trained}: the run "
                f"diverged; lower 'lr' or set 'grad_clip_norm'")

    def on_validation_end(self, metrics: Dict[str, Any]) -> None:
        # Skipped-sample counts live on each rank (they come with the batches); sum them.
        total = sum(self.trial.context.distributed.allgather(self.trial.skipped_samples))
        if total:
            metrics["skipped_samples"] = total
            if total != self.reported_skips and self.trial.context.distributed.rank == 0:
                log.warning("skip_bad_samples: %d bad samples skipped so far (see the warnings "
                            "above for the files)", total)
            self.reported_skips = total


def _experiment_config(context: det_torch.PyTorchTrialContext) -> Dict[str, Any]:
    try:
        return context.get_experiment_config() or {}
    except Exception:  # local runs without an experiment config
        return {}
