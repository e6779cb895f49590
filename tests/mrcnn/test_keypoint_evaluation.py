"""Keypoint COCO evaluation (OKS): our 10 numbers equal pycocotools' COCOeval run directly on the same files
(exactly with the pycocotools backend; to float rounding with the default, faster-coco-eval when installed)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from mrcnn.data.keypoints import DEFAULT_KEYPOINT_SIGMA
from mrcnn.data.synthetic_keypoints import make_synthetic_keypoints_coco
from mrcnn.evaluation import (
    KEYPOINT_STAT_NAMES,
    evaluate_coco,
    format_metrics_table,
    keypoint_oks_sigmas,
    load_coco_gt,
)
from tests.mrcnn.data.test_keypoints import _person_keypoints_json


def _noisy_results(gt: dict, seed: int, *, sigma_px: float) -> list[dict]:
    """Each ground-truth instance found with jittered keypoints, plus a false positive per image."""
    rng = np.random.default_rng(seed)
    results = []
    for ann in gt["annotations"]:
        points = np.asarray(ann["keypoints"], dtype=float).reshape(-1, 3)
        points[:, :2] += rng.normal(0.0, sigma_px, size=(len(points), 2))
        points[:, 2] = 1
        results.append({"image_id": ann["image_id"], "category_id": ann["category_id"], "bbox": ann["bbox"],
                        "score": float(rng.uniform(0.3, 1.0)), "keypoints": points.reshape(-1).round(2).tolist()})  # fmt: skip
    for image in gt["images"]:
        points = np.zeros((len(gt["categories"][0]["keypoints"]), 3))
        points[:, 0], points[:, 1], points[:, 2] = rng.uniform(0, image["width"], len(points)), rng.uniform(0, image["height"], len(points)), 1
        results.append({"image_id": image["id"], "category_id": gt["categories"][0]["id"], "bbox": [5.0, 5.0, 40.0, 40.0],
                        "score": float(rng.uniform(0.0, 0.6)), "keypoints": points.reshape(-1).round(2).tolist()})  # fmt: skip
    return results


def _pycocotools(gt_path, results_path, sigmas=None) -> list[float]:
    gt = COCO(str(gt_path))
    evaluator = COCOeval(gt, gt.loadRes(str(results_path)), iouType="keypoints")
    if sigmas is not None:
        evaluator.params.kpt_oks_sigmas = np.asarray(sigmas)
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return [float(v) * 100 if v > -1 else -1.0 for v in evaluator.stats]


def _assert_equal_to_pycocotools(gt_path, results, expected: list[float], iou_types=("keypoints",)) -> dict:
    """Our numbers for both backends against pycocotools' own; returns the default backend's metrics."""
    exact = evaluate_coco(gt_path, results, iou_types=iou_types, backend="pycocotools")
    assert [exact["keypoints"][name] for name in KEYPOINT_STAT_NAMES] == expected
    metrics = evaluate_coco(gt_path, results, iou_types=iou_types)
    assert [metrics["keypoints"][name] for name in KEYPOINT_STAT_NAMES] == pytest.approx(expected, rel=0, abs=1e-9)
    return metrics


def test_house_keypoints_equal_pycocotools_on_the_same_files(tmp_path):
    info = make_synthetic_keypoints_coco(tmp_path / "data", num_train=1, num_val=30, size=128, seed=5)
    gt_path = info["val"]["annotations"]
    results = _noisy_results(json.loads(gt_path.read_text()), seed=0, sigma_px=1.5)
    results_path = tmp_path / "results.json"
    results_path.write_text(json.dumps(results))

    expected = _pycocotools(gt_path, results_path, sigmas=[DEFAULT_KEYPOINT_SIGMA] * 5)
    metrics = _assert_equal_to_pycocotools(gt_path, json.loads(results_path.read_text()), expected, ("bbox", "keypoints"))
    assert 20.0 < metrics["keypoints"]["AP"] < 95.0  # a non-trivial result
    assert metrics["keypoints"]["per_category"] == {"house": pytest.approx(metrics["keypoints"]["AP"])}
    table = format_metrics_table(metrics).splitlines()
    assert table[2].split() == list(KEYPOINT_STAT_NAMES) and table[3].split()[0] == "keypoints"


def test_person_keypoints_use_cocos_sigmas_and_equal_pycocotools_defaults(tmp_path):
    gt = _person_keypoints_json()
    gt_path, results_path = tmp_path / "person_keypoints.json", tmp_path / "results.json"
    gt_path.write_text(json.dumps(gt))
    results_path.write_text(json.dumps(_noisy_results(gt, seed=1, sigma_px=6.0)))
    np.testing.assert_array_equal(keypoint_oks_sigmas(load_coco_gt(gt)), COCOeval(iouType="keypoints").params.kpt_oks_sigmas)
    expected = _pycocotools(gt_path, results_path)
    metrics = _assert_equal_to_pycocotools(gt_path, json.loads(results_path.read_text()), expected)
    assert metrics["keypoints"]["AP"] > 5.0


def test_a_categorys_own_sigmas_and_bad_results(tmp_path):
    info = make_synthetic_keypoints_coco(tmp_path / "data", num_train=1, num_val=10, size=96, seed=2)
    gt = json.loads(info["val"]["annotations"].read_text())
    results = _noisy_results(gt, seed=2, sigma_px=2.0)
    loose = json.loads(json.dumps(gt))
    loose["categories"][0]["keypoint_sigmas"] = [0.2] * 5
    assert evaluate_coco(loose, results, iou_types=["keypoints"])["keypoints"]["AP"] > evaluate_coco(
        gt, results, iou_types=["keypoints"]
    )["keypoints"]["AP"]
    with pytest.raises(ValueError, match=r"result 0: 12 keypoint values, category 1 needs 15"):
        evaluate_coco(gt, [{**results[0], "keypoints": results[0]["keypoints"][:12]}], iou_types=["keypoints"])
    with pytest.raises(ValueError, match=r"result 0: missing \['keypoints'\]"):
        evaluate_coco(gt, [{k: v for k, v in results[0].items() if k != "keypoints"}], iou_types=["keypoints"])


def test_keypoint_ap_covers_only_the_categories_with_keypoints(tmp_path):
    """A dataset with a keypoint category and one without (its instances have no keypoint fields): keypoint AP
    is the keypoint category's, equal to pycocotools restricted to it; bbox AP still covers both."""
    info = make_synthetic_keypoints_coco(tmp_path / "data", num_train=1, num_val=12, size=96, seed=6)
    gt = json.loads(info["val"]["annotations"].read_text())
    results = _noisy_results(gt, seed=3, sigma_px=2.0)
    gt["categories"].append({"id": 2, "name": "tree", "supercategory": "shape"})
    for ann in gt["annotations"][::3]:  # every third instance becomes a tree, without keypoint fields
        ann["category_id"] = 2
        del ann["keypoints"], ann["num_keypoints"]
    trees = [{"image_id": a["image_id"], "category_id": 2, "bbox": a["bbox"], "score": 0.9} for a in gt["annotations"] if a["category_id"] == 2]
    gt_path, results_path = tmp_path / "mixed.json", tmp_path / "mixed_results.json"
    gt_path.write_text(json.dumps(gt))
    results_path.write_text(json.dumps([r for r in results if "keypoints" in r]))

    coco = COCO(str(gt_path))
    evaluator = COCOeval(coco, coco.loadRes(str(results_path)), iouType="keypoints")
    evaluator.params.kpt_oks_sigmas, evaluator.params.catIds = np.asarray([DEFAULT_KEYPOINT_SIGMA] * 5), [1]
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    expected = [float(v) * 100 if v > -1 else -1.0 for v in evaluator.stats]
    metrics = _assert_equal_to_pycocotools(gt_path, results + trees, expected, ("bbox", "keypoints"))
    assert set(metrics["keypoints"]["per_category"]) == {"house"} and set(metrics["bbox"]["per_category"]) == {"house", "tree"}
