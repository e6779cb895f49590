"""Preprocessing with Ray Data: COCO json + images -> validated Parquet shards.

For each split::

    OUT/categories.json                      CategoryMap.save_json format, one per dataset
    OUT/<split>/part-KKKKK-of-NNNNN.parquet  rows with exactly mrcnn.records.SHARD_COLUMNS
    OUT/<split>/rejects.jsonl                one json per reject: image_id, annotation_id, file, reason, message
    OUT/<split>/_summary.json                rows, rejects by reason, images/s, shard paths

How the work is split:

- the driver reads the json and validates it with :func:`mrcnn.data.coco.load_coco`
  (``check_files=False``: ids, categories, boxes, polygons/RLE -> canonical RLE). That is
  json-sized; no image bytes ever reach the driver;
- Ray tasks (``map_batches`` over image records, ``batch_size`` images at a time) read each
  image's bytes through pyarrow.fs, decode it fully (:func:`mrcnn.data.images.decode_image`),
  and reject a missing file (``missing_image_file``), an undecodable or truncated one
  (``unreadable_image``) and one whose size differs from the json (``image_size_mismatch``);
- the same tasks write the shard files (a Ray Data datasink fused with the map), one row
  group per batch, and send only the reject records back to the driver.

Each shard is one contiguous range of the json's images, processed by one task, so the
number of files is exactly ``num_shards``, and memory is bounded by the shards in flight
(about ``rows_per_shard`` encoded images per running task), not by the dataset.

Bad records are rejected with the reason codes of :mod:`mrcnn.data.coco` and never stop the
job; an image with a bad annotation keeps its other annotations. Ids (image, annotation, category)
are int64 throughout.

A split is written into a staging folder ``OUT/_staging-<split>-*`` and moved into ``OUT/<split>``
when complete, ``OUT/categories.json`` last: a run that fails leaves ``OUT`` as it was. Inputs and outputs are local
paths or pyarrow filesystem URIs (``s3://bucket/prefix``).
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from mrcnn.data.categories import CategoryMap
from mrcnn.data.coco import CocoLoadResult, load_coco
from mrcnn.data.images import ImageDecodeError, decode_image
from mrcnn.records import SHARD_COLUMNS
from pipelines.common.session import ray_session
from pipelines.shards import (
    CATEGORIES_FILE,
    SHARD_FILE_PATTERN,
    display_path,
    join_path,
    read_bytes,
    resolve_path,
    shard_file_name,
    shard_schema,
)

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_ROWS_PER_SHARD",
    "PreprocessSummary",
    "find_coco_splits",
    "preprocess_coco",
    "preprocess_dataset",
]

DEFAULT_BATCH_SIZE = 64  # images per map_batches call
DEFAULT_ROWS_PER_SHARD = 1000  # upper bound when neither num_shards nor rows_per_shard is given
PREPROCESS_BLOCK_BYTES = 16 * 2**20  # Ray Data output block cap while preprocessing (rows hold images)
REJECTS_FILE = "rejects.jsonl"
SUMMARY_FILE = "_summary.json"
SPLITS = ("train", "val")

# Helper columns that travel with the rows from the map to the datasink (never written).
_SHARD_COL = "_shard"
_REASON_COL = "_reject_reason"
_MESSAGE_COL = "_reject_message"


@dataclass(frozen=True)
class PreprocessSummary:
    """What one split's preprocessing did.

    Attributes:
        split (str): output split name.
        annotations (str): the COCO json that was read.
        images (str): the image folder.
        out_dir (str): ``OUT/<split>``.
        num_images (int): image entries in the json.
        num_rows (int): rows written (valid images), one per image.
        num_annotations (int): instances written, crowd regions included.
        num_crowd (int): crowd regions written (``iscrowd=1``).
        rejects_by_reason (dict[str, int]): image and annotation rejects by reason code.
        shard_paths (tuple[str, ...]): the Parquet files, in shard order.
        categories_path (str): ``OUT/categories.json``.
        rejects_path (str): ``OUT/<split>/rejects.jsonl``.
        summary_path (str): ``OUT/<split>/_summary.json``.
        seconds (float): wall time of the whole split (json, images, writing).
    """

    split: str
    annotations: str
    images: str
    out_dir: str
    num_images: int
    num_rows: int
    num_annotations: int
    num_crowd: int
    rejects_by_reason: dict[str, int] = field(repr=False)
    shard_paths: tuple[str, ...] = field(repr=False)
    categories_path: str = field(repr=False)
    rejects_path: str = field(repr=False)
    summary_path: str = field(repr=False)
    seconds: float = 0.0

    @property
    def num_rejects(self) -> int:
        return sum(self.rejects_by_reason.values())

    @property
    def images_per_second(self) -> float:
        """Json image entries handled per second of wall time."""
        return self.num_images / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "split": self.split,
            "annotations": self.annotations,
            "images": self.images,
            "out_dir": self.out_dir,
            "num_images": self.num_images,
            "rows": self.num_rows,
            "num_annotations": self.num_annotations,
            "num_crowd": self.num_crowd,
            "num_rejects": self.num_rejects,
            "rejects": dict(self.rejects_by_reason),
            "num_shards": len(self.shard_paths),
            "shards": list(self.shard_paths),
            "categories": self.categories_path,
            "rejects_file": self.rejects_path,
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.images_per_second, 2),
        }

    def format(self) -> str:
        """A few human lines: counts, rejects by reason, output paths."""
        lines = [
            f"{self.split}: {self.num_rows} rows ({self.num_annotations} instances, {self.num_crowd} crowd) "
            f"from {self.num_images} images in {len(self.shard_paths)} shard(s), {self.num_rejects} rejects, "
            f"{self.seconds:.1f} s ({self.images_per_second:.1f} images/s)"
        ]
        for reason, count in self.rejects_by_reason.items():
            lines.append(f"  rejected {reason}: {count}")
        lines.append(f"  shards:  {self.out_dir}/part-*-of-{len(self.shard_paths):05d}.parquet")
        lines.append(f"  rejects: {self.rejects_path}")
        lines.append(f"  summary: {self.summary_path}")
        return "\n".join(lines)


# ---------------------------------------------------------------- tasks
def read_and_check_images(
    batch: pa.Table, *, fs: pafs.FileSystem, image_root: str, image_root_display: str, source: str
) -> pa.Table:
    """Ray Data UDF: add each row's encoded image bytes, or a reject reason.

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
    file_names = batch.column("file_name").to_pylist()
    heights = batch.column("height").to_pylist()
    widths = batch.column("width").to_pylist()
    image_ids = batch.column("image_id").to_pylist()
    num_instances = pc.list_value_length(batch.column("masks_rle")).to_pylist()
    for image_id, file_name, height, width, count in zip(image_ids, file_names, heights, widths, num_instances):
        path = join_path(image_root, file_name)
        shown = f"{image_root_display.rstrip('/')}/{file_name}"
        reason, detail, data = None, "", None
        try:
            data = read_bytes(fs, path)
        except FileNotFoundError:
            reason, detail = "missing_image_file", f"file not found: {shown}"
        except OSError as exc:
            reason, detail = "unreadable_image", f"cannot read file {shown}: {exc}"
        if reason is None:
            try:
                pixels = decode_image(data, source=shown)
            except ImageDecodeError as exc:
                reason, detail = "unreadable_image", f"cannot decode ({exc.reason}): {exc}"
            else:
                decoded_height, decoded_width = pixels.shape[:2]
                if (decoded_height, decoded_width) != (height, width):
                    reason = "image_size_mismatch"
                    detail = (
                        f"decoded size {decoded_width}x{decoded_height} (after EXIF orientation) differs "
                        f"from the json's {width}x{height}"
                    )
        if reason is None:
            image_bytes.append(data)
            reasons.append(None)
            messages.append(None)
        else:
            image_bytes.append(None)
            reasons.append(reason)
            messages.append(
                f"image {image_id} ({file_name}) in {source}: {detail}; "
                f"its {count or 0} annotation(s) are dropped with it"
            )
    return (
        batch.append_column("image", pa.array(image_bytes, type=pa.binary()))
        .append_column(_REASON_COL, pa.array(reasons, type=pa.string()))
        .append_column(_MESSAGE_COL, pa.array(messages, type=pa.string()))
    )


def _write_returns_check(write_returns: list[dict]) -> None:
    seen: dict[int, int] = {}
    for task, result in enumerate(write_returns):
        for shard in result["shards"]:
            if shard in seen:
                raise RuntimeError(
                    f"shard {shard} was written by two tasks ({seen[shard]} and {task}); the map and the "
                    f"write were not fused, so a file was overwritten"
                )
            seen[shard] = task


def _make_datasink(fs: pafs.FileSystem, split_dir: str, num_shards: int):
    """A Ray Data datasink writing kept rows into shard files and returning the rejects."""
    from ray.data.block import BlockAccessor
    from ray.data.datasource.datasink import Datasink

    schema = shard_schema()
    names = list(SHARD_COLUMNS)

    class ShardDatasink(Datasink):
        def __init__(self) -> None:
            self.write_returns: list[dict] = []

        def get_name(self) -> str:
            return "WriteShards"

        def write(self, blocks: Iterable[pa.Table], ctx) -> dict:
            writers: dict[int, pq.ParquetWriter] = {}
            streams = []
            shards: dict[int, dict[str, int]] = {}
            rejects: list[dict] = []
            try:
                for block in blocks:
                    block = BlockAccessor.for_block(block).to_arrow()
                    if block.num_rows == 0:
                        continue
                    for shard in pc.unique(block.column(_SHARD_COL)).to_pylist():
                        part = block.filter(pc.equal(block.column(_SHARD_COL), shard))
                        kept = part.filter(pc.is_null(part.column(_REASON_COL)))
                        stats = shards.setdefault(shard, {"rows": 0, "annotations": 0, "crowd": 0})
                        if shard not in writers:
                            stream = fs.open_output_stream(join_path(split_dir, shard_file_name(shard, num_shards)))
                            streams.append(stream)
                            writers[shard] = pq.ParquetWriter(stream, schema)
                        if kept.num_rows:
                            writers[shard].write_table(kept.select(names).cast(schema))
                            stats["rows"] += kept.num_rows
                            stats["annotations"] += len(pc.list_flatten(kept.column("iscrowd")))
                            stats["crowd"] += int(pc.sum(pc.list_flatten(kept.column("iscrowd"))).as_py() or 0)
                        rejected = part.filter(pc.is_valid(part.column(_REASON_COL)))
                        for row in rejected.select(["image_id", "file_name", _REASON_COL, _MESSAGE_COL]).to_pylist():
                            rejects.append(
                                {
                                    "image_id": row["image_id"],
                                    "annotation_id": None,
                                    "file": row["file_name"],
                                    "reason": row[_REASON_COL],
                                    "message": row[_MESSAGE_COL],
                                }
                            )
            finally:
                for writer in writers.values():
                    writer.close()
                for stream in streams:
                    stream.close()
            return {"shards": shards, "rejects": rejects}

        def on_write_complete(self, write_result) -> None:
            self.write_returns = [r for r in write_result.write_returns if r is not None]
            _write_returns_check(self.write_returns)

    return ShardDatasink()


# ---------------------------------------------------------------- driver
def _input_table(records, shard: int) -> pa.Table:
    """Kept image records (annotations validated) -> the input rows of one shard (no image bytes).

    Built from flat per-instance arrays and list offsets: much faster than nested python lists.
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
    arrays[_SHARD_COL] = pa.array([shard] * len(records), type=pa.int32())
    return pa.table(arrays)


def _shard_bounds(num_records: int, num_shards: int) -> list[tuple[int, int]]:
    """Contiguous, balanced ``[start, stop)`` ranges (sizes differ by at most one)."""
    base, extra = divmod(num_records, num_shards)
    bounds, start = [], 0
    for index in range(num_shards):
        stop = start + base + (1 if index < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


def _check_shard_options(num_shards: int | None, rows_per_shard: int | None, batch_size: int) -> None:
    for name, value in (("num_shards", num_shards), ("rows_per_shard", rows_per_shard), ("batch_size", batch_size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
            raise ValueError(f"{name}: expected a positive int, got {value!r}")
    if num_shards is not None and rows_per_shard is not None:
        raise ValueError(f"give num_shards or rows_per_shard, not both (got {num_shards} and {rows_per_shard})")


def _choose_num_shards(num_records: int, num_shards: int | None, rows_per_shard: int | None, batch_size: int) -> int:
    if num_shards is not None:
        return num_shards
    if rows_per_shard is not None:
        return max(1, math.ceil(num_records / rows_per_shard))
    import ray

    # Default: shards of at most DEFAULT_ROWS_PER_SHARD rows, and at least two per CPU while each
    # still gets a full batch, so small datasets keep the whole cluster busy too.
    num_cpus = int(ray.cluster_resources().get("CPU", 1))
    return max(1, math.ceil(num_records / DEFAULT_ROWS_PER_SHARD), min(2 * num_cpus, num_records // batch_size))


def _write_text(fs: pafs.FileSystem, path: str, text: str) -> None:
    with fs.open_output_stream(path) as stream:
        stream.write(text.encode())


def _categories_text(categories: CategoryMap, fs: pafs.FileSystem, out_path: str, shown: str) -> str | None:
    """``OUT/categories.json``'s bytes (CategoryMap.save_json's) to write, or None when the same map is
    already there; refuses a different existing one (checked before anything is written)."""
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, CATEGORIES_FILE)
        categories.save_json(local)
        text = open(local).read()
    path = join_path(out_path, CATEGORIES_FILE)
    if fs.get_file_info(path).type == pafs.FileType.File:
        existing = json.loads(read_bytes(fs, path))
        if existing != json.loads(text):
            raise ValueError(
                f"{shown}: exists with different categories than this dataset's; the splits of one output "
                f"folder must share one category map (delete it, or write to another folder)"
            )
        return None
    return text


def _publish(fs: pafs.FileSystem, staging: str, split_dir: str) -> None:
    """Move a finished split from its staging folder into ``OUT/<split>`` (a rename where there was none;
    else the old shards are removed and the new files moved in, ``_summary.json`` last)."""
    if fs.get_file_info(split_dir).type == pafs.FileType.NotFound:
        fs.move(staging, split_dir)
        return
    _remove_old_shards(fs, split_dir)
    names = [info.base_name for info in fs.get_file_info(pafs.FileSelector(staging))]
    for name in sorted(names, key=lambda n: n == SUMMARY_FILE):
        fs.move(join_path(staging, name), join_path(split_dir, name))
    fs.delete_dir(staging)


def _discard(fs: pafs.FileSystem, staging: str, out_root: str, out_existed: bool) -> None:
    """After a failure: remove the staging folder, and ``OUT`` itself when this run created it and it is empty."""
    if fs.get_file_info(staging).type == pafs.FileType.Directory:
        fs.delete_dir(staging)
    if not out_existed and fs.get_file_info(out_root).type == pafs.FileType.Directory:
        if not fs.get_file_info(pafs.FileSelector(out_root)):
            fs.delete_dir(out_root)


def _remove_old_shards(fs: pafs.FileSystem, split_dir: str) -> None:
    for info in fs.get_file_info(pafs.FileSelector(split_dir, allow_not_found=True)):
        if info.type == pafs.FileType.File and SHARD_FILE_PATTERN.fullmatch(info.base_name):
            fs.delete_file(info.path)


def _load_annotations(annotations: str | os.PathLike) -> tuple[CocoLoadResult, dict[int, str], int]:
    """Read the json through pyarrow.fs and validate it (no image files touched)."""
    fs, path = resolve_path(annotations)
    source = os.fspath(annotations)
    try:
        raw = read_bytes(fs, path)
    except FileNotFoundError:
        raise FileNotFoundError(f"COCO annotation file not found: {source}") from None
    except IsADirectoryError:
        raise ValueError(f"{source}: is a folder, expected a COCO annotation json file") from None
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{source}: not valid json ({exc})") from None
    del raw
    if not isinstance(data, dict):
        raise ValueError(f"{source}: expected a COCO json object, got a {type(data).__name__}")
    result = load_coco(data, check_files=False, check_decode=False, source=source)
    files: dict[int, str] = {}
    for image in data.get("images", ()):
        if isinstance(image, dict) and isinstance(image.get("id"), int) and isinstance(image.get("file_name"), str):
            files.setdefault(image["id"], image["file_name"])
    return result, files, len(data["images"])


def preprocess_coco(
    *,
    annotations: str | os.PathLike,
    images: str | os.PathLike,
    out: str | os.PathLike,
    split: str,
    num_shards: int | None = None,
    rows_per_shard: int | None = None,
    ray_address: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = True,
) -> PreprocessSummary:
    """Validate one COCO split and write it as Parquet shards under ``OUT/<split>/``.

    Args:
        annotations: COCO instances json (local path or URI).
        images: folder the json's ``file_name`` entries are relative to (path or URI).
        out: output folder ``OUT`` (path or URI); ``OUT/categories.json`` is written or checked.
        split (str): output subfolder name, e.g. ``"train"``.
        num_shards (int | None): exact number of shard files (empty shards are written when
            there are fewer valid images).
        rows_per_shard (int | None): at most this many rows per file (instead of num_shards).
            Neither: shards of at most 1000 rows, and at least two per cluster CPU while each
            holds ``batch_size`` images.
        ray_address (str | None): Ray cluster to connect to; default ``RAY_ADDRESS``, else a local
            Ray. An already connected Ray is used as is.
        batch_size (int): images per Ray Data batch.
        progress (bool): Ray Data's progress bars and a one-line summary on stderr.

    Returns:
        PreprocessSummary: also written to ``OUT/<split>/_summary.json``.

    Raises:
        FileNotFoundError: the json or the image folder does not exist.
        ValueError: the json is not COCO instance json, bad shard options, a split name that is
            not a plain folder name, or categories that differ from an existing ``OUT/categories.json``.
    """
    start = time.perf_counter()
    _check_shard_options(num_shards, rows_per_shard, batch_size)
    if not isinstance(split, str) or not split or "/" in split or split.startswith((".", "_")):
        raise ValueError(f"split: expected a plain folder name like 'train', got {split!r}")
    image_fs, image_root = resolve_path(images)
    if image_fs.get_file_info(image_root).type != pafs.FileType.Directory:
        raise FileNotFoundError(f"image folder not found: {images}")
    out_fs, out_root = resolve_path(out)
    split_dir = join_path(out_root, split)

    result, files, num_json_images = _load_annotations(annotations)
    source, categories, json_rejects = result.source, result.categories, result.rejects
    num_valid_annotations = result.num_annotations
    records = result.records
    del result  # the records go to the object store as Arrow tables below; keep one copy
    categories_path = join_path(out_root, CATEGORIES_FILE)
    categories_text = _categories_text(categories, out_fs, out_root, display_path(out, out_fs, categories_path))
    # Everything is written into a staging folder and moved into place at the end, categories.json last:
    # a failure leaves OUT as it was (no half-written split, no categories.json in an otherwise empty folder).
    out_existed = out_fs.get_file_info(out_root).type != pafs.FileType.NotFound
    staging = join_path(out_root, f"_staging-{split}-{uuid.uuid4().hex[:12]}")
    out_fs.create_dir(staging, recursive=True)
    try:
        num_shards, write_returns = _write_shards(
            records, out_fs, staging, num_shards=num_shards, rows_per_shard=rows_per_shard, batch_size=batch_size,
            ray_address=ray_address, progress=progress, image_fs=image_fs, image_root=image_root, images=images,
            source=source, header=f"{split}: {num_json_images} images, {num_valid_annotations} valid instances in "
            f"{source}; {len(json_rejects)} json rejects",
        )  # fmt: skip
        summary = _finish_split(
            out, out_fs, staging, split_dir, split=split, source=source, images=images, files=files,
            json_rejects=json_rejects, write_returns=write_returns, num_shards=num_shards,
            num_json_images=num_json_images, start=start,
        )  # fmt: skip
        _publish(out_fs, staging, split_dir)
        if categories_text is not None:
            _write_text(out_fs, categories_path, categories_text)
    except BaseException:
        _discard(out_fs, staging, out_root, out_existed)
        raise
    if progress:
        rejected = ", ".join(f"{k} {v}" for k, v in summary.rejects_by_reason.items()) or "none"
        print(
            f"{split}: wrote {summary.num_rows} rows in {num_shards} shard(s) in {summary.seconds:.1f} s "
            f"({summary.images_per_second:.1f} images/s); rejects: {rejected}",
            file=sys.stderr,
        )
    return summary


def _write_shards(
    records, fs: pafs.FileSystem, split_dir: str, *, num_shards, rows_per_shard, batch_size, ray_address, progress,
    image_fs, image_root, images, source, header,
) -> tuple[int, list[dict]]:
    """Read, check and write every record's image into ``split_dir``'s shards on Ray; (num_shards, the
    datasink's write returns: per task its shard stats and image rejects)."""
    with ray_session(ray_address):
        import ray

        num_shards = _choose_num_shards(len(records), num_shards, rows_per_shard, batch_size)
        if progress:
            print(f"{header}; reading {len(records)} images into {num_shards} shard(s)", file=sys.stderr)
        context = ray.data.DataContext.get_current()
        previous_progress_bars, previous_block_size = context.enable_progress_bars, context.target_max_block_size
        context.enable_progress_bars = progress and previous_progress_bars
        # Rows carry whole images: Ray Data's default 128 MiB output blocks made each worker buffer
        # that much before writing, so memory grew with the dataset (benchmarks/bench_preprocess_memory.py).
        context.target_max_block_size = min(previous_block_size or PREPROCESS_BLOCK_BYTES, PREPROCESS_BLOCK_BYTES)
        input_refs = []
        for shard, (lo, hi) in enumerate(_shard_bounds(len(records), num_shards)):
            if hi > lo:
                input_refs.append(ray.put(_input_table(records[lo:hi], shard)))
        records.clear()  # the rows now live in the object store as Arrow tables; keep one copy
        write_returns: list[dict] = []
        if input_refs:
            sink = _make_datasink(fs, split_dir, num_shards)
            dataset = ray.data.from_arrow_refs(input_refs).map_batches(
                read_and_check_images,
                batch_size=batch_size,
                batch_format="pyarrow",
                fn_kwargs={
                    "fs": image_fs,
                    "image_root": image_root,
                    "image_root_display": os.fspath(images),
                    "source": source,
                },
            )
            try:
                dataset.write_datasink(sink)
            finally:
                context.enable_progress_bars = previous_progress_bars
                context.target_max_block_size = previous_block_size
            write_returns = sink.write_returns
            del input_refs
        context.enable_progress_bars = previous_progress_bars
        context.target_max_block_size = previous_block_size

    # Shards that got no rows from any task (more shards than images) are written empty.
    written = {shard for r in write_returns for shard in r["shards"]}
    schema = shard_schema()
    for shard in range(num_shards):
        if shard not in written:
            with fs.open_output_stream(join_path(split_dir, shard_file_name(shard, num_shards))) as stream:
                pq.write_table(schema.empty_table(), stream)
    return num_shards, write_returns


def _finish_split(
    out, out_fs: pafs.FileSystem, staging: str, split_dir: str, *, split, source, images, files, json_rejects,
    write_returns, num_shards, num_json_images, start,
) -> PreprocessSummary:
    """Write ``rejects.jsonl`` and ``_summary.json`` into the staging folder; the summary names the final paths."""
    rejects = [
        {
            "image_id": r.image_id,
            "annotation_id": r.annotation_id,
            "file": files.get(r.image_id) if r.image_id is not None else None,
            "reason": r.reason,
            "message": r.message,
        }
        for r in json_rejects
    ]
    ordered = sorted(write_returns, key=lambda r: min(r["shards"], default=-1))
    rejects.extend(reject for r in ordered for reject in r["rejects"])
    totals = Counter()
    for r in write_returns:
        for stats in r["shards"].values():
            totals.update(stats)

    rejects_path = join_path(split_dir, REJECTS_FILE)
    _write_text(out_fs, join_path(staging, REJECTS_FILE), "".join(json.dumps(r) + "\n" for r in rejects))
    summary = PreprocessSummary(
        split=split,
        annotations=source,
        images=os.fspath(images),
        out_dir=display_path(out, out_fs, split_dir),
        num_images=num_json_images,
        num_rows=totals["rows"],
        num_annotations=totals["annotations"],
        num_crowd=totals["crowd"],
        rejects_by_reason=dict(sorted(Counter(r["reason"] for r in rejects).items())),
        shard_paths=tuple(
            display_path(out, out_fs, join_path(split_dir, shard_file_name(i, num_shards))) for i in range(num_shards)
        ),
        categories_path=display_path(out, out_fs, join_path(split_dir.rsplit("/", 1)[0], CATEGORIES_FILE)),
        rejects_path=display_path(out, out_fs, rejects_path),
        summary_path=display_path(out, out_fs, join_path(split_dir, SUMMARY_FILE)),
        seconds=time.perf_counter() - start,
    )
    _write_text(out_fs, join_path(staging, SUMMARY_FILE), json.dumps(summary.to_dict(), indent=1) + "\n")
    return summary


def _exists(fs: pafs.FileSystem, path: str, kind: pafs.FileType) -> bool:
    return fs.get_file_info(path).type == kind


def find_coco_splits(src: str | os.PathLike, splits: Iterable[str] | None = None) -> dict[str, tuple[str, str]]:
    """Locate each split's annotation json and image folder under a dataset root.

    Layouts (first match wins, per split):

    - this project's synthetic layout: ``SRC/<split>/annotations.json`` + ``SRC/<split>/images/``;
    - COCO 2017: ``SRC/annotations/instances_<split>2017.json`` + ``SRC/<split>2017/``;
    - COCO without a year: ``SRC/annotations/instances_<split>.json`` + ``SRC/<split>/``.

    Args:
        src: dataset root (path or URI).
        splits: split names; default every one of ``train``, ``val`` that is found.

    Returns:
        dict: ``{split: (annotations, image_folder)}`` as paths/URIs, in the order asked.

    Raises:
        FileNotFoundError: SRC is missing, a requested split is not found, or no split is found.
    """
    fs, root = resolve_path(src)
    if not _exists(fs, root, pafs.FileType.Directory):
        raise FileNotFoundError(f"dataset folder not found: {src}")
    shown = os.fspath(src).rstrip("/")

    def locate(split: str) -> tuple[str, str] | None:
        candidates = [
            (f"{split}/annotations.json", f"{split}/images"),
            (f"annotations/instances_{split}2017.json", f"{split}2017"),
            (f"annotations/instances_{split}.json", split),
        ]
        for annotation, image_dir in candidates:
            if _exists(fs, join_path(root, annotation), pafs.FileType.File) and _exists(
                fs, join_path(root, image_dir), pafs.FileType.Directory
            ):
                return f"{shown}/{annotation}", f"{shown}/{image_dir}"
        return None

    layouts = (
        "SRC/<split>/annotations.json + SRC/<split>/images/, or "
        "SRC/annotations/instances_<split>2017.json + SRC/<split>2017/"
    )
    found: dict[str, tuple[str, str]] = {}
    if splits is None:
        for split in SPLITS:
            location = locate(split)
            if location is not None:
                found[split] = location
        if not found:
            raise FileNotFoundError(f"{src}: no train or val split found; expected {layouts}")
        return found
    for split in splits:
        location = locate(split)
        if location is None:
            raise FileNotFoundError(f"{src}: split {split!r} not found; expected {layouts}")
        found[split] = location
    return found


def preprocess_dataset(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    splits: Iterable[str] | None = None,
    num_shards: int | None = None,
    rows_per_shard: int | None = None,
    ray_address: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = True,
) -> dict[str, PreprocessSummary]:
    """Preprocess every split of a dataset root (see :func:`find_coco_splits` for the layouts).

    Args:
        src: dataset root (path or URI).
        out: output folder (path or URI).
        splits: split names; default every one of ``train``, ``val`` that exists.
        num_shards, rows_per_shard, ray_address, batch_size, progress: see :func:`preprocess_coco`
            (the shard options apply to each split).

    Returns:
        dict[str, PreprocessSummary]: one per split, in order.
    """
    _check_shard_options(num_shards, rows_per_shard, batch_size)
    located = find_coco_splits(src, splits)
    summaries: dict[str, PreprocessSummary] = {}
    with ray_session(ray_address):
        for split, (annotations, images) in located.items():
            summaries[split] = preprocess_coco(
                annotations=annotations,
                images=images,
                out=out,
                split=split,
                num_shards=num_shards,
                rows_per_shard=rows_per_shard,
                batch_size=batch_size,
                progress=progress,
            )
    return summaries
