"""COCO evaluation of bbox, segm and keypoints results with pycocotools' COCOeval.

Results are COCO results records: ``image_id``, ``category_id``, ``score``, ``bbox`` (XYWH), for
segm ``segmentation`` as compressed RLE, for keypoints ``keypoints`` ([x1, y1, v1, ..., xK, yK, vK]).
The standard numbers (12 for bbox and segm, 10 for keypoints) are reported as percentages, exactly
pycocotools' ``stats`` times 100 (a number pycocotools reports as -1, "no ground truth in that area
range", stays -1).

Keypoints are scored by OKS (object keypoint similarity) with one sigma per keypoint: COCO's 17 for its
person keypoints, else the ground-truth category's ``keypoint_sigmas``, else
``mrcnn.data.keypoints.DEFAULT_KEYPOINT_SIGMA`` for each (see :func:`keypoint_oks_sigmas`). The result
records are given to pycocotools as they are (with their ``bbox``, as detectron2 does), so a detection's
area, which decides its medium/large range, is its box's: the same numbers as pycocotools' COCOeval run
directly on the same results file.

Before any backend sees them, the ground truth and the results are normalised once
(:func:`normalise_for_eval`): annotation ids become 1..N (pycocotools' matcher reads an annotation id of 0 as
"unmatched", so a ground truth numbered from 0 would score its first object as missed), and image and
category ids become 1..N in their sorted order (string image ids, which faster-coco-eval cannot take, and
64-bit ids). The order is kept, so the numbers are pycocotools' own on the original ids. Should
faster-coco-eval still refuse an input, the evaluation falls back to pycocotools and says so in one line
(a warning on this module's logger).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
KEYPOINT_STAT_NAMES = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")
IOU_TYPES = ("bbox", "segm")  # the default of evaluate_coco
ALL_IOU_TYPES = ("bbox", "segm", "keypoints")


def stat_names(iou_type: str) -> tuple[str, ...]:
    """The names of pycocotools' ``stats`` for an IoU type: 12 for bbox and segm, 10 for keypoints."""
    return KEYPOINT_STAT_NAMES if iou_type == "keypoints" else STAT_NAMES


def keypoint_oks_sigmas(gt: COCO) -> np.ndarray:
    """The OKS sigmas (float [K]) of the ground truth's keypoint categories (see the module docstring).

    Raises:
        ValueError: no category has ``keypoints``, or their K or sigmas differ.
    """
    from mrcnn.data.keypoints import default_keypoint_sigmas

    found = []
    for category in gt.dataset["categories"]:
        names = category.get("keypoints") or []
        if names:
            sigmas = category.get("keypoint_sigmas") or default_keypoint_sigmas(names)
            if len(sigmas) != len(names):
                raise ValueError(f"ground truth category {category.get('id')}: {len(sigmas)} keypoint_sigmas for {len(names)} keypoints")
            found.append((category.get("id"), tuple(float(v) for v in sigmas)))
    if not found:
        raise ValueError("ground truth: no category has 'keypoints', so keypoints cannot be evaluated")
    if len({sigmas for _, sigmas in found}) > 1:
        raise ValueError(f"ground truth: keypoint categories {[c for c, _ in found]} differ in K or OKS sigmas")
    return np.asarray(found[0][1], dtype=np.float64)


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


def results_as_coco(gt: COCO, results: list[dict[str, Any]], iou_type: str) -> COCO:
    """The detections as a COCO object (pycocotools' loadRes; an empty result set is allowed)."""
    if results:
        with contextlib.redirect_stdout(io.StringIO()):
            return gt.loadRes(copy.deepcopy(results))
    empty = COCO()
    empty.dataset = {"images": list(gt.dataset["images"]), "categories": copy.deepcopy(gt.dataset["categories"]), "annotations": []}
    with contextlib.redirect_stdout(io.StringIO()):
        empty.createIndex()
    return empty


BACKENDS = ("pycocotools", "faster-coco-eval")
logger = logging.getLogger(__name__)


def _sorted_ids(ids: Iterable[Any]) -> list[Any]:
    """Ids in pycocotools' order (sorted); ids of mixed types by type name, then value."""
    unique = list(dict.fromkeys(ids))
    try:
        return sorted(unique)
    except TypeError:
        return sorted(unique, key=lambda v: (type(v).__name__, str(v)))


def normalise_for_eval(
    gt: COCO, results: list[dict[str, Any]], image_ids: Iterable[Any] | None = None
) -> tuple[COCO, list[dict[str, Any]], list[int] | None]:
    """The ground truth, results and image selection renumbered for any COCOeval backend.

    Annotation ids become 1..N in the ground truth's order; image and category ids become 1..N in their
    sorted order, in the ground truth and in the results alike, so every backend evaluates the images and
    categories in the order pycocotools does on the original ids and gives its numbers.

    Args:
        gt: the ground truth (not changed).
        results: COCO results records whose ``image_id`` and ``category_id`` are the ground truth's
            (checked before); records are copied, not changed.
        image_ids: an image selection in the original ids (ids not in the ground truth are left out).

    Returns:
        (COCO ground truth with the new ids, results with the new ids, the selection with the new ids).
    """
    dataset = gt.dataset
    image_map = {old: new for new, old in enumerate(_sorted_ids(i["id"] for i in dataset["images"]), start=1)}
    category_map = {old: new for new, old in enumerate(_sorted_ids(c["id"] for c in dataset["categories"]), start=1)}
    normalised = {key: value for key, value in dataset.items() if key not in ("images", "annotations", "categories")}
    normalised["images"] = [{**image, "id": image_map[image["id"]]} for image in dataset["images"]]
    normalised["categories"] = [{**c, "id": category_map[c["id"]]} for c in dataset["categories"]]
    normalised["annotations"] = [
        {**a, "id": index, "image_id": image_map.get(a["image_id"], a["image_id"]),
         "category_id": category_map.get(a["category_id"], a["category_id"])}
        for index, a in enumerate(dataset["annotations"], start=1)
    ]  # fmt: skip
    coco = COCO()
    coco.dataset = normalised
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    records = [{**r, "image_id": image_map[r["image_id"]], "category_id": category_map[r["category_id"]]} for r in results]
    selection = None if image_ids is None else [image_map[i] for i in image_ids if i in image_map]
    return coco, records, selection


def _resolve_backend(backend: str) -> str:
    if backend == "auto":
        try:
            import faster_coco_eval  # noqa: F401
        except ImportError:
            return "pycocotools"
        return "faster-coco-eval"
    if backend not in BACKENDS:
        raise ValueError(f"evaluation backend: expected auto or one of {BACKENDS}, got {backend!r}")
    return backend


def _evaluator(coco_gt: COCO, records: list[dict[str, Any]], iou_type: str, backend: str):
    """A COCOeval (pycocotools) or COCOeval_faster (faster-coco-eval) over the (normalised) ground truth and records."""
    if backend == "pycocotools":
        return COCOeval(coco_gt, results_as_coco(coco_gt, records, iou_type), iouType=iou_type)
    from faster_coco_eval import COCO as FasterCOCO
    from faster_coco_eval import COCOeval_faster

    faster_gt = FasterCOCO(coco_gt.dataset)
    if records:
        faster_dt = faster_gt.loadRes(copy.deepcopy(records))
    else:
        empty = {"images": list(coco_gt.dataset["images"]), "categories": coco_gt.dataset["categories"], "annotations": []}
        faster_dt = FasterCOCO(empty)
    return COCOeval_faster(faster_gt, faster_dt, iouType=iou_type, print_function=lambda *args: None)


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


def check_result_ids(results: list[dict[str, Any]], gt: COCO, iou_type: str) -> None:
    """Every record has an ``image_id`` and a ``category_id`` of the ground truth (``iou_type`` for messages)."""
    image_ids = set(gt.getImgIds())
    category_ids = set(gt.getCatIds())
    for index, record in enumerate(results):
        missing = [k for k in ("image_id", "category_id") if k not in record]
        if missing:
            raise ValueError(f"result {index}: missing {missing} (needed for {iou_type} evaluation)")
        if record["image_id"] not in image_ids:
            raise ValueError(f"result {index}: image_id {record['image_id']} is not in the ground truth")
        if record["category_id"] not in category_ids:
            raise ValueError(f"result {index}: category_id {record['category_id']} is not in the ground truth")


def check_result_fields(results: list[dict[str, Any]], gt: COCO, iou_type: str) -> None:
    """Every record has the fields ``iou_type`` needs; keypoint records have 3 values per keypoint of their category."""
    num_values = {c["id"]: 3 * len(c.get("keypoints") or []) for c in gt.dataset["categories"]}
    field = {"bbox": "bbox", "segm": "segmentation", "keypoints": "keypoints"}[iou_type]
    for index, record in enumerate(results):
        needed = ("image_id", "category_id", "score", field)
        missing = [k for k in needed if k not in record]
        if missing:
            raise ValueError(f"result {index}: missing {missing} (needed for {iou_type} evaluation)")
        if iou_type == "keypoints" and len(record["keypoints"]) != num_values[record["category_id"]]:
            raise ValueError(
                f"result {index}: {len(record['keypoints'])} keypoint values, category {record['category_id']} "
                f"needs {num_values[record['category_id']]} (3 per keypoint)"
            )


def evaluate_coco(
    gt: str | os.PathLike | dict | COCO,
    results: Iterable[dict[str, Any]],
    *,
    iou_types: Iterable[str] = IOU_TYPES,
    image_ids: Iterable[int] | None = None,
    backend: str = "auto",
) -> dict[str, dict[str, Any]]:
    """Evaluate COCO results against ground truth.

    Args:
        gt: ground-truth instances json (path, dict or COCO).
        results: COCO results records; ``segmentation`` counts may be str or bytes.
        iou_types: any of ``bbox``, ``segm``, ``keypoints`` (needs a ground truth with keypoint categories).
        image_ids: restrict evaluation to these images (default: all images of the ground truth).
        backend: ``pycocotools`` (the reference), ``faster-coco-eval`` (its C++ re-implementation: the same
            numbers, several times faster; benchmarks/bench_eval.py checks both), or ``auto``: faster-coco-eval
            when it is installed, else pycocotools.

    Returns:
        ``{iou_type: {"AP": .., "AP50": .., ... (stat_names(iou_type), in percent), "per_category": {name: AP}}}``.
    """
    original_gt = load_coco_gt(gt)
    results = list(results)
    backend = _resolve_backend(backend)
    for iou_type in iou_types:
        if iou_type not in ALL_IOU_TYPES:
            raise ValueError(f"iou type: expected one of {ALL_IOU_TYPES}, got {iou_type!r}")
    iou_types = tuple(iou_types)
    check_result_ids(results, original_gt, iou_types[0] if iou_types else "bbox")
    coco_gt, results, image_ids = normalise_for_eval(original_gt, results, image_ids)
    metrics: dict[str, dict[str, Any]] = {}
    for iou_type in iou_types:
        oks_sigmas = keypoint_oks_sigmas(coco_gt) if iou_type == "keypoints" else None
        scored, no_keypoints = results, set()
        if iou_type == "keypoints":  # keypoint AP is over the categories with keypoints (COCO: person only)
            no_keypoints = {c["id"] for c in coco_gt.dataset["categories"] if not c.get("keypoints")}
            scored = [r for r in results if r.get("category_id") not in no_keypoints]
        check_result_fields(scored, coco_gt, iou_type)
        # For segm, drop the boxes: pycocotools would otherwise take each detection's area from its box
        # (and so its small/medium/large range), as detectron2 and torchvision's references avoid too.
        records = [{k: v for k, v in r.items() if k != "bbox"} for r in scored] if iou_type == "segm" else scored
        try:
            evaluator = _run_evaluator(coco_gt, records, iou_type, backend, oks_sigmas, no_keypoints, image_ids)
        except Exception as exc:  # noqa: BLE001 - any refusal of the C++ backend: pycocotools is the reference
            if backend == "pycocotools":
                raise
            logger.warning(
                "faster-coco-eval cannot evaluate this %s input (%s: %s); using pycocotools",
                iou_type, type(exc).__name__, " ".join(str(exc).split())[:200],
            )  # fmt: skip
            evaluator = _run_evaluator(coco_gt, records, iou_type, "pycocotools", oks_sigmas, no_keypoints, image_ids)
        stats = {name: (float(v) * 100 if v > -1 else -1.0) for name, v in zip(stat_names(iou_type), evaluator.stats)}
        stats["per_category"] = _per_category_ap(evaluator, coco_gt)
        metrics[iou_type] = stats
    return metrics


def _run_evaluator(
    coco_gt: COCO,
    records: list[dict[str, Any]],
    iou_type: str,
    backend: str,
    oks_sigmas: np.ndarray | None,
    no_keypoints: set,
    image_ids: list[int] | None,
):
    """evaluate, accumulate and summarize one IoU type on one backend; the evaluator with its ``stats``."""
    evaluator = _evaluator(coco_gt, records, iou_type, backend)
    if iou_type == "keypoints":
        evaluator.params.kpt_oks_sigmas = oks_sigmas
        evaluator.params.catIds = sorted(set(coco_gt.getCatIds()) - no_keypoints)
    if image_ids is not None:
        evaluator.params.imgIds = sorted(set(image_ids))
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def format_metrics_table(metrics: dict[str, dict[str, Any]]) -> str:
    """A plain-text table: one row per IoU type, one column per standard number (a new header where they change)."""
    lines: list[str] = []
    previous: tuple[str, ...] | None = None
    for iou_type, stats in metrics.items():
        names = stat_names(iou_type)
        if names != previous:
            lines.append(f"{'':9}" + "".join(f"{name:>7}" for name in names))
            previous = names
        lines.append(f"{iou_type:9}" + "".join(f"{stats[name]:7.1f}" for name in names))
    return "\n".join(lines)
