"""Resolve a model reference, export it with ``mrcnn.export`` and write the checked file atomically."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow.fs as pafs

from mrcnn.export import ONNX_OPSET, ParityReport
from pipelines.common.progress import StageLog
from pipelines.common.storage import display_path, is_image_name, list_files, read_bytes, resolve_path, write_atomic

_log = StageLog("export")


@dataclass(frozen=True)
class ExportSummary:
    """What ``export_model`` wrote: ``out`` (as given), its format, ONNX opset and size, and the check it passed."""

    model: str
    out: str
    fmt: str
    opset: int | None
    num_bytes: int
    report: ParityReport

    def format(self) -> str:
        """The parity check per sample image, then the file written."""
        kind = f"onnx, opset {self.opset}" if self.fmt == "onnx" else self.fmt
        return "\n".join([*self.report.lines(), f"wrote {self.out} ({kind}, {self.num_bytes / 1e6:.1f} MB)"])


def load_sample_images(paths: Sequence[str | os.PathLike]) -> dict[str, np.ndarray]:
    """The images at ``paths`` (files or folders, local or ``s3://``/``gs://``), by path, as H x W x 3 uint8 RGB.

    Raises:
        FileNotFoundError: a path that does not exist; ValueError: a folder without images.
        mrcnn.data.images.ImageDecodeError: a file that is not a readable image.
    """
    from mrcnn.data.images import decode_image

    images: dict[str, np.ndarray] = {}
    for original in paths:
        fs, path = resolve_path(original)
        kind = fs.get_file_info(path).type
        if kind == pafs.FileType.File:
            files = [path]
        elif kind == pafs.FileType.Directory:
            files = sorted(info.path for info in list_files(fs, path, recursive=False) if is_image_name(info.base_name))
            if not files:
                raise ValueError(f"sample images: {original}: no images in this folder")
        else:
            raise FileNotFoundError(f"sample images: {original}: no such file or folder")
        for file in files:
            name = display_path(original, fs, file)
            images[name] = decode_image(read_bytes(fs, file), source=name)
    return images


def export_model(
    model_ref: str | os.PathLike,
    *,
    fmt: str,
    out: str | os.PathLike,
    tracking_uri: str | None = None,
    sample_images: Sequence[str | os.PathLike] | None = None,
    score_threshold: float = 0.5,
    opset: int = ONNX_OPSET,
    arch: str | None = None,
) -> ExportSummary:
    """Export a model to ``out`` after checking the exported file against PyTorch (``mrcnn.export.export_model``).

    Args:
        model_ref: a checkpoint file, ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or ``runs:/RUN_ID/path``.
        fmt: ``"onnx"`` or ``"torchscript"``.
        out: the file to write, a local path or ``s3://``/``gs://`` URI; replaced atomically, and left as it
            was (or absent) when the check fails.
        tracking_uri: the MLflow store for ``models:/`` and ``runs:/`` references (default: MLFLOW_TRACKING_URI).
        sample_images: image files or folders for the parity check (at least two sizes in all); default:
            two synthetic scenes (``mrcnn.export.default_sample_images``).
        score_threshold: detections below it are dropped inside the exported graph.
        opset: ONNX opset version.
        arch: preset name for a bare torchvision state dict.

    Raises:
        ValueError: an unknown reference, alias or version (one line, from ``resolve_model_uri``), a bad
            format, or sample images of one size; mrcnn.export.ExportCheckError: the parity check failed
            (the message names the image, the detection and the difference; nothing is written).
    """
    from mrcnn import export as mrcnn_export
    from mrcnn.checkpoint import load_checkpoint
    from pipelines.tracking import resolve_model_uri

    if fmt not in mrcnn_export.FORMATS:
        raise ValueError(f"export format: expected one of {', '.join(mrcnn_export.FORMATS)}, got {fmt!r}")
    samples = load_sample_images(sample_images) if sample_images else None
    with tempfile.TemporaryDirectory(prefix="mrcnn-export-") as tmp:
        path = resolve_model_uri(model_ref, tracking_uri=tracking_uri, dst_dir=tmp)
        model = load_checkpoint(path, arch=arch).build_model()
    _log(f"{model_ref}: exporting to {fmt} and checking it on {len(samples) if samples else 2} sample images")
    try:
        result = mrcnn_export.export_model(model, fmt=fmt, sample_images=samples, score_threshold=score_threshold, opset=opset)
    except mrcnn_export.ExportCheckError as exc:
        raise mrcnn_export.ExportCheckError(f"{exc}; {out} was not written") from exc
    write_atomic(out, result.data)
    return ExportSummary(model=str(model_ref), out=str(out), fmt=fmt, opset=opset if fmt == "onnx" else None,
                         num_bytes=len(result.data), report=result.report)  # fmt: skip
