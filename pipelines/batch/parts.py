"""The output folder of a segment run: part files, the manifest, resume, and the assembled outputs.

``OUT/_parts/part-<h>.parquet`` holds one batch of images (rows of :data:`PART_COLUMNS`), written as
tmp + rename by the actor that made it; ``OUT/_segment.json`` (the manifest) says what the folder holds.
:func:`_done_keys` gives the images a re-run skips, and :func:`_assemble` writes ``results.json``,
``detections.parquet`` and ``rejects.jsonl`` from the part files, one row per image.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from mrcnn.records import SEGMENT_COLUMNS, coco_result, row_to_records
from pipelines.common.storage import is_file, is_tmp, join_path, list_files, read_bytes, tmp_path, write_atomic
from pipelines.shards import columns_schema

if TYPE_CHECKING:
    from pipelines.batch.inputs import _Input

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


def _table_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def part_file_name(keys: Iterable[str]) -> str:
    """``part-<hash>.parquet``: the same images give the same name, so a retried batch replaces its file."""
    digest = hashlib.sha1("\n".join(sorted(keys)).encode()).hexdigest()[:20]
    return f"part-{digest}.parquet"


# ---------------------------------------------------------------- output folder
def _manifest(inp: _Input, model_uri: str, sha256: str, score_threshold: float, mask_threshold: float, overlays: bool,
              class_thresholds: dict[int, float] | None = None) -> dict:  # fmt: skip
    """The ``_segment.json`` object: what the output folder holds (input, model, the options that change results);
    ``class_thresholds`` (``{"category_id": score}``) only where per-class thresholds were in force."""
    thresholds = {"class_thresholds": {str(k): v for k, v in sorted(class_thresholds.items())}} if class_thresholds else {}
    return {
        "version": MANIFEST_VERSION,
        "input": inp.resolved,
        "input_kind": inp.kind,
        "model_uri": str(model_uri),
        "model_sha256": sha256,
        "score_threshold": score_threshold,
        "mask_threshold": mask_threshold,
        "overlays": overlays,
        **thresholds,
    }


# Fields that must agree for a re-run to add to the same folder (model_uri may change: the hash decides).
_RESUME_FIELDS = ("version", "input", "input_kind", "model_sha256", "score_threshold", "mask_threshold", "overlays",
                  "class_thresholds")  # fmt: skip


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
        changed = [name for name in _RESUME_FIELDS if previous.get(name) != manifest.get(name)]
        if changed:
            details = "; ".join(f"{name}: {previous.get(name)!r} before, {manifest.get(name)!r} now" for name in changed)
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


# ---------------------------------------------------------------- assembling the outputs
def _choose_rows(fs: pafs.FileSystem, parts: list[str]) -> tuple[dict[int, set[int]], int]:
    """One row per image over all part files: a result over a reject, else the first.

    Returns:
        ({part index: row indices to keep}, duplicates): duplicates counts results of an image beyond its first.
    """
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
    return keep, duplicates


class _Outputs:
    """``results.json`` (``coco``/``both``), ``detections.parquet`` (``parquet``/``both``) and ``rejects.jsonl``,
    written to tmp files part by part (:meth:`write`) and moved in place by :meth:`move_into_place`."""

    def __init__(self, fs: pafs.FileSystem, root: str, formats: str) -> None:
        self.fs = fs
        self.wanted = {RESULTS_FILE: formats in ("coco", "both"), DETECTIONS_FILE: formats in ("parquet", "both"),
                       REJECTS_FILE: True}  # fmt: skip
        self.paths = {name: join_path(root, name) for name in self.wanted}
        self.tmp = {name: tmp_path(path) for name, path in self.paths.items()}
        self.schema = segment_schema()
        self.rejects: Counter = Counter()
        self.num_results = self.num_detections = 0
        self._first_record = True
        self.streams = {name: fs.open_output_stream(self.tmp[name]) for name, wanted in self.wanted.items() if wanted}
        coco, parquet = self.streams.get(RESULTS_FILE), self.streams.get(DETECTIONS_FILE)
        self.writer = pq.ParquetWriter(parquet, self.schema) if parquet is not None else None
        if coco is not None:
            coco.write(b"[")

    def write(self, table: pa.Table) -> None:
        """Add the chosen rows of one part file (rows of ``PART_COLUMNS``)."""
        ok_mask = pa.array([s == OK for s in table.column("status").to_pylist()])
        results = table.filter(ok_mask)
        for record in table.filter(pc.invert(ok_mask)).select(["key", "file_name", "image_id", "status", "message"]).to_pylist():
            self.rejects[record["status"]] += 1
            line = {"key": record["key"], "file": record["file_name"], "image_id": record["image_id"],
                    "reason": record["status"], "message": record["message"]}  # fmt: skip
            self.streams[REJECTS_FILE].write((json.dumps(line) + "\n").encode())
        self.num_results += results.num_rows
        self.num_detections += sum(len(s) for s in results.column("scores").to_pylist())
        if self.writer is not None and results.num_rows:
            self.writer.write_table(results.select(list(SEGMENT_COLUMNS)).cast(self.schema))
        coco = self.streams.get(RESULTS_FILE)
        if coco is not None:
            for row in results.select(list(SEGMENT_COLUMNS)).to_pylist():
                for det in row_to_records(row):
                    record = coco_result(det, image_id=row["image_id"], file_name=row["file_name"])
                    coco.write((("" if self._first_record else ",\n") + json.dumps(record)).encode())
                    self._first_record = False

    def end(self) -> None:
        """Close the json array (only once every part is written)."""
        if RESULTS_FILE in self.streams:
            self.streams[RESULTS_FILE].write(b"]\n")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        for stream in self.streams.values():
            stream.close()

    def move_into_place(self, shown: str) -> dict[str, str]:
        """Move the tmp files to their names and delete another ``--format``'s file of an earlier run (it
        would be stale). Returns ``{"results"|"detections"|"rejects": shown path}`` of the files written."""
        shown_outputs: dict[str, str] = {}
        for name, kind in ((RESULTS_FILE, "results"), (DETECTIONS_FILE, "detections"), (REJECTS_FILE, "rejects")):
            if self.wanted[name]:
                self.fs.move(self.tmp[name], self.paths[name])
                shown_outputs[kind] = f"{shown}/{name}"
            elif is_file(self.fs, self.paths[name]):
                self.fs.delete_file(self.paths[name])
        return shown_outputs


def _assemble(fs: pafs.FileSystem, root: str, shown: str, formats: str) -> dict[str, Any]:
    """Write results.json / detections.parquet / rejects.jsonl from the part files, one row per image.

    Pass 1 reads keys and statuses and picks one row per image (a result over a reject, else the
    first); pass 2 streams the chosen rows part by part.

    Returns:
        ``num_results``, ``num_detections``, ``rejects_by_reason`` (sorted by reason), ``duplicates_dropped``
        and ``outputs`` (``{"results"|"detections"|"rejects": shown path}``).
    """
    parts = _part_paths(fs, root)
    keep, duplicates = _choose_rows(fs, parts)
    outputs = _Outputs(fs, root, formats)
    try:
        for part_index, path in enumerate(parts):
            rows = keep.get(part_index)
            if rows:
                outputs.write(_read_part(fs, path).take(pa.array(sorted(rows), type=pa.int64())))
        outputs.end()
    finally:
        outputs.close()
    return {
        "num_results": outputs.num_results,
        "num_detections": outputs.num_detections,
        "rejects_by_reason": dict(sorted(outputs.rejects.items())),
        "duplicates_dropped": duplicates,
        "outputs": outputs.move_into_place(shown),
    }
