"""Keypoint data: COCO person-keypoint json reading and validation, category metadata, targets, transforms,
the synthetic house-keypoint set."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from pycocotools.cocoeval import Params
from torchvision.models.detection.keypoint_rcnn import _COCO_PERSON_KEYPOINT_NAMES

from mrcnn.data.categories import Category, CategoryMap
from mrcnn.data.coco import load_coco
from mrcnn.data.dataset import (
    CocoInstanceDataset,
    build_target_from_columns,
)
from mrcnn.data.keypoints import (
    COCO_PERSON_KEYPOINTS,
    COCO_PERSON_SIGMAS,
    COCO_PERSON_SKELETON,
    DEFAULT_KEYPOINT_SIGMA,
    KeypointError,
    flip_indices,
    parse_keypoints,
)
from mrcnn.data.masks import rle_to_mask
from mrcnn.data.synthetic_keypoints import (
    HOUSE_KEYPOINTS,
    make_synthetic_keypoints_coco,
    synthetic_keypoint_categories,
)
from mrcnn.data.transforms import RandomHorizontalFlip, Resize

from .conftest import COCO_MINI_DIR, COCO_MINI_JSON

PERSON_IMAGE = 434204  # 500x333, 4 persons


def test_coco_person_constants_match_pycocotools_and_torchvision():
    assert COCO_PERSON_KEYPOINTS == tuple(_COCO_PERSON_KEYPOINT_NAMES)
    assert np.allclose(COCO_PERSON_SIGMAS, Params(iouType="keypoints").kpt_oks_sigmas, rtol=0, atol=1e-12)
    assert len(COCO_PERSON_SKELETON) == 19 and all(1 <= i <= 17 for pair in COCO_PERSON_SKELETON for i in pair)
    person = Category(id=1, name="person", keypoints=COCO_PERSON_KEYPOINTS, skeleton=COCO_PERSON_SKELETON)
    assert person.oks_sigmas == COCO_PERSON_SIGMAS
    assert synthetic_keypoint_categories().categories[0].oks_sigmas == (DEFAULT_KEYPOINT_SIGMA,) * 5


def test_flip_indices_swap_left_and_right():
    indices = flip_indices(COCO_PERSON_KEYPOINTS)
    names = [COCO_PERSON_KEYPOINTS[i] for i in indices]
    assert names[0] == "nose" and names[1] == "right_eye" and names[2] == "left_eye" and names[16] == "left_ankle"
    assert flip_indices(HOUSE_KEYPOINTS) == (0, 2, 1, 4, 3)
    with pytest.raises(ValueError, match="'left_paw' has no mirror keypoint 'right_paw'"):
        flip_indices(["nose", "left_paw"])


@pytest.mark.parametrize(
    ("values", "count", "message"),
    [
        ([1, 2, 2, 3, 4], None, r"3 x 2 = 6 numbers, got 5"),
        ([1, 2, 3, 3, 4, 2], None, r"keypoint 1: visibility must be 0, 1 or 2, got 3"),
        ([1, 2, 2, 600, 4, 1], None, r"keypoint 2 at \(600, 4\) lies outside the 500x333 image"),
        ([1, 2, 2, 3, float("nan"), 1], None, "finite numbers"),
        ([1, 2, 2, 3, "4", 1], None, "finite numbers"),
        ([1, 2, 2, 0, 0, 0], 2, r"num_keypoints is 2 but 1 keypoints are labelled"),
        ("1 2 2", None, "got str"),
    ],
)
def test_parse_keypoints_errors(values, count, message):
    with pytest.raises(KeypointError, match=message):
        parse_keypoints(values, num_keypoints=2, height=333, width=500, count=count)


def test_parse_keypoints_zeroes_unlabelled_points():
    assert parse_keypoints([5, 6, 0, 7.5, 8, 1], num_keypoints=2, height=10, width=10, count=1) == (0, 0, 0, 7.5, 8, 1)


def _person_keypoints_json() -> dict:
    """coco_mini restricted to its person category, in COCO person_keypoints format. The keypoints are
    written here (no keypoint ground truth is bundled): points inside each person's box."""
    data = json.loads(COCO_MINI_JSON.read_text())
    person = next(c for c in data["categories"] if c["name"] == "person")
    person.update(keypoints=list(COCO_PERSON_KEYPOINTS), skeleton=[list(p) for p in COCO_PERSON_SKELETON])
    data["categories"] = [person]
    data["annotations"] = [a for a in data["annotations"] if a["category_id"] == person["id"]]
    for n, ann in enumerate(data["annotations"]):
        x, y, w, h = ann["bbox"]
        points = []
        for k in range(17):
            v = 0 if (k + n) % 5 == 0 else 1 + (k % 2)
            points += [round(x + w * (k + 1) / 18), round(y + h * (k % 4 + 1) / 5), v] if v else [0, 0, 0]
        ann["keypoints"] = points
        ann["num_keypoints"] = sum(1 for v in points[2::3] if v > 0)
    return data


def test_load_person_keypoint_json_keeps_good_and_rejects_bad_annotations():
    data = _person_keypoints_json()
    annotations = data["annotations"]
    assert len(annotations) == 5  # 4 persons in 434204, 1 in 165518
    good = copy.deepcopy(annotations)
    annotations[0]["keypoints"] = annotations[0]["keypoints"][:-3]  # 16 keypoints
    annotations[1]["num_keypoints"] += 1
    del annotations[2]["keypoints"]  # none labelled: kept with all zeros
    del annotations[2]["num_keypoints"]

    result = load_coco(data, image_dir=COCO_MINI_DIR / "images")
    assert result.categories.num_keypoints == 17
    assert result.categories.keypoint_category.skeleton == COCO_PERSON_SKELETON
    assert result.reject_counts() == {"bad_keypoints": 2}
    messages = sorted(r.message for r in result.rejects)
    assert f"annotation {annotations[0]['id']} in <dict>: keypoints must be a list of 3 x 17 = 51 numbers, got 48" in messages
    assert any(f"annotation {annotations[1]['id']}" in m and "num_keypoints is" in m for m in messages)
    kept = {a.id: a for record in result.records for a in record.annotations}
    assert set(kept) == {a["id"] for a in annotations[2:]}
    assert kept[annotations[2]["id"]].keypoints == (0.0,) * 51
    assert kept[annotations[3]["id"]].keypoints == tuple(float(v) for v in good[3]["keypoints"])


def test_keypoints_on_a_category_without_keypoint_names_are_rejected():
    data = json.loads(COCO_MINI_JSON.read_text())
    data["annotations"][0]["keypoints"] = [1, 1, 2]
    result = load_coco(data, image_dir=COCO_MINI_DIR / "images")
    assert result.reject_counts() == {"bad_keypoints": 1}
    assert "names none" in result.rejects[0].message


def test_category_map_round_trips_keypoint_metadata_and_rejects_bad_metadata():
    sigmas = (0.1, 0.2, 0.3, 0.4, 0.5)
    categories = CategoryMap(
        categories=(
            Category(id=3, name="house", keypoints=HOUSE_KEYPOINTS, skeleton=((1, 2), (4, 5)), keypoint_sigmas=sigmas),
            Category(id=1, name="tree"),
        )
    )
    listed = categories.to_list()
    assert listed[0] == {"id": 1, "name": "tree", "supercategory": "", "label": 1}  # unchanged without keypoints
    assert listed[1]["keypoints"] == list(HOUSE_KEYPOINTS) and listed[1]["skeleton"] == [[1, 2], [4, 5]]
    restored = CategoryMap.from_list(json.loads(json.dumps(listed)))
    assert restored == categories
    assert restored.num_keypoints == 5 and restored.skeletons == {3: ((1, 2), (4, 5))}
    assert restored.keypoint_category.oks_sigmas == sigmas
    assert CategoryMap.from_names(["a"]).num_keypoints == 0

    entry = {"id": 1, "name": "house", "keypoints": ["a", "b"], "skeleton": [[1, 3]]}
    with pytest.raises(ValueError, match=r"src: category 1 \('house'\): skeleton pair \[1, 3\] must be two keypoint numbers in 1..2"):
        CategoryMap.from_list([entry], source="src")
    with pytest.raises(ValueError, match="keypoint_sigmas must be 2 positive numbers"):
        CategoryMap.from_list([{**entry, "skeleton": [], "keypoint_sigmas": [0.1]}])
    with pytest.raises(ValueError, match="same number"):
        CategoryMap.from_list([{**entry, "skeleton": []}, {"id": 2, "name": "b", "keypoints": ["x"]}])
    with pytest.raises(ValueError, match="skeleton but no keypoints"):
        CategoryMap.from_list([{"id": 1, "name": "x", "skeleton": [[1, 2]]}])


def test_target_keypoints_shape_crowd_and_empty_images():
    columns = {
        "boxes": [[0, 0, 4, 4], [1, 1, 5, 5], [2, 2, 6, 6]],
        "labels": [1, 1, 2],
        "masks_rle": [{"size": [8, 8], "counts": "0`1"}] * 3,
        "iscrowd": [0, 1, 0],
        "area": [1.0, 1.0, 1.0],
        "height": 8,
        "width": 8,
    }
    target = build_target_from_columns(**columns, keypoints=[[1, 2, 2, 3, 4, 1], [0, 0, 0, 0, 0, 0], []])
    assert target["keypoints"].dtype == torch.float32
    assert target["keypoints"].tolist() == [[[1, 2, 2], [3, 4, 1]], [[0, 0, 0], [0, 0, 0]]]  # crowd dropped; [] = none
    empty = build_target_from_columns(**{**columns, "boxes": [], "labels": [], "masks_rle": [], "iscrowd": [], "area": []},
                                      keypoints=[], num_keypoints=2)  # fmt: skip
    assert tuple(empty["keypoints"].shape) == (0, 2, 3)
    assert "keypoints" not in build_target_from_columns(**columns)
    with pytest.raises(ValueError, match="expected 0 or 3 x 2 keypoint values, got 3"):
        build_target_from_columns(**columns, keypoints=[[1, 2, 2, 3, 4, 1], [1, 2, 2], []])


def test_resize_and_flip_move_keypoints_with_the_image():
    image = torch.zeros(3, 10, 20)
    target = {"boxes": torch.tensor([[2.0, 1.0, 12.0, 9.0]]), "keypoints": torch.tensor([[[3.0, 2.0, 2.0], [11.0, 8.0, 1.0], [0.0, 0.0, 0.0]]])}
    _, resized = Resize(20, 100)(image, target)
    assert resized["keypoints"].tolist() == [[[6.0, 4.0, 2.0], [22.0, 16.0, 1.0], [0.0, 0.0, 0.0]]]

    flip = RandomHorizontalFlip(1.0, keypoint_flip_indices=[1, 0, 2])  # keypoints 0 and 1 are a left/right pair
    _, flipped = flip(image, target)
    assert flipped["keypoints"].tolist() == [[[9.0, 8.0, 1.0], [17.0, 2.0, 2.0], [0.0, 0.0, 0.0]]]
    assert flipped["boxes"].tolist() == [[8.0, 1.0, 18.0, 9.0]]
    with pytest.raises(ValueError, match="pass keypoint_flip_indices with 3 entries"):
        RandomHorizontalFlip(1.0)(image, target)


def test_synthetic_keypoint_set_is_valid_deterministic_and_exact(tmp_path):
    info = make_synthetic_keypoints_coco(tmp_path / "a", num_train=12, num_val=2, size=96, seed=3)
    again = make_synthetic_keypoints_coco(tmp_path / "b", num_train=12, num_val=2, size=96, seed=3)
    assert info["train"]["annotations"].read_bytes() == again["train"]["annotations"].read_bytes()
    dataset = CocoInstanceDataset.from_files(info["train"]["annotations"], info["train"]["image_dir"], check_decode=True)
    assert dataset.rejects == []
    assert dataset.categories == synthetic_keypoint_categories()
    visibility = {0: 0, 1: 0, 2: 0}
    for record in dataset.records:
        masks = {a.id: rle_to_mask(a.rle) for a in record.annotations}
        for position, ann in enumerate(record.annotations):
            points = np.asarray(ann.keypoints).reshape(5, 3)
            for x, y, v in points:
                visibility[int(v)] += 1
                if v == 2:  # a visible corner touches its own mask
                    rows, cols = np.nonzero(masks[ann.id])
                    assert np.min(np.hypot(cols + 0.5 - x, rows + 0.5 - y)) < 2.0
                if v == 1:  # an occluded corner lies under a later house
                    later = sum(masks[a.id] for a in record.annotations[position + 1 :])
                    rows, cols = np.nonzero(later)
                    assert rows.size and np.min(np.hypot(cols + 0.5 - x, rows + 0.5 - y)) < 3.0
    assert visibility[2] > visibility[1] > 0  # most corners visible, some occluded
    _, target = dataset[0]
    assert tuple(target["keypoints"].shape) == (len(dataset.records[0].annotations), 5, 3)
