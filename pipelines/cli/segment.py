"""``mrcnn segment``: segment a folder of images or a shard set with Ray Data (distributed, resumable)."""

from __future__ import annotations

import argparse

from pipelines.cli.options import (
    add_actor_pool_options,
    add_cluster_options,
    add_model_options,
    add_tracking_options,
    class_thresholds_option,
)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("segment", help="segment a folder of images or a shard set with Ray Data (distributed, resumable)")
    add_model_options(p, class_thresholds=True,
                      score_help="one global threshold: keep detections scoring above T, whatever the model's "
                      "per-class thresholds (default: those, and 0.5 for classes without one)")  # fmt: skip
    p.add_argument("--input", required=True, metavar="DIR", help="folder of images (recursive), or a shard folder OUT/<split>")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder; running again over it resumes")
    add_actor_pool_options(p)
    p.add_argument("--overlays", action="store_true", help="write OUT/overlays/*.png with the masks drawn")
    p.add_argument("--part-size", type=int, default=32, metavar="N", help="images per actor call and part file (default 32)")
    p.add_argument("--format", choices=["coco", "parquet", "both"], default="both",
                   help="results.json (COCO results), detections.parquet, or both (default)")  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="discard what OUT holds instead of resuming")
    p.add_argument("--retry-rejects", action="store_true", help="try every image rejected by an earlier run again")
    add_tracking_options(p)
    add_cluster_options(p)
    p.add_argument("--fail-after-parts", type=int, help=argparse.SUPPRESS)  # test hook: stop as a crash would
    p.set_defaults(func=cmd_segment)


def cmd_segment(args: argparse.Namespace) -> int:
    from pipelines.batch.segment import segment

    summary = segment(
        model=args.model, input=args.input, out=args.out, workers=args.workers, gpu=args.gpu,
        overlays=args.overlays, batch_size=args.batch_size, part_size=args.part_size,
        score_threshold=args.score_threshold, output_format=args.format,
        class_thresholds=class_thresholds_option(args.class_thresholds, args.score_threshold), overwrite=args.overwrite,
        retry_rejects=args.retry_rejects, cpus_per_worker=args.cpus_per_worker, tracking_uri=args.tracking_uri,
        ray_address=args.address, fail_after_parts=args.fail_after_parts,
    )  # fmt: skip
    print(summary.format())
    return 0
