"""Bad samples skipped with ``skip_bad_samples``: each counted once per run, and named in the
log a bounded number of times.

A data set is read by several loader worker processes, again every epoch, and again after a
resume; counting skips as they happen counted a bad file once per epoch and per worker that
met it (2 corrupt files of 12 read as 3, 4, 6, 7, 8 over 24 batches), and warned as often
(10,000 bad files: 10,001 warning lines). Here each data set keeps one flag per sample in
shared memory (``BadSamples``): whichever process finds sample ``i`` bad sets flag ``i``, the
trial's main process counts the flags, and the checkpoint keeps the indices, so a file is
counted once per run. Only the first ``WARN_LIMIT`` bad files are named, each once, then one
line says that the rest are counted but not named.
"""
from __future__ import annotations

import logging
from typing import Iterable, List, Sequence

import torch

__all__ = ["BadSamples", "WARN_LIMIT", "log_problems", "warn_bad"]

#: bad files named individually in the log, per data set; later ones are only counted
WARN_LIMIT = 10


class BadSamples:
    """One flag per sample of a data set (``length``), in shared memory so that every loader
    worker's finding reaches the main process, plus a count of the warnings given.

    Picklable (a spawned worker gets the same shared memory) and cheap: four bytes a sample.
    """

    def __init__(self, length: int) -> None:
        # [0, length): the flags; [length]: how many bad files were named in the log so far
        self._flags = torch.zeros(int(length) + 1, dtype=torch.int32).share_memory_()
        self.length = int(length)

    def mark(self, index: int) -> bool:
        """Record sample ``index`` as bad; True the first time (in any process)."""
        first = int(self._flags[index]) == 0
        self._flags[index] = 1
        return first

    def should_name(self) -> bool:
        """Whether a newly found bad file is still to be named in the log (the first
        ``WARN_LIMIT`` of the data set); counts it."""
        named = int(self._flags[self.length])
        self._flags[self.length] = named + 1
        return named < WARN_LIMIT

    def indices(self) -> List[int]:
        """The samples found bad so far, ascending."""
        return torch.nonzero(self._flags[:self.length]).flatten().tolist()

    def count(self) -> int:
        return int(self._flags[:self.length].sum())

    def restore(self, indices: Iterable[int]) -> None:
        """Mark the samples a checkpoint recorded as bad (already counted and named)."""
        idx = [i for i in indices if 0 <= int(i) < self.length]
        if idx:
            self._flags[torch.tensor(idx, dtype=torch.long)] = 1
            self._flags[self.length] = max(int(self._flags[self.length]), WARN_LIMIT)


def warn_bad(log: logging.Logger, bad: BadSamples, index: int, message: str) -> None:
    """Log a bad sample the first time it is found, while the data set's budget lasts; one
    line when the budget runs out."""
    if not bad.mark(index):
        return
    if bad.should_name():
        log.warning("skipping bad sample %d: %s", index, message)
        if int(bad._flags[bad.length]) == WARN_LIMIT:
            log.warning("skip_bad_samples: %d bad samples named; further ones are skipped and "
                        "counted in skipped_samples without a line each", WARN_LIMIT)


def log_problems(log: logging.Logger, problems: Sequence[str], what: str = "skipping") -> None:
    """The problems a scan skipped, one line each for the first ``WARN_LIMIT``, then one line
    with the count of the rest."""
    for problem in problems[:WARN_LIMIT]:
        log.warning("%s %s", what, problem)
    if len(problems) > WARN_LIMIT:
        log.warning("%s %d more files of the same kinds (not listed; counted in "
                    "skipped_samples)", what, len(problems) - WARN_LIMIT)
