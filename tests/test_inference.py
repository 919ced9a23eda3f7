"""Validation without a per-shape warm-up (shared/inference.py): shape buckets by padding, and
PyTorch's own kernels in grouped convolutions; and the compile decision of ``compile: auto``."""
from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from shared import hparams as hpmod
from shared.data.transforms import padded_side, val_collate
from shared.engine import Engine, LocalRuntime, SegmentationTask, resolve_compile
from shared.inference import grouped_convs, native_grouped_convs, no_cudnn, validation_kernels

CPU = torch.device("cpu")


def _items(shapes, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for (h, w), (H, W) in shapes:
        mask = torch.randint(0, classes, (H, W), generator=g, dtype=torch.uint8)
        mask[0, :3] = 255
        out.append((torch.randn(3, h, w, generator=g), mask, 0))
    return out


@pytest.mark.parametrize("side,multiple,expected", [
    (512, 0, 512), (512, 1, 512), (512, 32, 512), (513, 32, 544), (683, 128, 768), (7, 16, 16)])
def test_padded_side(side, multiple, expected):
    assert padded_side(side, multiple) == expected


def test_val_collate_pads_images_to_the_bucket_and_keeps_sizes_and_masks():
    shapes = [((24, 33), (24, 33)), ((17, 20), (40, 47))]
    items = _items(shapes)
    images, masks, sizes, skipped = val_collate(items, pad_multiple=16)
    assert images.shape == (2, 3, 32, 48)  # the batch's largest image, rounded up to 16
    assert masks.shape == (2, 40, 47)      # masks only up to the largest mask
    assert sizes.tolist() == [[24, 33, 24, 33], [17, 20, 40, 47]]
    assert torch.equal(images[0, :, :24, :33], items[0][0])
    assert images[0, :, 24:].abs().sum() == 0 and images[1, :, :, 20:].abs().sum() == 0
    assert (masks[0, 24:] == 255).all() and (masks[0, :, 33:] == 255).all()
    plain = val_collate(items)
    assert plain[0].shape == (2, 3, 24, 33)  # 0: no buckets


def test_native_grouped_convs_switch_cudnn_off_inside_grouped_convs_only():
    seen = {}
    dense = nn.Conv2d(4, 4, 3, padding=1)
    depthwise = nn.Conv2d(4, 4, 3, padding=1, groups=4)
    model = nn.Sequential(dense, depthwise)
    assert grouped_convs(model) == [depthwise]
    # read the flag from inside each conv's own forward
    dense.register_forward_hook(lambda m, a, o: seen.setdefault("dense", []).append(torch.backends.cudnn.enabled))
    depthwise.register_forward_hook(lambda m, a, o: seen.setdefault("dw", []).append(torch.backends.cudnn.enabled))
    before = torch.backends.cudnn.enabled
    x = torch.randn(1, 4, 8, 8)
    reference = model(x)
    seen.clear()
    with native_grouped_convs(model):
        out = model(x)
    assert seen == {"dense": [before], "dw": [False]}
    assert torch.backends.cudnn.enabled == before
    torch.testing.assert_close(out, reference)
    seen.clear()
    model(x)  # hooks gone
    assert seen == {"dense": [before], "dw": [before]}
    with native_grouped_convs(model, enabled=False):
        model(x)
    assert seen["dw"][-1] == before


class _Pointwise(nn.Module):
    """Logits at the input's resolution from each pixel alone: padding cannot reach them."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, classes, 1)

    def forward(self, x):
        return self.conv(x)


def _evaluate(batch, kernels="plan_free"):
    torch.manual_seed(0)
    hp = hpmod.resolve({"num_classes": 4, "warmup_batches": 0, "energy": {"enabled": False}}, {})
    task = SegmentationTask(4, val_kernels=kernels)
    engine = Engine(_Pointwise(4), hp, LocalRuntime(CPU, 2), task, device=CPU, max_batches=2)
    with torch.no_grad():
        engine.evaluate_batch(batch)
    return task.val_loss.per_slot_reduce(), task.confusion.per_slot_reduce()


def test_bucketed_validation_scores_what_exact_shapes_score_when_padding_cannot_reach():
    shapes = [((24, 32), (24, 32)), ((16, 28), (20, 35)), ((20, 20), (10, 10))]
    items = _items(shapes)
    (loss_a, n_a), conf_a = _evaluate(val_collate(items))
    (loss_b, n_b), conf_b = _evaluate(val_collate(items, pad_multiple=32))
    assert (conf_a == conf_b).all() and conf_a.sum() > 0
    assert n_a == n_b and loss_a == pytest.approx(loss_b, rel=1e-6)


def test_val_kernels_are_checked_and_score_alike_on_a_cpu():
    with pytest.raises(hpmod.ConfigError, match=r"'val_kernels' = 'fast' is not one of cudnn, "
                                                r"native_depthwise, plan_free"):
        SegmentationTask(4, val_kernels="fast")
    items = _items([((24, 32), (24, 32))])
    scores = [_evaluate(val_collate(items), k)[1] for k in hpmod.VAL_KERNELS]
    assert all((s == scores[0]).all() for s in scores)


def test_no_cudnn_switches_cudnn_and_its_attention_off_and_back():
    from torch.nn.attention import SDPBackend
    from torch.nn.attention import _cur_sdpa_kernel_backends as backends
    before = torch.backends.cudnn.enabled
    with no_cudnn():
        assert torch.backends.cudnn.enabled is False
        assert SDPBackend.CUDNN_ATTENTION not in backends()
        assert SDPBackend.FLASH_ATTENTION in backends()
    assert torch.backends.cudnn.enabled == before
    assert SDPBackend.CUDNN_ATTENTION in backends()


@pytest.mark.parametrize("kind,device,cudnn,autotune", [
    ("plan_free", "cuda", False, False), ("plan_free", "cpu", True, False),
    ("native_depthwise", "cuda", True, False), ("cudnn", "cuda", True, False)])
def test_validation_kernels_by_kind_and_device(kind, device, cudnn, autotune):
    model = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, groups=4))
    torch.backends.cudnn.benchmark = True
    try:
        with validation_kernels(model, kind, torch.device(device)):
            assert torch.backends.cudnn.enabled is cudnn or not torch.backends.cudnn.is_available()
            assert torch.backends.cudnn.benchmark is autotune
            hooked = len(model[0]._forward_pre_hooks)
        assert hooked == (kind == "native_depthwise" and device == "cuda")
        assert torch.backends.cudnn.benchmark is True and not model[0]._forward_pre_hooks
    finally:
        torch.backends.cudnn.benchmark = False


class _OneImage(list):
    """A validation set of one item, without bad samples (what the trial counts skips of)."""
    bad = None
    skipped_at_scan = ()

    def __init__(self) -> None:
        super().__init__([0])


def test_the_trial_pads_whole_image_validation_only(tmp_path, monkeypatch):
    import determined.pytorch as det_torch
    from benchmarks.specs import OURS, BenchConfig, load_trial
    monkeypatch.chdir(tmp_path)
    spec = next(s for s in OURS if s.name == "unet")
    for mode, expected in (("whole", 64), ("slide", 0)):
        loaded = load_trial(spec, BenchConfig(res=32, batch=2, num_classes=4),
                            {"unet_base_channels": 4, "unet_depth": 1, "val_pad_multiple": 64,
                             "val_mode": mode, "val_crop_size": 32, "data_dir": str(tmp_path),
                             "workers_per_slot": 0, "energy": {"enabled": False}})
        conf = {"searcher": {"name": "single", "metric": "miou"}, "hyperparameters": loaded.hp}
        with det_torch.init(hparams=loaded.hp, exp_conf=conf) as ctx:
            trial = loaded.trial_cls(ctx)
            monkeypatch.setattr("shared.data.build_dataset", lambda hp, split: _OneImage())
            collate = trial.build_validation_data_loader().collate_fn
        assert isinstance(collate, functools.partial) and collate.func is val_collate
        assert collate.keywords == {"pad_multiple": expected}


@pytest.mark.parametrize("requested,device,batches,expected", [
    ("auto", "cuda", hpmod.COMPILE_AUTO_MIN_BATCHES, True),
    ("auto", "cuda", hpmod.COMPILE_AUTO_MIN_BATCHES - 1, False),
    ("auto", "cpu", 10 ** 6, False),
    (True, "cpu", 1, True), (False, "cuda", 10 ** 6, False)])
def test_compile_auto_compiles_long_gpu_runs_only(requested, device, batches, expected):
    assert resolve_compile(requested, torch.device(device), batches) is expected


def test_compile_and_compile_mode_values_are_checked():
    hp = hpmod.resolve({}, {})
    assert (hp["compile"], hp["compile_mode"]) == ("auto", "default")
    with pytest.raises(hpmod.ConfigError, match=r"'compile' = 'yes' is not one of 'auto', True, False"):
        hpmod.resolve({"compile": "yes"}, {}, "c.yaml")
    with pytest.raises(hpmod.ConfigError, match=r"'compile_mode' = 'fast' is not one of 'default', "
                                                r"'reduce-overhead', 'max-autotune-no-cudagraphs'"):
        hpmod.resolve({"compile_mode": "fast"}, {}, "c.yaml")
