"""`mrcnn ablate`'s table: aggregation over seeds, the comparison with the paper, markdown, json and plot
(no training)."""

from __future__ import annotations

import json
import statistics

import pytest

from pipelines.ablate import BASELINE, SeedResult, aggregate, build_report, format_markdown, stat_names, write_report


def _metrics(ap: float, *, segm: bool = True) -> dict[str, dict[str, float]]:
    """12 numbers per IoU type: AP = ap, AP50 = ap + 20, AP75 = ap - 5, APl = -1 (no large objects), rest ap / 2."""
    stats = {name: ap / 2 for name in stat_names()} | {"AP": ap, "AP50": ap + 20, "AP75": ap - 5, "APl": -1.0}
    return {"bbox": dict(stats), **({"segm": dict(stats)} if segm else {})}


def test_aggregate_mean_and_sample_std_over_seeds_skipping_failed_seeds_and_missing_areas():
    runs = [SeedResult(seed=0, status="finished", metrics=_metrics(10.0)),
            SeedResult(seed=1, status="finished", metrics=_metrics(14.0)),
            SeedResult(seed=2, status="failed", error="boom")]  # fmt: skip
    summary = aggregate(runs)
    assert set(summary) == {"segm", "bbox"} and set(summary["segm"]) == set(stat_names())
    ap = summary["segm"]["AP"]
    assert ap["mean"] == pytest.approx(12.0) and ap["n"] == 2
    assert ap["std"] == pytest.approx(statistics.stdev([10.0, 14.0]))  # sample std: 2.83, not 2.0
    assert (ap["min"], ap["max"]) == (10.0, 14.0)
    assert summary["segm"]["APl"] == {"mean": -1.0, "std": None, "min": None, "max": None, "n": 0}
    one = aggregate([SeedResult(seed=0, status="finished", metrics=_metrics(10.0, segm=False))])
    assert set(one) == {"bbox"} and one["bbox"]["AP"]["std"] is None
    assert aggregate([SeedResult(seed=0, status="failed")]) == {}


def test_report_compares_like_the_paper_and_marks_failures(tmp_path):
    results = {
        BASELINE: [SeedResult(0, "finished", 100, metrics=_metrics(30.0)), SeedResult(1, "finished", 100, metrics=_metrics(32.0))],
        "roi_pool": [SeedResult(0, "finished", 100, metrics=_metrics(25.0)), SeedResult(1, "finished", 100, metrics=_metrics(27.0))],
        "softmax": [SeedResult(0, "failed", error="RuntimeError: out of memory"), SeedResult(1, "failed", error="RuntimeError: out of memory")],
        "mlp": [SeedResult(0, "finished", 100, metrics=_metrics(31.2)), SeedResult(1, "finished", 100, metrics=_metrics(31.0))],
        "mask_off": [SeedResult(0, "finished", 100, metrics=_metrics(33.0, segm=False)),
                     SeedResult(1, "finished", 100, metrics=_metrics(33.0, segm=False))],
    }  # fmt: skip
    settings = {"data": "synthetic", "preset": "r18_fpn_small", "workers": 2, "batch_size": 4, "seeds": [0, 1],
                "steps_per_variant": 100, "budget_from": "the steps `baseline` took in 6 min"}  # fmt: skip
    report = build_report(settings, results)
    assert list(report["variants"]) == [BASELINE, "roi_pool", "softmax", "mlp", "mask_off"]
    assert report["variants"]["softmax"]["status"] == "failed"
    by_name = {c["name"]: c for c in report["comparisons"]}
    assert set(by_name) == {"alignment", "mask_output", "mask_head", "multi_task"}

    alignment = by_name["alignment"]
    assert alignment["iou_type"] == "segm" and alignment["ours"]["delta"]["AP"] == pytest.approx(31.0 - 26.0)
    assert alignment["same_direction"] == {"AP": True, "AP50": True, "AP75": True}
    assert alignment["paper"][0]["delta"] == [3.4, 2.4, 5.1]  # Table 2c, ResNet-50-C4
    assert by_name["mask_output"]["ours"]["delta"]["AP"] is None  # softmax failed: no delta, no verdict
    assert by_name["mask_output"]["same_direction"]["AP"] is None
    assert by_name["mask_head"]["ours"]["delta"]["AP"] == pytest.approx(-0.1)
    assert by_name["mask_head"]["same_direction"]["AP"] is None  # under half a point: a tie
    multi = by_name["multi_task"]  # box AP: Mask R-CNN (31) below Faster R-CNN (33) here: the paper's opposite
    assert multi["iou_type"] == "bbox" and multi["ours"]["delta"]["AP"] == pytest.approx(-2.0)
    assert multi["same_direction"]["AP"] is False

    text = format_markdown(report)
    assert "| RoIPool vs RoIAlign (`roi_pool` vs `baseline`) | segm | 26.0 ± 1.4 / 46.0 ± 1.4 / 21.0 ± 1.4 |" in text
    assert "+5.0 / +5.0 / +5.0 | +3.4 / +2.4 / +5.1 (2c, ResNet-50-C4 (stride 16)); +7.3 / +5.3 / +10.5 (2d" in text
    assert "| `softmax` | failed: RuntimeError: out of memory |" in text
    assert "| `mask_off` | – | – |" in text  # no segm without a mask branch
    assert "yes, yes, yes" in text and "tie, tie, tie" in text and "no, no, no" in text
    assert "100 steps per variant (the steps `baseline` took in 6 min)" in text

    paths = write_report(report, tmp_path)
    assert json.loads(paths["json"].read_text())["variants"]["roi_pool"]["summary"]["segm"]["AP"]["mean"] == 26.0
    assert paths["markdown"].read_text() == text
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

