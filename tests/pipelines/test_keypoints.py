"""Keypoints through the application: synth/predict/eval on the command line, COCO keypoint json -> Parquet
shards (Ray Data) with a bad annotation rejected.

Training a keypoint model (keypoint AP in MLflow, registered by it) and `mrcnn evaluate` of it run as the
README and docs/pipeline.md write them, in tests/docs/test_documented_commands.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import ray

from mrcnn.data.synthetic_keypoints import (
    HOUSE_KEYPOINTS,
    HOUSE_SKELETON,
    make_synthetic_keypoints_coco,
)
from mrcnn.evaluation import KEYPOINT_STAT_NAMES, STAT_NAMES, evaluate_coco
from pipelines.cli import main

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")


def _last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_synth_predict_and_eval_on_the_command_line(tmp_path, small_keypoint_checkpoint, capsys):
    data = tmp_path / "houses"
    assert main(["synth", str(data), "--task", "keypoints", "--train", "1", "--val", "3", "--size", "96"]) == 0
    gt = json.loads((data / "val" / "annotations.json").read_text())
    assert gt["categories"][0]["keypoints"] == list(HOUSE_KEYPOINTS)
    assert all(len(a["keypoints"]) == 15 and a["num_keypoints"] >= 0 for a in gt["annotations"])

    out, overlays = tmp_path / "pred.json", tmp_path / "overlays"
    assert main(["predict", str(data / "val" / "images"), "--weights", str(small_keypoint_checkpoint),
                 "--score-threshold", "0", "--out", str(out), "--overlay-dir", str(overlays)]) == 0  # fmt: skip
    records = json.loads(out.read_text())
    assert records and all(len(r["keypoints"]) == 15 and len(r["keypoint_scores"]) == 5 for r in records)
    assert len(list(overlays.glob("*.png"))) == 3

    capsys.readouterr()
    assert main(["eval", "--gt", str(data / "val" / "annotations.json"), "--predictions", str(out), "--json"]) == 0
    metrics = _last_json(capsys)
    assert set(metrics) == {"bbox", "segm", "keypoints"}
    assert set(metrics["keypoints"]) == {*KEYPOINT_STAT_NAMES, "per_category"} and set(metrics["bbox"]) >= set(STAT_NAMES)
    assert main(["eval", "--weights", str(small_keypoint_checkpoint), "--annotations", str(data / "val" / "annotations.json"),
                 "--images", str(data / "val" / "images"), "--score-threshold", "0", "--json"]) == 0  # fmt: skip
    assert _last_json(capsys) == metrics
    assert main(["eval", "--gt", str(data / "val" / "annotations.json"), "--predictions", str(out)]) == 0
    assert "keypoints" in capsys.readouterr().out.splitlines()[-1]


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def shards(local_ray, tmp_path_factory) -> Path:
    """Houses (8 train, 3 val, 96 px) through `mrcnn preprocess`; one train annotation has a bad num_keypoints."""
    from pipelines.preprocess import preprocess_dataset

    root = tmp_path_factory.mktemp("keypoint_data")
    make_synthetic_keypoints_coco(root / "houses", num_train=8, num_val=3, size=96, seed=4)
    train_json = root / "houses" / "train" / "annotations.json"
    data = json.loads(train_json.read_text())
    data["annotations"][0]["num_keypoints"] = 7
    train_json.write_text(json.dumps(data))
    preprocess_dataset(root / "houses", root / "shards", progress=False)
    return root / "shards"


def test_preprocess_writes_keypoints_and_rejects_the_bad_annotation(shards):
    import pyarrow.parquet as pq

    from pipelines.shards import (
        collate_shard_batch,
        list_shards,
        read_categories,
        shards_to_coco_gt,
    )

    rejects = [json.loads(line) for line in (shards / "train" / "rejects.jsonl").read_text().splitlines()]
    assert [(r["reason"], r["annotation_id"]) for r in rejects] == [("bad_keypoints", 1)]
    assert "num_keypoints is 7" in rejects[0]["message"]
    categories = read_categories(shards)
    assert categories.num_keypoints == 5 and categories.keypoint_category.skeleton == HOUSE_SKELETON

    source = json.loads((shards.parent / "houses" / "val" / "annotations.json").read_text())
    gt = shards_to_coco_gt(shards / "val")
    assert gt["categories"][0]["keypoints"] == list(HOUSE_KEYPOINTS)
    assert [a["num_keypoints"] for a in gt["annotations"]] == [a["num_keypoints"] for a in source["annotations"]]
    for ours, theirs in zip(gt["annotations"], source["annotations"]):
        np.testing.assert_allclose(ours["keypoints"], theirs["keypoints"], atol=1e-4)
    # the source's keypoints as perfect results score 100 against the shards' ground truth
    results = [{**a, "score": 1.0} for a in source["annotations"]]
    assert evaluate_coco(gt, results, iou_types=["keypoints"])["keypoints"]["AP"] == pytest.approx(100.0)

    table = pq.read_table(list_shards(shards / "val"))
    batch = {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}
    _, targets = collate_shard_batch(batch, num_keypoints=5)
    first = [a for a in source["annotations"] if a["image_id"] == int(batch["image_id"][0])]
    expected = np.asarray([a["keypoints"] for a in first], dtype=np.float32).reshape(-1, 5, 3)
    np.testing.assert_allclose(targets[0]["keypoints"].numpy(), expected)
    _, no_keypoints = collate_shard_batch(batch, num_keypoints=0)  # an instance model on keypoint data
    assert "keypoints" not in no_keypoints[0]
