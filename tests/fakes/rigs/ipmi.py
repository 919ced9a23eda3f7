"""IPMI: the fake ``ipmitool`` (tests/fakes/ipmitool) first on PATH, reporting 412 W; the
source samples it on its own thread and integrates."""
from __future__ import annotations

import contextlib
import os
import time

from fakes.rigs import Rig, SampledWindow

WATTS = 412


@contextlib.contextmanager
def rig(tmp_path, monkeypatch):
    state = tmp_path / "ipmi"
    state.mkdir()
    (state / "watts").write_text(f"{WATTS}\n")
    fakes = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    monkeypatch.setenv("PATH", f"{fakes}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_IPMITOOL_DIR", str(state))
    window = SampledWindow(WATTS, "node")
    yield Rig(env={}, options={"ipmi_sample_period_s": 0.05}, drive=window.drive,
              expect=window.expect)
