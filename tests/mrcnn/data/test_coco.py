"""load_coco: every bad record is rejected with its reason; every good one survives."""

from __future__ import annotations

import copy
import json
import shutil

import pytest

from mrcnn.data.categories import CategoryMap
from mrcnn.data.coco import load_coco

from .conftest import COCO_MINI_DIR, COCO_MINI_JSON, CROWD_IMAGE_IDS


def _coco_mini() -> dict:
    return json.loads(COCO_MINI_JSON.read_text())


def _copy_dataset(tmp_path, coco: dict):
    image_dir = tmp_path / "images"
    shutil.copytree(COCO_MINI_DIR / "images", image_dir)
    path = tmp_path / "instances_broken.json"
    path.write_text(json.dumps(coco))
    return path, image_dir


def test_coco_mini_loads_cleanly():
    result = load_coco(COCO_MINI_JSON, check_decode=True)
    assert result.image_dir == COCO_MINI_DIR / "images"  # found beside the json
    assert result.rejects == [] and result.reject_counts() == {}
    assert len(result.records) == 6 and result.num_annotations == 58
    assert result.categories.num_classes == 80
    crowd = {r.image_id: sum(a.iscrowd for a in r.annotations) for r in result.records}
    assert crowd == {image_id: (1 if image_id in CROWD_IMAGE_IDS else 0) for image_id in crowd}
    for record in result.records:
        assert result.image_path(record).is_file()
        for ann in record.annotations:
            x0, y0, x1, y1 = ann.box
            assert 0 <= x0 < x1 <= record.width and 0 <= y0 < y1 <= record.height
            assert ann.label == result.categories.label_of(ann.category_id)


def test_bad_records_are_rejected_and_good_ones_survive(tmp_path):
    coco = _coco_mini()
    good_annotation_ids = {a["id"] for a in coco["annotations"]}
    first_image = coco["images"][0]
    template = next(a for a in coco["annotations"] if a["image_id"] == first_image["id"] and not a["iscrowd"])
    width = first_image["width"]

    def bad(ann_id, **changes):
        ann = copy.deepcopy(template)
        ann.update(id=ann_id, **changes)
        coco["annotations"].append(ann)

    bad(900001, segmentation=[[10.0, 10.0, 50.0, 50.0]])  # 2 points
    bad(900002, bbox=[10.0, 10.0, 0.0, 25.0])  # zero width
    bad(900003, bbox=[width + 5.0, 10.0, 20.0, 20.0])  # entirely right of the image
    bad(900004, category_id=999)
    bad(900005, image_id=123456789)  # no such image
    coco["annotations"].append(copy.deepcopy(template))  # duplicate annotation id

    missing = dict(first_image, id=42, file_name="000000000042.jpg")
    coco["images"].append(missing)
    bad(900006, image_id=42)  # dropped along with its missing image
    coco["images"].append(dict(coco["images"][1]))  # duplicate image id
    empty = dict(first_image, id=43, file_name="empty.jpg")  # an image without annotations
    coco["images"].append(empty)

    path, image_dir = _copy_dataset(tmp_path, coco)
    shutil.copy(image_dir / first_image["file_name"], image_dir / "empty.jpg")
    result = load_coco(path, image_dir=image_dir)

    assert result.reject_counts() == {
        "box_outside_image": 1,
        "duplicate_annotation_id": 1,
        "duplicate_image_id": 1,
        "missing_image_file": 1,
        "polygon_too_few_points": 1,
        "unknown_category": 1,
        "unknown_image_id": 1,
        "zero_area_box": 1,
    }
    by_reason = {reject.reason: reject for reject in result.rejects}
    expected_ids = {
        "polygon_too_few_points": 900001,
        "zero_area_box": 900002,
        "box_outside_image": 900003,
        "unknown_category": 900004,
        "unknown_image_id": 900005,
        "duplicate_annotation_id": template["id"],
    }
    for reason, ann_id in expected_ids.items():
        reject = by_reason[reason]
        assert reject.annotation_id == ann_id
        assert reject.message.startswith(f"annotation {ann_id} in {path}: "), reject.message
        assert reject.source == str(path)
    assert by_reason["polygon_too_few_points"].message.endswith("polygon has 2 points, need at least 3")
    assert by_reason["missing_image_file"].image_id == 42
    assert by_reason["missing_image_file"].annotation_id is None
    assert "image 42 (000000000042.jpg)" in by_reason["missing_image_file"].message
    assert "1 annotation(s) are dropped" in by_reason["missing_image_file"].message
    assert by_reason["duplicate_image_id"].image_id == coco["images"][1]["id"]

    # Every good record survives: 6 original images + the empty one, all 58 annotations.
    assert [r.image_id for r in result.records] == [im["id"] for im in _coco_mini()["images"]] + [43]
    assert {a.id for r in result.records for a in r.annotations} == good_annotation_ids
    assert result.num_annotations == 58
    assert result.records[-1].annotations == ()


def test_check_decode_rejects_broken_and_mismatched_images(tmp_path):
    coco = _coco_mini()
    coco["images"][0]["width"] += 1  # json disagrees with the file
    path, image_dir = _copy_dataset(tmp_path, coco)
    broken = image_dir / coco["images"][1]["file_name"]
    broken.write_bytes(broken.read_bytes()[:5000])
    assert load_coco(path, image_dir=image_dir).reject_counts() == {}  # files exist; not decoded
    result = load_coco(path, image_dir=image_dir, check_decode=True)
    assert result.reject_counts() == {"image_size_mismatch": 1, "unreadable_image": 1}
    assert len(result.records) == 4
    by_reason = {reject.reason: reject for reject in result.rejects}
    assert by_reason["unreadable_image"].image_id == coco["images"][1]["id"]
    assert "truncated" in by_reason["unreadable_image"].message
    assert by_reason["image_size_mismatch"].image_id == coco["images"][0]["id"]


@pytest.mark.parametrize(
    "content, match",
    [
        ("[]", "expected a COCO json object"),
        ('{"images": [], "categories": []}', "missing top-level key\\(s\\) \\['annotations'\\]"),
        ('{"images": {}, "annotations": [], "categories": []}', "'images' must be a list"),
        ("{not json", "not valid json"),
    ],
)
def test_malformed_top_level_raises_naming_the_file(tmp_path, content, match):
    path = tmp_path / "weird.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=match) as info:
        load_coco(path, check_files=False)
    assert str(path) in str(info.value)


def test_file_checks_need_an_image_dir(tmp_path):
    coco = _coco_mini()
    with pytest.raises(ValueError, match="no image_dir"):
        load_coco(coco)
    result = load_coco(coco, check_files=False)
    assert result.image_dir is None and result.num_annotations == 58 and result.source == "<dict>"
    with pytest.raises(FileNotFoundError, match="not found"):
        load_coco(tmp_path / "absent.json")
    with pytest.raises(ValueError, match="is not a directory"):
        load_coco(COCO_MINI_JSON, image_dir=tmp_path / "absent")


def test_coco_split_layout_finds_image_dir(tmp_path):
    (tmp_path / "annotations").mkdir()
    shutil.copytree(COCO_MINI_DIR / "images", tmp_path / "val2017")
    shutil.copy(COCO_MINI_JSON, tmp_path / "annotations" / "instances_val2017.json")
    result = load_coco(tmp_path / "annotations" / "instances_val2017.json")
    assert result.image_dir == tmp_path / "val2017" and result.rejects == []


# ---------------------------------------------------------------- field cases (issue 16, part A)
def _one_image(annotations: list[dict], categories=None) -> dict:
    return {
        "images": [{"id": 1, "file_name": "a.png", "height": 64, "width": 64}],
        "annotations": annotations,
        "categories": categories or [{"id": 1, "name": "thing"}],
    }


SQUARE = [[10.0, 40.0, 30.0, 40.0, 30.0, 60.0, 10.0, 60.0]]


@pytest.mark.parametrize("bbox", [[10, 40, 1e-7, 20], [63.9999999, 40, 5, 20], [10, 64 - 1e-9, 20, 3]])
def test_box_with_no_float32_width_after_clipping_is_zero_area(bbox):
    """Boxes valid in float64 but zero-width once clipped to the image and stored as float32 (as the model sees them)."""
    result = load_coco(_one_image([{"id": 1, "image_id": 1, "category_id": 1, "bbox": bbox, "segmentation": SQUARE}]),
                       check_files=False)  # fmt: skip
    assert [r.reason for r in result.rejects] == ["zero_area_box"]
    assert result.num_annotations == 0 and len(result.records) == 1  # the image stays
    assert "float32" in result.rejects[0].message


def test_polygon_with_a_broken_part_keeps_its_valid_part():
    """First part with 2 points, second valid: the annotation is kept with the valid part (detectron2's behaviour),
    and the dropped part is reported under its own reason."""
    broken = [[5.0, 5.0, 8.0, 8.0], *SQUARE]
    odd = [[1.0, 2.0, 3.0], *SQUARE]
    result = load_coco(_one_image([
        {"id": 1, "image_id": 1, "category_id": 1, "segmentation": broken},
        {"id": 2, "image_id": 1, "category_id": 1, "segmentation": odd},
        {"id": 3, "image_id": 1, "category_id": 1, "segmentation": [[5.0, 5.0, 8.0, 8.0]]},  # no valid part left
    ]), check_files=False)  # fmt: skip
    (record,) = result.records
    reference = load_coco(_one_image([{"id": 9, "image_id": 1, "category_id": 1, "segmentation": SQUARE}]), check_files=False)
    assert [a.id for a in record.annotations] == [1, 2]
    for annotation in record.annotations:
        assert annotation.rle == reference.records[0].annotations[0].rle
        assert annotation.area == 400
    assert [(r.reason, r.annotation_id) for r in result.rejects] == [
        ("polygon_part_dropped", 1), ("polygon_part_dropped", 2), ("polygon_too_few_points", 3)
    ]  # fmt: skip
    assert "part 0" in result.rejects[0].message and "kept" in result.rejects[0].message


def test_ids_must_fit_int64():
    big = 2**63
    data = _one_image(
        [{"id": 1, "image_id": 1, "category_id": 3000000000, "segmentation": SQUARE},
         {"id": big, "image_id": 1, "category_id": 3000000000, "segmentation": SQUARE}],
        categories=[{"id": 3000000000, "name": "big"}],
    )  # fmt: skip
    data["images"].append({"id": big, "file_name": "b.png", "height": 64, "width": 64})
    result = load_coco(data, check_files=False)
    assert [r.image_id for r in result.records] == [1]
    assert [a.category_id for a in result.records[0].annotations] == [3000000000]
    assert sorted(r.reason for r in result.rejects) == ["bad_annotation_record", "bad_image_record"]
    with pytest.raises(ValueError, match="int64"):
        CategoryMap.from_coco({"categories": [{"id": big, "name": "too big"}]})
