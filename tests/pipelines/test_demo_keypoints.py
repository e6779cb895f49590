"""`mrcnn demo --task keypoints`: its flag, its data (train and an unseen-seed holdout) and its preset, without
training (the figure it reaches is in benchmarks/RESULTS.md, "Keypoint demo (issue 16, B7)")."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from mrcnn.config import get_preset
from mrcnn.data.synthetic_keypoints import HOUSE_KEYPOINTS
from pipelines import demo_keypoints
from pipelines.cli import build_parser, main


def test_task_flag_defaults_to_instances():
    parser = build_parser()
    assert parser.parse_args(["demo"]).task == "instances"
    assert parser.parse_args(["demo", "--task", "keypoints"]).task == "keypoints"
    with pytest.raises(SystemExit):
        parser.parse_args(["demo", "--task", "poses"])


def test_keypoint_task_runs_the_keypoint_demo_with_the_flags(tmp_path, monkeypatch, capsys):
    calls = []

    def fake_run(**kwargs):
        calls.append(kwargs)
        return {"keypoints_AP": 1.0}

    monkeypatch.setattr(demo_keypoints, "run_keypoint_demo", fake_run)
    out = str(tmp_path / "d")
    assert main(["demo", "--task", "keypoints", "--out", out, "--minutes", "0.5", "--train", "3", "--val", "2",
                 "--workers", "1", "--seed", "4"]) == 0  # fmt: skip
    # --minutes alone: a time budget, no step budget.
    assert calls == [{"workdir": out, "iters": None, "minutes": 0.5, "seed": 4, "num_train": 3, "num_val": 2,
                      "workers": 1, "ray_address": None}]  # fmt: skip
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == {"keypoints_AP": 1.0}
    # By default the budget is the task's number of steps (the figure then does not depend on the load).
    assert main(["demo", "--task", "keypoints", "--out", out]) == 0
    assert (calls[-1]["iters"], calls[-1]["minutes"]) == (demo_keypoints.DEMO_ITERS, None)
    assert main(["demo", "--task", "keypoints", "--out", out, "--iters", "7", "--minutes", "2"]) == 0
    assert (calls[-1]["iters"], calls[-1]["minutes"]) == (7, 2.0)


def test_the_instance_demo_takes_the_same_budget_flags(tmp_path, monkeypatch):
    from pipelines import demo

    calls = []
    monkeypatch.setattr(demo, "run_demo", lambda **kwargs: calls.append(kwargs) or {})
    assert main(["demo", "--out", str(tmp_path)]) == 0
    assert (calls[-1]["iters"], calls[-1]["minutes"]) == (demo.DEMO_ITERS, None)
    assert main(["demo", "--out", str(tmp_path), "--minutes", "3"]) == 0
    assert (calls[-1]["iters"], calls[-1]["minutes"]) == (None, 3.0)
    with pytest.raises(SystemExit, match="--iters must be >= 1"):
        main(["demo", "--out", str(tmp_path), "--iters", "0"])


def test_houses_train_from_the_seed_and_hold_out_an_unseen_seed(tmp_path):
    seeds = demo_keypoints.make_houses(tmp_path / "data", num_train=3, num_val=2, seed=5)
    assert seeds == {"train_seed": 5, "holdout_seed": 5 + demo_keypoints.HOLDOUT_SEED_OFFSET}
    for split, count, seed in (("train", 3, 5), ("val", 2, seeds["holdout_seed"])):
        coco = json.loads((tmp_path / "data" / split / "annotations.json").read_text())
        assert (len(coco["images"]), coco["info"]["seed"], coco["info"]["size"]) == (count, seed, demo_keypoints.IMAGE_SIZE)
        assert coco["categories"][0]["keypoints"] == list(HOUSE_KEYPOINTS)
        images = sorted((tmp_path / "data" / split / "images").glob("*.png"))
        assert len(images) == count
        assert Image.open(images[0]).size == (demo_keypoints.IMAGE_SIZE,) * 2
    train_first = (tmp_path / "data" / "train" / "images" / "000001.png").read_bytes()
    assert train_first != (tmp_path / "data" / "val" / "images" / "000001.png").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # the staging folder is gone
    # Written again (a rerun in the same folder): the same files, nothing left over.
    demo_keypoints.make_houses(tmp_path / "data", num_train=1, num_val=1, seed=5)
    assert len(list((tmp_path / "data" / "train" / "images").glob("*.png"))) == 1
    assert (tmp_path / "data" / "train" / "images" / "000001.png").read_bytes() == train_first


def test_the_run_trains_the_preset_on_the_demo_shards_and_registers_it(tmp_path):
    run = demo_keypoints.train_run_config(tmp_path, workers=2, seed=3, tracking_uri="sqlite:///x.db")
    assert (run.max_iters, run.minutes) == (demo_keypoints.DEMO_ITERS, 0.0)  # a step budget by default
    run = demo_keypoints.train_run_config(tmp_path, iters=None, minutes=0.5, workers=2, seed=3,
                                          tracking_uri="sqlite:///x.db")  # fmt: skip
    # Its own shard folder: the instance demo's shards/ in the same working folder hold another category map.
    assert (run.data, run.preset, run.model_name) == (str(tmp_path / "houses-shards"), demo_keypoints.PRESET,
                                                      "mrcnn-demo-keypoints")  # fmt: skip
    assert run.storage_path == str(tmp_path / "ray_results") and run.name == "demo-keypoints"
    assert (run.minutes, run.workers, run.batch_size, run.seed, run.tracking_uri) == (0.5, 2, 4, 3, "sqlite:///x.db")
    assert run.eval_every > 0 and run.model_config().model.has_keypoints


def test_the_preset_trains_boxes_and_house_keypoints_at_the_demo_size():
    cfg = get_preset(demo_keypoints.PRESET)
    model = cfg.model
    assert model.task == "keypoints" and model.has_keypoints and not model.mask_head.enabled
    assert model.num_classes == 1 and model.keypoint_head.num_keypoints == len(HOUSE_KEYPOINTS)
    assert model.input.min_size == (demo_keypoints.IMAGE_SIZE,)
    assert model.iou_types == ("bbox", "keypoints")
