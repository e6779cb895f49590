"""The Ray Data actor of a segment run: :class:`SegmentWorker`, one model per actor.

As Ray's batch-inference guide has it, the model is loaded once in ``__init__`` and ``__call__`` only
infers: it reads and decodes its batch of images, runs the model ``batch_size`` images per forward pass
(:meth:`mrcnn.predictor.Predictor.predict_each`, with its per-image fallback), writes the overlays, then
writes one part file, and returns one small status row per image.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from mrcnn.data.images import ImageDecodeError, decode_image
from mrcnn.records import segment_columns
from pipelines.batch.parts import (
    OK,
    OVERLAYS_DIR,
    PART_COLUMNS,
    PARTS_DIR,
    _table_bytes,
    part_file_name,
    segment_schema,
)
from pipelines.common.storage import join_path, read_bytes, resolve_path, write_atomic

DEFAULT_BATCH_SIZE = 2  # images per forward pass (as `mrcnn predict`)


def _source(row: dict[str, Any]) -> str:
    """An input row as messages name it."""
    return row["file_name"] if row["image_id"] is None else f"image {row['image_id']} ({row['file_name']})"


def _read_file(fs: pafs.FileSystem, path: str, source: str) -> bytes | ImageDecodeError:
    """An image file's bytes, or why they cannot be read (``missing_file``, ``read_error``)."""
    try:
        return read_bytes(fs, path)
    except FileNotFoundError:
        return ImageDecodeError(f"{source}: file not found", source=source, reason="missing_file")
    except OSError as exc:
        return ImageDecodeError(f"{source}: cannot read file: {exc}", source=source, reason="read_error")


def _read_row_group(fs: pafs.FileSystem, path: str, row: dict[str, Any]) -> pa.Table | ImageDecodeError:
    """The ``image_id`` and ``image`` columns of the work item's row group, or a ``read_error``."""
    source = _source(row)
    try:
        with fs.open_input_file(path) as handle:
            return pq.ParquetFile(handle).read_row_group(row["row_group"], columns=["image_id", "image"])
    except (OSError, pa.ArrowException) as exc:
        return ImageDecodeError(
            f"{source}: cannot read row group {row['row_group']} of {row['path']}: {exc}", source=source, reason="read_error"
        )


def _shard_row_bytes(table: pa.Table | ImageDecodeError, row: dict[str, Any]) -> bytes | ImageDecodeError:
    """The work item's image bytes from its row group: a ``read_error`` where the file changed since it
    was listed (another image id at that row), ``empty`` where the row holds no bytes."""
    source = _source(row)
    if isinstance(table, ImageDecodeError):
        return table
    if row["row"] >= table.num_rows or table.column("image_id")[row["row"]].as_py() != row["image_id"]:
        return ImageDecodeError(
            f"{source}: {row['path']} changed since it was listed (row group {row['row_group']}, row {row['row']})",
            source=source, reason="read_error",
        )  # fmt: skip
    data = table.column("image")[row["row"]].as_py()
    if data is None:
        return ImageDecodeError(f"{source}: the shard row has no image bytes", source=source, reason="empty")
    return data


class SegmentWorker:
    """The ``map_batches`` callable of the actor pool: one model per actor, loaded once here.

    Args:
        checkpoint: the checkpoint file's bytes, or an ObjectRef to them (sent once per actor).
        device (str): ``"cpu"`` or ``"cuda"``.
        num_threads (int | None): torch CPU threads (the actor's CPUs); None leaves torch's default.
        score_threshold, mask_threshold (float): as :class:`mrcnn.predictor.Predictor`.
        class_thresholds (dict[int, float]): per-class score thresholds ``{category_id: score}`` ({}: none,
            ``score_threshold`` alone), as :class:`mrcnn.predictor.Predictor`; the driver has resolved them.
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
        class_thresholds: dict[int, float] | None = None,
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
                class_thresholds=dict(class_thresholds or {}), optimize={"winograd": winograd},
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
            fs, path = resolve_path(row["path"])
            if row.get("row_group") is None:
                out.append(_read_file(fs, path, _source(row)))
                continue
            group = (row["path"], row["row_group"])
            if group not in row_groups:
                row_groups[group] = _read_row_group(fs, path, row)
            out.append(_shard_row_bytes(row_groups[group], row))
        return out

    def _predict(self, images: list[np.ndarray]) -> list[list[dict[str, Any]] | Exception]:
        """Records per image, ``batch_size`` at a time; a failing forward pass is retried one image at a time."""
        return self.predictor.predict_each(images, batch_size=self.batch_size)

    def _write_overlay(self, name: str, image: np.ndarray, records: list[dict[str, Any]]) -> None:
        from mrcnn.visualize import overlay_png

        path = join_path(self.out_root, OVERLAYS_DIR, name)
        write_atomic(path, overlay_png(image, records, skeletons=self.predictor.categories.skeletons), fs=self.out_fs)

    def _write_part(self, out_rows: list[dict[str, Any]]) -> str:
        """Write the batch's part file (tmp + rename); returns its name."""
        part = part_file_name(r["key"] for r in out_rows)
        table = pa.Table.from_pylist(out_rows, schema=self.schema)
        write_atomic(join_path(self.out_root, PARTS_DIR, part), _table_bytes(table), fs=self.out_fs)
        return part

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
        part = self._write_part(out_rows)
        return pa.table(
            {
                "key": [r["key"] for r in out_rows],
                "status": [r["status"] for r in out_rows],
                "num_detections": pa.array([len(r["scores"] or ()) for r in out_rows], type=pa.int32()),
                "part": [part] * len(out_rows),
            }
        )

