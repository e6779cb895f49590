"""``mrcnn eval``: the per-class table, ``--report DIR`` and the per-class comparison of two models."""

from __future__ import annotations

import csv
import json

import numpy as np

from mrcnn.data.masks import mask_to_rle
from pipelines.cli import main

SIZE = 64
SQUARES = {1: (8, 8, 24, 24), 2: (36, 30, 56, 50)}  # category id -> XYXY


def _square(box) -> np.ndarray:
    x0, y0, x1, y1 = box
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[y0:y1, x0:x1] = 1
    return mask


def _write_case(tmp_path):
    """One image with a circle-class and a square-class object; A finds both, B misses the second."""
    gt = {"images": [{"id": 1, "file_name": "a.png", "height": SIZE, "width": SIZE}],
          "categories": [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}], "annotations": []}  # fmt: skip
    results = []
    for index, (category_id, box) in enumerate(SQUARES.items(), start=1):
        x0, y0, x1, y1 = box
        rle = mask_to_rle(_square(box))
        bbox = [x0, y0, x1 - x0, y1 - y0]
        gt["annotations"].append({"id": index, "image_id": 1, "category_id": category_id, "bbox": bbox,
                                  "area": float((x1 - x0) * (y1 - y0)), "iscrowd": 0, "segmentation": rle})  # fmt: skip
        results.append({"image_id": 1, "category_id": category_id, "bbox": bbox, "score": 0.9, "segmentation": rle})
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "a.json").write_text(json.dumps(results))
    (tmp_path / "b.json").write_text(json.dumps(results[:1]))
    return tmp_path


def test_eval_prints_per_class_table_and_writes_the_report(tmp_path, capsys):
    case = _write_case(tmp_path)
    code = main(["eval", "--gt", str(case / "gt.json"), "--predictions", str(case / "b.json"), "--report", str(case / "report")])
    assert code == 0
    out = capsys.readouterr().out
    table = out[out.index("\nsegm") :]
    rows = {line.split()[0]: line.split() for line in table.splitlines() if line.strip()}
    assert rows["circle"][1:3] == ["1", "100.0"] and rows["square"][1:3] == ["1", "0.0"]
    with open(case / "report" / "per_class.csv") as handle:
        per_class = [row for row in csv.DictReader(handle) if row["iou_type"] == "segm"]
    assert {row["name"]: round(float(row["AP"]), 6) for row in per_class} == {"circle": 100.0, "square": 0.0}
    report = json.loads((case / "report" / "report.json").read_text())
    assert {"per_class", "pr_curves", "confusion"} <= set(report["files"])
    # The miss is the square row's "background" column of the confusion matrix.
    assert report["confusion"]["counts"]["segm"][1][-1] == 1


def test_eval_compares_two_models_per_class(tmp_path, capsys):
    case = _write_case(tmp_path)
    code = main(["eval", "--gt", str(case / "gt.json"), "--predictions", str(case / "a.json"),
                 "--compare-predictions", str(case / "b.json")])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    comparison = out[out.index("per-class AP: A = a.json, B = b.json") :]
    segm = comparison[comparison.index("\nsegm") :]
    rows = {line.split()[0]: line.split() for line in segm.splitlines() if line.strip()}
    assert rows["circle"][1:] == ["100.0", "100.0", "+0.0"]
    assert rows["square"][1:] == ["100.0", "0.0", "-100.0"]
