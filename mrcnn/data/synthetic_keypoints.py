"""A synthetic keypoint dataset: "houses" whose five corners are keypoints, in COCO person-keypoint format.

The keypoint analogue of :mod:`mrcnn.data.synthetic`, small enough to train on a CPU in minutes. Each
image holds 1-3 houses (a wall rectangle under a roof triangle) in random colours, sizes (about 20% to
55% of the image side), proportions, positions and rotations (within +-30 degrees, so "left" stays on
the left), on the same backgrounds as the shapes dataset. One category, ``house``, with K = 5 keypoints
in a fixed order::

    1 roof  2 left_eave  3 right_eave  4 left_base  5 right_base

(left/right as seen in the image at rotation 0, so a mirrored image swaps them: see
:func:`mrcnn.data.keypoints.flip_indices`) and a skeleton along the outline plus the eave line.
Later houses occlude earlier ones: masks are the visible parts, and a corner hidden under a later house
is labelled but not visible (v = 1), a corner outside the image is not labelled (v = 0, x = y = 0), any
other corner is visible (v = 2). Keypoints are the exact corners in pixel-edge coordinates (the same
convention as the boxes): a corner drawn at PIL's pixel centre (x, y) is stored as (x + 0.5, y + 0.5).

OKS sigmas: the house keypoints use :data:`mrcnn.data.keypoints.DEFAULT_KEYPOINT_SIGMA` (0.05).
Output is deterministic for a seed, with one random stream per image, as the shapes dataset.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from mrcnn.data.categories import Category, CategoryMap
from mrcnn.data.synthetic import _background, _shape_colour, write_coco_splits

__all__ = [
    "HOUSE_KEYPOINTS",
    "HOUSE_SKELETON",
    "make_synthetic_keypoints_coco",
    "render_keypoint_image",
    "synthetic_keypoint_categories",
]

HOUSE_KEYPOINTS: tuple[str, ...] = ("roof", "left_eave", "right_eave", "left_base", "right_base")
HOUSE_SKELETON: tuple[tuple[int, int], ...] = ((1, 2), (1, 3), (2, 3), (2, 4), (3, 5), (4, 5))  # 1-based

MIN_SIZE_FRACTION = 0.20  # house height / image side
MAX_SIZE_FRACTION = 0.55
MAX_ROTATION_DEG = 30.0
MIN_VISIBLE_PIXELS = 40
MIN_VISIBLE_FRACTION = 0.35


def synthetic_keypoint_categories() -> CategoryMap:
    """One category: id 1 ``house`` (supercategory ``shape``) with the five corner keypoints and skeleton."""
    return CategoryMap(
        categories=(
            Category(id=1, name="house", supercategory="shape", keypoints=HOUSE_KEYPOINTS, skeleton=HOUSE_SKELETON),
        )
    )


def _house_corners(rng: np.random.Generator, size: int) -> np.ndarray:
    """The five corners of one random house, float [5, 2] (x, y) at PIL pixel centres, in HOUSE_KEYPOINTS order."""
    height = size * math.exp(rng.uniform(math.log(MIN_SIZE_FRACTION), math.log(MAX_SIZE_FRACTION)))
    width = height * rng.uniform(0.6, 1.1)
    roof = height * rng.uniform(0.3, 0.5)
    angle = math.radians(rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG))
    top, eave, base = -height / 2, -height / 2 + roof, height / 2
    local = np.array([[0.0, top], [-width / 2, eave], [width / 2, eave], [-width / 2, base], [width / 2, base]])
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    margin = height * 0.3  # up to ~30% of a house may stick out of the image
    centre = rng.uniform(margin, size - margin, size=2)
    return local @ rotation.T + centre


def _house_mask(corners: np.ndarray, size: int) -> np.ndarray:
    canvas = Image.new("L", (size, size), 0)
    outline = [tuple(corners[i]) for i in (0, 2, 4, 3, 1)]  # roof, right eave, right base, left base, left eave
    ImageDraw.Draw(canvas).polygon(outline, fill=1)
    return np.asarray(canvas, dtype=np.uint8)


def _visibility(corners: np.ndarray, visible_mask: np.ndarray) -> np.ndarray:
    """v per corner: 0 outside the image, 2 where the house's own visible pixels reach it, else 1 (occluded)."""
    size = visible_mask.shape[0]
    centre = corners.mean(axis=0)
    v = np.zeros(len(corners), dtype=np.int64)
    for k, corner in enumerate(corners):
        if not (-0.5 <= corner[0] < size - 0.5 and -0.5 <= corner[1] < size - 0.5):
            continue
        inward = centre - corner
        probe = corner + 2.0 * inward / max(np.linalg.norm(inward), 1e-6)  # 2 px inside the corner
        col, row = (int(np.clip(np.rint(c), 0, size - 1)) for c in probe)
        v[k] = 2 if visible_mask[row, col] else 1
    return v


def render_keypoint_image(
    rng: np.random.Generator, *, size: int, min_houses: int = 1, max_houses: int = 3
) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """Draw one image of houses with exact visible masks and corner keypoints.

    Houses that end up mostly hidden (visible area under ``MIN_VISIBLE_PIXELS`` or under
    ``MIN_VISIBLE_FRACTION`` of their own) are removed before the image is coloured.

    Args:
        rng (np.random.Generator): the only source of randomness.
        size (int): image side in pixels (square images), >= 32.
        min_houses, max_houses (int): instances per image, 1 <= min_houses <= max_houses.

    Returns:
        image (np.ndarray[S, S, 3] uint8): RGB.
        instances: ``(visible_mask uint8 [S, S], keypoints float [5, 3])`` bottom to top; keypoints are
            ``(x, y, v)`` in pixel-edge coordinates, (0, 0, 0) where v = 0.
    """
    if size < 32:
        raise ValueError(f"size must be >= 32, got {size}")
    if not 1 <= min_houses <= max_houses:
        raise ValueError(f"need 1 <= min_houses <= max_houses, got {min_houses} and {max_houses}")
    for _ in range(100):
        background, background_colours = _background(rng, size)
        count = int(rng.integers(min_houses, max_houses + 1))
        corners = [_house_corners(rng, size) for _ in range(count)]
        full = [_house_mask(c, size).astype(bool) for c in corners]
        colours = [_shape_colour(rng, background_colours) for _ in range(count)]
        kept = list(range(count))
        while True:
            occluder = np.zeros((size, size), dtype=bool)
            visible: dict[int, np.ndarray] = {}
            for index in reversed(kept):
                visible[index] = full[index] & ~occluder
                occluder |= full[index]
            too_hidden = [
                i for i in kept if visible[i].sum() < max(MIN_VISIBLE_PIXELS, MIN_VISIBLE_FRACTION * full[i].sum())
            ]
            if not too_hidden:
                break
            kept.remove(too_hidden[0])  # removing one can uncover others; check again
        if len(kept) >= min_houses:
            break
    else:
        raise RuntimeError(f"could not place {min_houses} visible houses on a {size}px image in 100 tries")
    image = background.copy()
    instances = []
    for index in kept:
        image[visible[index]] = colours[index]
        v = _visibility(corners[index], visible[index])
        keypoints = np.zeros((len(HOUSE_KEYPOINTS), 3), dtype=np.float64)
        keypoints[:, :2] = corners[index] + 0.5
        keypoints[:, 2] = v
        keypoints[v == 0] = 0.0
        instances.append((visible[index].astype(np.uint8), keypoints))
    return image, instances


def make_synthetic_keypoints_coco(
    out_dir: str | os.PathLike,
    *,
    num_train: int = 200,
    num_val: int = 50,
    size: int = 128,
    seed: int = 0,
    min_houses: int = 1,
    max_houses: int = 3,
) -> dict:
    """Write the synthetic house-keypoint dataset as two COCO person-keypoint-format splits.

    Layout as :func:`mrcnn.data.synthetic.make_synthetic_coco`: ``OUT/{train,val}/images/NNNNNN.png`` and
    ``OUT/{train,val}/annotations.json``. Annotations carry ``segmentation`` (compressed RLE of the visible
    part), ``bbox`` (XYWH of the mask), ``area``, ``iscrowd`` 0, ``keypoints`` (flat, 15 numbers, rounded to
    0.01 px) and ``num_keypoints``; the category carries ``keypoints`` and ``skeleton``.

    Returns:
        dict: ``{"root", "categories", "train": split, "val": split}``, split as in make_synthetic_coco.
    """
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    root = Path(out_dir)
    coco_categories = [c.to_dict() for c in synthetic_keypoint_categories().categories]

    def render(split_index: int, index: int) -> tuple[np.ndarray, list[tuple[np.ndarray, dict]]]:
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(split_index, index, 7)))
        image, instances = render_keypoint_image(rng, size=size, min_houses=min_houses, max_houses=max_houses)
        annotated = []
        for mask, keypoints in instances:
            flat = [round(float(value), 2) for value in keypoints.reshape(-1)]
            annotated.append((mask, {"category_id": 1, "keypoints": [int(v) if i % 3 == 2 else v for i, v in enumerate(flat)],
                                     "num_keypoints": int((keypoints[:, 2] > 0).sum())}))  # fmt: skip
        return image, annotated

    def info(split: str) -> dict:
        return {"description": "mrcnn synthetic house keypoints", "version": "1",
                "contributor": "mrcnn.data.synthetic_keypoints", "seed": seed, "split": split, "size": size}  # fmt: skip
    return write_coco_splits(root, {"train": num_train, "val": num_val}, render, info=info, categories=coco_categories)
