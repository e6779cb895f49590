"""RLE from window crops (mrcnn.data.mask_crops) against pycocotools' ``encode`` of the full masks."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as coco_mask

from mrcnn.data.mask_crops import crops_to_rles


def _pack_crops(masks: np.ndarray, windows: list[tuple[int, int, int, int]]) -> np.ndarray:
    """crops_to_rles' input layout, built the slow obvious way: each window's columns, a 0 after each."""
    parts = [np.zeros(0, dtype=bool)]
    for mask, (x0, y0, x1, y1) in zip(masks, windows):
        if x1 > x0 and y1 > y0:
            columns = mask[y0:y1, x0:x1].T.astype(bool)
            parts.append(np.concatenate([columns, np.zeros((len(columns), 1), dtype=bool)], axis=1).ravel())
    return np.concatenate(parts)


def _assert_crops_encode_like_full_masks(masks: np.ndarray, windows: list[tuple[int, int, int, int]]) -> None:
    height, width = masks.shape[1:]
    rles, areas = crops_to_rles(_pack_crops(masks, windows), np.array(windows).reshape(-1, 4), height, width)
    reference = coco_mask.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    assert rles == [{"size": [height, width], "counts": r["counts"].decode("ascii")} for r in reference]
    assert areas.tolist() == masks.reshape(len(masks), -1).sum(axis=1).tolist()


def test_crops_to_rles_equals_pycocotools_on_the_full_masks_in_edge_cases():
    H, W = 9, 7
    cases = []  # (mask, window)

    def add(window, fill):
        x0, y0, x1, y1 = window
        mask = np.zeros((H, W), dtype=np.uint8)
        mask[y0:y1, x0:x1] = fill(y1 - y0, x1 - x0) if x1 > x0 and y1 > y0 else 0
        cases.append((mask, window))

    ones, zeros = (lambda h, w: 1), (lambda h, w: 0)
    add((0, 0, W, H), ones)  # full image: counts [0, H*W]
    add((0, 0, W, H), zeros)  # empty mask in a full window: [H*W]
    add((0, 0, 0, 0), zeros)  # empty window
    add((3, 4, 4, 5), ones)  # one pixel inside
    add((0, 0, 1, 1), ones)  # one pixel, first
    add((W - 1, H - 1, W, H), ones)  # one pixel, last: the mask ends with ones
    add((2, 0, 5, H), ones)  # full height columns: runs join across columns
    add((0, 3, W, 6), ones)  # full width rows
    add((0, 0, W, H), lambda h, w: np.tri(h, w, dtype=np.uint8))  # touches every edge, ragged
    add((4, 0, W, H), lambda h, w: (np.arange(h)[:, None] + np.arange(w)[None] + 1) % 2)  # checkerboard to the right edge
    add((0, 5, 3, H), lambda h, w: (np.arange(h)[:, None] % 2).repeat(w, 1))  # bottom-left corner stripes
    add((1, 1, 6, 8), zeros)  # window but no pixel
    masks = np.stack([m for m, _ in cases])
    windows = [w for _, w in cases]
    _assert_crops_encode_like_full_masks(masks, windows)
    for mask, window in cases:  # one at a time too (no neighbours before or after)
        _assert_crops_encode_like_full_masks(mask[None], [window])
    assert crops_to_rles(np.zeros(0, dtype=bool), np.zeros((0, 4)), H, W)[0] == []
    with pytest.raises(ValueError, match="windows need"):
        crops_to_rles(np.zeros(3, dtype=bool), np.array([[0, 0, 2, 2]]), H, W)


@pytest.mark.parametrize("seed", range(4))
def test_crops_to_rles_equals_pycocotools_on_random_windows(seed):
    rng = np.random.default_rng(seed)
    H, W = 23, 31
    masks = np.zeros((40, H, W), dtype=np.uint8)
    windows = []
    for mask in masks:
        x0, y0 = rng.integers(0, W), rng.integers(0, H)
        x1, y1 = rng.integers(x0, W + 1), rng.integers(y0, H + 1)
        if rng.random() < 0.2:
            x0, y0, x1, y1 = 0, 0, W, H
        mask[y0:y1, x0:x1] = rng.random((y1 - y0, x1 - x0)) < rng.choice([0.0, 0.2, 0.5, 0.95, 1.0])
        windows.append((int(x0), int(y0), int(x1), int(y1)))
    _assert_crops_encode_like_full_masks(masks, windows)
