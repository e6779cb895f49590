"""mrcnn.data.coco_validation: the checks of single records (annotations, image bytes)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from mrcnn.data.categories import CategoryMap
from mrcnn.data.coco import RecordError, validate_annotation
from mrcnn.data.coco_validation import image_bytes_problem
from mrcnn.data.masks import rle_to_bbox_xyxy


def test_validate_annotation_details():
    categories = CategoryMap.from_names(["a", "b"])
    image = {"id": 1, "height": 20, "width": 30}
    polygon = [[2.0, 3.0, 12.0, 3.0, 12.0, 9.0, 2.0, 9.0]]
    # No bbox: derived from the mask.
    record = validate_annotation(
        {"id": 5, "category_id": 2, "segmentation": polygon}, image=image, categories=categories, source="s.json"
    )
    assert record.label == 2 and record.iscrowd == 0
    assert list(record.box) == rle_to_bbox_xyxy(record.rle) == [2.0, 3.0, 12.0, 9.0]
    # A box hanging over the edge is clipped.
    record = validate_annotation(
        {"id": 6, "category_id": 1, "segmentation": polygon, "bbox": [-4.0, 10.0, 50.0, 30.0]},
        image=image,
        categories=categories,
        source="s.json",
    )
    assert record.box == (0.0, 10.0, 30.0, 20.0)
    # Crowd regions (uncompressed RLE) are kept with iscrowd=1.
    crowd = {"size": [20, 30], "counts": [100, 50, 450]}
    record = validate_annotation(
        {"id": 7, "category_id": 1, "segmentation": crowd, "iscrowd": 1, "bbox": [5, 0, 3, 20]},
        image=image,
        categories=categories,
        source="s.json",
    )
    assert record.iscrowd == 1 and record.area == 50.0 and isinstance(record.rle["counts"], str)
    cases = [
        ({"id": 8, "category_id": 1, "segmentation": {"size": [21, 30], "counts": [630]}}, "rle_size_mismatch"),
        ({"id": 9, "category_id": 1, "segmentation": [[100, 100, 110, 100, 110, 110]]}, "empty_mask"),
        ({"id": 10, "category_id": 1}, "bad_segmentation"),
        ({"id": 11, "category_id": 1, "segmentation": polygon, "bbox": [1, 2, 3]}, "bad_box"),
        ({"id": 12, "category_id": 1, "segmentation": polygon, "iscrowd": 2}, "bad_annotation_record"),
    ]
    for ann, reason in cases:
        with pytest.raises(RecordError) as info:
            validate_annotation(ann, image=image, categories=categories, source="s.json")
        assert info.value.reason == reason
        assert str(info.value).startswith(f"annotation {ann['id']} in s.json: ")


def _png(height: int, width: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((height, width, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_image_bytes_problem_names_the_reason():
    assert image_bytes_problem(_png(20, 30), source="a.png", height=20, width=30) == (None, "")
    reason, detail = image_bytes_problem(_png(20, 30), source="a.png", height=30, width=20)
    assert reason == "image_size_mismatch"
    assert detail == "decoded size 30x20 (after EXIF orientation) differs from the json's 20x30"
    reason, detail = image_bytes_problem(b"not an image", source="a.png", height=20, width=30)
    assert reason == "unreadable_image" and detail.startswith("cannot decode (not_an_image): ")
