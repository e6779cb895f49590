"""What every Ray Train worker runs: build the model and the data, add the hooks, ``trainer.train()``.

CPU workers use DDP over gloo (BatchNorm per replica, buffers broadcast from rank 0); GPU workers use
NCCL, SyncBN and optional autocast (bf16, or fp16 with a GradScaler). A worker started by Ray Train
after a failure, or in a relaunch, resumes from the latest reported checkpoint.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from pipelines.train.config import CHECKPOINT_FILE, TrainRunConfig


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Train on this worker's part of the shards.

    ``loop_config``: ``run`` (TrainRunConfig as a dict), ``model`` (Config.to_dict()), ``categories``
    (CategoryMap.to_list()), ``data_stats`` (MLflow params), ``extra_hooks`` (hook specs, see
    :func:`pipelines.train.hooks.build_hooks`; they run after the metric logging, before the report).
    """
    import ray.train
    import ray.train.torch
    import torch

    from mrcnn.config import Config
    from mrcnn.data.categories import CategoryMap
    from mrcnn.engine import NonFiniteLossError, Trainer
    from mrcnn.solver import build_optimizer
    from pipelines.train.data import ShardEpochs
    from pipelines.train.hooks import RunState, selection_metric, start_tracker
    from pipelines.train.model import build_worker_model

    run = TrainRunConfig(**loop_config["run"])
    cfg = Config.from_dict(loop_config["model"])
    categories = CategoryMap.from_list(loop_config["categories"])
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    torch.manual_seed(run.seed + rank)
    resumed = ray.train.get_checkpoint()

    init_source = ray.get(loop_config["init_source"]) if loop_config.get("init_source") is not None else None
    model, init_report = build_worker_model(run, cfg, world_size=world_size, resuming=resumed is not None,
                                            init_source=init_source, categories=categories)  # fmt: skip
    del init_source
    if run.augmentation_config().kind in ("multiscale", "lsj"):
        model.skip_resize_in_training = True  # the augmentation chose each image's size
    optimizer = build_optimizer(model, cfg.solver, total_batch_size=run.batch_size * world_size)
    scaler = torch.amp.GradScaler("cuda") if run.amp == "fp16" else None
    state = RunState(best_metric_name=selection_metric(cfg))
    if resumed is not None:
        _resume(resumed, model, optimizer, scaler, state)
        if rank == 0:
            write_line(f"[train] resuming {run.name or 'the run'} from its checkpoint at iteration {state.iteration} "
                       f"(attempt {state.attempt + 1})")  # fmt: skip
    # Gradients as views of DDP's all-reduce buckets: the reduced buckets are not copied back into every
    # parameter's .grad each step (116 MB for r18_fpn_small, on the very cores that compute on CPU workers).
    model = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"gradient_as_bucket_view": True})
    tracker = None
    if rank == 0 and run.tracking_uri:
        tracker = start_tracker(run, cfg, loop_config.get("data_stats", {}), state, resumed=resumed is not None)
    if rank == 0 and init_report is not None:
        write_line("\n".join(f"[train] {line}" for line in init_report.summary().splitlines()))
        if tracker is not None:
            tracker.log_params(init_report.to_params())

    num_keypoints = cfg.model.keypoint_head.num_keypoints if cfg.model.has_keypoints else 0  # 0: targets without
    data_seed = run.seed + 1000 * state.attempt  # a resumed run reshuffles and re-augments
    data = ShardEpochs(ray.train.get_dataset_shard("train"), run.batch_size, seed=data_seed,
                       collate=_train_collate(run, cfg, categories, num_keypoints, seed=data_seed, rank=rank),
                       loader_threads=run.num_loader_threads())  # fmt: skip
    device = ray.train.torch.get_device()
    trainer = Trainer(
        model, data, optimizer, max_iters=run.max_iters or cfg.solver.max_iters, max_seconds=run.minutes * 60 or None,
        device=device, scaler=scaler, autocast_dtype={"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[run.amp],
        clip_grad_norm=cfg.solver.clip_grad_norm, world_size=world_size, state=state,
        # Only a time budget makes decisions on the elapsed time: without one, no all_reduce per step.
        sync_elapsed=max_across_ranks if run.minutes else None,
        sync_stop=any_across_ranks if world_size > 1 and run.patience else None,  # only early stopping asks to stop
    )  # fmt: skip
    trainer.register_hooks(_hooks(run, cfg, categories, rank=rank, model=model, state=state, tracker=tracker, device=device,
                                  num_keypoints=num_keypoints, extra_hooks=loop_config.get("extra_hooks", [])))  # fmt: skip
    try:
        trainer.train()
    except NonFiniteLossError as exc:
        raise NonFiniteLossError(f"rank {rank}: {exc}") from None
    finally:
        data.close()


def _train_collate(run: TrainRunConfig, cfg, categories, num_keypoints: int, *, seed: int, rank: int):
    """Decode + the run's augmentation (flip map from the keypoint names, LSJ padding in the model's mean)."""
    from pipelines.train.data import TrainCollate

    keypoint_category = categories.keypoint_category
    return TrainCollate(run.augmentation, num_keypoints=num_keypoints, seed=seed, rank=rank,
                        keypoint_names=keypoint_category.keypoints if keypoint_category and num_keypoints else (),
                        pad_fill=cfg.model.input.pixel_mean)  # fmt: skip


def _hooks(run: TrainRunConfig, cfg, categories, *, rank: int, model, state, tracker, device, num_keypoints: int,
           extra_hooks: list) -> list:  # fmt: skip
    """In order: schedule, evaluation, "best", early stopping and threshold calibration (rank 0), metric
    logging, the extra hooks, the Ray report, MLflow."""
    import math

    from mrcnn.engine import BestModel, EarlyStopping, LRSchedule, MetricLogger, PeriodicEvaluation
    from pipelines.tracking import MetricBuffer
    from pipelines.train.data import load_val
    from pipelines.train.driver import run_key
    from pipelines.train.hooks import (
        MlflowTracking,
        RayReport,
        ThresholdCalibration,
        build_hooks,
        register_best,
        selection_metric,
    )

    val = load_val(run.data, run.eval_max_images, num_keypoints) if rank == 0 and run.eval_every >= 0 else None
    evaluation = best = early = calibration = None
    if val is not None:
        # Evaluations come with reports (so that "best" has a checkpoint): at multiples of both periods
        # (eval_every 0: only after training).
        evaluation = PeriodicEvaluation(lambda: _evaluate(model, val, cfg, categories, device),
                                        period=math.lcm(run.eval_every, run.checkpoint_every))  # fmt: skip
        best = BestModel(selection_metric(cfg))
        early = EarlyStopping(best, run.patience) if run.patience else None
        calibration = ThresholdCalibration(val[2], iou_type="segm" if "segm" in cfg.model.iou_types else "bbox")
    # train/* of every step, val/* of evaluations (rank 0), sent in batches: one log_batch per 50 steps or 10 s, and
    # at evaluations, checkpoints, the end and on failure (MlflowTracking), not a round trip to the store per step.
    buffer = MetricBuffer(tracker) if tracker is not None else None
    write = buffer.log if buffer is not None else None
    register = register_best(tracker, run, state) if tracker is not None and run.model_name else None
    report = RayReport(run.checkpoint_every, rank=rank, cfg=cfg, categories=categories, key=run_key(run), best=best,
                       register=register, calibration=calibration)  # fmt: skip
    mlflow = None
    if tracker is not None:
        mlflow = MlflowTracking(tracker, val=val, categories=categories, device=device, num_overlays=run.num_val_overlays,
                                calibration=calibration, iou_types=cfg.model.iou_types, metrics=buffer,
                                flush_every=run.checkpoint_every)  # fmt: skip
    logger = MetricLogger(write, period=25 if rank == 0 else 0, print_fn=write_line)
    return [LRSchedule(cfg.solver), evaluation, best, early, calibration, logger, *build_hooks(extra_hooks), report, mlflow]


def _evaluate(model, val, cfg, categories, device):
    """bbox; segm with the mask branch (off: Faster R-CNN); keypoints (OKS) with the keypoint branch; the
    validation losses from the same forward passes (an :class:`mrcnn.engine.Evaluation`)."""
    from mrcnn.engine import run_evaluation

    module = model.module if hasattr(model, "module") else model
    images, targets, gt = val
    loader = [(images[i : i + 8], targets[i : i + 8]) for i in range(0, len(images), 8)]
    evaluation = run_evaluation(module, loader, gt, categories, device=device, iou_types=cfg.model.iou_types)
    module.train()
    return evaluation


def _resume(checkpoint, model, optimizer, scaler, state) -> None:
    """Load the weights, optimizer, scaler and loop state of a reported checkpoint; count the attempt."""
    from mrcnn.checkpoint import load_checkpoint

    with checkpoint.as_directory() as ckpt_dir:
        ckpt = load_checkpoint(Path(ckpt_dir) / CHECKPOINT_FILE)
    model.load_state_dict(ckpt.model_state)
    training_state = ckpt.training_state or {}
    optimizer.load_state_dict(training_state["optimizer"])
    if scaler is not None and training_state.get("scaler"):
        scaler.load_state_dict(training_state["scaler"])
    state.load_state_dict(json.loads(training_state["loop_state"]))
    state.attempt += 1


def max_across_ranks(value: float) -> float:
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


def any_across_ranks(flag: bool) -> bool:
    """Whether ``flag`` is true on any rank (a stop asked by rank 0's early stopping stops every rank)."""
    return max_across_ranks(1.0 if flag else 0.0) > 0.5


def write_line(text: str) -> None:
    """A line to the worker's stdout, which Ray forwards to the driver once. Not ``print``: in a Ray Train worker
    ``print`` is patched to also log through the root logger (RAY_TRAIN_ENABLE_PRINT_PATCH), which put every
    progress line on the console twice."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
