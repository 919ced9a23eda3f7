"""Suite-wide settings.

The models under test are tiny (16-64 px): at that size PyTorch's intra-op threads cost more
in synchronisation than they gain, and on a busy 2-core machine the contention made single
steps 20-40x slower. One thread keeps the suite's time predictable; OMP_NUM_THREADS reaches
the training runs the tests start as subprocesses.
"""
import os

import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)
