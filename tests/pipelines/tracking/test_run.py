"""Tracker against a real ``mlflow server`` and the embedded SQLite default: params, metrics, COCO AP, artifacts,
the loss-curve PNG, resuming by run key or id, and child runs under a parent.

Everything is read back through a fresh ``MlflowClient``, not through the Tracker that wrote it.
"""

from __future__ import annotations

import subprocess
import warnings
from pathlib import Path

import pytest
import yaml

from mrcnn.config import Config, flatten, get_preset
from pipelines.tracking import GIT_COMMIT_TAG, PARENT_RUN_TAG, RUN_KEY_TAG, Tracker, child_runs
from tests.pipelines.tracking.readback import artifact_paths, fresh_client

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EVAL = {
    "bbox": {"AP": 41.5, "AP50": 70.25, "APs": -1.0, "per_category": {"circle": 50.0, "star": -1.0}},
    "segm": {"AP": 38.0, "AP75": 39.5, "per_category": {"circle": 44.0, "traffic light": 12.5, "t-shirt (v2)": 5.0}},
}


def _git_head() -> str | None:
    result = subprocess.run(["git", "-C", str(Path(__file__).resolve().parents[3]), "rev-parse", "HEAD"],
                            capture_output=True, text=True)  # fmt: skip
    return result.stdout.strip() if result.returncode == 0 else None


def test_run_logs_config_metrics_eval_and_artifacts(tracking_uri, tmp_path):
    cfg = get_preset("r18_fpn_small")
    images = tmp_path / "images"
    images.mkdir()
    (images / "pred_0.png").write_bytes(PNG_MAGIC + b"not really")
    (images / "notes.txt").write_text("not an image")
    history = [
        {"iteration": i + 1, "lr": 1e-3 * (i + 1) / 5, "loss": 3.0 - 0.1 * i, "loss_mask": 0.7 - 0.01 * i,
         "loss_rpn_box_reg": 0.2 / (i + 1)}  # fmt: skip
        for i in range(5)
    ]
    with Tracker.start(tracking_uri, "tracking-test", "run-logging", tags={"purpose": "test"}) as tracker:
        tracker.log_config(cfg)
        tracker.log_params({"ray.storage_path (abs)": "/shared/results", "data.note": "x" * 7000})
        for step, record in enumerate(history):
            tracker.log_metrics({k: v for k, v in record.items() if k != "iteration"}, step=step)
        logged = tracker.log_eval(EVAL, step=4)
        (tmp_path / "summary.json").write_text("{}")
        tracker.log_artifact(tmp_path / "summary.json", "reports")
        assert tracker.log_images(images) == 1
        png = tracker.log_figure_loss_curves(history, tmp_path / "loss_curves.png")
        commit = tracker.set_git_commit()
        run_id = tracker.run_id
    assert png.read_bytes().startswith(PNG_MAGIC)

    client = fresh_client(tracking_uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "run-logging"
    assert run.data.tags[RUN_KEY_TAG] == "run-logging" and run.data.tags["purpose"] == "test"
    expected_params = {k: str(v) for k, v in flatten(cfg.to_dict()).items()}
    # keys MLflow refuses are sanitized; values are cut to MLflow's 6000 characters
    expected_params.update({"ray.storage_path _abs_": "/shared/results", "data.note": "x" * 5997 + "..."})
    assert run.data.params == expected_params
    assert run.data.params["model.rpn.anchor_sizes"] == "[32, 64, 128, 256, 512]"
    assert run.data.params["solver.clip_grad_norm"] == "10.0"

    loss_history = client.get_metric_history(run_id, "loss")
    assert [(m.step, m.value) for m in sorted(loss_history, key=lambda m: m.step)] == [
        (i, pytest.approx(3.0 - 0.1 * i)) for i in range(5)
    ]
    assert len(client.get_metric_history(run_id, "lr")) == 5
    metrics = run.data.metrics
    assert metrics["segm/AP"] == 38.0 and metrics["bbox/AP50"] == 70.25 and metrics["segm/AP75"] == 39.5
    assert metrics["segm_per_category/traffic light"] == 12.5 and metrics["bbox_per_category/circle"] == 50.0
    assert metrics["segm_per_category/t-shirt _v2_"] == 5.0
    assert "bbox/APs" not in metrics and "bbox_per_category/star" not in metrics  # -1 = no ground truth
    assert set(logged) == {k for k in metrics if "/" in k and k.split("/")[0].startswith(("bbox", "segm"))}
    assert client.get_metric_history(run_id, "segm/AP")[0].step == 4

    assert artifact_paths(client, run_id) == {
        "config.yaml", "reports/summary.json", "images/pred_0.png", "plots/loss_curves.png"
    }  # fmt: skip
    downloaded = Path(client.download_artifacts(run_id, "config.yaml", str(tmp_path / "dl")))
    assert Config.from_dict(yaml.safe_load(downloaded.read_text())) == cfg
    downloaded_png = Path(client.download_artifacts(run_id, "plots/loss_curves.png", str(tmp_path / "dl")))
    assert downloaded_png.read_bytes() == png.read_bytes()

    head = _git_head()
    assert commit == head
    assert run.data.tags.get(GIT_COMMIT_TAG) == head


def test_resume_continues_the_same_run(tracking_uri):
    key = "TorchTrainer_2024-05-01 @ /shared/ray_results/it's-a-run"  # quotes must survive the search filter
    first = Tracker.start(tracking_uri, "tracking-test", "mrcnn-train", run_key=key)
    assert not first.resumed
    first.log_params({"solver.max_iters": 100, "model.num_classes": 5})
    first.log_metrics({"loss": 2.0}, step=0)
    first.log_metrics({"loss": 1.5}, step=1)
    first.end("FAILED")  # the worker died

    second = Tracker.start(tracking_uri, "tracking-test", "mrcnn-train", run_key=key)
    assert second.resumed and second.run_id == first.run_id
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert second.log_params({"solver.max_iters": 100, "model.num_classes": 5}) == {}  # identical: no error
    with pytest.warns(UserWarning, match="solver.max_iters"):
        changed = second.log_params({"solver.max_iters": 200, "solver.base_lr": 0.01})
    assert changed == {"solver.max_iters": ("100", "200")}
    second.log_metrics({"loss": 1.0}, step=2)
    assert fresh_client(tracking_uri).get_run(first.run_id).info.status == "RUNNING"
    second.end()

    by_id = Tracker.start(tracking_uri, "tracking-test", "ignored-name", run_id=first.run_id)
    assert by_id.resumed and by_id.run_id == first.run_id
    by_id.log_metrics({"loss": 0.5}, step=3)
    by_id.end("KILLED")

    client = fresh_client(tracking_uri)
    experiment = client.get_experiment_by_name("tracking-test")
    runs = [r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get(RUN_KEY_TAG) == key]
    assert [r.info.run_id for r in runs] == [first.run_id]
    run = runs[0]
    assert run.info.status == "KILLED"
    assert run.data.params["solver.max_iters"] == "100" and run.data.params["solver.base_lr"] == "0.01"
    history = sorted(client.get_metric_history(first.run_id, "loss"), key=lambda m: m.step)
    assert [(m.step, m.value) for m in history] == [(0, 2.0), (1, 1.5), (2, 1.0), (3, 0.5)]

    other = Tracker.start(tracking_uri, "tracking-test", "mrcnn-train", run_key=key + " (2)")
    assert not other.resumed and other.run_id != first.run_id
    other.end()
    with pytest.raises(ValueError, match="no such run"):
        Tracker.start(tracking_uri, "tracking-test", "x", run_id="0123456789abcdef0123456789abcdef")


def test_child_runs_nest_under_their_parent_and_attach_keeps_the_status(tracking_uri):
    parent = Tracker.start(tracking_uri, "nesting-test", "ablate", run_key="ablate-1")
    children = [Tracker.start(tracking_uri, "nesting-test", f"variant-{i}", parent_run_id=parent.run_id) for i in range(2)]
    Tracker.start(tracking_uri, "nesting-test", "unrelated").end()
    children[0].end()

    found = child_runs(tracking_uri, parent.run_id)
    assert [c["run_id"] for c in found] == [c.run_id for c in children]
    assert [c["status"] for c in found] == ["FINISHED", "RUNNING"]
    assert all(c["tags"][PARENT_RUN_TAG] == parent.run_id for c in found)
    assert [c["run_id"] for c in child_runs(tracking_uri, parent.run_id, run_name="variant-1")] == [children[1].run_id]

    attached = Tracker.attach(tracking_uri, children[1].run_id)
    attached.set_tags({"why": "worker died"})
    assert fresh_client(tracking_uri).get_run(children[1].run_id).info.status == "RUNNING"  # attaching changes nothing
    attached.end("FAILED")
    assert fresh_client(tracking_uri).get_run(children[1].run_id).info.status == "FAILED"
    parent.end()
    with pytest.raises(ValueError, match="parent run 'f+': no such run"):
        Tracker.start(tracking_uri, "nesting-test", "orphan", parent_run_id="f" * 32)
    with pytest.raises(ValueError, match="no such run"):
        Tracker.attach(tracking_uri, "0" * 32)

