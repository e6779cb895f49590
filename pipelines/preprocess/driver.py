"""The two entry points of ``mrcnn preprocess``: one COCO split (:func:`preprocess_coco`), or every split of
a dataset root (:func:`preprocess_dataset`). See :mod:`pipelines.preprocess` for the outputs and how the work
is split between the driver and the Ray Data tasks."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import pyarrow.fs as pafs

from mrcnn.data.coco import CocoLoadResult, ImageRecord, load_coco
from pipelines.common.progress import StageLog
from pipelines.common.session import ray_session
from pipelines.common.storage import display_path, join_path, read_bytes, resolve_path, write_atomic
from pipelines.preprocess.splits import find_coco_splits
from pipelines.preprocess.summary import PreprocessSummary, write_split_reports
from pipelines.preprocess.tasks import (
    DEFAULT_BATCH_SIZE,
    check_shard_options,
    choose_num_shards,
    read_and_check_images,
    shard_bounds,
    shard_input_table,
)
from pipelines.preprocess.writer import (
    categories_text,
    make_shard_datasink,
    publish,
    staged_split,
    write_empty_shards,
)
from pipelines.shards import CATEGORIES_FILE

__all__ = ["preprocess_coco", "preprocess_dataset"]

PREPROCESS_BLOCK_BYTES = 16 * 2**20  # Ray Data output block cap while preprocessing (rows hold images)

# The stage's lines on stderr, unprefixed (``train: 8 images, ...``): the split name leads each line.
_log = StageLog("preprocess", prefix="")


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
    check_shard_options(num_shards, rows_per_shard, batch_size)
    if not isinstance(split, str) or not split or "/" in split or split.startswith((".", "_")):
        raise ValueError(f"split: expected a plain folder name like 'train', got {split!r}")
    image_fs, image_root = resolve_path(images)
    if image_fs.get_file_info(image_root).type != pafs.FileType.Directory:
        raise FileNotFoundError(f"image folder not found: {images}")
    out_fs, out_root = resolve_path(out)
    split_dir = join_path(out_root, split)

    result, files, num_json_images = _load_annotations(annotations)
    source, json_rejects, records = result.source, result.rejects, result.records
    header = (
        f"{split}: {num_json_images} images, {result.num_annotations} valid instances in {source}; "
        f"{len(json_rejects)} json rejects"
    )
    categories_path = join_path(out_root, CATEGORIES_FILE)
    categories = categories_text(result.categories, out_fs, out_root, display_path(out, out_fs, categories_path))
    del result  # the records go to the object store as Arrow tables below; keep one copy
    # Everything is written into a staging folder and moved into place at the end, categories.json last:
    # a failure leaves OUT as it was (no half-written split, no categories.json in an otherwise empty folder).
    with staged_split(out_fs, out_root, split) as staging:
        num_shards, write_returns = _write_shards(
            records, out_fs, staging, num_shards=num_shards, rows_per_shard=rows_per_shard, batch_size=batch_size,
            ray_address=ray_address, progress=progress, image_fs=image_fs, image_root=image_root,
            image_root_display=os.fspath(images), source=source, header=header,
        )  # fmt: skip
        summary = write_split_reports(
            out, out_fs, staging, split_dir, split=split, source=source, images=images, files=files,
            json_rejects=json_rejects, write_returns=write_returns, num_shards=num_shards,
            num_json_images=num_json_images, start=start,
        )  # fmt: skip
        publish(out_fs, staging, split_dir)
        if categories is not None:
            write_atomic(categories_path, categories, fs=out_fs)
    if progress:
        _log(summary.done_line())
    return summary


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
    check_shard_options(num_shards, rows_per_shard, batch_size)
    located = find_coco_splits(src, splits)
    options = dict(num_shards=num_shards, rows_per_shard=rows_per_shard, batch_size=batch_size, progress=progress)
    with ray_session(ray_address):
        return {
            split: preprocess_coco(annotations=annotations, images=images, out=out, split=split, **options)
            for split, (annotations, images) in located.items()
        }


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


def _write_shards(
    records: list[ImageRecord], fs: pafs.FileSystem, split_dir: str, *, num_shards: int | None,
    rows_per_shard: int | None, batch_size: int, ray_address: str | None, progress: bool,
    image_fs: pafs.FileSystem, image_root: str, image_root_display: str, source: str, header: str,
) -> tuple[int, list[dict]]:
    """Read, check and write every record's image into ``split_dir``'s shards on Ray.

    ``records`` is emptied once its rows are in the object store (one copy in memory at a time).

    Returns:
        (num_shards, the datasink's write returns: per task its shard stats and image rejects).
    """
    with ray_session(ray_address):
        import ray

        num_shards = choose_num_shards(len(records), num_shards, rows_per_shard, batch_size)
        if progress:
            _log(f"{header}; reading {len(records)} images into {num_shards} shard(s)")
        input_refs = [
            ray.put(shard_input_table(records[lo:hi], shard))
            for shard, (lo, hi) in enumerate(shard_bounds(len(records), num_shards))
            if hi > lo
        ]
        records.clear()  # the rows now live in the object store as Arrow tables; keep one copy
        write_returns: list[dict] = []
        if input_refs:
            sink = make_shard_datasink(fs, split_dir, num_shards)
            with _data_context(progress):  # before the dataset is made: it keeps a copy of the context
                ray.data.from_arrow_refs(input_refs).map_batches(
                    read_and_check_images,
                    batch_size=batch_size,
                    batch_format="pyarrow",
                    fn_kwargs={
                        "fs": image_fs,
                        "image_root": image_root,
                        "image_root_display": image_root_display,
                        "source": source,
                    },
                ).write_datasink(sink)
            write_returns = sink.write_returns
            del input_refs
    write_empty_shards(fs, split_dir, num_shards, write_returns)
    return num_shards, write_returns


@contextmanager
def _data_context(progress: bool) -> Iterator[None]:
    """Ray Data's settings for this write, restored after it: its progress bars only with ``progress`` (and
    where they are on at all), and output blocks of at most ``PREPROCESS_BLOCK_BYTES``."""
    import ray

    context = ray.data.DataContext.get_current()
    previous_progress_bars, previous_block_size = context.enable_progress_bars, context.target_max_block_size
    context.enable_progress_bars = progress and previous_progress_bars
    # Rows carry whole images: Ray Data's default 128 MiB output blocks made each worker buffer
    # that much before writing, so memory grew with the dataset (benchmarks/bench_preprocess_memory.py).
    context.target_max_block_size = min(previous_block_size or PREPROCESS_BLOCK_BYTES, PREPROCESS_BLOCK_BYTES)
    try:
        yield
    finally:
        context.enable_progress_bars = previous_progress_bars
        context.target_max_block_size = previous_block_size
