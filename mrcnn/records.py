"""Record schemas defined once: the Parquet shard row, the detection record, batch segmentation's output
row and the COCO result, with the conversions between them.

The target dict given to the model is built in ``mrcnn.data.dataset.build_target_from_columns``.
"""

from __future__ import annotations

from typing import Any

# One row per image in the Parquet shards (see DESIGN.md, "Data contract"). name -> arrow type.
SHARD_COLUMNS: dict[str, str] = {
    "image_id": "int64",
    "file_name": "string",
    "height": "int32",
    "width": "int32",
    "image": "binary",
    "boxes": "list<list<float32>[4]>",
    "labels": "list<int32>",
    "category_ids": "list<int64>",  # the dataset's ids are 64-bit; shards written before read as int32
    "masks_rle": "list<string>",
    "iscrowd": "list<int8>",
    "area": "list<float32>",
    # per instance [x1, y1, v1, ..., xK, yK, vK], absolute pixels; [] for an instance (or dataset) without
    # keypoints. Shards written before this column existed read as having none.
    "keypoints": "list<list<float32>>",
}

# One detected instance, as the predictor, batch segmentation and the endpoint return it.
DETECTION_FIELDS: tuple[str, ...] = (
    "label",  # int, contiguous 1..K
    "category_id",  # int, the dataset's category id
    "category_name",  # str
    "score",  # float, class probability
    "box_xyxy",  # [x1, y1, x2, y2], absolute pixels of the original image
    "bbox",  # [x, y, w, h], COCO convention
    "segmentation",  # {"size": [H, W], "counts": str}, COCO compressed RLE
    "area",  # float, mask pixel count
)
# Added to each detection record by a model with a keypoint head (``model.task: keypoints``).
KEYPOINT_FIELDS: tuple[str, ...] = (
    "keypoints",  # [x1, y1, v1, ..., xK, yK, vK], absolute pixels of the original image; v = 1 (predicted)
    "keypoint_scores",  # [s1, ..., sK], each keypoint's heatmap logit (higher = more confident)
)

# One row per segmented image in batch segmentation's Parquet output (``mrcnn segment``). The
# list columns hold one entry per detection, best first; names follow SHARD_COLUMNS. name -> arrow type.
SEGMENT_COLUMNS: dict[str, str] = {
    "key": "string",  # the image's id in its input: path relative to the input folder, or str(image_id)
    "file_name": "string",
    "image_id": "int64",  # the shard row's image id; null for a folder input
    "height": "int32",
    "width": "int32",
    "labels": "list<int32>",  # contiguous 1..K
    "category_ids": "list<int64>",
    "category_names": "list<string>",
    "scores": "list<float32>",
    "boxes": "list<list<float32>[4]>",  # XYXY, absolute pixels
    "masks_rle": "list<string>",  # compressed RLE counts (size = height, width)
    "area": "list<float32>",  # mask pixel count
    "keypoints": "list<list<float32>>",  # per detection [x1, y1, v1, ...]; [] from a model without keypoints
    "keypoint_scores": "list<list<float32>>",  # per detection [s1, ..., sK]; [] without keypoints
}


def detection_record(
    *,
    label: int,
    category_id: int,
    category_name: str,
    score: float,
    box_xyxy: list[float],
    segmentation: dict[str, Any] | None,
    area: float,
    keypoints: list[float] | None = None,
    keypoint_scores: list[float] | None = None,
) -> dict[str, Any]:
    """One detection as a json-ready dict with the fields of ``DETECTION_FIELDS``, plus those of
    ``KEYPOINT_FIELDS`` when ``keypoints`` (flat [x1, y1, v1, ...]) are given."""
    x1, y1, x2, y2 = (float(v) for v in box_xyxy)
    record = {
        "label": int(label),
        "category_id": int(category_id),
        "category_name": category_name,
        "score": float(score),
        "box_xyxy": [x1, y1, x2, y2],
        "bbox": [x1, y1, x2 - x1, y2 - y1],
        "segmentation": segmentation,
        "area": float(area),
    }
    if keypoints is not None:
        record["keypoints"] = [float(v) for v in keypoints]
        record["keypoint_scores"] = [float(v) for v in (keypoint_scores or [])]
    return record


def segment_columns(records: list[dict[str, Any]]) -> dict[str, list]:
    """One image's detection records (best first) -> the list columns of its ``SEGMENT_COLUMNS`` row
    (``labels`` .. ``keypoint_scores``; the inverse of ``row_to_records``)."""
    return {
        "labels": [d["label"] for d in records],
        "category_ids": [d["category_id"] for d in records],
        "category_names": [d["category_name"] for d in records],
        "scores": [d["score"] for d in records],
        "boxes": [d["box_xyxy"] for d in records],
        "masks_rle": [None if d["segmentation"] is None else d["segmentation"]["counts"] for d in records],
        "area": [d["area"] for d in records],
        "keypoints": [d.get("keypoints") or [] for d in records],
        "keypoint_scores": [d.get("keypoint_scores") or [] for d in records],
    }


def row_to_records(row: dict[str, Any]) -> list[dict[str, Any]]:
    """A ``SEGMENT_COLUMNS`` row (``detections.parquet``, as a python dict) -> the image's detection records,
    best first (the inverse of ``segment_columns``, given the row's ``height`` and ``width``).

    The values come back exactly: scores and boxes are float32 in the model and in the file.
    """
    size = [row["height"], row["width"]]
    none = [None] * len(row["labels"])
    return [
        detection_record(
            label=label,
            category_id=category_id,
            category_name=name,
            score=score,
            box_xyxy=box,
            segmentation=None if counts is None else {"size": size, "counts": counts},
            area=area,
            keypoints=points or None,  # [] (or null, in a part from before keypoints): a model without them
            keypoint_scores=point_scores,
        )
        for label, category_id, name, score, box, counts, area, points, point_scores in zip(
            row["labels"], row["category_ids"], row["category_names"], row["scores"], row["boxes"],
            row["masks_rle"], row["area"], row.get("keypoints") or none, row.get("keypoint_scores") or none,
        )
    ]


def coco_result(detection: dict[str, Any], *, image_id: int | None, file_name: str | None = None) -> dict[str, Any]:
    """A detection as a COCO results-json record (``bbox`` XYWH, ``segmentation`` compressed RLE, and for a
    keypoint model ``keypoints`` [x1, y1, v1, ...] and ``keypoint_scores``)."""
    record: dict[str, Any] = {}
    if file_name is not None:
        record["file_name"] = file_name
    if image_id is not None:
        record["image_id"] = int(image_id)
    record.update(
        category_id=detection["category_id"],
        bbox=[round(v, 2) for v in detection["bbox"]],
        score=round(detection["score"], 5),
    )
    if detection.get("segmentation") is not None:
        record["segmentation"] = detection["segmentation"]
    if detection.get("keypoints") is not None:
        record["keypoints"] = [round(v, 2) for v in detection["keypoints"]]
        record["keypoint_scores"] = [round(v, 4) for v in detection["keypoint_scores"]]
    return record
