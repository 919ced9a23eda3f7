"""mIoU from one confusion matrix: against an independent per-class computation, and the
two-process (gloo) reduction through Determined's allgather against one process."""
import math
import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from shared.metrics import ConfusionMatrix, DeviceMean, confusion_matrix, pair_counts, summarize


def reference_metrics(pred, target, num_classes, ignore=255):
    """Per-class IoU by set counting, written independently of the confusion matrix."""
    pred, target = np.asarray(pred).ravel(), np.asarray(target).ravel()
    keep = target != ignore
    pred, target = pred[keep], target[keep]
    ious, accs = [], []
    for c in range(num_classes):
        p, t = pred == c, target == c
        union = np.logical_or(p, t).sum()
        if union > 0:
            ious.append(np.logical_and(p, t).sum() / union)
        if t.sum() > 0:
            accs.append(np.logical_and(p, t).sum() / t.sum())
    return 100 * np.mean(ious), 100 * (pred == target).mean(), 100 * np.mean(accs)


def random_case(seed, n=4, h=17, w=23, num_classes=7):
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, num_classes, (n, h, w), generator=g)
    target[target == 3] = 5          # class 3 absent from the ground truth...
    pred = torch.randint(0, num_classes, (n, h, w), generator=g)
    pred[pred == 6] = 0              # ...class 6 absent from the predictions...
    target[target == 6] = 0          # ...and from the ground truth: left out of the mean
    target[:, :3, :] = 255           # ignored rows
    pred[:, :3, :] = 2               # predictions there must not count
    return pred, target, num_classes


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_miou_matches_independent_computation(seed):
    pred, target, k = random_case(seed)
    cm = ConfusionMatrix(k)
    for i in range(pred.shape[0]):   # accumulate over batches of one image
        cm.update(pred[i], target[i])
    got = cm.cross_slot_reduce([cm.per_slot_reduce()])
    miou, pacc, macc = reference_metrics(pred, target, k)
    assert got["miou"] == pytest.approx(miou, rel=1e-9)
    assert got["pixel_accuracy"] == pytest.approx(pacc, rel=1e-9)
    assert got["mean_accuracy"] == pytest.approx(macc, rel=1e-9)
    per_class = cm.last["per_class_iou"]
    assert per_class[6] is None          # absent everywhere: no IoU
    assert per_class[3] == 0.0           # predicted but never true: IoU 0, counted


def test_batch_averaging_would_differ():
    """The reason for one matrix: averaging per-batch mIoU gives another (wrong) number."""
    pred, target, k = random_case(5)
    per_batch = [summarize(confusion_matrix(pred[i], target[i], k).numpy())["miou"] for i in range(4)]
    whole = summarize(confusion_matrix(pred, target, k).numpy())["miou"]
    assert abs(np.mean(per_batch) - whole) > 1e-6


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="prediction shape"):
        confusion_matrix(torch.zeros(2, 3), torch.zeros(3, 2), 4)
    with pytest.raises(ValueError, match="class 9 but num_classes is 4"):
        confusion_matrix(torch.zeros(2, 2), torch.full((2, 2), 9), 4)


def test_empty_rank_contributes_zeros():
    cm = ConfusionMatrix(3)
    assert cm.per_slot_reduce().sum() == 0
    assert cm.cross_slot_reduce([cm.per_slot_reduce()])["miou"] == 0.0


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, queue):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world), GROUP_RANK="0", GROUP_WORLD_SIZE="1")
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    from shared.launch import det_distributed_context
    dist = det_distributed_context()  # free ports: another suite may be running beside this one
    pred, target, k = random_case(11)
    cm = ConfusionMatrix(k)
    for i in range(rank, pred.shape[0], world):   # each rank sees its share of the images
        cm.update(pred[i], target[i])
    # what Determined's reducer machinery does: one allgather, then cross_slot_reduce
    gathered = dist.allgather(cm.per_slot_reduce())
    queue.put((rank, cm.cross_slot_reduce(gathered)))
    torch.distributed.destroy_process_group()


def collect(queue, procs, hang_s: float = 1200.0) -> dict:
    """One result per process, waiting as long as they live (a busy machine takes minutes to
    start two interpreters that import torch: no time limit measures the code); a process
    that ended without its result fails at once, and ``hang_s`` only guards a deadlock."""
    import queue as queue_module
    import time
    results, start = {}, time.monotonic()
    while len(results) < len(procs):
        try:
            rank, result = queue.get(timeout=1.0)
            results[rank] = result
        except queue_module.Empty:
            ended = [p.exitcode for p in procs if p.exitcode is not None]
            assert len(ended) < len(procs) or not queue.empty(), \
                f"the workers ended ({ended}) with {len(results)} of {len(procs)} results"
            assert time.monotonic() - start < hang_s, "the workers are deadlocked"
    return results


def test_two_process_gloo_reduction_equals_single_process():
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, 2, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = collect(queue, procs)
    for p in procs:
        p.join()
        assert p.exitcode == 0
    pred, target, k = random_case(11)
    single = summarize(confusion_matrix(pred, target, k).numpy())
    for rank in (0, 1):
        for key in ("miou", "pixel_accuracy", "mean_accuracy"):
            assert results[rank][key] == pytest.approx(single[key], rel=1e-12)


def test_pair_counts_match_a_direct_count_and_keep_bad_labels_apart():
    g = torch.Generator().manual_seed(0)
    k = 5
    pred = torch.randint(0, k, (3, 17, 19), generator=g)
    target = torch.randint(0, k, (3, 17, 19), generator=g)
    target[0, :4] = 255
    target[1, 0, :3] = 7  # not a class, not ignored
    counts = pair_counts(pred, target.to(torch.uint8), k)
    assert counts.shape == (k * k + 1,) and int(counts[-1]) == 3
    expected = torch.zeros(k, k, dtype=torch.int64)
    for t, p in zip(target.flatten().tolist(), pred.flatten().tolist()):
        if t < k:
            expected[t, p] += 1
    assert torch.equal(counts[:-1].reshape(k, k), expected)
    reducer = ConfusionMatrix(k)
    reducer.update(pred, target)
    with pytest.raises(ValueError, match="validation labels: 3 pixels hold a class >= num_classes "
                                         r"\(5\) that is not the ignore index"):
        reducer.per_slot_reduce()


def test_device_mean_averages_batches_over_ranks():
    a, b = DeviceMean(), DeviceMean()
    for v in (1.0, 2.0, 6.0):
        a.update(torch.tensor(v, dtype=torch.bfloat16))
    b.update(torch.tensor(3.0, requires_grad=True) * 1)
    assert a.per_slot_reduce() == (9.0, 3) and b.per_slot_reduce() == (3.0, 1)
    assert a.cross_slot_reduce([a.per_slot_reduce(), b.per_slot_reduce()]) == 3.0
    a.reset()
    assert a.per_slot_reduce() == (0.0, 0)
    assert math.isnan(a.cross_slot_reduce([a.per_slot_reduce()]))
