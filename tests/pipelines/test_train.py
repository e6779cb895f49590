"""Ray Train: DDP across two nodes, fault recovery from the latest checkpoint, MLflow tracking.

Real services only: a 2-node Ray cluster on this machine (ray.cluster_utils.Cluster) and a real
`mlflow server` on 127.0.0.1, both started and stopped here.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import ray
import torch

from mrcnn.data.synthetic import make_synthetic_coco
from pipelines.preprocess import preprocess_dataset
from pipelines.train import TrainRunConfig, train
from tests.pipelines.mlflow_server import mlflow_server
from tests.pipelines.train_hooks import FailOnce

# A light model so that a few steps take seconds: the small preset with narrower heads.
LIGHT = {
    "model.backbone.out_channels": 64,
    "model.box_head.representation_size": 128,
    "model.mask_head.conv_dim": 64,
    "model.box_head.batch_size_per_image": 32,
}


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train_data")
    make_synthetic_coco(root / "synth", num_train=16, num_val=4, size=96, seed=0)
    out = root / "shards"
    import ray as _ray

    _ray.init(address="local", num_cpus=2, include_dashboard=False)
    try:
        preprocess_dataset(root / "synth", out)
    finally:
        _ray.shutdown()
    return out


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with mlflow_server(tmp_path_factory.mktemp("mlflow")) as srv:
        yield srv


@pytest.fixture
def two_node_cluster():
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


def _run(shards: Path, tmp_path: Path, **kw) -> TrainRunConfig:
    base = TrainRunConfig(
        data=str(shards),
        preset="r18_fpn_small",
        overrides=LIGHT,
        workers=2,
        batch_size=2,
        max_iters=4,
        checkpoint_every=2,
        eval_every=4,
        storage_path=str(tmp_path / "ray_results"),
        name="t",
        max_failures=2,
        experiment="tests",
        model_name="test-model",
    )
    return dataclasses.replace(base, **kw)


def test_ddp_on_two_nodes_keeps_ranks_in_sync_and_tracks_to_mlflow(shards, tmp_path, server, two_node_cluster):
    from mlflow.tracking import MlflowClient

    dump = tmp_path / "dump"
    run = _run(shards, tmp_path, placement_strategy="SPREAD", tracking_uri=server.tracking_uri)
    dumps = [{"factory": f"tests.pipelines.train_hooks:{name}", "kwargs": {"out_dir": str(dump)}}
             for name in ("DumpSeenImages", "DumpParameters")]  # fmt: skip
    result = train(run, extra_hooks=dumps)

    # Workers ran on two different nodes.
    nodes = {(dump / f"node_rank{r}.txt").read_text() for r in (0, 1)}
    assert len(nodes) == 2, nodes
    # Gradients are all-reduced: after every step the parameters are equal across ranks, and they moved.
    for iteration in (1, 4):
        rank0 = torch.load(dump / f"params_rank0_iter{iteration}.pt")
        rank1 = torch.load(dump / f"params_rank1_iter{iteration}.pt")
        assert rank0.keys() == rank1.keys()
        for name in rank0:
            torch.testing.assert_close(rank0[name], rank1[name], rtol=0, atol=1e-6, msg=name)
    first = torch.load(dump / "params_rank0_iter1.pt")
    last = torch.load(dump / "params_rank0_iter4.pt")
    assert any(not torch.equal(first[k], last[k]) for k in first)

    assert result.iteration == 4
    assert result.checkpoint_path and Path(result.checkpoint_path).is_file()
    assert "segm_AP" in result.metrics and "bbox_AP" in result.metrics

    client = MlflowClient(server.tracking_uri)
    mlflow_run = client.get_run(result.mlflow_run_id)
    assert mlflow_run.data.params["model.backbone.depth"] == "18"
    assert len(client.get_metric_history(result.mlflow_run_id, "train/loss")) == 4
    for name in ("train/loss_mask", "train/lr", "train/images_per_s", "segm/AP", "bbox/AP"):
        assert client.get_metric_history(result.mlflow_run_id, name), name
    assert client.get_metric_history(result.mlflow_run_id, "segm/AP")[-1].value == pytest.approx(result.metrics["segm_AP"])
    artifacts = {a.path for a in client.list_artifacts(result.mlflow_run_id)}
    assert "plots" in artifacts
    version = client.get_model_version_by_alias("test-model", "best")
    assert version.run_id == result.mlflow_run_id


def test_killed_worker_resumes_from_latest_checkpoint_in_the_same_mlflow_run(shards, tmp_path, server):
    from mlflow.tracking import MlflowClient

    ray.init(address="local", num_cpus=3, include_dashboard=False)
    try:
        run = _run(shards, tmp_path, max_iters=6, eval_every=-1, name="fault", tracking_uri=server.tracking_uri,
                   experiment="tests-fault")
        marker = Path(run.storage_path) / run.name / ".injected_failure"
        result = train(run, extra_hooks=[FailOnce(3, str(marker))])
    finally:
        ray.shutdown()

    assert (Path(run.storage_path) / run.name / ".injected_failure").exists(), "the fault was injected"
    assert result.iteration == 6
    client = MlflowClient(server.tracking_uri)
    experiment = client.get_experiment_by_name("tests-fault")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1, "a resumed run continues the same MLflow run"
    resumed_at = client.get_metric_history(runs[0].info.run_id, "train/resumed_at_iteration")
    assert [m.value for m in resumed_at] == [2.0], "resumed from the checkpoint at iteration 2, not from 0"
    steps = sorted(m.step for m in client.get_metric_history(runs[0].info.run_id, "train/loss"))
    assert steps[0] == 1 and steps[-1] == 6


def test_relaunch_with_same_name_resumes(shards, tmp_path):
    ray.init(address="local", num_cpus=3, include_dashboard=False)
    try:
        first = train(_run(shards, tmp_path, max_iters=2, eval_every=-1, name="again"))
        second = train(_run(shards, tmp_path, max_iters=4, eval_every=-1, name="again"))
    finally:
        ray.shutdown()
    assert first.iteration == 2
    assert second.iteration == 4


def test_a_checkpoint_of_the_untyped_loop_state_still_resumes(tmp_path):
    """Checkpoints written before the loop state was a dataclass (its ``best_segm_ap`` key held the selection
    metric) load into RunState: weights, optimizer, counters, the MLflow run and the best AP."""
    from ray.train import Checkpoint

    from mrcnn.checkpoint import save_checkpoint
    from mrcnn.config import get_preset
    from mrcnn.data.categories import Category, CategoryMap
    from mrcnn.modeling import build_model
    from mrcnn.solver import build_optimizer
    from pipelines.train.hooks import RunState
    from pipelines.train.worker import _resume

    torch.manual_seed(0)
    cfg = get_preset("r18_fpn_small").replace(**LIGHT)
    model = build_model(cfg)
    optimizer = build_optimizer(model, cfg.solver)
    optimizer.param_groups[0]["lr"] = 0.0123
    old_loop_state = {"iteration": 6, "elapsed_s": 12.5, "images_seen": 24, "best_segm_ap": 17.25, "mlflow_run_id": "0123abcd",
                      "attempt": 1, "reports": 3, "epoch": 2,
                      "history": [{"iteration": 6, "lr": 0.01, "images_per_s": 3.0, "loss": 1.5, "loss_mask": 0.5}]}  # fmt: skip
    categories = CategoryMap(categories=tuple(Category(id=i, name=f"c{i}") for i in range(1, cfg.model.num_classes + 1)))
    save_checkpoint(tmp_path / "model.ckpt", model=model, config=cfg, categories=categories,
                    metadata={"iteration": 6, "segm_AP": 17.25, "keypoints_AP": None, "run": "x/old"},
                    training_state={"optimizer": optimizer.state_dict(), "scaler": None,
                                    "loop_state": json.dumps(old_loop_state)})  # fmt: skip

    fresh = build_model(cfg)
    fresh_optimizer = build_optimizer(fresh, cfg.solver)
    state = RunState(best_metric_name="segm_AP")
    _resume(Checkpoint.from_directory(str(tmp_path)), fresh, fresh_optimizer, None, state)
    assert (state.iteration, state.epoch, state.images_seen, state.elapsed_s) == (6, 2, 24, 12.5)
    assert (state.best_metric, state.best_metric_name) == (17.25, "segm_AP")
    assert (state.mlflow_run_id, state.reports, state.attempt) == ("0123abcd", 3, 2)  # one more attempt
    assert state.history == old_loop_state["history"]
    assert fresh_optimizer.param_groups[0]["lr"] == 0.0123
    for key, value in model.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[key], value, rtol=0, atol=0, msg=key)


def test_hook_specs_are_checked_before_launch(tmp_path, monkeypatch):
    from pipelines.train.driver import HOOKS_ENV, _env_hooks
    from pipelines.train.hooks import build_hooks, check_hook_specs

    dump = {"factory": "tests.pipelines.train_hooks:DumpParameters", "kwargs": {"out_dir": str(tmp_path)}}
    hooks = build_hooks(check_hook_specs([dump, FailOnce(3, str(tmp_path / "m"))]))
    assert [type(h).__name__ for h in hooks] == ["DumpParameters", "FailOnce"] and hooks[0].out_dir == tmp_path
    for bad in ("no_colon", {"factory": "m:f", "args": []}, 3):
        with pytest.raises(ValueError, match="train hook"):
            check_hook_specs([bad])
    with pytest.raises(TypeError, match="expected a HookBase"):
        build_hooks(check_hook_specs(["collections:OrderedDict"]))
    monkeypatch.setenv(HOOKS_ENV, '["tests.pipelines.train_hooks:DumpSeenImages"]')
    assert _env_hooks() == ["tests.pipelines.train_hooks:DumpSeenImages"]
    monkeypatch.setenv(HOOKS_ENV, "{not json")
    with pytest.raises(ValueError, match="MRCNN_TRAIN_HOOKS: not JSON"):
        _env_hooks()
