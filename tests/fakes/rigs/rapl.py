"""RAPL: a powercap tree (tests/fakes/powercap.py) with one package and its DRAM, advanced
by known joules at a power the domains can draw."""
from __future__ import annotations

import contextlib
import time

from fakes.loader import load_fake
from fakes.rigs import Rig


@contextlib.contextmanager
def rig(tmp_path, monkeypatch):
    pc = load_fake("powercap").FakePowercap(tmp_path / "powercap")
    pc.add_zone("intel-rapl:0", "package-0", energy_uj=123_456_789)
    pc.add_zone("intel-rapl:0:0", "dram", max_uj=65_532_610_987)

    def drive(source) -> None:
        time.sleep(0.2)  # 8 J and 1 J in >= 0.2 s: 40 W and 5 W, well under the domains' ceiling
        pc.advance("intel-rapl:0", 8.0)
        pc.advance("intel-rapl:0:0", 1.0)

    yield Rig(env={"ENERGY_RAPL_ROOT": str(pc.root)}, drive=drive,
              expect=lambda source: {"cpu": (8.0 - 1e-5, 8.0 + 1e-5), "dram": (1.0 - 1e-5, 1.0 + 1e-5)})
