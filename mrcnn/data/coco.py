"""Loading and validating COCO instance-segmentation json.

:func:`load_coco` turns a COCO ``instances_*.json`` into validated :class:`ImageRecord`
objects. Every bad image or annotation becomes a :class:`Reject` with a stable ``reason``
code and a message naming the file and the record id; nothing bad stops the load and
nothing good is lost:

- an image with a bad annotation keeps its other annotations;
- an image with no annotations is kept, with ``annotations == ()``;
- only a file that is not COCO instance json at all raises (``ValueError``).

Reason codes (``Reject.reason`` / ``RecordError.reason``):

- image level: ``bad_image_record``, ``duplicate_image_id``, ``missing_image_file``,
  ``unreadable_image``, ``image_size_mismatch``;
- annotation level: ``bad_annotation_record``, ``duplicate_annotation_id``,
  ``unknown_image_id``, ``unknown_category``, ``bad_box``, ``zero_area_box``,
  ``box_outside_image``, ``bad_segmentation``, ``polygon_too_few_points``,
  ``rle_size_mismatch``, ``empty_mask``, ``bad_keypoints``;
- kept with a part left out: ``polygon_part_dropped`` (a polygon part with fewer than 3 points, an odd
  number of coordinates or non-finite ones, in a polygon that has a valid part; the annotation keeps
  its valid parts, as detectron2 does).

Ids (image, annotation, category) are 64-bit: an id outside the int64 range is a bad record.

COCO person-keypoint json (``person_keypoints_*.json``) is read by the same function: a
category's ``keypoints`` (names) and ``skeleton`` go into the :class:`CategoryMap`, and each
annotation of such a category gets its ``keypoints`` checked (3K numbers, v in {0, 1, 2},
labelled points inside the image, ``num_keypoints`` = the labelled count; see
:func:`mrcnn.data.keypoints.parse_keypoints`). An annotation without ``keypoints`` has none
labelled.

Annotations of a rejected image are dropped with it; the image's reject message says how
many. Boxes are XYXY absolute pixels, clipped to the image. ``area`` is the mask's pixel
count (the json ``area`` field is not used: COCO's values disagree with the masks by up to
~20% on small objects and crowd regions).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from numbers import Real
from pathlib import Path

import numpy as np

from mrcnn.data.categories import CategoryMap
from mrcnn.data.images import ImageDecodeError, decode_image
from mrcnn.data.keypoints import KeypointError, parse_keypoints
from mrcnn.data.masks import (
    SegmentationError,
    rle_area,
    rle_to_bbox_xyxy,
    segmentation_to_rle,
)

__all__ = [
    "AnnotationRecord",
    "CocoLoadResult",
    "ImageRecord",
    "RecordError",
    "Reject",
    "load_coco",
    "validate_annotation",
]


@dataclass(frozen=True)
class AnnotationRecord:
    """One validated object instance.

    Attributes:
        id (int): COCO annotation id.
        category_id (int): COCO category id.
        label (int): contiguous training label, 1..K (see :class:`CategoryMap`).
        box (tuple[float, float, float, float]): XYXY absolute pixels, clipped to the image,
            ``x1 > x0`` and ``y1 > y0`` also in float32 (as shards and tensors hold it).
        rle (dict): ``{"size": [height, width], "counts": str}`` compressed RLE.
        iscrowd (int): 1 for a COCO crowd region, else 0.
        area (float): mask pixel count, > 0.
        keypoints (tuple[float, ...]): ``(x1, y1, v1, ..., xK, yK, vK)`` absolute pixels for a category
            with K keypoints (unlabelled ones are (0, 0, 0)); empty for a category without keypoints.
        dropped_parts (tuple[str, ...]): one message per broken polygon part that was left out (the mask is
            the union of the valid parts, as detectron2 keeps them); :func:`load_coco` reports each as a
            ``polygon_part_dropped`` reject while the annotation is kept.
    """

    id: int
    category_id: int
    label: int
    box: tuple[float, float, float, float]
    rle: dict
    iscrowd: int
    area: float
    keypoints: tuple[float, ...] = ()
    dropped_parts: tuple[str, ...] = ()


@dataclass(frozen=True)
class ImageRecord:
    """One image and its validated annotations.

    The record holds ``file_name`` relative to an image folder, not an absolute path, so
    records stay valid when the folder moves; use :meth:`path` (or
    :meth:`CocoLoadResult.image_path`) to locate the file.

    Attributes:
        image_id (int): COCO image id.
        file_name (str): path relative to the image folder, as in the json.
        height (int): image height in pixels, from the json.
        width (int): image width in pixels, from the json.
        annotations (tuple[AnnotationRecord, ...]): may be empty.
    """

    image_id: int
    file_name: str
    height: int
    width: int
    annotations: tuple[AnnotationRecord, ...]

    def path(self, image_dir: str | os.PathLike) -> Path:
        """The image file: ``image_dir / file_name``."""
        return Path(image_dir) / self.file_name


@dataclass(frozen=True)
class Reject:
    """A record that was skipped, and why.

    Attributes:
        source (str): the annotation file (or ``"<dict>"``).
        image_id (int | None): the image concerned, if known.
        annotation_id (int | None): the annotation concerned; None for an image-level reject.
        reason (str): short stable code (see the module docstring).
        message (str): human sentence naming the record and the file.
    """

    source: str
    image_id: int | None
    annotation_id: int | None
    reason: str
    message: str


class RecordError(ValueError):
    """A single image or annotation record is invalid.

    Attributes:
        reason (str): short stable code (see the module docstring).
    """

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class CocoLoadResult:
    """What :func:`load_coco` returns.

    Attributes:
        records (list[ImageRecord]): kept images, in json order.
        categories (CategoryMap): every category in the json (used or not).
        rejects (list[Reject]): every skipped image and annotation.
        source (str): the annotation file (or ``"<dict>"``).
        image_dir (Path | None): the image folder, None when none was given or found.
    """

    records: list[ImageRecord] = field(repr=False)
    categories: CategoryMap = field(repr=False)
    rejects: list[Reject] = field(repr=False)
    source: str
    image_dir: Path | None

    @property
    def num_annotations(self) -> int:
        """Number of kept annotations, crowd regions included."""
        return sum(len(record.annotations) for record in self.records)

    def reject_counts(self) -> dict[str, int]:
        """``{reason: count}`` over :attr:`rejects`, sorted by reason."""
        return dict(sorted(Counter(reject.reason for reject in self.rejects).items()))

    def image_path(self, record: ImageRecord) -> Path:
        """The file of ``record``.

        Raises:
            ValueError: this result has no image folder.
        """
        if self.image_dir is None:
            raise ValueError(f"{self.source}: no image_dir was given to load_coco, so image paths are unknown")
        return record.path(self.image_dir)


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_id(value: object) -> bool:
    """An int that fits the int64 columns ids travel in."""
    return _is_int(value) and INT64_MIN <= value <= INT64_MAX


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

    if not isinstance(ann, Mapping) or not _is_id(ann_id):
        fail("bad_annotation_record", f"annotation must be a dict with an int64 'id', got {ann!r:.200}")
    height, width = image["height"], image["width"]

    category_id = ann.get("category_id")
    if not _is_int(category_id) or category_id not in categories:
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
    keypoints: tuple[float, ...] = ()
    category = categories.categories[label - 1]
    values = ann.get("keypoints")
    if category.keypoints:
        num_keypoints = len(category.keypoints)
        if values is None:
            values = [0] * (3 * num_keypoints)
        try:
            keypoints = parse_keypoints(
                values, num_keypoints=num_keypoints, height=height, width=width, count=ann.get("num_keypoints")
            )
        except KeypointError as exc:
            fail("bad_keypoints", str(exc))
    elif values:
        fail("bad_keypoints", f"has keypoints but its category {category_id} ({category.name!r}) names none")
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


def _read_json(annotations: str | os.PathLike | Mapping, source: str | None) -> tuple[Mapping, str, Path | None]:
    if isinstance(annotations, Mapping):
        return annotations, source or "<dict>", None
    path = Path(annotations)
    source = source or str(annotations)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise FileNotFoundError(f"COCO annotation file not found: {path}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{source}: not valid json ({exc})") from None
    return data, source, path


def _check_top_level(data: object, source: str) -> None:
    if not isinstance(data, Mapping):
        raise ValueError(f"{source}: expected a COCO json object, got a {type(data).__name__}")
    missing = [key for key in ("images", "annotations", "categories") if key not in data]
    if missing:
        raise ValueError(
            f"{source}: not COCO instance json: missing top-level key(s) {missing} "
            f"(found {sorted(data)[:10]})"
        )
    for key in ("images", "annotations", "categories"):
        if not isinstance(data[key], list):
            raise ValueError(f"{source}: '{key}' must be a list, got {type(data[key]).__name__}")


def _default_image_dir(path: Path | None) -> Path | None:
    """``<json dir>/images``, else the COCO layout ``annotations/instances_<split>.json`` -> ``<split>/``."""
    if path is None:
        return None
    candidates = [path.parent / "images"]
    match = re.fullmatch(r"instances_(\w+)\.json", path.name)
    if match:
        candidates.append(path.parent.parent / match.group(1))
    return next((c for c in candidates if c.is_dir()), None)


def _image_problem(image: object) -> str | None:
    if not isinstance(image, Mapping):
        return f"image entry must be a dict, got {type(image).__name__}"
    if not _is_id(image.get("id")):
        return f"image 'id' must be an int64, got {image.get('id')!r}"
    if not isinstance(image.get("file_name"), str) or not image["file_name"]:
        return f"'file_name' must be a non-empty str, got {image.get('file_name')!r}"
    for key in ("height", "width"):
        if not _is_int(image.get(key)) or image[key] <= 0:
            return f"'{key}' must be a positive int, got {image.get(key)!r}"
    return None


def load_coco(
    annotations: str | os.PathLike | Mapping,
    *,
    image_dir: str | os.PathLike | None = None,
    check_files: bool = True,
    check_decode: bool = False,
    source: str | None = None,
) -> CocoLoadResult:
    """Load and validate a COCO instance-segmentation dataset.

    Args:
        annotations (str | PathLike | dict): path of the json, or the parsed dict.
        image_dir (str | PathLike | None): folder the ``file_name`` entries are relative to.
            None: for a path, ``<json dir>/images`` if it exists, else ``<json dir>/../<split>``
            for a COCO-style ``instances_<split>.json``; for a dict, no folder.
        check_files (bool): reject images whose file does not exist (``missing_image_file``).
        check_decode (bool): also decode every image fully (slow) and reject undecodable ones
            (``unreadable_image``) and ones whose decoded (EXIF-oriented) size differs from
            the json's height/width (``image_size_mismatch``).
        source (str | None): name used in messages; defaults to the path or ``"<dict>"``.

    Returns:
        CocoLoadResult: kept records, categories, rejects.

    Raises:
        FileNotFoundError: the json file does not exist.
        ValueError: the json is not COCO instance json (not an object, missing or ill-typed
            ``images``/``annotations``/``categories``, bad categories), or file checks are
            requested but no image folder was given or found, or the given folder is missing.
    """
    data, source, path = _read_json(annotations, source)
    _check_top_level(data, source)
    categories = CategoryMap.from_coco(data, source=source)

    if image_dir is not None:
        image_dir = Path(image_dir)
        if not image_dir.is_dir():
            raise ValueError(f"{source}: image_dir {image_dir} is not a directory")
    else:
        image_dir = _default_image_dir(path)
        if image_dir is None and (check_files or check_decode):
            raise ValueError(
                f"{source}: no image_dir given and none found beside the json; pass image_dir=..., "
                f"or check_files=False and check_decode=False to load annotations only"
            )

    rejects: list[Reject] = []

    def reject(reason: str, message: str, *, image_id=None, annotation_id=None) -> None:
        rejects.append(
            Reject(source=source, image_id=image_id, annotation_id=annotation_id, reason=reason, message=message)
        )

    # Pass 1: annotation structure and id uniqueness; group by image id.
    annotations_by_image: dict[object, list[Mapping]] = {}
    seen_annotation_ids: set[int] = set()
    for index, ann in enumerate(data["annotations"]):
        ann_id = ann.get("id") if isinstance(ann, Mapping) else None
        image_id = ann.get("image_id") if isinstance(ann, Mapping) else None
        if not _is_id(ann_id) or not _is_id(image_id):
            reject(
                "bad_annotation_record",
                f"annotation entry {index} in {source}: needs int64 'id' and 'image_id', got {ann!r:.200}",
                image_id=image_id if _is_id(image_id) else None,
                annotation_id=ann_id if _is_id(ann_id) else None,
            )
            continue
        if ann_id in seen_annotation_ids:
            reject(
                "duplicate_annotation_id",
                f"annotation {ann_id} in {source}: duplicate annotation id (entry {index}); the first one is kept",
                image_id=image_id,
                annotation_id=ann_id,
            )
            continue
        seen_annotation_ids.add(ann_id)
        annotations_by_image.setdefault(image_id, []).append(ann)

    # Pass 2: images.
    kept_images: dict[int, Mapping] = {}
    rejected_image_ids: set[int] = set()
    for index, image in enumerate(data["images"]):
        problem = _image_problem(image)
        image_id = image.get("id") if isinstance(image, Mapping) else None
        if problem is not None:
            if _is_id(image_id):
                rejected_image_ids.add(image_id)
            reject(
                "bad_image_record",
                f"image entry {index} in {source}: {problem}",
                image_id=image_id if _is_id(image_id) else None,
            )
            continue
        if image_id in kept_images or image_id in rejected_image_ids:
            reject(
                "duplicate_image_id",
                f"image {image_id} ({image['file_name']}) in {source}: duplicate image id (entry {index}); "
                f"the first entry is kept and gets the annotations",
                image_id=image_id,
            )
            continue
        problem_reason, problem = _file_problem(image, image_dir, check_files=check_files, check_decode=check_decode)
        if problem_reason is not None:
            rejected_image_ids.add(image_id)
            num_dropped = len(annotations_by_image.get(image_id, ()))
            reject(
                problem_reason,
                f"image {image_id} ({image['file_name']}) in {source}: {problem}; "
                f"its {num_dropped} annotation(s) are dropped with it",
                image_id=image_id,
            )
            continue
        kept_images[image_id] = image

    # Pass 3: annotations pointing at no image entry at all.
    for image_id, anns in annotations_by_image.items():
        if image_id in kept_images or image_id in rejected_image_ids:
            continue
        for ann in anns:
            reject(
                "unknown_image_id",
                f"annotation {ann['id']} in {source}: image_id {image_id} is not in the file's images",
                image_id=image_id,
                annotation_id=ann["id"],
            )

    # Pass 4: validate each kept image's annotations.
    records = []
    for image_id, image in kept_images.items():
        kept_annotations = []
        for ann in annotations_by_image.get(image_id, ()):
            try:
                record = validate_annotation(ann, image=image, categories=categories, source=source)
            except RecordError as exc:
                reject(exc.reason, str(exc), image_id=image_id, annotation_id=ann["id"])
                continue
            kept_annotations.append(record)
            for message in record.dropped_parts:
                reject(
                    "polygon_part_dropped",
                    f"annotation {ann['id']} in {source}: {message}; the part is left out, the annotation is "
                    f"kept with its valid parts",
                    image_id=image_id,
                    annotation_id=ann["id"],
                )
        records.append(
            ImageRecord(
                image_id=image_id,
                file_name=image["file_name"],
                height=image["height"],
                width=image["width"],
                annotations=tuple(kept_annotations),
            )
        )
    return CocoLoadResult(records=records, categories=categories, rejects=rejects, source=source, image_dir=image_dir)


def _file_problem(
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
        pixels = decode_image(file_path.read_bytes(), source=str(file_path))
    except (ImageDecodeError, OSError) as exc:
        return "unreadable_image", f"cannot decode ({getattr(exc, 'reason', 'os_error')}): {exc}"
    height, width = pixels.shape[:2]
    if (height, width) != (image["height"], image["width"]):
        return (
            "image_size_mismatch",
            f"decoded size {width}x{height} (after EXIF orientation) differs from the json's "
            f"{image['width']}x{image['height']}",
        )
    return None, ""
