"""`mrcnn ablate`'s runner: failure reasons, CLI errors before any work, and one tiny run end to end with a real
Ray and a real `mlflow server`: every variant in the table, each backed by a real MLflow child run of the parent."""

from __future__ import annotations

import json

import pytest

from pipelines.ablate import VARIANTS, Variant, failure_reason
from tests.pipelines.test_train import LIGHT


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
    ray.init(address="local", num_cpus=2, include_dashboard=False)
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
