"""Connected components of binary masks (8-connectivity): the objects the rare-objects
recipe samples tiles around (``component_boxes``, ``shared.data.tiles``) and scores
(``label_components``, ``shared.objects.metrics``).

Why written here: the project's dependencies have no labelling function (scipy is not one of
them, OpenCV is a test-only reference), and the labelling is part of what is measured. It
works on runs: each row's foreground runs are found with numpy, runs of adjacent rows that
touch (8-connectivity) are joined by a vectorised union-find (minimum-label propagation with
pointer jumping), and the runs are painted back. Its cost grows with the number of runs, not
of pixels, which suits masks of rare small objects. ``tests/test_rare_objects.py`` checks it
against ``cv2.connectedComponents``.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

__all__ = ["BAND_ROWS", "component_boxes", "connect_runs", "label_components"]

#: rows of a mask scanned at a time by ``component_boxes``: bounds the temporaries of a large
#: (memory-mapped) mask
BAND_ROWS = 1024


def connect_runs(rows: np.ndarray, starts: np.ndarray, ends: np.ndarray, width: int
                 ) -> Tuple[np.ndarray, int]:
    """The component (0..n-1, numbered in the order of the runs) of each foreground run and
    n, for runs given row-major (row, start, exclusive end), 8-connectivity."""
    n = len(rows)
    if n == 0:
        return np.zeros(0, dtype=np.int64), 0
    rows = np.asarray(rows, dtype=np.int64)
    wp = width + 2                       # > any column, so keys of row r < keys of row r + 1
    start_key = rows * wp + starts
    end_key = rows * wp + ends
    # run b (row r) touches run a (row r - 1) when start_a <= end_b and start_b <= end_a
    # (ends exclusive, diagonal neighbours included): a contiguous range of row r - 1's runs.
    prev = (rows - 1) * wp
    lo = np.searchsorted(end_key, prev + starts, side="left")
    hi = np.searchsorted(start_key, prev + ends, side="right")
    counts = np.where(rows > 0, np.maximum(hi - lo, 0), 0)
    total = int(counts.sum())
    parent = np.arange(n)
    if total:
        b = np.repeat(np.arange(n), counts)
        a = np.repeat(lo, counts) + (np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts))
        while True:  # minimum label over each edge, then pointer jumping, until nothing moves
            before = parent.copy()
            np.minimum.at(parent, b, parent[a])
            np.minimum.at(parent, a, parent[b])
            parent = parent[parent]
            if np.array_equal(parent, before):
                break
    _, comp = np.unique(parent, return_inverse=True)  # roots are run indices: row-major order
    return comp.reshape(-1), int(comp.max()) + 1


def label_components(mask: np.ndarray) -> Tuple[np.ndarray, int]:
    """8-connected components of a boolean (H, W) mask: int32 labels 1..n (0: background),
    numbered in the order of their first pixel (row-major), and n."""
    m = np.asarray(mask).astype(bool, copy=False)
    if m.ndim != 2:
        raise ValueError(f"label_components: expected a 2-D mask, got shape {m.shape}")
    h, w = m.shape
    labels = np.zeros((h, w), dtype=np.int32)
    padded = np.zeros((h, w + 2), dtype=np.int8)
    padded[:, 1:-1] = m
    d = np.diff(padded, axis=1)          # +1 where a run starts, -1 one past where it ends
    rows, starts = np.nonzero(d == 1)
    _, ends = np.nonzero(d == -1)        # row-major order: the i-th end closes the i-th start
    comp, n = connect_runs(rows, starts, ends, w)
    if n == 0:
        return labels, 0
    lengths = ends - starts
    flat = np.repeat(rows.astype(np.int64) * w + starts, lengths) + \
        (np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths))
    labels.reshape(-1)[flat] = np.repeat(comp.astype(np.int32) + 1, lengths)
    return labels, n


def _runs(mask: np.ndarray, rows: slice) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    band = np.asarray(mask[rows]) > 0
    padded = np.zeros((band.shape[0], band.shape[1] + 2), dtype=np.int8)
    padded[:, 1:-1] = band
    d = np.diff(padded, axis=1)
    r, s = np.nonzero(d == 1)
    _, e = np.nonzero(d == -1)
    return r + (rows.start or 0), s, e


def component_boxes(mask: np.ndarray) -> np.ndarray:
    """Bounding boxes (n, 4) int64 [y0, x0, y1, x1) of the 8-connected objects of a (H, W)
    mask (non-zero = object), read in bands of ``BAND_ROWS`` rows (a memory-mapped mask is
    never loaded whole). The same components as ``label_components``."""
    h = mask.shape[0]
    parts = [_runs(mask, slice(y, min(y + BAND_ROWS, h))) for y in range(0, h, BAND_ROWS)]
    rows, starts, ends = (np.concatenate([p[i] for p in parts]) if parts else np.zeros(0, np.int64)
                          for i in range(3))
    comp, n = connect_runs(rows, starts, ends, mask.shape[1])
    if n == 0:
        return np.zeros((0, 4), dtype=np.int64)
    boxes = np.empty((n, 4), dtype=np.int64)
    boxes[:, 0] = np.full(n, h)
    np.minimum.at(boxes[:, 0], comp, rows)
    boxes[:, 1] = mask.shape[1]
    np.minimum.at(boxes[:, 1], comp, starts)
    boxes[:, 2] = 0
    np.maximum.at(boxes[:, 2], comp, rows + 1)
    boxes[:, 3] = 0
    np.maximum.at(boxes[:, 3], comp, ends)
    return boxes
