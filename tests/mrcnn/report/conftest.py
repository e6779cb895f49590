"""A hand-made case for the report tests: 3 images, 2 classes, one confusion, one miss, one false positive,
a duplicate, a detection on a crowd region and one below the score threshold."""

from __future__ import annotations

import numpy as np
import pytest

from mrcnn.data.masks import mask_to_rle

CAT, DOG = 1, 2


def box_polygon(x: float, y: float, w: float, h: float) -> list[list[float]]:
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]


def box_rle(x: int, y: int, w: int, h: int, size: int = 100) -> dict:
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[y : y + h, x : x + w] = 1
    return mask_to_rle(mask)


def gt_annotation(ann_id: int, image_id: int, category_id: int, box: list[int], iscrowd: int = 0) -> dict:
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "bbox": [float(v) for v in box],
        "area": float(box[2] * box[3]),
        "iscrowd": iscrowd,
        "segmentation": box_polygon(*box),
    }


def result(image_id: int, category_id: int, box: list[int], score: float) -> dict:
    bbox = [float(v) for v in box]
    return {"image_id": image_id, "category_id": category_id, "bbox": bbox, "score": score, "segmentation": box_rle(*box)}


def handmade_gt() -> dict:
    return {
        "images": [{"id": i, "file_name": f"img{i}.png", "height": 100, "width": 100} for i in (1, 2, 3)],
        "categories": [{"id": CAT, "name": "cat"}, {"id": DOG, "name": "dog"}],
        "annotations": [
            gt_annotation(1, 1, CAT, [0, 0, 10, 10]),  # A: found
            gt_annotation(2, 1, DOG, [20, 20, 10, 10]),  # B: detected as a cat
            gt_annotation(3, 2, CAT, [0, 0, 10, 10]),  # C: missed
            gt_annotation(4, 2, DOG, [50, 50, 40, 40], iscrowd=1),  # a crowd region: never missed
        ],
    }


def handmade_results() -> list[dict]:
    return [
        result(1, CAT, [0, 0, 10, 10], 0.9),  # true positive on A
        result(1, CAT, [20, 20, 10, 10], 0.8),  # on B, a dog: a confusion
        result(1, CAT, [1, 0, 10, 10], 0.6),  # IoU .82 with A, already matched: a false positive
        result(2, DOG, [55, 55, 10, 10], 0.9),  # inside the crowd region: ignored
        result(3, DOG, [0, 0, 10, 10], 0.7),  # nothing there: a false positive
        result(3, CAT, [0, 0, 10, 10], 0.3),  # below the 0.5 threshold
    ]


@pytest.fixture
def gt() -> dict:
    return handmade_gt()


@pytest.fixture
def results() -> list[dict]:
    return handmade_results()
