"""What a segment run works on: a folder of images (recursive) or a Parquet shard set, listed as work items.

The driver lists the input and never reads image bytes. A work item says where one image is: its file, or
its shard file, row group and row (see :func:`_work_items`). The workers read the images themselves.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import PurePosixPath

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipelines.common.storage import IMAGE_SUFFIXES, display_path, is_image_name, list_files, resolve_path
from pipelines.shards import SHARD_FILE_PATTERN


@dataclass
class _Input:
    kind: str  # "images" | "shards"
    shown: str  # as given
    resolved: str  # absolute path or URI, for the manifest
    table: pa.Table  # one work item per image, in input order (see _work_items)
    num_ignored_files: int = 0

    @property
    def keys(self) -> list[str]:
        return self.table.column("key").to_pylist()


def _overlay_names(keys: list[str]) -> list[str]:
    """``a/b.jpg`` -> ``a/b.png``; where two keys would share a name (``b.jpg``, ``b.png``) both keep their suffix."""
    stems = [f"{PurePosixPath(key).with_suffix('')}.png" for key in keys]
    counts = Counter(stems)
    return [stem if counts[stem] == 1 else f"{key}.png" for key, stem in zip(keys, stems)]


def _work_items(keys, file_names, image_ids, paths, row_groups, rows, overlays) -> pa.Table:
    """The rows the workers get: where each image is, no pixels (see ``SegmentWorker.__call__``)."""
    num = len(keys)
    return pa.table(
        {
            "key": pa.array(keys, type=pa.string()),
            "file_name": pa.array(file_names, type=pa.string()),
            "image_id": pa.array(image_ids, type=pa.int64()),
            "path": pa.array(paths, type=pa.string()),
            "row_group": pa.array(row_groups if row_groups is not None else [None] * num, type=pa.int32()),
            "row": pa.array(rows if rows is not None else [None] * num, type=pa.int32()),
            "overlay": pa.array(overlays, type=pa.string()),
        }
    )


def _list_shard_rows(source: str | os.PathLike, fs: pafs.FileSystem, shard_files: list[str], shown: str, resolved: str) -> _Input:
    """One work item per shard row: (shard file, row group, row), from the ``image_id`` and ``file_name`` columns."""
    ids, names, paths, row_groups, rows = [], [], [], [], []
    for path in shard_files:
        shown_path = display_path(source, fs, path)
        with fs.open_input_file(path) as handle:
            parquet = pq.ParquetFile(handle)
            missing = {"image_id", "file_name", "image"} - set(parquet.schema_arrow.names)
            if missing:
                raise ValueError(f"{shown_path}: not a shard file, it lacks the column(s) {', '.join(sorted(missing))}")
            for group in range(parquet.num_row_groups):
                table = parquet.read_row_group(group, columns=["image_id", "file_name"])
                ids.extend(table.column("image_id").to_pylist())
                names.extend(table.column("file_name").to_pylist())
                paths.extend([shown_path] * table.num_rows)
                row_groups.extend([group] * table.num_rows)
                rows.extend(range(table.num_rows))
    repeated = [image_id for image_id, count in Counter(ids).items() if count > 1]
    if repeated:
        raise ValueError(f"{shown}: image_id {repeated[0]} is in more than one shard row; image ids must be unique")
    keys = [str(image_id) for image_id in ids]
    table = _work_items(keys, names, ids, paths, row_groups, rows, [f"{key}.png" for key in keys])
    return _Input("shards", shown, resolved, table)


def _open_input(source: str | os.PathLike, out_fs: pafs.FileSystem, out_root: str) -> _Input:
    """List a folder of images (recursively) or a shard set; no image is read."""
    fs, root = resolve_path(source)
    shown = os.fspath(source)
    info = fs.get_file_info(root)
    if info.type != pafs.FileType.Directory:
        raise FileNotFoundError(f"input folder not found: {shown} (expected a folder of images or of shard files)")
    resolved = display_path(source, fs, root)
    files = list_files(fs, root, recursive=False)
    shard_files = sorted(f.path for f in files if SHARD_FILE_PATTERN.fullmatch(f.base_name))
    if shard_files:
        return _list_shard_rows(source, fs, shard_files, shown, resolved)

    same_fs = type(fs) is type(out_fs)
    keys, paths, ignored = [], [], 0
    for entry in list_files(fs, root, recursive=True):
        relative = entry.path[len(root) :].lstrip("/")
        if same_fs and (entry.path == out_root or entry.path.startswith(out_root.rstrip("/") + "/")):
            continue  # our own outputs (overlays) inside the input folder
        if any(part.startswith(".") for part in relative.split("/")):
            continue
        if not is_image_name(relative):
            ignored += 1
            continue
        keys.append(relative)
        paths.append(display_path(source, fs, entry.path))
    if not keys:
        raise FileNotFoundError(
            f"{shown}: no image files ({', '.join(IMAGE_SUFFIXES)}) and no shard files (part-*-of-*.parquet); "
            f"for a preprocessed dataset give its split folder, e.g. OUT/val"
        )
    order = sorted(range(len(keys)), key=keys.__getitem__)
    keys = [keys[i] for i in order]
    table = _work_items(keys, keys, [None] * len(keys), [paths[i] for i in order], None, None, _overlay_names(keys))
    return _Input("images", shown, resolved, table, num_ignored_files=ignored)


def _build_dataset(inp: _Input, done: set[str], part_size: int):
    """The work items still to do, in blocks of ``part_size``, as a Ray Dataset.

    Only locations travel: each worker reads its images itself, so no read stage competes with
    the actor pool for CPUs (on a small cluster a pool holding every CPU would starve it).
    """
    import ray

    table = inp.table.filter(pa.array([key not in done for key in inp.table.column("key").to_pylist()]))
    blocks = [table.slice(start, part_size) for start in range(0, table.num_rows, part_size)]
    return ray.data.from_arrow(blocks), table.num_rows

