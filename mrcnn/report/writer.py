"""The evaluation report written to a folder: per-class AP/AR, PR curves, confusion matrices, the worst images.

Files (every path relative to the folder, and listed in ``report.json``):

- ``per_class.csv``: ``iou_type`` plus :data:`mrcnn.report.per_class.PER_CLASS_FIELDS` (AP/AR in percent).
- ``pr_curves.csv``: ``iou_type`` plus :data:`mrcnn.report.per_class.PR_CURVE_FIELDS`, COCOeval's
  interpolated precision at its 101 recall thresholds, IoU .50 and .75, area all, 100 detections;
  ``pr_curves_<iou_type>.png``: one small plot per class.
- ``confusion_<iou_type>.csv`` / ``.png`` for bbox and segm: :func:`mrcnn.report.matching.confusion_matrix`.
- ``worst/<category_id>_<name>/<rank>_<image_id>.png`` (with ``images_dir``): ground truth (left) beside the
  detections (right) of that class, for the images where the class's F1 is lowest.
- ``report.json``: the index of these files, the per-class numbers and the worst images with their counts.

Pictures are drawn with matplotlib's Agg canvas on a ``Figure`` (no pyplot, no backend switch).
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools.coco import COCO

from mrcnn.evaluation import load_coco_gt
from mrcnn.report.matching import DEFAULT_SCORE_THRESHOLD, ConfusionMatrix, confusion_matrix, match_per_class, per_image_f1
from mrcnn.report.per_class import PER_CLASS_FIELDS, PR_CURVE_FIELDS, per_class_metrics, pr_curves, run_cocoeval


def _write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def plot_pr_curves(path: Path, rows: Sequence[Mapping[str, Any]], *, title: str) -> None:
    """A grid with one plot per class: precision against recall, a line per IoU (rows of :func:`pr_curves`)."""
    names = list(dict.fromkeys(row["name"] for row in rows))
    columns = max(1, math.ceil(math.sqrt(len(names))))
    grid_rows = max(1, math.ceil(len(names) / columns))
    figure = _figure(2.2 * columns, 2.0 * grid_rows + 0.4)
    for index, name in enumerate(names):
        axes = figure.add_subplot(grid_rows, columns, index + 1)
        for iou in sorted({row["iou"] for row in rows if row["name"] == name}):
            points = [(row["recall"], row["precision"]) for row in rows if row["name"] == name and row["iou"] == iou]
            axes.plot([p[0] for p in points], [p[1] for p in points], label=f"IoU {iou:.2f}")
        axes.set_title(name, fontsize=8)
        axes.set_xlim(0, 1)
        axes.set_ylim(0, 1.02)
        axes.tick_params(labelsize=6)
        if index == 0:
            axes.legend(fontsize=6)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path)


def plot_confusion_matrix(path: Path, matrix: ConfusionMatrix) -> None:
    """The matrix as an image coloured by each row's fractions, with its counts written in where it has <= 30
    rows. Classes without ground truth or detections (an empty row and column) are left out of the picture."""
    counts = matrix.counts
    keep = [i for i in range(len(matrix.names)) if counts[i].any() or counts[:, i].any()] + [len(matrix.names)]
    labels = [*matrix.names, "background"]
    labels, counts = [labels[i] for i in keep], counts[np.ix_(keep, keep)]
    fractions = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = max(4.0, 0.35 * len(labels) + 2)
    figure = _figure(size, size)
    axes = figure.add_subplot(1, 1, 1)
    axes.imshow(fractions, cmap="Blues", vmin=0, vmax=1)
    axes.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
    axes.set_yticks(range(len(labels)), labels, fontsize=7)
    axes.set_xlabel("predicted")
    axes.set_ylabel("ground truth")
    axes.set_title(f"{matrix.iou_type} confusion at IoU {matrix.iou:.2f} (row fractions, counts)")
    if len(labels) <= 30:
        for i in range(len(labels)):
            for j in range(len(labels)):
                if counts[i, j]:
                    color = "white" if fractions[i, j] > 0.5 else "black"
                    axes.text(j, i, str(int(counts[i, j])), ha="center", va="center", fontsize=7, color=color)
    figure.tight_layout()
    figure.savefig(path)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "class"


def _as_drawn(items: Iterable[Mapping[str, Any]], gt: COCO, *, is_gt: bool) -> list[dict[str, Any]]:
    """Annotations or results records in draw_detections' form (ground truth labelled "gt", score 1)."""
    drawn = []
    for item in items:
        x, y, w, h = item["bbox"]
        name = gt.cats[item["category_id"]]["name"]
        segmentation = gt.annToRLE(item) if is_gt and item.get("segmentation") else item.get("segmentation")
        drawn.append(
            {
                "category_id": item["category_id"],
                "category_name": f"gt {name}" if is_gt else name,
                "score": 1.0 if is_gt else float(item["score"]),
                "box_xyxy": [x, y, x + w, y + h],
                "segmentation": segmentation,
                "keypoints": item.get("keypoints") if not is_gt else None,
            }
        )
    return drawn


def _write_overlay(path: Path, image_path: Path, gt: COCO, anns: list, detections: list) -> None:
    from PIL import Image

    from mrcnn.visualize import draw_detections

    with Image.open(image_path) as image:
        rgb = np.asarray(image.convert("RGB"))
    left = draw_detections(rgb, _as_drawn(anns, gt, is_gt=True))
    right = draw_detections(rgb, _as_drawn(detections, gt, is_gt=False))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate([left, right], axis=1)).save(path)


def _class_threshold(score_threshold: float | Mapping[int, float], category_id: int) -> float:
    if isinstance(score_threshold, Mapping):
        return float(score_threshold.get(category_id, DEFAULT_SCORE_THRESHOLD))
    return float(score_threshold)


def _overlay_entry(out_dir: Path, gt: COCO, records: list, category_id: int, rank: int, row: dict, *, threshold: float, images_dir) -> str:
    """Draw one worst image of a class (``records``: that image's records of the class); returns its path
    relative to ``out_dir``. Raises OSError (unreadable image) or ValueError (a mask of another size)."""
    image = gt.imgs[row["image_id"]]
    relative = Path("worst") / f"{category_id}_{_slug(gt.cats[category_id]['name'])}" / f"{rank}_{row['image_id']}.png"
    anns = [a for a in gt.imgToAnns.get(row["image_id"], []) if a["category_id"] == category_id]
    dets = [r for r in records if float(r["score"]) >= threshold]
    _write_overlay(out_dir / relative, Path(images_dir) / str(image.get("file_name")), gt, anns, dets)
    return relative.as_posix()


def _worst_images(out_dir: Path, gt: COCO, records: list, *, iou_type, iou, score_threshold, worst_k, images_dir) -> tuple[dict, list]:
    """``{category_id: [{"image_id", "file_name", "tp", "fp", "fn", "f1", "overlay"}]}`` and the skipped overlays."""
    worst, skipped = {}, []
    by_image_and_class: dict[tuple[int, int], list] = {}
    for record in records:
        by_image_and_class.setdefault((record["image_id"], record["category_id"]), []).append(record)
    for category_id, matches in match_per_class(gt, records, iou_type=iou_type, iou=iou).items():
        threshold = _class_threshold(score_threshold, category_id)
        rows = [row for row in per_image_f1(matches, threshold) if row["f1"] < 1.0]
        rows.sort(key=lambda row: (row["f1"], -(row["fp"] + row["fn"]), row["image_id"]))
        chosen = []
        for rank, row in enumerate(rows[:worst_k], start=1):
            entry = {**row, "file_name": gt.imgs[row["image_id"]].get("file_name"), "overlay": None}
            if images_dir is not None:
                try:
                    entry["overlay"] = _overlay_entry(
                        out_dir,
                        gt,
                        by_image_and_class.get((row["image_id"], category_id), []),
                        category_id,
                        rank,
                        row,
                        threshold=threshold,
                        images_dir=images_dir,
                    )
                except (OSError, ValueError) as exc:
                    reason = f"{Path(images_dir) / str(entry['file_name'])}: {exc}"
                    skipped.append({"image_id": row["image_id"], "category_id": category_id, "reason": reason})
            chosen.append(entry)
        if chosen:
            worst[category_id] = chosen
    return worst, skipped


def _with_names(gt: COCO, category_names: Mapping[int, str] | None) -> COCO:
    if not category_names:
        return gt
    dataset = copy.deepcopy(gt.dataset)
    for category in dataset["categories"]:
        category["name"] = str(category_names.get(category["id"], category_names.get(str(category["id"]), category["name"])))
    return load_coco_gt(dataset)


def write_report(
    out_dir: str | os.PathLike,
    gt: str | os.PathLike | dict | COCO,
    results: Iterable[Mapping[str, Any]],
    *,
    iou_types: Sequence[str] = ("bbox", "segm"),
    category_names: Mapping[int, str] | None = None,
    images_dir: str | os.PathLike | None = None,
    worst_k: int = 3,
    score_threshold: float | Mapping[int, float] = DEFAULT_SCORE_THRESHOLD,
    iou: float = 0.5,
) -> dict[str, Any]:
    """Write the evaluation report (see the module docstring) into ``out_dir`` (created if missing).

    Args:
        gt: ground-truth instances json (path, dict or COCO).
        results: COCO results records for ``iou_types`` (as :func:`mrcnn.report.per_class.run_cocoeval`).
        iou_types: any of bbox, segm, keypoints; the confusion matrices are drawn for bbox and segm among them
            (bbox where there is neither).
        category_names: ``{category_id: name}`` (int or str keys) replacing the ground truth's names in every file.
        images_dir: the folder the ground truth's ``file_name``s are relative to; without it no overlays.
        worst_k: the worst images kept per class: those with the lowest F1 of that class at IoU ``iou`` (matching
            within the class, :func:`mrcnn.report.matching.match_per_class`, detections with score >= the class's
            threshold), F1 below 1 only; ties: more errors (FP + FN) first, then the lower image id. They are
            matched on segm where it is among ``iou_types``, else on bbox.
        score_threshold: a float, or ``{category_id: threshold}`` (e.g. calibrated; missing classes take 0.5),
            for the confusion matrices and the worst images. PR curves and AP use every detection.
        iou: the IoU of the confusion matrices and the worst images.

    Returns:
        the contents of ``report.json``: ``files`` (paths relative to ``out_dir``), ``per_class``
        (``{iou_type: rows}``), ``worst_images`` (``{category_id: rows}``), ``skipped`` (overlays not drawn, with why).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    coco_gt = _with_names(load_coco_gt(gt), category_names)
    records = list(results)
    files: dict[str, Any] = {"per_class": "per_class.csv", "pr_curves": "pr_curves.csv"}
    per_class, files["pr_curves_png"] = _write_per_class(out, coco_gt, records, iou_types)
    match_types = [t for t in iou_types if t in ("bbox", "segm")] or ["bbox"]
    files["confusion"], confusion = _write_confusion(out, coco_gt, records, match_types, iou=iou, score_threshold=score_threshold)
    worst_type = "segm" if "segm" in match_types else match_types[0]
    worst, skipped = _worst_images(
        out, coco_gt, records, iou_type=worst_type, iou=iou, score_threshold=score_threshold, worst_k=worst_k, images_dir=images_dir
    )
    thresholds = {str(k): v for k, v in score_threshold.items()} if isinstance(score_threshold, Mapping) else score_threshold
    report = {
        "iou_types": list(iou_types),
        "iou": iou,
        "score_threshold": thresholds,
        "files": files,
        "per_class": per_class,
        "confusion": {"labels": [*(coco_gt.cats[c]["name"] for c in sorted(coco_gt.getCatIds())), "background"], "counts": confusion},
        "worst_images": {
            "matched_on": worst_type,
            "ranked_by": "per-image F1 of the class, lowest first",
            "by_category": {str(k): v for k, v in worst.items()},
        },
        "skipped": skipped,
    }
    (out / "report.json").write_text(json.dumps(report, indent=2))
    return report


def _write_per_class(out: Path, gt: COCO, records: list, iou_types: Sequence[str]) -> tuple[dict[str, list], dict[str, str]]:
    """per_class.csv, pr_curves.csv and a PR plot per IoU type; returns the per-class rows and the plots' names."""
    per_class: dict[str, list[dict[str, Any]]] = {}
    plots: dict[str, str] = {}
    curve_rows: list[list[Any]] = []
    for iou_type in iou_types:
        evaluator = run_cocoeval(gt, records, iou_type)
        per_class[iou_type] = per_class_metrics(evaluator)
        curves = pr_curves(evaluator, ious=(0.5, 0.75))
        curve_rows += [[iou_type, *(row[k] for k in PR_CURVE_FIELDS)] for row in curves]
        if curves:
            plots[iou_type] = f"pr_curves_{iou_type}.png"
            plot_pr_curves(out / plots[iou_type], curves, title=f"{iou_type} precision-recall (area all, 100 detections)")
    class_rows = ([t, *(row[k] for k in PER_CLASS_FIELDS)] for t, rows in per_class.items() for row in rows)
    _write_csv(out / "per_class.csv", ("iou_type", *PER_CLASS_FIELDS), class_rows)
    _write_csv(out / "pr_curves.csv", ("iou_type", *PR_CURVE_FIELDS), curve_rows)
    return per_class, plots


def _write_confusion(out: Path, gt: COCO, records: list, iou_types: Sequence[str], *, iou: float, score_threshold) -> tuple[dict, dict]:
    """confusion_<iou_type>.csv and .png; returns their names and the counts ``{iou_type: [[int]]}``."""
    files, counts = {}, {}
    for iou_type in iou_types:
        matrix = confusion_matrix(
            gt, records, iou_type=iou_type, iou=iou, score_threshold=score_threshold, default_threshold=DEFAULT_SCORE_THRESHOLD
        )
        files[iou_type] = {"csv": f"confusion_{iou_type}.csv", "png": f"confusion_{iou_type}.png"}
        table = matrix.rows()
        _write_csv(out / files[iou_type]["csv"], table[0], table[1:])
        plot_confusion_matrix(out / files[iou_type]["png"], matrix)
        counts[iou_type] = matrix.counts.tolist()
    return files, counts
