"""Run configs of `mrcnn train`: the paper-scale COCO presets in configs/, the job config, the budget
(max_iters or epochs, the linear scaling rule), and ImageNet backbone weights."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torchvision
import yaml

import pipelines.train
from pipelines.cli import main
from pipelines.train import TrainResult, TrainRunConfig, load_backbone_weights

ROOT = Path(__file__).resolve().parents[2]
COCO_TRAIN2017_IMAGES = 118287


@pytest.mark.parametrize(("name", "depth"), [("coco_r50_fpn_1x", 50), ("coco_r101_fpn_1x", 101)])
def test_paper_scale_configs(name, depth):
    run = TrainRunConfig.from_yaml(ROOT / "configs" / f"{name}.yaml").validate()
    cfg = run.model_config()
    assert cfg.model.backbone.depth == depth and cfg.model.backbone.norm == "frozen_bn"
    # He et al. 2017: 16 images per step, lr 0.02, 90k iterations, x0.1 at 60k and 80k.
    assert run.workers * run.batch_size == 16 and run.use_gpu
    assert run.max_iters == 90000 and not run.epochs
    assert cfg.solver.optimizer == "sgd" and cfg.solver.momentum == 0.9 and cfg.solver.weight_decay == 1e-4
    assert cfg.solver.scaled_lr(run.workers * run.batch_size) == pytest.approx(0.02)
    assert [round(s * run.max_iters) for s in cfg.solver.steps] == [60000, 80000]
    assert run.backbone_weights.endswith(".pth") and run.storage_path.startswith("s3://") and run.data.startswith("s3://")
    # The accelerator it asks for is a node type of cluster.yaml with room for every worker.
    cluster = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    nodes = [t for t in cluster["available_node_types"].values()
             if t.get("resources", {}).get(f"accelerator_type:{run.accelerator_type}")]  # fmt: skip
    assert nodes and nodes[0]["resources"]["GPU"] * nodes[0]["max_workers"] >= run.workers


def test_the_job_config_validates():
    run = TrainRunConfig.from_yaml(ROOT / "jobs" / "configs" / "train.yaml").validate()
    assert run.model_config().name == "r18_fpn_small"


def test_other_gpu_counts_keep_the_schedule_by_the_linear_scaling_rule(monkeypatch, tmp_path):
    """--epochs with another total batch: lr x B/16 and iterations x 16/B, decay at the same fractions."""
    launched = []
    monkeypatch.setattr(pipelines.train, "train", lambda run, **kw: launched.append(run) or TrainResult(0, {}, None, None, ""))
    config = str(ROOT / "configs" / "coco_r50_fpn_1x.yaml")
    assert main(["train", "--config", config, "--workers", "4", "--batch-size", "8", "--epochs", "12.17"]) == 0
    run = launched[-1].validate()
    assert (run.max_iters, run.epochs, run.workers * run.batch_size) == (0, 12.17, 32)
    iterations = math.ceil(run.epochs * COCO_TRAIN2017_IMAGES / 32)  # what train() computes from the shards
    assert iterations == 44987 and iterations * 32 == pytest.approx(90000 * 16, rel=1e-3)
    assert run.model_config().solver.scaled_lr(32) == pytest.approx(0.04)
    # And back: --max-iters on the command line replaces a config's epochs.
    (tmp_path / "e.yaml").write_text("data: d\nepochs: 3\n")
    assert main(["train", "--config", str(tmp_path / "e.yaml"), "--max-iters", "10"]) == 0
    assert (launched[-1].max_iters, launched[-1].epochs) == (10, 0.0)


def test_loader_threads_flag_reaches_the_run_config(monkeypatch, tmp_path):
    launched = []
    monkeypatch.setattr(pipelines.train, "train", lambda run, **kw: launched.append(run) or TrainResult(0, {}, None, None, ""))
    assert main(["train", "--data", "d", "--loader-threads", "5"]) == 0
    assert launched[-1].loader_threads == 5 and launched[-1].num_loader_threads() == 5
    # The flag overrides a config's value; without it the config's (or the default -1: auto) stays.
    config = str(ROOT / "configs" / "coco_r50_fpn_lsj.yaml")
    assert main(["train", "--config", config, "--loader-threads", "0"]) == 0
    assert launched[-1].loader_threads == 0
    assert main(["train", "--config", config]) == 0
    assert launched[-1].loader_threads == 6
    assert main(["train", "--data", "d"]) == 0
    assert launched[-1].loader_threads == -1
    count = len(launched)
    assert main(["train", "--data", "d", "--loader-threads", "-3"]) == 2  # refused before anything starts
    assert len(launched) == count


def test_budget_validation():
    with pytest.raises(ValueError, match="give max_iters or epochs, not both"):
        TrainRunConfig(data="d", max_iters=10, epochs=1).validate()
    with pytest.raises(ValueError, match="must be >= 0"):
        TrainRunConfig(data="d", epochs=-1).validate()


def test_backbone_weights_load_an_imagenet_resnet_state_dict(tmp_path):
    from mrcnn.config import get_preset
    from mrcnn.modeling import build_model

    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(weights=None)
    state = resnet.state_dict()
    torch.save(state, tmp_path / "resnet18.pth")
    model = build_model(get_preset("r18_fpn_small"))
    load_backbone_weights(model, str(tmp_path / "resnet18.pth"))
    loaded = model.backbone.body.state_dict()
    for key, value in loaded.items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0, msg=key)
    assert not any(k.startswith("fc.") for k in loaded)

    torch.save({"conv1.weight": state["conv1.weight"]}, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="not a state dict of this ResNet"):
        load_backbone_weights(model, str(tmp_path / "partial.pth"))
    (tmp_path / "text.pth").write_text("not torch")
    with pytest.raises(ValueError, match="not a torch state dict"):
        load_backbone_weights(model, str(tmp_path / "text.pth"))
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_backbone_weights(model, str(tmp_path / "missing.pth"))


def test_the_lsj_recipe_parses_with_its_augmentation():
    run = TrainRunConfig.from_yaml(ROOT / "configs" / "coco_r50_fpn_lsj.yaml").validate()
    augmentation = run.augmentation_config()
    assert (augmentation.kind, augmentation.lsj_size, augmentation.lsj_scale) == ("lsj", 1024, (0.1, 2.0))
    assert augmentation.hflip == 0.5 and augmentation.copy_paste == 0.0
    cfg = run.model_config()
    assert cfg.solver.weight_decay == 4e-5 and isinstance(cfg.solver.weight_decay, float)
    assert cfg.model.input.min_size == (1024,) and cfg.model.input.max_size == 1024
    # ~13 LSJ images/s per core (benchmarks/RESULTS.md): 6 threads for 40-60 images/s per GPU, within its CPUs.
    assert run.loader_threads == run.num_loader_threads() == 6 and run.loader_threads < run.cpus_per_worker


def test_augmentation_and_loader_threads_are_validated(tmp_path):
    from mrcnn.config import ConfigError

    with pytest.raises(ConfigError, match="augmentation.kind"):
        TrainRunConfig(data="d", augmentation={"kind": "mosaic"}).validate()
    with pytest.raises(ConfigError, match="augmentation: .*unknown"):
        TrainRunConfig(data="d", augmentation={"kind": "lsj", "lsj_sise": 512}).validate()
    with pytest.raises(ConfigError, match="copy_paste"):
        TrainRunConfig(data="d", augmentation={"kind": "flip", "copy_paste": 0.5}).validate()
    with pytest.raises(ValueError, match="loader_threads"):
        TrainRunConfig(data="d", loader_threads=-2).validate()
    assert TrainRunConfig(data="d").augmentation_config().kind == "none"
    assert (TrainRunConfig(data="d").num_loader_threads(), TrainRunConfig(data="d", use_gpu=True).num_loader_threads()) == (1, 2)
    assert TrainRunConfig(data="d", loader_threads=0).num_loader_threads() == 0
    # YAML 1.2 numbers: 1e-4 is a float, in the run keys and in the overrides.
    (tmp_path / "run.yaml").write_text("data: d\naugmentation: {kind: multiscale, min_sizes: [512, 576]}\n"
                                       "overrides: {solver.base_lr: 1e-4}\nloader_threads: 3\n")  # fmt: skip
    run = TrainRunConfig.from_yaml(tmp_path / "run.yaml").validate()
    assert run.overrides["solver.base_lr"] == 1e-4 and run.loader_threads == 3
    assert run.augmentation_config().min_sizes == (512, 576)


def test_local_paths_reach_the_workers_absolute(tmp_path, monkeypatch):
    """Ray Train workers run in another folder: the driver makes local data, storage and backbone-weights paths
    absolute (a relative --data used to find no val shards there, so nothing was evaluated or registered)."""
    import contextlib

    import pipelines.common.session
    import pipelines.train.driver

    launched = []
    monkeypatch.setattr(pipelines.common.session, "ray_session", lambda address=None: contextlib.nullcontext(True))
    monkeypatch.setattr(pipelines.train.driver, "_train", lambda run, hooks, init_source, **kw: launched.append(run))
    monkeypatch.chdir(tmp_path)
    pipelines.train.train(TrainRunConfig(data="shards", storage_path="runs", backbone_weights="resnet18.pth"))
    pipelines.train.train(TrainRunConfig(data="s3://bucket/shards", storage_path="gs://bucket/runs"))
    assert [(r.data, r.storage_path, r.backbone_weights) for r in launched] == [
        (str(tmp_path / "shards"), str(tmp_path / "runs"), str(tmp_path / "resnet18.pth")),
        ("s3://bucket/shards", "gs://bucket/runs", ""),
    ]


def test_no_gpu_overrides_a_configs_use_gpu(monkeypatch):
    launched = []
    monkeypatch.setattr(pipelines.train, "train", lambda run, **kw: launched.append(run) or TrainResult(0, {}, None, None, ""))
    config = str(ROOT / "configs" / "finetune_r50_fpn.yaml")
    assert main(["train", "--config", config, "--no-gpu", "--amp", "none", "--cpus-per-worker", "1"]) == 0
    assert (launched[-1].use_gpu, launched[-1].amp, launched[-1].cpus_per_worker) == (False, "none", 1.0)
    assert main(["train", "--data", "d", "--gpu"]) == 0
    assert launched[-1].use_gpu is True
    assert main(["train", "--data", "d"]) == 0
    assert launched[-1].use_gpu is False


def test_a_run_that_cannot_be_placed_is_refused_on_a_local_ray_and_announced_on_a_cluster():
    """Ray Train retries a worker group it cannot place forever, silently: the driver checks first."""
    from pipelines.train.driver import check_resources

    laptop = [{"CPU": 2.0}]
    gpu_run = TrainRunConfig(data="d", workers=1, use_gpu=True, amp="none", cpus_per_worker=8.0, gpus_per_worker=1.0)
    with pytest.raises(ValueError, match=r"needs 1 workers of 8 CPU \+ 1 GPU each.*have 2 CPU, 0 GPU.*--no-gpu"):
        check_resources(gpu_run, laptop, local=True)
    cpu_run = TrainRunConfig(data="d", workers=1, cpus_per_worker=8.0)
    with pytest.raises(ValueError, match=r"smaller --cpus-per-worker") as error:
        check_resources(cpu_run, laptop, local=True)
    assert "--no-gpu" not in str(error.value)
    # On a cluster an autoscaler may add nodes: one line to print, no error.
    line = check_resources(gpu_run, laptop, local=False)
    assert line.startswith("[train] the run needs") and "autoscaler" in line
    # Workers are placed whole, node by node: 2 x 3 CPUs fit on two 4-CPU nodes, 3 x 3 do not.
    nodes = [{"CPU": 4.0}, {"CPU": 4.0}]
    assert check_resources(TrainRunConfig(data="d", workers=2, cpus_per_worker=3.0), nodes, local=True) is None
    with pytest.raises(ValueError, match=r"room for 2"):
        check_resources(TrainRunConfig(data="d", workers=3, cpus_per_worker=3.0), nodes, local=True)
    assert check_resources(gpu_run, [{"CPU": 16.0, "GPU": 8.0}], local=True) is None
