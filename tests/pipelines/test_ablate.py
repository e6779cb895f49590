"""`mrcnn ablate`: the table's aggregation (no training), and one tiny run end to end with a real Ray and a
real `mlflow server`: every variant in the table, each backed by a real MLflow child run of the parent."""

from __future__ import annotations

import json
import statistics

import pytest

from pipelines.ablate import (
    BASELINE,
    VARIANTS,
    SeedResult,
    Variant,
    aggregate,
    build_report,
    failure_reason,
    format_markdown,
    parse_variants,
    stat_names,
    write_report,
)
from tests.pipelines.test_train import LIGHT


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


def test_parse_variants():
    assert [v.name for v in parse_variants(None)] == list(VARIANTS)
    assert [v.name for v in parse_variants("mask_off, baseline")] == [BASELINE, "mask_off"]  # canonical order
    with pytest.raises(ValueError, match=r"unknown \['roialign'\]; known: \['baseline', 'roi_pool'"):
        parse_variants("baseline,roialign")
    with pytest.raises(ValueError, match="none selected"):
        parse_variants(",")


def test_failure_reason_names_the_failing_worker_error():
    from ray.train import ControllerError, WorkerGroupError

    worker = RuntimeError("Traceback (most recent call last):\n  File \"x.py\", line 1\nRuntimeError: shapes differ\n")
    error = WorkerGroupError("[Rank 1] ...", {1: worker, 0: ValueError("bad target in image 7")})
    assert failure_reason(error) == "rank 0: ValueError: bad target in image 7"
    assert failure_reason(WorkerGroupError("x", {1: worker})) == "rank 1: RuntimeError: shapes differ"
    assert failure_reason(ControllerError(OSError("disk full"))) == "controller: OSError: disk full"
    try:
        raise KeyError("a") from FileNotFoundError("no shards in /x/train")
    except KeyError as exc:
        assert failure_reason(exc) == "FileNotFoundError: no shards in /x/train"
    assert failure_reason(ValueError("")) == "ValueError: "


def test_cli_errors_are_one_line_before_any_work(tmp_path, capsys):
    from pipelines.cli import main

    out = tmp_path / "never"
    assert main(["ablate", "--out", str(out), "--variants", "baseline,roialign"]) == 2
    assert capsys.readouterr().err.strip().startswith("mrcnn: error: variants: unknown ['roialign']; known: ['baseline'")
    assert main(["ablate", "--out", str(out), "--minutes-per-variant", "0"]) == 2
    assert "must be positive" in capsys.readouterr().err
    assert main(["ablate", "--out", str(out), "--minutes-per-variant", "5", "--steps-per-variant", "100"]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["ablate", "--out", str(out), "--seeds", "0"]) == 2
    assert "--seeds: expected >= 1, got 0" in capsys.readouterr().err
    assert not out.exists()


# ------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from tests.pipelines.mlflow_server import mlflow_server

    with mlflow_server(tmp_path_factory.mktemp("mlflow")) as srv:
        yield srv


@pytest.mark.slow
def test_ablate_end_to_end_with_child_runs_and_a_failing_variant(tmp_path, server, monkeypatch, capsys):
    """A tiny budget (2 steps, 6 images of 64 px): each chosen variant trains through Ray Train into its own MLflow
    child run; a variant that crashes in the workers is in the table as failed, its child run FAILED, and the others
    are unaffected. Three variants keep it short (each is a Ray Train launch): the baseline, one without masks
    (Faster R-CNN: no segm metrics) and the broken one; the rest differ only in their config overrides."""
    import ray
    from mlflow.tracking import MlflowClient

    import pipelines.ablate
    from pipelines.cli import main
    from pipelines.tracking import child_runs

    # 0 mask convs of width 32 after a 64-channel pooler: the mask predictor gets the wrong channels in the worker.
    broken = Variant("broken", {"model.mask_head.num_convs": 0, "model.mask_head.conv_dim": 32}, "crashes in forward")
    monkeypatch.setitem(pipelines.ablate.VARIANTS, "broken", broken)
    out = tmp_path / "ablate"
    overrides = [f"--set={k}={v}" for k, v in LIGHT.items()]
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        code = main(["ablate", "--out", str(out), "--train", "4", "--val", "2", "--size", "64", "--steps-per-variant", "2",
                     "--workers", "1", "--batch-size", "2", "--tracking-uri", server.tracking_uri, "--max-failures", "0",
                     "--variants", "baseline,mask_off,broken", *overrides])  # fmt: skip
    finally:
        ray.shutdown()
    printed = capsys.readouterr().out
    assert code == 1, printed  # a variant failed
    summary = json.loads(printed.strip().splitlines()[-1])
    assert summary["failed"] == ["broken"]

    report = json.loads((out / "ablation.json").read_text())
    names = ["baseline", "mask_off", "broken"]
    assert list(report["variants"]) == names
    table = (out / "ablation.md").read_text()
    assert table.strip() in printed  # printed as written
    for name in names:
        assert f"| `{name}` |" in table
    assert "| `broken` | failed: " in table
    assert {c["name"] for c in report["comparisons"]} == {"multi_task"}  # the only pair among the three

    client = MlflowClient(server.tracking_uri)
    parent = client.get_run(summary["parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.params["ablate.steps_per_variant"] == "2"
    assert parent.data.tags["mrcnn.ablation.failed_variants"] == "broken"
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"ablation.md", "ablation.json", "ablation.png"}

    children = {c["run_id"]: c for c in child_runs(server.tracking_uri, parent.info.run_id)}
    assert len(children) == len(names)
    for name in names:
        [run] = report["variants"][name]["runs"]
        child = children[run["mlflow_run_id"]]
        assert child["tags"]["mlflow.parentRunId"] == parent.info.run_id
        if name == "broken":
            assert run["status"] == "failed" and child["status"] == "FAILED"
            assert child["tags"]["mrcnn.ablation.error"] == run["error"]
            assert run["error"].startswith("rank 0: RuntimeError: ") and "channels" in run["error"], run["error"]
            continue
        assert run["status"] == "finished" and child["status"] == "FINISHED", (name, run)
        assert run["iterations"] == 2 and child["metrics"]["train/loss"] > 0
        assert child["tags"]["mrcnn.ablation.variant"] == name
        for key, value in VARIANTS[name].overrides.items():
            assert child["params"][key] == str(value)
        assert child["metrics"]["bbox/AP"] == pytest.approx(run["metrics"]["bbox"]["AP"], abs=1e-6)
        has_masks = name != "mask_off"
        assert ("segm" in run["metrics"]) == has_masks == ("segm/AP" in child["metrics"])
    assert not client.search_registered_models()  # variants are comparisons, not models to serve
