"""``mrcnn ablate``: the paper's ablations, each variant trained with Ray Train as an MLflow child run, compared
in one table.

Ablate takes no model reference: every variant trains from scratch, or from ``--backbone-weights`` (an
ImageNet ResNet state dict for the backbone, not a Mask R-CNN model).
"""

from __future__ import annotations

import argparse
import json
import sys

from pipelines.cli.errors import CLIError
from pipelines.cli.options import add_cluster_options, add_overrides_option, add_tracking_options, parse_overrides


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "ablate", help="the paper's ablations: train each variant (Ray Train, MLflow child runs) and compare",
        description="Train the baseline (RoIAlign, per-class sigmoid masks, FCN mask head, masks on) and one variant "
        "per ablation (roi_pool, softmax, mlp, mask_off) with the same data, seed(s), schedule and number of steps; "
        "evaluate each on the val split; write OUT/ablation.md, .json and .png, log them to the MLflow parent run of "
        "the variants' child runs, and print the table. Exit code 1 if a variant failed (it is in the table as failed). "
        "Every variant trains from scratch (or from --backbone-weights): ablate takes no model reference.",
    )  # fmt: skip
    p.add_argument("--data", default="synthetic",
                   help="'synthetic' (default: written to OUT/data, see --difficulty), a shard folder from "
                   "`mrcnn preprocess`, or a COCO dataset root (preprocessed to OUT/shards)")  # fmt: skip
    p.add_argument("--out", default="mrcnn-ablate", help="table, json, plot, data, checkpoints and (by default) "
                   "the MLflow store go here (default mrcnn-ablate/)")  # fmt: skip
    p.add_argument("--steps-per-variant", type=int, metavar="N",
                   help="training steps of every variant (default 150: about 6 min per variant on 2 CPU cores)")
    p.add_argument("--minutes-per-variant", type=float, metavar="M",
                   help="instead of --steps-per-variant: the first variant (the baseline) trains M minutes and its "
                   "step count becomes every other variant's budget")  # fmt: skip
    p.add_argument("--variants", default="all", help="comma-separated subset of baseline,roi_pool,softmax,mlp,mask_off (default all)")
    p.add_argument("--seeds", type=int, default=1, metavar="K", help="train every variant with K seeds; the table shows mean ± std")
    p.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    p.add_argument("--workers", type=int, default=2, help="Ray Train workers (default 2)")
    p.add_argument("--gpu", action="store_true", help="one GPU per worker")
    p.add_argument("--batch-size", type=int, default=4, help="images per worker per step (default 4)")
    p.add_argument("--preset", default="r18_fpn_small", help="model preset of every variant (default r18_fpn_small)")
    add_overrides_option(p, "config override for every variant")
    p.add_argument("--train", type=int, default=400, help="synthetic training images (default 400)")
    p.add_argument("--val", type=int, default=100, help="synthetic validation images (default 100)")
    p.add_argument("--size", type=int, default=128, help="synthetic image side (default 128)")
    p.add_argument("--difficulty", choices=["default", "hard"], default="hard", help="synthetic set (default hard: small, thin shapes)")
    add_tracking_options(p, default_store="OUT/mlflow.db", experiment="mrcnn-ablate")
    p.add_argument("--max-failures", type=int, default=1, help="worker failures a variant's training recovers from (default 1)")
    p.add_argument("--storage-path", help="checkpoints (default OUT/ray_results; s3://... or NFS on a multi-node cluster)")
    p.add_argument("--backbone-weights", metavar="FILE", help="ImageNet ResNet state dict every variant starts from (path or s3://)")
    add_cluster_options(p)
    p.set_defaults(func=cmd_ablate)


def cmd_ablate(args: argparse.Namespace) -> int:
    from pipelines.ablate import DEFAULT_STEPS_PER_VARIANT, AblationConfig, parse_variants, run_ablation, seeds_from

    if args.steps_per_variant is not None and args.minutes_per_variant is not None:
        raise CLIError("ablate: give --steps-per-variant or --minutes-per-variant, not both")
    if (args.steps_per_variant is not None and args.steps_per_variant < 1) or (
        args.minutes_per_variant is not None and args.minutes_per_variant <= 0
    ):
        raise CLIError("ablate: --steps-per-variant and --minutes-per-variant must be positive")
    steps = args.steps_per_variant or (0 if args.minutes_per_variant else DEFAULT_STEPS_PER_VARIANT)
    config = AblationConfig(
        out=args.out, data=args.data, variants=tuple(v.name for v in parse_variants(args.variants)),
        steps_per_variant=steps, minutes_per_variant=0.0 if steps else args.minutes_per_variant,
        seeds=seeds_from(args.seeds, args.seed), preset=args.preset, overrides=parse_overrides(args.set or []),
        workers=args.workers, use_gpu=args.gpu, batch_size=args.batch_size, num_train=args.train, num_val=args.val,
        size=args.size, difficulty=args.difficulty, tracking_uri=args.tracking_uri or "", experiment=args.experiment,
        max_failures=args.max_failures, storage_path=args.storage_path or "", backbone_weights=args.backbone_weights or "",
        ray_address=args.address,
    )  # fmt: skip
    result = run_ablation(config)
    print(result.paths["markdown"].read_text())
    print(json.dumps({"table": str(result.paths["markdown"]), "json": str(result.paths["json"]),
                      "plot": str(result.paths["plot"]), "parent_run_id": result.parent_run_id,
                      "tracking_uri": result.tracking_uri, "failed": result.failed}))  # fmt: skip
    if result.failed:
        print(f"mrcnn: error: variant(s) failed: {', '.join(result.failed)} (see the table)", file=sys.stderr)
        return 1
    return 0
