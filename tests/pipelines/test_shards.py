"""The reading side of the shards: schema, categories, collate for training, COCO ground truth for eval."""

from __future__ import annotations

import functools
import json

import numpy as np
import pyarrow as pa
import pytest
import ray
import torch
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO

from mrcnn.data.categories import CategoryMap
from mrcnn.data.dataset import CocoInstanceDataset
from mrcnn.evaluation import evaluate_coco
from mrcnn.records import SHARD_COLUMNS
from pipelines.preprocess import preprocess_coco
from pipelines.shards import (
    collate_shard_batch,
    list_shards,
    read_categories,
    shard_schema,
    shards_to_coco_gt,
)
from tests.conftest import COCO_MINI_IMAGES, COCO_MINI_JSON


@pytest.fixture(scope="module")
def coco_mini_shards(tmp_path_factory):
    """coco_mini (6 images of 4 sizes, 2 crowd regions) preprocessed into 2 shards, on a local Ray."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    out = tmp_path_factory.mktemp("shards")
    preprocess_coco(annotations=COCO_MINI_JSON, images=COCO_MINI_IMAGES, out=out, split="val", num_shards=2, progress=False)
    yield out
    ray.shutdown()


def test_shard_schema_is_the_record_contract():
    schema = shard_schema()
    assert schema.names == list(SHARD_COLUMNS)
    assert schema.field("image_id").type == pa.int64()
    assert schema.field("height").type == pa.int32()
    assert schema.field("image").type == pa.binary()
    assert schema.field("boxes").type == pa.list_(pa.list_(pa.float32(), 4))
    assert schema.field("masks_rle").type == pa.list_(pa.string())
    assert schema.field("iscrowd").type == pa.list_(pa.int8())
    assert schema.field("area").type == pa.list_(pa.float32())


def test_read_categories(coco_mini_shards):
    expected = CategoryMap.from_coco(json.loads(COCO_MINI_JSON.read_text()))
    assert read_categories(coco_mini_shards) == expected
    assert read_categories(coco_mini_shards / "val") == expected  # a split folder works too
    with pytest.raises(FileNotFoundError, match="categories.json"):
        read_categories(coco_mini_shards / "val" / "nothing")


def assert_targets_equal(actual: dict, expected: dict) -> None:
    assert set(actual) == set(expected)
    for key, value in expected.items():
        if isinstance(value, torch.Tensor):
            assert actual[key].dtype == value.dtype, key
            torch.testing.assert_close(actual[key], value, rtol=0, atol=0, msg=key)
        else:
            assert actual[key] == value, key


@pytest.mark.parametrize("include_crowd", [False, True])
def test_collate_matches_coco_instance_dataset(coco_mini_shards, include_crowd):
    """Rows read back with Ray Data decode to the same images and targets as the map-style dataset."""
    reference = CocoInstanceDataset.from_files(COCO_MINI_JSON, COCO_MINI_IMAGES, include_crowd=include_crowd)
    expected = {target["image_id"]: (image, target) for image, target in (reference[i] for i in range(len(reference)))}
    dataset = ray.data.read_parquet(str(coco_mini_shards / "val"))
    seen = []
    for batch in dataset.iter_batches(batch_size=4, batch_format="numpy"):
        images, targets = collate_shard_batch(batch, include_crowd=include_crowd)
        assert len(images) == len(targets) == len(batch["image_id"])
        for image, target in zip(images, targets):
            expected_image, expected_target = expected[target["image_id"]]
            torch.testing.assert_close(image, expected_image, rtol=0, atol=0)
            assert_targets_equal(target, expected_target)
            seen.append(target["image_id"])
    assert sorted(seen) == sorted(expected)
    num_crowd = sum(int(t["iscrowd"].sum()) for _, t in expected.values())
    assert num_crowd == (2 if include_crowd else 0)


def test_collate_as_iter_torch_batches_collate_fn(coco_mini_shards):
    dataset = ray.data.read_parquet(str(coco_mini_shards / "val"))
    collate = functools.partial(collate_shard_batch, include_crowd=False)
    sizes_per_batch = []
    for images, targets in dataset.iter_torch_batches(batch_size=3, collate_fn=collate):
        for image, target in zip(images, targets):
            assert image.dtype == torch.float32 and image.shape[0] == 3
            assert target["masks"].shape[1:] == image.shape[1:]
        sizes_per_batch.append({tuple(image.shape[1:]) for image in images})
    assert sum(len(batch) for batch in sizes_per_batch) >= 5  # 5 distinct sizes; batches mix them
    assert max(len(batch) for batch in sizes_per_batch) > 1


def test_shards_to_coco_gt_gives_ap_100_for_perfect_predictions(coco_mini_shards):
    gt = shards_to_coco_gt(coco_mini_shards / "val")
    source = COCO(str(COCO_MINI_JSON))
    assert sorted(i["id"] for i in gt["images"]) == sorted(source.getImgIds())
    assert len(gt["annotations"]) == len(source.dataset["annotations"])
    assert sum(a["iscrowd"] for a in gt["annotations"]) == 2
    assert [c["id"] for c in gt["categories"]] == sorted(source.getCatIds())
    # Perfect predictions from the source json (independent of the shards): every non-crowd object.
    results = []
    for ann in source.dataset["annotations"]:
        if ann["iscrowd"]:
            continue
        rle = source.annToRLE(ann)
        results.append(
            {
                "image_id": ann["image_id"],
                "category_id": ann["category_id"],
                "bbox": ann["bbox"],
                "score": 1.0,
                "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
            }
        )
    metrics = evaluate_coco(gt, results)
    assert metrics["segm"]["AP"] == pytest.approx(100.0)
    assert metrics["bbox"]["AP"] == pytest.approx(100.0)
    # and a wrong mask is noticed: shift every prediction's mask by 20 pixels
    shifted = []
    for record in results:
        mask = coco_mask.decode({"size": record["segmentation"]["size"], "counts": record["segmentation"]["counts"].encode()})
        moved = coco_mask.encode(np.asfortranarray(np.roll(mask, 20, axis=1)))
        shifted.append(record | {"segmentation": {"size": moved["size"], "counts": moved["counts"].decode()}})
    assert evaluate_coco(gt, shifted, iou_types=["segm"])["segm"]["AP"] < 60.0


def test_list_shards_in_order(coco_mini_shards):
    shards = list_shards(coco_mini_shards / "val")
    assert [s.rsplit("/", 1)[1] for s in shards] == ["part-00000-of-00002.parquet", "part-00001-of-00002.parquet"]
    with pytest.raises(FileNotFoundError, match="shard folder not found"):
        list_shards(coco_mini_shards / "train")
