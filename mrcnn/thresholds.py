"""Per-class score thresholds calibrated on validation, and applying them to detection records.

A class's threshold is the detection score that maximises F1 at IoU 0.5 over the validation set, with
detections matched to that class's ground truth COCO-style (:func:`mrcnn.report.matching.match_per_class`).
A class with fewer than ``min_instances`` ground-truth instances, or where no threshold gives F1 > 0, gets the
floor (by default the predictor's default score threshold). The result serialises to json
(:meth:`CalibratedThresholds.to_dict`) to travel in a checkpoint or an MLflow model.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from pycocotools.coco import COCO

from mrcnn.data.categories import CategoryMap
from mrcnn.evaluation import load_coco_gt
from mrcnn.report.matching import DEFAULT_SCORE_THRESHOLD, ClassMatches, match_per_class

__all__ = [
    "DEFAULT_SCORE_THRESHOLD",
    "CalibratedThresholds",
    "ClassThreshold",
    "apply_thresholds",
    "best_f1_threshold",
    "calibrate_thresholds",
    "check_class_thresholds",
    "format_thresholds",
    "stored_class_thresholds",
]
DEFAULT_MIN_INSTANCES = 10


@dataclass(frozen=True)
class ClassThreshold:
    """One class's threshold and its validation numbers at that threshold.

    ``f1``, ``precision``, ``recall`` are fractions in [0, 1] counting the detections with score >= threshold
    (``num_detections`` of them); ``num_gt`` is the class's non-crowd ground truth; ``calibrated`` is False
    where the floor was used (the numbers are then those at the floor).
    """

    category_id: int
    threshold: float
    f1: float
    precision: float
    recall: float
    num_gt: int
    num_detections: int
    calibrated: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ClassThreshold:
        missing = [name for name in cls.__dataclass_fields__ if name not in data]
        if missing:
            raise ValueError(f"class threshold {dict(data)}: missing {missing}")
        return cls(
            category_id=int(data["category_id"]),
            threshold=float(data["threshold"]),
            f1=float(data["f1"]),
            precision=float(data["precision"]),
            recall=float(data["recall"]),
            num_gt=int(data["num_gt"]),
            num_detections=int(data["num_detections"]),
            calibrated=bool(data["calibrated"]),
        )


@dataclass(frozen=True)
class CalibratedThresholds:
    """Thresholds for every category of the validation ground truth and how they were calibrated."""

    classes: dict[int, ClassThreshold] = field(default_factory=dict)
    iou: float = 0.5
    iou_type: str = "bbox"
    min_instances: int = DEFAULT_MIN_INSTANCES
    floor: float = DEFAULT_SCORE_THRESHOLD

    @property
    def thresholds(self) -> dict[int, float]:
        """``{category_id: threshold}``, what :func:`apply_thresholds` takes."""
        return {c: t.threshold for c, t in self.classes.items()}

    def to_dict(self) -> dict[str, Any]:
        """A json-ready dict: the settings and ``classes``, a list of :meth:`ClassThreshold.to_dict` by category id."""
        return {
            "iou": self.iou,
            "iou_type": self.iou_type,
            "min_instances": self.min_instances,
            "floor": self.floor,
            "classes": [self.classes[c].to_dict() for c in sorted(self.classes)],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CalibratedThresholds:
        """The inverse of :meth:`to_dict`. Raises ValueError naming what is missing or repeated."""
        missing = [k for k in ("iou", "iou_type", "min_instances", "floor", "classes") if k not in data]
        if missing:
            raise ValueError(f"calibrated thresholds: missing {missing}")
        classes = [ClassThreshold.from_dict(item) for item in data["classes"]]
        by_id = {c.category_id: c for c in classes}
        if len(by_id) != len(classes):
            raise ValueError("calibrated thresholds: a category_id appears more than once in 'classes'")
        return cls(by_id, float(data["iou"]), str(data["iou_type"]), int(data["min_instances"]), float(data["floor"]))


def _counts_at(matches: ClassMatches, threshold: float) -> tuple[float, float, float, int]:
    """(f1, precision, recall, num_detections) counting the detections with score >= threshold."""
    kept = matches.scores >= threshold
    num = int(np.count_nonzero(kept))
    tp = int(np.count_nonzero(matches.is_tp & kept))
    precision = tp / num if num else 0.0
    recall = tp / matches.num_gt if matches.num_gt else 0.0
    f1 = 2 * tp / (num + matches.num_gt) if num + matches.num_gt else 0.0
    return f1, precision, recall, num


def best_f1_threshold(scores: np.ndarray, is_tp: np.ndarray, num_gt: int) -> tuple[float, float] | None:
    """The score threshold that maximises F1 from detections sorted by score.

    Keeping the detections with score >= s, for s each distinct score: TP(s) and FP(s) are cumulative sums down
    the sorted list, taken at the last detection with that score (equal scores are kept or dropped together);
    F1 = 2 TP / (TP + FP + num_gt). Tie rule: of the scores with the highest F1, the highest score (the
    fewest detections) wins.

    Args:
        scores (np.ndarray[D] float): descending.
        is_tp (np.ndarray[D] bool): whether each detection matched ground truth.
        num_gt: the ground-truth instances.

    Returns:
        (threshold, f1), or None where no detection is a true positive (F1 is 0 at every threshold).
    """
    scores, is_tp = np.asarray(scores, dtype=np.float64), np.asarray(is_tp, dtype=bool)
    if not np.any(is_tp) or num_gt <= 0:
        return None
    if np.any(np.diff(scores) > 0):
        raise ValueError("best_f1_threshold: scores must be sorted in descending order")
    tp = np.cumsum(is_tp)
    num_kept = np.arange(1, len(scores) + 1)
    last_of_score = np.append(scores[1:] != scores[:-1], True)  # the last index of each run of equal scores
    f1 = np.where(last_of_score, 2 * tp / (num_kept + num_gt), -1.0)
    best = int(np.argmax(f1))  # the first maximum: the highest score
    return float(scores[best]), float(f1[best])


def calibrate_thresholds(
    gt: str | os.PathLike | dict | COCO,
    results: Iterable[Mapping[str, Any]],
    *,
    iou: float = 0.5,
    iou_type: str = "bbox",
    min_instances: int = DEFAULT_MIN_INSTANCES,
    floor: float = DEFAULT_SCORE_THRESHOLD,
) -> CalibratedThresholds:
    """Per-class score thresholds that maximise F1 on validation (see the module docstring).

    Args:
        gt: validation ground truth (instances json path, dict or COCO).
        results: COCO results records of the model on those images, best run at a low score threshold (a
            threshold below the model's own cannot be found); ``bbox`` XYWH, or ``segmentation`` RLE for segm.
        iou: the IoU a match needs.
        iou_type: ``bbox`` or ``segm``, what IoU is computed on.
        min_instances: classes with fewer non-crowd ground-truth instances get the floor.
        floor: the threshold of those classes.

    Returns:
        CalibratedThresholds with one ClassThreshold per category of the ground truth.
    """
    if min_instances < 0 or not 0.0 <= floor <= 1.0:
        raise ValueError(f"calibration: need min_instances >= 0 and 0 <= floor <= 1, got {min_instances} and {floor}")
    coco_gt = load_coco_gt(gt)
    classes = {}
    for category_id, matches in match_per_class(coco_gt, results, iou_type=iou_type, iou=iou).items():
        best = best_f1_threshold(matches.scores, matches.is_tp, matches.num_gt) if matches.num_gt >= min_instances else None
        threshold = best[0] if best is not None else floor
        f1, precision, recall, num = _counts_at(matches, threshold)
        classes[category_id] = ClassThreshold(category_id, threshold, f1, precision, recall, matches.num_gt, num, best is not None)
    return CalibratedThresholds(classes, float(iou), iou_type, int(min_instances), float(floor))


def apply_thresholds(records: Iterable[Mapping[str, Any]], thresholds: Mapping[int, float], default: float) -> list[Mapping[str, Any]]:
    """The records whose ``score`` is >= their class's threshold, in their order.

    Args:
        records: detection or COCO results records with ``category_id`` and ``score``.
        thresholds: ``{category_id: threshold}`` (e.g. :attr:`CalibratedThresholds.thresholds`).
        default: the threshold of a category that ``thresholds`` lacks.

    Returns:
        the kept records themselves (not copies).
    """
    return [r for r in records if float(r["score"]) >= float(thresholds.get(r["category_id"], default))]


def check_class_thresholds(thresholds: Mapping[Any, Any], categories: CategoryMap, *, source: str) -> dict[int, float]:
    """Per-class score thresholds as ``{category_id: score}``, checked against a category map.

    Args:
        thresholds: category id (int, or a string of one, as JSON keys are) -> score in [0, 1].
        categories: the model's category map; every id must be in it.
        source: what the thresholds are, for the error message (e.g. ``"thresholds.json"``).

    Raises:
        ValueError: not a mapping, an id that is not an integer or not in the map, a score that is not a
            number in [0, 1]; the message names ``source`` and the bad entry.
    """
    if not isinstance(thresholds, Mapping):
        raise ValueError(f"{source}: expected an object of category id -> score, got {type(thresholds).__name__}")
    checked: dict[int, float] = {}
    for key, value in thresholds.items():
        try:
            category_id = int(key)
            if isinstance(key, (bool, float)) or str(category_id) != str(key).strip():
                raise ValueError
        except (TypeError, ValueError):
            raise ValueError(f"{source}: category id {key!r} is not an integer") from None
        if category_id not in categories:
            raise ValueError(f"{source}: unknown category id {category_id}; the model's ids: {categories.category_ids}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"{source}: the threshold of category {category_id} must be a number in [0, 1], got {value!r}")
        checked[category_id] = float(value)
    return checked


def stored_class_thresholds(metadata: Mapping[str, Any]) -> dict[int, float] | None:
    """The per-class score thresholds a checkpoint's metadata holds under ``thresholds``, ``{category_id:
    score}``; None when it holds none. The entry is ``mrcnn.thresholds.CalibratedThresholds.to_dict()``
    (what ``mrcnn train`` stores) or a plain ``{category_id: score}`` object.

    Raises:
        ValueError: the entry is neither.
    """
    stored = metadata.get("thresholds")
    if stored is None:
        return None
    if isinstance(stored, Mapping) and "classes" in stored:
        return CalibratedThresholds.from_dict(stored).thresholds
    if isinstance(stored, Mapping):
        return {int(k): float(v) for k, v in stored.items()}
    raise ValueError(f"checkpoint metadata 'thresholds': expected calibrated thresholds or an object, got {type(stored).__name__}")


def format_thresholds(calibrated: CalibratedThresholds, names: Mapping[int, str] | None = None) -> str:
    """A plain-text table, one line per class: threshold, F1, precision, recall (percent), ground truth, and
    ``floor`` where the floor was used. ``names``: ``{category_id: name}`` (default: the ids)."""
    names = names or {}
    width = max([8, *(len(str(names.get(c, c))) + 2 for c in calibrated.classes)])
    lines = [f"{'class':<{width}}{'thresh':>8}{'F1':>7}{'P':>7}{'R':>7}{'gt':>6}"]
    for category_id in sorted(calibrated.classes):
        c = calibrated.classes[category_id]
        source = "" if c.calibrated else "  floor"
        lines.append(
            f"{str(names.get(category_id, category_id)):<{width}}{c.threshold:8.3f}{c.f1 * 100:7.1f}"
            f"{c.precision * 100:7.1f}{c.recall * 100:7.1f}{c.num_gt:6d}{source}"
        )
    return "\n".join(lines)
