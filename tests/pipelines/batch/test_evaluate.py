"""`mrcnn evaluate`: COCO AP of a model on a whole split, predicted by a Ray Data actor pool, agrees with
`mrcnn eval --weights` (one process, the same Predictor) on the same images and ground truth; it writes the
evaluation report, and logs it with its metrics to the MLflow run of a registered model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import ray

from mrcnn.evaluation import STAT_NAMES
from pipelines.cli import main
from pipelines.batch.evaluate import evaluate
from pipelines.preprocess import preprocess_dataset


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def registered(small_checkpoint, tmp_path_factory):
    """``small_checkpoint`` registered as version 1 of ``evaluate-report`` (alias ``best``) in a SQLite MLflow
    store. Yields (tracking URI, the run id of the version)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.delenv("MLFLOW_REGISTRY_URI", raising=False)
        mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        from pipelines.tracking import Tracker, default_tracking_uri, register_checkpoint

        uri = default_tracking_uri(tmp_path_factory.mktemp("store"))
        with Tracker.start(uri, "evaluate-report", "train") as tracker:
            register_checkpoint(tracker, small_checkpoint, model_name="evaluate-report", segm_ap=1.0)
        yield uri, tracker.run_id


@pytest.fixture(scope="module")
def val_folder(synth_dataset, tmp_path_factory) -> tuple[Path, Path]:
    """The synthetic val images plus one image the ground truth does not list; a ground truth that
    also lists one image whose file is missing."""
    root = tmp_path_factory.mktemp("eval")
    images = root / "images"
    shutil.copytree(synth_dataset / "val" / "images", images)
    shutil.copy(next((synth_dataset / "train" / "images").iterdir()), images / "not_in_gt.png")
    gt = json.loads((synth_dataset / "val" / "annotations.json").read_text())
    gt["images"].append({"id": 999, "file_name": "missing.png", "height": 128, "width": 128})
    (root / "annotations.json").write_text(json.dumps(gt))
    return root / "annotations.json", images


def _reference(annotations: Path, images: Path, weights: Path, capsys) -> dict:
    """`mrcnn eval --weights` in this process: predict image by image, then pycocotools."""
    capsys.readouterr()
    assert main(["eval", "--weights", str(weights), "--annotations", str(annotations), "--images", str(images),
                 "--score-threshold", "0.05", "--json"]) == 0  # fmt: skip
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _close(ours: dict, reference: dict) -> None:
    for iou_type in ("bbox", "segm"):
        for name in STAT_NAMES:
            # The actors batch the images differently and run one torch thread: float rounding only.
            assert ours[iou_type][name] == pytest.approx(reference[iou_type][name], abs=0.05), (iou_type, name)


def test_evaluate_coco_json_and_shards_agree_with_mrcnn_eval(local_ray, val_folder, synth_dataset, small_checkpoint,
                                                            registered, tmp_path, capsys):  # fmt: skip
    annotations, images = val_folder
    reference = _reference(annotations, images, small_checkpoint, capsys)
    assert reference["segm"]["AP"] >= 0 and reference["bbox"]["AR100"] > 0, "the random model finds something"

    summary = evaluate(model=str(small_checkpoint), annotations=str(annotations), images=str(images),
                       out=tmp_path / "json", score_threshold=0.05, workers=2)  # fmt: skip
    _close(summary.metrics, reference)
    assert summary.num_images == 5  # 4 val images + the missing one (no detections), not not_in_gt.png
    assert summary.num_detections > 0
    written = json.loads((tmp_path / "json" / "metrics.json").read_text())
    assert written["metrics"]["segm"]["AP"] == summary.metrics["segm"]["AP"]
    # A file model has no run: the report goes to OUT/report only, and one line says so.
    report = json.loads((tmp_path / "json" / "report" / "report.json").read_text())
    assert written["report"] == {"dir": str(tmp_path / "json" / "report"), "run_id": None, "artifact_path": None,
                                 "metric_prefix": None}  # fmt: skip
    assert {row["AP"] for row in report["per_class"]["segm"]} == {
        summary.metrics["segm"]["per_category"][row["name"]] for row in report["per_class"]["segm"]}
    assert all((tmp_path / "json" / "report" / f).is_file() for f in ("per_class.csv", "pr_curves.csv",
               "pr_curves_segm.png", "confusion_segm.csv", "confusion_bbox.png"))  # fmt: skip
    worst = [e for rows in report["worst_images"]["by_category"].values() for e in rows]
    assert worst and all((tmp_path / "json" / "report" / e["overlay"]).is_file() for e in worst), "local images: overlays"
    assert "is not a model of an MLflow run, so nothing is logged to MLflow" in capsys.readouterr().err

    # The same images as shards (their ground truth built from the shards): the same numbers.
    shards = tmp_path / "shards"
    preprocess_dataset(synth_dataset, shards, splits=["val"])
    reference = _reference(synth_dataset / "val" / "annotations.json", synth_dataset / "val" / "images",
                           small_checkpoint, capsys)  # fmt: skip
    # ... evaluated through the CLI as the registered model: the report and the metrics land on its run.
    uri, run_id = registered
    assert main(["evaluate", "--model", "models:/evaluate-report@best", "--tracking-uri", uri, "--data",
                 str(shards / "val"), "--out", str(tmp_path / "shards_eval"), "--workers", "2",
                 "--report", str(tmp_path / "local_report")]) == 0  # fmt: skip
    printed = capsys.readouterr()
    from_shards = json.loads(printed.out.strip().splitlines()[-1])
    assert from_shards["score_threshold"] == 0.05, "default: the checkpoint's box_head.score_thresh"
    assert from_shards["num_images"] == 4 and from_shards["num_rejected"] == 0
    _close(from_shards["metrics"], reference)
    assert (tmp_path / "local_report" / "per_class.csv").is_file(), "--report DIR: written there"
    assert from_shards["report"] == {"dir": str(tmp_path / "local_report"), "run_id": run_id,
                                     "artifact_path": "evaluate/shards-val/report",
                                     "metric_prefix": "evaluate/shards-val/"}  # fmt: skip
    assert f"logged to run {run_id}: artifacts evaluate/shards-val/report/" in printed.err

    from mlflow import MlflowClient

    client = MlflowClient(uri)
    logged = {a.path for a in client.list_artifacts(run_id, "evaluate/shards-val/report")}
    assert {f"evaluate/shards-val/report/{f}" for f in ("per_class.csv", "pr_curves.csv", "confusion_segm.csv",
            "confusion_segm.png", "pr_curves_segm.png", "report.json")} <= logged  # fmt: skip
    assert "evaluate/shards-val/metrics.json" in {a.path for a in client.list_artifacts(run_id, "evaluate/shards-val")}
    assert not [a for a in client.list_artifacts(run_id) if a.path == "report"], "training's report/ is not touched"
    run_metrics = client.get_run(run_id).data.metrics
    for iou_type in ("bbox", "segm"):
        assert run_metrics[f"evaluate/shards-val/{iou_type}/AP"] == from_shards["metrics"][iou_type]["AP"]


def test_evaluate_errors_are_clear(tmp_path, small_checkpoint, capsys):
    assert main(["evaluate", "--model", str(small_checkpoint), "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == (
        "mrcnn: error: evaluate needs --data OUT/<split> (shards), or --annotations ANN.json and --images DIR"
    )
    (tmp_path / "bad.json").write_text("[1, 2]")
    assert main(["evaluate", "--model", str(small_checkpoint), "--annotations", str(tmp_path / "bad.json"),
                 "--images", str(tmp_path), "--out", str(tmp_path / "o")]) == 2  # fmt: skip
    assert "expected a COCO instances json" in capsys.readouterr().err


@pytest.mark.parametrize("source, name", [
    ("/data/houses-shards/val", "houses-shards-val"),
    ("s3://bucket/out/val/", "out-val"),
    ("coco/annotations/instances_val2017.json", "annotations-instances_val2017"),
    ("gt.json", "gt"),
    ("/x/my data#1/val", "my_data_1-val"),
])  # fmt: skip
def test_report_name_names_the_data(source, name):
    from pipelines.batch.report import report_name

    assert report_name(source) == name


def test_the_models_calibrated_thresholds_reach_the_report(small_checkpoint, tmp_path):
    """Training stores CalibratedThresholds in the checkpoint's metadata; evaluate's report uses them."""
    from mrcnn.checkpoint import load_checkpoint, save_checkpoint
    from mrcnn.thresholds import CalibratedThresholds, ClassThreshold
    from pipelines.batch.model import load_model

    assert load_model(str(small_checkpoint)).thresholds is None
    checkpoint = load_checkpoint(small_checkpoint)
    calibrated = CalibratedThresholds({3: ClassThreshold(3, 0.7, 0.5, 0.5, 0.5, 12, 10, True)})
    path = save_checkpoint(tmp_path / "calibrated.ckpt", model=checkpoint.build_model(), config=checkpoint.config,
                           categories=checkpoint.categories, metadata={"thresholds": calibrated.to_dict()})  # fmt: skip
    assert load_model(str(path)).thresholds == {3: 0.7}
