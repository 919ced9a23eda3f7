"""The order of the training samples and their random augmentation, as functions of the trial
seed only: what makes a restored or preempted trial train on the images an uninterrupted one
would have, with the same augmentation.

Determined restores a trial by building its data loader afresh and skipping the batches it
already trained (``SkipBatchSampler``; "always shuffle before skipping"). That replays the
original order only if the shuffle is a function of something that survives the restart.
``DataLoader(shuffle=True)`` without a generator is not: PyTorch's ``RandomSampler`` draws its
seed from the global torch RNG at the start of each epoch, and on restore that RNG holds the
state Determined restored from the checkpoint, so the restored run sees other images (some
twice, others never, within that epoch).

Here:

- ``SeededSampler``: epoch ``e``'s permutation comes from a ``torch.Generator`` seeded with
  (trial seed, e), and each index is handed out with a seed of its own drawn from the same
  generator; replaying it from the start (Determined's skip) reaches exactly the state of the
  uninterrupted run, so nothing but the seed needs saving (the trial records it in its
  checkpoint and restores it: ``shared.trial``);
- ``sample_rng(seed)``: the data set draws a sample's random augmentation (crop, flip,
  rescale, photometric parameters: the global torch RNG of the process that loads it) under
  that sample's own seed, so it no longer depends on which loader worker reads the sample,
  how many workers there are, or how far a worker had got: the same sample at the same place
  of the same epoch is augmented alike, restored or not.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, Optional, Tuple

import numpy as np
import torch

__all__ = ["SeededSampler", "derive_seed", "sample_rng", "split_index"]

#: the largest per-sample seed (torch.manual_seed takes 64-bit seeds; this keeps them positive)
_MAX_SEED = 2 ** 63 - 1


def derive_seed(seed: int, *stream: int) -> int:
    """A 63-bit seed for the stream ``stream`` of the trial seed ``seed``: the same numbers
    give the same seed on every machine and Python version (numpy's SeedSequence, not hash())."""
    words = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, *map(int, stream)]).generate_state(2)
    return int((int(words[0]) << 31) ^ int(words[1])) & _MAX_SEED


class SeededSampler(torch.utils.data.Sampler):
    """The indices of ``length`` samples, each epoch a permutation (or in order, without
    ``shuffle``) from a generator seeded with ``derive_seed(seed, 0, epoch)``, each paired with
    a per-sample seed: yields ``(index, sample seed)``.

    An epoch is one ``__iter__``; Determined's repeating batch sampler starts the next one
    when the last ends, so epoch numbers are the same in a restored run as in the
    uninterrupted one.
    """

    def __init__(self, length: int, seed: int, shuffle: bool = True) -> None:
        if length <= 0:
            raise ValueError(f"SeededSampler needs at least one sample, got {length}")
        self.length, self.seed, self.shuffle = int(length), int(seed), bool(shuffle)
        #: epochs started so far (in this process)
        self.epoch = 0

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        g = torch.Generator()
        g.manual_seed(derive_seed(self.seed, 0, self.epoch))
        self.epoch += 1
        order = torch.randperm(self.length, generator=g) if self.shuffle else torch.arange(self.length)
        seeds = torch.randint(0, _MAX_SEED, (self.length,), generator=g)
        return iter(zip(order.tolist(), seeds.tolist()))

    def state_dict(self) -> dict:
        return {"seed": self.seed, "epoch": self.epoch, "length": self.length}


def split_index(index: Any) -> Tuple[int, Optional[int]]:
    """``(index, seed)`` from what a sampler handed a data set: a plain index (no seed) or a
    ``SeededSampler`` pair."""
    if isinstance(index, (tuple, list)):
        return int(index[0]), int(index[1])
    return int(index), None


@contextlib.contextmanager
def sample_rng(seed: Optional[int]) -> Iterator[None]:
    """The global torch RNG (CPU) seeded with ``seed`` inside the block and restored after it,
    so a data set loaded in the main process (``workers_per_slot: 0``) leaves the trial's own
    RNG (dropout, Determined's checkpointed state) untouched. ``None``: no change."""
    if seed is None:
        yield
        return
    # the CPU generator itself: torch.manual_seed and fork_rng also visit every device and
    # cost ~100-300 us a sample; this is ~4 us
    generator = torch.default_generator
    state = generator.get_state()
    generator.manual_seed(seed)
    try:
        yield
    finally:
        generator.set_state(state)
