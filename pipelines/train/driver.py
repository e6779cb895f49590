"""``mrcnn train``: launch (or resume) distributed Mask R-CNN training with Ray Train (TorchTrainer, DDP).

Each worker (:mod:`pipelines.train.worker`) reads its own disjoint part of the training shards per epoch
(Ray Data's ``get_dataset_shard``), decodes images and RLE masks in the collate, and runs
:class:`mrcnn.engine.Trainer` with the Ray and MLflow hooks of :mod:`pipelines.train.hooks`.

Checkpoints are this project's checkpoint files reported through ``ray.train.report``. Relaunching with
the same ``storage_path`` and ``name`` resumes from the latest one, and ``FailureConfig`` restarts
failed workers from it. Rank 0 evaluates on the val shards at an interval, logs to MLflow (the same
run after a resume), and registers the best checkpoint by its selection metric (segm AP; a keypoint
model's keypoint AP; bbox AP without a mask branch).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.train.config import CHECKPOINT_FILE, TrainRunConfig

if TYPE_CHECKING:
    from pipelines.train.hooks import HookSpec

# Extra hooks for every worker as a JSON list of hook specs (see ``train``), e.g. for a submitted job:
# ``mrcnn submit train ... --env 'MRCNN_TRAIN_HOOKS=["mypackage.hooks:Profiler"]'``.
HOOKS_ENV = "MRCNN_TRAIN_HOOKS"


def run_key(run: TrainRunConfig) -> str:
    """The identity of a training run: relaunching with the same key resumes it (and its MLflow run)."""
    return f"{Path(run.storage_path).resolve() if '://' not in run.storage_path else run.storage_path}/{run.name}"


def auto_cpus_per_worker(workers: int, *, use_gpu: bool) -> float:
    """CPUs per training worker when not set: the cluster's CPUs less one for Ray Data's reading tasks,
    shared by the workers, at most 1 on CPU-only runs (more threads per worker do not pay off with gloo
    here) and at most 8 per GPU worker. Without a spare CPU, reading the shards would wait forever."""
    import ray

    total = float(ray.cluster_resources().get("CPU", 1.0))
    share = (total - 1.0) / workers
    if share < 0.25:
        raise ValueError(
            f"train: {workers} workers on {total:g} CPUs leave no CPU for reading the data; "
            "use fewer workers or set cpus_per_worker explicitly"
        )
    return min(share, 8.0 if use_gpu else 1.0)


def _warn_about_setup(run: TrainRunConfig, cfg) -> None:
    """One line on stderr for set-ups that run but are probably not what was meant."""
    import sys

    import ray

    if cfg.model.backbone.norm == "frozen_bn" and not run.backbone_weights and not run.init_from:
        print(f"[train] warning: preset {run.preset} freezes BatchNorm and the first ResNet stages (a pretrained "
              "layout) but no backbone_weights were given: they stay at their random init", file=sys.stderr)  # fmt: skip
    if run.eval_every >= 0 and not _has_val_split(run.data):
        print(f"[train] note: {run.data} has no val shards: nothing is evaluated"
              + (f" and no model is registered as {run.model_name!r}" if run.model_name else ""), file=sys.stderr)  # fmt: skip
    if "://" not in run.storage_path:
        nodes = {n["NodeManagerAddress"] for n in ray.nodes() if n.get("Alive")}
        if len(nodes) > 1:
            print(f"[train] warning: storage_path {run.storage_path} is a local path on a cluster of {len(nodes)} "
                  "machines: checkpoints need shared storage (s3://, gs://, or NFS mounted at the same path on "
                  "every node)", file=sys.stderr)  # fmt: skip


def _has_val_split(data: str) -> bool:
    from pipelines.common.storage import join_path
    from pipelines.shards import list_shards

    try:
        return bool(list_shards(join_path(data, "val")))
    except FileNotFoundError:
        return False


def model_config_for(run: TrainRunConfig, categories):
    """The run's model config fitted to the dataset: its number of classes (and keypoints).

    Raises:
        ValueError: a keypoint model on a dataset whose categories name no keypoints.
    """
    cfg = run.model_config()
    if cfg.model.num_classes != categories.num_classes:
        cfg = cfg.replace(**{"model.num_classes": categories.num_classes})
    if cfg.model.has_keypoints:
        if not categories.num_keypoints:
            raise ValueError(f"train: model.task is keypoints but the categories of {run.data} name no keypoints "
                             "(preprocess a COCO person-keypoint json, or `mrcnn synth --task keypoints`)")  # fmt: skip
        cfg = cfg.replace(**{"model.keypoint_head.num_keypoints": categories.num_keypoints})
    return cfg


def check_init_from(run: TrainRunConfig):
    """Resolve and read ``run.init_from`` and initialise a freshly built model of the run from it (a dry run of
    what every worker does), before anything starts.

    Returns:
        The :class:`pipelines.train.model.InitSource` for the workers.

    Raises:
        ValueError: one line naming the file or URI and the reason: an unknown model, alias, version or run,
            no such file, not a Mask R-CNN state dict or checkpoint, another architecture, nothing that fits.
    """
    from mrcnn.checkpoint import CheckpointError
    from mrcnn.modeling import build_model
    from pipelines.shards import read_categories
    from pipelines.train.model import init_model_from, read_init_source

    categories = read_categories(run.data)
    cfg = model_config_for(run, categories)
    source = read_init_source(run.init_from, tracking_uri=run.tracking_uri or None)
    try:
        init_model_from(build_model(cfg), source, categories)
    except CheckpointError as exc:
        preset = source_preset(source.description)
        if preset and preset != run.preset and "another architecture" in str(exc):
            raise CheckpointError(f"{exc}. The source is preset {preset}, this run's is {run.preset or 'the default'}: "
                                  f"train with --preset {preset} (run config `preset: {preset}`)") from None  # fmt: skip
        raise
    return source


def source_preset(description: str) -> str | None:
    """The preset a source was built as, from its description (:func:`mrcnn.pretrained.load_init_source`'s:
    ``(mrcnn checkpoint, preset NAME, ...)`` or ``(torchvision state dict, NAME layout, ...)``); None if it
    names none."""
    import re

    match = re.search(r"\(mrcnn checkpoint, preset ([\w.-]+)|\(torchvision state dict, ([\w.-]+) layout", description)
    return (match.group(1) or match.group(2)) if match else None


@dataclass
class TrainResult:
    iteration: int
    metrics: dict[str, Any]
    checkpoint_path: str | None
    mlflow_run_id: str | None
    storage_path: str


def train(run: TrainRunConfig, *, ray_address: str | None = None, extra_hooks: Sequence[HookSpec] = ()) -> TrainResult:
    """Launch (or resume) a training run on the connected Ray cluster (else ``ray_address`` /
    ``RAY_ADDRESS``, else a local Ray started and stopped here).

    Args:
        extra_hooks: more hooks for every worker's trainer, run after the metric logging and before the
            checkpoint report: ``"module:factory"``, ``{"factory": "module:factory", "kwargs": {...}}``
            (JSON-able), or a picklable callable; the factory is called on each worker and returns a
            :class:`mrcnn.engine.HookBase`. The JSON list in ``$MRCNN_TRAIN_HOOKS`` is added to them.

    Raises:
        ValueError: an invalid run config or hook spec, shards that do not fit the model, or an ``init_from``
            model that cannot be read or does not fit (one line naming it, before Ray starts).
    """
    from pipelines.common.session import ray_session, session_is_local
    from pipelines.train.hooks import check_hook_specs

    run = run.validate()
    hooks = check_hook_specs([*extra_hooks, *_env_hooks()])
    if not run.storage_path:
        run = dataclasses.replace(run, storage_path=str(Path("ray_results").resolve()))
    # Local paths are the driver's: the workers run in another folder, where a relative path names nothing
    # (`mrcnn train --data houses-shards` read its val shards nowhere, so nothing was evaluated or registered).
    run = dataclasses.replace(run, **{name: str(Path(getattr(run, name)).resolve())
                                      for name in ("data", "storage_path", "backbone_weights")
                                      if getattr(run, name) and "://" not in getattr(run, name)})  # fmt: skip
    init_source = check_init_from(run) if run.init_from else None  # a bad model fails here, before Ray starts
    local = session_is_local(ray_address)  # a Ray started here has what it has: no autoscaler will add more
    with ray_session(ray_address):
        return _train(run, hooks, init_source, local=local)


def _env_hooks() -> list:
    text = os.environ.get(HOOKS_ENV, "").strip()
    if not text:
        return []
    try:
        specs = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"${HOOKS_ENV}: not JSON ({exc}); expected a list of hook specs") from None
    if not isinstance(specs, list):
        raise ValueError(f"${HOOKS_ENV}: expected a JSON list of hook specs, got {type(specs).__name__}")
    return specs


def check_resources(run: TrainRunConfig, nodes: Sequence[dict[str, float]], *, local: bool) -> str | None:
    """Whether Ray can place the run's workers, before Ray Train waits for them (it retries forever).

    Args:
        run: with ``cpus_per_worker`` resolved (> 0).
        nodes: each alive node's total resources (``{"CPU": 16.0, "GPU": 8.0, ...}``).
        local: a Ray started by this process, which no autoscaler will grow.

    Returns:
        None when every worker fits on the nodes there are now; else the shortfall in one line, to print
        (a cluster, which an autoscaler may grow).

    Raises:
        ValueError: the shortfall, on a local Ray (the run would wait forever).
    """
    need = {"CPU": run.cpus_per_worker, **({"GPU": run.gpus_per_worker} if run.use_gpu else {})}
    slots = 0
    for node in nodes:  # workers that fit on each node, packed
        slots += int(min(node.get(kind, 0.0) / amount for kind, amount in need.items() if amount > 0) + 1e-9)
    if slots >= run.workers:
        return None
    total = {kind: sum(node.get(kind, 0.0) for node in nodes) for kind in need}
    wants = " + ".join(f"{amount:g} {kind}" for kind, amount in need.items())
    has = ", ".join(f"{total[kind]:g} {kind}" for kind in need)
    problem = (f"the run needs {run.workers} workers of {wants} each, and Ray's {len(nodes)} node(s) have {has} "
               f"(room for {slots})")  # fmt: skip
    if local:
        fixes = ["--no-gpu (with --amp none)" if run.use_gpu and total.get("GPU", 0) < run.gpus_per_worker else "",
                 "a smaller --cpus-per-worker" if run.cpus_per_worker > 1 else "",
                 "fewer --workers" if run.workers > 1 else ""]  # fmt: skip
        raise ValueError(f"train: {problem} on this machine; use {' or '.join(f for f in fixes if f)}, "
                         f"or --address of a cluster that has them")  # fmt: skip
    return f"[train] {problem} now: Ray Train waits until an autoscaler adds them (Ctrl-C stops)"


def _train(run: TrainRunConfig, hooks: list, init_source, *, local: bool = False) -> TrainResult:
    import ray.data
    import ray.train
    from ray.train.torch import TorchTrainer

    from pipelines.common.storage import join_path
    from pipelines.shards import list_shards, read_categories
    from pipelines.train.worker import train_loop_per_worker

    categories = read_categories(run.data)
    cfg = model_config_for(run, categories)
    if run.cpus_per_worker <= 0:
        run = dataclasses.replace(run, cpus_per_worker=auto_cpus_per_worker(run.workers, use_gpu=run.use_gpu))
    shortfall = check_resources(run, [node["Resources"] for node in ray.nodes() if node.get("Alive")], local=local)
    if shortfall:
        print(shortfall, flush=True)
    train_ds = ray.data.read_parquet(list_shards(join_path(run.data, "train")))
    data_stats = {"train_images": train_ds.count(), "num_classes": categories.num_classes}
    if run.epochs:
        total_batch = run.batch_size * run.workers
        run = dataclasses.replace(run, max_iters=max(1, math.ceil(run.epochs * data_stats["train_images"] / total_batch)))
        print(f"[train] {run.epochs:g} epochs of {data_stats['train_images']} images at {total_batch} per step: "
              f"{run.max_iters} iterations", flush=True)  # fmt: skip
    _warn_about_setup(run, cfg)

    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"run": dataclasses.asdict(run), "model": cfg.to_dict(), "categories": categories.to_list(),
                           "data_stats": data_stats, "extra_hooks": hooks,
                           # The weights go through Ray's object store: a driver's downloaded file is no worker's.
                           "init_source": ray.put(init_source) if init_source is not None else None},
        scaling_config=ray.train.ScalingConfig(
            num_workers=run.workers,
            use_gpu=run.use_gpu,
            resources_per_worker={"CPU": run.cpus_per_worker, **({"GPU": run.gpus_per_worker} if run.use_gpu else {})},
            placement_strategy=run.placement_strategy,
            accelerator_type=run.accelerator_type or None,
        ),
        run_config=ray.train.RunConfig(
            storage_path=run.storage_path,
            name=run.name,
            failure_config=ray.train.FailureConfig(max_failures=run.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        ),
        datasets={"train": train_ds},
    )
    result = trainer.fit()
    checkpoint_path = None
    mlflow_run_id = None
    if result.checkpoint is not None:
        import pyarrow.fs as pafs

        from mrcnn.checkpoint import load_checkpoint
        from pipelines.common.storage import display_path

        checkpoint = result.checkpoint
        checkpoint_path = display_path(run.storage_path, checkpoint.filesystem, f"{checkpoint.path}/{CHECKPOINT_FILE}")
        if isinstance(checkpoint.filesystem, pafs.LocalFileSystem):
            training_state = load_checkpoint(checkpoint_path).training_state or {}
        else:  # s3://, gs://: the driver downloads it
            with checkpoint.as_directory() as local_dir:
                training_state = load_checkpoint(Path(local_dir) / CHECKPOINT_FILE).training_state or {}
        mlflow_run_id = json.loads(training_state.get("loop_state", "{}")).get("mlflow_run_id")
    return TrainResult(
        iteration=int(result.metrics.get("iteration", 0)) if result.metrics else 0,
        metrics=dict(result.metrics or {}),
        checkpoint_path=checkpoint_path,
        mlflow_run_id=mlflow_run_id,
        storage_path=run.storage_path,
    )
