"""Greedy matching and the confusion matrix on the hand-made case, counted by hand."""

from __future__ import annotations

import numpy as np
import pytest

from mrcnn.report.matching import IGNORED, UNMATCHED, confusion_matrix, greedy_match, match_per_class, per_image_f1

from .conftest import CAT, DOG, result


def test_greedy_match_takes_the_best_free_ground_truth_and_ignores_crowd_only_matches():
    ious = np.array(
        [
            [0.9, 0.6, 0.0],  # takes gt 0 (best)
            [0.8, 0.55, 0.0],  # gt 0 is taken: takes gt 1
            [0.7, 0.3, 0.9],  # gt 0 taken, gt 1 below: matches only the crowd gt 2 -> ignored
            [0.7, 0.3, 0.2],  # nothing free reaches 0.5: unmatched
        ]
    )
    dt_match, gt_matched = greedy_match(ious, np.array([False, False, True]), 0.5)
    assert dt_match.tolist() == [0, 1, IGNORED, UNMATCHED]
    assert gt_matched.tolist() == [True, True, False]


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_confusion_matrix_of_the_handmade_case_is_exact(gt, results, iou_type):
    matrix = confusion_matrix(gt, results, iou_type=iou_type, iou=0.5, score_threshold=0.5)
    assert matrix.names == ("cat", "dog")
    assert matrix.category_ids == (CAT, DOG)
    # rows: gt cat, gt dog, background (false positives); columns: predicted cat, dog, background (missed)
    expected = [
        [1, 0, 1],  # A found; C missed
        [1, 0, 0],  # B detected as a cat (the crowd dog is never missed)
        [1, 1, 0],  # the duplicate cat; the dog in image 3 (the crowd detection and the 0.3 cat are not counted)
    ]
    assert matrix.counts.tolist() == expected
    assert matrix.rows()[0] == ["gt \\ pred", "cat", "dog", "background"]
    assert matrix.rows()[3] == ["background", 1, 1, 0]


def test_confusion_matrix_with_per_class_thresholds(gt, results):
    # cats need 0.95 (none passes), dogs take the default 0.5
    matrix = confusion_matrix(gt, results, score_threshold={CAT: 0.95}, default_threshold=0.5)
    assert matrix.counts.tolist() == [[0, 0, 2], [0, 0, 1], [0, 1, 0]]


def test_confusion_matrix_without_the_crowd_flag_counts_the_region(gt, results):
    gt["annotations"][3]["iscrowd"] = 0
    matrix = confusion_matrix(gt, results, score_threshold=0.5)
    # the crowd-region detection (IoU 100/1600) is now a false positive, and the big dog a miss
    assert matrix.counts.tolist() == [[1, 0, 1], [1, 0, 1], [1, 2, 0]]


def test_confusion_matrix_refuses_unknown_images(gt):
    with pytest.raises(ValueError, match="image_id 9"):
        confusion_matrix(gt, [result(9, CAT, [0, 0, 1, 1], 0.9)])


def test_match_per_class_and_per_image_f1(gt, results):
    matches = match_per_class(gt, results, iou_type="bbox")
    cat, dog = matches[CAT], matches[DOG]
    assert cat.scores.tolist() == [0.9, 0.8, 0.6, 0.3]
    assert cat.is_tp.tolist() == [True, False, False, False]  # the cat on the dog is no cat match
    assert (cat.num_gt, cat.num_gt_per_image) == (2, {1: 1, 2: 1})
    assert dog.scores.tolist() == [0.7]  # the crowd detection is left out
    assert (dog.num_gt, dog.num_gt_per_image) == (1, {1: 1})
    assert per_image_f1(cat, 0.5) == [
        {"image_id": 1, "tp": 1, "fp": 2, "fn": 0, "f1": 0.5},
        {"image_id": 2, "tp": 0, "fp": 0, "fn": 1, "f1": 0.0},
    ]
    assert [row["image_id"] for row in per_image_f1(cat, 0.2)] == [1, 2, 3]
