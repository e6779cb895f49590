"""Per-class thresholds: the F1 argmax on a case built by hand, the tie rule, the floor, json round trips and
applying them to records."""

from __future__ import annotations

import json

import pytest

from mrcnn.thresholds import (
    DEFAULT_SCORE_THRESHOLD,
    CalibratedThresholds,
    ClassThreshold,
    apply_thresholds,
    best_f1_threshold,
    calibrate_thresholds,
    format_thresholds,
)

CAT, DOG, BIRD = 1, 2, 3
GT_BOX = [0.0, 0.0, 10.0, 10.0]
AWAY_BOX = [50.0, 50.0, 10.0, 10.0]


def _ann(ann_id, image_id, category_id, box, iscrowd=0):
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": box, "area": box[2] * box[3], "iscrowd": iscrowd}


def _det(image_id, category_id, box, score):
    return {"image_id": image_id, "category_id": category_id, "bbox": box, "score": score}


def handmade_case():
    """12 cats (one per image 1..12), 3 dogs (images 1..3, with perfect detections), 12 birds never found.

    Cat detections, best first, and whether each is a true positive by construction (on an unmatched cat's box,
    or far away from any cat):
        0.95 T, 0.90 T, 0.85 F, 0.80 T, 0.70 T, 0.60 F, 0.50 F, 0.40 T, 0.30 F, 0.20 F
    plus a 0.99 cat on a crowd region (ignored) and a 0.99 dog on cat 1 (no cat match).
    """
    images = [{"id": i, "file_name": f"{i}.png", "height": 100, "width": 100} for i in range(1, 13)]
    anns = [_ann(i, i, CAT, GT_BOX) for i in range(1, 13)]
    anns += [_ann(100 + i, i, DOG, [20.0, 20.0, 10.0, 10.0]) for i in (1, 2, 3)]
    anns += [_ann(200 + i, i, BIRD, [70.0, 0.0, 10.0, 10.0]) for i in range(1, 13)]
    anns.append(_ann(300, 12, CAT, [0.0, 60.0, 40.0, 40.0], iscrowd=1))
    categories = [{"id": CAT, "name": "cat"}, {"id": DOG, "name": "dog"}, {"id": BIRD, "name": "bird"}]
    gt = {"images": images, "annotations": anns, "categories": categories}
    cats = [(0.95, True), (0.90, True), (0.85, False), (0.80, True), (0.70, True)]
    cats += [(0.60, False), (0.50, False), (0.40, True), (0.30, False), (0.20, False)]
    results = []
    next_image = 1
    for score, is_tp in cats:
        if is_tp:
            results.append(_det(next_image, CAT, GT_BOX, score))
            next_image += 1
        else:
            results.append(_det(1, CAT, AWAY_BOX, score))
    results.append(_det(12, CAT, [5.0, 65.0, 10.0, 10.0], 0.99))  # inside the crowd region
    results.append(_det(1, DOG, GT_BOX, 0.99))  # a dog on cat 1
    results += [_det(i, DOG, [20.0, 20.0, 10.0, 10.0], 0.9) for i in (1, 2, 3)]
    results.append(_det(1, BIRD, AWAY_BOX, 0.8))  # the birds are never found
    return gt, results


def test_the_stored_threshold_is_the_f1_argmax_computed_by_hand():
    gt, results = handmade_case()
    calibrated = calibrate_thresholds(gt, results, iou=0.5, min_instances=10, floor=0.5)
    # F1 = 2 TP / (kept + 12) down the cat list:
    # 0.95: 2/13, 0.90: 4/14, 0.85: 4/15, 0.80: 6/16, 0.70: 8/17, 0.60: 8/18, 0.50: 8/19, 0.40: 10/20 (best),
    # 0.30: 10/21, 0.20: 10/22
    cat = calibrated.classes[CAT]
    assert cat == ClassThreshold(CAT, 0.4, 10 / 20, 5 / 8, 5 / 12, 12, 8, True)
    assert calibrated.thresholds[CAT] == 0.4


def test_the_floor_applies_to_rare_classes_and_to_classes_never_found():
    gt, results = handmade_case()
    calibrated = calibrate_thresholds(gt, results, min_instances=10, floor=0.45)
    dog = calibrated.classes[DOG]  # 3 dogs < 10: the floor, with its numbers at the floor
    assert (dog.threshold, dog.calibrated, dog.num_gt) == (0.45, False, 3)
    assert (dog.num_detections, dog.precision, dog.recall) == (4, 3 / 4, 1.0)  # the 0.99 dog on a cat counts
    bird = calibrated.classes[BIRD]  # 12 birds, none found: F1 is 0 everywhere
    assert (bird.threshold, bird.calibrated, bird.f1) == (0.45, False, 0.0)
    # with min_instances 3 the dogs are calibrated: at 0.9, 3 TP of 4 kept (the dog on a cat) and 3 dogs: 6 / 7
    dog = calibrate_thresholds(gt, results, min_instances=3).classes[DOG]
    assert (dog.threshold, dog.f1, dog.calibrated) == (0.9, 6 / 7, True)


def test_best_f1_threshold_tie_rule_and_equal_scores():
    # F1 at 0.9: 2/3; 0.8: 2/4; 0.7: 2/5; 0.6: 4/6 = 2/3 -> a tie, the higher score wins
    assert best_f1_threshold([0.9, 0.8, 0.7, 0.6], [True, False, False, True], num_gt=2) == (0.9, pytest.approx(2 / 3))
    # two detections at 0.8 are kept together: F1 at 0.8 is 4/5 (not 1 from the first alone)
    assert best_f1_threshold([0.9, 0.8, 0.8, 0.7], [True, True, False, False], num_gt=2) == (0.8, pytest.approx(0.8))
    assert best_f1_threshold([0.9, 0.8], [False, False], num_gt=2) is None
    with pytest.raises(ValueError, match="descending"):
        best_f1_threshold([0.1, 0.9], [True, True], num_gt=2)


def test_to_dict_from_dict_round_trip_through_json():
    gt, results = handmade_case()
    calibrated = calibrate_thresholds(gt, results)
    data = json.loads(json.dumps(calibrated.to_dict()))
    assert data["floor"] == DEFAULT_SCORE_THRESHOLD and [c["category_id"] for c in data["classes"]] == [CAT, DOG, BIRD]
    assert CalibratedThresholds.from_dict(data) == calibrated
    del data["classes"][0]["f1"]
    with pytest.raises(ValueError, match="missing \\['f1'\\]"):
        CalibratedThresholds.from_dict(data)
    with pytest.raises(ValueError, match="missing \\['classes'\\]"):
        CalibratedThresholds.from_dict({"iou": 0.5, "iou_type": "bbox", "min_instances": 1, "floor": 0.5})


def test_apply_thresholds_keeps_exactly_the_expected_records():
    records = [
        {"id": "a", "category_id": 1, "score": 0.49},
        {"id": "b", "category_id": 1, "score": 0.5},  # equal to the threshold: kept
        {"id": "c", "category_id": 2, "score": 0.79},
        {"id": "d", "category_id": 2, "score": 0.95},
        {"id": "e", "category_id": 7, "score": 0.31},  # no threshold of its own: the default 0.3
        {"id": "f", "category_id": 7, "score": 0.29},
    ]
    kept = apply_thresholds(records, {1: 0.5, 2: 0.8}, default=0.3)
    assert [r["id"] for r in kept] == ["b", "d", "e"]
    assert kept[0] is records[1]


def test_calibrate_refuses_a_bad_floor():
    gt, results = handmade_case()
    with pytest.raises(ValueError, match="floor"):
        calibrate_thresholds(gt, results, floor=1.5)


def test_format_thresholds():
    gt, results = handmade_case()
    lines = format_thresholds(calibrate_thresholds(gt, results), {CAT: "cat", DOG: "dog"}).splitlines()
    assert lines[0].split() == ["class", "thresh", "F1", "P", "R", "gt"]
    assert lines[1].split() == ["cat", "0.400", "50.0", "62.5", "41.7", "12"]
    assert lines[2].split()[0] == "dog" and lines[2].split()[-1] == "floor"
    assert lines[3].split()[0] == "3"  # no name given: the id
