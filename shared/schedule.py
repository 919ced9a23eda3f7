"""Learning-rate rules: the linear scaling rule and linear warm-up followed by poly decay.

The linear scaling rule (Goyal et al. 2017; slides 002 of the source documents): a learning
rate tuned for ``base_batch_size`` is multiplied by ``global_batch_size / base_batch_size``, so
a config keeps its per-slot batch from 1 to 32 GPUs and the step size follows. The warm-up
keeps the first large steps from diverging; poly decay is MMSegmentation's ADE20K schedule.
"""
from __future__ import annotations


def scaled_lr(base_lr: float, base_batch_size: int, global_batch_size: int) -> float:
    """``base_lr`` tuned for ``base_batch_size``, scaled linearly to ``global_batch_size``."""
    if base_batch_size <= 0 or global_batch_size <= 0:
        raise ValueError(f"batch sizes must be positive (base_batch_size={base_batch_size}, "
                         f"global_batch_size={global_batch_size})")
    return base_lr * global_batch_size / base_batch_size


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
