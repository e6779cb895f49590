"""COCO RLE of masks that are zero outside a window each, encoded from the windows' pixels only.

The predictor's masks are zero outside their pasted boxes (``mrcnn.modeling.paste.paste_mask_crops``), so
their RLE can be built from the box crops (or only from where the crops change value) instead of from
H x W masks. The RLEs are the project's canonical ones (``mrcnn.data.masks``: ``{"size": [H, W],
"counts": str}``), identical to ``mrcnn.data.masks.masks_to_rles`` of the full masks.
"""

from __future__ import annotations

import numpy as np
from pycocotools import mask as coco_mask

__all__ = ["crop_changes_to_rles", "crops_to_rles"]


def crops_to_rles(packed: np.ndarray, windows: np.ndarray, height: int, width: int) -> tuple[list[dict], np.ndarray]:
    """Encode masks that are zero outside a window each, from the windows' pixels only.

    The result is what ``masks_to_rles`` gives for the full-size masks: COCO RLE counts are the
    column-major runs of the H x W mask, starting with a (possibly empty) run of zeros. A run of ones
    found in the crop at column ``c``, rows ``r0 .. r1`` lies at ``(x0 + c) * H + y0 + r0 ..`` in the full
    mask; the zeros around and between the crop's columns fill the gaps. Runs that meet across a column
    boundary (a window spanning the full height) are merged.

    Args:
        packed (np.ndarray[P] bool or uint8, 0/1): the crops one after the other. Crop i is window i's
            pixels in column-major order with one 0 after each column: ``(x1 - x0) * (y1 - y0 + 1)`` values
            (none for an empty window), i.e. a [x1 - x0, y1 - y0 + 1] C-order block whose last row is 0.
        windows (np.ndarray[D, 4] int): ``x0, y0, x1, y1`` (x1/y1 exclusive), clipped to the image;
            x1 <= x0 or y1 <= y0 is an empty window (an all-zero mask).
        height (int): H of the full masks.
        width (int): W of the full masks.

    Returns:
        (rles, areas): D compressed RLEs ``{"size": [H, W], "counts": str}`` and np.ndarray[D] int64, the
        number of foreground pixels of each.

    Raises:
        ValueError: ``packed`` does not have the length the windows give.
    """
    windows = np.asarray(windows, dtype=np.int64).reshape(-1, 4)
    packed = np.ascontiguousarray(packed).reshape(-1)
    needed = int(_crop_layout(windows)[2].sum()) if len(windows) else 0
    if len(packed) != needed:
        raise ValueError(f"packed crops have {len(packed)} values, the windows need {needed}")
    flat = packed.view(np.int8) if packed.dtype in (np.bool_, np.uint8) else (packed != 0).view(np.int8)
    return crop_changes_to_rles(np.flatnonzero(np.diff(flat, prepend=np.int8(0))), windows, height, width)


def _crop_layout(windows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per window of [D, 4] x0, y0, x1, y1: (crop width, crop height, packed length), empty windows 0."""
    crop_w = np.maximum(windows[:, 2] - windows[:, 0], 0)
    crop_h = np.maximum(windows[:, 3] - windows[:, 1], 0)
    crop_h[crop_w == 0] = 0
    crop_w[crop_h == 0] = 0
    return crop_w, crop_h, crop_w * (crop_h + 1)


def crop_changes_to_rles(changes: np.ndarray, windows: np.ndarray, height: int, width: int) -> tuple[list[dict], np.ndarray]:
    """``crops_to_rles`` from the positions where the packed crops change value, not the crops themselves.

    Args:
        changes (np.ndarray[C] int): ascending indices ``i`` into the packed crops (``crops_to_rles``' layout)
            where ``packed[i] != packed[i - 1]``, with ``packed[-1]`` taken as 0: the starts and ends of the
            runs of ones, far fewer values than the crops (computed where the crops are, e.g. on a GPU).
        windows, height, width: as for ``crops_to_rles``.

    Returns:
        (rles, areas) as ``crops_to_rles``.
    """
    windows = np.asarray(windows, dtype=np.int64).reshape(-1, 4)
    num = len(windows)
    if num == 0:
        return [], np.zeros(0, dtype=np.int64)
    changes = np.asarray(changes, dtype=np.int64).reshape(-1)
    x0, y0 = windows[:, 0], windows[:, 1]
    _, crop_h, sizes = _crop_layout(windows)
    rows = crop_h + 1  # each column plus its 0 separator
    ends_at = np.cumsum(sizes)
    starts_at = ends_at - sizes
    # Every crop ends with a 0 and begins after one (or at the start), so runs of ones alternate start/end.
    owner = np.searchsorted(ends_at, changes, side="right")  # crop of each change
    local = changes - starts_at[owner]
    column, row = np.divmod(local, rows[owner])
    position = (x0[owner] + column) * height + y0[owner] + row  # in the full mask, column-major
    run_starts, run_ends = position[0::2], position[1::2]
    run_owner = owner[0::2]
    # Merge runs that continue from the bottom of one column into the top of the next.
    joined = (run_ends[:-1] == run_starts[1:]) & (run_owner[:-1] == run_owner[1:])
    if joined.any():
        first = np.concatenate([[True], ~joined])
        run_starts, run_owner, run_ends = run_starts[first], run_owner[first], run_ends[np.concatenate([~joined, [True]])]
    areas = np.bincount(run_owner, weights=run_ends - run_starts, minlength=num).astype(np.int64)
    split = np.searchsorted(run_owner, np.arange(1, num))
    total = height * width
    uncompressed = []
    for starts, ends in zip(np.split(run_starts, split), np.split(run_ends, split)):
        bounds = np.empty(2 * len(starts) + 2, dtype=np.int64)
        bounds[0], bounds[-1] = 0, total
        bounds[1:-1:2], bounds[2:-1:2] = starts, ends
        counts = np.diff(bounds)
        if len(counts) > 1 and counts[-1] == 0:  # ends with ones: no trailing empty run of zeros
            counts = counts[:-1]
        uncompressed.append({"size": [height, width], "counts": counts})
    rles = coco_mask.frPyObjects(uncompressed, height, width)
    return [{"size": [height, width], "counts": rle["counts"].decode("ascii")} for rle in rles], areas
