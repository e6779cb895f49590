"""`mrcnn train` with `init_from` (fine-tuning), evaluation at the end by default, validation losses, the
final evaluation's report and calibrated thresholds: bad `init_from` input fails in one line before Ray
starts; a short real run (1 worker, 2 steps, a local MLflow store) logs and registers all of it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import ray
import torch
import torchvision

from mrcnn.checkpoint import load_checkpoint
from mrcnn.data.synthetic import synthetic_categories
from pipelines.cli import main
from pipelines.train import TrainRunConfig, train

ROOT = Path(__file__).resolve().parents[3]


def test_the_finetune_config_loads_with_its_init_from():
    run = TrainRunConfig.from_yaml(ROOT / "configs" / "finetune_r50_fpn.yaml").validate()
    assert run.init_from.endswith(".pth") and run.init_from.startswith("s3://")
    cfg = run.model_config()
    assert cfg.model.backbone.depth == 50 and cfg.model.backbone.trainable_layers == 3
    assert cfg.solver.base_lr == 0.01 and list(cfg.solver.steps) == [0.875]
    assert run.eval_every == 500 and run.patience == 0 and run.model_name == "finetune-r50-fpn"


def test_eval_every_and_patience_are_checked():
    assert TrainRunConfig(data="d").eval_every == 0  # the default: evaluate once, at the end
    TrainRunConfig(data="d", eval_every=-1).validate()
    with pytest.raises(ValueError, match="eval_every must be >= -1"):
        TrainRunConfig(data="d", eval_every=-2).validate()
    with pytest.raises(ValueError, match="patience 3 needs periodic evaluations"):
        TrainRunConfig(data="d", patience=3).validate()
    TrainRunConfig(data="d", patience=3, eval_every=10).validate()


@pytest.fixture
def dataset_dir(tmp_path) -> Path:
    """What the driver reads before Ray starts: the category map beside the (here absent) shards."""
    (tmp_path / "data").mkdir()
    synthetic_categories().save_json(tmp_path / "data" / "categories.json")
    return tmp_path / "data"


def _cli_error(tmp_path: Path, capsys, **run) -> str:
    config = tmp_path / "run.yaml"
    config.write_text(json.dumps({"storage_path": str(tmp_path / "ray_results"), "workers": 1, **run}))
    assert main(["train", "--config", str(config), "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"]) == 2
    err = capsys.readouterr().err.strip()
    assert not ray.is_initialized(), "the error comes before Ray (and Ray Train) starts"
    assert len(err.splitlines()) == 1, err
    return err


def test_bad_init_from_gives_one_line_before_ray_starts(dataset_dir, tmp_path, capsys, small_checkpoint):
    data = str(dataset_dir)
    err = _cli_error(tmp_path, capsys, data=data, init_from=str(tmp_path / "missing.pth"))
    assert err == f"mrcnn: error: init_from: model URI '{tmp_path / 'missing.pth'}': no such file"

    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "resnet18.pth")
    err = _cli_error(tmp_path, capsys, data=data, init_from=str(tmp_path / "resnet18.pth"))
    assert "resnet18.pth" in err and "image-classification ResNet" in err and "backbone_weights" in err

    err = _cli_error(tmp_path, capsys, data=data, preset="r50_fpn", init_from=str(small_checkpoint))
    assert str(small_checkpoint) in err and "another architecture" in err and "ResNet body has another layout" in err
    # It names the preset the source was built as (an issue-16-style field report: the README's one-line
    # fine-tune with a torchvision R50 file and the default preset said only "another architecture").
    assert err.endswith("The source is preset r18_fpn_small, this run's is r50_fpn: train with --preset r18_fpn_small "
                        "(run config `preset: r18_fpn_small`)"), err  # fmt: skip
    torch.save(torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None).state_dict(),
               tmp_path / "coco.pth")  # fmt: skip
    err = _cli_error(tmp_path, capsys, data=data, init_from=str(tmp_path / "coco.pth"))
    assert "(torchvision state dict, r50_fpn layout" in err and "train with --preset r50_fpn " in err, err
    assert "e.g. []" not in err  # only the side that differs is described

    (tmp_path / "notes.txt").write_text("not a model")
    err = _cli_error(tmp_path, capsys, data=data, init_from=str(tmp_path / "notes.txt"))
    assert err.startswith("mrcnn: error: init_from: checkpoint ") and "not a file torch.save wrote" in err, err

    from mlflow.tracking import MlflowClient

    MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").search_experiments()  # the store exists (MLflow logs its creation)
    capsys.readouterr()
    err = _cli_error(tmp_path, capsys, data=data, init_from="models:/no-such-model@best")
    assert err == "mrcnn: error: init_from: model URI 'models:/no-such-model@best': no registered model named 'no-such-model'"


def test_a_short_run_fine_tunes_evaluates_at_the_end_and_registers_with_report_and_thresholds(tmp_path, small_checkpoint):
    """init_from our r18_fpn_small checkpoint (the same 5 shape names: every class row copied) at a learning
    rate too small to move float32 weights; eval_every left at its default; model_name left at "mrcnn"."""
    from mlflow.tracking import MlflowClient

    from mrcnn.data.synthetic import make_synthetic_coco
    from pipelines.preprocess import preprocess_dataset
    from pipelines.tracking import default_tracking_uri, resolve_model_uri

    make_synthetic_coco(tmp_path / "synth", num_train=4, num_val=3, size=96, seed=0)
    tracking_uri = default_tracking_uri(tmp_path / "store")
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    try:
        preprocess_dataset(tmp_path / "synth", tmp_path / "shards")
        run = TrainRunConfig(data=str(tmp_path / "shards"), preset="r18_fpn_small", workers=1, batch_size=2, max_iters=2,
                             checkpoint_every=2, overrides={"solver.base_lr": 1e-30}, init_from=str(small_checkpoint),
                             storage_path=str(tmp_path / "ray_results"), name="finetune", experiment="tests-finetune",
                             tracking_uri=tracking_uri, num_val_overlays=0)  # fmt: skip
        assert (run.eval_every, run.model_name) == (0, "mrcnn")
        result = train(run)
    finally:
        ray.shutdown()

    assert result.iteration == 2 and "segm_AP" in result.metrics
    assert result.metrics["val_loss"] > 0 and "val_loss_mask" in result.metrics
    # The weights came from the file (and the learning rate left them there).
    source = load_checkpoint(small_checkpoint).model_state
    trained = load_checkpoint(result.checkpoint_path)
    for name in ("backbone.body.conv1.weight", "roi_heads.box_predictor.cls_score.weight", "roi_heads.mask_predictor.mask_fcn_logits.weight"):
        torch.testing.assert_close(trained.model_state[name], source[name], rtol=0, atol=1e-6, msg=name)
    # Thresholds calibrated on the final evaluation, in the checkpoint's metadata.
    calibrated = trained.metadata["thresholds"]
    assert calibrated["iou"] == 0.5 and calibrated["iou_type"] == "segm"
    assert [c["category_id"] for c in calibrated["classes"]] == [1, 2, 3, 4, 5]

    client = MlflowClient(tracking_uri)
    params = client.get_run(result.mlflow_run_id).data.params
    assert params["init_from.copied"] == "circle 1->1, square 2->2, triangle 3->3, star 4->4, ring 5->5"
    assert int(params["init_from.loaded_tensors"]) == len(source)
    assert params["init_from.new_categories"] == "none" and params["run.init_from"] == str(small_checkpoint)
    assert [m.step for m in client.get_metric_history(result.mlflow_run_id, "val/loss")] == [2]
    assert client.get_metric_history(result.mlflow_run_id, "val/loss_classifier")
    report = {a.path for a in client.list_artifacts(result.mlflow_run_id, "report")}
    assert {"report/per_class.csv", "report/report.json", "report/thresholds.json", "report/confusion_segm.csv"} <= report

    version = client.get_model_version_by_alias("mrcnn", "best")
    assert version.run_id == result.mlflow_run_id
    weights = resolve_model_uri("models:/mrcnn@best", tracking_uri=tracking_uri, dst_dir=tmp_path / "best")
    stored = json.loads((weights.parent / "thresholds.json").read_text())
    assert stored == {str(c["category_id"]): c["threshold"] for c in calibrated["classes"]}
