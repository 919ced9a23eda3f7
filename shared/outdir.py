"""A local run's output directory: made and checked before anything else, written by one run
at a time, and every failure to write it one line that names the path and what is safe.

- ``prepare``: the directory is created (parents too) and a file is written in it before any
  model or data work; a read-only file system, a regular file in the way, a missing
  permission or a full disk is an ``OutputError`` naming the path, not a traceback later.
- ``RunLock``: an advisory lock (``fcntl.lockf``, which network file systems with lock
  support honour too) on ``<output dir>/.lock``, held for the whole run. A second run on the
  same directory (two ``--resume latest`` at once used to both finish, writing the same
  batches twice into ``metrics.jsonl``) is refused, naming the holder's pid and host. The lock
  dies with its process, so a killed run leaves nothing to clean up.
- ``write_error``: a failed write anywhere under the directory (``metrics.jsonl``, the
  summary, TensorBoard files, energy counters) as one line: the path, the reason (with the
  free space when the disk is full) and the last complete checkpoint, which ``--resume
  latest`` continues from.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import pathlib
import shutil
import socket
import time
from typing import IO, Iterator, Optional

from shared.errors import ConfigError

LOCK_NAME = ".lock"

_REASONS = {errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
            errno.EPERM: "permission denied", errno.ENOTDIR: "a path component is a file, not a directory",
            errno.EEXIST: "a file is in the way", errno.EDQUOT: "the disk quota is exceeded"}


class OutputError(ConfigError):
    """The output directory cannot be used or written; the message is one line (exit 2)."""


def _free(path: pathlib.Path) -> str:
    for p in (path, *path.parents):
        try:
            return f"{shutil.disk_usage(p).free / 2**20:.1f} MiB free on its file system"
        except OSError:
            continue
    return "free space unknown"


def reason(err: OSError, path: pathlib.Path) -> str:
    """What went wrong, in words (a full disk with the free space)."""
    if err.errno == errno.ENOSPC:
        return f"the disk is full ({_free(path)})"
    return _REASONS.get(err.errno or 0, err.strerror or str(err))


def _in_the_way(path: pathlib.Path) -> Optional[pathlib.Path]:
    """The nearest existing path at or above ``path`` that is not a directory."""
    for p in (path, *path.parents):
        if p.exists() or p.is_symlink():
            return None if p.is_dir() else p
    return None


def prepare(out: pathlib.Path) -> None:
    """Create ``out`` and check that a file can be written in it.

    Raises:
        OutputError: ``cannot write to <out>: the file system is read-only; nothing was
            written`` (or: a file in the way, permission denied, the disk full).
    """
    blocker = _in_the_way(out)
    if blocker is not None:
        raise OutputError(f"cannot use {out} as the output directory: {blocker} is a file, not a "
                          f"directory; nothing was written (choose another --output-dir)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        with probe.open("w") as f:
            f.write("x")
            f.flush()
            os.fsync(f.fileno())
        probe.unlink()
    except OSError as err:
        raise OutputError(f"cannot write to {out}: {reason(err, out)}; nothing was written "
                          f"(choose another --output-dir)") from None


class RunLock:
    """The lock of one run on an output directory (see the module docstring)."""

    def __init__(self, out: pathlib.Path) -> None:
        self.path = pathlib.Path(out) / LOCK_NAME
        self._file: Optional[IO[str]] = None

    def acquire(self) -> "RunLock":
        """Take the lock, or raise OutputError naming the run that holds it."""
        f = self.path.open("a+")
        try:
            fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            f.seek(0)
            holder = f.read().strip() or "a process that has not written its name yet"
            f.close()
            if err.errno not in (errno.EACCES, errno.EAGAIN):
                raise OutputError(f"cannot lock {self.path}: {reason(err, self.path)}") from None
            raise OutputError(f"{self.path.parent} is being written by another run ({holder}); "
                              f"wait for it to end, or choose another --output-dir") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on host {socket.gethostname()}, since "
                f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        f.flush()
        self._file = f
        return self

    def release(self) -> None:
        if self._file is not None:
            try:
                fcntl.lockf(self._file, fcntl.LOCK_UN)
            finally:
                self._file.close()
                self._file = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def naming(path: pathlib.Path) -> Iterator[None]:
    """Inside the block, an OSError carries ``path`` as its file name (a write that fails on a
    full disk raises one without any)."""
    try:
        yield
    except OSError as err:
        if err.filename:
            raise
        raise OSError(err.errno, err.strerror, str(path)) from err


def write_error(path: pathlib.Path, err: OSError, safe: str) -> OutputError:
    """One line for a failed write of ``path``: the reason and ``safe`` (what is intact)."""
    return OutputError(f"cannot write {path}: {reason(err, pathlib.Path(path))}; {safe}")
