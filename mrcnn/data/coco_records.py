"""The records :func:`mrcnn.data.coco.load_coco` gives: validated images and annotations, the rejects, and the result.

The reason codes of :class:`Reject` and :class:`RecordError` are listed in :mod:`mrcnn.data.coco`.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from mrcnn.data.categories import CategoryMap

__all__ = ["AnnotationRecord", "CocoLoadResult", "ImageRecord", "RecordError", "Reject"]


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
