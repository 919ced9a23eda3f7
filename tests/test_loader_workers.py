"""A trial stopped early leaves no data loader worker running when training returns
(shared.data.workers): with PyTorch up to 2.13 and pinned memory, each one left cost 5 s at exit,
80-90 s of an idle GPU per early-stopped run on the 2026-12-04 H200 campaign."""
import multiprocessing
import os
import pathlib
import subprocess
import sys
import textwrap

import torch

from shared.data.synthetic import generate
from shared.data.workers import release_loader_workers

ROOT = pathlib.Path(__file__).resolve().parent.parent


class _Zeros(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 64

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.zeros(3, 4, 4)


def test_release_shuts_down_a_loader_left_mid_epoch():
    loader = torch.utils.data.DataLoader(_Zeros(), batch_size=4, num_workers=2, persistent_workers=True)
    it = iter(loader)
    next(it)  # left mid-epoch, as a stopped trial leaves Determined's loaders
    assert len(multiprocessing.active_children()) == 2
    assert release_loader_workers() == 1
    assert multiprocessing.active_children() == []  # joined, not left to the exit
    assert release_loader_workers() == 0  # nothing twice
    del it, loader


# train.py run through its own main, then: how many loader workers still run once main returned
_WRAPPER = textwrap.dedent("""
    import multiprocessing, runpy, sys
    script = sys.argv[1]
    sys.path[:0] = [str(__import__("pathlib").Path(script).parent)]
    import shared.launch as launch
    main = launch.main
    def counted(*a, **k):
        rc = main(*a, **k)
        print(f"[workers after main] {len(multiprocessing.active_children())}", flush=True)
        return rc
    launch.main = counted
    sys.argv = sys.argv[1:]
    runpy.run_path(script, run_name="__main__")
""")


def test_a_trial_stopped_at_its_target_leaves_no_loader_worker(tmp_path):
    data = generate(tmp_path / "data", num_train=16, num_val=4, num_classes=4, min_size=32,
                    max_size=48, seed=3)
    cmd = [sys.executable, "-c", _WRAPPER, str(ROOT / "trials" / "unet" / "train.py"),
           "--config", str(ROOT / "experiment_configs" / "unet" / "single_gpu.yaml"),
           "--data-dir", str(data), "--output-dir", str(tmp_path / "run"), "--batches", "40",
           "--set", "crop_size=32", "scale=[64,32]", "num_classes=4", "global_batch_size=4",
           "workers_per_slot=2", "warmup_batches=2", "report_period=2", "validation_period=2",
           "checkpoint_period=100", "unet_base_channels=8", "unet_depth=2",
           "target_metric=validation_loss", "target_value=100", "stop_at_target=true",
           "energy.enabled=false"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "target validation_loss 100.00 reached" in proc.stderr + proc.stdout
    # both loaders (training, validation) were mid-use when the target stopped the run
    assert "[workers after main] 0" in proc.stdout, proc.stdout[-2000:]
