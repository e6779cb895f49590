"""Instance masks as COCO run-length encoding (RLE), built on ``pycocotools.mask``.

One RLE convention is used everywhere in the project:
``{"size": [height, width], "counts": str}`` where ``counts`` is the compressed COCO
string (ASCII), never bytes and never the uncompressed list. It serialises to json and
Parquet as is. Functions here accept the other spellings on input (bytes counts,
uncompressed list counts, polygons) and always return the canonical one.

Masks as arrays are ``uint8`` with values 0/1, shape ``[H, W]`` or ``[N, H, W]``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from numbers import Integral, Real

import numpy as np
from pycocotools import mask as coco_mask

__all__ = [
    "SegmentationError",
    "mask_to_polygons",
    "mask_to_rle",
    "masks_to_rles",
    "rle_area",
    "rle_to_bbox_xyxy",
    "rle_to_mask",
    "rles_to_masks",
    "segmentation_to_rle",
]


class SegmentationError(ValueError):
    """A COCO ``segmentation`` value is malformed.

    Attributes:
        reason (str): ``polygon_too_few_points``, ``rle_size_mismatch`` or ``bad_segmentation``.
    """

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def _canonical(rle: Mapping) -> dict:
    """pycocotools RLE (bytes counts) -> canonical RLE (str counts, list size)."""
    counts = rle["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    height, width = (int(v) for v in rle["size"])
    return {"size": [height, width], "counts": counts}


def _compressed_counts_total(counts: bytes) -> int:
    """Sum of the run lengths in a compressed COCO counts string; raises ValueError if malformed.

    Mirrors ``rleFrString`` in pycocotools' maskApi.c (LEB128-like, 5 bits per character
    offset by 48, runs after the second one delta-coded against the run two before).
    pycocotools itself does not bound-check the decoded runs, so this check guards it.
    """
    runs: list[int] = []
    position = 0
    length = len(counts)
    while position < length:
        value = 0
        shift = 0
        more = True
        while more:
            if position >= length:
                raise ValueError("compressed counts end in the middle of a run length")
            code = counts[position] - 48
            if not 0 <= code < 64:
                raise ValueError(f"invalid character {chr(counts[position])!r} in compressed counts")
            value |= (code & 0x1F) << shift
            more = bool(code & 0x20)
            position += 1
            shift += 5
            if not more and (code & 0x10):
                value |= -1 << shift
        if len(runs) > 2:
            value += runs[-2]
        if value < 0:
            raise ValueError("compressed counts decode to a negative run length")
        runs.append(value)
    return sum(runs)


def _check_size(size: object, *, height: int, width: int) -> None:
    if (
        not isinstance(size, (list, tuple))
        or len(size) != 2
        or not all(isinstance(v, Integral) and not isinstance(v, bool) for v in size)
    ):
        raise SegmentationError(f"RLE size must be [height, width] integers, got {size!r}", reason="bad_segmentation")
    if [int(v) for v in size] != [height, width]:
        raise SegmentationError(
            f"RLE size {list(size)} does not match image size [{height}, {width}]",
            reason="rle_size_mismatch",
        )


def _polygon_part_problem(part: object, part_index: int, num_parts: int) -> tuple[str, str] | None:
    """``(reason, message)`` when one polygon part cannot be rasterised, else None."""
    if not isinstance(part, (list, tuple)):
        return "bad_segmentation", f"polygon part {part_index} is {type(part).__name__}, expected a list of coordinates"
    if not all(isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v) for v in part):
        return "bad_segmentation", f"polygon part {part_index} has non-numeric or non-finite coordinates"
    if len(part) % 2:
        return "bad_segmentation", f"polygon part {part_index} has an odd number of coordinates ({len(part)})"
    if len(part) < 6:
        where = f" (part {part_index})" if num_parts > 1 else ""
        return "polygon_too_few_points", f"polygon has {len(part) // 2} points, need at least 3{where}"
    return None


def _polygons_to_rle(polygons: Sequence, *, height: int, width: int, dropped_parts: list[str] | None) -> dict:
    if len(polygons) == 0:
        raise SegmentationError("polygon list is empty", reason="bad_segmentation")
    parts: list[list[float]] = []
    problems: list[tuple[str, str]] = []
    for part_index, part in enumerate(polygons):
        problem = _polygon_part_problem(part, part_index, len(polygons))
        if problem is None:
            parts.append([float(v) for v in part])
        elif dropped_parts is None:
            raise SegmentationError(problem[1], reason=problem[0])
        else:
            problems.append(problem)
    if not parts:  # no valid part left: the annotation is bad, for the first part's reason
        raise SegmentationError(problems[0][1], reason=problems[0][0])
    if dropped_parts is not None:
        dropped_parts.extend(message for _, message in problems)
    # frPyObjects rasterises each part; merge unions them into one mask.
    return _canonical(coco_mask.merge(coco_mask.frPyObjects(parts, height, width)))


def _rle_to_rle(rle: Mapping, *, height: int, width: int) -> dict:
    _check_size(rle.get("size"), height=height, width=width)
    counts = rle["counts"]
    if isinstance(counts, (list, tuple)):
        if not all(isinstance(v, Integral) and not isinstance(v, bool) and v >= 0 for v in counts):
            raise SegmentationError(
                "uncompressed RLE counts must be non-negative integers", reason="bad_segmentation"
            )
        if sum(counts) != height * width:
            raise SegmentationError(
                f"uncompressed RLE counts sum to {sum(counts)}, expected height*width = {height * width}",
                reason="bad_segmentation",
            )
        uncompressed = {"size": [height, width], "counts": [int(v) for v in counts]}
        return _canonical(coco_mask.frPyObjects(uncompressed, height, width))
    if isinstance(counts, str):
        try:
            counts = counts.encode("ascii")
        except UnicodeEncodeError as exc:
            raise SegmentationError("compressed RLE counts are not ASCII", reason="bad_segmentation") from exc
    if not isinstance(counts, bytes):
        raise SegmentationError(
            f"RLE counts must be a list, str or bytes, got {type(counts).__name__}", reason="bad_segmentation"
        )
    try:
        total = _compressed_counts_total(counts)
    except ValueError as exc:
        raise SegmentationError(f"malformed compressed RLE: {exc}", reason="bad_segmentation") from exc
    if total != height * width:
        raise SegmentationError(
            f"compressed RLE runs sum to {total}, expected height*width = {height * width}",
            reason="bad_segmentation",
        )
    return {"size": [height, width], "counts": counts.decode("ascii")}


def segmentation_to_rle(
    segmentation: object, *, height: int, width: int, dropped_parts: list[str] | None = None
) -> dict:
    """Convert any COCO ``segmentation`` value to one canonical compressed RLE.

    Args:
        segmentation: one of
            - polygons: ``[[x0, y0, x1, y1, ...], ...]``, absolute pixel coordinates, one list
              per part; parts are unioned;
            - uncompressed RLE: ``{"size": [h, w], "counts": [int, ...]}`` (COCO crowd regions);
            - compressed RLE: ``{"size": [h, w], "counts": str | bytes}``.
        height (int): image height in pixels.
        width (int): image width in pixels.
        dropped_parts (list[str] | None): None: a broken polygon part raises. A list: a broken part of a
            polygon that has a valid part is left out, as detectron2 does, and a message naming the part
            and its problem is appended to the list; a polygon without any valid part still raises.

    Returns:
        dict: ``{"size": [height, width], "counts": str}`` compressed RLE.

    Raises:
        SegmentationError (a ValueError), with ``reason``: ``polygon_too_few_points`` for a
        part with fewer than 3 points (6 coordinates); ``rle_size_mismatch`` for an RLE whose
        size is not ``[height, width]``; ``bad_segmentation`` for anything else malformed (odd
        coordinate count, non-numeric values, bad counts, unknown structure).
    """
    if isinstance(segmentation, Mapping):
        if "counts" not in segmentation or "size" not in segmentation:
            raise SegmentationError(
                f"RLE dict needs 'counts' and 'size', got keys {sorted(segmentation)}", reason="bad_segmentation"
            )
        return _rle_to_rle(segmentation, height=height, width=width)
    if isinstance(segmentation, (list, tuple)):
        return _polygons_to_rle(segmentation, height=height, width=width, dropped_parts=dropped_parts)
    raise SegmentationError(
        f"segmentation must be a polygon list or an RLE dict, got {type(segmentation).__name__}",
        reason="bad_segmentation",
    )


def _to_pycocotools(rle: Mapping) -> dict:
    """Canonical or pycocotools RLE -> the form pycocotools decodes (bytes counts)."""
    counts = rle["counts"]
    height, width = (int(v) for v in rle["size"])
    if isinstance(counts, (list, tuple)):
        return coco_mask.frPyObjects({"size": [height, width], "counts": list(counts)}, height, width)
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    return {"size": [height, width], "counts": counts}


def mask_to_rle(mask: np.ndarray) -> dict:
    """Encode one binary mask.

    Args:
        mask (np.ndarray[H, W]): any dtype (or a CPU tensor); nonzero means foreground.

    Returns:
        dict: ``{"size": [H, W], "counts": str}`` compressed RLE.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must have shape [H, W], got {tuple(mask.shape)}")
    return _canonical(coco_mask.encode(np.asfortranarray(mask != 0, dtype=np.uint8)))


def masks_to_rles(masks: np.ndarray) -> list[dict]:
    """Encode a stack of binary masks.

    Args:
        masks (np.ndarray[N, H, W]): any dtype (or a CPU tensor); nonzero means foreground.
            N may be 0.

    Returns:
        list[dict]: N compressed RLEs ``{"size": [H, W], "counts": str}``.
    """
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"masks must have shape [N, H, W], got {tuple(masks.shape)}")
    if masks.shape[0] == 0:
        return []
    binary = masks.view(np.uint8) if masks.dtype == np.bool_ else (masks != 0).view(np.uint8)
    # [H, W, N] in Fortran order, the encoder's input; no copy when each mask is stored column-major
    # (as mrcnn.modeling.paste lays them out).
    stacked = np.asfortranarray(binary.transpose(1, 2, 0))
    return [_canonical(rle) for rle in coco_mask.encode(stacked)]


def rle_to_mask(rle: Mapping) -> np.ndarray:
    """Decode one RLE (str, bytes or list counts).

    Returns:
        np.ndarray[H, W] uint8: 0/1 mask, C-contiguous.
    """
    return np.ascontiguousarray(coco_mask.decode(_to_pycocotools(rle)))


def rles_to_masks(rles: Sequence[Mapping], height: int, width: int) -> np.ndarray:
    """Decode several RLEs of one image.

    Args:
        rles (Sequence[dict]): RLEs whose ``size`` must all be ``[height, width]``.
        height (int): image height; gives the shape when ``rles`` is empty.
        width (int): image width.

    Returns:
        np.ndarray[N, H, W] uint8: 0/1 masks; N may be 0.
    """
    if len(rles) == 0:
        return np.zeros((0, height, width), dtype=np.uint8)
    converted = [_to_pycocotools(rle) for rle in rles]
    for index, rle in enumerate(converted):
        if list(rle["size"]) != [height, width]:
            raise ValueError(f"RLE {index} has size {list(rle['size'])}, expected [{height}, {width}]")
    decoded = coco_mask.decode(converted)  # [H, W, N], Fortran order
    return np.ascontiguousarray(decoded.transpose(2, 0, 1))


def rle_area(rle: Mapping) -> float:
    """Number of foreground pixels of an RLE, as float (COCO's ``area`` convention)."""
    return float(coco_mask.area(_to_pycocotools(rle)))


def rle_to_bbox_xyxy(rle: Mapping) -> list[float]:
    """Tight box around the foreground pixels.

    Returns:
        list[float]: ``[x0, y0, x1, y1]`` absolute pixels, pixel edges (a single pixel at
        column c, row r gives ``[c, r, c + 1, r + 1]``); ``[0, 0, 0, 0]`` for an empty mask.
    """
    x, y, w, h = (float(v) for v in coco_mask.toBbox(_to_pycocotools(rle)))
    return [x, y, x + w, y + h]


# Boundary directions when walking around a foreground region with it on the right-hand side
# (image coordinates, y down): 0 = +x, 1 = +y, 2 = -x, 3 = -y. A right turn is (d + 1) % 4.
_STEPS = ((1, 0), (0, 1), (-1, 0), (0, -1))


def _boundary_edges(mask: np.ndarray) -> dict[tuple[int, int], list[tuple[int, int]]]:
    """Unit pixel-edge steps between foreground and background, keyed by their start corner.

    Returns:
        ``{(x, y): [(direction, ...)]}``: corners are pixel-corner coordinates (pixel ``(r, c)``
        spans ``[c, c + 1] x [r, r + 1]``); each step keeps its foreground pixel on the right.
    """
    padded = np.pad(mask, 1)
    inner = padded[1:-1, 1:-1]
    edges: dict[tuple[int, int], list[int]] = {}
    # (background neighbour offset in padded coords, direction, start corner offset (dx, dy)).
    sides = (
        (padded[:-2, 1:-1], 0, (0, 0)),  # top side, walked left to right
        (padded[1:-1, 2:], 1, (1, 0)),  # right side, walked down
        (padded[2:, 1:-1], 2, (1, 1)),  # bottom side, walked right to left
        (padded[1:-1, :-2], 3, (0, 1)),  # left side, walked up
    )
    for neighbour, direction, (dx, dy) in sides:
        rows, cols = np.nonzero(inner & ~neighbour)
        for x, y in zip((cols + dx).tolist(), (rows + dy).tolist()):
            edges.setdefault((x, y), []).append(direction)
    return edges


def mask_to_polygons(mask: np.ndarray) -> list[list[float]]:
    """Outer outlines of a binary mask as COCO polygons.

    Each 4-connected region becomes one polygon that follows its pixel edges exactly (corner
    coordinates: pixel ``(r, c)`` spans ``[c, c + 1] x [r, r + 1]``), with collinear points
    removed. Holes are not represented (COCO polygons cannot express them): rasterising the
    result with ``segmentation_to_rle`` gives the mask with its holes filled, up to
    pycocotools' sub-pixel rasterisation along the outline.

    Args:
        mask (np.ndarray[H, W]): any dtype; nonzero means foreground.

    Returns:
        list[list[float]]: ``[[x0, y0, x1, y1, ...], ...]``, one list per region, absolute
        pixels, largest region first; ``[]`` for an empty mask.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must have shape [H, W], got {tuple(mask.shape)}")
    rows, cols = np.nonzero(mask)
    if len(rows) == 0:
        return []
    top, left = int(rows.min()), int(cols.min())
    crop = mask[top : int(rows.max()) + 1, left : int(cols.max()) + 1] != 0
    edges = _boundary_edges(crop)
    polygons: list[tuple[float, list[float]]] = []
    while edges:
        start = next(iter(edges))
        corner, direction = start, edges[start][0]
        points: list[tuple[int, int]] = []
        while True:
            outgoing = edges[corner]
            if len(outgoing) > 1:  # a corner shared by two diagonal pixels: keep to the right (4-connectivity)
                direction = next(d for d in ((direction + 1) % 4, direction, (direction + 3) % 4) if d in outgoing)
            else:
                direction = outgoing[0]
            outgoing.remove(direction)
            if not outgoing:
                del edges[corner]
            if not points or points[-1][2] != direction:
                points.append((corner[0], corner[1], direction))
            step = _STEPS[direction]
            corner = (corner[0] + step[0], corner[1] + step[1])
            if corner not in edges:  # back at the start: the loop is closed
                break
        if len(points) > 1 and points[0][2] == points[-1][2]:
            points.pop(0)  # the start lay in the middle of a straight run
        xs = np.array([p[0] for p in points], dtype=np.float64)
        ys = np.array([p[1] for p in points], dtype=np.float64)
        signed_area = 0.5 * float(np.dot(xs, np.roll(ys, -1)) - np.dot(ys, np.roll(xs, -1)))
        if signed_area <= 0:  # walked with the foreground on the right, a hole runs the other way
            continue
        flat = np.stack([xs + left, ys + top], axis=1).reshape(-1).tolist()
        polygons.append((signed_area, flat))
    polygons.sort(key=lambda item: -item[0])
    return [flat for _, flat in polygons]
