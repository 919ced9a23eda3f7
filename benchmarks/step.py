"""The training step and what is measured of it: the trials' own step (``TrialStep``) and the
textbook one (``PlainStep``), a batch as the loader gives it, the timing of a step with its
energy, power and utilisation, its FLOPs and MFU against the measured matmul peak, and the step
rows of our models and of the reference implementations.
"""
from __future__ import annotations

import dataclasses
import gc
import importlib
import importlib.util
import logging
import time
import traceback
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.render import mfu_error
from benchmarks.gpu_monitor import NA_NO_NVML, NO_ENERGY, NvmlMonitor, Sample, sample_mean
from benchmarks.specs import (BenchConfig, BenchError, ModelSpec, ReferenceSpec, error_text,
                              load_trial, trial_available)
from shared import hparams as hpmod
from shared.data.labels import IGNORE_INDEX
from shared.data.on_device import training_batch
from shared.engine import (AUTOCAST_DTYPES, Engine, autocast, LocalRuntime, SegmentationTask,
                           pick_precision, segmentation_loss)
from shared.schedule import lr_scaling_rule, scaled_lr

log = logging.getLogger("benchmarks.bench")


# ============================================================================ the training step
class TrialStep:
    """The trials' own step (``shared.engine.Engine`` with the segmentation task) and what
    Determined does around it for one batch (``shared.engine.LocalRuntime``: the optimiser
    stepped and zeroed, the per-batch lr schedule stepped after the batch). One call is one
    batch as the training loader gives it; it returns the loss, left on the device.
    Not included: Determined's copy of the returned metrics to the host after each batch (the
    engine returns only host numbers) and its reducers' per-report reads.

    ``compile=True`` runs the forward through ``torch.compile(model)``.
    """

    def __init__(self, model: nn.Module, hp: Mapping[str, Any], device: torch.device,
                 compile: bool = False) -> None:
        self.runtime = LocalRuntime(device, hp["global_batch_size"])
        self.engine = Engine(model, hp, self.runtime, SegmentationTask(hp["num_classes"]),
                             device=device, max_batches=hpmod.training_length(hp, None),
                             compile=compile)

    # The engine's state, under the names the measurements and PlainStep use.
    model = property(lambda self: self.engine.model)
    optimizer = property(lambda self: self.engine.optimizer)
    scheduler = property(lambda self: self.engine.scheduler)
    scaler = property(lambda self: self.engine.scaler)
    precision = property(lambda self: self.engine.precision)
    channels_last = property(lambda self: self.engine.channels_last)
    autocast_dtype = property(lambda self: self.engine.autocast_dtype)

    def __call__(self, images: torch.Tensor, masks: torch.Tensor, aug: torch.Tensor,
                 skipped: torch.Tensor) -> torch.Tensor:
        self.engine.train_batch((images, masks, aug, skipped))
        self.runtime.end_batch()
        assert self.engine.last_loss is not None
        return self.engine.last_loss


class PlainStep:
    """The textbook loop, the baseline the U-Net target is measured against: eager, autocast
    in the trial's precision, NCHW, ``torch.optim.AdamW`` with its defaults (one parameter
    group, no fused kernel), no host syncs. It prepares the batch on the device as the trial
    does (colour augmentation, normalisation), so only the step's tricks differ."""

    def __init__(self, model: nn.Module, hp: Mapping[str, Any], device: torch.device) -> None:
        self.device = device
        self.precision = pick_precision(hp["precision"], device)
        self.channels_last = False
        self.autocast_dtype = AUTOCAST_DTYPES.get(self.precision)
        self.model = model.to(device)
        self.forward = self.model
        self.lr = scaled_lr(hp["lr"], hp["base_batch_size"], hp["global_batch_size"],
                            lr_scaling_rule(hp["lr_scaling"], "adamw"))  # AdamW, as below
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=self.lr,
                                           weight_decay=hp["weight_decay"])
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" else None

    def __call__(self, images: torch.Tensor, masks: torch.Tensor, aug: torch.Tensor,
                 skipped: torch.Tensor) -> torch.Tensor:
        images, masks = training_batch(images, masks, aug)
        with autocast(self.device, self.autocast_dtype):
            logits = self.model(images)
            if logits.shape[-2:] != masks.shape[-2:]:
                logits = F.interpolate(logits, size=masks.shape[-2:], mode="bilinear",
                                       align_corners=False)
            loss = F.cross_entropy(logits.float(), masks, ignore_index=IGNORE_INDEX)
        if self.scaler:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        self.optimizer.zero_grad()
        return loss.detach()


def make_batch(batch: int, res: int, num_classes: int, device: torch.device, seed: int = 0
               ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A batch as the training loader gives it (uint8 crops, uint8 labels, per-sample
    augmentation parameters drawn as the workers draw them, skipped-sample counts), random,
    on ``device`` as Determined moves a batch there. The global RNG is left as it was."""
    from shared.data.transforms import PhotometricDistortion
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch, 3, res, res), generator=g, dtype=torch.uint8)
    masks = torch.randint(0, num_classes, (batch, res, res), generator=g).to(torch.uint8)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        draw = PhotometricDistortion().draw
        aug = torch.tensor([[*draw(), res, res] for _ in range(batch)], dtype=torch.float32)
    skipped = torch.zeros(batch, dtype=torch.int64)
    return tuple(t.to(device) for t in (images, masks, aug, skipped))


# ============================================================================ FLOPs and MFU
def count_step_flops(model: nn.Module, images: torch.Tensor, masks: torch.Tensor,
                     autocast_dtype: Optional[torch.dtype], channels_last: bool) -> int:
    """FLOPs of one forward and backward of the step's loss, as FlopCounterMode counts them
    (matrix products, convolutions and attention; elementwise work is not counted, the usual
    convention for MFU). Gradients are cleared afterwards."""
    from torch.utils.flop_counter import FlopCounterMode

    x = images.contiguous(memory_format=torch.channels_last) if channels_last else images
    counter = FlopCounterMode(display=False)
    with counter:
        with autocast(images.device, autocast_dtype):
            loss = segmentation_loss(model(x), masks)
        loss.backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def measure_matmul_peak(device: torch.device, dtype: torch.dtype, n: int = 8192,
                        iters: int = 20, repeats: int = 3) -> float:
    """The device's achievable matmul rate in FLOP/s: the best of ``repeats`` timed loops of
    ``iters`` n x n products in ``dtype`` (the MFU denominator, measured rather than taken
    from a datasheet, whose figures assume sparsity or boost clocks)."""
    if n <= 0 or iters <= 0 or repeats <= 0:
        raise BenchError(f"matmul peak: n, iters and repeats must be > 0 (got {n}, {iters}, {repeats})")
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        torch.mm(a, b)
    best = 0.0
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(iters):
            torch.mm(a, b)
        _sync(device)
        best = max(best, 2.0 * n ** 3 * iters / (time.perf_counter() - t0))
    return best


def mfu(flops_per_step: float, steps: int, seconds: float, peak_flops: float) -> float:
    """Model FLOPs utilisation: the model's FLOPs per second over the peak, as a fraction."""
    if peak_flops <= 0 or seconds <= 0:
        raise BenchError(f"MFU needs a positive peak and duration (peak {peak_flops}, "
                         f"{seconds} s)")
    return flops_per_step * steps / seconds / peak_flops


def measure_device_prep(cfg: BenchConfig) -> float:
    """ms per batch of ``shared.data.on_device.training_batch`` alone (the colour
    augmentation and normalisation every step row includes), channels_last as on CUDA."""
    batch = make_batch(cfg.batch, cfg.res, cfg.num_classes, cfg.device)
    channels_last = cfg.device.type == "cuda"
    for _ in range(max(1, cfg.warmup)):
        training_batch(*batch[:3], channels_last)
    _sync(cfg.device)
    t = time.perf_counter()
    for _ in range(cfg.steps):
        training_batch(*batch[:3], channels_last)
    _sync(cfg.device)
    return 1000.0 * (time.perf_counter() - t) / cfg.steps


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ============================================================================ measuring a step
#: the name of the energy meter's window around the timed steps
STEP_WINDOW = "timed steps"


def measure_step(step: Callable[..., torch.Tensor], batch: Tuple[torch.Tensor, ...],
                 steps: int, warmup: int,
                 device: torch.device, monitor: Optional[NvmlMonitor] = None,
                 na: str = NA_NO_NVML) -> Dict[str, Any]:
    """Time ``steps`` calls of ``step`` after ``warmup`` untimed ones.

    Energy is the GPU's joules in the monitor's energy-meter window around the timed steps
    (NVML's energy counter, or sampled power integrated by the energy library when the GPU has
    no counter); utilisation and power are the means of the monitor's samples; peak memory
    is the allocator's peak over the timed steps (after the warm-up, whose cuDNN autotuning
    and compilation are one-off). Without a monitor those columns hold ``na``.
    """
    t = time.perf_counter()
    for _ in range(warmup):
        step(*batch)
    _sync(device)
    warmup_s = time.perf_counter() - t
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    joules: Optional[float] = None
    samples: List[Sample] = []
    if monitor is not None:
        monitor.start()
        monitor.meter.begin_window(STEP_WINDOW)
    losses = []
    try:
        t0 = time.perf_counter()
        for _ in range(steps):
            losses.append(step(*batch))
        _sync(device)
        seconds = time.perf_counter() - t0
    finally:
        # closed even when a step fails: the next model must find neither the sampler running
        # nor the window open
        if monitor is not None:
            joules = monitor.meter.end_window(STEP_WINDOW).joules.get("gpu")
            samples = monitor.stop()
    imgs = steps * batch[0].shape[0]
    out: Dict[str, Any] = {
        "img_s": imgs / seconds, "step_ms": 1000.0 * seconds / steps, "seconds": seconds,
        "warmup_s": warmup_s, "loss_first": float(losses[0]), "loss_last": float(losses[-1]),
        "peak_mem_gib": (torch.cuda.max_memory_allocated(device) / 2 ** 30
                         if device.type == "cuda" else "n/a (cpu)"),
    }
    method = monitor.energy_method if monitor is not None else na
    out.update(_window_energy(samples, joules, method, imgs, na))
    return out


def _window_energy(samples: Sequence[Sample], joules: Optional[float], method: str, imgs: int,
                   na: str) -> Dict[str, Any]:
    """The energy, power and utilisation columns of a step row."""
    if not samples:
        return {"j_per_img": na, "avg_power_w": na, "gpu_util_pct": na, "energy_source": na}
    util = sample_mean([s.util_pct for s in samples])
    power = sample_mean([s.power_w for s in samples])
    source = method if joules is not None else NO_ENERGY
    return {"j_per_img": source if joules is None else joules / imgs,
            "avg_power_w": power if power is not None else "n/a (NVML power unreadable)",
            "gpu_util_pct": util if util is not None else "n/a (NVML utilisation unreadable)",
            "energy_source": source, "nvml_samples": len(samples)}


@dataclasses.dataclass
class Context:
    """What every measurement shares: the settings, the NVML monitor and the matmul peak."""

    cfg: BenchConfig
    monitor: Optional[NvmlMonitor] = None
    nvml_status: str = NA_NO_NVML
    peak_flops: Optional[float] = None
    peak_dtype: str = ""


def _cleanup(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _fill_step_row(row: Dict[str, Any], ctx: Context, step: Any, model: nn.Module) -> None:
    cfg = ctx.cfg
    row.update(params_m=sum(p.numel() for p in model.parameters()) / 1e6,
               precision=step.precision, channels_last=step.channels_last)
    batch = make_batch(cfg.batch, cfg.res, cfg.num_classes, cfg.device)
    images, masks = training_batch(*batch[:3])
    flops = count_step_flops(step.model, images, masks, step.autocast_dtype, step.channels_last)
    row["gflop_per_img"] = flops / cfg.batch / 1e9
    row.update(measure_step(step, batch, cfg.steps, cfg.warmup, cfg.device, ctx.monitor,
                            ctx.nvml_status))
    row["mfu_pct"] = (100.0 * mfu(flops, cfg.steps, row["seconds"], ctx.peak_flops)
                      if ctx.peak_flops else "n/a (no peak measured)")
    if mfu_error(row["mfu_pct"]):
        row["mfu_error"] = mfu_error(row["mfu_pct"])
    row["status"] = "ok"


def compiled_name(name: str, mode: str = "default") -> str:
    """The row name of ``name`` under torch.compile: ``<name>+compile``, or
    ``<name>+compile:<mode>`` for another mode than the default."""
    return f"{name}+compile" + ("" if mode == "default" else f":{mode}")


def bench_ours(spec: ModelSpec, ctx: Context, compile: bool = False,
               compile_mode: str = "default") -> Dict[str, Any]:
    """One row: our model through TrialStep (under ``torch.compile`` in ``compile_mode`` when
    ``compile``). Never raises: a failure is the row's error."""
    cfg = ctx.cfg
    row: Dict[str, Any] = {"name": compiled_name(spec.name, compile_mode) if compile else spec.name,
                           "kind": "ours", "base": spec.name, "compile": compile, "note": spec.note}
    if compile:
        row["compile_mode"] = compile_mode
    missing = trial_available(spec.trial)
    if missing:
        return {**row, "status": "skipped", "error": missing}
    step = model = None
    try:
        loaded = load_trial(spec, cfg, {"compile_mode": compile_mode})
        torch.manual_seed(0)
        model = loaded.build()
        step = TrialStep(model, loaded.hp, cfg.device, compile=compile)
        _fill_step_row(row, ctx, step, model)
    except Exception as e:  # one model's failure must not hide the others
        log.error("%s failed:\n%s", row["name"], traceback.format_exc())
        row.update(status="error", error=error_text(e))
    finally:
        del step, model
        _cleanup(cfg.device)
    return row


def bench_reference(ref: ReferenceSpec, ctx: Context, ours: Mapping[str, ModelSpec]
                    ) -> Dict[str, Any]:
    """One row: a reference implementation, or our model the plain way. Never raises."""
    cfg = ctx.cfg
    row: Dict[str, Any] = {"name": ref.name, "kind": "plain" if ref.plain else "reference",
                           "base": ref.pair, "compile": False, "note": ref.note}
    absent = [m for m in ref.requires if importlib.util.find_spec(m) is None]
    if absent:
        return {**row, "status": "not installed", "error": ", ".join(absent)}
    pair = ours[ref.pair]
    missing = trial_available(pair.trial)
    if missing:
        return {**row, "status": "skipped", "error": f"its pair {pair.name}: {missing}"}
    step = model = None
    try:
        loaded = load_trial(pair, cfg)
        torch.manual_seed(0)
        if ref.plain:
            model = loaded.build()
            step = PlainStep(model, loaded.hp, cfg.device)
        else:
            assert ref.build is not None
            model = ref.build(cfg.res, cfg.num_classes)
            step = TrialStep(model, loaded.hp, cfg.device)
        row["versions"] = {m: _version(m) for m in ref.requires}
        _fill_step_row(row, ctx, step, model)
    except Exception as e:
        log.error("%s failed:\n%s", ref.name, traceback.format_exc())
        row.update(status="error", error=error_text(e))
    finally:
        del step, model
        _cleanup(cfg.device)
    return row


def _version(module: str) -> str:
    try:
        return str(getattr(importlib.import_module(module), "__version__", "?"))
    except Exception as e:
        return f"import failed: {e}"

