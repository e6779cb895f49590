"""Per-class numbers read from pycocotools' COCOeval arrays: AP, AP50, AP75, AR100 and the number of
ground-truth instances per category, precision-recall curves, and the per-class AP difference of two models.

COCOeval's ``eval["precision"]`` is float [T, R, K, A, M]: T IoU thresholds (.50:.05:.95), R = 101 recall
thresholds (0:.01:1), K categories (in ``params.catIds`` order), A area ranges (index 0 = all), M
max-detections settings (index -1 = 100); -1 where a category has no ground truth. ``eval["recall"]`` is
float [T, K, A, M] with the same conventions. Every number here is read at area "all" and 100 detections,
and AP/AR are percentages like :func:`mrcnn.evaluation.evaluate_coco`'s (-1: no ground truth).
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from mrcnn.evaluation import (
    ALL_IOU_TYPES,
    check_result_fields,
    check_result_ids,
    keypoint_oks_sigmas,
    load_coco_gt,
    results_as_coco,
)

PER_CLASS_FIELDS = ("category_id", "name", "AP", "AP50", "AP75", "AR100", "num_gt")
PR_CURVE_FIELDS = ("category_id", "name", "iou", "recall", "precision")


def _positive_annotation_ids(gt: COCO) -> COCO:
    """The ground truth, with annotation ids renumbered 1..N (in order) where any is < 1 or repeated:
    pycocotools' matcher reads an annotation id of 0 as "unmatched" (as mrcnn.evaluation handles it)."""
    ids = [a.get("id") for a in gt.dataset["annotations"]]
    if all(isinstance(i, int) and i >= 1 for i in ids) and len(set(ids)) == len(ids):
        return gt
    dataset = dict(gt.dataset)
    dataset["annotations"] = [{**a, "id": index} for index, a in enumerate(gt.dataset["annotations"], start=1)]
    return load_coco_gt(dataset)


def run_cocoeval(gt: str | os.PathLike | dict | COCO, results: Iterable[dict[str, Any]], iou_type: str) -> COCOeval:
    """pycocotools' COCOeval over the ground truth and results, evaluated and accumulated.

    Ground-truth annotation ids are renumbered 1..N where any is 0 (see :func:`_positive_annotation_ids`). The
    records are prepared as :func:`mrcnn.evaluation.evaluate_coco` prepares them, so the arrays give its
    numbers: for ``segm`` the boxes are dropped (a detection's area is its mask's); for ``keypoints`` only the
    categories with keypoints are scored, with :func:`mrcnn.evaluation.keypoint_oks_sigmas`.

    Args:
        gt: ground-truth instances json (path, dict or COCO).
        results: COCO results records (``image_id``, ``category_id``, ``score`` and ``bbox`` XYWH /
            ``segmentation`` compressed RLE / ``keypoints`` [x1, y1, v1, ...] for the IoU type).
        iou_type: ``bbox``, ``segm`` or ``keypoints``.

    Returns:
        COCOeval with ``eval["precision"]`` [T, R, K, A, M], ``eval["recall"]`` [T, K, A, M] and ``evalImgs``.

    Raises:
        ValueError: an unknown IoU type, or a record without the fields the IoU type needs, or with an image
            or category id the ground truth lacks.
    """
    if iou_type not in ALL_IOU_TYPES:
        raise ValueError(f"iou type: expected one of {ALL_IOU_TYPES}, got {iou_type!r}")
    coco_gt = _positive_annotation_ids(load_coco_gt(gt))
    records = list(results)
    category_ids = sorted(coco_gt.getCatIds())
    if iou_type == "keypoints":
        category_ids = sorted(c["id"] for c in coco_gt.dataset["categories"] if c.get("keypoints"))
        with_keypoints = set(category_ids)
        records = [r for r in records if r.get("category_id") in with_keypoints]
    check_result_fields(records, coco_gt, iou_type)
    check_result_ids(records, coco_gt, iou_type)
    if iou_type == "segm":
        records = [{k: v for k, v in r.items() if k != "bbox"} for r in records]
    coco_dt = results_as_coco(coco_gt, records, iou_type)
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(coco_gt, coco_dt, iouType=iou_type)
        evaluator.params.catIds = category_ids
        if iou_type == "keypoints":
            evaluator.params.kpt_oks_sigmas = keypoint_oks_sigmas(coco_gt)
        evaluator.evaluate()
        evaluator.accumulate()
    return evaluator


def _iou_index(evaluator: COCOeval, iou: float) -> int:
    found = np.flatnonzero(np.isclose(evaluator.params.iouThrs, iou))
    if found.size == 0:
        raise ValueError(f"IoU {iou}: not one of COCOeval's thresholds {list(np.round(evaluator.params.iouThrs, 2))}")
    return int(found[0])


def _mean_percent(values: np.ndarray) -> float:
    values = values[values > -1]
    return float(np.mean(values) * 100) if values.size else -1.0


def _num_gt(evaluator: COCOeval, k: int) -> int:
    """Ground-truth instances that COCOeval scores for category index k at area "all" (not crowd or ignored;
    for keypoints also with at least one labelled keypoint): the zeros of each image's ``gtIgnore``."""
    num_images, num_areas = len(evaluator.params.imgIds), len(evaluator.params.areaRng)
    start = k * num_areas * num_images  # evalImgs is ordered [category][area][image]
    total = 0
    for entry in evaluator.evalImgs[start : start + num_images]:
        if entry is not None:
            total += int(np.count_nonzero(np.asarray(entry["gtIgnore"]) == 0))
    return total


def per_class_metrics(evaluator: COCOeval) -> list[dict[str, Any]]:
    """One row per category of ``evaluator.params.catIds``: ``category_id``, ``name``, ``AP`` (IoU .50:.95),
    ``AP50``, ``AP75``, ``AR100`` (percent; -1 without ground truth) and ``num_gt`` (see :func:`_num_gt`).

    AP is the mean of ``precision[:, :, k, 0, -1]`` over its entries > -1, as pycocotools' summarize computes it.
    """
    precision, recall = evaluator.eval["precision"], evaluator.eval["recall"]
    i50, i75 = _iou_index(evaluator, 0.5), _iou_index(evaluator, 0.75)
    rows = []
    for k, category_id in enumerate(evaluator.params.catIds):
        rows.append(
            {
                "category_id": int(category_id),
                "name": evaluator.cocoGt.cats[category_id]["name"],
                "AP": _mean_percent(precision[:, :, k, 0, -1]),
                "AP50": _mean_percent(precision[i50, :, k, 0, -1]),
                "AP75": _mean_percent(precision[i75, :, k, 0, -1]),
                "AR100": _mean_percent(recall[:, k, 0, -1]),
                "num_gt": _num_gt(evaluator, k),
            }
        )
    return rows


def evaluate_per_class(
    gt: str | os.PathLike | dict | COCO, results: Iterable[dict[str, Any]], *, iou_types: Iterable[str] = ("bbox", "segm")
) -> dict[str, list[dict[str, Any]]]:
    """``{iou_type: per_class_metrics(run_cocoeval(gt, results, iou_type))}`` for each IoU type."""
    coco_gt, records = load_coco_gt(gt), list(results)
    return {iou_type: per_class_metrics(run_cocoeval(coco_gt, records, iou_type)) for iou_type in iou_types}


def pr_curves(evaluator: COCOeval, *, ious: Sequence[float] = (0.5, 0.75)) -> list[dict[str, Any]]:
    """Precision-recall curve points per category: ``precision[t, :, k, 0, -1]`` against ``params.recThrs``.

    Returns:
        rows ``{"category_id", "name", "iou", "recall", "precision"}`` (fractions in [0, 1]), 101 per category
        and IoU, in ``params.catIds`` order; a category without ground truth (precision -1) has none.
        COCOeval's precision is interpolated (the best precision at any recall >= r) and 0 past the highest
        recall reached.
    """
    precision = evaluator.eval["precision"]
    rows = []
    for iou in ious:
        t = _iou_index(evaluator, iou)
        for k, category_id in enumerate(evaluator.params.catIds):
            curve = precision[t, :, k, 0, -1]
            if np.all(curve <= -1):
                continue
            name = evaluator.cocoGt.cats[category_id]["name"]
            for r, p in zip(evaluator.params.recThrs, curve):
                rows.append({"category_id": int(category_id), "name": name, "iou": float(iou), "recall": float(r), "precision": float(p)})
    return rows


def _number(value: float) -> str:
    return f"{value:7.1f}" if value > -1 else f"{'-':>7}"


def format_per_class_table(per_class: Mapping[str, Sequence[Mapping[str, Any]]]) -> str:
    """A plain-text table per IoU type: one line per class with its ground-truth count, AP, AP50, AP75, AR100.

    Args:
        per_class: ``{iou_type: rows}`` as :func:`evaluate_per_class` returns (-1 is printed as ``-``).
    """
    blocks = []
    for iou_type, rows in per_class.items():
        width = max([len(iou_type), *(len(str(row["name"])) for row in rows)]) + 2
        lines = [f"{iou_type:<{width}}{'gt':>6}" + "".join(f"{name:>7}" for name in ("AP", "AP50", "AP75", "AR100"))]
        for row in rows:
            numbers = "".join(_number(row[name]) for name in ("AP", "AP50", "AP75", "AR100"))
            lines.append(f"{row['name']:<{width}}{row['num_gt']:6d}{numbers}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _ap_by_name(metrics: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """``{iou_type: {name: AP}}`` from per-class rows or from evaluate_coco's ``per_category``."""
    out = {}
    for iou_type, value in metrics.items():
        if isinstance(value, Mapping) and "per_category" in value:
            out[iou_type] = {str(name): float(ap) for name, ap in value["per_category"].items()}
        elif isinstance(value, Sequence) and not isinstance(value, str):
            out[iou_type] = {str(row["name"]): float(row["AP"]) for row in value}
        else:
            raise ValueError(
                f"metrics[{iou_type!r}]: expected per-class rows or evaluate_coco's dict with 'per_category', got {type(value).__name__}"
            )
    return out


def compare_per_class(metrics_a: Mapping[str, Any], metrics_b: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per-class AP of two models on the same data.

    Args:
        metrics_a, metrics_b: ``{iou_type: rows}`` as :func:`evaluate_per_class` returns, or
            :func:`mrcnn.evaluation.evaluate_coco`'s metrics (its ``per_category`` AP by name).

    Returns:
        rows ``{"iou_type", "name", "AP_a", "AP_b", "delta"}`` for the IoU types both have, classes in A's order
        then B's own; ``delta`` is AP_b - AP_a in points, None where either is -1 (no ground truth) or the class
        is missing from one side (its AP is then -1).
    """
    a, b = _ap_by_name(metrics_a), _ap_by_name(metrics_b)
    rows = []
    for iou_type in [t for t in a if t in b]:
        names = list(a[iou_type]) + [n for n in b[iou_type] if n not in a[iou_type]]
        for name in names:
            ap_a, ap_b = a[iou_type].get(name, -1.0), b[iou_type].get(name, -1.0)
            delta = ap_b - ap_a if ap_a > -1 and ap_b > -1 else None
            rows.append({"iou_type": iou_type, "name": name, "AP_a": ap_a, "AP_b": ap_b, "delta": delta})
    return rows


def format_per_class_comparison(rows: Sequence[Mapping[str, Any]], *, labels: tuple[str, str] = ("A", "B")) -> str:
    """A plain-text table of :func:`compare_per_class`'s rows, a block per IoU type: AP of A, AP of B, B - A."""
    blocks: dict[str, list[str]] = {}
    width = max([8, *(len(str(row["name"])) + 2 for row in rows)])
    for row in rows:
        lines = blocks.setdefault(row["iou_type"], [f"{row['iou_type']:<{width}}{labels[0]:>9}{labels[1]:>9}{'delta':>9}"])
        delta = f"{row['delta']:+9.1f}" if row["delta"] is not None else f"{'-':>9}"
        lines.append(f"{row['name']:<{width}}{_number(row['AP_a']):>9}{_number(row['AP_b']):>9}{delta}")
    return "\n\n".join("\n".join(lines) for lines in blocks.values())
