"""Loader workers stopped when training ends, so that the process exits at once.

A trial that stops early (its target reached, ``early_stop_patience``, a searcher's stop) returns
from ``Trainer.fit`` with its training and validation loaders' iterators still alive: their
persistent workers were never told to finish (a run that trains all its batches leaves none).
With pinned memory (any CUDA run) PyTorch up to 2.13 then waits at interpreter exit up to 5 s
for each such worker before killing it (pytorch/pytorch#81794; 2.14 shuts them down properly):
on the 2026-12-04 H200 campaign (torch 2.11) every early-stopped run held its GPU idle for
80-90 s after its last batch, 5 s for each of its 16 workers (8 training, 8 validation).
Determined's images ship such versions, and ASHA stops most trials early.

``release_loader_workers`` shuts those iterators down the way PyTorch does when the last
reference to one goes (``_shutdown_workers``: tell each worker to finish, join it): the
workers end within moments and nothing is left for the exit to wait on. PyTorch offers no
public call for this, and the iterators are held by Determined's trial controller, out of our
reach but for the garbage collector's list of objects; the scan runs once, when training ends.
"""
from __future__ import annotations

import gc
import logging

log = logging.getLogger(__name__)


def release_loader_workers() -> int:
    """Shut down every multiprocess DataLoader iterator of this process whose workers still
    run; return how many there were. Call it when training has ended (no loader is used after)."""
    try:
        from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter as Iter
    except ImportError:  # a PyTorch without it: nothing to release
        return 0
    released = 0
    for obj in gc.get_objects():
        # type(), not isinstance(): isinstance asks some objects (deprecated proxies) for
        # their __class__, which warns
        if issubclass(type(obj), Iter) and not getattr(obj, "_shutdown", True):
            shutdown = getattr(obj, "_shutdown_workers", None)
            if shutdown is None:
                continue
            try:
                shutdown()
                released += 1
            except Exception as e:  # never let a clean-up hide how training ended
                log.debug("could not shut down a data loader's workers: %s", e)
    return released
