"""``mrcnn train``: distributed Mask R-CNN training with Ray Train (TorchTrainer, DDP).

Each worker reads its own disjoint part of the training shards per epoch (Ray Data's
``get_dataset_shard``), decodes images and RLE masks in the collate, and runs ``mrcnn.engine.train_step``.
CPU workers use DDP over gloo (BatchNorm per replica, buffers broadcast from rank 0); GPU workers use
NCCL, SyncBN and optional autocast (bf16, or fp16 with a GradScaler).

Checkpoints are this project's checkpoint files reported through ``ray.train.report``. Relaunching with
the same ``storage_path`` and ``name`` resumes from the latest one, and ``FailureConfig`` restarts
failed workers from it. Rank 0 evaluates on the val shards at an interval, logs to MLflow (the same
run after a resume), and registers the best checkpoint by segm AP (a keypoint model's by keypoint AP).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHECKPOINT_FILE = "model.ckpt"


@dataclass(frozen=True)
class TrainRunConfig:
    """Run-level settings of ``mrcnn train`` (the YAML run config; model settings are in ``model``).

    model: a preset name plus dotted-key overrides of its config, e.g.
        ``{"preset": "r18_fpn_small", "overrides": {"model.box_head.pooler": "roi_pool"}}``.
    batch_size: images per worker per step; the learning rate follows the linear scaling rule for
        ``batch_size * workers`` against the preset's reference batch.
    max_iters / epochs / minutes: the budget; the schedule's decay points are fractions of it. ``epochs``
        (passes over the training shards) becomes ``max_iters = ceil(epochs * train images / total batch)``,
        so a total batch other than the preset's keeps the same number of images seen (the linear scaling
        rule: the learning rate follows the batch, the iterations its inverse).
    accelerator_type: GPU workers only on nodes with this accelerator (Ray's ``accelerator_type:H200``
        resource; an autoscaling cluster starts such nodes), e.g. ``H200`` or ``A10G``.
    backbone_weights: an ImageNet ResNet state dict (torchvision's ``resnet50-*.pth``; path or s3:// URI)
        loaded into ``backbone.body`` before the first step, as the paper's training starts.
    model_name: the registered model that the best checkpoint (by segm AP; a keypoint model's by keypoint AP)
        becomes a version of; empty: register nothing (the checkpoints stay in ``storage_path``).
    parent_run_id: nest this run's MLflow run under that run (``mrcnn ablate``'s variants are child runs).
    debug_dump_dir: a test hook: each rank records which image ids it trained on, per epoch
        (``images_rank{R}.jsonl``), its node, and (``debug_dump_params``) its parameters after every step.
    """

    data: str = ""
    preset: str = "r18_fpn_small"
    overrides: dict[str, Any] = field(default_factory=dict)
    workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 0.0
    gpus_per_worker: float = 1.0
    accelerator_type: str = ""
    amp: str = "none"
    batch_size: int = 4
    max_iters: int = 0
    epochs: float = 0.0
    minutes: float = 0.0
    eval_every: int = 0
    checkpoint_every: int = 50
    eval_max_images: int = 0
    storage_path: str = ""
    name: str = "mrcnn-train"
    max_failures: int = 2
    tracking_uri: str = ""
    experiment: str = "mrcnn"
    model_name: str = "mrcnn"
    parent_run_id: str = ""
    seed: int = 0
    num_val_overlays: int = 4
    placement_strategy: str = "PACK"
    fail_at_iteration: int = 0
    debug_dump_dir: str = ""
    debug_dump_params: bool = True
    backbone_weights: str = ""

    def validate(self) -> TrainRunConfig:
        if not self.data:
            raise ValueError("train: 'data' (the preprocessed shards folder) is required")
        if self.workers < 1 or self.batch_size < 1:
            raise ValueError(f"train: workers and batch_size must be >= 1, got {self.workers} and {self.batch_size}")
        if self.amp not in ("none", "bf16", "fp16"):
            raise ValueError(f"train: amp must be none, bf16 or fp16, got {self.amp!r}")
        if self.amp != "none" and not self.use_gpu:
            raise ValueError("train: amp needs use_gpu (autocast on CPU workers is not supported here)")
        if self.epochs < 0 or self.max_iters < 0:
            raise ValueError(f"train: epochs and max_iters must be >= 0, got {self.epochs} and {self.max_iters}")
        if self.epochs and self.max_iters:
            raise ValueError(f"train: give max_iters or epochs, not both (got {self.max_iters} and {self.epochs})")
        return self

    def model_config(self):
        from mrcnn.config import get_preset

        cfg = get_preset(self.preset)
        return cfg.replace(**self.overrides) if self.overrides else cfg

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, **overrides: Any) -> TrainRunConfig:
        import yaml

        data = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping of run settings")
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"{path}: unknown key(s) {sorted(unknown)}")
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**data)


# ------------------------------------------------------------------ worker side
def _max_across_ranks(value: float) -> float:
    """The largest value over all ranks: every rank then takes the same time-based decisions
    (learning rate, when to stop), which DDP needs (same steps, same updates on every rank)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return value
    tensor = torch.tensor([value], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return float(tensor.item())


def _batches_forever(shard, batch_size: int, seed: int, num_keypoints: int = 0):
    """Endless (epoch, images, targets, image ids) from this worker's dataset shard, reshuffled every epoch.

    Ray Train splits the dataset with ``streaming_split(equal=True)``: per epoch every row goes to one
    worker, and every worker gets the same number of rows (up to ``workers - 1`` rows of an epoch are left
    out to make them equal), so every rank takes the same number of steps. The last batch of an epoch
    may be smaller than ``batch_size``: no image is dropped to fill batches.
    """
    from pipelines.shards import collate_shard_batch

    epoch = 0
    while True:
        count = 0
        for batch in shard.iter_batches(
            batch_size=batch_size, batch_format="numpy", drop_last=False, local_shuffle_buffer_size=4 * batch_size,
            local_shuffle_seed=seed + epoch,
        ):
            images, targets = collate_shard_batch(batch, num_keypoints=num_keypoints)
            count += 1
            yield epoch, images, targets, [int(i) for i in batch["image_id"]]
        if count == 0:
            raise ValueError("this worker's part of the training shards is empty (fewer training images than workers?)")
        epoch += 1


def _load_val(data_dir: str, max_images: int, num_keypoints: int = 0):
    """Val images + targets and the COCO ground truth built from the val shards (rank 0 only)."""
    import pyarrow.parquet as pq

    from pipelines.shards import (
        collate_shard_batch,
        join_path,
        list_shards,
        resolve_path,
        shards_to_coco_gt,
    )

    split_dir = join_path(data_dir, "val")
    try:
        files = list_shards(split_dir)
    except FileNotFoundError:
        return None
    filesystem, _ = resolve_path(split_dir)
    table = pq.read_table([resolve_path(f)[1] for f in files], filesystem=filesystem)
    if max_images:
        table = table.slice(0, max_images)
    batch = {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}
    images, targets = collate_shard_batch(batch, include_crowd=False, num_keypoints=num_keypoints)
    for t, image_id in zip(targets, batch["image_id"]):
        t["image_id"] = int(image_id)
    gt = shards_to_coco_gt(split_dir)
    if max_images:
        keep = {int(i) for i in batch["image_id"]}
        gt["images"] = [im for im in gt["images"] if im["id"] in keep]
        gt["annotations"] = [a for a in gt["annotations"] if a["image_id"] in keep]
    return images, targets, gt


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """The function every Ray Train worker runs."""
    import ray.train
    import ray.train.torch
    import torch

    from mrcnn import runtime
    from mrcnn.checkpoint import load_checkpoint, save_checkpoint
    from mrcnn.config import Config
    from mrcnn.data.categories import CategoryMap
    from mrcnn.engine import NonFiniteLossError, evaluate_model, train_step
    from mrcnn.modeling import build_model
    from mrcnn.solver import build_optimizer, lr_factor, set_lr

    run = TrainRunConfig(**loop_config["run"])
    cfg = Config.from_dict(loop_config["model"])
    categories = CategoryMap.from_list(loop_config["categories"])
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(run.seed + rank)

    model = build_model(cfg)
    if run.backbone_weights and ray.train.get_checkpoint() is None:  # a resume loads every weight
        _load_backbone_weights(model, run.backbone_weights)
    if run.use_gpu and world_size > 1:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    elif not run.use_gpu:
        # NHWC convolutions (1.13x the training step on the 2-core CPU with glibc's default malloc,
        # benchmarks/bench_train_step.py).
        model = model.to(memory_format=torch.channels_last)
        model.channels_last = True
        # glibc malloc keeps freed feature maps for reuse instead of page-faulting them in again on every
        # step (mrcnn.runtime; bench_train_step.py --keep-freed-memory).
        runtime.keep_freed_memory()
    optimizer = build_optimizer(model, cfg.solver, total_batch_size=run.batch_size * world_size)
    scaler = torch.amp.GradScaler("cuda") if run.amp == "fp16" else None
    autocast_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[run.amp]

    state: dict[str, Any] = {"iteration": 0, "elapsed_s": 0.0, "images_seen": 0, "history": [], "best_segm_ap": -1.0,
                             "mlflow_run_id": None, "attempt": 0, "reports": 0}
    resumed = ray.train.get_checkpoint()
    if resumed is not None:
        with resumed.as_directory() as ckpt_dir:
            ckpt = load_checkpoint(Path(ckpt_dir) / CHECKPOINT_FILE)
        model.load_state_dict(ckpt.model_state)
        training_state = ckpt.training_state or {}
        optimizer.load_state_dict(training_state["optimizer"])
        if scaler is not None and training_state.get("scaler"):
            scaler.load_state_dict(training_state["scaler"])
        state.update(json.loads(training_state["loop_state"]))
        state["attempt"] += 1
    model = ray.train.torch.prepare_model(model)

    tracker = None
    if rank == 0 and run.tracking_uri:
        from pipelines.tracking import Tracker

        tracker = Tracker.start(run.tracking_uri, run.experiment, run.name, run_id=state["mlflow_run_id"], run_key=run_key(run),
                                parent_run_id=run.parent_run_id or None)
        state["mlflow_run_id"] = tracker.run_id
        if resumed is None:
            from mrcnn.config import flatten

            tracker.log_config(cfg)
            tracker.log_params({f"run.{k}": v for k, v in flatten(dataclasses.asdict(run)).items()})
            tracker.log_params({f"data.{k}": v for k, v in loop_config.get("data_stats", {}).items()})
            tracker.set_git_commit()
        else:
            tracker.log_metrics({"train/resumed_at_iteration": state["iteration"]}, step=state["iteration"])

    num_keypoints = cfg.model.keypoint_head.num_keypoints if cfg.model.has_keypoints else 0  # 0: targets without
    val = _load_val(run.data, run.eval_max_images, num_keypoints) if rank == 0 and run.eval_every else None
    budget_s = run.minutes * 60 if run.minutes else None
    max_iters = run.max_iters or cfg.solver.max_iters
    batches = _batches_forever(ray.train.get_dataset_shard("train"), run.batch_size, run.seed + 1000 * state["attempt"],
                               num_keypoints)  # fmt: skip

    def progress() -> float:
        p = state["iteration"] / max_iters
        return max(p, state["elapsed_s"] / budget_s) if budget_s else p

    def evaluate() -> dict[str, Any]:
        module = model.module if hasattr(model, "module") else model
        images, targets, gt = val
        loader = [(images[i : i + 8], targets[i : i + 8]) for i in range(0, len(images), 8)]
        # bbox; segm with the mask branch (off: Faster R-CNN); keypoints (OKS) with the keypoint branch
        metrics = evaluate_model(module, loader, gt, categories, device=device, iou_types=cfg.model.iou_types)
        module.train()
        return metrics

    def report(*, final: bool) -> None:
        """Checkpoint (rank 0 writes it) and report; every rank must call this the same number of times."""
        metrics: dict[str, Any] = {"iteration": state["iteration"], "epoch": state.get("epoch", 0),
                                   "images_seen": state["images_seen"], "final": final,
                                   "train_seconds": state["elapsed_s"],
                                   "train_images_per_s": state["images_seen"] / max(state["elapsed_s"], 1e-6)}
        if state["history"]:
            metrics.update({k: v for k, v in state["history"][-1].items() if k.startswith("loss") or k == "lr"})
        eval_now = val is not None and (final or state["iteration"] % run.eval_every == 0)
        segm_ap = keypoints_ap = None
        if eval_now:
            eval_metrics = evaluate()
            segm_ap = eval_metrics["segm"]["AP"] if "segm" in eval_metrics else None
            keypoints_ap = eval_metrics["keypoints"]["AP"] if "keypoints" in eval_metrics else None
            for iou_type, stats in eval_metrics.items():
                metrics.update({f"{iou_type}_{k}": v for k, v in stats.items() if k != "per_category"})
            if tracker is not None:
                tracker.log_eval(eval_metrics, step=state["iteration"])
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if rank == 0:
                path = save_checkpoint(
                    Path(tmp) / CHECKPOINT_FILE,
                    model=model,
                    config=cfg,
                    categories=categories,
                    metadata={"iteration": state["iteration"], "segm_AP": segm_ap, "keypoints_AP": keypoints_ap, "run": run_key(run)},
                    training_state={
                        "optimizer": optimizer.state_dict(),
                        "scaler": scaler.state_dict() if scaler is not None else None,
                        "loop_state": json.dumps({k: v for k, v in state.items() if k != "attempt"} | {"attempt": state["attempt"]}),
                    },
                )
                # "best" follows segm AP, or a keypoint model's keypoint AP (state["best_segm_ap"] holds that one)
                best_ap, ap_tag = (keypoints_ap, "keypoints_AP") if cfg.model.has_keypoints else (segm_ap, "segm_AP")
                if tracker is not None and run.model_name and best_ap is not None and best_ap > state["best_segm_ap"]:
                    state["best_segm_ap"] = best_ap
                    from pipelines.tracking import register_checkpoint

                    register_checkpoint(tracker, path, model_name=run.model_name, segm_ap=best_ap, tracking_uri=run.tracking_uri,
                                        ap_tag=ap_tag)  # fmt: skip
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            # A unique name per report: a final report can come at the same iteration as a periodic one.
            state["reports"] += 1
            name = f"checkpoint_{state['iteration']:07d}_{state['reports']:04d}"
            ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=name)

    model.train()
    start = time.perf_counter() - state["elapsed_s"]
    state["elapsed_s"] = _max_across_ranks(time.perf_counter() - start)
    while progress() < 1.0:
        epoch, images, targets, image_ids = next(batches)
        state["epoch"] = epoch
        images = [img.to(device) for img in images]
        targets = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in t.items()} for t in targets]
        lr = set_lr(optimizer, lr_factor(cfg.solver, iteration=state["iteration"], progress=progress()))
        t0 = time.perf_counter()
        try:
            losses = train_step(model, images, targets, optimizer=optimizer, step=state["iteration"], scaler=scaler,
                                autocast_dtype=autocast_dtype, clip_grad_norm=cfg.solver.clip_grad_norm)
        except NonFiniteLossError as exc:
            if tracker is not None:
                tracker.end("FAILED")
            raise NonFiniteLossError(f"rank {rank}: {exc}") from None
        step_s = time.perf_counter() - t0
        state["iteration"] += 1
        state["images_seen"] += len(images) * world_size
        record = {"iteration": state["iteration"], "lr": lr, "images_per_s": len(images) * world_size / step_s, **losses}
        state["history"].append(record)
        if tracker is not None:
            tracker.log_metrics({f"train/{k}": v for k, v in record.items() if k != "iteration"}, step=state["iteration"])
        if rank == 0 and (state["iteration"] == 1 or state["iteration"] % 25 == 0):
            print(f"[train] iteration {state['iteration']}  epoch {epoch}  loss {losses['loss']:.3f}  lr {lr:.2e}  "
                  f"{state['images_seen'] / max(time.perf_counter() - start, 1e-6):.1f} img/s  "
                  f"{time.perf_counter() - start:.0f} s", flush=True)
        if run.debug_dump_dir:
            _dump_seen_images(Path(run.debug_dump_dir), rank, epoch, state["iteration"], image_ids)
            if run.debug_dump_params:
                _dump_parameters(model, Path(run.debug_dump_dir), rank, state["iteration"])
        if run.fail_at_iteration and state["iteration"] == run.fail_at_iteration and rank == world_size - 1:
            _fail_once(Path(run.storage_path) / run.name / ".injected_failure")
        state["elapsed_s"] = _max_across_ranks(time.perf_counter() - start)
        if progress() < 1.0 and state["iteration"] % run.checkpoint_every == 0:
            report(final=False)

    report(final=True)
    if tracker is not None:
        tracker.log_figure_loss_curves(state["history"], "plots/loss_curves.png")
        if val is not None and run.num_val_overlays:
            _log_overlays(tracker, model, val, categories, device, run.num_val_overlays)
        tracker.end("FINISHED")


def _dump_seen_images(out_dir: Path, rank: int, epoch: int, iteration: int, image_ids: list[int]) -> None:
    """Append this step's image ids to ``images_rank{rank}.jsonl`` (tests check: each image once per epoch)."""
    import ray

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"node_rank{rank}.txt").write_text(ray.get_runtime_context().get_node_id())
    with open(out_dir / f"images_rank{rank}.jsonl", "a") as f:
        f.write(json.dumps({"epoch": epoch, "iteration": iteration, "image_ids": image_ids}) + "\n")


def _load_backbone_weights(model, path: str) -> None:
    """Load an ImageNet ResNet state dict (torchvision's layout; ``fc.*`` ignored) into ``model.backbone.body``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a state dict of this ResNet (names the missing or extra keys).
    """
    import io
    import pickle

    import torch

    from pipelines.shards import read_uri

    try:
        data = read_uri(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"backbone_weights {path}: no such file") from None
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        raise ValueError(f"backbone_weights {path}: not a torch state dict ({type(exc).__name__}: {exc})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"backbone_weights {path}: expected a state dict, got {type(state).__name__}")  # noqa: TRY004 (a bad file, not a bad argument)
    state = {k.removeprefix("module."): v for k, v in state.items() if not k.removeprefix("module.").startswith("fc.")}
    body = model.backbone.body
    missing, unexpected = body.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    unexpected = [k for k in unexpected if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(f"backbone_weights {path}: not a state dict of this ResNet ({len(missing)} missing keys, e.g. "
                         f"{missing[:3]}; {len(unexpected)} unexpected, e.g. {unexpected[:3]})")  # fmt: skip


def _dump_parameters(model, out_dir: Path, rank: int, iteration: int) -> None:
    """Write this rank's parameters after a step (tests compare ranks: DDP must keep them equal)."""
    import ray
    import torch

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"node_rank{rank}.txt").write_text(ray.get_runtime_context().get_node_id())
    module = model.module if hasattr(model, "module") else model
    torch.save({k: v.detach().cpu() for k, v in module.named_parameters()}, out_dir / f"params_rank{rank}_iter{iteration}.pt")


def _fail_once(marker: Path) -> None:
    """Fault injection for tests: kill this worker process the first time only, once Ray Train has
    registered every checkpoint reported so far (registration is asynchronous; a crash right after a
    report could otherwise restart from an older checkpoint)."""
    import ray.train

    if marker.exists():
        return
    ray.train.get_all_reported_checkpoints(timeout_s=120)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(str(time.time()))
    os._exit(1)


def _log_overlays(tracker, model, val, categories, device, count: int) -> None:
    import numpy as np
    import torch

    from mrcnn.predictor import detections_to_records
    from mrcnn.visualize import save_overlay

    module = model.module if hasattr(model, "module") else model
    module.eval()
    images = val[0][:count]
    with torch.no_grad():
        detections = module([img.to(device) for img in images]).detections
    with tempfile.TemporaryDirectory() as tmp:
        for i, (image, det) in enumerate(zip(images, detections)):
            rgb = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            records = detections_to_records({k: v.cpu() for k, v in det.items()}, categories)
            records = [r for r in records if r["score"] >= 0.5]
            save_overlay(Path(tmp) / f"val_{i}.png", rgb, records, skeletons=categories.skeletons)
        tracker.log_images(tmp)


# ------------------------------------------------------------------ driver side
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

    if cfg.model.backbone.norm == "frozen_bn" and not run.backbone_weights:
        print(f"[train] warning: preset {run.preset} freezes BatchNorm and the first ResNet stages (a pretrained "
              "layout) but no backbone_weights were given: they stay at their random init", file=sys.stderr)  # fmt: skip
    if "://" not in run.storage_path:
        nodes = {n["NodeManagerAddress"] for n in ray.nodes() if n.get("Alive")}
        if len(nodes) > 1:
            print(f"[train] warning: storage_path {run.storage_path} is a local path on a cluster of {len(nodes)} "
                  "machines: checkpoints need shared storage (s3://, gs://, or NFS mounted at the same path on "
                  "every node)", file=sys.stderr)  # fmt: skip


@dataclass
class TrainResult:
    iteration: int
    metrics: dict[str, Any]
    checkpoint_path: str | None
    mlflow_run_id: str | None
    storage_path: str


def train(run: TrainRunConfig, *, ray_address: str | None = None) -> TrainResult:
    """Launch (or resume) a training run on the connected Ray cluster (a local one if none)."""
    import ray
    import ray.data
    import ray.train
    from ray.train.torch import TorchTrainer

    from pipelines.shards import join_path, list_shards, read_categories

    run = run.validate()
    if not run.storage_path:
        run = dataclasses.replace(run, storage_path=str(Path("ray_results").resolve()))
    if "://" not in run.storage_path:
        run = dataclasses.replace(run, storage_path=str(Path(run.storage_path).resolve()))
    if not ray.is_initialized():
        ray.init(address=ray_address or os.environ.get("RAY_ADDRESS"), log_to_driver=True)

    categories = read_categories(run.data)
    cfg = run.model_config()
    if cfg.model.num_classes != categories.num_classes:
        cfg = cfg.replace(**{"model.num_classes": categories.num_classes})
    if cfg.model.has_keypoints:
        if not categories.num_keypoints:
            raise ValueError(f"train: model.task is keypoints but the categories of {run.data} name no keypoints "
                             "(preprocess a COCO person-keypoint json, or `mrcnn synth --task keypoints`)")  # fmt: skip
        cfg = cfg.replace(**{"model.keypoint_head.num_keypoints": categories.num_keypoints})
    if run.cpus_per_worker <= 0:
        run = dataclasses.replace(run, cpus_per_worker=auto_cpus_per_worker(run.workers, use_gpu=run.use_gpu))
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
                           "data_stats": data_stats},
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
        from pipelines.shards import display_path

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
