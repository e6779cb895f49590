"""The `mrcnn` command line: synth, predict, eval, and one-line errors with non-zero exit codes."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest

from pipelines.cli import main
from tests.conftest import COCO_MINI_IMAGES, COCO_MINI_JSON, PHOTO


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """The real console entry point in a subprocess, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *args], capture_output=True, text=True, timeout=600
    )


def test_synth_writes_deterministic_coco(tmp_path):
    assert main(["synth", str(tmp_path / "a"), "--train", "3", "--val", "2", "--size", "64", "--seed", "3"]) == 0
    assert main(["synth", str(tmp_path / "b"), "--train", "3", "--val", "2", "--size", "64", "--seed", "3"]) == 0
    for split, count in (("train", 3), ("val", 2)):
        a = (tmp_path / "a" / split / "annotations.json").read_bytes()
        assert a == (tmp_path / "b" / split / "annotations.json").read_bytes()
        data = json.loads(a)
        assert len(data["images"]) == count
        assert len(list((tmp_path / "a" / split / "images").glob("*.png"))) == count


def test_predict_then_eval_round_trip(tmp_path, small_checkpoint, synth_dataset):
    """predict writes COCO results that eval reads back; eval --model gives the same numbers (predict's
--weights is the older name of --model)."""
    val = synth_dataset / "val"
    out = tmp_path / "pred.json"
    overlays = tmp_path / "overlays"
    result = run_cli(
        "predict", str(val / "images"), "--weights", str(small_checkpoint), "--score-threshold", "0.05",
        "--out", str(out), "--overlay-dir", str(overlays),
    )
    assert result.returncode == 0, result.stderr
    records = json.loads(out.read_text())
    assert records, "a random model at threshold 0.05 still gives detections"
    for record in records:
        assert set(record) == {"file_name", "category_id", "bbox", "score", "segmentation"}
        assert record["category_id"] in range(1, 6)
        assert isinstance(record["segmentation"]["counts"], str)
        assert record["segmentation"]["size"] == [128, 128]
    assert sorted(p.name for p in overlays.iterdir()) == sorted(p.with_suffix(".png").name for p in (val / "images").iterdir())

    from_file = run_cli("eval", "--gt", str(val / "annotations.json"), "--predictions", str(out), "--json")
    assert from_file.returncode == 0, from_file.stderr
    metrics = json.loads(from_file.stdout.strip().splitlines()[-1])
    assert set(metrics) == {"bbox", "segm"}
    for iou_type in ("bbox", "segm"):
        assert {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"} <= set(metrics[iou_type])

    direct = run_cli(
        "eval", "--model", str(small_checkpoint), "--annotations", str(val / "annotations.json"),
        "--images", str(val / "images"), "--score-threshold", "0.05", "--json",
    )
    assert direct.returncode == 0, direct.stderr
    assert json.loads(direct.stdout.strip().splitlines()[-1]) == metrics


def test_eval_table_output(tmp_path):
    """Perfect predictions (ground truth as results) print a table with AP 100 for bbox and segm."""
    gt = json.loads(COCO_MINI_JSON.read_text())
    from mrcnn.data.masks import segmentation_to_rle

    images = {img["id"]: img for img in gt["images"]}
    results = [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "bbox": a["bbox"],
            "score": 1.0,
            "segmentation": segmentation_to_rle(a["segmentation"], height=images[a["image_id"]]["height"], width=images[a["image_id"]]["width"]),
        }
        for a in gt["annotations"]
        if not a["iscrowd"]
    ]
    pred = tmp_path / "perfect.json"
    pred.write_text(json.dumps(results))
    result = run_cli("eval", "--gt", str(COCO_MINI_JSON), "--predictions", str(pred))
    assert result.returncode == 0, result.stderr
    # The per-class table comes first; the 12-number summary is the last three lines.
    lines = result.stdout.strip().splitlines()
    assert lines[-3].split() == ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]
    assert lines[-2].split()[:2] == ["bbox", "100.0"]
    assert lines[-1].split()[:2] == ["segm", "100.0"]
    assert lines[0].split()[:2] == ["bbox", "gt"]  # the per-class table's header


@pytest.mark.parametrize(
    "make_args, expected",
    [
        (lambda t, c: ["predict", str(t / "missing.jpg"), "--model", str(c), "--out", str(t / "o.json")], "missing.jpg"),
        (lambda t, c: ["predict", str(t / "text.jpg"), "--model", str(c), "--out", str(t / "o.json")], "text.jpg"),
        (lambda t, c: ["predict", str(PHOTO), "--model", str(t / "nope.ckpt"), "--out", str(t / "o.json")], "no such file"),
        (lambda t, c: ["predict", str(PHOTO), "--model", str(t / "text.jpg"), "--out", str(t / "o.json")], "not a readable checkpoint"),
        (lambda t, c: ["predict", str(PHOTO), "--model", str(t / "sd.pt"), "--arch", "r9000", "--out", str(t / "o.json")], "unknown preset"),
        (lambda t, c: ["predict", str(PHOTO), "--model", str(c), "--score-threshold", "2", "--out", str(t / "o.json")], "--score-threshold"),
        (lambda t, c: ["eval", "--gt", str(COCO_MINI_JSON), "--predictions", str(t / "text.jpg")], "not valid json"),
        (lambda t, c: ["eval", "--gt", str(t / "none.json"), "--predictions", str(t / "text.jpg")], "no such file"),
        (lambda t, c: ["eval", "--gt", str(COCO_MINI_JSON)], "--predictions"),
    ],
    ids=["missing-image", "non-image", "missing-weights", "unreadable-weights", "unknown-preset", "bad-threshold",
         "bad-predictions-json", "missing-gt", "incomplete-eval-args"],
)
def test_bad_input_gives_one_line_error(tmp_path, small_checkpoint, make_args, expected):
    (tmp_path / "text.jpg").write_text("this is not an image\n")
    import torch

    if "sd.pt" in " ".join(make_args(tmp_path, small_checkpoint)):
        torch.save({"roi_heads.box_predictor.cls_score.weight": torch.zeros(3, 4)}, tmp_path / "sd.pt")
    result = run_cli(*make_args(tmp_path, small_checkpoint))
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("mrcnn: error:")]
    assert len(error_lines) == 1, result.stderr
    assert expected in error_lines[0]


def test_predict_skips_bad_image_but_keeps_good_ones(tmp_path, small_checkpoint):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(PHOTO.read_bytes()[:2000])  # truncated JPEG
    out = tmp_path / "pred.json"
    result = run_cli("predict", str(PHOTO), str(bad), "--weights", str(small_checkpoint), "--score-threshold", "0.0", "--out", str(out))
    assert result.returncode == 1
    assert "broken.jpg" in result.stderr and "Traceback" not in result.stderr
    records = json.loads(out.read_text())
    assert records and {r["file_name"] for r in records} == {PHOTO.name}


def test_predict_with_annotations_fills_image_ids(tmp_path, small_checkpoint):
    out = tmp_path / "pred.json"
    image = sorted(COCO_MINI_IMAGES.iterdir())[0]
    result = run_cli(
        "predict", str(image), "--weights", str(small_checkpoint), "--score-threshold", "0.0",
        "--annotations", str(COCO_MINI_JSON), "--out", str(out),
    )
    assert result.returncode == 0, result.stderr
    records = json.loads(out.read_text())
    assert records and {r["image_id"] for r in records} == {int(image.stem)}


def test_help_lists_every_verb():
    result = run_cli("--help")
    assert result.returncode == 0
    for verb in ("synth", "predict", "eval", "demo"):
        assert verb in result.stdout


class _Terminal(io.StringIO):
    """A stderr that says it is a terminal, so progress bars draw."""

    def isatty(self) -> bool:
        return True


def test_predict_and_eval_show_a_progress_bar_over_the_images(tmp_path, small_checkpoint, synth_dataset, monkeypatch):
    val = synth_dataset / "val"
    num_images = len(list((val / "images").iterdir()))
    for verb, argv in (
        ("predict", ["predict", str(val / "images"), "--model", str(small_checkpoint), "--out", str(tmp_path / "p.json")]),
        ("eval", ["eval", "--model", str(small_checkpoint), "--annotations", str(val / "annotations.json"),
                  "--images", str(val / "images"), "--json"]),
    ):  # fmt: skip
        terminal = _Terminal()
        monkeypatch.setattr(sys, "stderr", terminal)
        assert main(argv) == 0
        monkeypatch.undo()
        shown = terminal.getvalue()
        assert f"{verb} images" in shown and f"{num_images}/{num_images}" in shown, shown
    # Not a terminal (a log, a pipe): no bar, only the per-image lines.
    result = run_cli("predict", str(val / "images"), "--model", str(small_checkpoint), "--out", str(tmp_path / "q.json"))
    assert result.returncode == 0 and "predict images" not in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.endswith(" instances")]) == num_images


def test_eval_and_evaluate_say_how_they_differ():
    top = run_cli("--help").stdout
    assert "eval in this process" in " ".join(top.split()) and "evaluate distributed on Ray Data" in " ".join(top.split())
    eval_help = " ".join(run_cli("eval", "--help").stdout.split())
    evaluate_help = " ".join(run_cli("evaluate", "--help").stdout.split())
    assert "in this process" in eval_help and "`mrcnn evaluate`" in eval_help
    assert "distributed on Ray Data" in evaluate_help and "metrics.json" in evaluate_help and "`mrcnn eval`" in evaluate_help


def test_one_vocabulary_old_names_kept():
    """--out names output folders (demo's --workdir is its older name); --model names the model (--weights on
    predict and eval is its older name). The parsed value keeps its name, so code reading args is unchanged."""
    from pipelines.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["demo", "--out", "d1"]).workdir == "d1"
    assert parser.parse_args(["demo", "--workdir", "d2"]).workdir == "d2"
    assert parser.parse_args(["demo"]).workdir == "mrcnn-demo"
    for old, new in (("--weights", "--model"),):
        predict = [parser.parse_args(["predict", "x.jpg", flag, "m.ckpt", "--out", "o.json"]) for flag in (old, new)]
        assert [a.model for a in predict] == ["m.ckpt", "m.ckpt"]
        assert [parser.parse_args(["eval", flag, "m.ckpt"]).model for flag in (old, new)] == ["m.ckpt", "m.ckpt"]
    for verb, extra in (("segment", ["--model", "m", "--input", "i", "--out", "o"]), ("evaluate", ["--model", "m", "--out", "o"]),
                        ("ablate", []), ("predict", ["x.jpg", "--model", "m"])):  # fmt: skip
        assert parser.parse_args([verb, *extra, "--out", "elsewhere"]).out == "elsewhere"


def test_a_ray_error_says_why_in_its_one_line():
    """Ray's errors say where on their first line and why on their last (the traceback between them is long)."""
    from ray.train import WorkerGroupError

    from pipelines.cli import _error_line

    failed = WorkerGroupError("[Rank 0]\nTraceback (most recent call last):\n  File \"loop.py\", line 3\n"
                              "ValueError: box 3 has zero width", {})  # fmt: skip
    assert _error_line(failed) == "Training failed due to worker errors: ValueError: box 3 has zero width"
    assert _error_line(ValueError("first line\nsecond line")) == "first line", "ours: the first line only"
    assert _error_line(RuntimeError("")) == "RuntimeError"
