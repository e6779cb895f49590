"""Checks of single COCO records: ids, image entries and their files, annotations (box, segmentation, keypoints).

Each check names the record and the file in its message; :func:`validate_annotation` raises
:class:`~mrcnn.data.coco_records.RecordError` with a reason code (listed in :mod:`mrcnn.data.coco`).
Polygons and RLE become canonical compressed RLE in :func:`mrcnn.data.masks.segmentation_to_rle`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from numbers import Real
from pathlib import Path

import numpy as np

from mrcnn.data.categories import Category, CategoryMap
from mrcnn.data.coco_records import AnnotationRecord, RecordError
from mrcnn.data.images import ImageDecodeError, decode_image
from mrcnn.data.keypoints import KeypointError, parse_keypoints
from mrcnn.data.masks import SegmentationError, rle_area, rle_to_bbox_xyxy, segmentation_to_rle

__all__ = ["file_problem", "image_bytes_problem", "image_problem", "is_id", "is_int", "validate_annotation"]


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def is_int(value: object) -> bool:
    """An int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_id(value: object) -> bool:
    """An int that fits the int64 columns ids travel in."""
    return is_int(value) and INT64_MIN <= value <= INT64_MAX


def _parse_box(
    bbox: object, *, height: int, width: int, fail
) -> tuple[float, float, float, float]:
    """COCO XYWH -> XYXY clipped to the image; ``fail(reason, detail)`` raises."""
    if (
        not isinstance(bbox, (list, tuple))
        or len(bbox) != 4
        or not all(isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v) for v in bbox)
    ):
        fail("bad_box", f"bbox must be 4 finite numbers [x, y, w, h], got {bbox!r}")
    x, y, w, h = (float(v) for v in bbox)
    if w <= 0 or h <= 0:
        fail("zero_area_box", f"bbox {list(bbox)} (XYWH) has zero or negative width/height")
    x0, y0, x1, y1 = x, y, x + w, y + h
    if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
        fail("box_outside_image", f"bbox {list(bbox)} (XYWH) lies entirely outside the {width}x{height} image")
    # The box as the model sees it: clipped to the image, then float32 (shards and tensors hold float32).
    clipped = (max(x0, 0.0), max(y0, 0.0), min(x1, float(width)), min(y1, float(height)))
    as_float32 = np.asarray(clipped, dtype=np.float32)
    if not (as_float32[2] > as_float32[0] and as_float32[3] > as_float32[1]):
        fail(
            "zero_area_box",
            f"bbox {list(bbox)} (XYWH) has zero width or height once clipped to the {width}x{height} image "
            f"and stored as float32 ({[float(v) for v in as_float32]} XYXY)",
        )
    return clipped


def validate_annotation(
    ann: Mapping, *, image: Mapping, categories: CategoryMap, source: str
) -> AnnotationRecord:
    """Validate one COCO annotation against its image and the category map.

    Args:
        ann (dict): COCO annotation (``id``, ``category_id``, ``segmentation``, optional
            ``bbox`` XYWH, optional ``iscrowd``).
        image (dict): its COCO image entry (``height``, ``width`` are used).
        categories (CategoryMap): the dataset's categories.
        source (str): the annotation file, for messages.

    Returns:
        AnnotationRecord: box XYXY clipped to the image (derived from the mask when ``bbox``
        is absent), canonical compressed RLE, area = mask pixel count.

    Raises:
        RecordError: with ``reason`` one of ``bad_annotation_record``, ``unknown_category``,
            ``bad_box``, ``zero_area_box``, ``box_outside_image``, ``bad_segmentation``,
            ``polygon_too_few_points``, ``rle_size_mismatch``, ``empty_mask``, ``bad_keypoints``; the message
            reads like "annotation 1234 in instances_val.json: polygon has 2 points, need at
            least 3".
    """
    ann_id = ann.get("id") if isinstance(ann, Mapping) else None
    where = f"annotation {ann_id} in {source}"

    def fail(reason: str, detail: str):
        raise RecordError(f"{where}: {detail}", reason=reason)

    if not isinstance(ann, Mapping) or not is_id(ann_id):
        fail("bad_annotation_record", f"annotation must be a dict with an int64 'id', got {ann!r:.200}")
    height, width = image["height"], image["width"]

    category_id = ann.get("category_id")
    if not is_int(category_id) or category_id not in categories:
        fail("unknown_category", f"category_id {category_id!r} is not in the file's categories")
    label = categories.label_of(category_id)

    iscrowd = ann.get("iscrowd", 0)
    if iscrowd not in (0, 1):
        fail("bad_annotation_record", f"iscrowd must be 0 or 1, got {iscrowd!r}")

    bbox = ann.get("bbox")
    box = _parse_box(bbox, height=height, width=width, fail=fail) if bbox is not None else None

    segmentation = ann.get("segmentation")
    if segmentation is None:
        fail("bad_segmentation", "no segmentation")
    dropped_parts: list[str] = []
    try:
        rle = segmentation_to_rle(segmentation, height=height, width=width, dropped_parts=dropped_parts)
    except SegmentationError as exc:
        fail(exc.reason, str(exc))
    area = rle_area(rle)
    if area <= 0:
        fail("empty_mask", "segmentation covers no pixels of the image")
    if box is None:
        box = tuple(rle_to_bbox_xyxy(rle))
    keypoints = _parse_annotation_keypoints(ann, categories.categories[label - 1], height=height, width=width, fail=fail)
    return AnnotationRecord(
        id=ann_id,
        category_id=category_id,
        label=label,
        box=box,
        rle=rle,
        iscrowd=int(iscrowd),
        area=area,
        keypoints=keypoints,
        dropped_parts=tuple(dropped_parts),
    )


def _parse_annotation_keypoints(ann: Mapping, category: Category, *, height: int, width: int, fail) -> tuple[float, ...]:
    """The annotation's keypoints checked against its category's K names (none labelled when absent); ``()``
    for a category without keypoints, where an annotation that has some fails ``bad_keypoints``."""
    values = ann.get("keypoints")
    if not category.keypoints:
        if values:
            fail("bad_keypoints", f"has keypoints but its category {category.id} ({category.name!r}) names none")
        return ()
    num_keypoints = len(category.keypoints)
    if values is None:
        values = [0] * (3 * num_keypoints)
    try:
        return parse_keypoints(
            values, num_keypoints=num_keypoints, height=height, width=width, count=ann.get("num_keypoints")
        )
    except KeypointError as exc:
        fail("bad_keypoints", str(exc))


def image_problem(image: object) -> str | None:
    """What is wrong with a COCO image entry (id, file_name, height, width), or None when nothing is."""
    if not isinstance(image, Mapping):
        return f"image entry must be a dict, got {type(image).__name__}"
    if not is_id(image.get("id")):
        return f"image 'id' must be an int64, got {image.get('id')!r}"
    if not isinstance(image.get("file_name"), str) or not image["file_name"]:
        return f"'file_name' must be a non-empty str, got {image.get('file_name')!r}"
    for key in ("height", "width"):
        if not is_int(image.get(key)) or image[key] <= 0:
            return f"'{key}' must be a positive int, got {image.get(key)!r}"
    return None


def file_problem(
    image: Mapping, image_dir: Path | None, *, check_files: bool, check_decode: bool
) -> tuple[str | None, str]:
    """``(reason, detail)`` for an image whose file fails the requested checks, else ``(None, "")``."""
    if image_dir is None or not (check_files or check_decode):
        return None, ""
    file_path = image_dir / image["file_name"]
    if not file_path.is_file():
        return "missing_image_file", f"file not found: {file_path}"
    if not check_decode:
        return None, ""
    try:
        data = file_path.read_bytes()
    except OSError as exc:
        return "unreadable_image", f"cannot decode (os_error): {exc}"
    return image_bytes_problem(data, source=str(file_path), height=image["height"], width=image["width"])


def image_bytes_problem(data: bytes, *, source: str, height: int, width: int) -> tuple[str | None, str]:
    """Decode an image file's bytes fully and compare its size with the json's.

    Args:
        data: the encoded file.
        source: the file, for the decoder's messages.
        height, width: the image entry's size in pixels.

    Returns:
        ``("unreadable_image", detail)`` when it does not decode, ``("image_size_mismatch", detail)`` when its
        decoded (EXIF-oriented) size differs, else ``(None, "")``.
    """
    try:
        pixels = decode_image(data, source=source)
    except (ImageDecodeError, OSError) as exc:
        return "unreadable_image", f"cannot decode ({getattr(exc, 'reason', 'os_error')}): {exc}"
    decoded_height, decoded_width = pixels.shape[:2]
    if (decoded_height, decoded_width) != (height, width):
        return (
            "image_size_mismatch",
            f"decoded size {decoded_width}x{decoded_height} (after EXIF orientation) differs from the json's "
            f"{width}x{height}",
        )
    return None, ""
