"""Training targets and the map-style COCO dataset.

The target dict is defined once, here, by :func:`build_target_from_columns`; every other
producer (the record-based :func:`build_target`, the Parquet collate in ``pipelines/``)
calls it. Keys and types:

- ``boxes`` (Tensor[N, 4] float32): XYXY absolute pixels;
- ``labels`` (Tensor[N] int64): contiguous labels 1..K (0 is background, never present);
- ``masks`` (Tensor[N, H, W] uint8): 0/1 instance masks at image resolution;
- ``iscrowd`` (Tensor[N] uint8): 1 for crowd regions (only present with ``include_crowd``);
- ``area`` (Tensor[N] float32): mask pixel count;
- ``keypoints`` (Tensor[N, K, 3] float32): ``(x, y, v)`` per keypoint, absolute pixels, v in {0, 1, 2}
  (0: not labelled); only for a dataset with K > 0 keypoints;
- ``image_id`` (int): COCO image id, when known.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from mrcnn.data.categories import CategoryMap
from mrcnn.data.coco import (
    AnnotationRecord,
    CocoLoadResult,
    ImageRecord,
    Reject,
    load_coco,
)
from mrcnn.data.images import load_image
from mrcnn.data.masks import rles_to_masks

__all__ = [
    "CocoInstanceDataset",
    "build_target",
    "build_target_from_columns",
    "collate_detection",
    "image_to_tensor",
]


def image_to_tensor(image: np.ndarray) -> Tensor:
    """HWC uint8 RGB pixels -> model input.

    Args:
        image (np.ndarray[H, W, 3] uint8): RGB.

    Returns:
        Tensor[3, H, W] float32: values in [0, 1].
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an [H, W, 3] uint8 image, got shape {image.shape} dtype {image.dtype}")
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)


def _column(values: object, name: str, dtype: np.dtype) -> np.ndarray:
    array = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=dtype)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    return array


def build_target_from_columns(
    *,
    boxes: Sequence[Sequence[float]] | np.ndarray,
    labels: Sequence[int] | np.ndarray,
    masks_rle: Sequence[str | Mapping],
    iscrowd: Sequence[int] | np.ndarray,
    area: Sequence[float] | np.ndarray,
    height: int,
    width: int,
    include_crowd: bool = False,
    image_id: int | None = None,
    keypoints: Sequence[Sequence[float]] | None = None,
    num_keypoints: int | None = None,
) -> dict:
    """Build the training target dict of one image from per-instance columns.

    This is the single definition of the target dict (see the module docstring); it matches
    the Parquet row layout in DESIGN.md.

    Args:
        boxes: N boxes, XYXY absolute pixels (list of 4-lists, or array [N, 4]).
        labels: N contiguous labels, each >= 1.
        masks_rle: N compressed RLEs: ``counts`` strings (size is ``[height, width]``) or RLE
            dicts (``size`` must be ``[height, width]``).
        iscrowd: N crowd flags (0/1).
        area: N mask areas in pixels.
        height (int): image height.
        width (int): image width.
        include_crowd (bool): keep crowd regions (``iscrowd == 1``). Default False: training
            targets without crowd regions, as in torchvision's reference training.
        image_id (int | None): stored as ``target["image_id"]`` when given.
        keypoints: N flat ``[x1, y1, v1, ..., xK, yK, vK]`` lists (absolute pixels); an empty list is an
            instance without keypoints (all v = 0). None: no ``keypoints`` in the target.
        num_keypoints (int | None): K (the dataset's, so that every image's tensor has the same K even
            when none of its instances has keypoints); None: from the longest list.

    Returns:
        dict: ``boxes`` float32 [M, 4], ``labels`` int64 [M], ``masks`` uint8 [M, H, W],
        ``iscrowd`` uint8 [M], ``area`` float32 [M] (+ ``image_id``; + ``keypoints`` float32
        [M, K, 3] when K > 0), where M is N minus the crowd regions unless ``include_crowd``.
        M may be 0.

    Raises:
        ValueError: columns of different lengths, boxes not [N, 4], labels < 1, an RLE
            whose size is not ``[height, width]``, or a keypoint list that is neither empty nor 3K long.
    """
    num_instances = len(masks_rle)
    box_array = (
        np.stack([np.asarray(b, dtype=np.float32) for b in boxes]) if len(boxes) else np.zeros((0, 4), np.float32)
    )
    label_array = _column(labels, "labels", np.int64)
    crowd_array = _column(iscrowd, "iscrowd", np.uint8)
    area_array = _column(area, "area", np.float32)
    lengths = {
        "boxes": len(box_array),
        "labels": len(label_array),
        "masks_rle": num_instances,
        "iscrowd": len(crowd_array),
        "area": len(area_array),
    }
    if len(set(lengths.values())) != 1:
        raise ValueError(f"target columns differ in length: {lengths}")
    if box_array.ndim != 2 or box_array.shape[1] != 4:
        raise ValueError(f"boxes must have shape [N, 4], got {box_array.shape}")
    if (label_array < 1).any():
        raise ValueError(f"labels must be >= 1 (0 is background), got {label_array.tolist()}")

    keep = np.ones(num_instances, dtype=bool) if include_crowd else crowd_array == 0
    rles = [
        {"size": [height, width], "counts": rle} if isinstance(rle, (str, bytes)) else rle
        for rle, kept in zip(masks_rle, keep)
        if kept
    ]
    target = {
        "boxes": torch.from_numpy(np.ascontiguousarray(box_array[keep])).reshape(-1, 4),
        "labels": torch.from_numpy(label_array[keep]),
        "masks": torch.from_numpy(rles_to_masks(rles, height, width)),
        "iscrowd": torch.from_numpy(crowd_array[keep]),
        "area": torch.from_numpy(area_array[keep]),
    }
    if keypoints is not None:
        if len(keypoints) != num_instances:
            raise ValueError(f"target columns differ in length: keypoints {len(keypoints)}, masks_rle {num_instances}")
        K = num_keypoints if num_keypoints is not None else max((len(k) for k in keypoints), default=0) // 3
        if K > 0:
            array = np.zeros((num_instances, K, 3), dtype=np.float32)
            for index, values in enumerate(keypoints):
                if len(values) == 3 * K:
                    array[index] = np.asarray(values, dtype=np.float32).reshape(K, 3)
                elif len(values):
                    raise ValueError(f"instance {index}: expected 0 or 3 x {K} keypoint values, got {len(values)}")
            target["keypoints"] = torch.from_numpy(array[keep])
    if image_id is not None:
        target["image_id"] = int(image_id)
    return target


def build_target(
    annotations: Sequence[AnnotationRecord],
    *,
    height: int,
    width: int,
    include_crowd: bool = False,
    image_id: int | None = None,
    num_keypoints: int = 0,
) -> dict:
    """Build the training target dict from validated annotation records.

    Args:
        annotations (Sequence[AnnotationRecord]): one image's annotations (may be empty).
        height, width, include_crowd, image_id: see :func:`build_target_from_columns`.
        num_keypoints (int): the dataset's K (``CategoryMap.num_keypoints``); 0: no ``keypoints`` in the target.

    Returns:
        dict: see :func:`build_target_from_columns`.
    """
    return build_target_from_columns(
        boxes=[a.box for a in annotations],
        labels=[a.label for a in annotations],
        masks_rle=[a.rle for a in annotations],
        iscrowd=[a.iscrowd for a in annotations],
        area=[a.area for a in annotations],
        height=height,
        width=width,
        include_crowd=include_crowd,
        image_id=image_id,
        keypoints=[a.keypoints for a in annotations] if num_keypoints else None,
        num_keypoints=num_keypoints or None,
    )


Transform = Callable[[Tensor, dict], tuple[Tensor, dict]]


class CocoInstanceDataset(Dataset):
    """Map-style dataset over validated COCO records; decodes images and masks lazily.

    Args:
        result (CocoLoadResult): from :func:`load_coco`; must have an ``image_dir``.
        transforms (callable | None): ``(image, target) -> (image, target)``, e.g.
            :class:`mrcnn.data.transforms.Compose`.
        include_crowd (bool): keep crowd regions in targets (default False).

    Items are ``(image, target)``: ``image`` Tensor[3, H, W] float32 in [0, 1], RGB, EXIF
    orientation applied; ``target`` as described in the module docstring.

    Raises (from ``__getitem__``):
        ImageDecodeError: the file is missing or cannot be decoded.
        ValueError: the decoded size differs from the json's height/width. Load with
            ``check_decode=True`` to reject such images up front instead.
    """

    def __init__(
        self, result: CocoLoadResult, *, transforms: Transform | None = None, include_crowd: bool = False
    ) -> None:
        if result.image_dir is None:
            raise ValueError(f"{result.source}: the load result has no image_dir; pass image_dir to load_coco")
        self.result = result
        self.transforms = transforms
        self.include_crowd = include_crowd

    @classmethod
    def from_files(
        cls,
        annotations: str | os.PathLike,
        image_dir: str | os.PathLike | None = None,
        *,
        transforms: Transform | None = None,
        include_crowd: bool = False,
        check_decode: bool = False,
    ) -> CocoInstanceDataset:
        """Load ``annotations`` with :func:`load_coco` (files checked) and wrap the result.

        Rejected records are available as ``dataset.rejects``.
        """
        result = load_coco(annotations, image_dir=image_dir, check_files=True, check_decode=check_decode)
        return cls(result, transforms=transforms, include_crowd=include_crowd)

    @property
    def records(self) -> list[ImageRecord]:
        return self.result.records

    @property
    def categories(self) -> CategoryMap:
        return self.result.categories

    @property
    def rejects(self) -> list[Reject]:
        return self.result.rejects

    def __len__(self) -> int:
        return len(self.result.records)

    def __getitem__(self, index: int) -> tuple[Tensor, dict]:
        record = self.result.records[index]
        path = self.result.image_path(record)
        pixels = load_image(path)
        if pixels.shape[:2] != (record.height, record.width):
            raise ValueError(
                f"image {record.image_id} ({path}) in {self.result.source}: decoded size "
                f"{pixels.shape[1]}x{pixels.shape[0]} differs from the json's {record.width}x{record.height}"
            )
        image = image_to_tensor(pixels)
        target = build_target(
            record.annotations,
            height=record.height,
            width=record.width,
            include_crowd=self.include_crowd,
            image_id=record.image_id,
            num_keypoints=self.result.categories.num_keypoints,
        )
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


def collate_detection(batch: Sequence[tuple[Tensor, dict]]) -> tuple[list[Tensor], list[dict]]:
    """DataLoader ``collate_fn`` for detection: images differ in size, so no stacking.

    Returns:
        tuple[list[Tensor], list[dict]]: images ``[3, H_i, W_i]`` and their targets.
    """
    images = [image for image, _ in batch]
    targets = [target for _, target in batch]
    return images, targets
