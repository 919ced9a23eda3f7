"""Whole-node input power from the BMC through IPMI DCMI (``ipmitool dcmi power reading``).

The command comes from ``ENERGY_IPMI_CMD`` (split with shlex), default
``ipmitool dcmi power reading`` (in-band, through /dev/ipmi0, usually root only). For a BMC
reached over the network put the interface options in it, with the password in a file:
``ipmitool -I lanplus -C 17 -H bmc-host -U user -f /path/passfile dcmi power reading``
(``-C 3`` on a BMC without suite 17; see ``DEFAULT_TIMEOUT_S`` for why ``-C`` matters).
A password given with ``-P`` works but is visible in ``ps``; it is never logged here.

DCMI gives power only, so the source samples it on a thread (default every 5 s, about the
BMC's own refresh) and integrates it: a ``SampledPowerSource`` (see ``sampling.py`` for the
bias).
"""
from __future__ import annotations

import math
import os
import re
import shlex
import signal
import subprocess
from typing import Any, Mapping, Optional, Sequence, Tuple

from ..deadline import Deadline
from ..redact import energy_logger, redact, redact_argv, register_secrets, secret_values
from ..schema import EnvVar
from .base import MAX_NODE_POWER_W, SourceUnavailable
from .sampling import SampledPowerSource, bmc_options, plausible_watts

log = energy_logger()

ENV_CMD = "ENERGY_IPMI_CMD"
DEFAULT_CMD = "ipmitool dcmi power reading"
DEFAULT_PERIOD_S = 5.0
#: A whole ipmitool call (session set-up included) must fit in this, on the BMCs users have.
#: Over lanplus without ``-C``, ipmitool 1.8.19+ first asks the BMC for its cipher suites
#: (``ipmi_find_best_cipher_suite``: 17 if offered, else 3); some BMCs ignore that
#: pre-session request, and ipmitool waits out its retransmissions (``-N``/``-R`` defaults:
#: about 10 s, ipmitool issue #199) before falling back to suite 3. LibreNMS issue #17340:
#: polls of an HP ProLiant DL360 G7 went from ~3 s to ~13 s with that ipmitool, back to
#: ~3 s with ``-C``. The former default of 10 s then failed every read. 20 s covers those
#: ~13 s with room for a busy BMC; a call that takes longer is still killed whatever it
#: prints (the total deadline in ``_reading``). The cost of a longer timeout: a BMC that
#: never answers holds the trial's start (one open() read) and close() that much longer,
#: never a training step (samples are taken on the sampler's thread). ``-C 17`` (or
#: ``-C 3`` on older BMCs) in ENERGY_IPMI_CMD skips the probe.
DEFAULT_TIMEOUT_S = 20.0
#: How long to wait for a killed ipmitool's pipes to close before giving up on them.
_REAP_S = 1.0

_READING_RE = re.compile(r"Instantaneous power reading\s*:\s*(\d+(?:\.\d+)?)\s*Watts",
                         re.IGNORECASE)
_STATE_RE = re.compile(r"Power reading state is\s*:\s*(\w+)", re.IGNORECASE)


def redact_command(argv: Sequence[str]) -> str:
    """The command line as it may appear in a log: values of -P, -k and -y replaced."""
    return shlex.join(redact_argv(argv))


def parse_dcmi_power(text: str) -> Tuple[float, Optional[str]]:
    """Parse ``ipmitool dcmi power reading`` output into (instantaneous watts, state).

    ``state`` is "activated"/"deactivated" from the "Power reading state is" line, or None
    if the line is absent.

    Raises:
        ValueError: no "Instantaneous power reading: N Watts" line (the message quotes the
            start of what was received).
    """
    match = _READING_RE.search(text)
    if match is None:
        shown = " ".join(text.split())[:120]
        raise ValueError(f"no 'Instantaneous power reading: N Watts' line in the output "
                         f"(got {shown!r})")
    state = _STATE_RE.search(text)
    return float(match.group(1)), (state.group(1).lower() if state else None)


class IpmiSource(SampledPowerSource):
    """Node input power from ``ipmitool dcmi power reading``, sampled and integrated
    (component "node").

    Args:
        command: the command line (a string split with shlex, or an argv list).
        period_s: sampling period in seconds.
        timeout_s: a reading taking longer is killed and counted as a failure.
    """

    name = "ipmi"
    covers = ("node",)
    scope = "node"
    priority = 40
    auto_env = ENV_CMD
    summary = (f"`{DEFAULT_CMD}` (the node's input power from the BMC) sampled (default "
               f"every {DEFAULT_PERIOD_S:g} s) and integrated; `-P` values are redacted in "
               "logs")
    env_vars = (
        EnvVar(ENV_CMD, f"the ipmitool command (default `{DEFAULT_CMD}`, in-band through "
                        "`/dev/ipmi0`); add `-I lanplus -C 17 -H <bmc> -U <user> -f <passfile>` "
                        "for a BMC over the network (`-C 3` on older BMCs: without `-C`, "
                        "ipmitool probes the cipher suites first, which takes ~10 s on BMCs that "
                        "ignore the probe)"),
    )
    options = bmc_options("ipmi", "IPMI", DEFAULT_PERIOD_S, "ipmitool call", DEFAULT_TIMEOUT_S)

    def __init__(self, command: str | Sequence[str] = DEFAULT_CMD, *,
                 period_s: float = DEFAULT_PERIOD_S,
                 timeout_s: float = DEFAULT_TIMEOUT_S,
                 max_power_w: float = MAX_NODE_POWER_W) -> None:
        super().__init__()
        argv = shlex.split(command) if isinstance(command, str) else list(command)
        if not argv:
            raise ValueError("ENERGY_IPMI_CMD is empty: give the ipmitool command line, e.g. "
                             f"{DEFAULT_CMD!r}")
        for label, value in (("sample period", period_s), ("ipmi_timeout_s", timeout_s)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"ipmi: {label} must be a positive number of seconds, "
                                 f"got {value!r}")
        # The -P/-k/-y values are replaced wherever they show up, even in a wrapper's echo.
        register_secrets(secret_values(argv))
        self.argv = argv
        self.period_s = float(period_s)
        self.timeout_s = float(timeout_s)
        #: readings above this are refused (the ``node_max_power_w`` option)
        self.max_power_w = float(max_power_w)

    @classmethod
    def from_env(cls, env: Mapping[str, str], options: Mapping[str, Any]) -> "IpmiSource":
        """Command from ``ENERGY_IPMI_CMD``; period from the energy options
        ``ipmi_sample_period_s`` or else ``sample_period_s``, timeout ``ipmi_timeout_s``."""
        period = options.get("ipmi_sample_period_s", options.get("sample_period_s"))
        return cls(env.get(ENV_CMD) or DEFAULT_CMD,
                   period_s=DEFAULT_PERIOD_S if period is None else period,
                   timeout_s=options.get("ipmi_timeout_s", DEFAULT_TIMEOUT_S),
                   max_power_w=options.get("node_max_power_w", MAX_NODE_POWER_W))

    @property
    def redacted(self) -> str:
        """The command as logged (secrets replaced)."""
        return redact_command(self.argv)

    def _reading(self) -> Tuple[float, Optional[str]]:
        # A session of its own so that a timeout kills wrappers' children too (``sudo
        # ipmitool ...`` forks): killing only the direct child would leave the pipes open
        # and communicate() waiting for them.
        deadline = Deadline(self.timeout_s, "ipmitool")
        proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)
        try:
            # A total deadline for the call, however the child prints (slowly, or nothing).
            out, err = proc.communicate(timeout=deadline.wait_s())
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                proc.kill()
            try:
                # A grandchild that left the session could keep the pipes open: do not
                # wait for it, the child itself is dead.
                proc.communicate(timeout=_REAP_S)
            except subprocess.TimeoutExpired:
                pass
            raise TimeoutError(f"`{self.redacted}` took longer than {self.timeout_s:g} s "
                               "(ipmi_timeout_s, for the whole call however slowly it "
                               "prints); killed") from None
        if proc.returncode != 0:
            # A wrapper (sudo, a site script) may echo the whole command, password included:
            # redact before cutting, so a secret cut in half is still caught whole.
            text = redact(" ".join((err or out or "").split()))[:200]
            raise RuntimeError(f"`{self.redacted}` exited with status {proc.returncode}: {text}")
        return parse_dcmi_power(out)

    def read_watts(self) -> float:
        """One DCMI reading, for the sampler (which refuses 0 W and other implausible ones)."""
        watts, _ = self._reading()
        return watts

    def open(self) -> None:
        try:
            watts, state = self._reading()
        except FileNotFoundError:
            raise SourceUnavailable(f"ipmi: command {self.argv[0]!r} not found; install "
                                    f"ipmitool or set ENERGY_IPMI_CMD")
        except PermissionError as err:
            raise SourceUnavailable(f"ipmi: cannot run {self.argv[0]!r}: {err.strerror}")
        except (OSError, TimeoutError, RuntimeError, ValueError) as err:
            raise SourceUnavailable(f"ipmi: {err}")
        if watts <= 0:
            raise SourceUnavailable(f"ipmi: the BMC reports {watts:g} W (power reading "
                                    f"state: {state or 'unknown'}); DCMI power reading is not "
                                    f"usable on this node")
        if state == "deactivated":
            # OpenBMC reports "deactivated" with valid readings; others do not: say so once.
            log.warning("ipmi: the BMC says 'Power reading state is: deactivated' but reads "
                        "%g W; using it. Check it against the PSU/PDU if in doubt.", watts)
        # The reading just taken is the first sample: reading again would let a slow BMC
        # delay the trial start by two timeouts.
        self.start_sampling(self.period_s, first_watts=watts,
                            plausible=plausible_watts(self.max_power_w))

    def describe(self) -> str:
        return f"ipmi: `{self.redacted}` sampled every {self.period_s:g} s"
