"""SegmentationTrial's validation step against MMSegmentation's protocol written out plainly:
the losses and the confusion matrix it accumulates on the device, with padding, resizing and
an image without any labelled pixel."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from benchmarks.specs import BenchConfig, load_trial, our_models
from shared.data.transforms import val_collate
from shared.metrics import confusion_matrix


@pytest.mark.parametrize("name,extra", [
    ("unet", {"unet_base_channels": 4, "unet_depth": 2}),  # logits at full resolution
    ("segformer", {}),                                     # logits at 1/4: resized twice
])
def test_evaluate_batch_matches_the_plain_protocol(name, extra, tmp_path, monkeypatch):
    import determined.pytorch as det_torch
    monkeypatch.chdir(tmp_path)
    spec = next(s for s in our_models() if s.name == name)
    cfg = BenchConfig(res=32, batch=2, num_classes=4)
    loaded = load_trial(spec, cfg, {**extra, "energy": {"enabled": False}})
    conf = {"searcher": {"name": "single", "metric": "miou"}, "hyperparameters": loaded.hp}
    g = torch.Generator().manual_seed(0)
    # (image h, w) after the validation resize, (mask H, W) at the original size
    shapes = [((24, 32), (24, 32)), ((16, 28), (20, 35)), ((20, 20), (10, 10))]
    items = []
    for (h, w), (H, W) in shapes:
        mask = torch.randint(0, 4, (H, W), generator=g, dtype=torch.uint8)
        mask[0] = 255
        items.append((torch.randn(3, h, w, generator=g), mask, 0))
    items[2][1].fill_(255)  # nothing labelled: no loss, no pixel counted
    batch = val_collate(items)
    with det_torch.init(hparams=loaded.hp, exp_conf=conf) as ctx:
        trial = loaded.trial_cls(ctx)
        trial.model.eval()
        trial.val_loss.reset()
        trial.confusion.reset()
        with torch.no_grad():
            assert trial.evaluate_batch(batch, 0) == {}  # nothing for Determined to copy back
            logits = trial.model(batch[0])
    logits = F.interpolate(logits, size=batch[0].shape[-2:], mode="bilinear", align_corners=False)
    losses, matrix = [], torch.zeros(4, 4, dtype=torch.int64)
    for i, ((h, w), (H, W)) in enumerate(shapes):
        li = F.interpolate(logits[i:i + 1, :, :h, :w], size=(H, W), mode="bilinear", align_corners=False)
        mi = batch[1][i:i + 1, :H, :W]
        if (mi != 255).any():
            losses.append(F.cross_entropy(li, mi, ignore_index=255))
        matrix += confusion_matrix(li.argmax(1), mi, 4)
    total, count = trial.val_loss.per_slot_reduce()
    assert count == 1 and len(losses) == 2
    assert total == torch.stack(losses).mean().item()
    assert torch.equal(torch.from_numpy(trial.confusion.per_slot_reduce()), matrix)
    assert matrix.sum() == sum((batch[1][i, :H, :W] != 255).sum() for i, (_, (H, W)) in enumerate(shapes))


def test_loss_upsamples_in_float32_under_bf16_autocast():
    from shared.engine import segmentation_loss
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 8, 8, generator=g).to(torch.bfloat16)  # a bf16 model output
    masks = torch.randint(0, 5, (2, 32, 32), generator=g)
    masks[0, :3] = 255
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = segmentation_loss(logits, masks)
        old_order = F.cross_entropy(F.interpolate(logits, size=(32, 32), mode="bilinear").float(),
                                    masks, ignore_index=255)
    up = F.interpolate(logits.float(), size=(32, 32), mode="bilinear", align_corners=False)
    assert loss.dtype == torch.float32
    assert loss == F.cross_entropy(up, masks, ignore_index=255)
    assert loss != old_order  # bf16 interpolation rounds: the order is observable
    same_size = torch.randn(2, 5, 32, 32, generator=g)
    assert segmentation_loss(same_size, masks) == F.cross_entropy(same_size, masks, ignore_index=255)


def test_a_batch_without_a_labelled_pixel_is_zero_loss_with_zero_gradient():
    """MMSegmentation's cross-entropy (avg_non_ignore): the mean over labelled pixels, 0 when
    there is none; PyTorch's mean would be 0/0 = NaN, a false divergence (issue 22)."""
    from shared.engine import segmentation_loss
    from shared.metrics import DeviceSum
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 8, 8, generator=g, requires_grad=True)
    masks = torch.full((2, 8, 8), 255, dtype=torch.long)
    assert torch.isnan(F.cross_entropy(logits, masks, ignore_index=255))  # what it was
    loss = segmentation_loss(logits, masks)
    assert loss.item() == 0.0 and torch.isfinite(loss)
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))
    counter = DeviceSum()
    for m in (masks, torch.zeros_like(masks), masks):
        counter.update((m != 255).sum() == 0)
    assert counter.per_slot_reduce() == 2 and counter.cross_slot_reduce([2, 1]) == 3
