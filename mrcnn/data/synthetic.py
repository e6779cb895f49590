"""The built-in synthetic dataset: coloured shapes on varied backgrounds, in COCO format.

It is the embedded default, so every command runs without downloading anything. Each
image holds a few of five shape classes (:data:`SHAPE_CLASSES`) in random colours, sizes
(about 8% to 60% of the image side, log-uniform, so small ones are common), rotations and
positions, on a solid or gradient background with optional noise. Later shapes occlude
earlier ones and the stored masks are the VISIBLE parts. Masks are exact: every shape is
rasterised once into a mask (PIL ``ImageDraw``, no anti-aliasing) and the image is coloured
through that same mask, so each instance's pixels are exactly one flat colour.

Output is deterministic for a seed (byte-identical PNG and json files), and each image
has its own random stream (``SeedSequence(seed, spawn_key=(split, index))``), so train and
val never share an image and image ``i`` does not depend on how many images were asked for.

``difficulty="hard"`` (:data:`DIFFICULTIES`) draws the same five classes smaller (5% to 30% of the
side), more of them per image (2 to 6), with thin-banded rings and thin-armed stars: masks whose
edges are a pixel or two from the box edges, where the alignment of RoI features with the image
shows at AP75 (the paper's RoIPool vs RoIAlign ablation). The default difficulty's output is
unchanged by that option.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as coco_mask

from mrcnn.data.categories import CategoryMap
from mrcnn.data.masks import masks_to_rles

__all__ = [
    "DIFFICULTIES",
    "SHAPE_CLASSES",
    "Difficulty",
    "make_synthetic_coco",
    "render_synthetic_image",
    "synthetic_categories",
]

SHAPE_CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "star", "ring")

MIN_SIZE_FRACTION = 0.08  # shape diameter / image side (default difficulty)
MAX_SIZE_FRACTION = 0.60
MIN_VISIBLE_PIXELS = 20  # drop a shape whose visible part is smaller than this...
MIN_VISIBLE_FRACTION = 0.25  # ...or than this fraction of its unoccluded area
MIN_COLOUR_DISTANCE = 110.0  # RGB euclidean distance of a shape colour from the background colours
LICENSE = {"id": 1, "name": "CC0 1.0 (generated data)", "url": "https://creativecommons.org/publicdomain/zero/1.0/"}


@dataclass(frozen=True)
class Difficulty:
    """How the shapes of one difficulty level are drawn.

    min_size_fraction, max_size_fraction: shape diameter / image side, drawn log-uniform in this range.
    ring_inner: inner / outer radius of a ring, uniform in this range (closer to 1 = a thinner band).
    star_inner: inner / outer radius of a star's vertices (smaller = thinner arms).
    min_shapes, max_shapes: instances per image when the caller gives no count.
    min_visible_fraction: a shape less visible than this fraction of its own area is removed.
    min_colour_distance: RGB euclidean distance of a shape colour from every background key colour.
    noise_probability: chance that an image's background gets Gaussian pixel noise.
    edge_margin: a shape's centre keeps this many radii from the image edge (0.5: up to half of it can be cut off).
    """

    min_size_fraction: float
    max_size_fraction: float
    ring_inner: tuple[float, float]
    star_inner: tuple[float, float]
    min_shapes: int
    max_shapes: int
    min_visible_fraction: float = MIN_VISIBLE_FRACTION
    min_colour_distance: float = MIN_COLOUR_DISTANCE
    noise_probability: float = 0.5
    edge_margin: float = 0.5


DIFFICULTIES: dict[str, Difficulty] = {
    "default": Difficulty(MIN_SIZE_FRACTION, MAX_SIZE_FRACTION, (0.45, 0.65), (0.38, 0.5), 1, 4),
    # Small objects (6-38 px on a 128 px image; P2 cells are 4 px) and thin parts: a RoI rounded to
    # the feature grid misplaces such a mask by a large fraction of its width.
    "hard": Difficulty(0.05, 0.30, (0.62, 0.78), (0.28, 0.38), 2, 6),
    # The demo's set, learnable on a CPU in minutes: 1-3 large shapes (32-77 px on a 128 px image), at
    # least 60% visible, never cut by the image edge, in colours far from the background, on backgrounds
    # without noise.
    "easy": Difficulty(
        0.25, 0.60, (0.45, 0.6), (0.4, 0.5), 1, 3,
        min_visible_fraction=0.6, min_colour_distance=150.0, noise_probability=0.0, edge_margin=1.0,
    ),
}


def _difficulty(name: str) -> Difficulty:
    if name not in DIFFICULTIES:
        raise ValueError(f"difficulty: expected one of {sorted(DIFFICULTIES)}, got {name!r}")
    return DIFFICULTIES[name]


def synthetic_categories() -> CategoryMap:
    """Category map of the synthetic dataset: ids 1..5 = :data:`SHAPE_CLASSES`, supercategory ``shape``."""
    return CategoryMap.from_names(SHAPE_CLASSES, supercategory="shape")


def _background(
    rng: np.random.Generator, size: int, noise_probability: float = 0.5
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Solid or linear-gradient background, noisy with ``noise_probability``; returns (uint8 [S, S, 3], key colours)."""
    start = rng.uniform(0, 255, size=3)
    colours = [start]
    image = np.broadcast_to(start, (size, size, 3)).astype(np.float64)
    if rng.random() < 0.5:
        end = rng.uniform(0, 255, size=3)
        colours.append(end)
        angle = rng.uniform(0, 2 * math.pi)
        ys, xs = np.mgrid[0:size, 0:size] / max(size - 1, 1)
        ramp = xs * math.cos(angle) + ys * math.sin(angle)
        ramp = (ramp - ramp.min()) / max(ramp.max() - ramp.min(), 1e-9)  # [S, S] in 0..1
        image = start + ramp[:, :, None] * (end - start)
    if rng.random() < noise_probability:
        image = image + rng.normal(0.0, rng.uniform(2.0, 10.0), size=image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), colours


def _shape_colour(
    rng: np.random.Generator, background_colours: list[np.ndarray], min_distance: float = MIN_COLOUR_DISTANCE
) -> np.ndarray:
    """A random colour at least ``min_distance`` from every background key colour (else the inverse of the first)."""
    for _ in range(64):
        colour = rng.integers(0, 256, size=3)
        if all(np.linalg.norm(colour - bg) >= min_distance for bg in background_colours):
            return colour.astype(np.uint8)
    return (255 - np.rint(background_colours[0])).astype(np.uint8)  # the inverse is always far enough


def _regular_polygon(cx: float, cy: float, radii: list[float], angle: float) -> list[tuple[float, float]]:
    """Vertices at equal angular steps starting at ``angle``, cycling through ``radii``."""
    count = len(radii)
    return [
        (cx + r * math.cos(angle + 2 * math.pi * k / count), cy + r * math.sin(angle + 2 * math.pi * k / count))
        for k, r in enumerate(radii)
    ]


def _shape_mask(rng: np.random.Generator, class_index: int, size: int, style: Difficulty) -> np.ndarray:
    """Full (unoccluded) mask of one random shape: uint8 [S, S], 1 inside."""
    diameter = size * math.exp(rng.uniform(math.log(style.min_size_fraction), math.log(style.max_size_fraction)))
    radius = diameter / 2
    margin = min(radius * style.edge_margin, size / 2)
    cx, cy = rng.uniform(margin, size - margin, size=2)
    angle = rng.uniform(0, 2 * math.pi)
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    name = SHAPE_CLASSES[class_index]
    if name == "circle":
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=1)
    elif name == "square":
        draw.polygon(_regular_polygon(cx, cy, [radius] * 4, angle), fill=1)
    elif name == "triangle":
        draw.polygon(_regular_polygon(cx, cy, [radius] * 3, angle), fill=1)
    elif name == "star":
        inner = radius * rng.uniform(*style.star_inner)
        draw.polygon(_regular_polygon(cx, cy, [radius, inner] * 5, angle), fill=1)
    elif name == "ring":
        inner = radius * rng.uniform(*style.ring_inner)
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=1)
        draw.ellipse([cx - inner, cy - inner, cx + inner, cy + inner], fill=0)
    else:  # pragma: no cover - SHAPE_CLASSES and this function change together
        raise AssertionError(name)
    return np.asarray(canvas, dtype=np.uint8)


def _visible_masks(full_masks: list[np.ndarray]) -> list[np.ndarray]:
    """Visible part of each mask when later masks are drawn on top of earlier ones."""
    occluder = np.zeros_like(full_masks[0], dtype=bool) if full_masks else None
    visible = [None] * len(full_masks)
    for index in range(len(full_masks) - 1, -1, -1):
        full = full_masks[index].astype(bool)
        visible[index] = full & ~occluder
        occluder |= full
    return visible


def render_synthetic_image(
    rng: np.random.Generator,
    *,
    size: int,
    min_shapes: int | None = None,
    max_shapes: int | None = None,
    difficulty: str = "default",
) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """Draw one synthetic image with exact visible instance masks.

    Shapes that end up mostly hidden (visible area under ``MIN_VISIBLE_PIXELS`` px or under
    ``MIN_VISIBLE_FRACTION`` of their own area) are removed before the image is coloured, so
    no unannotated remnant stays in the picture.

    Args:
        rng (np.random.Generator): the only source of randomness.
        size (int): image side in pixels (square images), >= 16.
        min_shapes (int): fewest instances in the result, >= 0 (0 allows empty images); default: the
            difficulty's (1 for ``default``).
        max_shapes (int): most shapes drawn, >= min_shapes; default: the difficulty's (4 for ``default``).
        difficulty (str): a key of :data:`DIFFICULTIES`: shape sizes and thinness.

    Returns:
        image (np.ndarray[S, S, 3] uint8): RGB.
        instances (list[tuple[int, np.ndarray[S, S] uint8]]): ``(class_index, visible_mask)``
            bottom to top; ``class_index`` indexes :data:`SHAPE_CLASSES` (COCO category id is
            ``class_index + 1``); masks are 0/1, non-empty and disjoint.
    """
    style = _difficulty(difficulty)
    min_shapes = style.min_shapes if min_shapes is None else min_shapes
    max_shapes = style.max_shapes if max_shapes is None else max_shapes
    if size < 16:
        raise ValueError(f"size must be >= 16, got {size}")
    if not 0 <= min_shapes <= max_shapes:
        raise ValueError(f"need 0 <= min_shapes <= max_shapes, got min_shapes={min_shapes}, max_shapes={max_shapes}")
    for _ in range(100):
        background, background_colours = _background(rng, size, style.noise_probability)
        num_shapes = int(rng.integers(min_shapes, max_shapes + 1))
        classes = [int(c) for c in rng.integers(0, len(SHAPE_CLASSES), size=num_shapes)]
        full_masks = [_shape_mask(rng, c, size, style) for c in classes]
        colours = [_shape_colour(rng, background_colours, style.min_colour_distance) for _ in classes]
        kept = list(range(num_shapes))
        while True:
            visible = _visible_masks([full_masks[i] for i in kept])
            too_hidden = [
                position
                for position, index in enumerate(kept)
                if visible[position].sum() < max(MIN_VISIBLE_PIXELS, style.min_visible_fraction * full_masks[index].sum())
            ]
            if not too_hidden:
                break
            del kept[too_hidden[0]]  # removing one shape can uncover others; re-check all
        if len(kept) >= min_shapes:
            break
    else:
        raise RuntimeError(f"could not place {min_shapes} visible shapes on a {size}px image in 100 tries")
    image = background.copy()
    instances = []
    for position, index in enumerate(kept):
        image[visible[position]] = colours[index]
        instances.append((classes[index], visible[position].astype(np.uint8)))
    return image, instances


def make_synthetic_coco(
    out_dir: str | os.PathLike,
    *,
    num_train: int = 200,
    num_val: int = 50,
    size: int = 128,
    seed: int = 0,
    min_shapes: int | None = None,
    max_shapes: int | None = None,
    difficulty: str = "default",
) -> dict:
    """Write the synthetic dataset as two COCO splits.

    Layout: ``OUT/{train,val}/images/NNNNNN.png`` and ``OUT/{train,val}/annotations.json``.
    The json is valid COCO instances json: ``info``, ``licenses``, ``images``,
    ``annotations`` (compressed RLE ``segmentation`` with str counts, ``bbox`` XYWH of the
    mask, ``area`` = mask pixel count, ``iscrowd`` 0) and ``categories`` (ids 1..5). Image
    and annotation ids start at 1 in each split. Existing files are overwritten; other
    files in OUT are left alone.

    Args:
        out_dir (str | PathLike): created if missing.
        num_train (int): train images.
        num_val (int): val images.
        size (int): image side in pixels.
        seed (int): non-negative; same seed -> byte-identical output.
        min_shapes (int): see :func:`render_synthetic_image`.
        max_shapes (int): see :func:`render_synthetic_image`.
        difficulty (str): ``default`` or ``hard`` (:data:`DIFFICULTIES`); recorded in the json's ``info``
            when not the default.

    Returns:
        dict: ``{"root": Path, "categories": [...], "train": split, "val": split}`` where
        split is ``{"annotations": Path, "image_dir": Path, "num_images": int,
        "num_annotations": int}``.
    """
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    _difficulty(difficulty)
    root = Path(out_dir)
    categories = synthetic_categories()
    coco_categories = [{"id": c.id, "name": c.name, "supercategory": c.supercategory} for c in categories.categories]

    def render(split_index: int, index: int) -> tuple[np.ndarray, list[tuple[np.ndarray, dict]]]:
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(split_index, index)))
        image, instances = render_synthetic_image(
            rng, size=size, min_shapes=min_shapes, max_shapes=max_shapes, difficulty=difficulty
        )
        return image, [(mask, {"category_id": class_index + 1}) for class_index, mask in instances]

    def info(split: str) -> dict:
        return {"description": "mrcnn synthetic shapes", "version": "1", "contributor": "mrcnn.data.synthetic", "seed": seed,
                "split": split, "size": size, **({"difficulty": difficulty} if difficulty != "default" else {})}  # fmt: skip
    return write_coco_splits(root, {"train": num_train, "val": num_val}, render, info=info, categories=coco_categories)


def write_coco_splits(
    root: Path,
    splits: dict[str, int],
    render: Callable[[int, int], tuple[np.ndarray, list[tuple[np.ndarray, dict]]]],
    *,
    info: Callable[[str], dict],
    categories: list[dict],
) -> dict:
    """Render and write synthetic COCO splits: ``root/SPLIT/images/NNNNNN.png`` and ``root/SPLIT/annotations.json``.

    Args:
        root (Path): the dataset folder.
        splits (dict[str, int]): images per split, in order (the split's position is ``render``'s first
            argument).
        render: ``render(split_index, index) -> (image, instances)``: image ``np.ndarray[S, S, 3]`` uint8 RGB,
            instances a list of ``(mask np.ndarray[S, S] 0/1, fields)``, fields holding ``category_id`` and any
            further annotation fields (e.g. ``keypoints``, ``num_keypoints``).
        info: ``info(split) -> dict``, the json's ``info`` of a split.
        categories (list[dict]): the json's ``categories``.

    Returns:
        dict: ``{"root", "categories", SPLIT: {"annotations": Path, "image_dir": Path, "num_images",
        "num_annotations"}}``. Annotations get ``segmentation`` (compressed RLE, str counts), ``area`` (the
        mask's pixel count), ``bbox`` (XYWH of the mask) and ``iscrowd`` 0; ids start at 1 in each split.
    """
    summary: dict = {"root": root, "categories": categories}
    for split_index, (split, num_images) in enumerate(splits.items()):
        image_dir = root / split / "images"
        image_dir.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for index in range(num_images):
            image, instances = render(split_index, index)
            image_id = index + 1
            file_name = f"{image_id:06d}.png"
            Image.fromarray(image).save(image_dir / file_name, format="PNG")
            height, width = image.shape[:2]
            images.append({"id": image_id, "file_name": file_name, "height": height, "width": width, "license": 1})
            if not instances:
                continue
            rles = masks_to_rles(np.stack([mask for mask, _ in instances]))  # [N, S, S]
            boxes_xywh = coco_mask.toBbox([{"size": r["size"], "counts": r["counts"].encode()} for r in rles])
            for (mask, fields), rle, box in zip(instances, rles, boxes_xywh):
                extra = {key: value for key, value in fields.items() if key != "category_id"}
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": fields["category_id"],
                                    "segmentation": rle, "area": float(mask.sum()), "bbox": [float(v) for v in box],
                                    "iscrowd": 0, **extra})  # fmt: skip
        coco = {
            "info": info(split),
            "licenses": [LICENSE],
            "images": images,
            "annotations": annotations,
            "categories": categories,
        }  # fmt: skip
        annotation_path = root / split / "annotations.json"
        annotation_path.write_text(json.dumps(coco, separators=(",", ":")) + "\n")
        summary[split] = {
            "annotations": annotation_path,
            "image_dir": image_dir,
            "num_images": num_images,
            "num_annotations": len(annotations),
        }
    return summary
