"""The training and evaluation step, in plain PyTorch and free of Determined: one object that
both trial families (``shared.trial``, ``shared.classification.trial``) and the benchmark
(``benchmarks/``) run, so that what is timed is what trains.

The step is written out on purpose: the source study (000, section 4.1.3) could not optimise a
framework whose loop it could not see. What it holds:

- precision (bf16 on GPUs that have it, fp16 with a grad scaler on older ones, fp32 on CPU),
  autocast, channels_last;
- the optimiser (AdamW or SGD, no weight decay on norms and biases, fused or not), the lr
  scaled from ``base_batch_size`` to the global batch by ``lr_scaling`` (linear for SGD,
  square root for AdamW by default; ``shared.schedule``), warm-up then poly decay stepped
  every batch, gradient clipping;
- device-side reducers for the losses, so that no batch waits for the GPU (``DeviceMean``);
- the task: what a batch is and how its loss and validation metrics are taken
  (``SegmentationTask`` here; each other family owns its own: ``shared.classification.task``,
  ``shared.objects.task``).

What Determined does around ``train_batch`` (moving the model, wrapping optimisers for
distributed training, stepping the schedulers after each batch, reducing metrics over ranks)
goes through a *runtime*: ``shared.determined_compat.DeterminedRuntime`` in a trial,
``LocalRuntime`` below everywhere else. Both offer the same methods, named after Determined's
``PyTorchTrialContext`` ones.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping, Optional, Protocol, Sequence, Tuple

import torch
import torch.nn.functional as F

from shared.data.labels import IGNORE_INDEX
from shared.data.on_device import training_batch
from shared.hparams import (COMPILE_AUTO_MIN_BATCHES, COMPILE_WARMUP_BATCHES, VAL_KERNELS,
                            VAL_MODES, ConfigError)
from shared.inference import validation_kernels
from shared.metrics import ConfusionMatrix, DeviceMean, DeviceSum
from shared.schedule import WarmupPoly, lr_scaling_rule, scaled_lr

__all__ = ["Engine", "LocalRuntime", "Runtime", "SegmentationTask",
           "autocast", "pick_precision", "resolve_channels_last", "resolve_compile", "build_optimizer", "segmentation_loss",
           "count_parameters", "AUTOCAST_DTYPES", "COMPILE_WARMUP_BATCHES"]

#: torch dtype autocast runs in, per precision; fp32 runs without autocast
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


# ============================================================================ decisions
def pick_precision(requested: str, device: torch.device) -> str:
    """bf16 where the GPU supports it, fp16 with a grad scaler on older GPUs, fp32 on CPU.

    CPU autocast in bf16 exists but is slower than fp32 on most CPUs and changes numerics, so
    "auto" keeps fp32 there; asking for bf16 explicitly on CPU is honoured.
    """
    if requested == "fp16" and device.type != "cuda":
        raise ConfigError("hyperparameter 'precision' = 'fp16' needs a CUDA GPU "
                          "(its grad scaler is CUDA only); use 'auto', 'bf16' or 'fp32'")
    if requested != "auto":
        return requested
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def resolve_channels_last(requested: Any, device: torch.device) -> bool:
    """channels_last lets cuDNN pick NHWC kernels (tensor cores without transposes); on CPU it
    is usually slower, so "auto" turns it on for CUDA only."""
    return (device.type == "cuda") if requested == "auto" else bool(requested)


def resolve_compile(requested: Any, device: torch.device, max_batches: int) -> bool:
    """Whether to ``torch.compile``: ``auto`` compiles on CUDA when the run is long enough for
    the compilation to pay back (``COMPILE_AUTO_MIN_BATCHES``; on a CPU the compiled step is
    rarely faster and the compilation costs minutes), otherwise as asked."""
    if requested == "auto":
        return device.type == "cuda" and max_batches >= COMPILE_AUTO_MIN_BATCHES
    return bool(requested)


def autocast(device: torch.device, dtype: Optional[torch.dtype]):
    """Autocast to ``dtype`` on ``device``'s type; off when ``dtype`` is None (fp32)."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build_optimizer(model: torch.nn.Module, hp: Mapping[str, Any], lr: float) -> torch.optim.Optimizer:
    """AdamW or SGD (hyperparameter ``optimizer``); fused or the per-parameter loop
    (``fused_optimizer``).

    ``fused_optimizer: true`` passes ``fused=True``: one kernel updates every parameter, on
    CUDA and on CPU (PyTorch has fused AdamW/SGD kernels for both). ``false`` passes
    ``foreach=False``: a Python loop over the parameters, a few small kernels each, the
    implementation of older framework code, on either device. (PyTorch's own default, the
    multi-tensor ``foreach`` path on CUDA, is neither, so both settings are explicit.)

    No weight decay on norms and biases (1-D tensors): decaying them only fights the
    normalisation and is the usual practice for both AdamW and SGD recipes.
    """
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": hp["weight_decay"]},
              {"params": no_decay, "weight_decay": 0.0}]
    fused = ({"fused": True} if hp["fused_optimizer"]
             else {"foreach": False})
    if hp["optimizer"] == "adamw":
        return torch.optim.AdamW(groups, lr=lr, **fused)
    return torch.optim.SGD(groups, lr=lr, momentum=hp["momentum"], **fused)


def segmentation_loss(logits: torch.Tensor, masks: torch.Tensor,
                      labelled: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Cross-entropy in float32 at label resolution, pixels labelled 255 ignored.

    Models return logits at their own stride (SegFormer 1/4, Segmenter 1/16); the loss is taken
    at label resolution, as in the reference implementations. The logits are widened to float32
    before upsampling, not after: upsampled in bf16 and then cast, the full-resolution
    150-channel tensor would be written once in bf16 and again in float32, and its gradient
    cast back on the way down (16 x 150 x 512 x 512 elements, 8 bytes each way instead of 4).
    Interpolating in float32 is also the more exact of the two.

    The mean is over the labelled pixels (``labelled``, counted here when not given), and a
    batch without any is 0 with a zero gradient, as MMSegmentation's cross-entropy
    (``avg_non_ignore``) has it: PyTorch's own mean would divide 0 by 0 and give NaN, which
    the run would take for a divergence. The count stays on the device (no host sync).
    """
    logits = logits.float()
    if logits.shape[-2:] != masks.shape[-2:]:
        logits = F.interpolate(logits, size=masks.shape[-2:], mode="bilinear", align_corners=False)
    if labelled is None:
        labelled = (masks != IGNORE_INDEX).sum()
    total = F.cross_entropy(logits, masks, ignore_index=IGNORE_INDEX, reduction="sum")
    return total / labelled.clamp(min=1)


def resize_logits(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize, skipped when the size is already right (a same-size resize is a copy)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def _pair_of(v: Any) -> Tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def window_starts(size: int, crop: int, stride: int) -> List[int]:
    """Where the sliding windows along one side begin (MMSegmentation's ``slide_inference``):
    every ``stride`` pixels, as many as needed to cover ``size``, the last one moved back so
    that it ends at the border; one window (of the whole side) when ``size <= crop``."""
    if size <= crop:
        return [0]
    count = (size - crop + stride - 1) // stride + 1
    return [min(i * stride, size - crop) for i in range(count)]


def slide_logits(forward: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor,
                 num_classes: int, crop: Any, stride: Any) -> torch.Tensor:
    """Sliding-window logits (1, num_classes, h, w), float32, for one image (1, C, h, w).

    MMSegmentation's ``slide_inference``: windows of ``crop`` ([h, w] or an int) every
    ``stride`` pixels, the last row and column of windows aligned to the border, a side
    shorter than the crop taken whole; each window's logits resized bilinearly to the window,
    summed into the image and divided by the number of windows covering each pixel. The
    windows of one image go through ``forward`` as one batch.
    """
    (ch, cw), (sh, sw) = _pair_of(crop), _pair_of(stride)
    h, w = image.shape[-2:]
    ch, cw = min(ch, h), min(cw, w)
    corners = [(y, x) for y in window_starts(h, ch, sh) for x in window_starts(w, cw, sw)]
    crops = torch.cat([image[..., y:y + ch, x:x + cw] for y, x in corners])
    windows = resize_logits(forward(crops).float(), (ch, cw))
    total = image.new_zeros((1, num_classes, h, w), dtype=torch.float32)
    count = image.new_zeros((1, 1, h, w), dtype=torch.float32)
    for (y, x), win in zip(corners, windows):
        total[..., y:y + ch, x:x + cw] += win
        count[..., y:y + ch, x:x + cw] += 1
    return total / count


# ============================================================================ runtimes
class Runtime(Protocol):
    """What the engine needs from whoever runs it (Determined's trial context has each)."""

    def wrap_model(self, model: torch.nn.Module) -> torch.nn.Module: ...
    def wrap_optimizer(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer: ...
    def wrap_lr_scheduler(self, scheduler: Any) -> Any: ...
    def wrap_scaler(self, scaler: Any) -> Any: ...
    def wrap_reducer(self, reducer: Any, name: Optional[str], for_training: bool = True,
                     for_validation: bool = True) -> Any: ...
    def backward(self, loss: torch.Tensor) -> None: ...
    def step_optimizer(self, optimizer: torch.optim.Optimizer,
                       clip_grads: Optional[Callable[[List[torch.Tensor]], None]] = None,
                       scaler: Any = None) -> None: ...
    def get_global_batch_size(self) -> int: ...


class LocalRuntime:
    """What Determined's trial controller does around ``train_batch``, for code that runs the
    engine without it (the benchmark, tests): the model moved to the device, one process, the
    optimiser stepped and its gradients zeroed, every scheduler stepped after each batch
    (``end_batch``). Reducers are kept as they are; read them with their own methods."""

    def __init__(self, device: torch.device, global_batch_size: int) -> None:
        self.device = torch.device(device)
        self.global_batch_size = int(global_batch_size)
        self.schedulers: List[Any] = []

    def get_global_batch_size(self) -> int:
        return self.global_batch_size

    def wrap_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(self.device)

    def wrap_optimizer(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        return optimizer

    def wrap_lr_scheduler(self, scheduler: Any) -> Any:
        self.schedulers.append(scheduler)
        return scheduler

    def wrap_scaler(self, scaler: Any) -> Any:
        return scaler

    def wrap_reducer(self, reducer: Any, name: Optional[str], for_training: bool = True,
                     for_validation: bool = True) -> Any:
        return reducer

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step_optimizer(self, optimizer: torch.optim.Optimizer,
                       clip_grads: Optional[Callable[[List[torch.Tensor]], None]] = None,
                       scaler: Any = None) -> None:
        # As PyTorchTrialContext.step_optimizer: clip the optimiser's parameters, step (through
        # the scaler under fp16), zero the gradients.
        if clip_grads is not None:
            clip_grads([p for g in optimizer.param_groups for p in g["params"]])
        if scaler is not None:
            scaler.step(optimizer)
        else:
            optimizer.step()
        optimizer.zero_grad()

    def end_batch(self) -> None:
        """Determined steps STEP_EVERY_BATCH schedulers after each ``train_batch``."""
        for scheduler in self.schedulers:
            scheduler.step()


# ============================================================================ tasks
class SegmentationTask:
    """Semantic segmentation: uint8 crops with per-sample colour augmentation prepared on the
    device, cross-entropy at label resolution; validation on whole images at their own size
    into one confusion matrix (mIoU as MMSegmentation computes it) and the mean per-image loss.

    ``val_mode``: ``"whole"`` runs the model on each whole (resized) image; ``"slide"`` on
    ``val_crop_size`` windows every ``val_stride`` pixels (``slide_logits``; stride None = the
    crop: windows that touch but do not overlap), MMSegmentation's two ``test_cfg`` modes.
    """

    def __init__(self, num_classes: int, val_mode: str = "whole", val_crop_size: Any = None,
                 val_stride: Any = None, val_kernels: str = "plan_free") -> None:
        if val_kernels not in VAL_KERNELS:
            raise ConfigError(f"hyperparameter 'val_kernels' = {val_kernels!r} is not one of "
                              f"{', '.join(VAL_KERNELS)}")
        if val_mode not in VAL_MODES:
            raise ConfigError(f"hyperparameter 'val_mode' = {val_mode!r} is not one of "
                              f"{', '.join(VAL_MODES)}")
        if val_mode == "slide" and val_crop_size is None:
            raise ConfigError("hyperparameter 'val_mode' = 'slide' needs 'val_crop_size' "
                              "(the window size)")
        self.num_classes = num_classes
        self.val_mode = val_mode
        self.val_crop_size = val_crop_size
        self.val_stride = val_crop_size if val_stride is None else val_stride
        self.val_kernels = val_kernels
        self.confusion: Optional[ConfusionMatrix] = None
        self.val_loss: Optional[DeviceMean] = None
        self.unlabelled: Optional[DeviceSum] = None

    def attach(self, runtime: Runtime) -> None:
        self.confusion = runtime.wrap_reducer(ConfusionMatrix(self.num_classes, IGNORE_INDEX),
                                              name=None, for_training=False)
        self.val_loss = runtime.wrap_reducer(DeviceMean(), name="validation_loss",
                                             for_training=False)
        self.unlabelled = runtime.wrap_reducer(DeviceSum(), name="batches_without_labels",
                                               for_training=True, for_validation=False)

    def training_loss(self, engine: "Engine", batch: Sequence[torch.Tensor]) -> torch.Tensor:
        images, masks, aug, skipped = engine.to_device(*batch)
        engine.count_skipped(skipped)
        # The loader's uint8 crops become the model's input here, on the device: colour
        # augmentation, normalisation, channels_last (shared/data/on_device.py).
        images, masks = training_batch(images, masks, aug, engine.channels_last)
        labelled = (masks != IGNORE_INDEX).sum()
        self.unlabelled.update(labelled == 0)  # counted on the device, read at the report
        with engine.autocast():
            # compiled with the model when the engine compiles: the upsampling to the labels
            # and the cross-entropy then run as fused kernels instead of full-size passes
            return engine.compiled_fn(segmentation_loss)(engine.forward(images), masks,
                                                             labelled)

    def evaluate(self, engine: "Engine", batch: Sequence[torch.Tensor]) -> None:
        assert self.confusion is not None and self.val_loss is not None, "attach() first"
        # kernels that build nothing per new image shape (val_kernels), no cuDNN autotuning
        with validation_kernels(engine.model, self.val_kernels, engine.device):
            self._evaluate(engine, batch)

    def _evaluate(self, engine: "Engine", batch: Sequence[torch.Tensor]) -> None:
        images, masks, sizes, skipped = batch
        images, masks, skipped = engine.to_device(images, masks, skipped)
        engine.count_skipped(skipped)
        forward = engine.eval_forward
        if self.val_mode == "whole":
            # Whole-image inference on the padded batch (the batch's largest image, rounded up
            # to val_pad_multiple: val_collate): logits to the padded input size, each image's
            # own region cropped below.
            with engine.autocast():
                logits = forward(engine.prepare(images))
            logits = resize_logits(logits.float(), images.shape[-2:])
        total_loss = counted = images.new_zeros((), dtype=torch.float32)
        # sizes stay on the host (not moved above): reading them costs no wait for the GPU,
        # and nothing below reads a GPU value either.
        for i, (h, w, H, W) in enumerate(sizes.tolist()):
            if self.val_mode == "whole":
                li = logits[i:i + 1, :, :h, :w]
            else:  # windows over the image without its batch padding
                with engine.autocast():
                    li = slide_logits(lambda x: forward(engine.prepare(x)),
                                      images[i:i + 1, :, :h, :w], self.num_classes,
                                      self.val_crop_size, self.val_stride)
            # to the original annotation size, where the metric is taken (MMSegmentation's)
            li = resize_logits(li, (H, W))
            mi = masks[i:i + 1, :H, :W]
            # the mean over the image's labelled pixels, and images without any left out
            pixels = (mi != IGNORE_INDEX).sum()
            loss_sum = F.cross_entropy(li, mi, ignore_index=IGNORE_INDEX, reduction="sum")
            total_loss = total_loss + loss_sum / pixels.clamp(min=1)
            counted = counted + (pixels > 0)
            self.confusion.update(li.argmax(1), mi)
        self.val_loss.update(total_loss / counted.clamp(min=1))


# ============================================================================ the engine
class Engine:
    """One model's training and evaluation step.

    Args:
        model: the network, on the CPU or already on its device.
        hp: resolved hyperparameters (``shared.hparams.resolve``): precision, channels_last,
            optimizer, lr, base_batch_size, lr_scaling, weight_decay, momentum, warmup_batches,
            warmup_ratio, poly_power, min_lr_ratio, grad_clip_norm.
        runtime: ``LocalRuntime`` or ``shared.determined_compat.DeterminedRuntime``.
        task: ``SegmentationTask``, or a family's own (``shared.classification.task``,
            ``shared.objects.task``).
        device: where the model runs.
        max_batches: the schedule's length.
        compile: run the training forward (and the task's loss, ``compiled_fn``) through
            ``torch.compile`` in the mode of the hyperparameter ``compile_mode``; None: the
            hyperparameter ``compile`` (``auto``: ``resolve_compile``). The first
            ``COMPILE_WARMUP_BATCHES`` training batches then compile (``compiling`` is true
            during them): the trial charges them to the energy phase ``compile``, so that the
            per-image figures of the ``train`` phase exclude them. Validation runs the same
            model eagerly (``eval_forward``): its images come in many shapes, each of which
            would be a new compilation.
    """

    def __init__(self, model: torch.nn.Module, hp: Mapping[str, Any], runtime: Runtime,
                 task: Any, *, device: torch.device, max_batches: int,
                 compile: Optional[bool] = None) -> None:
        self.hp = hp
        self.runtime = runtime
        self.task = task
        self.device = torch.device(device)
        self.precision = pick_precision(hp["precision"], self.device)
        self.channels_last = resolve_channels_last(hp["channels_last"], self.device)
        self.autocast_dtype = AUTOCAST_DTYPES.get(self.precision)
        self.num_parameters = count_parameters(model)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = runtime.wrap_model(model)
        #: the rule "auto" resolved for the optimiser, and the peak lr it gives at this batch
        self.lr_scaling = lr_scaling_rule(hp["lr_scaling"], hp["optimizer"])
        self.lr = scaled_lr(hp["lr"], hp["base_batch_size"], runtime.get_global_batch_size(),
                            self.lr_scaling)
        self.optimizer = runtime.wrap_optimizer(build_optimizer(self.model, hp, self.lr))
        self._schedule_args = (hp["warmup_batches"], max_batches, hp["poly_power"],
                               hp["warmup_ratio"], hp["min_lr_ratio"])
        self._lambda_lr = torch.optim.lr_scheduler.LambdaLR(self.optimizer,
                                                            WarmupPoly(*self._schedule_args))
        self.scheduler = runtime.wrap_lr_scheduler(self._lambda_lr)
        self.scaler = (runtime.wrap_scaler(torch.amp.GradScaler("cuda"))
                       if self.precision == "fp16" else None)
        # Reported as "loss", the mean over the report period's batches and all ranks.
        self.train_loss = runtime.wrap_reducer(DeviceMean(), name="loss", for_training=True,
                                               for_validation=False)
        task.attach(runtime)
        self.compiled = resolve_compile(hp["compile"] if compile is None else compile,
                                        self.device, max_batches)
        self.compile_mode = hp.get("compile_mode", "default")
        self._compiled_fns: Dict[Callable[..., Any], Callable[..., Any]] = {}
        self.forward = self.compiled_module(self.model) if self.compiled else self.model
        #: validation and inference: the same weights, never compiled
        self.eval_forward = self.model
        if self.device.type == "cuda":
            # process-wide, as cuDNN has it; set by every engine, so the last one built wins
            torch.backends.cudnn.benchmark = bool(
                hp["cudnn_benchmark"])
        #: counted here, not taken from Determined's batch_idx: its local mode restarts
        #: batch_idx at 0 after a resume while its own batch count goes on
        self.batches_trained = 0
        self._batches_this_process = 0
        #: the last training loss, on the device (never read here: reading it would sync)
        self.last_loss: Optional[torch.Tensor] = None
        self._skipped: Optional[torch.Tensor] = None

    @property
    def compiling(self) -> bool:
        """Whether the next training batch is one of torch.compile's warm-up batches (the
        forward and backward graphs are compiled at the first one; the margin takes a
        recompilation after the first optimiser step). Counted from this process's start: a
        resumed trial compiles again."""
        return self.compiled and self._batches_this_process < COMPILE_WARMUP_BATCHES

    def apply_schedule(self) -> None:
        """This run's learning-rate schedule (peak lr, warm-up, decay, length) at the batch the
        scheduler is at. After a resume, Determined loads the checkpoint's scheduler state,
        whose peak lr and schedule object are those of the run that wrote it: a resume with a
        changed ``lr`` or ``max_batches`` would otherwise go on with the old ones. With
        nothing changed it sets the values the scheduler holds already."""
        sched = self._lambda_lr
        groups = self.optimizer.param_groups
        # a new schedule object: loading the state updated the old one's attributes in place
        schedule = WarmupPoly(*self._schedule_args)
        sched.base_lrs = [self.lr] * len(groups)
        sched.lr_lambdas = [schedule for _ in groups]
        values = [self.lr * schedule(sched.last_epoch) for _ in groups]
        for group, value in zip(groups, values):
            group["lr"] = value
        sched._last_lr = values

    # ------------------------------------------------------------------ pieces
    def _compile(self, fn: Any) -> Callable[..., Any]:
        mode = {} if self.compile_mode == "default" else {"mode": self.compile_mode}
        return torch.compile(fn, **mode)

    def compiled_module(self, module: torch.nn.Module) -> Callable[..., Any]:
        return self._compile(module)

    def compiled_fn(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` through ``torch.compile`` (once per function) when the engine compiles, else
        ``fn`` itself."""
        if not self.compiled:
            return fn
        if fn not in self._compiled_fns:
            self._compiled_fns[fn] = self._compile(fn)
        return self._compiled_fns[fn]

    def autocast(self):
        return autocast(self.device, self.autocast_dtype)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    def to_device(self, *tensors: torch.Tensor) -> List[torch.Tensor]:
        # Queued behind the previous step instead of waiting for it; the loader's batches are
        # in pinned memory on a GPU, which makes the copy asynchronous.
        return [t.to(self.device, non_blocking=True) for t in tensors]

    def count_skipped(self, skipped: torch.Tensor) -> None:
        # Summed on the device, read only at validation: int() here would sync every step.
        s = skipped.sum()
        self._skipped = s if self._skipped is None else self._skipped + s

    @property
    def skipped_samples(self) -> int:
        """Bad samples this rank's loaders skipped so far (skip_bad_samples)."""
        return 0 if self._skipped is None else int(self._skipped)

    def clip_fn(self) -> Optional[Callable[[List[torch.Tensor]], None]]:
        max_norm = self.hp["grad_clip_norm"]
        if not max_norm:
            return None

        def clip(params: List[torch.Tensor]) -> None:
            if self.scaler:
                self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(params, max_norm)
        return clip

    # ------------------------------------------------------------------ steps
    def train_batch(self, batch: Sequence[torch.Tensor]) -> Dict[str, Any]:
        """One training step: the task's loss, then ``optimise``. Returns host numbers only."""
        if self.compiled and self.compile_mode == "reduce-overhead":
            # CUDA graphs: a new step begins, so the previous step's graph outputs may be
            # overwritten (the loss kept from it was copied out: optimise)
            torch.compiler.cudagraph_mark_step_begin()
        return self.optimise(self.task.training_loss(self, batch))

    def optimise(self, loss: torch.Tensor) -> Dict[str, Any]:
        """Backward, optimiser step (clipping, fp16 scaler), the batch count and the loss kept
        on the device."""
        # No isfinite(loss) check here: reading a GPU value every step stalls the CPU before it
        # queues the backward pass. A diverged loss is caught at the next report instead
        # (shared.trial's run-info callback).
        self.runtime.backward(self.scaler.scale(loss) if self.scaler else loss)
        self.runtime.step_optimizer(self.optimizer, clip_grads=self.clip_fn(), scaler=self.scaler)
        if self.scaler:
            self.scaler.update()
        self.batches_trained += 1
        self._batches_this_process += 1
        # a copy when CUDA graphs own the loss's memory (the next replay overwrites it)
        self.last_loss = (loss.detach().clone() if self.compiled and self.compile_mode == "reduce-overhead"
                          else loss.detach())
        self.train_loss.update(self.last_loss)
        return {"lr": self.scheduler.get_last_lr()[0]}

    def evaluate_batch(self, batch: Sequence[torch.Tensor]) -> None:
        self.task.evaluate(self, batch)
