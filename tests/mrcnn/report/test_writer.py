"""write_report on the hand-made case: every file is written, indexed in report.json and holds the numbers of
COCOeval's arrays, the confusion matrix and the worst images counted by hand."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from mrcnn.report.per_class import per_class_metrics, pr_curves, run_cocoeval
from mrcnn.report.writer import write_report

from .conftest import CAT, DOG

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")


def _csv(path):
    with path.open(newline="") as f:
        return list(csv.reader(f))


@pytest.fixture
def images_dir(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in (1, 2, 3):
        Image.fromarray(np.full((100, 100, 3), 40 * i, dtype=np.uint8)).save(folder / f"img{i}.png")
    return folder


def test_write_report_files_and_numbers(tmp_path, gt, results, images_dir):
    out = tmp_path / "report"
    report = write_report(out, gt, results, iou_types=("bbox", "segm"), images_dir=images_dir, worst_k=2, score_threshold=0.5)
    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(report))
    files = report["files"]
    listed = [files["per_class"], files["pr_curves"], *files["pr_curves_png"].values()]
    listed += [p for pair in files["confusion"].values() for p in pair.values()]
    assert sorted(files["confusion"]) == ["bbox", "segm"]
    for relative in listed:
        assert (out / relative).is_file(), relative
    for relative in [*files["pr_curves_png"].values(), files["confusion"]["bbox"]["png"]]:
        with Image.open(out / relative) as image:
            assert image.format == "PNG" and image.size[0] > 100

    # per_class.csv: COCOeval's numbers
    rows = _csv(out / "per_class.csv")
    assert rows[0] == ["iou_type", "category_id", "name", "AP", "AP50", "AP75", "AR100", "num_gt"]
    for iou_type in ("bbox", "segm"):
        expected = per_class_metrics(run_cocoeval(gt, results, iou_type))
        written = [r for r in rows[1:] if r[0] == iou_type]
        assert [(int(r[1]), r[2], int(r[7])) for r in written] == [(e["category_id"], e["name"], e["num_gt"]) for e in expected]
        assert [float(r[3]) for r in written] == pytest.approx([e["AP"] for e in expected])

    # pr_curves.csv: the precision array's slices
    curve_rows = _csv(out / "pr_curves.csv")[1:]
    evaluator = run_cocoeval(gt, results, "segm")
    precision = evaluator.eval["precision"]
    for t, iou in ((0, 0.5), (5, 0.75)):
        for k, category_id in enumerate((CAT, DOG)):
            written = [float(r[5]) for r in curve_rows if r[0] == "segm" and float(r[3]) == iou and int(r[1]) == category_id]
            assert written == pytest.approx(list(precision[t, :, k, 0, -1]))
    assert len(curve_rows) == 2 * len(pr_curves(evaluator))

    # the confusion matrix, counted by hand (see conftest)
    assert _csv(out / "confusion_bbox.csv") == [
        ["gt \\ pred", "cat", "dog", "background"],
        ["cat", "1", "0", "1"],
        ["dog", "1", "0", "0"],
        ["background", "1", "1", "0"],
    ]

    # worst images by per-image F1 (segm matching, score >= 0.5): cats: image 2 (C missed, F1 0), image 1
    # (1 TP, 2 FP: F1 0.5); dogs: images 1 (B missed) and 3 (a false positive), both F1 0, one error each
    worst = report["worst_images"]["by_category"]
    assert report["worst_images"]["matched_on"] == "segm"
    assert [(w["image_id"], w["f1"]) for w in worst[str(CAT)]] == [(2, 0.0), (1, 0.5)]
    assert [(w["image_id"], w["tp"], w["fp"], w["fn"]) for w in worst[str(DOG)]] == [(1, 0, 0, 1), (3, 0, 1, 0)]
    for entry in worst[str(CAT)] + worst[str(DOG)]:
        with Image.open(out / entry["overlay"]) as image:
            assert image.size == (200, 100)  # ground truth beside the detections
    assert report["skipped"] == []


def test_overlay_of_the_detections_differs_from_the_plain_image(tmp_path, gt, results, images_dir):
    out = tmp_path / "report"
    report = write_report(out, gt, results, iou_types=("bbox",), images_dir=images_dir, worst_k=1)
    entry = report["worst_images"]["by_category"][str(CAT)][0]
    assert entry["image_id"] == 2
    overlay = np.asarray(Image.open(out / entry["overlay"]))
    plain = np.asarray(Image.open(images_dir / "img2.png").convert("RGB"))
    assert not np.array_equal(overlay[:, :100], plain)  # cat C drawn as ground truth
    assert np.array_equal(overlay[:, 100:], plain)  # no cat detected in image 2


def test_without_images_no_overlays_and_missing_images_are_reported(tmp_path, gt, results, images_dir):
    report = write_report(tmp_path / "a", gt, results, iou_types=("bbox",), worst_k=1)
    assert not (tmp_path / "a" / "worst").exists()
    assert report["worst_images"]["by_category"][str(CAT)][0]["overlay"] is None
    (images_dir / "img2.png").unlink()
    report = write_report(tmp_path / "b", gt, results, iou_types=("bbox",), images_dir=images_dir, worst_k=1)
    assert [(s["image_id"], s["category_id"]) for s in report["skipped"]] == [(2, CAT)]
    assert "img2.png" in report["skipped"][0]["reason"]


def test_category_names_and_per_class_thresholds(tmp_path, gt, results):
    report = write_report(tmp_path, gt, results, iou_types=("bbox",), category_names={CAT: "kitty"}, score_threshold={CAT: 0.95})
    assert [row["name"] for row in report["per_class"]["bbox"]] == ["kitty", "dog"]
    assert _csv(tmp_path / "confusion_bbox.csv")[1] == ["kitty", "0", "0", "2"]  # no cat passes 0.95
    assert report["score_threshold"] == {str(CAT): 0.95}


def test_importing_the_report_loads_no_plotting_nor_application_stack():
    code = (
        "import sys, mrcnn.report, mrcnn.thresholds; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('matplotlib', 'ray', 'mlflow')))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"  # matplotlib is imported only when a picture is drawn
