"""The reading side of the Parquet shards: schema, categories, training collate, COCO ground truth.

Shards are written by :mod:`pipelines.preprocess` as ``OUT/<split>/part-KKKKK-of-NNNNN.parquet``
with exactly the columns of :data:`mrcnn.records.SHARD_COLUMNS` (one row per image), beside
``OUT/categories.json``. Paths may be local or any pyarrow filesystem URI (``s3://...``).

Typical use in a training loop::

    ds = ray.data.read_parquet("OUT/train")
    for batch in ds.iter_batches(batch_size=8, batch_format="numpy"):
        images, targets = collate_shard_batch(batch)

``collate_shard_batch`` is also a valid ``collate_fn`` of ``iter_torch_batches``.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import torch
from torch import Tensor

from mrcnn.data.categories import CategoryMap
from mrcnn.data.dataset import build_target_from_columns, image_to_tensor
from mrcnn.data.images import decode_image
from mrcnn.records import SHARD_COLUMNS
from pipelines.common.storage import display_path, join_path, read_bytes, resolve_path

__all__ = [
    "CATEGORIES_FILE",
    "collate_shard_batch",
    "columns_schema",
    "list_shards",
    "read_categories",
    "shard_file_name",
    "shard_schema",
    "shards_to_coco_gt",
]

logger = logging.getLogger(__name__)

CATEGORIES_FILE = "categories.json"
SHARD_FILE_PATTERN = re.compile(r"part-(\d{5,})-of-(\d{5,})\.parquet")

_PRIMITIVE_TYPES = {
    "int8": pa.int8(),
    "int16": pa.int16(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "float32": pa.float32(),
    "float64": pa.float64(),
    "string": pa.string(),
    "binary": pa.binary(),
}


def _arrow_type(spec: str) -> pa.DataType:
    """``"list<list<float32>[4]>"`` -> ``pa.list_(pa.list_(pa.float32(), 4))``; primitives by name."""
    spec = spec.strip()
    fixed = re.fullmatch(r"(.*)\[(\d+)\]", spec)
    if fixed:
        inner = re.fullmatch(r"list<(.*)>", fixed.group(1).strip())
        if inner is None:
            raise ValueError(f"fixed-size type {spec!r} must be list<...>[n]")
        return pa.list_(_arrow_type(inner.group(1)), int(fixed.group(2)))
    inner = re.fullmatch(r"list<(.*)>", spec)
    if inner:
        return pa.list_(_arrow_type(inner.group(1)))
    if spec not in _PRIMITIVE_TYPES:
        raise ValueError(f"unknown arrow type {spec!r} in SHARD_COLUMNS (known: {sorted(_PRIMITIVE_TYPES)})")
    return _PRIMITIVE_TYPES[spec]


def columns_schema(columns: Mapping[str, str]) -> pa.Schema:
    """The pyarrow schema of a ``{name: type spec}`` table of :mod:`mrcnn.records` (same order)."""
    return pa.schema([pa.field(name, _arrow_type(spec)) for name, spec in columns.items()])


def shard_schema() -> pa.Schema:
    """The pyarrow schema of a shard row, built from :data:`mrcnn.records.SHARD_COLUMNS` (same order)."""
    return columns_schema(SHARD_COLUMNS)


def shard_file_name(index: int, num_shards: int) -> str:
    """``part-00003-of-00016.parquet`` for shard 3 of 16."""
    return f"part-{index:05d}-of-{num_shards:05d}.parquet"


def list_shards(split_dir: str | os.PathLike) -> list[str]:
    """The shard files of one split, sorted by shard index, as paths (or URIs) usable by readers.

    Raises:
        FileNotFoundError: the folder does not exist or holds no shard files.
    """
    fs, path = resolve_path(split_dir)
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.Directory:
        raise FileNotFoundError(f"shard folder not found: {split_dir}")
    found = [
        f.path
        for f in fs.get_file_info(pafs.FileSelector(path, recursive=False))
        if f.type == pafs.FileType.File and SHARD_FILE_PATTERN.fullmatch(f.base_name)
    ]
    if not found:
        raise FileNotFoundError(f"{split_dir}: no shard files (part-*-of-*.parquet); run `mrcnn preprocess` first")
    return [display_path(split_dir, fs, p) for p in sorted(found)]


def read_categories(out_dir: str | os.PathLike) -> CategoryMap:
    """The category map written beside the shards (``OUT/categories.json``).

    Args:
        out_dir: the preprocessing output folder ``OUT``; a split folder ``OUT/<split>`` also works.

    Raises:
        FileNotFoundError: no ``categories.json`` in ``out_dir`` or its parent.
        ValueError: the file is not a category map.
    """
    fs, path = resolve_path(out_dir)
    candidates = [join_path(path, CATEGORIES_FILE), join_path(path.rsplit("/", 1)[0], CATEGORIES_FILE)]
    for candidate in candidates:
        if fs.get_file_info(candidate).type == pafs.FileType.File:
            source = display_path(out_dir, fs, candidate)
            try:
                data = json.loads(read_bytes(fs, candidate))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{source}: not valid json ({exc})") from None
            if isinstance(data, list):
                return CategoryMap.from_list(data, source=source)
            return CategoryMap.from_coco(data, source=source)
    raise FileNotFoundError(f"{out_dir}: no {CATEGORIES_FILE} here or in the parent folder")


def _as_list(values: Any) -> list:
    """A batch column (numpy array, possibly of objects, or a list) -> a python list of row values."""
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values.to_pylist()
    return list(values)


def collate_shard_batch(
    batch: Mapping[str, Any],
    *,
    include_crowd: bool = False,
    num_keypoints: int | None = None,
    image_dtype: torch.dtype = torch.float32,
) -> tuple[list[Tensor], list[dict]]:
    """Decode a batch of shard rows into model inputs.

    Usable as ``collate_fn`` of ``iter_torch_batches`` (wrap with ``functools.partial`` to set
    ``include_crowd``) or applied to the batches of ``iter_batches(batch_format="numpy")``.

    Args:
        batch (dict[str, np.ndarray]): columns of :data:`mrcnn.records.SHARD_COLUMNS` (at least
            ``image``, ``image_id``, ``file_name``, ``height``, ``width``, ``boxes``, ``labels``,
            ``masks_rle``, ``iscrowd``, ``area``), B rows; images may differ in size.
        include_crowd (bool): keep crowd regions in the targets (default False, as for training).
        num_keypoints (int | None): the dataset's K (``CategoryMap.num_keypoints``): with a ``keypoints``
            column, every target gets ``keypoints`` [M, K, 3]; None: K from each row's longest list (a row
            whose instances have none gets no ``keypoints``). Without the column (shards written before it
            existed): no keypoints.
        image_dtype (torch.dtype): ``torch.float32`` (default): images in [0, 1]; ``torch.uint8``: the decoded
            pixels in 0..255 (what the training augmentations move, converting to float after).

    Returns:
        tuple[list[Tensor], list[dict]]: B images ``Tensor[3, H_i, W_i]`` float32 in [0, 1] (or uint8), RGB,
        and B target dicts as built by :func:`mrcnn.data.dataset.build_target_from_columns`
        (``boxes`` float32 [M, 4] XYXY absolute pixels, ``labels`` int64, ``masks`` uint8
        [M, H_i, W_i], ``iscrowd``, ``area``, ``image_id``, ``keypoints`` [M, K, 3] when the shards have them).
        An instance whose float32 box has no positive width or height (shards written before validation
        checked it) is left out with a warning on this module's logger.

    Raises:
        ImageDecodeError: a row's image bytes cannot be decoded.
        ValueError: a decoded image's size differs from the row's ``height``/``width``.
    """
    columns = {name: _as_list(batch[name]) for name in ("image", "image_id", "file_name", "height", "width")}
    instance_columns = {name: _as_list(batch[name]) for name in ("boxes", "labels", "masks_rle", "iscrowd", "area")}
    keypoint_rows = _as_list(batch["keypoints"]) if "keypoints" in batch and num_keypoints != 0 else None
    images: list[Tensor] = []
    targets: list[dict] = []
    for row in range(len(columns["image_id"])):
        image_id = int(columns["image_id"][row])
        height, width = int(columns["height"][row]), int(columns["width"][row])
        source = f"image {image_id} ({columns['file_name'][row]})"
        pixels = decode_image(bytes(columns["image"][row]), source=source)
        if pixels.shape[:2] != (height, width):
            raise ValueError(
                f"{source}: decoded size {pixels.shape[1]}x{pixels.shape[0]} differs from the shard row's "
                f"{width}x{height}"
            )
        if image_dtype == torch.uint8:
            images.append(torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1))
        elif image_dtype == torch.float32:
            images.append(image_to_tensor(pixels))
        else:
            raise ValueError(f"image_dtype: expected torch.float32 or torch.uint8, got {image_dtype}")
        boxes = [np.asarray(box, dtype=np.float32) for box in instance_columns["boxes"][row]]
        keep = _nondegenerate(boxes, source)
        instances = {name: [values[row][i] for i in keep] for name, values in instance_columns.items() if name != "boxes"}
        targets.append(
            build_target_from_columns(
                boxes=[boxes[i] for i in keep],
                labels=np.asarray(instances["labels"], dtype=np.int64),
                masks_rle=[str(rle) for rle in instances["masks_rle"]],
                iscrowd=np.asarray(instances["iscrowd"], dtype=np.uint8),
                area=np.asarray(instances["area"], dtype=np.float32),
                height=height,
                width=width,
                include_crowd=include_crowd,
                image_id=image_id,
                keypoints=None if keypoint_rows is None else [list(keypoint_rows[row][i]) for i in keep],
                num_keypoints=num_keypoints,
            )
        )
    return images, targets


def _nondegenerate(boxes: list[np.ndarray], source: str) -> list[int]:
    """Indices of the boxes (float32 XYXY) with a positive, finite width and height; each other box is
    dropped with a warning (with its mask, label and keypoints), so that one annotation never stops a run."""
    keep = []
    for index, box in enumerate(boxes):
        if box.shape == (4,) and np.isfinite(box).all() and box[2] > box[0] and box[3] > box[1]:
            keep.append(index)
        else:
            logger.warning("%s: instance %d has a degenerate box %s (XYXY float32); dropped from the batch",
                           source, index, box.tolist())  # fmt: skip
    return keep


def shards_to_coco_gt(split_dir: str | os.PathLike) -> dict:
    """A COCO ground-truth dict built from one split's shards, for COCO evaluation.

    Reads every column but ``image``. Annotation ids are assigned 1..N in shard order (the
    shards do not keep the source ids); crowd regions are included with ``iscrowd=1``. Instances with
    keypoints carry ``keypoints`` and ``num_keypoints``, and keypoint categories their ``keypoints`` and
    ``skeleton`` (COCO person-keypoint format).

    Args:
        split_dir: ``OUT/<split>`` (local path or URI); ``OUT/categories.json`` gives the categories.

    Returns:
        dict: ``images`` (id, file_name, height, width), ``annotations`` (id, image_id,
        category_id, segmentation ``{"size": [H, W], "counts": str}``, area, bbox XYWH, iscrowd),
        ``categories`` (id, name, supercategory).
    """
    categories = read_categories(split_dir)
    wanted = [name for name in SHARD_COLUMNS if name != "image"]
    images: list[dict] = []
    annotations: list[dict] = []
    for shard in list_shards(split_dir):
        fs, path = resolve_path(shard)
        with fs.open_input_file(path) as handle:
            present = set(pq.ParquetFile(handle).schema_arrow.names)  # older shards have no keypoints column
            table = pq.read_table(handle, columns=[name for name in wanted if name in present])
        for row in table.to_pylist():
            height, width = row["height"], row["width"]
            images.append(
                {"id": row["image_id"], "file_name": row["file_name"], "height": height, "width": width}
            )
            keypoints = row.get("keypoints") or [[]] * len(row["boxes"])
            for box, category_id, counts, crowd, area, points in zip(
                row["boxes"], row["category_ids"], row["masks_rle"], row["iscrowd"], row["area"], keypoints
            ):
                x0, y0, x1, y1 = (float(v) for v in box)
                annotation = {
                    "id": len(annotations) + 1,
                    "image_id": row["image_id"],
                    "category_id": category_id,
                    "segmentation": {"size": [height, width], "counts": counts},
                    "area": float(area),
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "iscrowd": int(crowd),
                }
                if points:
                    annotation["keypoints"] = [float(v) if i % 3 < 2 else int(v) for i, v in enumerate(points)]
                    annotation["num_keypoints"] = sum(1 for v in points[2::3] if v > 0)
                annotations.append(annotation)
    return {
        "images": images,
        "annotations": annotations,
        "categories": [c.to_dict() for c in categories.categories],
    }
