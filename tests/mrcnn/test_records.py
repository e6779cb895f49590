"""Record conversions: detection records <-> batch segmentation's row columns, and the COCO result."""

from __future__ import annotations

import pytest

from mrcnn.records import DETECTION_FIELDS, KEYPOINT_FIELDS, SEGMENT_COLUMNS, coco_result, detection_record, row_to_records, segment_columns


def _records(with_keypoints: bool) -> list[dict]:
    keypoints = {"keypoints": [1.0, 2.0, 1.0, 3.5, 4.25, 1.0], "keypoint_scores": [0.5, -1.0]} if with_keypoints else {}
    return [
        detection_record(label=2, category_id=11, category_name="square", score=0.875, box_xyxy=[1, 2, 30.5, 40],
                         segmentation={"size": [48, 64], "counts": "abc"}, area=300.0, **keypoints),
        detection_record(label=1, category_id=7, category_name="circle", score=0.25, box_xyxy=[0, 0, 5, 5],
                         segmentation=None, area=0.0, **keypoints),
    ]  # fmt: skip


@pytest.mark.parametrize("with_keypoints", [False, True])
def test_segment_row_round_trip(with_keypoints):
    records = _records(with_keypoints)
    columns = segment_columns(records)
    assert set(columns) == set(SEGMENT_COLUMNS) - {"key", "file_name", "image_id", "height", "width"}
    assert columns["masks_rle"] == ["abc", None] and columns["boxes"][0] == [1.0, 2.0, 30.5, 40.0]
    assert columns["keypoints"] == ([records[0]["keypoints"]] * 2 if with_keypoints else [[], []])
    back = row_to_records({"height": 48, "width": 64, **columns})
    assert back == records
    assert tuple(back[0]) == DETECTION_FIELDS + (KEYPOINT_FIELDS if with_keypoints else ())


def test_row_from_before_keypoints_reads_as_none():
    columns = segment_columns(_records(False))
    del columns["keypoints"], columns["keypoint_scores"]
    assert all("keypoints" not in r for r in row_to_records({"height": 48, "width": 64, **columns}))


def test_coco_result_rounds_and_names():
    record = _records(True)[0]
    result = coco_result(record, image_id=5, file_name="a.jpg")
    assert result == {"file_name": "a.jpg", "image_id": 5, "category_id": 11, "bbox": [1.0, 2.0, 29.5, 38.0],
                      "score": 0.875, "segmentation": {"size": [48, 64], "counts": "abc"},
                      "keypoints": [1.0, 2.0, 1.0, 3.5, 4.25, 1.0], "keypoint_scores": [0.5, -1.0]}  # fmt: skip
    assert "segmentation" not in coco_result(_records(False)[1], image_id=None)
