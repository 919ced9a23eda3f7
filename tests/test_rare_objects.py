"""The rare-objects recipe (issue 15): connected components against OpenCV, object matching and
average precision by hand, the binary losses against torch / torchvision, the tile store
(read once, cached, 8/16-bit, grey/RGB), the balanced sampler and the hard-negative pool,
stitching, every bad-input message, the registry's new family and the model borrowed from
trials/unet. The two-process run to the validation-loss target with energy measured is run
from the recipe's package: tests/test_package.py."""
from __future__ import annotations


import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image

from shared import recipes
from shared.data.files import DataError
from shared.data.synthetic_rare import generate
from shared.data.components import component_boxes, label_components
from shared.data.tiles import BalancedTileSampler, TileDataset, TileStore
from shared.objects.task import BinaryLoss, stitch_logits
from shared.hparams import ConfigError
from shared.objects.metrics import ObjectMetrics, average_precision, match_objects



@pytest.fixture(scope="module")
def rare(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("rare") / "data", num_train=6, num_val=2, size=96, seed=1)


# ----------------------------------------------------------------------------- components
@pytest.mark.parametrize("seed", range(4))
def test_components_are_opencvs_8_connected_ones(seed):
    rng = np.random.default_rng(seed)
    for _ in range(25):
        m = rng.random((int(rng.integers(1, 50)), int(rng.integers(1, 50)))) < rng.random() * 0.7
        labels, n = label_components(m)
        n_cv, cv = cv2.connectedComponents(m.astype(np.uint8), connectivity=8)
        assert n == n_cv - 1
        # the same partition: each of our labels is one of OpenCV's, one to one
        assert len(set(zip(labels[m].tolist(), cv[m].tolist()))) == n
        assert (labels[~m] == 0).all()
        boxes = component_boxes(m)
        for k, (y0, x0, y1, x1) in enumerate(boxes, 1):
            ys, xs = np.nonzero(labels == k)
            assert (y0, x0, y1, x1) == (ys.min(), xs.min(), ys.max() + 1, xs.max() + 1)


def test_objects_match_one_to_one_at_the_iou_threshold():
    gt = np.zeros((20, 20), bool)
    gt[2:6, 2:6] = True       # matched by a prediction covering it
    gt[10:12, 10:12] = True   # missed
    pred = np.zeros((20, 20), bool)
    pred[2:6, 2:7] = True     # IoU 16/20
    pred[15:18, 0:3] = True   # a false positive
    pred[2:3, 8:9] = True     # another one (not touching the first: column 7 is empty)
    g, ng = label_components(gt)
    p, npred = label_components(pred)
    assert (ng, npred) == (2, 3)
    assert match_objects(g, ng, p, npred, 0.1) == 1
    assert match_objects(g, ng, p, npred, 0.9) == 0
    # two predictions over one object: only one matches
    pred2 = np.zeros((20, 20), bool)
    pred2[2:6, 2:4] = True
    pred2[2:6, 5:6] = True
    p2, n2 = label_components(pred2)
    assert n2 == 2 and match_objects(g, ng, p2, n2, 0.1) == 1


def test_object_metrics_over_images_and_ranks():
    a, b = ObjectMetrics(0.5, 0.1, ap_count=3), ObjectMetrics(0.5, 0.1, ap_count=3)
    mask = np.zeros((16, 16), np.uint8)
    mask[2:5, 2:5] = 1
    prob = np.zeros((16, 16), np.float32)
    prob[2:5, 2:5] = 0.9      # found
    prob[10:12, 10:12] = 0.6  # a false positive at 0.5, gone at 0.75
    a.update(prob, mask, loss=0.25)
    b.update(np.zeros((16, 16), np.float32), mask, loss=0.75)  # a second image: missed
    m = a.cross_slot_reduce([a.per_slot_reduce(), b.per_slot_reduce()])
    assert m["validation_loss"] == pytest.approx(0.5)
    assert m["object_recall"] == pytest.approx(50.0) and m["object_precision"] == pytest.approx(50.0)
    assert m["false_positives_per_image"] == pytest.approx(0.5)
    assert m["iou"] == pytest.approx(9 / (18 + 4) * 100)
    assert m["f1"] == pytest.approx(2 * 9 / (2 * 9 + 4 + 9) * 100)
    # thresholds 0.25, 0.5, 0.75: (tp, fp, fn) = (1, 1, 1), (1, 1, 1), (1, 0, 1)
    assert m["average_precision"] == pytest.approx(0.5 * 100)
    assert average_precision([1, 2], [0, 2], [3, 2]) == pytest.approx((0.25 * 1 + 0.25 * 0.5) * 100)


# ----------------------------------------------------------------------------- losses
def test_binary_losses_against_torch_and_torchvision():
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(3, 9, 9, generator=g), (torch.rand(3, 9, 9, generator=g) > 0.8).float()
    assert BinaryLoss("bce", pos_weight=4.0)(x, t) == pytest.approx(
        F.binary_cross_entropy_with_logits(x, t, pos_weight=torch.tensor(4.0)).item(), rel=1e-5)
    focal = torchvision.ops.sigmoid_focal_loss(x, t, alpha=-1, gamma=2.0, reduction="mean")
    assert BinaryLoss("focal", gamma=2.0)(x, t) == pytest.approx(focal.item(), rel=1e-5)
    p = torch.sigmoid(x)
    dice = 1 - (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1)
    assert BinaryLoss("dice")(x, t) == pytest.approx(dice.item(), rel=1e-5)
    both = BinaryLoss("bce_dice")
    assert both(x, t) == pytest.approx(F.binary_cross_entropy_with_logits(x, t).item() + dice.item(), rel=1e-5)
    # a loss of bands added up is the loss of the whole
    assert both.combine(both.parts(x[:, :4], t[:, :4]) + both.parts(x[:, 4:], t[:, 4:])).item() == \
        pytest.approx(both.combine(both.parts(x, t)).item(), rel=1e-6)  # float32 sums
    with pytest.raises(ConfigError, match="'loss' = 'l2' is not one of bce, dice, bce_dice, focal"):
        BinaryLoss("l2")


# ----------------------------------------------------------------------------- data
def test_store_reads_once_into_its_cache_in_grey_or_rgb(rare, tmp_path, monkeypatch):
    store = TileStore(rare, "training", tmp_path / "cache", in_channels=1)
    im = store.images[0]
    assert im.shape == (96, 96, 1)
    raw = np.asarray(Image.open(rare / "images" / "training" / f"{im.stem}.png"))
    assert (im.tile(0, 0, 96)[0] == raw).all() and im.tile(90, 90, 16)[:, 6:].sum() == 0
    assert (im.mask() == (np.asarray(Image.open(im.mask_path)) > 0)).all()
    # a second store finds the cache: nothing is decoded again
    monkeypatch.setattr("shared.data.tiles.read_image", lambda *a, **k: pytest.fail("decoded twice"))
    again = TileStore(rare, "training", tmp_path / "cache", in_channels=1)
    assert [i.image_npy for i in again.images] == [i.image_npy for i in store.images]
    monkeypatch.undo()
    rgb = TileStore(rare, "training", tmp_path / "cache", in_channels=3).images[0]
    assert rgb.shape == (96, 96, 3) and (rgb.tile(0, 0, 96) == raw).all()


def test_sixteen_bit_images_are_scaled_by_their_full_range(tmp_path):
    root = generate(tmp_path / "d16", num_train=1, num_val=1, size=64, bits=16)
    im = TileStore(root, "training", tmp_path / "c", in_channels=1).images[0]
    raw = np.asarray(Image.open(im.image_path)).astype(np.uint16)
    assert (im.tile(0, 0, 64)[0] == (raw >> 8)).all()


def test_balanced_batches_hard_negatives_and_mining_candidates(rare, tmp_path):
    images = TileStore(rare, "training", tmp_path / "cache", in_channels=1).images
    sampler = BalancedTileSampler(images, 32, 8, 0.5, 0.5, pool_size=3, seed=0, recent_batches=2)
    ds = TileDataset(images, 32)
    offsets = set()
    for _ in range(20):
        batch = sampler.next_batch()
        masks = [ds[s][1] for s in batch]
        assert all(m.any() for m in masks[:4]) and not any(m.any() for m in masks[4:])
        for m in masks[:4]:
            ys, xs = np.nonzero(m.numpy())
            offsets.add((int(ys.min()) // 8, int(xs.min()) // 8))
    assert len(offsets) >= 6  # objects at many places in the tile, not always at its border
    # the same seed draws the same batches
    twin = BalancedTileSampler(images, 32, 8, 0.5, 0.5, pool_size=3, seed=0, recent_batches=2)
    assert [twin.next_batch() for _ in range(20)][-1] == batch
    # mining: candidates are negative cells not sampled in the last 2 batches
    recent = {c for c, b in sampler.last_sampled.items() if b >= sampler.batches - 2}
    cands = sampler.mining_candidates(1000)
    assert cands and not any(sampler._cell_of(*c) in recent for c in cands)
    assert all(not ds[(i, y, x, 0)][1].any() for i, y, x in cands)
    # the pool keeps the highest positive scores; half the negatives come from it
    assert sampler.add_hard_negatives(cands[:5], [0.0, 3.0, 1.0, 2.0, 5.0]) == 3
    assert [c for _, c in sampler.pool] == [cands[4], cands[1], cands[3]]
    batch = sampler.next_batch()
    assert sum((i, y, x) in cands[:5] for i, y, x, _ in batch[4:]) >= 2


def test_random_tiles_without_balancing_hold_objects_only_by_chance(rare, tmp_path):
    images = TileStore(rare, "training", tmp_path / "cache", in_channels=1).images
    sampler = BalancedTileSampler(images, 32, 16, 0.0, 0.0, pool_size=1, seed=0)
    ds = TileDataset(images, 32)
    share = np.mean([ds[s][1].any().item() for _ in range(20) for s in sampler.next_batch()])
    assert 0 < share < 0.4


@pytest.mark.parametrize("stitch", ["average", "center"])
@pytest.mark.parametrize("shape,overlap", [((70, 45), 0.25), ((20, 90), 0.5), ((64, 64), 0.0)])
def test_stitched_tiles_give_back_the_whole_image(stitch, shape, overlap):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, shape, dtype=np.uint8)

    class Image2:
        height, width = shape

        def tile(self, y, x, size):
            out = np.zeros((1, size, size), np.uint8)
            crop = pixels[y:y + size, x:x + size]
            out[0, :crop.shape[0], :crop.shape[1]] = crop
            return out

    out = stitch_logits(Image2(), lambda t: t[:, 0].float(), 32, overlap, stitch, tiles_per_batch=3)
    assert out.shape == shape and torch.equal(out, torch.from_numpy(pixels).float())


def test_bad_input_is_named(rare, tmp_path):
    (tmp_path / "nomasks" / "images" / "training").mkdir(parents=True)
    with pytest.raises(DataError, match=r"missing masks directory .*/masks/training for split 'training'; "
                                        r"expected the layout <root>/images/training/\*\.jpg and "
                                        r"<root>/masks/training/\*\.png"):
        TileStore(tmp_path / "nomasks", "training", tmp_path / "c")
    bad = tmp_path / "bad"
    generate(bad, num_train=2, num_val=1, size=64)
    (bad / "masks" / "training" / "rare_00001.png").unlink()
    with pytest.raises(DataError, match=r"image\(s\) without an annotation \(expected <stem>\.png in .*masks/training\)"):
        TileStore(bad, "training", tmp_path / "c")
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(bad / "masks" / "training" / "rare_00001.png")
    with pytest.raises(DataError, match=r"mask .*rare_00001\.png is 12x10 but image .*rare_00001\.png is 64x64"):
        TileStore(bad, "training", tmp_path / "c")
    with pytest.raises(DataError, match="over Pillow's decompression-bomb limit"):
        TileStore(bad, "training", tmp_path / "c2", max_image_pixels=1000)
    store = TileStore(bad, "training", tmp_path / "c3", skip_bad_samples=True)
    assert len(store.usable) == 1 and len(store.skipped) == 1 and "12x10" in store.skipped[0]
    empty = tmp_path / "empty"
    generate(empty, num_train=1, num_val=1, size=64)
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(empty / "masks" / "training" / "rare_00000.png")
    images = TileStore(empty, "training", tmp_path / "c4").images
    with pytest.raises(DataError, match="positive_fraction > 0 but the training masks hold no object"):
        BalancedTileSampler(images, 32, 4, 0.5, 0.0, 4, 0)


# ----------------------------------------------------------------------------- recipe
def test_the_recipe_is_its_own_family_on_trials_unets_model():
    recipe = recipes.get("rare_objects")
    assert recipe.family == "binary_segmentation"
    model_module = recipe.model_module()
    assert model_module.UNet is recipes.get("unet").model_module().UNet  # borrowed, not copied
    trial = recipe.trial_class()
    hp = {"in_channels": 1, "unet_base_channels": None, "unet_depth": None, "dropout": 0.5,
          "unet_upsampling": "transpose"}
    net = trial.model_from_hparams(hp)
    assert sum(p.numel() for p in net.parameters()) == 5125459  # the study's ~5M
    assert isinstance(net.bottleneck[1], torch.nn.Dropout) and net.bottleneck[1].p == 0.5
    small = trial.model_from_hparams({**hp, "in_channels": 3, "unet_base_channels": 4, "unet_depth": 2})
    assert small(torch.zeros(2, 3, 40, 24)).shape == (2, 1, 40, 24)
    with pytest.raises(ConfigError, match=r"'dropout' = 1\.0 must be a number in \[0, 1\)"):
        trial.model_from_hparams({**hp, "dropout": 1.0})


def test_the_synthetic_set_has_rare_small_objects_and_empty_images(tmp_path):
    root = generate(tmp_path / "s", num_train=8, num_val=1, size=96, seed=0)
    masks = [np.asarray(Image.open(p)) for p in sorted((root / "masks" / "training").glob("*.png"))]
    assert len(masks) == 8 and all(set(np.unique(m)) <= {0, 255} for m in masks)
    counts = [label_components(m > 0)[1] for m in masks]
    assert 0 in counts and max(counts) >= 1 and max(counts) <= 3
    assert all(np.mean(m > 0) < 0.02 for m in masks)  # rare and small
    image = np.asarray(Image.open(root / "images" / "training" / "rare_00000.png"))
    assert image.dtype == np.uint8 and image.ndim == 2
    with pytest.raises(ValueError, match="--bits 8 or 16"):
        generate(tmp_path / "x", bits=12)


# ----------------------------------------------------------------------------- the tile cache (issue 22)
def _cache_one(root, cache, barrier, results):
    barrier.wait()  # all three decode and write the same entries at once
    try:
        store = TileStore(root, "training", cache, in_channels=1)
        results.put([np.asarray(im.tile(0, 0, 512)[0]).tobytes() for im in store.images])
    except Exception as e:  # noqa: BLE001  (reported to the test, which fails on it)
        results.put(f"{type(e).__name__}: {e}")


def test_three_processes_caching_the_same_images_at_once_all_succeed(tmp_path):
    """The race of the old cache (one shared '.pending.npy' name: FileNotFoundError in 1 of 3
    tries): three processes caching the same images into one directory at once, three times;
    every process gets the right pixels every time."""
    import multiprocessing
    root = generate(tmp_path / "big", num_train=2, num_val=1, size=512, seed=2)
    want = [np.asarray(Image.open(p)).tobytes()
            for p in sorted((root / "images" / "training").glob("*.png"))]
    ctx = multiprocessing.get_context("fork")
    for attempt in range(3):
        barrier, results = ctx.Barrier(3), ctx.Queue()
        procs = [ctx.Process(target=_cache_one, args=(root, tmp_path / f"cache{attempt}", barrier, results))
                 for _ in range(3)]
        for p in procs:
            p.start()
        got = [results.get(timeout=120) for _ in procs]
        for p in procs:
            p.join(timeout=60)
        assert got == [want] * 3, f"attempt {attempt}: {[g if isinstance(g, str) else 'ok' for g in got]}"
        leftovers = [p.name for p in (tmp_path / f"cache{attempt}").iterdir() if p.name.startswith(".")]
        assert leftovers == []  # no temporary file left behind


def test_the_cache_is_private_and_checked(rare, tmp_path):
    import os
    import stat
    from shared.data.tiles import default_cache_dir
    assert default_cache_dir().name == f"rare_objects_tiles-{os.getuid()}"
    cache = tmp_path / "cache"
    store = TileStore(rare, "training", cache, in_channels=1)
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    assert {stat.S_IMODE(p.stat().st_mode) for p in cache.iterdir()} == {0o600}
    image = store.images[0]
    raw = np.asarray(Image.open(image.image_path))
    # a planted or damaged file of the right name is found by its checksum, and decoded again
    np.save(image.image_npy, np.full_like(raw[:, :, None], 7))
    again = TileStore(rare, "training", cache, in_channels=1).images[0]
    assert (again.tile(0, 0, 96)[0] == raw).all()
    # a changed source (another file at the same path) is another entry
    entries = len(list(cache.glob("*.json")))
    Image.fromarray(raw[::-1].copy()).save(image.image_path)
    try:
        flipped = TileStore(rare, "training", cache, in_channels=1).images[0]
        assert (flipped.tile(0, 0, 96)[0] == raw[::-1]).all()
        assert len(list(cache.glob("*.json"))) == entries + 1
    finally:
        Image.fromarray(raw).save(image.image_path)
    # a directory others can write is refused by name
    shared_dir = tmp_path / "shared"
    shared_dir.mkdir()
    shared_dir.chmod(0o777)
    with pytest.raises(DataError, match=rf"tile cache {shared_dir} is writable by other users "
                                        r"\(mode 0777\): .* chmod 700 it"):
        TileStore(rare, "training", shared_dir, in_channels=1)


def test_a_zero_byte_image_is_skipped_like_any_bad_sample(tmp_path):
    """rare_objects --epochs with a 0-byte image and skip_bad_samples: it used to fail with
    UnidentifiedImageError; every family skips and counts it (or names it without the flag)."""
    root = generate(tmp_path / "d", num_train=3, num_val=1, size=64, seed=1)
    (root / "images" / "training" / "rare_00001.png").write_bytes(b"")
    trial = recipes.get("rare_objects").trial_class()
    hp = {**{k: p.default for k, p in trial.COMMON_PARAMS.items()}, "data_dir": str(root),
          "tile_size": 32}
    assert trial.training_samples({**hp, "skip_bad_samples": True}) == 2 * 4  # two 64 px images
    with pytest.raises(DataError, match=r"cannot read image .*rare_00001\.png: .*set skip_bad_samples"):
        trial.training_samples({**hp, "skip_bad_samples": False})
    store = TileStore(root, "training", tmp_path / "c", skip_bad_samples=True)
    assert len(store.usable) == 2 and len(store.skipped) == 1 and "rare_00001.png" in store.skipped[0]
