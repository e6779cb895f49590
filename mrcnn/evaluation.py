"""COCO evaluation of bbox and segm results with pycocotools' COCOeval.

Results are COCO results records: ``image_id``, ``category_id``, ``score``, ``bbox`` (XYWH) and, for
segm, ``segmentation`` as compressed RLE. The 12 standard numbers are reported as percentages, exactly
pycocotools' ``stats`` times 100 (a number pycocotools reports as -1, "no ground truth in that area
range", stays -1).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
IOU_TYPES = ("bbox", "segm")


def load_coco_gt(gt: str | os.PathLike | dict | COCO) -> COCO:
    """A pycocotools COCO object from a path, a dataset dict or an existing COCO (returned as is)."""
    if isinstance(gt, COCO):
        return gt
    coco = COCO()
    if isinstance(gt, dict):
        coco.dataset = copy.deepcopy(gt)
    else:
        path = Path(gt)
        if not path.is_file():
            raise FileNotFoundError(f"ground truth {path}: no such file")
        try:
            coco.dataset = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"ground truth {path}: not valid json ({exc})") from None
    for key in ("images", "annotations", "categories"):
        if not isinstance(coco.dataset.get(key), list):
            raise ValueError(f"ground truth: not a COCO instances json (no '{key}' list)")
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _results_coco(gt: COCO, results: list[dict[str, Any]], iou_type: str) -> COCO:
    """The detections as a COCO object (pycocotools' loadRes; an empty result set is allowed)."""
    if results:
        with contextlib.redirect_stdout(io.StringIO()):
            return gt.loadRes(copy.deepcopy(results))
    empty = COCO()
    empty.dataset = {"images": list(gt.dataset["images"]), "categories": copy.deepcopy(gt.dataset["categories"]), "annotations": []}
    with contextlib.redirect_stdout(io.StringIO()):
        empty.createIndex()
    return empty


def _per_category_ap(evaluator: COCOeval, gt: COCO) -> dict[str, float]:
    """AP (IoU .50:.95, all areas, 100 detections) per category name, in percent; -1 without ground truth."""
    precision = evaluator.eval["precision"]  # [T, R, K, A, M]
    per_category = {}
    for k, category_id in enumerate(evaluator.params.catIds):
        values = precision[:, :, k, 0, -1]
        values = values[values > -1]
        name = gt.cats[category_id]["name"]
        per_category[name] = float(np.mean(values) * 100) if values.size else -1.0
    return per_category


def _check_results(results: list[dict[str, Any]], gt: COCO, iou_type: str) -> None:
    image_ids = set(gt.getImgIds())
    category_ids = set(gt.getCatIds())
    for index, record in enumerate(results):
        needed = ("image_id", "category_id", "score", "bbox" if iou_type == "bbox" else "segmentation")
        missing = [k for k in needed if k not in record]
        if missing:
            raise ValueError(f"result {index}: missing {missing} (needed for {iou_type} evaluation)")
        if record["image_id"] not in image_ids:
            raise ValueError(f"result {index}: image_id {record['image_id']} is not in the ground truth")
        if record["category_id"] not in category_ids:
            raise ValueError(f"result {index}: category_id {record['category_id']} is not in the ground truth")


def evaluate_coco(
    gt: str | os.PathLike | dict | COCO,
    results: Iterable[dict[str, Any]],
    *,
    iou_types: Iterable[str] = IOU_TYPES,
    image_ids: Iterable[int] | None = None,
) -> dict[str, dict[str, Any]]:
    """Evaluate COCO results against ground truth.

    Args:
        gt: ground-truth instances json (path, dict or COCO).
        results: COCO results records; ``segmentation`` counts may be str or bytes.
        iou_types: any of ``bbox``, ``segm``.
        image_ids: restrict evaluation to these images (default: all images of the ground truth).

    Returns:
        ``{iou_type: {"AP": .., "AP50": .., ... 12 numbers in percent, "per_category": {name: AP}}}``.
    """
    coco_gt = load_coco_gt(gt)
    results = list(results)
    metrics: dict[str, dict[str, Any]] = {}
    for iou_type in iou_types:
        if iou_type not in IOU_TYPES:
            raise ValueError(f"iou type: expected one of {IOU_TYPES}, got {iou_type!r}")
        _check_results(results, coco_gt, iou_type)
        # For segm, drop the boxes: pycocotools would otherwise take each detection's area from its box
        # (and so its small/medium/large range), as detectron2 and torchvision's references avoid too.
        records = [{k: v for k, v in r.items() if k != "bbox"} for r in results] if iou_type == "segm" else results
        coco_dt = _results_coco(coco_gt, records, iou_type)
        evaluator = COCOeval(coco_gt, coco_dt, iouType=iou_type)
        if image_ids is not None:
            evaluator.params.imgIds = sorted(set(image_ids))
        with contextlib.redirect_stdout(io.StringIO()):
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        stats = {name: (float(v) * 100 if v > -1 else -1.0) for name, v in zip(STAT_NAMES, evaluator.stats)}
        stats["per_category"] = _per_category_ap(evaluator, coco_gt)
        metrics[iou_type] = stats
    return metrics


def format_metrics_table(metrics: dict[str, dict[str, Any]]) -> str:
    """A plain-text table: one row per IoU type, one column per standard number."""
    header = f"{'':6}" + "".join(f"{name:>7}" for name in STAT_NAMES)
    lines = [header]
    for iou_type, stats in metrics.items():
        lines.append(f"{iou_type:6}" + "".join(f"{stats[name]:7.1f}" for name in STAT_NAMES))
    return "\n".join(lines)
