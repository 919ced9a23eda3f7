"""The registry-driven tests follow the registries: in a temporary copy of the repository, a
throw-away model (a recipe: ``trials/tinynet/``, its config) and a throw-away energy source
(its module, its line in the registry, its fake in ``tests/fakes/rigs/``) are trained and read
by ``tests/test_every_recipe.py`` and ``tests/test_every_source.py``, copied unchanged; a
forward pass that raises, and a source without a fake, fail them.

Only those two test modules run there (on the two new entries, ``-k``), in a subprocess: the
copy's ``shared`` must be the one imported, and the tests must be collected from the copy's
registries, not this process's."""
from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TESTS = ("test_every_recipe.py", "test_every_source.py")

MODEL = '''"""A throw-away model: one 3x3 convolution and a 1x1 classifier."""
from torch import nn


class TinyNet(nn.Module):
    def __init__(self, num_classes: int, width: int = 8) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(width, num_classes, 1))

    def forward(self, x):
        return self.body(x)
'''

BROKEN_FORWARD = '''

def _broken(self, x):
    raise RuntimeError("tinynet: the forward pass is broken")


TinyNet.forward = _broken
'''

TRAIN_HEAD = '''#!/usr/bin/env python3
"""A throw-away recipe (tests/test_registries_follow.py)."""
import pathlib
import sys

'''

TRAIN_BODY = '''    parse_before_imports("tinynet", "segmentation")

from model import TinyNet  # noqa: E402

from shared.hparams import INT, Param  # noqa: E402
from shared.launch import main  # noqa: E402
from shared.modelargs import construct, default_of, integer  # noqa: E402
from shared.trial import SegmentationTrial  # noqa: E402


class TinyNetTrial(SegmentationTrial):
    MODEL_NAME = "tinynet"
    MODEL_ARGS = {"num_classes": "num_classes", "tinynet_width": "width"}
    MODEL_PARAMS = {"tinynet_width": Param(default_of(TinyNet, "width"), INT,
                                           check=integer(1, 64), help="channels")}

    @classmethod
    def model_from_hparams(cls, hp):
        return construct(TinyNet, hp, cls.MODEL_ARGS)

    def build_model(self, hp):
        return self.model_from_hparams(hp)


if __name__ == "__main__":
    sys.exit(main(TinyNetTrial))
'''

SOURCE = '''"""A throw-away energy source: a wall meter whose cumulative joules are in a file."""
from __future__ import annotations

from pathlib import Path
from typing import Dict

from ..schema import EnvVar
from .base import EnergySource, SourceUnavailable


class WallMeterSource(EnergySource):
    name = "wallmeter"
    covers = ("node",)
    scope = "node"
    priority = 60
    auto_env = "ENERGY_WALLMETER_FILE"
    env_vars = (EnvVar("ENERGY_WALLMETER_FILE", "file holding the meter's cumulative joules"),)
    summary = "a wall meter's cumulative joules, read from a file"

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path, self._start = Path(path), 0.0

    @classmethod
    def from_env(cls, env, options):
        if not env.get("ENERGY_WALLMETER_FILE"):
            raise SourceUnavailable("wallmeter: ENERGY_WALLMETER_FILE is not set")
        return cls(env["ENERGY_WALLMETER_FILE"])

    def open(self) -> None:
        self._start = float(self.path.read_text())

    def read(self) -> Dict[str, float]:
        return {"node": float(self.path.read_text()) - self._start}
'''

RIG = '''"""The wall meter's fake: the file it reads, advanced by 42 J."""
import contextlib

from fakes.rigs import Rig


@contextlib.contextmanager
def rig(tmp_path, monkeypatch):
    meter = tmp_path / "joules"
    meter.write_text("1000.0")
    yield Rig(env={"ENERGY_WALLMETER_FILE": str(meter)},
              drive=lambda source: meter.write_text("1042.0"),
              expect=lambda source: {"node": (42.0, 42.0)})
'''


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> pathlib.Path:
    """The library, the two registry-driven test modules and the fakes, copied; one new recipe
    and one new source added the way a developer adds them."""
    root = tmp_path_factory.mktemp("repo")
    skip = shutil.ignore_patterns("__pycache__")
    shutil.copytree(ROOT / "shared", root / "shared", ignore=skip)
    shutil.copytree(ROOT / "tests" / "fakes", root / "tests" / "fakes", ignore=skip)
    for name in ("conftest.py", *TESTS):
        shutil.copyfile(ROOT / "tests" / name, root / "tests" / name)
    shutil.copyfile(ROOT / "pyproject.toml", root / "pyproject.toml")
    # the model: trials/tinynet/ (its train.py starts as every train.py does) and its config
    bootstrap = re.search(r'^if __name__ == "__main__":.*?from shared\.localargs import '
                          r'parse_before_imports\n', (ROOT / "trials" / "unet" / "train.py").read_text(),
                          re.S | re.M).group(0)
    trial = root / "trials" / "tinynet"
    trial.mkdir(parents=True)
    (trial / "model.py").write_text(MODEL)
    (trial / "train.py").write_text(TRAIN_HEAD + bootstrap + TRAIN_BODY)
    config = (ROOT / "experiment_configs" / "unet" / "single_gpu.yaml").read_text()
    config = "".join(line for line in config.splitlines(keepends=True)
                     if not line.lstrip().startswith("unet_")).replace("unet", "tinynet")
    (root / "experiment_configs" / "tinynet").mkdir(parents=True)
    (root / "experiment_configs" / "tinynet" / "single_gpu.yaml").write_text(config)
    # the source: its module, its line in the registry, its fake
    sources = root / "shared" / "energy" / "sources"
    (sources / "wallmeter.py").write_text(SOURCE)
    registry = (sources / "__init__.py").read_text()
    anchor = '    ("shared.energy.sources.prometheus", "PrometheusSource"),\n'
    assert registry.count(anchor) == 1, "the registry's BUILTIN list changed: update this test"
    (sources / "__init__.py").write_text(registry.replace(
        anchor, anchor + '    ("shared.energy.sources.wallmeter", "WallMeterSource"),\n'))
    (root / "tests" / "fakes" / "rigs" / "wallmeter.py").write_text(RIG)
    return root


def _pytest(root: pathlib.Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENERGY_")}
    env.update(PYTHONPATH=str(root), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", "-W",
           "ignore::DeprecationWarning", *(f"tests/{t}" for t in TESTS), "-k", "tinynet or wallmeter"]
    return subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)


RECIPE_TEST = "tests/test_every_recipe.py::test_recipe_trains_one_batch_and_validates[tinynet]"
SOURCE_TEST = "tests/test_every_source.py::test_source_round_trip_against_its_fake[wallmeter]"


def test_a_new_model_and_a_new_source_are_tested_without_a_test_edit(tree):
    for name in TESTS:  # the test modules are the repository's, unchanged
        assert (tree / "tests" / name).read_bytes() == (ROOT / "tests" / name).read_bytes()
    proc = _pytest(tree)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert f"PASSED {RECIPE_TEST}" in out and f"PASSED {SOURCE_TEST}" in out, out[-4000:]
    assert re.search(r"\b2 passed\b", out), out[-4000:]


def test_a_broken_forward_and_a_source_without_a_fake_fail_them(tree):
    model, rig = tree / "trials" / "tinynet" / "model.py", tree / "tests" / "fakes" / "rigs" / "wallmeter.py"
    model.write_text(MODEL + BROKEN_FORWARD)
    rig.unlink()
    try:
        proc = _pytest(tree)
    finally:
        model.write_text(MODEL)
        rig.write_text(RIG)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-4000:]
    assert f"FAILED {RECIPE_TEST}" in out and f"FAILED {SOURCE_TEST}" in out, out[-4000:]
    assert re.search(r"\b2 failed\b", out), out[-4000:]
    # each for its own reason (pytest prints each failure's section under its test's name)
    recipe_part, source_part = out.split("_ test_recipe_trains_one_batch_and_validates[tinynet] _")[1] \
        .split("_ test_source_round_trip_against_its_fake[wallmeter] _")
    assert "RuntimeError: tinynet: the forward pass is broken" in recipe_part, recipe_part[-3000:]
    assert "LookupError: energy source 'wallmeter' has no fake: write " in source_part
