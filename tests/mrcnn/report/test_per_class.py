"""Per-class numbers and PR curves against pycocotools' COCOeval arrays computed here, on the hand-made case
and on the real COCO mini ground truth."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import random
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from mrcnn.evaluation import evaluate_coco
from mrcnn.report.per_class import (
    compare_per_class,
    evaluate_per_class,
    format_per_class_comparison,
    format_per_class_table,
    per_class_metrics,
    pr_curves,
    run_cocoeval,
)

from .conftest import CAT, DOG

COCO_MINI_JSON = Path(__file__).resolve().parents[2] / "data" / "coco_mini" / "annotations.json"

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")


def reference_cocoeval(gt: dict, results: list[dict], iou_type: str) -> COCOeval:
    """COCOeval run directly, the way pycocotools' own example does."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        records = copy.deepcopy(results)
        if iou_type == "segm":
            records = [{k: v for k, v in r.items() if k != "bbox"} for r in records]
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(records), iouType=iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
    return evaluator


def expected_rows(evaluator: COCOeval) -> dict[int, dict[str, float]]:
    precision, recall = evaluator.eval["precision"], evaluator.eval["recall"]

    def mean(values):
        values = values[values > -1]
        return float(values.mean() * 100) if values.size else -1.0

    return {
        c: {
            "AP": mean(precision[:, :, k, 0, -1]),
            "AP50": mean(precision[0, :, k, 0, -1]),  # iouThrs[0] = .50
            "AP75": mean(precision[5, :, k, 0, -1]),  # iouThrs[5] = .75
            "AR100": mean(recall[:, k, 0, -1]),
        }
        for k, c in enumerate(evaluator.params.catIds)
    }


def check_against_reference(rows: list[dict], evaluator: COCOeval) -> None:
    expected = expected_rows(evaluator)
    assert [row["category_id"] for row in rows] == list(evaluator.params.catIds)
    for row in rows:
        for name in ("AP", "AP50", "AP75", "AR100"):
            assert row[name] == pytest.approx(expected[row["category_id"]][name], abs=1e-9), (row["name"], name)


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_handmade_case_equals_cocoeval_arrays(gt, results, iou_type):
    rows = per_class_metrics(run_cocoeval(gt, results, iou_type))
    check_against_reference(rows, reference_cocoeval(gt, results, iou_type))
    cat, dog = rows
    # by hand: the cats sorted by score are TP (A), FP, FP, FP with 2 cats to find, so precision is 1 up to
    # recall 0.5 and 0 past it, at every IoU: 51 of the 101 recall points
    assert cat["AP"] == pytest.approx(51 / 101 * 100) and cat["AP50"] == pytest.approx(51 / 101 * 100)
    assert cat["AR100"] == pytest.approx(50.0)
    assert (dog["AP"], dog["AR100"]) == (0.0, 0.0)  # the only dog (B) is missed; the crowd region is ignored
    assert (cat["num_gt"], dog["num_gt"]) == (2, 1)


def test_pr_curves_are_the_precision_array_slices(gt, results):
    evaluator = run_cocoeval(gt, results, "bbox")
    reference = reference_cocoeval(gt, results, "bbox")
    rows = pr_curves(evaluator, ious=(0.5, 0.75))
    assert len(rows) == 2 * 2 * 101
    for t, iou in ((0, 0.5), (5, 0.75)):
        for k, category_id in enumerate((CAT, DOG)):
            points = [r for r in rows if r["iou"] == iou and r["category_id"] == category_id]
            assert [p["recall"] for p in points] == pytest.approx(list(reference.params.recThrs))
            assert [p["precision"] for p in points] == list(reference.eval["precision"][t, :, k, 0, -1])
    cat_50 = [r["precision"] for r in rows if r["iou"] == 0.5 and r["category_id"] == CAT]
    assert cat_50 == pytest.approx([1.0] * 51 + [0.0] * 50)  # pycocotools divides by tp + fp + eps


def test_class_without_ground_truth_has_no_curve_and_minus_one(gt, results):
    gt["categories"].append({"id": 3, "name": "bird"})
    evaluator = run_cocoeval(gt, results, "bbox")
    bird = per_class_metrics(evaluator)[2]
    assert (bird["AP"], bird["AP50"], bird["AR100"], bird["num_gt"]) == (-1.0, -1.0, -1.0, 0)
    assert not [r for r in pr_curves(evaluator) if r["category_id"] == 3]
    line = format_per_class_table({"bbox": [bird]}).splitlines()[1].split()
    assert line == ["bird", "0", "-", "-", "-", "-"]


def test_annotation_id_zero_is_still_matched(gt, results):
    for index, ann in enumerate(gt["annotations"]):
        ann["id"] = index  # 0..3: pycocotools would read the first one as unmatched
    assert per_class_metrics(run_cocoeval(gt, results, "bbox"))[0]["AP"] == pytest.approx(51 / 101 * 100)


@pytest.fixture(scope="module")
def coco_mini() -> tuple[dict, list[dict]]:
    """The real COCO mini ground truth and results made from it: shifted boxes, random scores, some left out,
    some false positives."""
    from mrcnn.data.masks import mask_to_rle, segmentation_to_rle, rle_to_mask

    gt = json.loads(COCO_MINI_JSON.read_text())
    images = {image["id"]: image for image in gt["images"]}
    rng = random.Random(0)
    results = []
    for ann in gt["annotations"]:
        if ann.get("iscrowd") or rng.random() < 0.2:
            continue
        image = images[ann["image_id"]]
        mask = rle_to_mask(segmentation_to_rle(ann["segmentation"], height=image["height"], width=image["width"]))
        shift = rng.choice([0, 1, 3, 8])
        x, y, w, h = ann["bbox"]
        category_id = ann["category_id"] if rng.random() > 0.1 else gt["categories"][rng.randrange(len(gt["categories"]))]["id"]
        results.append(
            {
                "image_id": ann["image_id"],
                "category_id": category_id,
                "bbox": [x + shift, y, w, h],
                "score": round(rng.random(), 4),
                "segmentation": mask_to_rle(np.roll(mask, shift, axis=1)),
            }
        )
    return gt, results


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_coco_mini_equals_cocoeval_arrays_and_evaluate_coco(coco_mini, iou_type):
    gt, results = coco_mini
    rows = evaluate_per_class(gt, results, iou_types=[iou_type])[iou_type]
    check_against_reference(rows, reference_cocoeval(gt, results, iou_type))
    per_category = evaluate_coco(gt, results, iou_types=[iou_type], backend="pycocotools")[iou_type]["per_category"]
    assert {row["name"]: row["AP"] for row in rows} == pytest.approx(per_category)
    non_crowd = {c["id"]: 0 for c in gt["categories"]}
    for ann in gt["annotations"]:
        non_crowd[ann["category_id"]] += 0 if ann.get("iscrowd") else 1
    assert {row["category_id"]: row["num_gt"] for row in rows} == non_crowd
    assert sum(row["AP"] > -1 for row in rows) == sum(n > 0 for n in non_crowd.values())


def test_format_per_class_table(gt, results):
    table = format_per_class_table(evaluate_per_class(gt, results, iou_types=["bbox", "segm"]))
    bbox, segm = table.split("\n\n")
    assert bbox.splitlines()[0].split() == ["bbox", "gt", "AP", "AP50", "AP75", "AR100"]
    assert bbox.splitlines()[1].split() == ["cat", "2", "50.5", "50.5", "50.5", "50.0"]
    assert bbox.splitlines()[2].split() == ["dog", "1", "0.0", "0.0", "0.0", "0.0"]
    assert segm.splitlines()[0].split()[0] == "segm"


def test_compare_per_class_from_rows_and_from_evaluate_coco(gt, results):
    a = evaluate_per_class(gt, results, iou_types=["bbox"])
    better = results + [{"image_id": 2, "category_id": CAT, "bbox": [0.0, 0.0, 10.0, 10.0], "score": 0.95}]
    b = evaluate_coco(gt, better, iou_types=["bbox"], backend="pycocotools")  # its per_category form
    rows = compare_per_class(a, b)
    assert [(r["iou_type"], r["name"]) for r in rows] == [("bbox", "cat"), ("bbox", "dog")]
    assert rows[0]["AP_a"] == pytest.approx(51 / 101 * 100)
    assert rows[0]["delta"] == pytest.approx(rows[0]["AP_b"] - rows[0]["AP_a"]) and rows[0]["delta"] > 0
    assert rows[1]["delta"] == 0.0
    text = format_per_class_comparison(rows, labels=("old", "new"))
    assert text.splitlines()[0].split() == ["bbox", "old", "new", "delta"]
    assert text.splitlines()[1].split()[-1] == f"{rows[0]['delta']:+.1f}"


def test_compare_per_class_missing_class_and_bad_input():
    rows = compare_per_class({"bbox": [{"name": "cat", "AP": 10.0}]}, {"bbox": [{"name": "dog", "AP": 5.0}]})
    assert rows == [
        {"iou_type": "bbox", "name": "cat", "AP_a": 10.0, "AP_b": -1.0, "delta": None},
        {"iou_type": "bbox", "name": "dog", "AP_a": -1.0, "AP_b": 5.0, "delta": None},
    ]
    with pytest.raises(ValueError, match="per_category"):
        compare_per_class({"bbox": 3.0}, {"bbox": []})


def test_run_cocoeval_refuses_bad_input(gt, results):
    with pytest.raises(ValueError, match="iou type"):
        run_cocoeval(gt, results, "mask")
    with pytest.raises(ValueError, match="missing \\['segmentation'\\]"):
        run_cocoeval(gt, [{k: v for k, v in results[0].items() if k != "segmentation"}], "segm")


def test_no_results_gives_zero_ap(gt):
    rows = per_class_metrics(run_cocoeval(gt, [], "bbox"))
    assert [(row["AP"], row["num_gt"]) for row in rows] == [(0.0, 2), (0.0, 1)]


def test_keypoints_per_class_equals_cocoeval_with_the_same_sigmas():
    sigmas = [0.05, 0.08, 0.1]
    categories = [{"id": 1, "name": "house", "keypoints": ["a", "b", "c"], "keypoint_sigmas": sigmas}, {"id": 2, "name": "ball"}]
    images = [{"id": i, "file_name": f"{i}.png", "height": 100, "width": 100} for i in (1, 2)]

    def person(ann_id, image_id, x, y, visible=2):
        points = [x + 2, y + 2, visible, x + 8, y + 2, visible, x + 5, y + 8, visible]
        num = 3 if visible else 0
        return {"id": ann_id, "image_id": image_id, "category_id": 1, "bbox": [x, y, 10.0, 10.0], "area": 400.0,
                "iscrowd": 0, "keypoints": points, "num_keypoints": num}  # fmt: skip

    annotations = [person(1, 1, 0.0, 0.0), person(2, 1, 50.0, 50.0), person(3, 2, 20.0, 20.0), person(4, 2, 70.0, 0.0, visible=0)]
    annotations.append({"id": 5, "image_id": 2, "category_id": 2, "bbox": [0.0, 0.0, 5.0, 5.0], "area": 25.0, "iscrowd": 0})
    gt = {"images": images, "annotations": annotations, "categories": categories}
    results = [
        {"image_id": 1, "category_id": 1, "bbox": [0.0, 0.0, 10.0, 10.0], "score": 0.9, "keypoints": [2.5, 2, 1, 8, 2.5, 1, 5, 8, 1]},
        {"image_id": 1, "category_id": 1, "bbox": [50.0, 50.0, 10.0, 10.0], "score": 0.4, "keypoints": [54, 52, 1, 58, 55, 1, 50, 58, 1]},
        {"image_id": 2, "category_id": 1, "bbox": [0.0, 0.0, 10.0, 10.0], "score": 0.8, "keypoints": [2, 2, 1, 8, 2, 1, 5, 8, 1]},
    ]
    rows = per_class_metrics(run_cocoeval(gt, results, "keypoints"))
    assert [row["name"] for row in rows] == ["house"]  # only the categories with keypoints are scored
    assert rows[0]["num_gt"] == 3  # the house without labelled keypoints is ignored by COCOeval
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        reference = COCOeval(coco_gt, coco_gt.loadRes(copy.deepcopy(results)), iouType="keypoints")
        reference.params.kpt_oks_sigmas = np.array(sigmas)
        reference.params.catIds = [1]
        reference.evaluate()
        reference.accumulate()
    check_against_reference(rows, reference)
    assert 0 < rows[0]["AP"] < 100
