"""Training-speed and energy benchmark of the four trials against reference implementations.

One command on a GPU node measures, for each trial's model (U-Net, SegFormer, DeepLab v3+,
Segmenter) as its ``experiment_configs/<model>/single_gpu.yaml`` builds it (150 classes):

* the training step alone: ``SegmentationTrial.train_batch``'s step (the loader's uint8 batch
  augmented and normalised on the device, autocast, logits upsampled to the labels,
  cross-entropy ignoring 255, the trial's AdamW, channels_last on CUDA) on random 512x512
  inputs, batch 16: img/s, J/img from the NVML energy counter, GPU
  utilisation sampled every 50 ms, peak memory, and MFU (FLOPs of one forward+backward counted
  by ``torch.utils.flop_counter.FlopCounterMode``, over the bf16 matmul peak measured in the
  same run);
* reference implementations of the same architectures, stepped by the same step in the same
  process when their packages are installed (transformers, segmentation_models_pytorch,
  torchvision, timm), and the ratios ours/reference against the project's targets;
* optionally each model under ``torch.compile`` (``--compile``), to show per model whether it
  helps;
* the whole local training loop through the real command line (``trials/<m>/train.py``) on a
  synthetic JPEG data set: img/s from ``metrics.jsonl`` and the fraction of wall time the GPU
  is busy.

Run ``python -m benchmarks.bench --help``; BENCHMARKS.md describes every column and holds the
results (``--markdown``).

The step is a replica of ``shared/trial.py``'s ``train_batch`` (the benchmark times the step
without Determined's loop around it); ``tests/test_bench.py`` checks that the replica's losses
equal the trial's own ``train_batch`` losses on the same weights and inputs, so a change to the
trial's step that is not mirrored here fails the tests.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import importlib
import importlib.util
import json
import logging
import math
import os
import pathlib
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from types import ModuleType
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # ``python benchmarks/bench.py`` as well as ``-m``
    sys.path.insert(0, str(ROOT))

from shared import hparams as hpmod  # noqa: E402
from shared.data.ade20k import IGNORE_INDEX  # noqa: E402
from shared.data.on_device import training_batch  # noqa: E402
from shared.engine import (AUTOCAST_DTYPES, Engine, autocast, LocalRuntime, SegmentationTask,  # noqa: E402
                           pick_precision, segmentation_loss)
from shared.schedule import scaled_lr  # noqa: E402

log = logging.getLogger("benchmarks.bench")

NUM_CLASSES = 150          # ADE20K, as every single_gpu.yaml
DEFAULT_MARKDOWN = ROOT / "BENCHMARKS.md"
#: what an energy, power or utilisation column holds when NVML cannot be read
NA_NO_NVML = "n/a (no NVML)"
#: NVML utilisation and power sampling period
SAMPLE_PERIOD_S = 0.05
#: end to end: the fraction of wall time the GPU must be busy
E2E_BUSY_TARGET_PCT = 95.0
E2E_VAL_IMAGES = 16
#: synthetic images are drawn with sides in [res, res * 683 / 512], ADE20K's usual 4:3 frame
E2E_MAX_SIDE_RATIO = 683 / 512
#: the verdict of a GPU target on a CPU run
CPU_VERDICT = "n/a (CPU run)"
#: a compiled model "helped" when it is this much faster than eager (below: timing noise)
COMPILE_NOISE = 0.03


class BenchError(ValueError):
    """A bad option, file or measurement set-up; the message names the culprit."""


# ============================================================================ what is measured
@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One of our models: a trial directory plus hyperparameter overrides on its config."""

    name: str
    trial: str
    overrides: Tuple[Tuple[str, Any], ...] = ()
    e2e: bool = True
    note: str = ""


OURS: Tuple[ModelSpec, ...] = (
    ModelSpec("unet", "unet"),
    ModelSpec("segformer", "segformer"),
    ModelSpec("deeplabv3plus", "deeplabv3plus"),
    ModelSpec("segmenter", "segmenter"),
    # The architecture of the timm reference below (the config's own is ViT-T + mask decoder).
    ModelSpec("segmenter-vits16-linear", "segmenter",
              (("segmenter_backbone", "vit_small_patch16_224"), ("segmenter_decoder", "linear")),
              e2e=False, note="segmenter config with ViT-S/16 and the linear decoder"),
)


@dataclasses.dataclass(frozen=True)
class ReferenceSpec:
    """A reference implementation, compared with ``pair`` (a ModelSpec name).

    ``build(res, num_classes)`` returns a module mapping images to logits at any stride. The
    reference is trained by the same step as ``pair`` (same hyperparameters), so the ratio
    isolates the model's implementation; ``plain`` instead trains ``pair``'s own model the
    textbook way (PlainStep).
    """

    name: str
    pair: str
    requires: Tuple[str, ...]
    build: Optional[Callable[[int, int], nn.Module]] = None
    plain: bool = False
    note: str = ""


class _LogitsWrapper(nn.Module):
    """A reference whose forward returns a dict or a ModelOutput, made to return the logits
    tensor the training step expects (``fn(model, images)`` picks them out)."""

    def __init__(self, model: nn.Module, fn: Callable[[nn.Module, torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.model = model
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.model, x)


def _build_hf_segformer(res: int, num_classes: int) -> nn.Module:
    from transformers import SegformerConfig, SegformerForSemanticSegmentation
    # SegformerConfig's defaults are MiT-b0; sdpa is asked for explicitly and checked, since an
    # older transformers silently falls back to eager attention.
    model = SegformerForSemanticSegmentation(SegformerConfig(num_labels=num_classes,
                                                             attn_implementation="sdpa"))
    used = getattr(model.config, "_attn_implementation", None)
    if used != "sdpa":
        raise BenchError(f"transformers built SegFormer with attention {used!r}, not 'sdpa'")
    return _LogitsWrapper(model, lambda m, x: m(pixel_values=x).logits)


def _smp(arch: str, encoder: str) -> Callable[[int, int], nn.Module]:
    def build(res: int, num_classes: int) -> nn.Module:
        import segmentation_models_pytorch as smp
        return getattr(smp, arch)(encoder_name=encoder, encoder_weights=None, classes=num_classes)
    return build


def _build_tv_deeplabv3(res: int, num_classes: int) -> nn.Module:
    from torchvision.models.segmentation import deeplabv3_resnet50
    model = deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=num_classes,
                               aux_loss=False)
    return _LogitsWrapper(model, lambda m, x: m(x)["out"])


class _VitLinear(nn.Module):
    """timm ViT + one Linear from each patch token to class logits (Segmenter's linear
    decoder, written the plain way: no custom attention, no fused kernels of ours)."""

    def __init__(self, res: int, num_classes: int, name: str = "vit_small_patch16_224") -> None:
        super().__init__()
        import timm
        # As ../shared/tools/reference_bench.py builds it, so the two runs compare.
        self.backbone = timm.create_model(name, pretrained=False, num_classes=0, img_size=res,
                                          dynamic_img_size=True)
        self.head = nn.Linear(self.backbone.embed_dim, num_classes)
        self.patch = 16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        tokens = self.backbone.forward_features(x)[:, self.backbone.num_prefix_tokens:]
        logits = self.head(tokens)  # (B, N, classes)
        return logits.transpose(1, 2).reshape(b, -1, h // self.patch, w // self.patch)


REFERENCES: Tuple[ReferenceSpec, ...] = (
    ReferenceSpec("unet-plain", "unet", (), plain=True,
                  note="our U-Net trained the plain way: eager, autocast in the trial's "
                       "precision, NCHW, torch's default AdamW"),
    ReferenceSpec("smp.Unet(resnet34)", "unet", ("segmentation_models_pytorch",),
                  _smp("Unet", "resnet34"), note="another U-Net: ResNet-34 encoder, 24.5M params"),
    ReferenceSpec("transformers.SegFormer-b0(sdpa)", "segformer", ("transformers",),
                  _build_hf_segformer),
    ReferenceSpec("smp.Segformer(mit_b0)", "segformer", ("segmentation_models_pytorch",),
                  _smp("Segformer", "mit_b0")),
    ReferenceSpec("smp.DeepLabV3Plus(resnet50)", "deeplabv3plus", ("segmentation_models_pytorch",),
                  _smp("DeepLabV3Plus", "resnet50")),
    ReferenceSpec("torchvision.deeplabv3_resnet50", "deeplabv3plus", ("torchvision",),
                  _build_tv_deeplabv3, note="DeepLab v3 (no decoder), not v3+"),
    ReferenceSpec("timm.vit_small_patch16_224+linear", "segmenter-vits16-linear", ("timm",),
                  lambda res, n: _VitLinear(res, n)),
)


@dataclasses.dataclass(frozen=True)
class Target:
    """``ours``'s ``metric`` divided by ``reference``'s must satisfy ``op threshold``; a target
    without threshold is a ratio shown for information."""

    ours: str
    reference: str
    metric: str            # "img_s" or "j_per_img"
    op: str = ">="
    threshold: Optional[float] = None


TARGETS: Tuple[Target, ...] = (
    Target("unet", "unet-plain", "img_s", ">=", 1.3),
    Target("segformer", "transformers.SegFormer-b0(sdpa)", "img_s", ">=", 1.3),
    Target("segformer", "transformers.SegFormer-b0(sdpa)", "j_per_img", "<=", 0.77),
    Target("deeplabv3plus", "smp.DeepLabV3Plus(resnet50)", "img_s", ">=", 1.3),
    Target("segmenter-vits16-linear", "timm.vit_small_patch16_224+linear", "img_s", ">=", 1.3),
    Target("unet", "unet-plain", "j_per_img", "<="),
    Target("unet", "smp.Unet(resnet34)", "img_s"),
    Target("segformer", "smp.Segformer(mit_b0)", "img_s"),
    Target("deeplabv3plus", "smp.DeepLabV3Plus(resnet50)", "j_per_img", "<="),
    Target("deeplabv3plus", "torchvision.deeplabv3_resnet50", "img_s"),
    Target("segmenter-vits16-linear", "timm.vit_small_patch16_224+linear", "j_per_img", "<="),
)


@dataclasses.dataclass
class BenchConfig:
    res: int = 512
    batch: int = 16
    steps: int = 30
    warmup: int = 8
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    num_classes: int = NUM_CLASSES
    e2e_batches: int = 120
    e2e_images: int = 256
    e2e_set: Tuple[str, ...] = ()
    e2e_timeout_s: float = 300.0


# ============================================================================ loading a trial
@dataclasses.dataclass
class LoadedTrial:
    spec: ModelSpec
    trial_cls: type
    model_module: ModuleType
    hp: Dict[str, Any]

    def build(self) -> nn.Module:
        return self.model_module.build_model(self.hp)


_MODULES: Dict[str, Tuple[ModuleType, type]] = {}


def trial_available(trial: str) -> Optional[str]:
    """None when ``trials/<trial>`` and its single_gpu.yaml exist, else why not."""
    for p in (ROOT / "trials" / trial / "train.py", ROOT / "trials" / trial / "model.py",
              ROOT / "experiment_configs" / trial / "single_gpu.yaml"):
        if not p.is_file():
            return f"{p.relative_to(ROOT)} not found"
    return None


def _exec_file(name: str, path: pathlib.Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise BenchError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _trial_modules(trial: str) -> Tuple[ModuleType, type]:
    """``trials/<trial>/model.py`` and the trial class of its train.py, each under a unique
    module name: every trial's files are called model.py and train.py, and train.py imports
    ``model`` by that plain name, which would otherwise resolve to whichever came first."""
    if trial in _MODULES:
        return _MODULES[trial]
    missing = trial_available(trial)
    if missing:
        raise BenchError(missing)
    d = ROOT / "trials" / trial
    model_module = _exec_file(f"benchmarks_trial_{trial}_model", d / "model.py")
    saved = sys.modules.get("model")
    sys.modules["model"] = model_module
    try:
        train_module = _exec_file(f"benchmarks_trial_{trial}_train", d / "train.py")
    finally:
        if saved is None:
            sys.modules.pop("model", None)
        else:
            sys.modules["model"] = saved
    from shared.trial import SegmentationTrial
    classes = [v for v in vars(train_module).values()
               if isinstance(v, type) and issubclass(v, SegmentationTrial)
               and v.__module__ == train_module.__name__]
    if len(classes) != 1:
        raise BenchError(f"{d / 'train.py'}: expected one SegmentationTrial subclass, found "
                         f"{[c.__name__ for c in classes]}")
    _MODULES[trial] = (model_module, classes[0])
    return _MODULES[trial]


def load_trial(spec: ModelSpec, cfg: BenchConfig, extra: Optional[Mapping[str, Any]] = None
               ) -> LoadedTrial:
    """The trial's model module, class and resolved hyperparameters: its single_gpu.yaml read
    as a local run reads it (a search space gives its stated point), with 150 classes, the
    benchmark's batch and ``spec``'s overrides. Bad overrides raise ConfigError naming the
    config file and the key."""
    model_module, trial_cls = _trial_modules(spec.trial)
    path = ROOT / "experiment_configs" / spec.trial / "single_gpu.yaml"
    conf = hpmod.load_experiment_config(path)
    hp = hpmod.point_from_space(conf["hyperparameters"], str(path))
    hp.update({"num_classes": cfg.num_classes, "global_batch_size": cfg.batch,
               **dict(spec.overrides), **dict(extra or {})})
    resolved = hpmod.resolve(hp, trial_cls.MODEL_PARAMS, where=str(path),
                             common=trial_cls.COMMON_PARAMS)
    return LoadedTrial(spec, trial_cls, model_module, resolved)


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
        e = self.engine
        self.model, self.optimizer, self.scheduler, self.scaler = (e.model, e.optimizer,
                                                                   e.scheduler, e.scaler)
        self.precision, self.channels_last, self.autocast_dtype = (e.precision, e.channels_last,
                                                                   e.autocast_dtype)

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
        self.lr = scaled_lr(hp["lr"], hp["base_batch_size"], hp["global_batch_size"])
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


# ============================================================================ NVML counters
class NvmlMonitor:
    """One GPU's NVML energy counter, plus utilisation and power sampled by a thread.

    ``start()`` begins sampling (wall-clock stamped, so samples can be matched with
    metrics.jsonl times), ``stop()`` ends it and returns the samples
    ``(time.time(), util %, power W, energy mJ)``; any of the three values is None when that
    read failed. ``energy_mj()`` reads the counter now (None without a counter: pre-Volta).
    """

    def __init__(self, nvml: Any, handle: Any, name: str, period_s: float = SAMPLE_PERIOD_S) -> None:
        self.nvml = nvml
        self.handle = handle
        self.name = name
        self.period_s = period_s
        self.has_counter = True
        try:
            nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
        except Exception as e:
            # pre-Volta GPUs have no counter (NotSupported): power samples x time instead.
            # Any other error is taken as transient: later reads may succeed.
            self.has_counter = type(e).__name__ != "NVMLError_NotSupported"
        self._samples: List[Tuple[float, Optional[float], Optional[float], Optional[int]]] = []
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    @classmethod
    def open(cls, device: torch.device, env: Optional[Mapping[str, str]] = None,
             period_s: float = SAMPLE_PERIOD_S) -> "NvmlMonitor":
        """The NVML device behind CUDA ``device`` (CUDA_VISIBLE_DEVICES respected).

        Raises:
            BenchError: the device is not CUDA, pynvml is missing or NVML cannot be read.
        """
        from shared.energy.sources.nvml import cuda_to_nvml_index, parse_cuda_visible_devices
        if device.type != "cuda":
            raise BenchError(f"NVML reads GPUs; the device is {device}")
        try:
            nvml = importlib.import_module("pynvml")
        except ImportError as e:
            raise BenchError(f"cannot import pynvml ({e}); pip install nvidia-ml-py") from None
        try:
            nvml.nvmlInit()
        except Exception as e:
            raise BenchError(f"NVML unavailable: {e}") from None
        try:
            count = int(nvml.nvmlDeviceGetCount())
            handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            uuids = [_text(nvml.nvmlDeviceGetUUID(h)) for h in handles]
            env = os.environ if env is None else env
            raw = env.get("CUDA_VISIBLE_DEVICES")
            index = cuda_to_nvml_index(device.index or 0, parse_cuda_visible_devices(raw), uuids,
                                       env_value=raw or "")
            return cls(nvml, handles[index], _text(nvml.nvmlDeviceGetName(handles[index])), period_s)
        except Exception as e:
            try:
                nvml.nvmlShutdown()
            except Exception:  # the error above is the one worth reporting
                pass
            raise BenchError(f"NVML unavailable: {e}") from None

    @staticmethod
    def _read(fn: Callable[[Any], Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except Exception:  # a transient NVML error or an unsupported query: a missing value
            return None

    def energy_mj(self) -> Optional[int]:
        if not self.has_counter:
            return None
        v = self._read(self.nvml.nvmlDeviceGetTotalEnergyConsumption, self.handle)
        return None if v is None else int(v)

    def sample(self) -> Tuple[float, Optional[float], Optional[float], Optional[int]]:
        util = self._read(self.nvml.nvmlDeviceGetUtilizationRates, self.handle)
        power = self._read(self.nvml.nvmlDeviceGetPowerUsage, self.handle)
        return (time.time(), None if util is None else float(util.gpu),
                None if power is None else power / 1000.0, self.energy_mj())

    def _run(self) -> None:
        while True:
            self._samples.append(self.sample())
            if self._stop.wait(self.period_s):
                return

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("NvmlMonitor.start() called twice without stop()")
        self._samples = []
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="nvml-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> List[Tuple[float, Optional[float], Optional[float], Optional[int]]]:
        if self._thread is None:
            return []
        self._stop.set()
        self._thread.join()
        self._thread = None
        self._samples.append(self.sample())  # the window's last instant, even if short
        return list(self._samples)

    def close(self) -> None:
        self.stop()
        try:
            self.nvml.nvmlShutdown()
        except Exception:  # already shut down: nothing to release
            pass


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def open_monitor(device: torch.device) -> Tuple[Optional[NvmlMonitor], str]:
    """(monitor, "ok") on a GPU whose NVML answers, else (None, why), the why starting with
    NA_NO_NVML so that it can stand in an energy column as is."""
    if device.type != "cuda":
        return None, NA_NO_NVML
    try:
        return NvmlMonitor.open(device), "ok"
    except BenchError as e:
        return None, f"{NA_NO_NVML[:-1]}: {e})"


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


def measure_device_prep(cfg: "BenchConfig") -> float:
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
def measure_step(step: Callable[..., torch.Tensor], batch: Tuple[torch.Tensor, ...],
                 steps: int, warmup: int,
                 device: torch.device, monitor: Optional[NvmlMonitor] = None,
                 na: str = NA_NO_NVML) -> Dict[str, Any]:
    """Time ``steps`` calls of ``step`` after ``warmup`` untimed ones.

    Energy is the NVML counter's difference over the timed steps (sampled power x time when
    the GPU has no counter); utilisation and power are the means of the samples; peak memory
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
    e0 = e1 = None
    samples: List[Tuple[float, Optional[float], Optional[float], Optional[int]]] = []
    if monitor is not None:
        monitor.start()
        e0 = monitor.energy_mj()
    losses = []
    try:
        t0 = time.perf_counter()
        for _ in range(steps):
            losses.append(step(*batch))
        _sync(device)
        seconds = time.perf_counter() - t0
        e1 = monitor.energy_mj() if monitor is not None else None
    finally:  # a failing step must not leave the sampler running for the next model
        if monitor is not None:
            samples = monitor.stop()
    imgs = steps * batch[0].shape[0]
    out: Dict[str, Any] = {
        "img_s": imgs / seconds, "step_ms": 1000.0 * seconds / steps, "seconds": seconds,
        "warmup_s": warmup_s, "loss_first": float(losses[0]), "loss_last": float(losses[-1]),
        "peak_mem_gib": (torch.cuda.max_memory_allocated(device) / 2 ** 30
                         if device.type == "cuda" else "n/a (cpu)"),
    }
    out.update(_window_energy(samples, e0, e1, seconds, imgs, na))
    return out


def _mean(values: Sequence[Optional[float]]) -> Optional[float]:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def _window_energy(samples: Sequence[Tuple[float, Optional[float], Optional[float], Optional[int]]],
                   e0: Optional[int], e1: Optional[int], seconds: float, imgs: int, na: str
                   ) -> Dict[str, Any]:
    if not samples:
        return {"j_per_img": na, "avg_power_w": na, "gpu_util_pct": na, "energy_source": na}
    util = _mean([s[1] for s in samples])
    power = _mean([s[2] for s in samples])
    if e0 is not None and e1 is not None:
        j, source = (e1 - e0) / 1000.0, "NVML energy counter"
    elif power is not None:
        j, source = power * seconds, "NVML power samples x time"
    else:
        j, source = None, "n/a (NVML energy and power unreadable)"
    return {"j_per_img": source if j is None else j / imgs,
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


def _error(e: BaseException, limit: int = 600) -> str:
    """The exception as one bounded string: its start (what failed) and its end (a log's
    last lines, a traceback's cause)."""
    text = f"{type(e).__name__}: {e}"
    return text if len(text) <= limit else f"{text[:limit // 3]} [...] {text[-2 * limit // 3:]}"


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
    row["status"] = "ok"


def bench_ours(spec: ModelSpec, ctx: Context, compile: bool = False) -> Dict[str, Any]:
    """One row: our model through TrialStep. Never raises: a failure is the row's error."""
    cfg = ctx.cfg
    row: Dict[str, Any] = {"name": spec.name + ("+compile" if compile else ""), "kind": "ours",
                           "base": spec.name, "compile": compile, "note": spec.note}
    missing = trial_available(spec.trial)
    if missing:
        return {**row, "status": "skipped", "error": missing}
    step = model = None
    try:
        loaded = load_trial(spec, cfg)
        torch.manual_seed(0)
        model = loaded.build()
        step = TrialStep(model, loaded.hp, cfg.device, compile=compile)
        _fill_step_row(row, ctx, step, model)
    except Exception as e:  # one model's failure must not hide the others
        log.error("%s failed:\n%s", row["name"], traceback.format_exc())
        row.update(status="error", error=_error(e))
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
        row.update(status="error", error=_error(e))
    finally:
        del step, model
        _cleanup(cfg.device)
    return row


def _version(module: str) -> str:
    try:
        return str(getattr(importlib.import_module(module), "__version__", "?"))
    except Exception as e:
        return f"import failed: {e}"


# ============================================================================ end to end
def e2e_periods(batches: int) -> Tuple[int, int]:
    """(report_period, validation_period) of an end-to-end run: up to 10 batches a report, so
    the timing window opens after the start-up batches, and two validations, one inside the
    window and one at its end."""
    report = max(1, min(10, batches // 4))
    return report, max(report, batches // 2)


def e2e_command(spec: ModelSpec, cfg: BenchConfig, data_dir: pathlib.Path,
                out_dir: pathlib.Path) -> List[str]:
    report, validation = e2e_periods(cfg.e2e_batches)
    sets = [f"crop_size={cfg.res}", f"scale=[{4 * cfg.res},{cfg.res}]",
            f"global_batch_size={cfg.batch}", f"num_classes={cfg.num_classes}",
            f"report_period={report}", f"validation_period={validation}",
            # no periodic checkpoint: its write would land in the timed window
            f"checkpoint_period={10 * cfg.e2e_batches}", "stop_at_target=false"]
    sets += [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in spec.overrides]
    if cfg.device.type == "cpu":
        sets.append("energy.enabled=false")  # no GPU energy to measure; keeps the smoke run quiet
    sets += list(cfg.e2e_set)
    return [sys.executable, str(ROOT / "trials" / spec.trial / "train.py"),
            "--config", str(ROOT / "experiment_configs" / spec.trial / "single_gpu.yaml"),
            "--data-dir", str(data_dir), "--output-dir", str(out_dir),
            "--batches", str(cfg.e2e_batches), "--set", *sets]


def analyse_e2e(records: Sequence[Mapping[str, Any]],
                samples: Sequence[Tuple[float, Optional[float], Optional[float], Optional[int]]],
                global_batch: int, na: str = NA_NO_NVML) -> Dict[str, Any]:
    """Throughput and GPU busy fraction of a run from its metrics.jsonl records and NVML samples.

    The window runs from the first training report to the last: the batches before the
    first report (process start, worker start, cuDNN autotuning) are left out. Validations
    inside it count in the loop's img/s and busy fraction; ``img_s_train`` and
    ``gpu_busy_train_pct`` leave them out (a validation spans from the training report at
    its step to its own report).
    """
    train = sorted(((int(r["steps_completed"]), float(r["time"])) for r in records
                    if r.get("group") == "training"), key=lambda x: x[0])
    if len(train) < 2:
        raise BenchError(f"metrics.jsonl holds {len(train)} training report(s); two are needed "
                         f"to time the loop: raise --e2e-batches")
    (s0, t0), (s1, t1) = train[0], train[-1]
    if s1 <= s0 or t1 <= t0:
        raise BenchError(f"training reports at steps {s0}..{s1}, times {t0}..{t1}: no window")
    report_time = dict(train)
    intervals = []
    for r in records:
        if r.get("group") != "validation":
            continue
        ts = report_time.get(int(r["steps_completed"]))
        if ts is not None and t0 <= ts < t1:
            intervals.append((ts, float(r["time"])))
    window = t1 - t0
    validation_s = sum(b - a for a, b in intervals)
    imgs = (s1 - s0) * global_batch
    out: Dict[str, Any] = {"timed_batches": s1 - s0, "window_s": window,
                           "validation_s": validation_s, "img_s_loop": imgs / window,
                           "img_s_train": imgs / (window - validation_s)
                           if window > validation_s else "n/a (validation filled the window)"}
    inside = [s for s in samples if t0 <= s[0] <= t1]
    if not samples:
        out.update(gpu_busy_pct=na, gpu_busy_train_pct=na, j_per_img=na)
        return out
    in_val = [any(a <= s[0] <= b for a, b in intervals) for s in inside]
    busy = _mean([s[1] for s in inside])
    busy_train = _mean([s[1] for s, v in zip(inside, in_val) if not v])
    out["gpu_busy_pct"] = busy if busy is not None else "n/a (no utilisation sample in the window)"
    out["gpu_busy_train_pct"] = busy_train if busy_train is not None else out["gpu_busy_pct"]
    counted = [s for s in inside if s[3] is not None]
    if len(counted) >= 2 and counted[-1][0] > counted[0][0]:
        joules = (counted[-1][3] - counted[0][3]) / 1000.0
        # the counter samples bracket most of the window: scale by the images in their span
        out["j_per_img"] = joules / ((counted[-1][0] - counted[0][0]) * out["img_s_loop"])
    else:
        out["j_per_img"] = "n/a (NVML energy counter unreadable)"
    return out


def _e2e_data_params(cfg: BenchConfig) -> Dict[str, Any]:
    return {"num_train": cfg.e2e_images, "num_val": E2E_VAL_IMAGES,
            "num_classes": cfg.num_classes, "min_size": cfg.res,
            "max_size": int(round(cfg.res * E2E_MAX_SIDE_RATIO)), "seed": 0}


class E2EData:
    """The synthetic JPEG set of the end-to-end runs, generated once per work directory.

    Generation takes about 0.1 s of one core per ADE20K-sized image (half a minute for the
    default 256), so ``run`` starts it in a background process before the step rows (which
    keep the GPU, and one core, busy) and :meth:`wait` collects it before the first
    end-to-end run. A set already there with the same parameters is reused.

    Raises:
        BenchError: the directory holds another data set.
    """

    def __init__(self, cfg: BenchConfig, work: pathlib.Path) -> None:
        self.params = _e2e_data_params(cfg)
        self.path = work / f"data-{cfg.res}"
        self.marker = self.path / "bench-params.json"
        self.proc: Optional[subprocess.Popen] = None
        self._started = time.perf_counter()
        if self.marker.is_file():
            if json.loads(self.marker.read_text()) == self.params:
                return
            raise BenchError(f"{self.path} holds a different data set (see {self.marker.name}); "
                             f"remove it or choose another --work-dir")
        if self.path.exists() and any(self.path.iterdir()):
            raise BenchError(f"{self.path} holds an incomplete or foreign data set (no "
                             f"{self.marker.name}: an interrupted generation?); remove it or "
                             f"choose another --work-dir")
        self.path.mkdir(parents=True, exist_ok=True)
        p = self.params
        cmd = [sys.executable, "-m", "shared.data.synthetic", "--out", str(self.path),
               "--num-train", str(p["num_train"]), "--num-val", str(p["num_val"]),
               "--num-classes", str(p["num_classes"]), "--min-size", str(p["min_size"]),
               "--max-size", str(p["max_size"]), "--seed", str(p["seed"])]
        self._log = self.path.parent / f"{self.path.name}.log"
        with self._log.open("w") as logf:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=logf, stderr=subprocess.STDOUT)

    def wait(self) -> pathlib.Path:
        """The data directory, once complete (blocks until then).

        Raises:
            BenchError: the generator failed (its log's last lines in the message).
        """
        if self.proc is not None:
            rc = self.proc.wait()
            self.proc = None
            if rc != 0:
                tail = self._log.read_text(errors="replace").strip().splitlines()[-5:]
                raise BenchError(f"generating the end-to-end data set failed (exit {rc}); "
                                 f"{self._log} ends:\n" + "\n".join(tail))
            self.marker.write_text(json.dumps(self.params))
            log.info("synthetic data: %d+%d images ready %.1f s after the start, under %s",
                     self.params["num_train"], self.params["num_val"],
                     time.perf_counter() - self._started, self.path)
        if not self.marker.is_file():
            raise BenchError(f"{self.path}: the data set is incomplete (no {self.marker.name})")
        return self.path

    def cancel(self) -> None:
        """Stop a generation still running (the run ended before it was needed)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


def prepare_e2e_data(cfg: BenchConfig, work: pathlib.Path) -> pathlib.Path:
    """The synthetic JPEG set of the end-to-end runs, generated now (or reused)."""
    return E2EData(cfg, work).wait()


def run_e2e(spec: ModelSpec, ctx: Context, data_dir: pathlib.Path, work: pathlib.Path
            ) -> Dict[str, Any]:
    """One row: ``trials/<m>/train.py`` through the CLI, timed from its metrics.jsonl, the GPU
    sampled meanwhile. Never raises."""
    cfg = ctx.cfg
    row: Dict[str, Any] = {"name": spec.name, "batches": cfg.e2e_batches}
    missing = trial_available(spec.trial)
    if missing:
        return {**row, "status": "skipped", "error": missing}
    if cfg.device.type == "cpu" and torch.cuda.is_available():
        return {**row, "status": "skipped",
                "error": "--device cpu on a GPU host: Determined's local mode would train on the "
                         "GPU anyway (it counts GPUs with nvidia-smi); use --no-e2e"}
    out = work / "e2e" / f"{spec.name}-{datetime.datetime.now():%H%M%S%f}"
    out.parent.mkdir(parents=True, exist_ok=True)
    log_path = out.parent / f"{out.name}.log"
    cmd = e2e_command(spec, cfg, data_dir, out)
    row["command"] = shlex.join(cmd)
    monitor = ctx.monitor
    try:
        if monitor is not None:
            monitor.start()
        try:
            with log_path.open("w") as logf:
                # its own session, so a timeout ends the trainer and its loader workers together
                proc = subprocess.Popen(cmd, cwd=ROOT, stdout=logf, stderr=subprocess.STDOUT,
                                        start_new_session=True)
                try:
                    rc = proc.wait(timeout=cfg.e2e_timeout_s)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    raise BenchError(f"{spec.name}: the run took more than --e2e-timeout "
                                     f"{cfg.e2e_timeout_s:g} s (log: {log_path})") from None
                except BaseException:
                    # the benchmark itself is stopped (SIGTERM, Ctrl-C): its own session would
                    # leave the run training on the GPU after the benchmark has gone
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    raise
        finally:
            samples = monitor.stop() if monitor is not None else []
        if rc != 0:
            # the last lines, each clipped: an error line's cause comes first, long lists after
            tail = [line if len(line) <= 240 else line[:240] + " [...]"
                    for line in log_path.read_text(errors="replace").strip().splitlines()[-15:]]
            raise BenchError(f"{spec.name}: train.py exited with {rc}; log {log_path} ends:\n"
                             + "\n".join(tail))
        from shared import runlog
        records = runlog.read(out / "metrics.jsonl")
        run = next((r["metrics"] for r in records if r.get("group") == "run"), {})
        row.update(analyse_e2e(records, samples, cfg.batch, ctx.nvml_status),
                   device=run.get("device"), precision=run.get("precision"), status="ok")
    except Exception as e:
        log.error("end to end %s failed: %s", spec.name, e)
        row.update(status="error", error=_error(e))
    return row


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
    compared too, after the eager one. End-to-end rows give one GPU-busy target each. The
    targets are GPU targets: on a CPU run the ratios are shown and the verdicts are n/a."""
    rows = {r["name"]: r for r in step_rows}
    cpu = device_type == "cpu"
    out: List[Dict[str, Any]] = []
    for t in targets:
        if t.ours not in rows and t.reference not in rows:
            continue  # neither side was asked for (--only, --no-reference)
        for ours in (t.ours, f"{t.ours}+compile"):
            if ours != t.ours and ours not in rows:
                continue
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
        entry: Dict[str, Any] = {"name": r["base"], "eager_img_s": eager.get("img_s"),
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


# ============================================================================ output
def _fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v).replace("|", "/").replace("\n", " ")


def _num(v: Any, digits: int) -> str:
    """A number, or "n/a" (the reason is in the row's result column)."""
    return _fmt(v, digits) if isinstance(v, (int, float)) or v is None else "n/a"


def _rate(flops: float) -> str:
    return f"{flops / 1e12:.1f} TFLOP/s" if flops >= 1e12 else f"{flops / 1e9:.1f} GFLOP/s"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


STEP_COLUMNS = ("model", "kind", "params M", "precision", "img/s", "step ms", "peak GiB",
                "J/img", "avg W", "GPU util %", "GFLOP/img", "MFU %", "status")
E2E_COLUMNS = ("model", "batches timed", "window s", "validation s", "img/s loop",
               "img/s training", "training / step", "GPU busy %", "GPU busy % training", "J/img",
               "status")


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
        lines.append(_table(STEP_COLUMNS, [
            [r["name"], r.get("kind", ""), _fmt(r.get("params_m"), 2), _fmt(r.get("precision")),
             _fmt(r.get("img_s")), _fmt(r.get("step_ms"), 2), _fmt(r.get("peak_mem_gib"), 2),
             _fmt(r.get("j_per_img"), 3), _fmt(r.get("avg_power_w")), _fmt(r.get("gpu_util_pct")),
             _fmt(r.get("gflop_per_img"), 2), _fmt(r.get("mfu_pct"), 2), _status(r)]
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
        lines.append(_table(("ours", "reference", "metric", "ours", "reference", "ratio",
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
        lines.append(_table(("model", "eager img/s", "compiled img/s", "speed-up",
                             "warm-up s (incl. compile)", "helped"), [
            [c["name"], _fmt(c["eager_img_s"]), _fmt(c["compiled_img_s"]),
             f"{c['speedup']:.2f}x" if c.get("speedup") else "-", _fmt(c.get("compile_warmup_s")),
             c["helped"]] for c in comp]))
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

        lines.append(_table(E2E_COLUMNS, [
            [r["name"], _fmt(r.get("timed_batches")), _fmt(r.get("window_s")),
             _fmt(r.get("validation_s")), _fmt(r.get("img_s_loop")), _fmt(r.get("img_s_train")),
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


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = ""
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU {model or platform.machine()} ({os.cpu_count()} logical cores)"


def _json_default(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return str(v)


class Results:
    """The run's results, rewritten to ``--out`` after every row, so that a run killed by a
    time limit still leaves what it measured."""

    def __init__(self, meta: Dict[str, Any], out: Optional[pathlib.Path]) -> None:
        self.data: Dict[str, Any] = {"meta": meta, "steps": [], "e2e": [], "targets": [],
                                     "compile": []}
        self.out = out

    def add(self, kind: str, row: Dict[str, Any]) -> None:
        self.data[kind].append(row)
        self.data["targets"] = evaluate_targets(self.data["steps"], self.data["e2e"],
                                                device_type=self.data["meta"]["device_type"])
        self.data["compile"] = compile_effects(self.data["steps"])
        _print_row(kind, row)
        self.save()

    def save(self) -> None:
        if self.out is None:
            return
        tmp = self.out.with_name(self.out.name + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=_json_default) + "\n")
        tmp.replace(self.out)


def _print_row(kind: str, row: Mapping[str, Any]) -> None:
    if row.get("status") != "ok":
        print(f"[{kind}] {row['name']}: {_status(row)}", flush=True)
    elif kind == "steps":
        print(f"[step] {row['name']}: {row['img_s']:.1f} img/s, {row['step_ms']:.2f} ms/step, "
              f"J/img {_fmt(row['j_per_img'], 3)}, MFU {_fmt(row['mfu_pct'], 2)} %", flush=True)
    else:
        print(f"[e2e] {row['name']}: {_fmt(row['img_s_loop'])} img/s, GPU busy "
              f"{_fmt(row['gpu_busy_pct'])} %", flush=True)


# ============================================================================ command line
def _positive_int(name: str, lo: int = 1) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            v = int(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {raw!r}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"{name} must be >= {lo}, got {v}")
        return v
    return parse


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.bench",
        description="Training-step and end-to-end speed and energy of the trials, against "
                    "reference implementations (see BENCHMARKS.md).")
    ap.add_argument("--res", type=_positive_int("--res", 32), default=512,
                    help="square input side, a multiple of 32 (default 512)")
    ap.add_argument("--batch", type=_positive_int("--batch"), default=16,
                    help="images per step, one GPU (default 16)")
    ap.add_argument("--steps", type=_positive_int("--steps"), default=30,
                    help="timed steps (default 30)")
    ap.add_argument("--warmup", type=_positive_int("--warmup", 0), default=8,
                    help="untimed steps before (default 8)")
    ap.add_argument("--only", nargs="+", metavar="TEXT",
                    help="run only the models whose name, or whose pair's name, contains one of "
                         "these (case-insensitive)")
    ap.add_argument("--device", choices=("cpu", "cuda"),
                    help="default: cuda when available, else cpu")
    ap.add_argument("--out", type=pathlib.Path, help="write the results as JSON here "
                                                     "(rewritten after every row)")
    ap.add_argument("--markdown", nargs="?", type=pathlib.Path, const=DEFAULT_MARKDOWN,
                    help=f"append a dated section to this file (default {DEFAULT_MARKDOWN.name})")
    ap.add_argument("--no-e2e", action="store_true", help="skip the end-to-end training runs")
    ap.add_argument("--no-reference", action="store_true", help="skip the reference rows")
    ap.add_argument("--compile", nargs="*", metavar="MODEL",
                    help="also time our models under torch.compile: all of them, or those "
                         "named (e.g. --compile unet segformer)")
    ap.add_argument("--cudnn-benchmark", action="store_true",
                    help="set torch.backends.cudnn.benchmark (the segmentation trials leave it off)")
    ap.add_argument("--e2e-batches", type=_positive_int("--e2e-batches", 4), default=120,
                    help="batches of each end-to-end run (default 120)")
    ap.add_argument("--e2e-images", type=_positive_int("--e2e-images"), default=256,
                    help="training images of the synthetic set (default 256)")
    ap.add_argument("--e2e-set", nargs="+", default=[], action="extend", metavar="KEY=VALUE",
                    help="extra --set overrides for the end-to-end runs (e.g. workers_per_slot=4)")
    ap.add_argument("--e2e-timeout", type=float, default=300.0,
                    help="seconds before an end-to-end run is killed (default 300)")
    ap.add_argument("--work-dir", type=pathlib.Path,
                    help="keep the synthetic data and the runs here (default: a temporary "
                         "directory, removed at the end)")
    ap.add_argument("--time-budget", type=float,
                    help="seconds: parts not started by then are skipped and recorded as such")
    ap.add_argument("--render", type=pathlib.Path, metavar="RESULTS_JSON",
                    help="measure nothing: print (and with --markdown append) the section of a "
                         "results file written by --out")
    args = ap.parse_args(argv)
    return args


def validate_args(args: argparse.Namespace) -> None:
    """Option checks argparse cannot make; raises BenchError naming the option."""
    if args.res % 32:
        raise BenchError(f"--res {args.res}: must be a multiple of 32 (the models downsample by "
                         f"up to 32 and ViT patches are 16)")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise BenchError("--device cuda: torch.cuda.is_available() is False on this machine")
    if args.e2e_timeout <= 0:
        raise BenchError(f"--e2e-timeout {args.e2e_timeout:g}: must be > 0 seconds")
    if args.time_budget is not None and args.time_budget <= 0:
        raise BenchError(f"--time-budget {args.time_budget:g}: must be > 0 seconds")
    for opt, path in (("--out", args.out), ("--markdown", args.markdown)):
        if path is not None and not path.parent.is_dir():
            raise BenchError(f"{opt} {path}: directory {path.parent} does not exist")
    if args.render is not None and not args.render.is_file():
        raise BenchError(f"--render {args.render}: no such file")
    for item in args.e2e_set:
        if "=" not in item:
            raise BenchError(f"--e2e-set {item!r}: expected KEY=VALUE")
    unknown = [n for n in (args.compile or []) if n not in {s.name for s in OURS}]
    if unknown:
        raise BenchError(f"--compile {' '.join(unknown)}: no such model; names: "
                         f"{', '.join(s.name for s in OURS)}")
    if args.only is not None and select(args.only) == ([], []):
        names = [s.name for s in OURS] + [r.name for r in REFERENCES]
        raise BenchError(f"--only {' '.join(map(repr, args.only))} matches no model; names: "
                         f"{', '.join(names)}")


def select(only: Optional[Sequence[str] | str]) -> Tuple[List[ModelSpec], List[ReferenceSpec]]:
    """Our models and references named by ``--only`` (a reference also by its pair's name)."""
    if not only:
        return list(OURS), list(REFERENCES)
    keys = [k.lower() for k in ([only] if isinstance(only, str) else only)]
    ours = [s for s in OURS if any(k in s.name.lower() for k in keys)]
    refs = [r for r in REFERENCES if any(k in r.name.lower() or k in r.pair.lower() for k in keys)]
    return ours, refs


def compile_selection(ours: Sequence[ModelSpec], names: Sequence[str]) -> List[ModelSpec]:
    """The models ``--compile`` names (all of ``ours`` when it names none), in run order."""
    if not names:
        return list(ours)
    return [s for s in ours if s.name in names]


def load_results(path: pathlib.Path) -> Dict[str, Any]:
    """A results file written by ``--out``; BenchError naming the file if it is not one."""
    try:
        data = json.loads(pathlib.Path(path).read_text())
    except OSError as e:
        raise BenchError(f"{path}: cannot read ({e})") from None
    except json.JSONDecodeError as e:
        raise BenchError(f"{path}: not JSON ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("meta"), dict) \
            or not isinstance(data.get("steps"), list):
        raise BenchError(f"{path}: not a results file of benchmarks.bench (no 'meta' and 'steps')")
    data.setdefault("e2e", [])
    data["targets"] = evaluate_targets(data["steps"], data["e2e"],
                                       device_type=data["meta"].get("device_type", "cuda"))
    data["compile"] = compile_effects(data["steps"])
    return data


#: environment variables that change what is measured, shown in front of the command
RECORDED_ENV = ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "PYTORCH_CUDA_ALLOC_CONF", "PYTHONPATH")


def build_meta(args: argparse.Namespace, argv: Sequence[str], cfg: BenchConfig) -> Dict[str, Any]:
    device = cfg.device
    env = [f"{k}={shlex.quote(os.environ[k])}" for k in RECORDED_ENV if k in os.environ]
    return {
        "command": " ".join(env + [shlex.join(["python", "-m", "benchmarks.bench", *argv])]),
        "torch_threads": torch.get_num_threads(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device_type": device.type, "device_name": _device_name(device),
        "torch": torch.__version__, "cuda": torch.version.cuda if device.type == "cuda" else None,
        "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
        "python": platform.python_version(),
        "settings": {"res": cfg.res, "batch": cfg.batch, "steps": cfg.steps, "warmup": cfg.warmup,
                     "num_classes": cfg.num_classes, "cudnn_benchmark": args.cudnn_benchmark,
                     "compile": (None if args.compile is None
                                                     else list(args.compile) or "all"),
                     "e2e_batches": cfg.e2e_batches,
                     "e2e_images": cfg.e2e_images, "e2e_set": list(cfg.e2e_set)},
    }


def run(args: argparse.Namespace, argv: Sequence[str]) -> Dict[str, Any]:
    """Every measurement the options ask for, in the order that keeps the most important
    results if a time limit cuts the run short: our step rows, the references, end to end,
    then torch.compile (its compilations are the slowest part)."""
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cfg = BenchConfig(res=args.res, batch=args.batch, steps=args.steps, warmup=args.warmup,
                      device=device, e2e_batches=args.e2e_batches, e2e_images=args.e2e_images,
                      e2e_set=tuple(args.e2e_set), e2e_timeout_s=args.e2e_timeout)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = bool(args.cudnn_benchmark)
    start = time.monotonic()
    ours, refs = select(args.only)
    by_name = {s.name: s for s in OURS}
    meta = build_meta(args, argv, cfg)
    results = Results(meta, args.out)
    monitor, nvml_status = open_monitor(device)
    ctx = Context(cfg, monitor, nvml_status)
    meta["nvml"] = f"{monitor.name}: {nvml_status}" if monitor else nvml_status

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        ctx.peak_flops = (measure_matmul_peak(device, dtype) if device.type == "cuda"
                          else measure_matmul_peak(device, dtype, n=1024, iters=2, repeats=2))
        ctx.peak_dtype = str(dtype).replace("torch.", "")
        meta.update(peak_flops=ctx.peak_flops, peak_dtype=ctx.peak_dtype)
    except Exception as e:
        log.error("matmul peak failed: %s", e)
        meta["peak_error"] = _error(e)

    try:
        meta["device_prep_ms"] = measure_device_prep(cfg)
    except Exception as e:
        log.error("batch preparation timing failed: %s", e)
        meta["device_prep_error"] = _error(e)

    def budget_left(what: str) -> Optional[str]:
        if args.time_budget is not None and time.monotonic() - start > args.time_budget:
            return f"not started: --time-budget {args.time_budget:g} s spent before {what}"
        return None

    work_tmp = None
    e2e_specs = [] if args.no_e2e else [s for s in ours if s.e2e]
    e2e_data: Any = None
    if e2e_specs:
        if args.work_dir is not None:
            work = args.work_dir
            work.mkdir(parents=True, exist_ok=True)
        else:
            work = work_tmp = pathlib.Path(tempfile.mkdtemp(prefix="bench-"))
        try:  # generated in the background while the step rows run
            e2e_data = E2EData(cfg, work)
        except BenchError as e:
            e2e_data = e
    try:
        for spec in ours:
            why = budget_left(spec.name)
            results.add("steps", bench_ours(spec, ctx) if why is None else
                        {"name": spec.name, "kind": "ours", "base": spec.name, "compile": False,
                         "status": "skipped", "error": why})
        if not args.no_reference:
            for ref in refs:
                why = budget_left(ref.name)
                results.add("steps", bench_reference(ref, ctx, by_name) if why is None else
                            {"name": ref.name, "kind": "reference", "base": ref.pair,
                             "compile": False, "status": "skipped", "error": why})
        if e2e_specs:
            for spec in e2e_specs:
                why = budget_left(f"end to end {spec.name}")
                if why is None:
                    try:
                        if isinstance(e2e_data, BaseException):
                            raise e2e_data
                        data = e2e_data.wait()
                        row = run_e2e(spec, ctx, data, work)
                    except Exception as e:
                        row = {"name": spec.name, "status": "error", "error": _error(e)}
                else:
                    row = {"name": spec.name, "status": "skipped", "error": why}
                results.add("e2e", row)
        if args.compile is not None:
            for spec in compile_selection(ours, args.compile):
                why = budget_left(f"{spec.name}+compile")
                results.add("steps", bench_ours(spec, ctx, compile=True) if why is None else
                            {"name": spec.name + "+compile", "kind": "ours", "base": spec.name,
                             "compile": True, "status": "skipped", "error": why})
    finally:
        if isinstance(e2e_data, E2EData):
            e2e_data.cancel()
        if monitor is not None:
            monitor.close()
        if work_tmp is not None:
            shutil.rmtree(work_tmp, ignore_errors=True)
    meta["wall_s"] = round(time.monotonic() - start, 1)
    results.save()
    return results.data


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; returns the exit status (2 on a bad option or file)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    args = parse_args(argv)
    try:
        validate_args(args)
        data = load_results(args.render) if args.render is not None else run(args, argv)
        section = markdown_section(data)
        print("\n" + section, flush=True)
        if args.markdown is not None:
            append_markdown(args.markdown, section)
            print(f"appended to {args.markdown}", flush=True)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    # SIGTERM (a time limit, a scheduler) unwinds like Ctrl-C: end-to-end runs and the data
    # generator are stopped and the results file keeps what was measured
    signal.signal(signal.SIGTERM, _terminate)
    sys.exit(main())
