"""A keypoint model end to end in the library: checkpoint round trip, predictor records, COCO results, overlays."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mrcnn.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from mrcnn.config import get_preset
from mrcnn.data.categories import Category, CategoryMap
from mrcnn.data.synthetic_keypoints import (
    HOUSE_KEYPOINTS,
    HOUSE_SKELETON,
    render_keypoint_image,
)
from mrcnn.modeling import build_model
from mrcnn.predictor import Predictor, detections_to_records
from mrcnn.records import DETECTION_FIELDS, KEYPOINT_FIELDS, coco_result
from mrcnn.visualize import category_color, draw_detections

pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)


def test_checkpoint_round_trips_the_task_and_keypoint_metadata(tmp_path, small_keypoint_checkpoint):
    checkpoint = load_checkpoint(small_keypoint_checkpoint)
    assert checkpoint.config.model.task == "keypoints" and checkpoint.config.model.keypoint_head.num_keypoints == 5
    house = checkpoint.categories.keypoint_category
    assert (house.keypoints, house.skeleton) == (HOUSE_KEYPOINTS, HOUSE_SKELETON)
    assert checkpoint.build_model().roi_heads.has_keypoint()

    sigmas = (0.1,) * 5
    categories = CategoryMap(categories=(Category(id=4, name="house", keypoints=HOUSE_KEYPOINTS, keypoint_sigmas=sigmas),))
    path = save_checkpoint(tmp_path / "a.ckpt", model=checkpoint.build_model(), config=checkpoint.config, categories=categories)
    assert load_checkpoint(path).categories.keypoint_category.oks_sigmas == sigmas

    three = checkpoint.config.replace(**{"model.keypoint_head.num_keypoints": 3})
    with pytest.raises(CheckpointError, match="predicts 3 keypoints but the category map names 5"):
        save_checkpoint(tmp_path / "b.ckpt", model=build_model(three), config=three, categories=categories)


def test_predictor_records_carry_keypoints_and_coco_results_too(small_keypoint_checkpoint):
    predictor = Predictor.from_checkpoint(small_keypoint_checkpoint, score_threshold=0.0)
    image, _ = render_keypoint_image(np.random.default_rng(0), size=128)
    records = predictor.predict([image, image[:100]], max_detections=5)
    assert all(len(per_image) == 5 for per_image in records)
    for record in records[1]:
        assert tuple(record) == DETECTION_FIELDS + KEYPOINT_FIELDS
        points = np.asarray(record["keypoints"]).reshape(5, 3)
        assert len(record["keypoint_scores"]) == 5 and (points[:, 2] == 1).all()
        x1, _, x2, _ = record["box_xyxy"]
        assert (points[:, 0] >= x1 - 1).all() and (points[:, 0] <= x2 + 1).all() and (points[:, 1] <= 101).all()
        result = coco_result(record, image_id=7)
        assert result["keypoints"] == [round(v, 2) for v in record["keypoints"]] and "segmentation" in result

    none = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64),
            "keypoints": torch.zeros(0, 5, 3), "keypoints_scores": torch.zeros(0, 5)}  # fmt: skip
    assert detections_to_records(none, predictor.categories) == []
    raw = predictor.predict_raw([image])[0]
    assert raw["keypoints"].dtype == torch.float32 and raw["keypoints"].shape[1:] == (5, 3)

    instances = Predictor.from_checkpoint(_instance_checkpoint(small_keypoint_checkpoint), score_threshold=0.0)
    assert all(tuple(r) == DETECTION_FIELDS for r in instances.predict([image])[0])  # no keypoint fields


def _instance_checkpoint(keypoint_checkpoint):
    path = keypoint_checkpoint.with_name("instances_of_houses.ckpt")
    if not path.exists():
        cfg = get_preset("r18_fpn_small").replace(**{"model.num_classes": 1})
        categories = CategoryMap.from_names(["house"])
        save_checkpoint(path, model=build_model(cfg), config=cfg, categories=categories)
    return path


def test_overlay_draws_the_skeleton_and_the_points():
    image = np.zeros((60, 80, 3), dtype=np.uint8)
    record = {"category_id": 3, "category_name": "house", "score": 0.9, "box_xyxy": [5.0, 5.0, 75.0, 55.0],
              "segmentation": None, "keypoints": [10.0, 30.0, 1.0, 70.0, 30.0, 1.0, 40.0, 50.0, 0.0]}  # fmt: skip
    drawn = draw_detections(image, [record], draw_boxes=False, skeletons={3: ((1, 2), (2, 3))})
    color = np.array(category_color(3))
    assert (drawn[30, 40] == color).all()  # on the line between keypoints 1 and 2
    assert (drawn[30, 10] == 255).all() and (drawn[30, 70] == 255).all()  # the points: white dots
    assert (drawn[50, 40] == 0).all() and (drawn[40, 55] == 0).all()  # keypoint 3 (v = 0) and its bone: not drawn
    points_only = draw_detections(image, [record], draw_boxes=False)
    assert (points_only[30, 40] == 0).all() and (points_only[30, 10] == 255).all()
