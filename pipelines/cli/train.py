"""``mrcnn train``: distributed training with Ray Train (DDP), tracked in MLflow."""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

from pipelines.cli.errors import CLIError
from pipelines.cli.options import (
    add_cluster_options,
    add_overrides_option,
    add_tracking_options,
    parse_overrides,
)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("train", help="distributed training with Ray Train (DDP), tracked in MLflow")
    p.add_argument("--data", help="preprocessed shards folder (from `mrcnn preprocess`)")
    p.add_argument("--config", help="YAML run config (keys of TrainRunConfig); flags override it")
    p.add_argument("--preset", help="model preset (default r18_fpn_small)")
    add_overrides_option(p, "config override, e.g. model.box_head.pooler=roi_pool")
    p.add_argument("--workers", type=int, help="Ray Train workers")
    p.add_argument("--gpu", action=argparse.BooleanOptionalAction, default=None,
                   help="one GPU per worker, NCCL, SyncBN; --no-gpu trains on CPUs whatever the config says")  # fmt: skip
    p.add_argument("--cpus-per-worker", type=float)
    p.add_argument("--gpus-per-worker", type=float)
    p.add_argument("--amp", choices=["none", "bf16", "fp16"])
    p.add_argument("--batch-size", type=int, help="images per worker per step")
    p.add_argument("--max-iters", type=int)
    p.add_argument("--epochs", type=float, help="budget in passes over the training shards (instead of --max-iters)")
    p.add_argument("--backbone-weights", metavar="FILE", help="ImageNet ResNet state dict for backbone.body (path or s3://)")
    p.add_argument("--minutes", type=float, help="time budget (the schedule decays at fractions of it)")
    p.add_argument("--init-from", metavar="MODEL",
                   help="start from a COCO-pretrained model: a torchvision maskrcnn_resnet50_fpn(_v2) / keypointrcnn state "
                   "dict or one of ours (file, models:/NAME@ALIAS, models:/NAME/VERSION, runs:/...); class rows are "
                   "copied by category name")
    p.add_argument("--eval-every", type=int,
                   help="evaluate on the val shards every N iterations and at the end (default 0: only at the end; -1: never)")
    p.add_argument("--patience", type=int, metavar="N", help="stop after N evaluations without a better selection metric")
    p.add_argument("--checkpoint-every", type=int)
    p.add_argument("--loader-threads", type=int, metavar="N",
                   help="background threads per worker that decode and augment the next batches while the model "
                   "computes (0: in the loop's thread; default -1: 2 on GPU workers, 1 on CPU workers)")
    p.add_argument("--storage-path", help="shared storage for checkpoints (local path, s3://, gs://)")
    p.add_argument("--name", help="run name; relaunching with the same name and storage path resumes")
    p.add_argument("--max-failures", type=int, help="worker failures to recover from")
    add_tracking_options(p, default_store="./mlflow.db", experiment=None)
    p.add_argument("--model-name", help="registered model name (alias 'best' follows segm AP, or keypoint AP for a keypoint model)")
    add_cluster_options(p)
    p.set_defaults(func=cmd_train)


def _validated_run(run: Any, source: str) -> Any:
    """The run config with every field checked against its type (numbers as people write them, e.g. a run
    YAML's ``minutes: 1e1``, become numbers), its own checks and its model config (preset + overrides)
    built and validated: a bad value is refused here, before Ray starts.

    Raises:
        CLIError: naming the field and the value.
    """
    from mrcnn.config import ConfigError, from_dict

    try:
        run = from_dict(type(run), {f.name: getattr(run, f.name) for f in dataclasses.fields(run)}, where=source)
        run.validate()
        run.model_config()
    except ConfigError as exc:
        raise CLIError(str(exc)) from None
    return run


def cmd_train(args: argparse.Namespace) -> int:
    from pipelines.tracking import default_tracking_uri
    from pipelines.train import TrainRunConfig, train

    flags = {
        "data": args.data, "preset": args.preset, "workers": args.workers, "use_gpu": args.gpu,
        "cpus_per_worker": args.cpus_per_worker, "gpus_per_worker": args.gpus_per_worker, "amp": args.amp,
        "batch_size": args.batch_size, "max_iters": args.max_iters, "minutes": args.minutes,
        "eval_every": args.eval_every, "checkpoint_every": args.checkpoint_every, "storage_path": args.storage_path,
        "name": args.name, "max_failures": args.max_failures, "tracking_uri": args.tracking_uri,
        "experiment": args.experiment, "model_name": args.model_name, "epochs": args.epochs,
        "backbone_weights": args.backbone_weights, "init_from": args.init_from, "patience": args.patience,
        "loader_threads": args.loader_threads,
    }  # fmt: skip
    # A budget flag replaces the config's budget: --max-iters clears its epochs, --epochs its max_iters.
    if args.max_iters is not None and args.epochs is None:
        flags["epochs"] = 0.0
    if args.epochs is not None and args.max_iters is None:
        flags["max_iters"] = 0
    run = TrainRunConfig.from_yaml(args.config, **flags) if args.config else TrainRunConfig(**{k: v for k, v in flags.items() if v is not None})
    if args.set:
        run = dataclasses.replace(run, overrides={**run.overrides, **parse_overrides(args.set)})
    run = _validated_run(run, f"run config {args.config}" if args.config else "run config")
    if not run.tracking_uri:
        run = dataclasses.replace(run, tracking_uri=default_tracking_uri("."))
    result = train(run, ray_address=args.address)
    print(json.dumps({"iteration": result.iteration, "checkpoint": result.checkpoint_path,
                      "mlflow_run_id": result.mlflow_run_id, "tracking_uri": run.tracking_uri,
                      **{k: v for k, v in result.metrics.items() if k.startswith(("segm_", "bbox_", "keypoints_", "loss", "val_"))}}))  # fmt: skip
    return 0
