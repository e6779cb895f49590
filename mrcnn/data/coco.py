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

The records and rejects are defined in :mod:`mrcnn.data.coco_records`, the checks of single records in
:mod:`mrcnn.data.coco_validation`; this module reads the file and runs the checks over it.

Annotations of a rejected image are dropped with it; the image's reject message says how
many. Boxes are XYXY absolute pixels, clipped to the image. ``area`` is the mask's pixel
count (the json ``area`` field is not used: COCO's values disagree with the masks by up to
~20% on small objects and crowd regions).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from mrcnn.data.categories import CategoryMap
from mrcnn.data.coco_records import AnnotationRecord, CocoLoadResult, ImageRecord, RecordError, Reject
from mrcnn.data.coco_validation import file_problem, image_problem, is_id, validate_annotation

__all__ = [
    "AnnotationRecord",
    "CocoLoadResult",
    "ImageRecord",
    "RecordError",
    "Reject",
    "load_coco",
    "validate_annotation",
]


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
    image_dir = _image_dir(image_dir, path, source, needed=check_files or check_decode)
    rejects = _Rejects(source)
    annotations_by_image = _group_annotations(data["annotations"], rejects)
    kept_images, rejected_image_ids = _keep_images(
        data["images"], annotations_by_image, rejects, image_dir=image_dir, check_files=check_files,
        check_decode=check_decode,
    )  # fmt: skip
    _reject_unknown_image_ids(annotations_by_image, kept_images.keys() | rejected_image_ids, rejects)
    records = [
        _image_record(image, annotations_by_image.get(image_id, ()), categories, rejects)
        for image_id, image in kept_images.items()
    ]
    return CocoLoadResult(
        records=records, categories=categories, rejects=rejects.items, source=source, image_dir=image_dir
    )


def _image_dir(image_dir: str | os.PathLike | None, path: Path | None, source: str, *, needed: bool) -> Path | None:
    """The given image folder (which must exist), else the one found beside the json; ``needed``: one must be found."""
    if image_dir is not None:
        image_dir = Path(image_dir)
        if not image_dir.is_dir():
            raise ValueError(f"{source}: image_dir {image_dir} is not a directory")
        return image_dir
    found = _default_image_dir(path)
    if found is None and needed:
        raise ValueError(
            f"{source}: no image_dir given and none found beside the json; pass image_dir=..., "
            f"or check_files=False and check_decode=False to load annotations only"
        )
    return found


class _Rejects:
    """The load's :class:`Reject` records, in the order found; ``add`` fills in the source."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.items: list[Reject] = []

    def add(self, reason: str, message: str, *, image_id: int | None = None, annotation_id: int | None = None) -> None:
        self.items.append(
            Reject(source=self.source, image_id=image_id, annotation_id=annotation_id, reason=reason, message=message)
        )


def _group_annotations(entries: list, rejects: _Rejects) -> dict[int, list[Mapping]]:
    """Pass 1: annotation structure and id uniqueness; the kept annotations grouped by image id."""
    source = rejects.source
    annotations_by_image: dict[int, list[Mapping]] = {}
    seen_annotation_ids: set[int] = set()
    for index, ann in enumerate(entries):
        ann_id = ann.get("id") if isinstance(ann, Mapping) else None
        image_id = ann.get("image_id") if isinstance(ann, Mapping) else None
        if not is_id(ann_id) or not is_id(image_id):
            rejects.add(
                "bad_annotation_record",
                f"annotation entry {index} in {source}: needs int64 'id' and 'image_id', got {ann!r:.200}",
                image_id=image_id if is_id(image_id) else None,
                annotation_id=ann_id if is_id(ann_id) else None,
            )
        elif ann_id in seen_annotation_ids:
            rejects.add(
                "duplicate_annotation_id",
                f"annotation {ann_id} in {source}: duplicate annotation id (entry {index}); the first one is kept",
                image_id=image_id,
                annotation_id=ann_id,
            )
        else:
            seen_annotation_ids.add(ann_id)
            annotations_by_image.setdefault(image_id, []).append(ann)
    return annotations_by_image


def _keep_images(
    entries: list, annotations_by_image: Mapping[int, list], rejects: _Rejects, *, image_dir: Path | None,
    check_files: bool, check_decode: bool,
) -> tuple[dict[int, Mapping], set[int]]:
    """Pass 2: the image entries; (kept entries by id in json order, ids of rejected entries)."""
    source = rejects.source
    kept_images: dict[int, Mapping] = {}
    rejected_image_ids: set[int] = set()
    for index, image in enumerate(entries):
        problem = image_problem(image)
        image_id = image.get("id") if isinstance(image, Mapping) else None
        if problem is not None:
            if is_id(image_id):
                rejected_image_ids.add(image_id)
            rejects.add(
                "bad_image_record",
                f"image entry {index} in {source}: {problem}",
                image_id=image_id if is_id(image_id) else None,
            )
            continue
        if image_id in kept_images or image_id in rejected_image_ids:
            rejects.add(
                "duplicate_image_id",
                f"image {image_id} ({image['file_name']}) in {source}: duplicate image id (entry {index}); "
                f"the first entry is kept and gets the annotations",
                image_id=image_id,
            )
            continue
        problem_reason, problem = file_problem(image, image_dir, check_files=check_files, check_decode=check_decode)
        if problem_reason is not None:
            rejected_image_ids.add(image_id)
            num_dropped = len(annotations_by_image.get(image_id, ()))
            rejects.add(
                problem_reason,
                f"image {image_id} ({image['file_name']}) in {source}: {problem}; "
                f"its {num_dropped} annotation(s) are dropped with it",
                image_id=image_id,
            )
            continue
        kept_images[image_id] = image
    return kept_images, rejected_image_ids


def _reject_unknown_image_ids(annotations_by_image: Mapping[int, list], known: set[int], rejects: _Rejects) -> None:
    """Pass 3: annotations pointing at no image entry at all."""
    for image_id, anns in annotations_by_image.items():
        if image_id in known:
            continue
        for ann in anns:
            rejects.add(
                "unknown_image_id",
                f"annotation {ann['id']} in {rejects.source}: image_id {image_id} is not in the file's images",
                image_id=image_id,
                annotation_id=ann["id"],
            )


def _image_record(image: Mapping, anns: Iterable[Mapping], categories: CategoryMap, rejects: _Rejects) -> ImageRecord:
    """Pass 4: one kept image with its valid annotations; each bad one and each dropped polygon part is a reject."""
    image_id, source = image["id"], rejects.source
    kept_annotations = []
    for ann in anns:
        try:
            record = validate_annotation(ann, image=image, categories=categories, source=source)
        except RecordError as exc:
            rejects.add(exc.reason, str(exc), image_id=image_id, annotation_id=ann["id"])
            continue
        kept_annotations.append(record)
        for message in record.dropped_parts:
            rejects.add(
                "polygon_part_dropped",
                f"annotation {ann['id']} in {source}: {message}; the part is left out, the annotation is "
                f"kept with its valid parts",
                image_id=image_id,
                annotation_id=ann["id"],
            )
    return ImageRecord(
        image_id=image_id,
        file_name=image["file_name"],
        height=image["height"],
        width=image["width"],
        annotations=tuple(kept_annotations),
    )
