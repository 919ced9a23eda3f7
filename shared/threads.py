"""How many CPU threads torch uses for a local run: the cores that are idle now.

torch's default is one intra-op thread per core. On a machine that other work keeps busy,
those threads wait for each other at every operation: on this project's 2-core machine with
two test suites running, ``python -m shared.demo --models unet`` reached its target in 354 s
with two threads (torch's default there) against 89 s with one; idle, two threads took 9-17 s
and one 13-15 s (README, "Two commands"). So the default is chosen at start from the
machine's state: the number of cores idle over a short sample (``/proc/stat`` on Linux, else
the load average), at least 1, at most the cores this process may use. ``OMP_NUM_THREADS``, when set, is the
user's choice and wins. The local runner and the demo state the choice and its reason at start.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Mapping, Optional, Tuple

__all__ = ["Choice", "apply", "choose", "usable_cores"]

#: how long the idle time is sampled
SAMPLE_S = 0.3


@dataclass(frozen=True)
class Choice:
    threads: int
    reason: str

    def line(self) -> str:
        return f"CPU threads: {self.threads} ({self.reason})"


def usable_cores() -> int:
    """The cores this process may run on: its affinity, capped by a cgroup v2 CPU quota
    (a container limited to 2 CPUs on a 64-core host has 2)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.floor(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def _cpu_times() -> Optional[Tuple[int, int]]:
    """(idle, total) jiffies of all CPUs, from /proc/stat's first line; None elsewhere."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    if len(fields) < 4:
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return idle, sum(fields[:8])


def idle_fraction(sample_s: float = SAMPLE_S) -> Tuple[Optional[float], str]:
    """The share of CPU time idle over ``sample_s`` (None: not measurable) and how it was
    measured."""
    first = _cpu_times()
    if first is not None:
        time.sleep(sample_s)
        second = _cpu_times()
        if second is not None and second[1] > first[1]:
            return (second[0] - first[0]) / (second[1] - first[1]), f"idle over {sample_s:g} s"
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return None, "idle time unknown"
    cores = os.cpu_count() or 1
    return max(0.0, 1.0 - load / cores), f"load average {load:.2f}"


def choose(env: Mapping[str, str] = os.environ, sample_s: float = SAMPLE_S) -> Choice:
    """``OMP_NUM_THREADS`` when set; else the idle cores now (rounded, at least 1, at most
    :func:`usable_cores`)."""
    given = env.get("OMP_NUM_THREADS", "").strip()
    if given:
        try:
            n = int(given)
        except ValueError:
            n = 0
        if n >= 1:
            return Choice(n, "OMP_NUM_THREADS")
    cores = usable_cores()
    frac, how = idle_fraction(sample_s)
    if frac is None:
        return Choice(1, f"{cores} cores, {how}: one thread; set OMP_NUM_THREADS to choose")
    idle = frac * cores
    n = max(1, min(cores, math.floor(idle + 0.5)))
    return Choice(n, f"{idle:.1f} of {cores} cores idle ({how}); set OMP_NUM_THREADS to choose")


def apply(choice: Choice) -> None:
    """Set torch's intra-op threads to the choice."""
    import torch
    torch.set_num_threads(choice.threads)
