"""Hyperparameters: the schema every segmentation trial shares, its check (``resolve``) and
the target. Reading experiment configs and ``--set`` overrides is ``shared.configfile``.

A misspelled key in an experiment config would otherwise be silently ignored by the trial
(Determined passes whatever ``hyperparameters`` holds), and a wrong value would fail hours
later on the cluster. So every key is declared here with its default and allowed values (a
``Param``: the project's one declaration class, ``shared.energy.schema``, which the energy
options use too, and whose ``accept`` is the one value check), and ``resolve`` rejects unknown
keys and bad values with a message naming the file and the key, before any model, data or
GPU work.
"""
from __future__ import annotations

import difflib
import math
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional


from shared.energy.errors import SiteSettingError
from shared.energy.schema import Param, Refused
from shared.energy.options import default_options, validate_options
from shared.errors import ConfigError
from shared.schedule import LR_SCALING_RULES


def between(lo: float, hi: float, lo_open: bool = False, hi_open: bool = False
             ) -> Callable[[Any], Optional[str]]:
    """A number in ``lo..hi`` (ends open or closed). Every numeric hyperparameter has an upper
    bound as well as a lower one: a value beyond it (a seed of 2**32, a crop of 1e9 pixels, a
    batch of 1e30) would otherwise pass here and fail later, deep inside numpy, the allocator or
    a timer, with a traceback instead of the key's name."""
    def text(x: float) -> str:
        return str(x) if isinstance(x, int) else f"{x:g}"

    span = (f"in {'(' if lo_open else '['}{text(lo)}, {text(hi)}{')' if hi_open else ']'}"
            if lo_open or hi_open or isinstance(lo, float) or isinstance(hi, float)
            else f"in {text(lo)}..{text(hi)}")

    def check(v: Any) -> Optional[str]:
        ok = (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
        return None if ok else f"must be {span}"
    return check


#: the largest image side, crop or tile the schema accepts, pixels (a 16384 x 16384 crop is
#: already 800 MB of float32 activations per channel of the first layer)
MAX_SIDE = 16384
#: the largest count of batches, periods and warm-up (10**9 batches: centuries at 10 steps/s)
MAX_BATCHES = 10 ** 9
#: the largest batch (images per step, all GPUs together)
MAX_BATCH = 2 ** 20
#: seeds are 32-bit: numpy's RandomState takes 0..2**32-1
MAX_SEED = 2 ** 32 - 1


def _pair(lo_ok: Callable[[float], bool], span: str) -> Callable[[Any], Optional[str]]:
    def check(v: Any) -> Optional[str]:
        if len(v) != 2 or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
            return "must be a list of two numbers"
        if not all(math.isfinite(x) and lo_ok(x) for x in v):
            return f"values out of range: each must be {span}"
        return None
    return check


def _size(v: Any) -> Optional[str]:
    ok = lambda x: isinstance(x, int) and not isinstance(x, bool) and 8 <= x <= MAX_SIDE  # noqa: E731
    if isinstance(v, int) and not isinstance(v, bool):
        return None if ok(v) else f"must be in 8..{MAX_SIDE} pixels"
    if isinstance(v, list) and len(v) == 2 and all(ok(x) for x in v):
        return None
    return f"must be an int or a list [height, width] of ints in 8..{MAX_SIDE}"


INT = (int,)
NUM = (int, float)
STR = (str,)
BOOL = (bool,)

#: validation inference modes (``val_mode``; shared.engine.SegmentationTask)
VAL_MODES = ("whole", "slide")
#: training batches under torch.compile charged to the energy phase "compile" (its warm-up:
#: the engine compiles the forward and backward graphs at the first, the margin takes a
#: recompilation after the first optimiser step); the report leaves them out of images/s
COMPILE_WARMUP_BATCHES = 2
#: ``compile: auto`` compiles on a GPU when the trial trains at least this many batches. On an
#: H200 (BENCHMARKS.md, 2026-12-04) compiling the forward and the loss took 28 s (U-Net) and
#: 46 s (SegFormer-B0) of warm-up and shortened the step by 23-24 ms (batch 16 at 512 px), so it
#: pays back after about 1,200 and 1,900 batches; the margin covers a slower compilation (a cold
#: cache, a larger model). Shorter runs (the demos, smoke tests) stay eager
COMPILE_AUTO_MIN_BATCHES = 5000
#: ``torch.compile`` modes (``compile_mode``): inductor's default; ``reduce-overhead`` adds CUDA
#: graphs (the fixed-shape training step replayed as one graph, no per-kernel launch cost);
#: ``max-autotune-no-cudagraphs`` times several kernels per operation while compiling
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs")
#: kernels of validation (``val_kernels``; shared.inference): cuDNN as in training; PyTorch's own
#: kernels in grouped (depthwise) convolutions; no cuDNN at all (convolutions and attention)
VAL_KERNELS = ("cudnn", "native_depthwise", "plan_free")

#: Keys every segmentation trial understands. Model-specific keys are declared by each trial.
COMMON: Dict[str, Param] = {
    # data
    "data_dir": Param(None, STR, nullable=True,
                 help="dataset root (ADEChallengeData2016 layout) as the task sees it: bind-mount it on a cluster, --data-dir locally"),
    "num_classes": Param(150, INT, check=lambda v: None if 1 <= v <= 254 else "must be in 1..254",
                 help="classes scored (ADE20K: 150); label 0 (unlabelled) is ignored"),
    "class_names": Param(None, (list,), nullable=True,
                 help="optional names for the per-class IoU report"),
    "crop_size": Param(512, (int, list), check=_size,
                 help="training crop, pixels (int or [h, w])"),
    "scale": Param([2048, 512], (list,), check=_pair(lambda x: 8 <= x <= 4 * MAX_SIDE, f"in 8..{4 * MAX_SIDE}"),
                 help="rescale target [long, short] before the ratio_range jitter; validation rescales to it keeping the aspect ratio"),
    "ratio_range": Param([0.5, 2.0], (list,), check=_pair(lambda x: 0 < x <= 16, "in (0, 16]"),
                 help="random rescale factor range of the training pipeline"),
    "cat_max_ratio": Param(0.75, NUM, check=lambda v: None if 0 < v <= 1 else "must be in (0, 1]",
                 help="a crop is redrawn (up to 10 times) while one class covers at least this share of it"),
    "skip_bad_samples": Param(False, BOOL,
                 help="skip unreadable or unpaired samples (counted in skipped_samples) instead of failing"),
    "workers_per_slot": Param(8, INT, check=between(0, 256),
                 help="data-loader worker processes per GPU"),
    "val_batch_size_per_slot": Param(1, INT, check=between(1, 4096),
                 help="validation images per GPU per batch; above 1, images of different sizes are zero-padded to the batch's largest before the forward pass, which changes the logits near the smaller ones' borders (the model sees the padding) and so the mIoU slightly: 1, as MMSegmentation validates and the configs set, is exact"),
    "val_mode": Param("whole", STR, choices=VAL_MODES,
                 help="validation inference, MMSegmentation's test_cfg mode: whole = each resized image at once; slide = val_crop_size windows every val_stride pixels, logits averaged where they overlap"),
    "val_crop_size": Param(None, (int, list), check=_size, nullable=True,
                 help="slide mode's window, pixels (int or [h, w]); null = crop_size"),
    "val_stride": Param(None, (int, list), check=_size, nullable=True,
                 help="slide mode's step between windows, pixels (int or [h, w]); null = the window (no overlap)"),
    "val_pad_multiple": Param(0, INT, check=between(0, 1024),
                 help="whole-image validation: pad each resized image (bottom, right; label ignored) to a multiple of this many pixels and crop the logits back, so that a few shapes serve the whole set (no per-shape warm-up on a GPU); 0 = each image at its own size (shared/inference.py)"),
    "val_kernels": Param("plan_free", STR, choices=VAL_KERNELS,
                 help="validation's kernels on a GPU, where images come in many shapes: plan_free = no cuDNN in convolutions and attention (PyTorch's own kernels and flash/memory-efficient attention: no execution plan to build per new shape); native_depthwise = PyTorch's own kernels in grouped (depthwise) convolutions only; cudnn = as training (shared/inference.py)"),
    # optimisation
    "global_batch_size": Param(16, INT, check=between(1, MAX_BATCH),
                 help="images per optimizer step, all GPUs together"),
    "base_batch_size": Param(16, INT, check=between(1, MAX_BATCH),
                 help="the batch size lr is given for: the trial scales lr from it to global_batch_size by lr_scaling"),
    "optimizer": Param("adamw", STR, choices=("adamw", "sgd"),
                 help="AdamW or SGD (no weight decay on norms and biases)"),
    "lr": Param(1e-3, NUM, check=between(0.0, 10.0, lo_open=True),
                 help="peak learning rate at base_batch_size (scaled to global_batch_size by lr_scaling)"),
    "lr_scaling": Param("auto", STR, choices=("auto", *LR_SCALING_RULES),
                 help="how lr follows the global batch: linear = lr x global/base (Goyal et al. 2017, SGD with warm-up), "
                      "sqrt = lr x sqrt(global/base) (Malladi et al. 2022, Adam-type), none = lr as given; "
                      "auto = linear for sgd, sqrt for adamw"),
    "weight_decay": Param(0.01, NUM, check=between(0.0, 1.0),
                 help="decoupled weight decay (AdamW) or L2 (SGD)"),
    "momentum": Param(0.9, NUM, check=lambda v: None if 0 <= v < 1 else "must be in [0, 1)",
                 help="SGD momentum"),
    "warmup_batches": Param(1500, INT, check=between(0, MAX_BATCHES),
                 help="linear warm-up length, batches"),
    "warmup_ratio": Param(1e-6, NUM, check=lambda v: None if 0 <= v <= 1 else "must be in [0, 1]",
                 help="learning-rate factor at the first warm-up batch"),
    "poly_power": Param(1.0, NUM, check=between(0.0, 100.0, lo_open=True),
                 help="exponent of the poly decay after warm-up"),
    "min_lr_ratio": Param(0.0, NUM, check=lambda v: None if 0 <= v <= 1 else "must be in [0, 1]",
                 help="floor of the poly decay, as a factor of the peak"),
    "grad_clip_norm": Param(None, NUM, nullable=True, check=between(0.0, 1e6, lo_open=True),
                 help="clip the global gradient norm (null: no clipping)"),
    "precision": Param("auto", STR, choices=("auto", "bf16", "fp16", "fp32"),
                 help="auto = bf16 autocast where the GPU has it, else fp16 with a gradient scaler; fp32 on CPU"),
    "channels_last": Param("auto", (str, bool), choices=("auto", True, False),
                 help="NHWC memory layout; auto = on for CUDA"),
    # implementation switches (the implementation ablation: experiment_configs/*/ablation.yaml)
    "compile": Param("auto", (str, bool), choices=("auto", True, False),
                 help=f"torch.compile the training forward and loss (validation runs the same weights eagerly); its first {COMPILE_WARMUP_BATCHES} training batches are the energy phase 'compile' (compile_wh, compile_s), not 'train'; auto = on for CUDA when the trial trains >= {COMPILE_AUTO_MIN_BATCHES} batches (where the compile time pays back), off otherwise"),
    "compile_mode": Param("default", STR, choices=COMPILE_MODES,
                 help="torch.compile mode when compiling: default; reduce-overhead (CUDA graphs for the fixed-shape training step); max-autotune-no-cudagraphs"),
    "fused_optimizer": Param(True, BOOL,
                 help="AdamW/SGD fused=True (one kernel for all parameters, on CUDA and CPU); false: the per-parameter loop (foreach=False)"),
    "cudnn_benchmark": Param(False, BOOL,
                 help="torch.backends.cudnn.benchmark for the training step: time the cuDNN algorithms at the training shape and keep the fastest (validation never autotunes: its images come in many shapes); no effect on CPU"),
    "implementation": Param(None, (dict,), nullable=True,
                 help="a set of implementation switches ({precision: fp32, compile: true, ...}; keys among IMPLEMENTATION_SWITCHES) that overrides those keys: one categorical value per variant (ablation_to_target.yaml)"),
    "seed": Param(0, INT, check=between(0, MAX_SEED),
                 help="seed of local runs: initialisation, data order and augmentation (on a cluster Determined's trial seed does this)"),
    "pretrained_path": Param(None, STR, nullable=True,
                 help="local weights file to start from; nothing is ever downloaded"),
    # length and periods, in batches (training length is set in code in Determined 0.38)
    "max_batches": Param(160000, INT, check=between(1, MAX_BATCHES),
                 help="training length, batches (an ASHA searcher's max_time wins when time_metric is batches)"),
    "validation_period": Param(4000, INT, check=between(1, MAX_BATCHES),
                 help="validate every this many batches"),
    "checkpoint_period": Param(4000, INT, check=between(1, MAX_BATCHES),
                 help="checkpoint every this many batches"),
    "report_period": Param(50, INT, check=between(1, MAX_BATCHES),
                 help="report training metrics every this many batches"),
    # target (see resolve_target: the legacy keys, the direction's default, conflicts)
    "target_metric": Param("miou", STR,
                 help="the validation metric that defines time and energy to target (a metric "
                      "of the recipe's validation group; classification: accuracy)"),
    "target_value": Param(16.0, NUM, check=between(0.0, 1e12, lo_open=True),
                 help="the value of target_metric that is the target (classification: 90); "
                      "> 0, which the energy projection needs"),
    "target_smaller_is_better": Param(None, BOOL, nullable=True,
                 help="direction: true = reached at target_metric <= target_value; null = true "
                      "when target_metric's name contains 'loss', else false"),
    "target_miou": Param(None, NUM, nullable=True,
                 check=lambda v: None if 0 < v <= 100 else "must be in (0, 100]",
                 help="legacy form of target_metric: miou + target_value (kept for existing "
                      "configs; after resolution it equals target_value when the metric is miou, "
                      "else null)"),
    "early_stop_patience": Param(None, INT, nullable=True, check=between(1, 10 ** 6),
                 help="stop after this many validations in a row without improvement of "
                      "target_metric in its direction (null: off)"),
    "stop_at_target": Param(False, BOOL,
                 help="stop the trial at the first validation that reaches the target"),
    # energy (nested; see shared/energy)
    "energy": Param(None, (dict,), nullable=True,
                 help="the energy hook: see the energy.* rows and the Energy section"),
}

#: The keys of ``COMMON`` that every family's trial reads, whatever its data and model: the
#: engine's (optimiser, schedule, precision, implementation switches; ``shared.engine``) and
#: the run's (batches, periods, target, energy; ``shared.trial.RecipeTrial``). A family that
#: builds its own schema (classification, rare objects) starts from these, so that a key
#: the engine or the trial reads is never missing from it.
ENGINE_KEYS = ("optimizer", "lr", "lr_scaling", "weight_decay", "momentum", "warmup_batches",
               "warmup_ratio", "poly_power", "min_lr_ratio", "grad_clip_norm", "precision",
               "channels_last", "compile", "compile_mode", "fused_optimizer", "cudnn_benchmark")
RUN_KEYS = ("data_dir", "global_batch_size", "base_batch_size", "seed", "pretrained_path",
            "max_batches", "validation_period", "checkpoint_period", "report_period",
            "stop_at_target", "skip_bad_samples", "workers_per_slot", "energy", "target_metric",
            "target_value", "target_smaller_is_better", "early_stop_patience")
FAMILY_KEYS = RUN_KEYS + ENGINE_KEYS


#: the implementation switches of the ablation (experiment_configs/*/ablation.yaml), which the
#: hyperparameter ``implementation`` may set together; ``attention_impl`` is the attention
#: models' own (their MODEL_PARAMS)
IMPLEMENTATION_SWITCHES = ("precision", "channels_last", "compile", "fused_optimizer",
                           "cudnn_benchmark", "attention_impl")
#: the ablation's reference variant: the implementation MMCV-era code ran (what the report
#: divides by, and the benchmark's ``--ablation`` starts from)
ABLATION_BASELINE = {"precision": "fp32", "channels_last": False, "compile": False,
                     "fused_optimizer": False, "cudnn_benchmark": False, "attention_impl": "eager"}
#: every switch at its fast value (bf16 needs an Ampere or later GPU)
ABLATION_FASTEST = {"precision": "bf16", "channels_last": True, "compile": True,
                    "fused_optimizer": True, "cudnn_benchmark": True, "attention_impl": "sdpa"}


def implementation_switches(trial_cls: Any) -> List[str]:
    """The implementation switches a trial class has (``attention_impl`` only where the model
    has attention), in ``IMPLEMENTATION_SWITCHES``' order."""
    return _switches_in({**trial_cls.COMMON_PARAMS, **trial_cls.MODEL_PARAMS})


def _switches_in(schema: Mapping[str, Any]) -> List[str]:
    return [k for k in IMPLEMENTATION_SWITCHES if k in schema]


def _closest(key: str, known: Iterable[str]) -> str:
    near = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean '{near[0]}'?)" if near else ""


def _check(name: str, value: Any, p: Param, where: str) -> Any:
    """``p.accept(value)``, its refusal as a ConfigError naming ``where`` and the key."""
    try:
        return p.accept(value)
    except Refused as refused:
        shown = "" if refused.value is None else f" = {refused.value!r}"
        raise ConfigError(f"{where}: hyperparameter '{name}'{shown} {refused.problem}") from None


def resolve(hp: Mapping[str, Any], model_params: Mapping[str, Param], where: str = "hyperparameters",
            common: Optional[Mapping[str, Param]] = None) -> Dict[str, Any]:
    """Fill defaults, check types and values, refuse unknown keys. ``where`` names the source
    (a config file path) in messages; ``common`` is the task family's shared schema
    (segmentation's ``COMMON`` by default)."""
    schema = {**(COMMON if common is None else common), **model_params}
    out: Dict[str, Any] = {}
    for key in hp:
        if key not in schema:
            raise ConfigError(f"{where}: unknown hyperparameter '{key}'{_closest(key, schema)}; "
                              f"known: {', '.join(sorted(schema))}")
    for key, p in schema.items():
        out[key] = _check(key, hp.get(key, p.default), p, where)
    for key, value in (out.get("implementation") or {}).items():
        if key not in IMPLEMENTATION_SWITCHES or key not in schema:
            switches = _switches_in(schema)
            raise ConfigError(f"{where}: hyperparameter 'implementation.{key}' is not an "
                              f"implementation switch of this model{_closest(key, switches)}; "
                              f"known: {', '.join(switches)}")
        out[key] = _check(f"implementation.{key}", value, schema[key], where)
    _check_class_names(out, where)
    # The energy section's options belong to the energy hook, which checks their values;
    # only the refusal of unknown keys (with the file named) is added here.
    energy = dict(out.get("energy") or {})
    known = default_options()
    for key in energy:
        if key not in known:
            raise ConfigError(f"{where}: unknown hyperparameter 'energy.{key}'"
                              f"{_closest(key, known)}; known: {', '.join(sorted(known))}")
    try:
        out["energy"] = validate_options(energy)
    except SiteSettingError as e:
        raise ConfigError(f"{where}: {e}") from None
    except ValueError as e:
        raise ConfigError(f"{where}: hyperparameter {e}") from None
    resolve_target(hp, out, schema, where)
    return out


def _check_class_names(out: Mapping[str, Any], where: str) -> None:
    """``class_names``, when given, names each of ``num_classes`` classes once: a shorter list
    would leave classes unnamed in the per-class report, a duplicate would merge two rows."""
    names = out.get("class_names")
    if names is None or "num_classes" not in out:
        return
    bad = [n for n in names if not isinstance(n, (str, int)) or isinstance(n, bool)]
    if bad:
        raise ConfigError(f"{where}: hyperparameter 'class_names' holds {bad[0]!r}; names are "
                          f"strings")
    if len(names) != out["num_classes"]:
        raise ConfigError(f"{where}: hyperparameter 'class_names' has {len(names)} names but "
                          f"num_classes is {out['num_classes']}: give one name per class, in "
                          f"class-index order (or leave class_names out)")
    seen: Dict[str, int] = {}
    for i, n in enumerate(map(str, names)):
        if n in seen:
            raise ConfigError(f"{where}: hyperparameter 'class_names' names {n!r} twice (classes "
                              f"{seen[n]} and {i}); each class needs its own name")
        seen[n] = i


#: the keys that said the target before target_metric/target_value existed, and the metric
#: each one means; still read, so that existing configs and customers' copies keep working
LEGACY_TARGETS: Dict[str, str] = {"target_miou": "miou", "target_accuracy": "accuracy"}


def smaller_is_better(metric: str) -> bool:
    """The direction of ``metric`` when ``target_smaller_is_better`` is null: a name containing
    ``loss`` gets smaller as the model improves, every other metric (miou, accuracy, f1, ...)
    larger. A metric outside that rule (``false_positives_per_image``) says it in the config."""
    return "loss" in metric


def target_reached(value: Any, target: float, smaller_is_better: bool) -> bool:
    """Whether a validation's ``value`` of the target metric reaches ``target`` in the metric's
    direction (a missing or non-finite value never does): the one rule of the trials' target
    callback and of the reports."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return False
    return value <= target if smaller_is_better else value >= target


def resolve_target(given: Mapping[str, Any], out: Dict[str, Any], schema: Mapping[str, Param],
                   where: str) -> None:
    """Settle ``target_metric``, ``target_value`` and ``target_smaller_is_better`` in ``out``
    (the resolved hyperparameters) from what the config ``given`` set.

    A legacy key (``target_miou: X``, ``target_accuracy: X``) means ``target_metric`` = its
    metric and ``target_value`` = X, larger is better; given together with a new key that says
    otherwise it is an error naming both. A ``target_metric`` other than the family's default
    needs its ``target_value`` (the default value belongs to the default metric). Afterwards the
    legacy key of the schema holds ``target_value`` when it names the target metric, else null,
    so that the resolved hyperparameters resolve to themselves.
    """
    if "target_metric" not in schema:
        return
    has = lambda k: given.get(k) is not None  # noqa: E731
    legacy = [k for k in LEGACY_TARGETS if k in schema and has(k)]
    metric, value = out["target_metric"], out["target_value"]
    if len(legacy) > 1:
        raise ConfigError(f"{where}: hyperparameters {' and '.join(repr(k) for k in legacy)} both "
                          f"set the target; keep one (or use target_metric and target_value)")
    if legacy:
        key = legacy[0]
        old_metric, old_value = LEGACY_TARGETS[key], out[key]
        means = f"'{key}' = {old_value:g} means target_metric: {old_metric}, target_value: {old_value:g}"
        if has("target_metric") and metric != old_metric:
            raise ConfigError(f"{where}: hyperparameters '{key}' and 'target_metric' disagree: "
                              f"{means}, but target_metric is {metric!r}; keep one of the two")
        if has("target_value") and value != old_value:
            raise ConfigError(f"{where}: hyperparameters '{key}' and 'target_value' disagree: "
                              f"{means}, but target_value is {value:g}; keep one of the two")
        if out["target_smaller_is_better"]:
            raise ConfigError(f"{where}: hyperparameters '{key}' and 'target_smaller_is_better' "
                              f"disagree: {means}, larger is better; keep one of the two")
        metric, value = old_metric, old_value
    elif has("target_metric") and metric != schema["target_metric"].default and not has("target_value"):
        raise ConfigError(f"{where}: hyperparameter 'target_metric' = {metric!r} needs a "
                          f"'target_value' (the default {schema['target_value'].default:g} is the "
                          f"target of {schema['target_metric'].default})")
    smaller = out["target_smaller_is_better"]
    out["target_metric"], out["target_value"] = metric, float(value)
    out["target_smaller_is_better"] = smaller_is_better(metric) if smaller is None else smaller
    for key, name in LEGACY_TARGETS.items():
        if key in schema:
            out[key] = out["target_value"] if name == metric else None


def training_length(hp: Mapping[str, Any], exp_conf: Optional[Mapping[str, Any]]) -> int:
    """Batches to train. Determined 0.38 sets training length in code; an ASHA searcher still
    states its own ``max_time`` in ``batches``, and the two must agree or rungs are misplaced,
    so the searcher's value wins when there is one."""
    searcher = (exp_conf or {}).get("searcher") or {}
    if searcher.get("time_metric") == "batches" and searcher.get("max_time"):
        return int(searcher["max_time"])
    return int(hp["max_batches"])
