"""What the energy tests share: importing a fake by path, and a clock the test advances."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

FAKES = Path(__file__).resolve().parent


def load_fake(name: str):
    """Import tests/fakes/<name>.py by path (independent of how pytest sets sys.path), once."""
    modname = f"energy_fake_{name}"
    if modname not in sys.modules:
        spec = importlib.util.spec_from_file_location(modname, FAKES / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[modname] = module
        spec.loader.exec_module(module)
    return sys.modules[modname]


class FakeClock:
    """A monotonic clock that moves only when the test says so."""

    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt
