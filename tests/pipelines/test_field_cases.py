"""Field cases of issue 16 (part A) that need no Ray: images matched by path in predict and eval, config numbers
as people write them (validated before Ray starts), degenerate boxes in the training collate, old int32 shards.

The preprocessing cases (64-bit ids, a kept polygon part, no half-written output) are in test_preprocess.py,
which has a local Ray; the evaluation cases (annotation id 0, string image ids) in tests/mrcnn/test_evaluation.py.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mrcnn.data.masks import mask_to_rle
from pipelines.cli import _parse_overrides, main
from pipelines.batch.evaluate import match_file_names
from pipelines.shards import collate_shard_batch, shard_schema, shards_to_coco_gt

REPO = Path(__file__).resolve().parents[2]


def run_cli_in(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """The console entry point in a subprocess started in ``cwd`` (relative image paths as a user types them)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], capture_output=True, text=True, timeout=600,
                          cwd=cwd, env=env)  # fmt: skip


# ---------------------------------------------------------------- A.3: images are identified by their path
@pytest.fixture()
def two_cameras(tmp_path) -> Path:
    """cam1/0001.png (id 11) and cam2/0001.png (id 22): the same base name, different images."""
    rng = np.random.default_rng(0)
    images = []
    for camera, image_id in (("cam1", 11), ("cam2", 22)):
        (tmp_path / camera).mkdir()
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / camera / "0001.png")
        images.append({"id": image_id, "file_name": f"{camera}/0001.png", "height": 64, "width": 64})
    gt = {"images": images, "annotations": [], "categories": [{"id": c, "name": f"c{c}"} for c in range(1, 6)]}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    return tmp_path


def test_predict_gives_each_path_its_image_id(two_cameras, small_checkpoint):
    result = run_cli_in(
        two_cameras, "predict", "cam1/0001.png", "cam2/0001.png", "--annotations", "gt.json",
        "--weights", str(small_checkpoint), "--score-threshold", "0.0", "--out", "pred.json",
        "--overlay-dir", "overlays",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    records = json.loads((two_cameras / "pred.json").read_text())
    by_file = {}
    for record in records:
        by_file.setdefault(record["file_name"], set()).add(record["image_id"])
    assert by_file == {"cam1/0001.png": {11}, "cam2/0001.png": {22}}
    assert sorted(p.relative_to(two_cameras / "overlays").as_posix() for p in (two_cameras / "overlays").rglob("*.png")) == [
        "cam1/0001.png", "cam2/0001.png"
    ]  # fmt: skip


def test_ambiguous_base_name_is_refused(two_cameras, small_checkpoint):
    (two_cameras / "flat").mkdir()
    (two_cameras / "flat" / "0001.png").write_bytes((two_cameras / "cam1" / "0001.png").read_bytes())
    result = run_cli_in(
        two_cameras / "flat", "predict", "0001.png", "--annotations", "../gt.json",
        "--weights", str(small_checkpoint), "--out", "pred.json",
    )  # fmt: skip
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "ambiguous" in lines[0] and "cam1/0001.png" in lines[0] and "cam2/0001.png" in lines[0]
    assert not (two_cameras / "flat" / "pred.json").exists()


def test_eval_predictions_matched_by_path(two_cameras, capsys):
    """eval --predictions: records that only name their file are credited to the image at that path."""
    gt = json.loads((two_cameras / "gt.json").read_text())
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[10:30, 10:30] = 1
    rle = mask_to_rle(mask)
    gt["annotations"] = [{"id": 1, "image_id": 11, "category_id": 1, "bbox": [10, 10, 20, 20], "area": 400,
                          "segmentation": rle, "iscrowd": 0}]  # fmt: skip
    (two_cameras / "gt.json").write_text(json.dumps(gt))
    record = {"category_id": 1, "score": 0.9, "bbox": [10, 10, 20, 20], "segmentation": rle}
    for file_name, expected_ap in (("cam1/0001.png", 100.0), ("cam2/0001.png", 0.0)):
        (two_cameras / "pred.json").write_text(json.dumps([{**record, "file_name": file_name}]))
        args = ["eval", "--gt", str(two_cameras / "gt.json"), "--predictions", str(two_cameras / "pred.json"), "--json"]
        assert main(args) == 0
        metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert metrics["bbox"]["AP"] == pytest.approx(expected_ap)
    (two_cameras / "pred.json").write_text(json.dumps([{**record, "file_name": "0001.png"}]))
    assert main(["eval", "--gt", str(two_cameras / "gt.json"), "--predictions", str(two_cameras / "pred.json")]) == 2
    assert "ambiguous" in capsys.readouterr().err


def test_match_file_names_by_trailing_path():
    images = [{"id": 11, "file_name": "cam1/0001.png"}, {"id": 22, "file_name": "cam2/0001.png"},
              {"id": 33, "file_name": "solo.png"}, {"id": 44, "file_name": "a/cam1/0001.png"}]  # fmt: skip
    matched = match_file_names(
        images, ["cam2/0001.png", "/data/x/cam2/0001.png", "solo.png", "dir/solo.png", "cam1/0001.png", "nothing.png"],
        source="gt.json",
    )  # fmt: skip
    assert matched == {"cam2/0001.png": 22, "/data/x/cam2/0001.png": 22, "solo.png": 33, "dir/solo.png": 33,
                       "cam1/0001.png": 11}  # fmt: skip
    with pytest.raises(ValueError, match="ambiguous"):
        match_file_names(images, ["0001.png"], source="gt.json")
    with pytest.raises(ValueError, match="ambiguous"):
        match_file_names(images, ["elsewhere/cam1/0001.png"], source="gt.json")  # a/cam1/0001.png and cam1/0001.png tie


# ---------------------------------------------------------------- A.5: numbers in configs as people write them
@pytest.mark.parametrize("text, expected", [("1e-4", 1e-4), ("2E-4", 2e-4), (".5", 0.5), ("1_000", 1000), ("3", 3),
                                            ("-1.5e+3", -1500.0), ("true", True), ("[1, 2e1]", [1, 20.0])])  # fmt: skip
def test_set_values_parse_to_their_type(text, expected):
    value = _parse_overrides([f"solver.x={text}"])["solver.x"]
    assert value == expected and type(value) is type(expected)


class _TrainCalled(BaseException):  # not caught by main's one-line error handler
    pass


@pytest.fixture()
def fake_train(monkeypatch):
    """pipelines.train.train replaced by a recorder that stops the verb; Ray must not have been started."""
    import ray

    import pipelines.train

    seen = []

    def record(run, ray_address=None):
        assert not ray.is_initialized()
        seen.append(run)
        raise _TrainCalled

    monkeypatch.setattr(pipelines.train, "train", record)
    return seen


def test_train_accepts_1e4_from_set_and_run_yaml(tmp_path, fake_train):
    with pytest.raises(_TrainCalled):
        main(["train", "--data", str(tmp_path), "--set", "solver.base_lr=1e-4", "--tracking-uri", str(tmp_path / "ml")])
    assert fake_train[-1].model_config().solver.base_lr == pytest.approx(1e-4)

    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text(f"data: {tmp_path}\nminutes: 1e-1\noverrides:\n  solver.base_lr: 2e-4\n  solver.max_iters: 1e3\n")
    with pytest.raises(_TrainCalled):
        main(["train", "--config", str(run_yaml), "--tracking-uri", str(tmp_path / "ml")])
    run = fake_train[-1]
    assert run.minutes == pytest.approx(0.1) and isinstance(run.minutes, float)
    assert run.model_config().solver.base_lr == pytest.approx(2e-4)
    assert run.model_config().solver.max_iters == 1000


@pytest.mark.parametrize("args, expected", [
    (["--set", "solver.base_lr=fast"], "solver.base_lr: expected float, got 'fast'"),
    (["--set", "solver.no_such_key=1"], "no key 'no_such_key'"),
    (["--set", "solver.base_lr=-1e-3"], "base_lr"),
    (["--workers", "0"], "workers and batch_size must be >= 1"),
])  # fmt: skip
def test_train_refuses_a_bad_config_before_ray(tmp_path, fake_train, capsys, args, expected):
    assert main(["train", "--data", str(tmp_path), *args, "--tracking-uri", str(tmp_path / "ml")]) == 2
    assert not fake_train
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err


def test_run_yaml_bad_number_refused_before_ray(tmp_path, fake_train, capsys):
    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text(f"data: {tmp_path}\nminutes: soon\n")
    assert main(["train", "--config", str(run_yaml), "--tracking-uri", str(tmp_path / "ml")]) == 2
    assert not fake_train
    assert "minutes: expected float, got 'soon'" in capsys.readouterr().err


# ---------------------------------------------------------------- A.4: a degenerate box never stops a run
def _png(height: int, width: int) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.fromarray(np.zeros((height, width, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_collate_drops_degenerate_box_with_warning(caplog):
    good, flat = np.zeros((64, 64), np.uint8), np.zeros((64, 64), np.uint8)
    good[10:30, 10:30] = 1
    flat[40:60, 10:11] = 1
    batch = {
        "image": [_png(64, 64)], "image_id": [5], "file_name": ["a.png"], "height": [64], "width": [64],
        "boxes": [[[10.0, 10.0, 30.0, 30.0], [10.0, 40.0, 10.0, 60.0]]],  # the second has zero width
        "labels": [[1, 2]], "masks_rle": [[mask_to_rle(good)["counts"], mask_to_rle(flat)["counts"]]],
        "iscrowd": [[0, 0]], "area": [[400.0, 20.0]], "keypoints": [[[], []]],
    }  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="pipelines.shards"):
        images, targets = collate_shard_batch(batch)
    (target,) = targets
    assert target["boxes"].tolist() == [[10.0, 10.0, 30.0, 30.0]]
    assert target["labels"].tolist() == [1] and target["masks"].shape == (1, 64, 64)
    assert target["masks"][0].sum() == 400
    assert any("degenerate box" in r.getMessage() and "image 5" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------- A.2: shards written with int32 ids still read
def test_old_int32_shards_still_read(tmp_path):
    fields = [f if f.name != "category_ids" else pa.field("category_ids", pa.list_(pa.int32())) for f in shard_schema()]
    old_schema = pa.schema(fields)
    mask = np.zeros((64, 64), np.uint8)
    mask[10:30, 10:30] = 1
    row = {"image_id": 3, "file_name": "a.png", "height": 64, "width": 64, "image": _png(64, 64),
           "boxes": [[10.0, 10.0, 30.0, 30.0]], "labels": [1], "category_ids": [7],
           "masks_rle": [mask_to_rle(mask)["counts"]], "iscrowd": [0], "area": [400.0], "keypoints": [[]]}  # fmt: skip
    (tmp_path / "val").mkdir()
    pq.write_table(pa.Table.from_pylist([row], schema=old_schema), tmp_path / "val" / "part-00000-of-00001.parquet")
    (tmp_path / "categories.json").write_text(json.dumps([{"id": 7, "name": "seven", "supercategory": "", "label": 1}]))
    gt = shards_to_coco_gt(tmp_path / "val")
    assert [a["category_id"] for a in gt["annotations"]] == [7]
    table = pq.read_table(tmp_path / "val")
    _, targets = collate_shard_batch({name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names})
    assert targets[0]["labels"].tolist() == [1]


def test_train_flags_reach_the_run_config(tmp_path, fake_train):
    with pytest.raises(_TrainCalled):
        main(["train", "--data", str(tmp_path), "--init-from", "models:/coco@best", "--patience", "3", "--eval-every", "50",
              "--tracking-uri", str(tmp_path / "ml")])  # fmt: skip
    run = fake_train[-1]
    assert (run.init_from, run.patience, run.eval_every) == ("models:/coco@best", 3, 50)
