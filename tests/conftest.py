"""Suite-wide settings.

The models under test are tiny (16-64 px): at that size PyTorch's intra-op threads cost more
in synchronisation than they gain, and on a busy 2-core machine the contention made single
steps 20-40x slower. One thread keeps the suite's time predictable; OMP_NUM_THREADS reaches
the training runs the tests start as subprocesses.

Also the fixtures the model test modules share (their helpers are in model_helpers.py).
"""
import os

import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


@pytest.fixture
def torch_seed() -> None:
    """torch's generator at seed 0 before the test: the model tests' random inits and inputs
    are the same on every run and in any order (they say pytest.mark.usefixtures)."""
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def r50():
    """One ResNet-50 DeepLab v3+ (output stride 16, 5 classes) per test module, for the tests
    that only run it; a test that changes it puts it back (mode, gradients, memory format)."""
    from model_helpers import deeplab
    torch.manual_seed(0)
    return deeplab.DeepLabV3Plus(5)
