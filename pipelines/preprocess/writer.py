"""Writing a split: the shard files (a Ray Data datasink), and publishing the split whole or not at all.

A split is written into a staging folder ``OUT/_staging-<split>-*`` (:func:`staged_split`) and moved into
``OUT/<split>`` when complete (:func:`publish`); the caller writes ``OUT/categories.json`` last. A run that
fails leaves ``OUT`` as it was: no half-written split, no ``categories.json`` in an otherwise empty folder.
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from mrcnn.data.categories import CategoryMap
from mrcnn.records import SHARD_COLUMNS
from pipelines.common.storage import join_path, list_files, read_bytes
from pipelines.preprocess.summary import SUMMARY_FILE
from pipelines.preprocess.tasks import MESSAGE_COL, REASON_COL, SHARD_COL
from pipelines.shards import CATEGORIES_FILE, SHARD_FILE_PATTERN, shard_file_name, shard_schema

__all__ = ["categories_text", "make_shard_datasink", "publish", "staged_split", "write_empty_shards"]


def make_shard_datasink(fs: pafs.FileSystem, split_dir: str, num_shards: int):
    """A Ray Data datasink that writes the kept rows of each block into their shard's file under ``split_dir``
    (one row group per block part) and returns, per write task, ``{"shards": {shard: {"rows", "annotations",
    "crowd"}}, "rejects": [image rejects]}``; after the write, the sink's ``write_returns`` holds them.

    Each shard must be written by one task (the map and the write fused); a shard seen from two tasks
    raises ``RuntimeError`` instead of overwriting a file.
    """
    from ray.data.block import BlockAccessor
    from ray.data.datasource.datasink import Datasink

    class ShardDatasink(Datasink):
        def __init__(self) -> None:
            self.write_returns: list[dict] = []

        def get_name(self) -> str:
            return "WriteShards"

        def write(self, blocks: Iterable[pa.Table], ctx) -> dict:
            with _ShardFiles(fs, split_dir, num_shards) as files:
                for block in blocks:
                    block = BlockAccessor.for_block(block).to_arrow()
                    shards = pc.unique(block.column(SHARD_COL)).to_pylist() if block.num_rows else []
                    for shard in shards:
                        files.add(shard, block.filter(pc.equal(block.column(SHARD_COL), shard)))
            return {"shards": files.stats, "rejects": files.rejects}

        def on_write_complete(self, write_result) -> None:
            self.write_returns = [r for r in write_result.write_returns if r is not None]
            _check_one_task_per_shard(self.write_returns)

    return ShardDatasink()


class _ShardFiles:
    """The open shard files of one write task; ``add`` writes a shard's kept rows and collects its rejects."""

    def __init__(self, fs: pafs.FileSystem, split_dir: str, num_shards: int) -> None:
        self.fs, self.split_dir, self.num_shards = fs, split_dir, num_shards
        self.schema = shard_schema()
        self.writers: dict[int, pq.ParquetWriter] = {}
        self.streams: list = []
        self.stats: dict[int, dict[str, int]] = {}
        self.rejects: list[dict] = []

    def __enter__(self) -> _ShardFiles:
        return self

    def __exit__(self, *exc_info) -> None:
        for writer in self.writers.values():
            writer.close()
        for stream in self.streams:
            stream.close()

    def add(self, shard: int, part: pa.Table) -> None:
        """Write the kept rows of ``part`` (rows of ``shard``) and collect its rejected ones."""
        stats = self.stats.setdefault(shard, {"rows": 0, "annotations": 0, "crowd": 0})
        if shard not in self.writers:
            stream = self.fs.open_output_stream(join_path(self.split_dir, shard_file_name(shard, self.num_shards)))
            self.streams.append(stream)
            self.writers[shard] = pq.ParquetWriter(stream, self.schema)
        kept = part.filter(pc.is_null(part.column(REASON_COL)))
        if kept.num_rows:
            self.writers[shard].write_table(kept.select(list(SHARD_COLUMNS)).cast(self.schema))
            crowd = pc.list_flatten(kept.column("iscrowd"))
            stats["rows"] += kept.num_rows
            stats["annotations"] += len(crowd)
            stats["crowd"] += int(pc.sum(crowd).as_py() or 0)
        rejected = part.filter(pc.is_valid(part.column(REASON_COL)))
        for row in rejected.select(["image_id", "file_name", REASON_COL, MESSAGE_COL]).to_pylist():
            self.rejects.append(
                {
                    "image_id": row["image_id"],
                    "annotation_id": None,
                    "file": row["file_name"],
                    "reason": row[REASON_COL],
                    "message": row[MESSAGE_COL],
                }
            )


def _check_one_task_per_shard(write_returns: list[dict]) -> None:
    seen: dict[int, int] = {}
    for task, result in enumerate(write_returns):
        for shard in result["shards"]:
            if shard in seen:
                raise RuntimeError(
                    f"shard {shard} was written by two tasks ({seen[shard]} and {task}); the map and the "
                    f"write were not fused, so a file was overwritten"
                )
            seen[shard] = task


def write_empty_shards(fs: pafs.FileSystem, split_dir: str, num_shards: int, write_returns: list[dict]) -> None:
    """Write an empty shard file for each shard that no task wrote (more shards than images, or only rejects)."""
    written = {shard for r in write_returns for shard in r["shards"]}
    schema = shard_schema()
    for shard in range(num_shards):
        if shard not in written:
            with fs.open_output_stream(join_path(split_dir, shard_file_name(shard, num_shards))) as stream:
                pq.write_table(schema.empty_table(), stream)


def categories_text(categories: CategoryMap, fs: pafs.FileSystem, out_path: str, shown: str) -> str | None:
    """``OUT/categories.json``'s text (CategoryMap.save_json's) to write, or None when the same map is
    already there; ``ValueError`` for a different existing one (checked before anything is written)."""
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, CATEGORIES_FILE)
        categories.save_json(local)
        with open(local) as handle:
            text = handle.read()
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


@contextmanager
def staged_split(fs: pafs.FileSystem, out_root: str, split: str) -> Iterator[str]:
    """A new staging folder ``OUT/_staging-<split>-<random>`` for one split's files.

    The block writes there and publishes (:func:`publish`). When the block raises, the staging folder is
    removed, and ``OUT`` too when this created it and it is left empty; the error propagates.
    """
    out_existed = fs.get_file_info(out_root).type != pafs.FileType.NotFound
    staging = join_path(out_root, f"_staging-{split}-{uuid.uuid4().hex[:12]}")
    fs.create_dir(staging, recursive=True)
    try:
        yield staging
    except BaseException:
        _discard(fs, staging, out_root, out_existed)
        raise


def publish(fs: pafs.FileSystem, staging: str, split_dir: str) -> None:
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
    for info in list_files(fs, split_dir, recursive=False):
        if SHARD_FILE_PATTERN.fullmatch(info.base_name):
            fs.delete_file(info.path)
