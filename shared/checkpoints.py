"""A local run's checkpoints: written so that none is ever half there, and found again.

Determined writes a checkpoint (``state_dict.pth``, ``trial_state.pkl``, the callbacks'
state, then ``metadata.json``) into a directory named by a fresh id. Killed in the middle, or
out of disk space, it would leave a directory that looks like a checkpoint and is not:
``--resume latest`` then picked it and every resume crashed. So, off-cluster:

- a checkpoint is written under a hidden name (``.<id>.partial``), its files and the
  directory are flushed to disk (fsync), and only then renamed to ``<id>``: a rename within
  one file system is atomic, so ``<id>`` either holds every file or does not exist
  (``commit``); ``metadata.json``, which Determined writes last, is the completion marker
  that ``is_complete`` checks (also for checkpoints written before this scheme);
- a write that fails removes its partial directory and says why, with the free space when
  the disk is full, and which complete checkpoint is still there (``write_failed``);
- at commit every file's size and SHA-256 go into ``checksums.json``; before a resume loads
  a checkpoint they are checked (``damage``): ``--resume latest`` skips a checkpoint damaged
  since it was written (a truncated ``state_dict.pth``), naming the file, and falls back to
  the previous complete one; ``--resume DIR`` refuses it;
- ``resolve_resume`` skips incomplete checkpoints, naming each, and picks the complete one
  with the most batches trained.

A checkpoint is still trusted input: it holds the model and optimiser state and is loaded
with ``torch.load(weights_only=True)`` (tensors, numbers and numpy's RNG state only) and its
``trial_state.pkl`` with an unpickler that refuses every class and function
(``load_data_pickle``), so a crafted file cannot run code, but nothing checks that the
weights in it are the ones you trained: resume only from checkpoints you or your cluster
wrote.

(On a cluster, Determined's checkpoint storage does the writing and the master records which
checkpoints completed; nothing here runs there.)
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import pathlib
import pickle
import shutil
import zipfile
from typing import Any, List, Optional

from shared.errors import ConfigError
from shared.outdir import OutputError

log = logging.getLogger("shared.checkpoints")

PARTIAL_SUFFIX = ".partial"
#: written by Determined after every other file of a checkpoint
MARKER = "metadata.json"


#: written at commit, after every other file: each file's size and SHA-256, checked before a
#: resume loads the checkpoint (a file truncated or damaged since is found, and skipped)
CHECKSUMS = "checksums.json"


class CheckpointWriteError(OutputError):
    """A checkpoint could not be written; the message says where, why and what is left."""


def partial_path(base: pathlib.Path, storage_id: str) -> pathlib.Path:
    return base / f".{storage_id}{PARTIAL_SUFFIX}"


def is_complete(path: pathlib.Path) -> bool:
    """A checkpoint directory with its completion marker and a non-empty model state."""
    state = path / "state_dict.pth"
    return (not path.name.startswith(".") and (path / MARKER).is_file()
            and state.is_file() and state.stat().st_size > 0)


class _NoGlobals(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refused: the file names {module}.{name}; a trial state "
                                     f"holds plain numbers and strings only")


def load_data_pickle(f: Any) -> Any:
    """``pickle.load`` of plain data (dicts, lists, numbers, strings) that refuses anything
    naming a class or function: what Determined's ``trial_state.pkl`` holds, and unlike a
    plain ``pickle.load`` it cannot be made to run code by a crafted file."""
    return _NoGlobals(f).load()


def batches_of(path: pathlib.Path) -> int:
    """Batches trained when the checkpoint was written (0 when unreadable), from the
    checkpoint's ``metadata.json`` (``steps_completed``), or from ``trial_state.pkl`` read as
    plain data for checkpoints without it."""
    try:
        return int(json.loads((path / MARKER).read_text())["steps_completed"])
    except Exception:
        pass
    try:
        with (path / "trial_state.pkl").open("rb") as f:
            return int(load_data_pickle(f).get("batches_trained", 0))
    except Exception:
        return 0


def complete_checkpoints(ckpt_dir: pathlib.Path) -> List[pathlib.Path]:
    """The complete checkpoints under ``ckpt_dir``, oldest (fewest batches) first."""
    found = [p for p in ckpt_dir.glob("*") if p.is_dir() and is_complete(p)]
    return sorted(found, key=lambda p: (batches_of(p), p.stat().st_mtime))


def _fsync(path: pathlib.Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _digest(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def commit(partial: pathlib.Path, final: pathlib.Path) -> None:
    """Record every file's size and checksum (``checksums.json``), flush every file of
    ``partial`` and the directory itself, then rename it to ``final`` and flush the parent, so
    that after a crash ``final`` is either whole or absent, and whole means as written."""
    files = sorted(f for f in partial.rglob("*") if f.is_file())
    sums = {f.relative_to(partial).as_posix(): {"bytes": f.stat().st_size, "sha256": _digest(f)}
            for f in files}
    (partial / CHECKSUMS).write_text(json.dumps({"files": sums}, indent=1) + "\n")
    for f in [*files, partial / CHECKSUMS]:
        _fsync(f)
    _fsync(partial)
    os.replace(partial, final)
    _fsync(final.parent)


def damage(path: pathlib.Path) -> Optional[str]:
    """What is wrong with the complete checkpoint ``path`` (None: nothing): a file whose size
    or checksum differs from what ``checksums.json`` recorded at commit, or is missing; for a
    checkpoint written before checksums existed, a ``state_dict.pth`` that is not a whole zip
    archive (torch.save's format)."""
    sums_file = path / CHECKSUMS
    if not sums_file.is_file():
        state = path / "state_dict.pth"
        try:
            with zipfile.ZipFile(state) as z:
                bad = z.testzip()
        except (OSError, zipfile.BadZipFile) as err:
            return f"{state} is not a whole torch archive ({err})"
        return f"{state}: member {bad} is damaged" if bad else None
    try:
        recorded = json.loads(sums_file.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"{sums_file} is unreadable ({err})"
    for rel, want in recorded.items():
        f = path / rel
        if not f.is_file():
            return f"{f} is missing"
        size = f.stat().st_size
        if size != want["bytes"]:
            return (f"{f} is {size} bytes, {want['bytes']} when written"
                    f"{' (truncated)' if size < want['bytes'] else ''}")
        if _digest(f) != want["sha256"]:
            return f"{f} differs from what was written (checksum)"
    return None


def what_is_safe(ckpt_dir: pathlib.Path) -> str:
    """The sentence that ends every write error: the last complete checkpoint, or none."""
    complete = complete_checkpoints(ckpt_dir) if ckpt_dir.is_dir() else []
    if complete:
        return (f"the last complete checkpoint, {complete[-1].name} (batch "
                f"{batches_of(complete[-1])}), is intact: --resume latest continues from it")
    return "there is no complete checkpoint of this run yet"


def _size(path: pathlib.Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def _disk_full(err: BaseException) -> bool:
    # torch.save wraps the OSError of its writer in a RuntimeError ("file write failed"): look
    # down the exception chain and at the message.
    e: Optional[BaseException] = err
    while e is not None:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        e = e.__cause__ or e.__context__
    return False


def write_failed(partial: pathlib.Path, final: pathlib.Path, err: BaseException) -> CheckpointWriteError:
    """Remove what a failed write left and return the error to raise instead of ``err``."""
    written = _size(partial)
    shutil.rmtree(partial, ignore_errors=True)
    free = shutil.disk_usage(final.parent).free
    left = what_is_safe(final.parent)
    if _disk_full(err) or free < max(written, 1):
        why = (f"the disk is full ({free / 2**20:.1f} MiB free on the file system of "
               f"{final.parent}; {written / 2**20:.1f} MiB were written when it failed)")
    else:
        why = f"{type(err).__name__}: {err}"
    return CheckpointWriteError(f"checkpoint {final} could not be written: {why}; the partial "
                                f"checkpoint was removed, and {left}")


def resolve_resume(resume: Optional[str], ckpt_dir: pathlib.Path) -> Optional[str]:
    """A checkpoint path (or 'latest') -> the storage id Determined resumes from. A checkpoint
    outside this run's checkpoint directory is copied in, never moved. Incomplete checkpoints
    (an interrupted write) are never resumed from: 'latest' skips them, naming each."""
    if not resume:
        return None
    if resume == "latest":
        skipped = sorted(p.name for p in ckpt_dir.glob("*") if p.is_dir() and not is_complete(p))
        for name in skipped:
            log.warning("--resume latest: skipping %s: an incomplete checkpoint (its write was "
                        "interrupted)", ckpt_dir / name)
        found = complete_checkpoints(ckpt_dir)
        damaged = 0
        for candidate in reversed(found):  # the newest whole one
            problem = damage(candidate)
            if problem is None:
                return candidate.name
            damaged += 1
            log.warning("--resume latest: skipping %s (batch %d): damaged since it was written: "
                        "%s; trying the one before", candidate, batches_of(candidate), problem)
        extra = "".join(f" ({n} {what} ones skipped)" for n, what in
                        ((len(skipped), "incomplete"), (damaged, "damaged")) if n)
        raise ConfigError(f"--resume latest: no complete checkpoint under {ckpt_dir}{extra}")
    src = pathlib.Path(resume)
    if not (src / "state_dict.pth").is_file():
        raise ConfigError(f"--resume {resume}: not a checkpoint directory (no state_dict.pth)")
    if not is_complete(src):
        raise ConfigError(f"--resume {resume}: an incomplete checkpoint (no {MARKER}, or an empty "
                          f"state_dict.pth: its write was interrupted); use an earlier one, or "
                          f"--resume latest")
    problem = damage(src)
    if problem is not None:
        raise ConfigError(f"--resume {resume}: damaged since it was written: {problem}; use an "
                          f"earlier checkpoint, or --resume latest (which skips damaged ones)")
    if src.resolve().parent != ckpt_dir.resolve():
        dst = ckpt_dir / src.name
        if not dst.exists():
            shutil.copytree(src, dst)
    return src.name
