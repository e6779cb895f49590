"""evaluate_coco against pycocotools' COCOeval run directly on the real COCO mini ground truth."""

from __future__ import annotations

import contextlib
import copy
import io
import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from mrcnn.data.masks import mask_to_rle, rle_to_mask, segmentation_to_rle
from mrcnn.evaluation import (
    STAT_NAMES,
    evaluate_coco,
    format_metrics_table,
    load_coco_gt,
)

GT_JSON = Path(__file__).resolve().parents[1] / "data" / "coco_mini" / "annotations.json"

pytestmark = pytest.mark.filterwarnings(
    # pycocotools 2.0.x calls np.array(copy=False) on its own buffer type; numpy 2 warns on every decode.
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)


@pytest.fixture(scope="module")
def gt_dict() -> dict:
    return json.loads(GT_JSON.read_text())


def _gt_rle(ann: dict, image: dict) -> dict:
    return segmentation_to_rle(ann["segmentation"], height=image["height"], width=image["width"])


@pytest.fixture(scope="module")
def results(gt_dict) -> list[dict]:
    """Noisy detections: jittered GT boxes, shifted GT masks, random scores, misses and false positives."""
    rng = np.random.default_rng(0)
    images = {img["id"]: img for img in gt_dict["images"]}
    category_ids = [c["id"] for c in gt_dict["categories"]]
    out = []
    for ann in gt_dict["annotations"]:
        if rng.random() < 0.15:
            continue  # a miss
        image = images[ann["image_id"]]
        x, y, w, h = ann["bbox"]
        jitter = rng.normal(0.0, 0.08, size=4) * np.array([w, h, w, h])
        bbox = [float(x + jitter[0]), float(y + jitter[1]), float(max(1.0, w + jitter[2])), float(max(1.0, h + jitter[3]))]
        mask = np.roll(rle_to_mask(_gt_rle(ann, image)), shift=(int(rng.integers(-4, 5)), int(rng.integers(-4, 5))), axis=(0, 1))
        category = ann["category_id"] if rng.random() < 0.9 else int(rng.choice(category_ids))
        out.append(
            {
                "image_id": ann["image_id"],
                "category_id": category,
                "bbox": [round(v, 2) for v in bbox],
                "score": round(float(rng.random()), 5),
                "segmentation": mask_to_rle(mask),
            }
        )
    for _ in range(25):  # false positives
        image = images[int(rng.choice(list(images)))]
        H, W = image["height"], image["width"]
        x1, y1 = int(rng.integers(0, W - 40)), int(rng.integers(0, H - 40))
        x2, y2 = int(rng.integers(x1 + 5, W)), int(rng.integers(y1 + 5, H))
        mask = np.zeros((H, W), dtype=np.uint8)
        mask[y1:y2, x1:x2] = 1
        out.append(
            {
                "image_id": image["id"],
                "category_id": int(rng.choice(category_ids)),
                "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                "score": round(float(rng.random()), 5),
                "segmentation": mask_to_rle(mask),
            }
        )
    return out


def _pycocotools_stats(results: list[dict], iou_type: str, *, cat_ids=None, img_ids=None) -> np.ndarray:
    """pycocotools run directly, the way detectron2 runs it: segm results go in without their bbox,
    so that area ranges use mask areas (loadRes would otherwise take each area from the box)."""
    if iou_type == "segm":
        results = [{k: v for k, v in r.items() if k != "bbox"} for r in results]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(GT_JSON))
        dt = gt.loadRes(copy.deepcopy(results))
        evaluator = COCOeval(gt, dt, iouType=iou_type)
        if cat_ids is not None:
            evaluator.params.catIds = cat_ids
        if img_ids is not None:
            evaluator.params.imgIds = img_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats


# pycocotools and faster-coco-eval sum in different orders: the same numbers up to 1e-14 AP points.
SAME = 1e-9


def _as_percent(stats: np.ndarray) -> dict[str, float]:
    return {name: (float(v) * 100 if v > -1 else -1.0) for name, v in zip(STAT_NAMES, stats)}


@pytest.mark.parametrize("backend", ["auto", "pycocotools", "faster-coco-eval"])
@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_matches_pycocotools_exactly(results, iou_type, backend):
    metrics = evaluate_coco(GT_JSON, results, iou_types=[iou_type], backend=backend)
    assert set(metrics) == {iou_type}
    expected = _as_percent(_pycocotools_stats(results, iou_type))
    got = {name: metrics[iou_type][name] for name in STAT_NAMES}
    assert got == pytest.approx(expected, abs=SAME)
    assert 5.0 < got["AP"] < 95.0  # a non-trivial result
    reference = evaluate_coco(GT_JSON, results, iou_types=[iou_type], backend="pycocotools")
    assert metrics[iou_type]["per_category"] == pytest.approx(reference[iou_type]["per_category"], abs=1e-9)


def test_unknown_backend_raises(results):
    with pytest.raises(ValueError, match="evaluation backend"):
        evaluate_coco(GT_JSON, results, backend="detectron2")


def test_both_iou_types_from_one_call_and_gt_as_dict(results, gt_dict):
    metrics = evaluate_coco(gt_dict, results)
    assert set(metrics) == {"bbox", "segm"}
    for iou_type in ("bbox", "segm"):
        assert {n: metrics[iou_type][n] for n in STAT_NAMES} == pytest.approx(_as_percent(_pycocotools_stats(results, iou_type)), abs=SAME)
    assert metrics["bbox"]["AP"] != metrics["segm"]["AP"]
    table = format_metrics_table(metrics)
    assert "bbox" in table and "segm" in table and f"{metrics['bbox']['AP']:7.1f}" in table


def test_per_category_ap_is_keyed_by_name_and_matches_single_category_eval(results, gt_dict):
    metrics = evaluate_coco(GT_JSON, results, iou_types=["bbox"])
    per_category = metrics["bbox"]["per_category"]
    assert set(per_category) == {c["name"] for c in gt_dict["categories"]}
    for category_id, name in ((84, "book"), (1, "person"), (76, "keyboard")):
        expected = _pycocotools_stats(results, "bbox", cat_ids=[category_id])[0] * 100
        assert per_category[name] == pytest.approx(expected, abs=1e-9)
    assert per_category["toaster"] == -1.0  # no ground truth of that category


def test_image_ids_restrict_the_evaluation(results):
    subset = [434204, 255165]
    metrics = evaluate_coco(GT_JSON, results, iou_types=["bbox"], image_ids=subset)
    expected = _as_percent(_pycocotools_stats(results, "bbox", img_ids=subset))
    assert {n: metrics["bbox"][n] for n in STAT_NAMES} == pytest.approx(expected, abs=SAME)
    assert metrics["bbox"]["AP"] != evaluate_coco(GT_JSON, results, iou_types=["bbox"])["bbox"]["AP"]


def test_perfect_results_give_ap_100(gt_dict):
    images = {img["id"]: img for img in gt_dict["images"]}
    perfect = [
        {
            "image_id": ann["image_id"],
            "category_id": ann["category_id"],
            "bbox": ann["bbox"],
            "score": 1.0,
            "segmentation": _gt_rle(ann, images[ann["image_id"]]),
        }
        for ann in gt_dict["annotations"]
        if not ann["iscrowd"]
    ]
    metrics = evaluate_coco(GT_JSON, perfect)
    for iou_type in ("bbox", "segm"):
        assert metrics[iou_type]["AP"] == pytest.approx(100.0)
        assert metrics[iou_type]["AP50"] == pytest.approx(100.0)
        assert metrics[iou_type]["AR100"] == pytest.approx(100.0)
        present = {c["name"] for c in gt_dict["categories"] if any(a["category_id"] == c["id"] for a in gt_dict["annotations"])}
        for name, ap in metrics[iou_type]["per_category"].items():
            assert ap == (pytest.approx(100.0) if name in present else -1.0), name


def test_segmentation_counts_may_be_bytes(results):
    as_bytes = [{**r, "segmentation": {**r["segmentation"], "counts": r["segmentation"]["counts"].encode()}} for r in results]
    assert evaluate_coco(GT_JSON, as_bytes, iou_types=["segm"]) == evaluate_coco(GT_JSON, results, iou_types=["segm"])


def test_empty_results_give_zeros(gt_dict):
    metrics = evaluate_coco(GT_JSON, [])
    for iou_type in ("bbox", "segm"):
        stats = metrics[iou_type]
        assert stats["AP"] == 0.0 and stats["AR100"] == 0.0
        assert all(stats[name] in (0.0, -1.0) for name in STAT_NAMES)
        assert all(v in (0.0, -1.0) for v in stats["per_category"].values())
        assert stats["per_category"]["book"] == 0.0


def test_unknown_image_id_raises(results):
    bad = results[:3] + [{**results[3], "image_id": 999}]
    with pytest.raises(ValueError, match="result 3: image_id 999 is not in the ground truth"):
        evaluate_coco(GT_JSON, bad)


def test_unknown_category_and_missing_fields_raise(results):
    with pytest.raises(ValueError, match="result 0: category_id 12345"):
        evaluate_coco(GT_JSON, [{**results[0], "category_id": 12345}])
    no_segm = [{k: v for k, v in results[0].items() if k != "segmentation"}]
    evaluate_coco(GT_JSON, no_segm, iou_types=["bbox"])  # fine for bbox
    with pytest.raises(ValueError, match=r"result 0: missing \['segmentation'\]"):
        evaluate_coco(GT_JSON, no_segm, iou_types=["segm"])
    with pytest.raises(ValueError, match="iou type"):
        evaluate_coco(GT_JSON, results, iou_types=["caption"])
    with pytest.raises(ValueError, match="no category has 'keypoints'"):  # an instances json has no keypoints
        evaluate_coco(GT_JSON, [{**r, "keypoints": [0.0, 0.0, 1]} for r in results], iou_types=["keypoints"])


def test_bad_ground_truth(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_coco_gt(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid json"):
        load_coco_gt(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="no 'annotations' list"):
        load_coco_gt({"images": [], "categories": []})


def test_segm_area_ranges_use_mask_area_even_when_results_carry_bbox(results):
    # mrcnn.engine.predict_coco_results gives records with both bbox and segmentation.
    segm_only = [{k: v for k, v in r.items() if k != "bbox"} for r in results]
    expected = _as_percent(_pycocotools_stats(segm_only, "segm"))
    metrics = evaluate_coco(GT_JSON, results, iou_types=["segm"])
    assert {name: metrics["segm"][name] for name in STAT_NAMES} == pytest.approx(expected, abs=SAME)


# ---------------------------------------------------------------- field cases (issue 16, part A.1)
def _square(x: int, y: int, side: int, size: int = 64) -> tuple[list[float], dict]:
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[y : y + side, x : x + side] = 1
    rle = mask_to_rle(mask)
    return [float(x), float(y), float(side), float(side)], rle


def _gt_with(objects: list[tuple[object, int, int, int, int]], image_ids: list[object]) -> dict:
    """objects: (image_id, annotation_id, x, y, side) squares of category 1 on 64x64 images."""
    annotations = []
    for image_id, ann_id, x, y, side in objects:
        bbox, rle = _square(x, y, side)
        annotations.append({"id": ann_id, "image_id": image_id, "category_id": 1, "bbox": bbox, "area": float(side * side),
                            "segmentation": rle, "iscrowd": 0})  # fmt: skip
    return {
        "images": [{"id": i, "file_name": f"{i}.png", "height": 64, "width": 64} for i in image_ids],
        "annotations": annotations,
        "categories": [{"id": 1, "name": "square"}],
    }


def _direct_pycocotools_stats(gt: dict, results: list[dict], iou_type: str) -> np.ndarray:
    """pycocotools' COCOeval run directly on the inputs as given (the reference)."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(gt)
        coco.createIndex()
        records = [{k: v for k, v in r.items() if k != "bbox"} for r in results] if iou_type == "segm" else results
        evaluator = COCOeval(coco, coco.loadRes(copy.deepcopy(records)), iouType=iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats * 100


@pytest.mark.parametrize("backend", ["pycocotools", "faster-coco-eval"])
def test_annotation_id_zero_scores_100(backend):
    """Two squares with annotation ids 0 and 1, predicted exactly: AP 100 (pycocotools reads id 0 as unmatched)."""
    gt = _gt_with([(7, 0, 4, 4, 20), (7, 1, 36, 36, 20)], [7])
    results = []
    for ann, score in zip(gt["annotations"], (0.9, 0.8)):
        results.append({"image_id": 7, "category_id": 1, "score": score, "bbox": ann["bbox"], "segmentation": ann["segmentation"]})
    metrics = evaluate_coco(gt, results, backend=backend)
    for iou_type in ("bbox", "segm"):
        assert metrics[iou_type]["AP"] == pytest.approx(100.0)
        assert metrics[iou_type]["AR100"] == pytest.approx(100.0)


def _string_id_case() -> tuple[dict, list[dict]]:
    gt = _gt_with(
        [("img_a", 1, 4, 4, 20), ("img_a", 2, 36, 36, 20), ("img_b", 3, 10, 10, 30), ("img_b", 4, 44, 2, 16)],
        ["img_a", "img_b"],
    )
    detections = [  # (image, x, y, side, score): two good, one shifted, one false positive, one miss
        ("img_a", 4, 4, 20, 0.9), ("img_a", 38, 37, 20, 0.6), ("img_b", 10, 12, 30, 0.8), ("img_b", 40, 40, 10, 0.7),
    ]  # fmt: skip
    results = []
    for image_id, x, y, side, score in detections:
        bbox, rle = _square(x, y, side)
        results.append({"image_id": image_id, "category_id": 1, "score": score, "bbox": bbox, "segmentation": rle})
    return gt, results


@pytest.mark.parametrize("backend", ["pycocotools", "faster-coco-eval"])
def test_string_image_ids_give_pycocotools_numbers(backend):
    gt, results = _string_id_case()
    metrics = evaluate_coco(gt, results, backend=backend)
    for iou_type in ("bbox", "segm"):
        reference = _direct_pycocotools_stats(gt, results, iou_type)
        assert 0 < reference[0] < 100  # a definite number, not a trivial 0 or 100
        got = np.array([metrics[iou_type][name] for name in STAT_NAMES])
        np.testing.assert_allclose(got, np.where(reference > -100, reference, -1.0), atol=1e-9)
    # an image selection in the original (string) ids
    only_a = evaluate_coco(gt, results, image_ids=["img_a"], backend=backend)
    assert only_a["bbox"]["AP"] != metrics["bbox"]["AP"]


def test_faster_backend_refusal_falls_back_to_pycocotools(monkeypatch, caplog):
    """Where faster-coco-eval cannot take an input, pycocotools scores it and one warning line says so."""
    import faster_coco_eval

    def refuse(*args, **kwargs):
        raise TypeError("invalid literal for int() with base 10: 'img_a'")

    monkeypatch.setattr(faster_coco_eval, "COCOeval_faster", refuse)
    gt, results = _string_id_case()
    with caplog.at_level("WARNING", logger="mrcnn.evaluation"):
        metrics = evaluate_coco(gt, results, iou_types=("bbox",), backend="faster-coco-eval")
    assert metrics["bbox"]["AP"] == pytest.approx(_direct_pycocotools_stats(gt, results, "bbox")[0])
    lines = [r.getMessage() for r in caplog.records if "using pycocotools" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0]
