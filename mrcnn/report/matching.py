"""Greedy matching of detections to ground truth at one IoU, for the confusion matrix, the per-image F1 of
the worst-images overlays and the per-class score thresholds (:mod:`mrcnn.thresholds`).

IoU is pycocotools' (``pycocotools.mask.iou``): of ``bbox`` (XYWH) or of ``segmentation`` (RLE; polygons of
the ground truth are converted). Against a crowd region (``iscrowd`` 1) it is the intersection over the
detection's area, as in COCOeval. A ground truth with ``iscrowd`` or ``ignore`` set is never counted as missed,
and a detection that matches only such a region is ignored (neither true nor false positive), as in COCOeval.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO

from mrcnn.evaluation import load_coco_gt

DEFAULT_SCORE_THRESHOLD = 0.5  # the default score_threshold of mrcnn.Predictor
MATCH_IOU_TYPES = ("bbox", "segm")
UNMATCHED = -1  # a false positive
IGNORED = -2  # matched only a crowd / ignored region


def _geometry(item: Mapping[str, Any], iou_type: str, gt: COCO | None = None) -> Any:
    if iou_type == "bbox":
        return [float(v) for v in item["bbox"]]
    if gt is not None:  # a ground-truth annotation: polygons, uncompressed or compressed RLE
        return gt.annToRLE(item)
    rle = item["segmentation"]
    counts = rle["counts"]
    return {"size": list(rle["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def pairwise_iou(detections: Sequence[Mapping[str, Any]], gt_anns: Sequence[Mapping[str, Any]], gt: COCO, iou_type: str) -> np.ndarray:
    """IoU float [D, G] of detection records and ground-truth annotations (crowd: intersection / detection area)."""
    if iou_type not in MATCH_IOU_TYPES:
        raise ValueError(f"matching iou type: expected one of {MATCH_IOU_TYPES}, got {iou_type!r}")
    if not detections or not gt_anns:
        return np.zeros((len(detections), len(gt_anns)), dtype=np.float64)
    dt = [_geometry(d, iou_type) for d in detections]
    gt_geometry = [_geometry(a, iou_type, gt) for a in gt_anns]
    crowd = [int(a.get("iscrowd", 0)) for a in gt_anns]
    return np.asarray(coco_mask.iou(dt, gt_geometry, crowd), dtype=np.float64).reshape(len(detections), len(gt_anns))


def greedy_match(ious: np.ndarray, gt_ignore: np.ndarray, iou: float) -> tuple[np.ndarray, np.ndarray]:
    """Match detections, given best first, one by one to ground truth.

    Each detection takes the not yet matched, not ignored ground truth with the highest IoU >= ``iou`` (ties:
    the lowest index); if there is none but an ignored one reaches ``iou``, the detection is ignored.

    Args:
        ious (np.ndarray[D, G]): IoU of detections (sorted by score, descending) with ground truth.
        gt_ignore (np.ndarray[G] bool): crowd / ignored ground truth.
        iou: the IoU threshold.

    Returns:
        (dt_match int[D]: the matched ground-truth index, ``UNMATCHED`` or ``IGNORED``; gt_matched bool[G]).
    """
    num_dt, num_gt = ious.shape
    dt_match = np.full(num_dt, UNMATCHED, dtype=np.int64)
    gt_matched = np.zeros(num_gt, dtype=bool)
    for d in range(num_dt):
        candidates = np.where(~gt_matched & ~gt_ignore & (ious[d] >= iou), ious[d], -1.0)
        if num_gt and candidates.max() >= 0:
            g = int(np.argmax(candidates))
            dt_match[d], gt_matched[g] = g, True
        elif num_gt and np.any(gt_ignore & (ious[d] >= iou)):
            dt_match[d] = IGNORED
    return dt_match, gt_matched


def _by_score(records: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Records sorted by score, descending; equal scores keep their input order."""
    order = np.argsort([-float(r["score"]) for r in records], kind="stable")
    return [records[i] for i in order]


def _gt_ignore(anns: Sequence[Mapping[str, Any]]) -> np.ndarray:
    return np.array([bool(a.get("iscrowd", 0) or a.get("ignore", 0)) for a in anns], dtype=bool)


def _group_by_image(records: Iterable[Mapping[str, Any]], gt: COCO, field: str) -> dict[int, list[Mapping[str, Any]]]:
    image_ids, category_ids = set(gt.getImgIds()), set(gt.getCatIds())
    grouped: dict[int, list[Mapping[str, Any]]] = defaultdict(list)
    for index, record in enumerate(records):
        missing = [k for k in ("image_id", "category_id", "score", field) if k not in record]
        if missing:
            raise ValueError(f"result {index}: missing {missing} (needed for matching)")
        if record["image_id"] not in image_ids or record["category_id"] not in category_ids:
            found = f"image_id {record['image_id']} or category_id {record['category_id']}"
            raise ValueError(f"result {index}: {found} is not in the ground truth")
        grouped[record["image_id"]].append(record)
    return grouped


@dataclass(frozen=True)
class ConfusionMatrix:
    """Counts at one IoU: ``counts[i, j]`` ground truth of class i detected as class j.

    Row K (the last) is "background": detections that matched nothing (false positives), by predicted class.
    Column K is "background": ground truth that no detection matched (missed), by true class. ``counts[K, K]``
    is 0. Classes are in ``category_ids`` order.
    """

    category_ids: tuple[int, ...]
    names: tuple[str, ...]
    counts: np.ndarray  # int64 [K + 1, K + 1]
    iou: float
    iou_type: str
    score_threshold: float | dict[int, float]

    def rows(self) -> list[list[Any]]:
        """The matrix as CSV rows: a header ``["gt \\ pred", *names, "background"]``, then one row per class."""
        labels = [*self.names, "background"]
        return [["gt \\ pred", *labels]] + [[labels[i], *(int(v) for v in self.counts[i])] for i in range(len(labels))]


def confusion_matrix(
    gt: str | os.PathLike | dict | COCO,
    results: Iterable[Mapping[str, Any]],
    *,
    iou_type: str = "bbox",
    iou: float = 0.5,
    score_threshold: float | Mapping[int, float] = DEFAULT_SCORE_THRESHOLD,
    default_threshold: float = DEFAULT_SCORE_THRESHOLD,
) -> ConfusionMatrix:
    """The confusion matrix with background, by greedy matching per image regardless of class.

    Per image, the detections with a score >= the threshold (a float, or ``{category_id: threshold}`` with
    ``default_threshold`` for the classes it lacks) are sorted by score (descending; equal scores keep their
    input order), and each in turn is matched to the not yet matched ground truth of any class with the highest
    IoU >= ``iou`` (:func:`greedy_match`). Crowd ground truth is never missed, and a detection that matches only
    a crowd region is left out. A detection matched to ground truth of another class counts as a confusion,
    even where ground truth of its own class also overlaps it.

    Returns:
        ConfusionMatrix over the ground truth's categories (sorted by id).
    """
    coco_gt = load_coco_gt(gt)
    category_ids = tuple(sorted(coco_gt.getCatIds()))
    index = {c: i for i, c in enumerate(category_ids)}
    background = len(category_ids)
    counts = np.zeros((background + 1, background + 1), dtype=np.int64)
    thresholds = dict(score_threshold) if isinstance(score_threshold, Mapping) else None
    field = "bbox" if iou_type == "bbox" else "segmentation"
    grouped = _group_by_image(results, coco_gt, field)
    for image_id in coco_gt.getImgIds():
        kept = [
            r
            for r in grouped.get(image_id, [])
            if float(r["score"]) >= (thresholds.get(r["category_id"], default_threshold) if thresholds is not None else score_threshold)
        ]
        detections = _by_score(kept)
        anns = coco_gt.imgToAnns.get(image_id, [])
        gt_ignore = _gt_ignore(anns)
        dt_match, gt_matched = greedy_match(pairwise_iou(detections, anns, coco_gt, iou_type), gt_ignore, iou)
        for det, g in zip(detections, dt_match):
            if g >= 0:
                counts[index[anns[g]["category_id"]], index[det["category_id"]]] += 1
            elif g == UNMATCHED:
                counts[background, index[det["category_id"]]] += 1
        for ann, matched, ignored in zip(anns, gt_matched, gt_ignore):
            if not matched and not ignored:
                counts[index[ann["category_id"]], background] += 1
    names = tuple(coco_gt.cats[c]["name"] for c in category_ids)
    threshold_value = thresholds if thresholds is not None else float(score_threshold)
    return ConfusionMatrix(category_ids, names, counts, float(iou), iou_type, threshold_value)


@dataclass(frozen=True)
class ClassMatches:
    """One class's detections matched within the class, best first (ignored detections left out).

    ``scores`` float [D] descending, ``is_tp`` bool [D], ``image_ids`` int [D]; ``num_gt`` is the class's
    non-crowd ground truth, ``num_gt_per_image`` the same per image id.
    """

    category_id: int
    scores: np.ndarray
    is_tp: np.ndarray
    image_ids: np.ndarray
    num_gt: int
    num_gt_per_image: dict[int, int]


def match_per_class(
    gt: str | os.PathLike | dict | COCO, results: Iterable[Mapping[str, Any]], *, iou_type: str = "bbox", iou: float = 0.5
) -> dict[int, ClassMatches]:
    """COCO-style matching within each class, over all detections (no score threshold).

    Per image and class, the detections sorted by score (descending; equal scores keep their input order) are
    matched greedily (:func:`greedy_match`) to that class's ground truth. Greedy by score means keeping only the
    detections above any threshold leaves each kept detection's match unchanged, so counting true and false
    positives down the sorted scores gives the exact precision and recall at every threshold.

    Returns:
        ``{category_id: ClassMatches}`` for every category of the ground truth.
    """
    coco_gt = load_coco_gt(gt)
    grouped = _group_by_image(results, coco_gt, "bbox" if iou_type == "bbox" else "segmentation")
    found: dict[int, list[tuple[float, bool, int]]] = {c: [] for c in coco_gt.getCatIds()}
    num_gt_per_image: dict[int, dict[int, int]] = {c: {} for c in coco_gt.getCatIds()}
    for image_id in coco_gt.getImgIds():
        anns_all = coco_gt.imgToAnns.get(image_id, [])
        dets_all = grouped.get(image_id, [])
        for category_id in {a["category_id"] for a in anns_all} | {d["category_id"] for d in dets_all}:
            anns = [a for a in anns_all if a["category_id"] == category_id]
            detections = _by_score([d for d in dets_all if d["category_id"] == category_id])
            gt_ignore = _gt_ignore(anns)
            if int((~gt_ignore).sum()):
                num_gt_per_image[category_id][image_id] = int((~gt_ignore).sum())
            dt_match, _ = greedy_match(pairwise_iou(detections, anns, coco_gt, iou_type), gt_ignore, iou)
            found[category_id].extend((float(d["score"]), bool(g >= 0), image_id) for d, g in zip(detections, dt_match) if g != IGNORED)
    out = {}
    for category_id, items in found.items():
        order = np.argsort([-s for s, _, _ in items], kind="stable")
        out[category_id] = ClassMatches(
            category_id=category_id,
            scores=np.array([items[i][0] for i in order], dtype=np.float64),
            is_tp=np.array([items[i][1] for i in order], dtype=bool),
            image_ids=np.array([items[i][2] for i in order], dtype=np.int64),
            num_gt=sum(num_gt_per_image[category_id].values()),
            num_gt_per_image=num_gt_per_image[category_id],
        )
    return out


def per_image_f1(matches: ClassMatches, score_threshold: float) -> list[dict[str, Any]]:
    """Per-image counts of one class at a score threshold: rows ``{"image_id", "tp", "fp", "fn", "f1"}`` for the
    images with ground truth or a kept detection of the class; F1 = 2 TP / (2 TP + FP + FN)."""
    kept = matches.scores >= score_threshold
    image_ids = set(matches.num_gt_per_image) | {int(i) for i in matches.image_ids[kept]}
    rows = []
    for image_id in sorted(image_ids):
        here = kept & (matches.image_ids == image_id)
        tp = int(np.count_nonzero(here & matches.is_tp))
        fp = int(np.count_nonzero(here & ~matches.is_tp))
        fn = matches.num_gt_per_image.get(image_id, 0) - tp
        rows.append({"image_id": image_id, "tp": tp, "fp": fp, "fn": fn, "f1": 2 * tp / (2 * tp + fp + fn)})
    return rows
