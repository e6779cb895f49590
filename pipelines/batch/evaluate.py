"""``mrcnn evaluate``: COCO evaluation of a model URI on a whole split, spread over a Ray cluster.

The predictions are made by :func:`pipelines.batch.segment.segment` (a Ray Data actor pool, one model per
actor, ``--gpu`` for one GPU each) at the model's own score threshold (0.05 for the paper's presets),
into ``OUT/detections/`` (a re-run over the same ``OUT`` resumes). The driver then evaluates the COCO
results json against the ground truth with pycocotools (:func:`mrcnn.evaluation.evaluate_coco`) and
writes ``OUT/metrics.json`` and the evaluation report (:mod:`pipelines.batch.report`: ``OUT/report/`` or
``report=DIR``; for a model an MLflow run produced, also that run's artifacts ``evaluate/<name>/report/`` and
metrics ``evaluate/<name>/<iou_type>/<stat>``).

The ground truth comes from either

- a shard split ``OUT/<split>`` written by ``mrcnn preprocess`` (:func:`pipelines.shards.shards_to_coco_gt`),
  whose images are the shard rows, or
- a COCO instances json and its image folder (``annotations/instances_val2017.json`` + ``val2017/``).

Images the ground truth lists but that could not be read count as images without detections (and are
reported); images of the folder that the ground truth does not list are left out of the evaluation.
Paths may be local or pyarrow filesystem URIs (``s3://``).

The model is resolved and loaded once, on the driver (:func:`pipelines.batch.model.load_model`): its config
gives the score threshold and the IoU types, and its bytes go to segment's actors as they are. Each actor
(:class:`pipelines.batch.worker.SegmentWorker`) makes the malloc choice of :func:`mrcnn.runtime.keep_freed_memory`
and switches Winograd on with it (``optimize={"winograd": ...}``), as ``mrcnn segment`` does.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from pipelines.batch.model import load_model
from pipelines.batch.report import ReportDestination, model_run_id, publish_report, report_name
from pipelines.batch.segment import segment
from pipelines.common.storage import display_path, join_path, read_uri, resolve_path, write_atomic

__all__ = ["EvaluationSummary", "evaluate", "match_file_names"]

METRICS_FILE = "metrics.json"
DETECTIONS_DIR = "detections"


@dataclass(frozen=True)
class EvaluationSummary:
    """What :func:`evaluate` measured.

    metrics: ``{"bbox": {...}, "segm": {...}}`` as :func:`mrcnn.evaluation.evaluate_coco` (AP in percent,
        ``per_category`` included).
    num_images: images in the ground truth (all evaluated).
    num_rejected: ground-truth images that could not be read (evaluated as images without detections).
    num_detections: detections evaluated.
    report: where the evaluation report went (a folder, and the model's run); None before it is written.
    """

    model: str
    ground_truth: str
    out_dir: str
    score_threshold: float
    num_images: int
    num_rejected: int
    num_detections: int
    seconds: float
    metrics: dict[str, Any] = field(repr=False)
    report: ReportDestination | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "ground_truth": self.ground_truth, "out_dir": self.out_dir,
            "score_threshold": self.score_threshold, "num_images": self.num_images,
            "num_rejected": self.num_rejected, "num_detections": self.num_detections,
            "seconds": round(self.seconds, 1), "metrics": self.metrics,
            "report": self.report.to_dict() if self.report is not None else None,
        }  # fmt: skip


def _read_json(path: str) -> Any:
    data = read_uri(path)
    try:
        return json.loads(data)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid json ({exc})") from None


def _ground_truth(data: str | None, annotations: str | None, images: str | None) -> tuple[dict, str, str]:
    """(COCO gt dict, the input to segment, a description)."""
    from pipelines.shards import shards_to_coco_gt

    if data and (annotations or images):
        raise ValueError("evaluate: give --data SHARDS or --annotations ANN.json with --images DIR, not both")
    if data:
        return shards_to_coco_gt(data), data, f"shards {data}"
    if not (annotations and images):
        raise ValueError("evaluate needs --data OUT/<split> (shards), or --annotations ANN.json and --images DIR")
    gt = _read_json(annotations)
    if not isinstance(gt, dict) or not isinstance(gt.get("images"), list) or "annotations" not in gt:
        raise ValueError(f"{annotations}: expected a COCO instances json (images, annotations, categories)")
    return gt, images, f"{annotations} + {images}"


def _parts(name: str) -> tuple[str, ...]:
    """A file name's path components (``/`` or ``\\`` separated; ``.`` and empty components dropped)."""
    return tuple(p for p in PurePosixPath(str(name).replace("\\", "/")).parts if p not in (".", "/"))


def match_file_names(images: list[dict], names: Iterable[str], *, source: str) -> dict[str, Any]:
    """The ground-truth image id of each file name, matched by path, never by base name alone.

    A name matches the ground-truth image whose ``file_name`` shares the longest run of trailing path
    components with it (``cam1/0001.png`` and ``/data/cam1/0001.png`` both match ``cam1/0001.png``, not
    ``cam2/0001.png``; a lone ``0001.png`` matches when only one image has that base name).

    Args:
        images: the ground truth's ``images`` (``id``, ``file_name``).
        names: file names or paths of predicted images.
        source: the ground truth, for messages.

    Returns:
        ``{name: image id}`` for every name that matches (a name that matches no image is left out).

    Raises:
        ValueError: a name matches several images equally well (an ambiguous base name), naming them.
    """
    by_base: dict[str, list[tuple[tuple[str, ...], Any, str]]] = {}
    for image in images:
        parts = _parts(image["file_name"])
        if parts:
            by_base.setdefault(parts[-1], []).append((parts, image["id"], str(image["file_name"])))
    matched: dict[str, Any] = {}
    for name in dict.fromkeys(names):
        parts = _parts(name)
        candidates = by_base.get(parts[-1], []) if parts else []
        if not candidates:
            continue
        scored = []
        for gt_parts, image_id, file_name in candidates:
            common = 0
            while common < min(len(parts), len(gt_parts)) and parts[-1 - common] == gt_parts[-1 - common]:
                common += 1
            if gt_parts == parts:  # the very same relative path wins over a longer one that ends with it
                common = len(parts) + 1
            scored.append((common, image_id, file_name))
        best = max(common for common, _, _ in scored)
        tied = [(image_id, file_name) for common, image_id, file_name in scored if common == best]
        if len(tied) > 1:
            listed = ", ".join(f"{f} (id {i})" for i, f in tied[:5])
            raise ValueError(
                f"{name}: ambiguous in {source}: {len(tied)} images match it ({listed}); give the path relative "
                f"to the images root, as the ground truth's file_name"
            )
        matched[name] = tied[0][0]
    return matched


def _attach_ids(results: list[dict[str, Any]], gt: dict, source: str = "the ground truth") -> tuple[list[dict[str, Any]], int]:
    """Give folder results their ``image_id`` from ``file_name`` (matched by path, see
    :func:`match_file_names`); drop images the ground truth does not list."""
    names = [str(r.get("file_name", "")) for r in results if r.get("image_id") is None]
    by_name = match_file_names(gt["images"], names, source=source)
    kept, dropped = [], set()
    for record in results:
        if record.get("image_id") is None:
            name = str(record.get("file_name", ""))
            if name not in by_name:
                dropped.add(name)
                continue
            record["image_id"] = by_name[name]
        kept.append(record)
    return kept, len(dropped)


def evaluate(
    *,
    model: str,
    out: str | os.PathLike,
    data: str | None = None,
    annotations: str | None = None,
    images: str | None = None,
    workers: int | None = None,
    gpu: bool = False,
    batch_size: int = 2,
    score_threshold: float | None = None,
    cpus_per_worker: float | None = None,
    tracking_uri: str | None = None,
    ray_address: str | None = None,
    overwrite: bool = False,
    report: str | os.PathLike | None = None,
) -> EvaluationSummary:
    """Predict every ground-truth image with ``model`` on the cluster, then COCO-evaluate bbox and segm (and
    keypoints, OKS, for a keypoint model; the ground truth then needs COCO person-keypoint fields).

    Args:
        model: ``models:/NAME@best``, ``models:/NAME/3``, ``runs:/ID/path`` or a checkpoint file.
        out: output folder (path or URI): ``detections/`` (resumable) and ``metrics.json``.
        data: a shard split ``OUT/<split>``; or else
        annotations, images: a COCO instances json and its image folder.
        workers, gpu, batch_size, cpus_per_worker: the actor pool, as :func:`pipelines.batch.segment.segment`.
        score_threshold: keep detections above it; default the model's ``box_head.score_thresh``.
        tracking_uri: MLflow store for ``models:/`` and ``runs:/`` (default ``MLFLOW_TRACKING_URI``); the
            report and the metrics are logged to the model's run there.
        report: a local folder for the evaluation report (default ``OUT/report``).

    Raises:
        ValueError / FileNotFoundError: bad options, ground truth or model (one line each).
    """
    from mrcnn.evaluation import evaluate_coco, load_coco_gt

    start = time.perf_counter()
    gt, source, described = _ground_truth(data, annotations, images)
    image_ids = [image["id"] for image in gt["images"]]
    if not image_ids:
        raise ValueError(f"{described}: the ground truth has no images")
    out_fs, out_root = resolve_path(out)
    shown_out = display_path(out, out_fs, out_root)
    loaded = load_model(model, tracking_uri)
    run_id = model_run_id(str(model), tracking_uri)
    if score_threshold is None:
        score_threshold = float(loaded.config.model.box_head.score_thresh)
    print(f"[evaluate] {model} ({loaded.config.name}) on {described}: {len(image_ids)} images, "
          f"score threshold {score_threshold}", file=sys.stderr, flush=True)  # fmt: skip
    summary = segment(
        model=loaded, input=source, out=join_path(shown_out, DETECTIONS_DIR), workers=workers, gpu=gpu,
        batch_size=batch_size, score_threshold=score_threshold, output_format="coco", overwrite=overwrite,
        cpus_per_worker=cpus_per_worker, tracking_uri=tracking_uri, ray_address=ray_address,
    )  # fmt: skip
    results, num_unlisted = _attach_ids(_read_json(summary.outputs["results"]), gt, described)
    if num_unlisted:
        print(f"[evaluate] {num_unlisted} images of {source} are not in the ground truth: left out", file=sys.stderr)
    iou_types = loaded.config.model.iou_types  # bbox, + segm with masks, + keypoints for a keypoint model
    metrics = evaluate_coco(load_coco_gt(gt), results, image_ids=image_ids, iou_types=iou_types)
    result = EvaluationSummary(
        model=str(model), ground_truth=described, out_dir=shown_out, score_threshold=score_threshold,
        num_images=len(image_ids), num_rejected=summary.num_rejects, num_detections=len(results),
        seconds=time.perf_counter() - start, metrics=metrics,
    )  # fmt: skip
    write_atomic(join_path(out_root, METRICS_FILE), json.dumps(result.to_dict(), indent=1) + "\n", fs=out_fs)
    destination = publish_report(
        gt=gt, results=results, metrics=metrics, summary=result.to_dict(), iou_types=iou_types,
        name=report_name(data or annotations or ""), out=shown_out, report_dir=report, run_id=run_id,
        tracking_uri=tracking_uri, images=None if data else images, score_threshold=loaded.thresholds,
    )  # fmt: skip
    result = dataclasses.replace(result, report=destination)
    write_atomic(join_path(out_root, METRICS_FILE), json.dumps(result.to_dict(), indent=1) + "\n", fs=out_fs)
    if destination.run_id is None:
        print(f"[evaluate] report: {destination.local_dir} (only there: {model} is not a model of an MLflow run, "
              "so nothing is logged to MLflow)", file=sys.stderr, flush=True)  # fmt: skip
    else:
        print(f"[evaluate] report: {destination.local_dir}; logged to run {destination.run_id}: artifacts "
              f"{destination.artifact_path}/, metrics {destination.metric_prefix}*", file=sys.stderr, flush=True)  # fmt: skip
    return result
