"""Learning-rate rules: scaling with the global batch, and linear warm-up followed by poly decay.

A learning rate is tuned for ``base_batch_size``; a config keeps its per-slot batch from 1 to
32 GPUs, and the rule ``lr_scaling`` sets the step size at the global batch ``k`` times larger:

- ``linear``: ``lr x k`` (Goyal et al. 2017; slides 002 of the source documents), established
  for SGD with momentum and a warm-up;
- ``sqrt``: ``lr x sqrt(k)``, the rule with theoretical and empirical support for Adam-type
  optimisers (Malladi et al. 2022, "On the SDEs and scaling rules for adaptive gradient
  algorithms");
- ``none``: ``lr`` as given;
- ``auto`` (the default): linear for SGD, sqrt for AdamW.

The warm-up keeps the first large steps from diverging; poly decay is MMSegmentation's ADE20K
schedule.
"""
from __future__ import annotations

import math

#: the rules ``lr_scaling`` names besides "auto"
LR_SCALING_RULES = ("linear", "sqrt", "none")
#: what "auto" means, per optimiser
AUTO_LR_SCALING = {"sgd": "linear", "adamw": "sqrt"}


def lr_scaling_rule(requested: str, optimizer: str) -> str:
    """The rule ``lr_scaling = requested`` means for ``optimizer``: "auto" -> linear for SGD,
    sqrt for AdamW; any other rule as it is."""
    if requested == "auto":
        if optimizer not in AUTO_LR_SCALING:
            raise ValueError(f"lr_scaling 'auto' has no rule for optimizer {optimizer!r}; "
                             f"set lr_scaling to one of {', '.join(LR_SCALING_RULES)}")
        return AUTO_LR_SCALING[optimizer]
    if requested not in LR_SCALING_RULES:
        raise ValueError(f"lr_scaling must be 'auto' or one of {', '.join(LR_SCALING_RULES)}, got {requested!r}")
    return requested


def scaled_lr(base_lr: float, base_batch_size: int, global_batch_size: int, rule: str) -> float:
    """``base_lr`` tuned for ``base_batch_size``, scaled to ``global_batch_size`` by ``rule``
    (linear, sqrt or none; see the module docstring)."""
    if base_batch_size <= 0 or global_batch_size <= 0:
        raise ValueError(f"batch sizes must be positive (base_batch_size={base_batch_size}, "
                         f"global_batch_size={global_batch_size})")
    ratio = global_batch_size / base_batch_size
    factors = {"linear": ratio, "sqrt": math.sqrt(ratio), "none": 1.0}
    if rule not in factors:
        raise ValueError(f"lr scaling rule must be one of {', '.join(factors)}, got {rule!r}")
    return base_lr * factors[rule]


class WarmupPoly:
    """Multiplicative factor for ``torch.optim.lr_scheduler.LambdaLR``, stepped every batch.

    Batches 0..warmup-1: linear from ``warmup_ratio`` to 1. Then poly decay
    ``(1 - progress) ** power`` from 1 down to ``min_ratio`` at ``total`` batches (and held
    there after, so a run extended past its planned length does not get a zero or negative lr).
    An object rather than a lambda so LambdaLR's state_dict can save it in checkpoints.
    """

    def __init__(self, warmup: int, total: int, power: float = 1.0, warmup_ratio: float = 1e-6,
                 min_ratio: float = 0.0) -> None:
        if warmup < 0 or total <= 0:
            raise ValueError(f"warmup_batches must be >= 0 and max_batches > 0 (got {warmup}, {total})")
        self.warmup = warmup
        self.total = total
        self.power = power
        self.warmup_ratio = warmup_ratio
        self.min_ratio = min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return self.warmup_ratio + (1.0 - self.warmup_ratio) * step / self.warmup
        span = max(1, self.total - self.warmup)
        progress = min(1.0, (step - self.warmup) / span)
        return self.min_ratio + (1.0 - self.min_ratio) * (1.0 - progress) ** self.power
