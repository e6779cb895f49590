"""Keypoint metadata and checks: COCO's person keypoints, OKS sigmas, the flip map, annotation validation.

A COCO keypoint category names its K keypoints (``keypoints``) and joins them with a ``skeleton`` of
1-based index pairs. An annotation's ``keypoints`` is a flat list ``[x1, y1, v1, ..., xK, yK, vK]`` in
image pixels, where ``v`` is 0 (not labelled; x = y = 0), 1 (labelled, not visible) or 2 (labelled and
visible), and ``num_keypoints`` counts the labelled ones (v > 0).

OKS (object keypoint similarity, COCO's keypoint "IoU") needs one sigma per keypoint: COCO's 17 for its
person keypoints, :data:`DEFAULT_KEYPOINT_SIGMA` for every keypoint of any other category unless the
category gives its own ``keypoint_sigmas``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Real

__all__ = [
    "COCO_PERSON_KEYPOINTS",
    "COCO_PERSON_SIGMAS",
    "COCO_PERSON_SKELETON",
    "DEFAULT_KEYPOINT_SIGMA",
    "KeypointError",
    "default_keypoint_sigmas",
    "flip_indices",
    "parse_keypoints",
]

COCO_PERSON_KEYPOINTS: tuple[str, ...] = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)  # fmt: skip
# 1-based pairs, as in COCO's person_keypoints_*.json.
COCO_PERSON_SKELETON: tuple[tuple[int, int], ...] = (
    (16, 14), (14, 12), (17, 15), (15, 13), (12, 13), (6, 12), (7, 13), (6, 7), (6, 8), (7, 9),
    (8, 10), (9, 11), (2, 3), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7),
)  # fmt: skip
# pycocotools' Params.kpt_oks_sigmas, in COCO_PERSON_KEYPOINTS order.
COCO_PERSON_SIGMAS: tuple[float, ...] = tuple(
    v / 10.0 for v in (0.26, 0.25, 0.25, 0.35, 0.35, 0.79, 0.79, 0.72, 0.72, 0.62, 0.62, 1.07, 1.07, 0.87, 0.87, 0.89, 0.89)
)
# The OKS sigma of a keypoint of a category that is not COCO's person and gives none: tighter than
# COCO's body joints (0.062-0.107), between its eyes/nose (0.025-0.026) and ears (0.035), for sharp,
# exactly placed points such as the corners of the synthetic shapes.
DEFAULT_KEYPOINT_SIGMA = 0.05

VISIBILITY_VALUES = (0, 1, 2)


class KeypointError(ValueError):
    """An annotation's keypoints are malformed; the message says how."""


def default_keypoint_sigmas(names: Sequence[str]) -> tuple[float, ...]:
    """OKS sigmas for keypoints named ``names``: COCO's for its 17 person keypoints, else the default for each."""
    if tuple(names) == COCO_PERSON_KEYPOINTS:
        return COCO_PERSON_SIGMAS
    return (DEFAULT_KEYPOINT_SIGMA,) * len(names)


def flip_indices(names: Sequence[str]) -> tuple[int, ...]:
    """Where each keypoint goes when the image is mirrored left-right: ``left_*`` <-> ``right_*``.

    A name containing ``left`` swaps with the same name with ``right`` (and back); other names stay.

    Returns:
        ``indices`` with ``flipped[k] = keypoints[indices[k]]``.

    Raises:
        ValueError: a ``left``/``right`` name without its partner.
    """
    position = {name: index for index, name in enumerate(names)}
    indices = []
    for name in names:
        partner = name.replace("left", "\0").replace("right", "left").replace("\0", "right")
        if partner != name and partner not in position:
            raise ValueError(f"keypoint {name!r} has no mirror keypoint {partner!r} among {list(names)}")
        indices.append(position[partner])
    return tuple(indices)


def _is_number(value: object) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def parse_keypoints(
    values: object, *, num_keypoints: int, height: int, width: int, count: object = None
) -> tuple[float, ...]:
    """Validate one annotation's flat keypoint list.

    Args:
        values: the annotation's ``keypoints`` (``[x1, y1, v1, ...]``, 3K numbers).
        num_keypoints (int): K, from the category.
        height, width (int): the image's size; labelled keypoints must lie in ``[0, W] x [0, H]``.
        count: the annotation's ``num_keypoints`` field, or None when absent.

    Returns:
        tuple of 3K floats; unlabelled keypoints (v = 0) become (0, 0, 0).

    Raises:
        KeypointError: wrong length, a non-number, v outside {0, 1, 2}, a labelled keypoint outside the
            image, or a ``num_keypoints`` that differs from the number of labelled keypoints.
    """
    if not isinstance(values, (list, tuple)) or len(values) != 3 * num_keypoints:
        length = len(values) if isinstance(values, (list, tuple)) else type(values).__name__
        raise KeypointError(f"keypoints must be a list of 3 x {num_keypoints} = {3 * num_keypoints} numbers, got {length}")
    for value in values:
        if not _is_number(value):
            raise KeypointError(f"keypoints must be finite numbers, got {value!r}")
    out: list[float] = []
    labelled = 0
    for k in range(num_keypoints):
        x, y, v = (float(values[3 * k + i]) for i in range(3))
        if v not in VISIBILITY_VALUES:
            raise KeypointError(f"keypoint {k + 1}: visibility must be 0, 1 or 2, got {values[3 * k + 2]!r}")
        if v == 0:
            out += [0.0, 0.0, 0.0]
            continue
        if not (0.0 <= x <= width and 0.0 <= y <= height):
            raise KeypointError(f"keypoint {k + 1} at ({x:g}, {y:g}) lies outside the {width}x{height} image")
        labelled += 1
        out += [x, y, v]
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count != labelled):
        raise KeypointError(f"num_keypoints is {count!r} but {labelled} keypoints are labelled (v > 0)")
    return tuple(out)
