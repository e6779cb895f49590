"""The evaluation report of ``mrcnn evaluate``: written to a folder, and logged to the model's MLflow run.

The report is :func:`mrcnn.report.write_report`'s, the same files as the final evaluation of ``mrcnn train``
logs under ``report/`` (per-class AP/AR CSV, PR curves at IoU .50 and .75, confusion matrices at IoU .5, the
worst images per class where the images are local files). It goes

- to a folder: ``--report DIR``, else ``OUT/report/`` (a URI ``OUT`` gets a copy of the files);
- for a model that an MLflow run produced (``models:/NAME@ALIAS``, ``models:/NAME/VERSION``: the run of the
  version; ``runs:/RUN_ID/...``: that run), to that run as well: the files under
  ``evaluate/<name>/report/``, ``metrics.json`` under ``evaluate/<name>/``, and the COCO numbers as metrics
  ``evaluate/<name>/<iou_type>/<stat>`` (``evaluate/val-annotations/segm/AP``) and
  ``evaluate/<name>/<iou_type>_per_category/<class>``. ``<name>`` names the evaluated data
  (:func:`report_name`), so evaluating other data never overwrites it, nor the training's ``report/``.

A model given as a file has no run: the report is written to the folder only (one line says so).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

__all__ = ["ARTIFACT_ROOT", "ReportDestination", "model_run_id", "publish_report", "report_name"]

ARTIFACT_ROOT = "evaluate"  # the run's artifact folder (and metric prefix) of every evaluation of its model
REPORT_DIR = "report"


@dataclass(frozen=True)
class ReportDestination:
    """Where :func:`publish_report` put the report.

    Attributes:
        local_dir: the folder (path or URI) holding the report's files.
        run_id: the MLflow run it was logged to; None for a model without a run.
        artifact_path: the report's artifact folder in that run (``evaluate/<name>/report``); None without a run.
        metric_prefix: the prefix of the metrics logged to that run (``evaluate/<name>/``); None without a run.
    """

    local_dir: str
    run_id: str | None = None
    artifact_path: str | None = None
    metric_prefix: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"dir": self.local_dir, "run_id": self.run_id, "artifact_path": self.artifact_path,
                "metric_prefix": self.metric_prefix}  # fmt: skip


def report_name(source: str) -> str:
    """A short, stable name of the evaluated data, from its path: the last two path components, a file's
    suffix dropped, joined with ``-`` (``/data/out/val`` -> ``out-val``, ``coco/annotations/instances_val2017.json``
    -> ``annotations-instances_val2017``); characters other than letters, digits, ``_``, ``.``, ``-`` become ``_``."""
    path = urllib.parse.urlparse(source).path if "://" in source else source
    parts = [p for p in PurePosixPath(path.replace("\\", "/")).parts if p not in ("/", ".", "")]
    if parts and PurePosixPath(parts[-1]).suffix.lower() == ".json":
        parts[-1] = PurePosixPath(parts[-1]).stem
    name = "-".join(re.sub(r"[^A-Za-z0-9_.-]+", "_", p) for p in parts[-2:]).strip("-._")
    return name or "data"


def model_run_id(model: str, tracking_uri: str | None) -> str | None:
    """The MLflow run that produced ``model``: a registered version's run, or the run of a ``runs:/`` URI;
    None for a file (or a version registered without a run).

    Raises:
        ValueError: an unknown model, alias, version or run (as :func:`pipelines.tracking.describe_model`).
    """
    if urllib.parse.urlparse(str(model)).scheme not in ("models", "runs"):
        return None
    from pipelines.tracking import describe_model

    return describe_model(str(model), tracking_uri=tracking_uri)["run_id"] or None


def _copy_to(local: Path, target: str) -> str:
    """Copy the files of ``local`` into ``target`` (a path or a filesystem URI); returns the shown target."""
    import pyarrow.fs as pafs

    from pipelines.common.storage import display_path, resolve_path

    fs, root = resolve_path(target)
    fs.create_dir(root, recursive=True)
    pafs.copy_files(str(local), root, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    return display_path(target, fs, root)


def _local_dir(images: str | None) -> str | None:
    """``images`` when it is a local folder the report can draw overlays from; None for URIs and shards."""
    if images is None or "://" in images:
        return None
    return images if Path(images).is_dir() else None


def publish_report(
    *,
    gt: Mapping[str, Any],
    results: Sequence[Mapping[str, Any]],
    metrics: Mapping[str, Mapping[str, Any]],
    summary: Mapping[str, Any],
    iou_types: Sequence[str],
    name: str,
    out: str,
    report_dir: str | os.PathLike | None = None,
    run_id: str | None = None,
    tracking_uri: str | None = None,
    images: str | None = None,
    category_names: Mapping[int, str] | None = None,
    score_threshold: float | Mapping[int, float] | None = None,
) -> ReportDestination:
    """Write the evaluation report, and log it (with ``metrics``) to ``run_id`` where the model has a run.

    Args:
        gt: the COCO ground truth the results were scored against.
        results: COCO results records (``image_id`` set), every detection the model kept.
        metrics: :func:`mrcnn.evaluation.evaluate_coco`'s output (AP in percent, ``per_category`` included).
        summary: ``metrics.json``'s contents, logged beside the report.
        iou_types: bbox, segm, keypoints: the report's.
        name: the evaluated data's name (:func:`report_name`).
        out: the evaluation's output folder (path or URI); the report goes to ``OUT/report`` without ``report_dir``.
        report_dir: a local folder for the report instead.
        run_id: the model's MLflow run (:func:`model_run_id`), or None.
        tracking_uri: the MLflow store of ``run_id`` (default ``MLFLOW_TRACKING_URI``).
        images: the ground truth's image folder: a local one gives the worst images as overlays.
        category_names: ``{category_id: name}`` for the report's files.
        score_threshold: per-class ``{category_id: score}`` (calibrated, from the model) or one float for the
            confusion matrices and the worst images; None: the report's default (0.5).

    Raises:
        ValueError: the run cannot be written to (one line, naming the run).
    """
    from mrcnn.report import write_report

    options: dict[str, Any] = {"iou_types": tuple(iou_types), "category_names": category_names, "images_dir": _local_dir(images)}
    if score_threshold is not None:
        options["score_threshold"] = score_threshold
    with tempfile.TemporaryDirectory(prefix="mrcnn-evaluate-report-") as tmp:
        local = Path(report_dir) if report_dir is not None else Path(tmp) / REPORT_DIR
        write_report(local, gt, results, **options)
        shown = str(local) if report_dir is not None else _copy_to(local, f"{out.rstrip('/')}/{REPORT_DIR}")
        if run_id is None:
            return ReportDestination(local_dir=shown)
        prefix = f"{ARTIFACT_ROOT}/{name}"
        _log_to_run(run_id, tracking_uri, local, Path(tmp) / "metrics.json", summary, metrics, prefix)
    return ReportDestination(local_dir=shown, run_id=run_id, artifact_path=f"{prefix}/{REPORT_DIR}", metric_prefix=f"{prefix}/")


def _log_to_run(run_id: str, tracking_uri: str | None, report: Path, summary_file: Path, summary: Mapping[str, Any],
                metrics: Mapping[str, Mapping[str, Any]], prefix: str) -> None:  # fmt: skip
    from pipelines.tracking import Tracker
    from pipelines.tracking.store import env_tracking_uri, one_line

    tracker = Tracker.attach(env_tracking_uri(tracking_uri), run_id)  # leaves the run's status as it is
    summary_file.write_text(json.dumps(summary, indent=1) + "\n")
    try:
        tracker.log_artifact(report, f"{prefix}/{REPORT_DIR}")
        tracker.log_artifact(summary_file, prefix)
        tracker.log_eval(metrics, step=0, prefix=f"{prefix}/")
    except Exception as exc:
        raise ValueError(f"run {run_id}: could not log the evaluation report ({one_line(exc)})") from None
