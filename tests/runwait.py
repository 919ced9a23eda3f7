"""Waiting on a local run started as a subprocess, by its progress rather than by a clock: its
reports in ``metrics.jsonl``."""
from __future__ import annotations

import pathlib
import subprocess
import time

from shared import runlog


def wait_for_report(proc: subprocess.Popen, metrics: pathlib.Path, group: str,
                    min_step: int = 0, timeout: float = 1200.0, poll_s: float = 0.05) -> bool:
    """Wait until the run has reported ``group`` at ``min_step`` batches or more: True; False
    when the run ended first. The timeout (a guard against a hang, not a measurement) raises."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if metrics.exists() and any(r["group"] == group and r["steps_completed"] >= min_step
                                    for r in runlog.read(metrics)):
            return True
        if proc.poll() is not None:
            return False
        time.sleep(poll_s)
    raise AssertionError(f"no {group!r} report at batch {min_step} or later within {timeout:g} s")
