"""CocoInstanceDataset and the target dict."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mrcnn.data.coco import load_coco
from mrcnn.data.dataset import (
    CocoInstanceDataset,
    build_target,
    build_target_from_columns,
    collate_detection,
)
from mrcnn.data.transforms import Compose, RandomHorizontalFlip, Resize

from .conftest import COCO_MINI_DIR, COCO_MINI_JSON, CROWD_IMAGE_IDS


@pytest.fixture(scope="module")
def coco_mini():
    return load_coco(COCO_MINI_JSON)


def test_items_match_records_and_exclude_crowd(coco_mini):
    dataset = CocoInstanceDataset(coco_mini)
    assert len(dataset) == 6
    num_classes = coco_mini.categories.num_classes
    for index, record in enumerate(coco_mini.records):
        image, target = dataset[index]
        H, W = record.height, record.width
        assert image.shape == (3, H, W) and image.dtype == torch.float32
        assert 0.0 <= image.min() and image.max() <= 1.0 and image.max() > 0.5
        non_crowd = [a for a in record.annotations if not a.iscrowd]
        N = len(non_crowd)
        assert target["boxes"].shape == (N, 4) and target["boxes"].dtype == torch.float32
        assert target["labels"].shape == (N,) and target["labels"].dtype == torch.int64
        assert target["masks"].shape == (N, H, W) and target["masks"].dtype == torch.uint8
        assert target["iscrowd"].shape == (N,) and target["iscrowd"].dtype == torch.uint8
        assert target["area"].shape == (N,) and target["area"].dtype == torch.float32
        assert target["image_id"] == record.image_id
        assert int(target["iscrowd"].sum()) == 0
        assert ((target["labels"] >= 1) & (target["labels"] <= num_classes)).all()
        assert target["labels"].tolist() == [a.label for a in non_crowd]
        torch.testing.assert_close(target["area"], target["masks"].flatten(1).sum(1).float())
        if record.image_id in CROWD_IMAGE_IDS:
            assert N == len(record.annotations) - 1


def test_include_crowd(coco_mini):
    dataset = CocoInstanceDataset(coco_mini, include_crowd=True)
    index = next(i for i, r in enumerate(coco_mini.records) if r.image_id == CROWD_IMAGE_IDS[0])
    _, target = dataset[index]
    assert len(target["labels"]) == len(coco_mini.records[index].annotations)
    assert int(target["iscrowd"].sum()) == 1


def test_empty_image_gives_empty_target(tmp_path):
    coco = json.loads(COCO_MINI_JSON.read_text())
    image = coco["images"][0]
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] != image["id"]]
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(coco))
    shutil.copytree(COCO_MINI_DIR / "images", tmp_path / "images")
    dataset = CocoInstanceDataset.from_files(path, transforms=Compose([RandomHorizontalFlip(1.0), Resize(100, 200)]))
    _, target = dataset[0]
    new_h, new_w = target["masks"].shape[1:]
    assert max(new_h, new_w) <= 200
    assert target["boxes"].shape == (0, 4) and target["masks"].shape == (0, new_h, new_w)
    assert target["labels"].shape == (0,) and target["image_id"] == image["id"]
    empty = build_target([], height=5, width=7)
    assert empty["boxes"].shape == (0, 4) and empty["masks"].shape == (0, 5, 7) and "image_id" not in empty


def test_columns_and_records_give_the_same_target(coco_mini):
    record = next(r for r in coco_mini.records if r.image_id == CROWD_IMAGE_IDS[1])
    anns = record.annotations
    for include_crowd in (False, True):
        from_records = build_target(anns, height=record.height, width=record.width, include_crowd=include_crowd)
        from_columns = build_target_from_columns(  # Parquet-style columns: counts strings, numpy arrays
            boxes=np.array([a.box for a in anns], np.float32),
            labels=np.array([a.label for a in anns], np.int32),
            masks_rle=[a.rle["counts"] for a in anns],
            iscrowd=np.array([a.iscrowd for a in anns], np.int8),
            area=[a.area for a in anns],
            height=record.height,
            width=record.width,
            include_crowd=include_crowd,
        )
        assert from_records.keys() == from_columns.keys()
        for key in from_records:
            assert from_records[key].dtype == from_columns[key].dtype
            assert torch.equal(from_records[key], from_columns[key]), key
    with pytest.raises(ValueError, match="differ in length"):
        build_target_from_columns(
            boxes=[[0, 0, 1, 1]], labels=[1, 2], masks_rle=[], iscrowd=[], area=[], height=2, width=2
        )
    with pytest.raises(ValueError, match="labels must be >= 1"):
        build_target_from_columns(
            boxes=[anns[0].box], labels=[0], masks_rle=[anns[0].rle], iscrowd=[0], area=[1.0],
            height=record.height, width=record.width,
        )


def test_dataloader_with_collate(coco_mini):
    loader = DataLoader(CocoInstanceDataset(coco_mini), batch_size=4, collate_fn=collate_detection)
    images, targets = next(iter(loader))
    assert isinstance(images, list) and isinstance(targets, list) and len(images) == len(targets) == 4
    assert [t["image_id"] for t in targets] == [r.image_id for r in coco_mini.records[:4]]


def test_size_mismatch_is_a_clear_error(tmp_path):
    coco = json.loads(COCO_MINI_JSON.read_text())
    coco["images"][0]["height"] += 2
    dataset = CocoInstanceDataset(load_coco(coco, image_dir=COCO_MINI_DIR / "images"))
    with pytest.raises(ValueError, match=f"image {coco['images'][0]['id']} .* differs from the json"):
        dataset[0]


def test_import_pulls_in_neither_ray_nor_mlflow():
    code = "import sys, mrcnn.data; print(sorted({'ray', 'mlflow'} & set(sys.modules)))"
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "[]"
