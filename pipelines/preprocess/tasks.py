"""The work of the Ray Data tasks, and the shard plan that feeds them.

Each shard is one contiguous range of the json's kept images (:func:`shard_bounds`); its input rows
(:func:`shard_input_table`: every shard column but ``image``, plus ``_shard``) go to the object store,
and :func:`read_and_check_images` adds the image bytes, or a reject reason, inside the tasks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from mrcnn.data.coco import ImageRecord
from mrcnn.data.coco_validation import image_bytes_problem
from pipelines.common.storage import join_path, read_bytes
from pipelines.shards import shard_schema

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_ROWS_PER_SHARD",
    "check_shard_options",
    "choose_num_shards",
    "read_and_check_images",
    "shard_bounds",
    "shard_input_table",
]

DEFAULT_BATCH_SIZE = 64  # images per map_batches call
DEFAULT_ROWS_PER_SHARD = 1000  # upper bound when neither num_shards nor rows_per_shard is given

# Helper columns that travel with the rows from the map to the datasink (never written).
SHARD_COL = "_shard"
REASON_COL = "_reject_reason"
MESSAGE_COL = "_reject_message"


def read_and_check_images(
    batch: pa.Table, *, fs: pafs.FileSystem, image_root: str, image_root_display: str, source: str
) -> pa.Table:
    """Ray Data UDF: add each row's encoded image bytes, or a reject reason.

    A missing file is ``missing_image_file``; an unreadable, undecodable or truncated one
    ``unreadable_image``; one whose decoded size differs from the json ``image_size_mismatch``.

    Args:
        batch (pa.Table): shard columns except ``image``, plus ``_shard``.
        fs, image_root: where the ``file_name`` entries are relative to.
        image_root_display (str): the image folder as the user gave it, for messages.
        source (str): the annotation file, for messages.

    Returns:
        pa.Table: the batch plus ``image`` (binary, null when rejected), ``_reject_reason`` and
        ``_reject_message`` (null when kept). Rows are never dropped here: rejects travel to the
        datasink, which writes the kept rows and reports the rejects.
    """
    image_bytes: list[bytes | None] = []
    reasons: list[str | None] = []
    messages: list[str | None] = []
    columns = [batch.column(name).to_pylist() for name in ("image_id", "file_name", "height", "width")]
    num_instances = pc.list_value_length(batch.column("masks_rle")).to_pylist()
    for image_id, file_name, height, width, count in zip(*columns, num_instances):
        shown = f"{image_root_display.rstrip('/')}/{file_name}"
        data = None
        try:
            data = read_bytes(fs, join_path(image_root, file_name))
        except FileNotFoundError:
            reason, detail = "missing_image_file", f"file not found: {shown}"
        except OSError as exc:
            reason, detail = "unreadable_image", f"cannot read file {shown}: {exc}"
        else:
            reason, detail = image_bytes_problem(data, source=shown, height=height, width=width)
        image_bytes.append(data if reason is None else None)
        reasons.append(reason)
        messages.append(
            None
            if reason is None
            else f"image {image_id} ({file_name}) in {source}: {detail}; "
            f"its {count or 0} annotation(s) are dropped with it"
        )
    return (
        batch.append_column("image", pa.array(image_bytes, type=pa.binary()))
        .append_column(REASON_COL, pa.array(reasons, type=pa.string()))
        .append_column(MESSAGE_COL, pa.array(messages, type=pa.string()))
    )


def shard_input_table(records: Sequence[ImageRecord], shard: int) -> pa.Table:
    """Kept image records (annotations validated) -> the input rows of one shard (no image bytes).

    Built from flat per-instance arrays and list offsets: much faster than nested python lists.

    Returns:
        pa.Table: one row per record with the shard columns but ``image`` (types of
        :func:`pipelines.shards.shard_schema`), plus ``_shard`` (int32, ``shard``).
    """
    schema = shard_schema()
    annotations = [a for record in records for a in record.annotations]
    offsets = pa.array(np.cumsum([0] + [len(record.annotations) for record in records]), type=pa.int32())
    flat_boxes = np.asarray([a.box for a in annotations], dtype=np.float32).reshape(-1)
    flat = {
        "boxes": pa.FixedSizeListArray.from_arrays(pa.array(flat_boxes, type=pa.float32()), 4),
        "labels": pa.array(np.asarray([a.label for a in annotations], dtype=np.int32)),
        "category_ids": pa.array(np.asarray([a.category_id for a in annotations], dtype=np.int64)),
        "masks_rle": pa.array([a.rle["counts"] for a in annotations], type=pa.string()),
        "iscrowd": pa.array(np.asarray([a.iscrowd for a in annotations], dtype=np.int8)),
        "area": pa.array(np.asarray([a.area for a in annotations], dtype=np.float32)),
        "keypoints": pa.array([a.keypoints for a in annotations], type=pa.list_(pa.float32())),  # [] without
    }
    arrays = {
        "image_id": pa.array([r.image_id for r in records], type=pa.int64()),
        "file_name": pa.array([r.file_name for r in records], type=pa.string()),
        "height": pa.array([r.height for r in records], type=pa.int32()),
        "width": pa.array([r.width for r in records], type=pa.int32()),
    }
    for name, values in flat.items():
        arrays[name] = pa.ListArray.from_arrays(offsets, values).cast(schema.field(name).type)
    arrays[SHARD_COL] = pa.array([shard] * len(records), type=pa.int32())
    return pa.table(arrays)


def shard_bounds(num_records: int, num_shards: int) -> list[tuple[int, int]]:
    """Contiguous, balanced ``[start, stop)`` ranges (sizes differ by at most one)."""
    base, extra = divmod(num_records, num_shards)
    bounds, start = [], 0
    for index in range(num_shards):
        stop = start + base + (1 if index < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


def check_shard_options(num_shards: int | None, rows_per_shard: int | None, batch_size: int) -> None:
    """``ValueError`` unless each given option is a positive int and not both shard options are given."""
    for name, value in (("num_shards", num_shards), ("rows_per_shard", rows_per_shard), ("batch_size", batch_size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
            raise ValueError(f"{name}: expected a positive int, got {value!r}")
    if num_shards is not None and rows_per_shard is not None:
        raise ValueError(f"give num_shards or rows_per_shard, not both (got {num_shards} and {rows_per_shard})")


def choose_num_shards(num_records: int, num_shards: int | None, rows_per_shard: int | None, batch_size: int) -> int:
    """``num_shards``, else enough shards of ``rows_per_shard``; neither: shards of at most
    ``DEFAULT_ROWS_PER_SHARD`` rows, and at least two per cluster CPU while each still gets a full batch,
    so small datasets keep the whole cluster busy too (reads the connected Ray's resources)."""
    if num_shards is not None:
        return num_shards
    if rows_per_shard is not None:
        return max(1, math.ceil(num_records / rows_per_shard))
    import ray

    num_cpus = int(ray.cluster_resources().get("CPU", 1))
    return max(1, math.ceil(num_records / DEFAULT_ROWS_PER_SHARD), min(2 * num_cpus, num_records // batch_size))
