"""Batch segmentation with Ray Data: a folder of images or a Parquet shard set -> detections.

``mrcnn segment --model URI --input DIR|SHARDS --out OUT`` writes::

    OUT/_segment.json            what the folder holds: input, model (URI and sha256), options
    OUT/_parts/part-<h>.parquet  one file per batch of images, rows of PART_COLUMNS (written as tmp + rename)
    OUT/results.json             COCO results json, the records `mrcnn predict` writes (--format coco|both)
    OUT/detections.parquet       one row per image, mrcnn.records.SEGMENT_COLUMNS (--format parquet|both)
    OUT/overlays/<name>.png      masks drawn over each image (--overlays)
    OUT/rejects.jsonl            one json per skipped image: key, file, image_id, reason, message
    OUT/_summary.json            counts, rejects by reason, images/s, output paths

How the work is split:

- the driver lists the input. For a folder it lists image files recursively, by suffix,
  skipping hidden entries and ``OUT``. For a shard set (``OUT/<split>`` of ``mrcnn preprocess``)
  it reads the ``image_id`` and ``file_name`` columns: one work item per row (file, row group,
  row). It also reads the keys of the part files already written. It never reads image bytes;
- a ``map_batches`` over an actor pool (``ActorPoolStrategy``) does the work: one
  :class:`SegmentWorker` per actor, each with one :class:`mrcnn.predictor.Predictor` loaded once
  in ``__init__``, and a GPU per actor with ``gpu=True``. Each call takes ``part_size`` images. It
  reads and decodes them, runs the model ``batch_size`` images per forward pass, writes the
  overlays, then writes one part file, and returns one small status row per image;
- the driver streams those rows for progress. At the end it assembles ``results.json``,
  ``detections.parquet`` and ``rejects.jsonl`` from the part files, one part at a time.

Bad images never fail a batch. An image that cannot be read or decoded is recorded with its
reason (the codes of :class:`mrcnn.data.images.ImageDecodeError`, plus ``read_error`` and
``inference_error``), and the rest of its batch goes on.

Resume: a part file is only there when it is complete. Its name is a hash of its image keys, so
a retried batch overwrites its own file. A re-run over the same ``OUT`` first drops the images
that a part file already holds, so a crashed run loses at most the batches in flight. Images
rejected for a reason that may pass (``RETRIED_REASONS``: I/O and model errors) are tried again,
and with ``retry_rejects`` every rejected image is. Outputs keep one row per image even if two
parts hold it, and a result wins over a reject. ``OUT/_segment.json`` records the input, the model's sha256 and the
options that change results. A re-run with different ones is refused unless ``overwrite=True``.

Paths may be local or pyarrow filesystem URIs (``s3://``); the model is sent to the actors
through the object store, so workers on other nodes need no access to it.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipelines.common.progress import StageLog
from mrcnn.data.images import ImageDecodeError, decode_image
from mrcnn.records import SEGMENT_COLUMNS, coco_result, row_to_records, segment_columns
from pipelines.common.session import ray_session
from pipelines.common.storage import (
    IMAGE_SUFFIXES,
    display_path,
    is_file,
    is_image_name,
    is_tmp,
    join_path,
    list_files,
    read_bytes,
    resolve_path,
    tmp_path,
    write_atomic,
)
from pipelines.shards import SHARD_FILE_PATTERN, columns_schema

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_PART_SIZE",
    "IMAGE_SUFFIXES",
    "SegmentSummary",
    "SegmentWorker",
    "segment",
    "segment_schema",
]

DEFAULT_BATCH_SIZE = 2  # images per forward pass (as `mrcnn predict`)
DEFAULT_PART_SIZE = 32  # images per map_batches call, and per part file
FORMATS = ("coco", "parquet", "both")

MANIFEST_FILE = "_segment.json"
SUMMARY_FILE = "_summary.json"
PARTS_DIR = "_parts"
RESULTS_FILE = "results.json"
DETECTIONS_FILE = "detections.parquet"
REJECTS_FILE = "rejects.jsonl"
OVERLAYS_DIR = "overlays"
MANIFEST_VERSION = 1
OK = "ok"  # the status of an image with results; any other status is a reject reason
# Reject reasons that may pass on a re-run (I/O, a model error); the others are properties of the file.
RETRIED_REASONS = frozenset({"read_error", "missing_file", "unreadable_file", "inference_error"})

# A part file row: the detection columns plus what happened to the image.
PART_COLUMNS: dict[str, str] = {
    **SEGMENT_COLUMNS,
    "status": "string",  # OK, or the reject reason
    "message": "string",  # the reject message; null for OK
}


def segment_schema(columns: dict[str, str] = SEGMENT_COLUMNS) -> pa.Schema:
    """The arrow schema of ``detections.parquet`` (default) or of a part file (``PART_COLUMNS``)."""
    return columns_schema(columns)


class SegmentInterrupted(RuntimeError):
    """Raised by the ``fail_after_parts`` test hook: the run stops as a crashed driver would."""


# ---------------------------------------------------------------- summary
@dataclass(frozen=True)
class SegmentSummary:
    """What one ``segment`` run did, and what ``OUT`` now holds.

    Attributes:
        input (str): the input folder or shard set, as given.
        input_kind (str): ``"images"`` or ``"shards"``.
        out_dir (str): the output folder.
        model_uri (str): the model URI, as given.
        model_sha256 (str): hash of the checkpoint file.
        num_inputs (int): images in the input (files with an image suffix, or shard rows).
        num_ignored_files (int): files of a folder input without an image suffix (not read).
        num_already_done (int): images with results from an earlier run, not processed again.
        num_processed (int): images this run gave results for.
        num_rejected_now (int): images this run skipped (unreadable, ...).
        num_results (int): images with results in the outputs (all runs).
        num_detections (int): detections in the outputs.
        rejects_by_reason (dict[str, int]): skipped images in the outputs, by reason.
        duplicates_dropped (int): extra results for an image found in the part files and left out
            of the outputs (a batch that a crashed run's last actors finished while the next run
            redid it). Older rejects that a later result or reject replaced are not counted.
        outputs (dict[str, str]): ``results``, ``detections``, ``rejects``, ``summary``, ``overlays`` paths.
        seconds (float): wall time of the whole run.
        pipeline_seconds (float): wall time of the Ray Data pipeline alone (0 when nothing was left to do).
    """

    input: str
    input_kind: str
    out_dir: str
    model_uri: str
    model_sha256: str
    num_inputs: int
    num_ignored_files: int
    num_already_done: int
    num_processed: int
    num_rejected_now: int
    num_results: int
    num_detections: int
    rejects_by_reason: dict[str, int] = field(repr=False)
    duplicates_dropped: int = 0
    outputs: dict[str, str] = field(default_factory=dict, repr=False)
    seconds: float = 0.0
    pipeline_seconds: float = 0.0

    @property
    def num_rejects(self) -> int:
        return sum(self.rejects_by_reason.values())

    @property
    def images_per_second(self) -> float:
        """Images handled by this run's pipeline (results and rejects) per second of its wall time."""
        done = self.num_processed + self.num_rejected_now
        return done / self.pipeline_seconds if self.pipeline_seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "input": self.input,
            "input_kind": self.input_kind,
            "out_dir": self.out_dir,
            "model_uri": self.model_uri,
            "model_sha256": self.model_sha256,
            "num_inputs": self.num_inputs,
            "num_ignored_files": self.num_ignored_files,
            "num_already_done": self.num_already_done,
            "num_processed": self.num_processed,
            "num_rejected_now": self.num_rejected_now,
            "num_results": self.num_results,
            "num_detections": self.num_detections,
            "num_rejects": self.num_rejects,
            "rejects": dict(self.rejects_by_reason),
            "duplicates_dropped": self.duplicates_dropped,
            "outputs": dict(self.outputs),
            "seconds": round(self.seconds, 3),
            "pipeline_seconds": round(self.pipeline_seconds, 3),
            "images_per_second": round(self.images_per_second, 3),
        }

    def format(self) -> str:
        """A few human lines: counts, rejects by reason, output paths."""
        lines = [
            (
                f"segment: {self.num_results} of {self.num_inputs} images have results ({self.num_detections} "
                f"detections); this run: {self.num_processed} processed, {self.num_rejected_now} skipped, "
                f"{self.num_already_done} already done; {self.seconds:.1f} s ({self.images_per_second:.2f} images/s)"
            )
        ]
        if self.num_ignored_files:
            lines.append(f"  ignored {self.num_ignored_files} file(s) without an image suffix")
        for reason, count in self.rejects_by_reason.items():
            lines.append(f"  skipped {reason}: {count}")
        for name, path in self.outputs.items():
            lines.append(f"  {name + ':':<12}{path}")
        return "\n".join(lines)


# ---------------------------------------------------------------- files
def _table_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def part_file_name(keys: Iterable[str]) -> str:
    """``part-<hash>.parquet``: the same images give the same name, so a retried batch replaces its file."""
    digest = hashlib.sha1("\n".join(sorted(keys)).encode()).hexdigest()[:20]
    return f"part-{digest}.parquet"


def _load_model_bytes(model: str | os.PathLike, tracking_uri: str | None) -> bytes:
    """The checkpoint file's bytes for a model URI, checked by loading it once here, so a bad file
    is one clear error instead of a failure in every actor. A download goes to a temporary folder."""
    import tempfile

    from mrcnn.checkpoint import load_checkpoint
    from pipelines.tracking import resolve_model_uri

    with tempfile.TemporaryDirectory(prefix="mrcnn-segment-model-") as tmp:
        path = resolve_model_uri(model, tracking_uri=tracking_uri, dst_dir=tmp)
        load_checkpoint(path)
        return path.read_bytes()


# ---------------------------------------------------------------- the actor
def _source(row: dict[str, Any]) -> str:
    """An input row as messages name it."""
    return row["file_name"] if row["image_id"] is None else f"image {row['image_id']} ({row['file_name']})"


class SegmentWorker:
    """The ``map_batches`` callable of the actor pool: one model per actor, loaded once here.

    Args:
        checkpoint: the checkpoint file's bytes, or an ObjectRef to them (sent once per actor).
        device (str): ``"cpu"`` or ``"cuda"``.
        num_threads (int | None): torch CPU threads (the actor's CPUs); None leaves torch's default.
        score_threshold, mask_threshold (float): as :class:`mrcnn.predictor.Predictor`.
        batch_size (int): images per forward pass.
        out (str): the output folder (path or URI).
        overlays (bool): draw the masks over each image into ``OUT/overlays/``.
    """

    def __init__(
        self,
        *,
        checkpoint: Any,
        device: str = "cpu",
        num_threads: int | None = None,
        score_threshold: float = 0.5,
        mask_threshold: float = 0.5,
        batch_size: int = DEFAULT_BATCH_SIZE,
        out: str,
        overlays: bool = False,
    ) -> None:
        import tempfile

        import ray
        import torch

        from mrcnn import runtime
        from mrcnn.predictor import Predictor

        # The actor's process, the actor's choice (mrcnn.runtime): on a CPU malloc keeps freed memory, which
        # is also what makes the Winograd 3x3s pay off.
        winograd = torch.device(device).type == "cpu" and runtime.keep_freed_memory()
        if isinstance(checkpoint, ray.ObjectRef):
            checkpoint = ray.get(checkpoint)
        if num_threads is not None:
            torch.set_num_threads(num_threads)
        with tempfile.TemporaryDirectory(prefix="mrcnn-segment-") as tmp:
            path = os.path.join(tmp, "model.ckpt")
            with open(path, "wb") as handle:
                handle.write(checkpoint)
            self.predictor = Predictor.from_checkpoint(
                path, device=device, score_threshold=score_threshold, mask_threshold=mask_threshold,
                optimize={"winograd": winograd},
            )
        self.batch_size = batch_size
        self.out_fs, self.out_root = resolve_path(out)
        self.overlays = overlays
        self.schema = segment_schema(PART_COLUMNS)

    def _read_bytes(self, rows: list[dict[str, Any]]) -> list[bytes | ImageDecodeError]:
        """Each row's encoded image: the file at ``path``, or row ``row`` of row group ``row_group``
        of the shard file at ``path`` (each row group read once, ``image`` column only)."""
        out: list[bytes | ImageDecodeError] = []
        row_groups: dict[tuple[str, int], pa.Table | ImageDecodeError] = {}
        for row in rows:
            source = _source(row)
            fs, path = resolve_path(row["path"])
            if row.get("row_group") is None:
                try:
                    out.append(read_bytes(fs, path))
                except FileNotFoundError:
                    out.append(ImageDecodeError(f"{source}: file not found", source=source, reason="missing_file"))
                except OSError as exc:
                    out.append(ImageDecodeError(f"{source}: cannot read file: {exc}", source=source, reason="read_error"))
                continue
            group = (row["path"], row["row_group"])
            if group not in row_groups:
                try:
                    with fs.open_input_file(path) as handle:
                        row_groups[group] = pq.ParquetFile(handle).read_row_group(group[1], columns=["image_id", "image"])
                except (OSError, pa.ArrowException) as exc:
                    row_groups[group] = ImageDecodeError(
                        f"{source}: cannot read row group {group[1]} of {row['path']}: {exc}", source=source, reason="read_error"
                    )
            table = row_groups[group]
            if isinstance(table, ImageDecodeError):
                out.append(table)
            elif row["row"] >= table.num_rows or table.column("image_id")[row["row"]].as_py() != row["image_id"]:
                out.append(ImageDecodeError(
                    f"{source}: {row['path']} changed since it was listed (row group {group[1]}, row {row['row']})",
                    source=source, reason="read_error",
                ))  # fmt: skip
            else:
                data = table.column("image")[row["row"]].as_py()
                out.append(data if data is not None else ImageDecodeError(
                    f"{source}: the shard row has no image bytes", source=source, reason="empty"
                ))  # fmt: skip
        return out

    def _predict(self, images: list[np.ndarray]) -> list[list[dict[str, Any]] | Exception]:
        """Records per image, ``batch_size`` at a time; a failing forward pass is retried one image at a time."""
        return self.predictor.predict_each(images, batch_size=self.batch_size)

    def _write_overlay(self, name: str, image: np.ndarray, records: list[dict[str, Any]]) -> None:
        from mrcnn.visualize import overlay_png

        path = join_path(self.out_root, OVERLAYS_DIR, name)
        self.out_fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        write_atomic(path, buffer.getvalue(), fs=self.out_fs)

    def __call__(self, batch: pa.Table) -> pa.Table:
        """Segment one batch of input rows, write its part file, return one status row per image.

        Args:
            batch (pa.Table): work items of :func:`_open_input`, no pixels: ``key``, ``file_name``,
                ``image_id`` (null for a folder), ``path`` (the image file, or the shard file),
                ``row_group`` and ``row`` (where in the shard file; null for a folder), ``overlay``
                (the overlay file's name); any number of rows.

        Returns:
            pa.Table: ``key``, ``status`` (``"ok"`` or the reject reason), ``num_detections``, ``part``.
        """
        rows = batch.to_pylist()
        out_rows: list[dict[str, Any]] = []
        decoded: list[tuple[int, np.ndarray]] = []
        for index, (row, data) in enumerate(zip(rows, self._read_bytes(rows))):
            out_row = dict.fromkeys(PART_COLUMNS)
            out_row.update(key=row["key"], file_name=row["file_name"], image_id=row["image_id"])
            out_rows.append(out_row)
            try:
                if isinstance(data, ImageDecodeError):
                    raise data
                pixels = decode_image(data, source=_source(row))
            except ImageDecodeError as exc:
                out_row.update(status=exc.reason, message=str(exc))
                continue
            decoded.append((index, pixels))
        predictions = self._predict([pixels for _, pixels in decoded])
        for (index, pixels), records in zip(decoded, predictions):
            row, out_row = rows[index], out_rows[index]
            height, width = pixels.shape[:2]
            out_row.update(height=height, width=width)
            if isinstance(records, Exception):
                out_row.update(status="inference_error", message=f"{row['file_name']}: model failed: {records}")
                continue
            if self.overlays:
                self._write_overlay(row["overlay"], pixels, records)
            out_row.update(status=OK, **segment_columns(records))
        part = part_file_name(r["key"] for r in out_rows)
        table = pa.Table.from_pylist(out_rows, schema=self.schema)
        parts_dir = join_path(self.out_root, PARTS_DIR)
        write_atomic(join_path(parts_dir, part), _table_bytes(table), fs=self.out_fs)
        return pa.table(
            {
                "key": [r["key"] for r in out_rows],
                "status": [r["status"] for r in out_rows],
                "num_detections": pa.array([len(r["scores"] or ()) for r in out_rows], type=pa.int32()),
                "part": [part] * len(out_rows),
            }
        )


# ---------------------------------------------------------------- input
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


# ---------------------------------------------------------------- output folder
def _manifest(inp: _Input, model_uri: str, sha256: str, score_threshold: float, mask_threshold: float, overlays: bool) -> dict:
    return {
        "version": MANIFEST_VERSION,
        "input": inp.resolved,
        "input_kind": inp.kind,
        "model_uri": str(model_uri),
        "model_sha256": sha256,
        "score_threshold": score_threshold,
        "mask_threshold": mask_threshold,
        "overlays": overlays,
    }


# Fields that must agree for a re-run to add to the same folder (model_uri may change: the hash decides).
_RESUME_FIELDS = ("version", "input", "input_kind", "model_sha256", "score_threshold", "mask_threshold", "overlays")


def _clear_outputs(fs: pafs.FileSystem, root: str) -> None:
    for name in (PARTS_DIR, OVERLAYS_DIR):
        if fs.get_file_info(join_path(root, name)).type == pafs.FileType.Directory:
            fs.delete_dir(join_path(root, name))
    for name in (RESULTS_FILE, DETECTIONS_FILE, REJECTS_FILE, SUMMARY_FILE, MANIFEST_FILE):
        if is_file(fs, join_path(root, name)):
            fs.delete_file(join_path(root, name))


def _prepare_out(fs: pafs.FileSystem, root: str, shown: str, manifest: dict, overwrite: bool) -> None:
    """Check a previous run's manifest (refuse a mismatch unless ``overwrite``), then write this one."""
    path = join_path(root, MANIFEST_FILE)
    parts_dir = join_path(root, PARTS_DIR)
    if overwrite:
        _clear_outputs(fs, root)
    elif is_file(fs, path):
        try:
            previous = json.loads(read_bytes(fs, path))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{shown}/{MANIFEST_FILE}: not valid json ({exc}); use --overwrite to start again") from None
        changed = [name for name in _RESUME_FIELDS if previous.get(name) != manifest[name]]
        if changed:
            details = "; ".join(f"{name}: {previous.get(name)!r} before, {manifest[name]!r} now" for name in changed)
            raise ValueError(
                f"{shown} holds results of a different run ({details}); resuming needs the same input, model and "
                f"options: use another --out, or --overwrite to discard them"
            )
    elif fs.get_file_info(parts_dir).type == pafs.FileType.Directory and list_files(fs, parts_dir, recursive=False):
        raise ValueError(f"{shown}: has part files but no {MANIFEST_FILE}; use --overwrite to discard them")
    fs.create_dir(parts_dir, recursive=True)
    stale = list_files(fs, root, recursive=False) + list_files(fs, parts_dir, recursive=False)
    stale += list_files(fs, join_path(root, OVERLAYS_DIR), recursive=True)
    for info in stale:
        if is_tmp(info.base_name):
            fs.delete_file(info.path)  # a write that a crash interrupted
    write_atomic(path, json.dumps(manifest, indent=1) + "\n", fs=fs)


def _part_paths(fs: pafs.FileSystem, root: str) -> list[str]:
    parts_dir = join_path(root, PARTS_DIR)
    return sorted(
        info.path
        for info in list_files(fs, parts_dir, recursive=False)
        if info.base_name.startswith("part-") and info.base_name.endswith(".parquet")
    )


def _read_part(fs: pafs.FileSystem, path: str, columns: list[str] | None = None) -> pa.Table:
    with fs.open_input_file(path) as handle:
        table = pq.read_table(handle, columns=columns)
    schema = segment_schema(PART_COLUMNS)
    for name in PART_COLUMNS if columns is None else ():
        if name not in table.column_names:  # a part written before the column existed (keypoints): nulls
            table = table.append_column(schema.field(name), pa.nulls(table.num_rows, type=schema.field(name).type))
    return table


def _done_keys(fs: pafs.FileSystem, root: str, *, retry_rejects: bool) -> set[str]:
    """Keys of the images a re-run skips: those with results, and those rejected for a reason that
    does not go away by trying again (not an image, truncated, ...) unless ``retry_rejects``."""
    done: set[str] = set()
    for path in _part_paths(fs, root):
        table = _read_part(fs, path, ["key", "status"])
        for key, status in zip(table.column("key").to_pylist(), table.column("status").to_pylist()):
            if status == OK or not (retry_rejects or status in RETRIED_REASONS):
                done.add(key)
    return done


def _assemble(fs: pafs.FileSystem, root: str, shown: str, formats: str) -> dict[str, Any]:
    """Write results.json / detections.parquet / rejects.jsonl from the part files, one row per image.

    Pass 1 reads keys and statuses and picks one row per image (a result over a reject, else the
    first); pass 2 streams the chosen rows part by part.
    """
    parts = _part_paths(fs, root)
    chosen: dict[str, tuple[int, int, bool]] = {}  # key -> (part index, row, is result)
    duplicates = 0
    for part_index, path in enumerate(parts):
        table = _read_part(fs, path, ["key", "status"])
        for row, (key, status) in enumerate(zip(table.column("key").to_pylist(), table.column("status").to_pylist())):
            previous = chosen.get(key)
            if previous is not None and previous[2] and status == OK:
                duplicates += 1
            if previous is None or (status == OK and not previous[2]):
                chosen[key] = (part_index, row, status == OK)
    keep: dict[int, set[int]] = {}
    for part_index, row, _ in chosen.values():
        keep.setdefault(part_index, set()).add(row)

    want_coco = formats in ("coco", "both")
    want_parquet = formats in ("parquet", "both")
    schema = segment_schema()
    outputs = {name: join_path(root, name) for name in (RESULTS_FILE, DETECTIONS_FILE, REJECTS_FILE)}
    tmp = {name: tmp_path(path) for name, path in outputs.items()}
    rejects: Counter = Counter()
    num_results = num_detections = 0
    coco_stream = fs.open_output_stream(tmp[RESULTS_FILE]) if want_coco else None
    parquet_stream = fs.open_output_stream(tmp[DETECTIONS_FILE]) if want_parquet else None
    writer = pq.ParquetWriter(parquet_stream, schema) if want_parquet else None
    rejects_stream = fs.open_output_stream(tmp[REJECTS_FILE])
    first_record = True
    try:
        if coco_stream is not None:
            coco_stream.write(b"[")
        for part_index, path in enumerate(parts):
            rows = keep.get(part_index)
            if not rows:
                continue
            table = _read_part(fs, path)
            table = table.take(pa.array(sorted(rows), type=pa.int64()))
            status = table.column("status").to_pylist()
            ok_mask = pa.array([s == OK for s in status])
            results = table.filter(ok_mask)
            for record in table.filter(pc.invert(ok_mask)).select(["key", "file_name", "image_id", "status", "message"]).to_pylist():
                rejects[record["status"]] += 1
                line = {"key": record["key"], "file": record["file_name"], "image_id": record["image_id"],
                        "reason": record["status"], "message": record["message"]}  # fmt: skip
                rejects_stream.write((json.dumps(line) + "\n").encode())
            num_results += results.num_rows
            num_detections += sum(len(s) for s in results.column("scores").to_pylist())
            if writer is not None and results.num_rows:
                writer.write_table(results.select(list(SEGMENT_COLUMNS)).cast(schema))
            if coco_stream is not None:
                for row in results.select(list(SEGMENT_COLUMNS)).to_pylist():
                    for det in row_to_records(row):
                        record = coco_result(det, image_id=row["image_id"], file_name=row["file_name"])
                        coco_stream.write((("" if first_record else ",\n") + json.dumps(record)).encode())
                        first_record = False
        if coco_stream is not None:
            coco_stream.write(b"]\n")
    finally:
        if writer is not None:
            writer.close()
        for stream in (coco_stream, parquet_stream, rejects_stream):
            if stream is not None:
                stream.close()
    shown_outputs: dict[str, str] = {}
    for name, kind in ((RESULTS_FILE, "results"), (DETECTIONS_FILE, "detections"), (REJECTS_FILE, "rejects")):
        wanted = {RESULTS_FILE: want_coco, DETECTIONS_FILE: want_parquet, REJECTS_FILE: True}[name]
        if wanted:
            fs.move(tmp[name], outputs[name])
            shown_outputs[kind] = f"{shown}/{name}"
        elif is_file(fs, outputs[name]):
            fs.delete_file(outputs[name])  # another --format's file from an earlier run: it would be stale
    return {
        "num_results": num_results,
        "num_detections": num_detections,
        "rejects_by_reason": dict(sorted(rejects.items())),
        "duplicates_dropped": duplicates,
        "outputs": shown_outputs,
    }


# ---------------------------------------------------------------- driver
def _check_options(*, workers, batch_size, part_size, score_threshold, mask_threshold, output_format, cpus_per_worker):
    for name, value in (("workers", workers), ("batch_size", batch_size), ("part_size", part_size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
            raise ValueError(f"{name}: expected a positive int, got {value!r}")
    for name, value in (("score_threshold", score_threshold), ("mask_threshold", mask_threshold)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name}: expected a value in [0, 1], got {value!r}")
    if output_format not in FORMATS:
        raise ValueError(f"format: expected one of {', '.join(FORMATS)}, got {output_format!r}")
    if cpus_per_worker is not None and cpus_per_worker <= 0:
        raise ValueError(f"cpus_per_worker: expected a positive number, got {cpus_per_worker!r}")


def _default_workers(gpu: bool, cpus_per_worker: float) -> int:
    """One actor per GPU; on CPU as many as the cluster's CPUs hold."""
    import ray

    resources = ray.cluster_resources()
    if gpu:
        num_gpus = int(resources.get("GPU", 0))
        if num_gpus < 1:
            raise ValueError(
                "--gpu: the Ray cluster has no GPUs now; give --workers N to wait for N GPU workers "
                "(an autoscaling cluster starts them)"
            )
        return num_gpus
    return max(1, int(resources.get("CPU", 1) // cpus_per_worker))


def _build_dataset(inp: _Input, done: set[str], part_size: int):
    """The work items still to do, in blocks of ``part_size``, as a Ray Dataset.

    Only locations travel: each worker reads its images itself, so no read stage competes with
    the actor pool for CPUs (on a small cluster a pool holding every CPU would starve it).
    """
    import ray

    table = inp.table.filter(pa.array([key not in done for key in inp.table.column("key").to_pylist()]))
    blocks = [table.slice(start, part_size) for start in range(0, table.num_rows, part_size)]
    return ray.data.from_arrow(blocks), table.num_rows


_log = StageLog("segment", prefix="segment: ")


def segment(
    *,
    model: str | os.PathLike,
    input: str | os.PathLike,
    out: str | os.PathLike,
    workers: int | None = None,
    gpu: bool = False,
    overlays: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    part_size: int = DEFAULT_PART_SIZE,
    score_threshold: float = 0.5,
    mask_threshold: float = 0.5,
    output_format: str = "both",
    overwrite: bool = False,
    retry_rejects: bool = False,
    cpus_per_worker: float | None = None,
    tracking_uri: str | None = None,
    ray_address: str | None = None,
    progress: bool = True,
    fail_after_parts: int | None = None,
) -> SegmentSummary:
    """Segment every image of a folder (recursively) or of a Parquet shard set with an actor pool.

    Args:
        model: anything :func:`pipelines.tracking.resolve_model_uri` takes (``models:/NAME@best``,
            ``runs:/ID/path``, a local checkpoint file, ...).
        input: a folder of images (searched recursively for image suffixes), or a shard folder
            ``OUT/<split>`` written by ``mrcnn preprocess`` (path or URI).
        out: the output folder (path or URI); a re-run over it resumes (see the module docstring).
        workers (int | None): actors, each with one model. Default: one per GPU with ``gpu``, else
            the cluster's CPUs over ``cpus_per_worker``; never more than there are parts to do.
        gpu (bool): one GPU per actor, the model on ``cuda``.
        overlays (bool): write ``OUT/overlays/*.png`` with the masks drawn.
        batch_size (int): images per forward pass.
        part_size (int): images per actor call and per part file: larger amortises Ray's per-task
            overhead, smaller loses less work in a crash.
        score_threshold, mask_threshold (float): as ``mrcnn predict`` (both 0.5 by default).
        output_format (str): ``"coco"`` (results.json), ``"parquet"`` (detections.parquet) or ``"both"``.
        overwrite (bool): discard what ``out`` holds instead of resuming.
        retry_rejects (bool): on a re-run, try every image rejected before again; by default only
            those rejected for a reason that may pass (``RETRIED_REASONS``: I/O and model errors).
        cpus_per_worker (float | None): CPUs per actor (and torch threads on CPU); default 1.
        tracking_uri (str | None): MLflow store for ``models:/`` and ``runs:/`` URIs (default
            ``MLFLOW_TRACKING_URI``).
        ray_address (str | None): Ray cluster; default ``RAY_ADDRESS``, else a local Ray. A
            connected Ray is used as is.
        progress (bool): Ray Data's progress bars and progress lines on stderr.
        fail_after_parts (int | None): test hook: raise :class:`SegmentInterrupted` once this many
            part files are reported, as a crash of the driver would stop the run.

    Returns:
        SegmentSummary: also written to ``OUT/_summary.json``.

    Raises:
        FileNotFoundError: the input holds no images or shard files.
        ValueError: bad options, a bad model URI, or ``out`` holding another run's results.
    """
    start = time.perf_counter()
    _check_options(workers=workers, batch_size=batch_size, part_size=part_size, score_threshold=score_threshold,
                   mask_threshold=mask_threshold, output_format=output_format, cpus_per_worker=cpus_per_worker)  # fmt: skip
    out_fs, out_root = resolve_path(out)
    shown_out = os.fspath(out).rstrip("/") or os.fspath(out)
    inp = _open_input(input, out_fs, out_root)
    checkpoint = _load_model_bytes(model, tracking_uri)
    sha256 = hashlib.sha256(checkpoint).hexdigest()
    manifest = _manifest(inp, str(model), sha256, score_threshold, mask_threshold, overlays)
    out_fs.create_dir(out_root, recursive=True)
    _prepare_out(out_fs, out_root, shown_out, manifest, overwrite)

    done = _done_keys(out_fs, out_root, retry_rejects=retry_rejects)
    keys = inp.keys
    num_already_done = sum(1 for key in keys if key in done)
    statuses: Counter = Counter()
    pipeline_seconds = 0.0
    todo = len(keys) - num_already_done
    if progress:
        _log(f"{len(keys)} images in {inp.shown} ({inp.kind}); {num_already_done} already done; {todo} to do")
    if todo:
        with ray_session(ray_address):
            import ray

            cpus = cpus_per_worker or 1.0
            dataset, todo = _build_dataset(inp, done, part_size)
            num_workers = min(workers or _default_workers(gpu, cpus), -(-todo // part_size))
            checkpoint_ref = ray.put(checkpoint)
            dataset = dataset.map_batches(
                SegmentWorker,
                batch_size=part_size,
                batch_format="pyarrow",
                compute=ray.data.ActorPoolStrategy(size=num_workers),
                num_cpus=cpus,
                num_gpus=1 if gpu else None,
                fn_constructor_kwargs={
                    "checkpoint": checkpoint_ref,
                    "device": "cuda" if gpu else "cpu",
                    "num_threads": None if gpu else max(1, int(cpus)),
                    "score_threshold": score_threshold,
                    "mask_threshold": mask_threshold,
                    "batch_size": batch_size,
                    "out": display_path(out, out_fs, out_root),
                    "overlays": overlays,
                },
            )
            if progress:
                _log(f"{num_workers} worker(s) ({'1 GPU' if gpu else f'{cpus:g} CPU'} each), {part_size} images per part")
            context = ray.data.DataContext.get_current()
            previous_bars = context.enable_progress_bars
            context.enable_progress_bars = progress and previous_bars
            pipeline_start = last_report = time.perf_counter()
            parts_seen: set[str] = set()
            try:
                for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
                    statuses.update(batch.column("status").to_pylist())
                    parts_seen.update(batch.column("part").to_pylist())
                    now = time.perf_counter()
                    handled = sum(statuses.values())
                    if progress and (now - last_report > 10 or handled == todo):
                        last_report = now
                        rate = handled / (now - pipeline_start)
                        _log(f"{handled}/{todo} images ({handled - statuses[OK]} skipped), {rate:.2f} images/s")
                    if fail_after_parts is not None and len(parts_seen) >= fail_after_parts:
                        raise SegmentInterrupted(
                            f"stopped after {len(parts_seen)} part file(s) (fail_after_parts={fail_after_parts})"
                        )
            finally:
                context.enable_progress_bars = previous_bars
                del checkpoint_ref
            pipeline_seconds = time.perf_counter() - pipeline_start

    assembled = _assemble(out_fs, out_root, shown_out, output_format)
    outputs = dict(assembled["outputs"])
    if overlays:
        outputs["overlays"] = f"{shown_out}/{OVERLAYS_DIR}"
    outputs["summary"] = f"{shown_out}/{SUMMARY_FILE}"
    summary = SegmentSummary(
        input=inp.shown,
        input_kind=inp.kind,
        out_dir=shown_out,
        model_uri=str(model),
        model_sha256=sha256,
        num_inputs=len(keys),
        num_ignored_files=inp.num_ignored_files,
        num_already_done=num_already_done,
        num_processed=statuses[OK],
        num_rejected_now=sum(statuses.values()) - statuses[OK],
        num_results=assembled["num_results"],
        num_detections=assembled["num_detections"],
        rejects_by_reason=assembled["rejects_by_reason"],
        duplicates_dropped=assembled["duplicates_dropped"],
        outputs=outputs,
        seconds=time.perf_counter() - start,
        pipeline_seconds=pipeline_seconds,
    )
    write_atomic(join_path(out_root, SUMMARY_FILE), json.dumps(summary.to_dict(), indent=1) + "\n", fs=out_fs)
    return summary
