"""``mrcnn preprocess``: COCO json + images -> validated Parquet shards (Ray Data)."""

from __future__ import annotations

import argparse

from pipelines.cli.errors import CLIError
from pipelines.cli.options import add_cluster_options


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("preprocess", help="COCO json + images -> validated Parquet shards (Ray Data)")
    p.add_argument("src", nargs="?", metavar="SRC", help="dataset root: SRC/<split>/annotations.json or COCO layout")
    p.add_argument("out", metavar="OUT", help="output folder (path or s3://...): OUT/<split>/*.parquet")
    p.add_argument("--split", action="append", metavar="NAME", help="split to do (repeatable; default: every train/val found)")
    p.add_argument("--annotations", metavar="ANN", help="one COCO json instead of SRC (needs --images and --split)")
    p.add_argument("--images", metavar="DIR", help="image folder of --annotations")
    p.add_argument("--num-shards", type=int, metavar="N", help="exact number of Parquet files per split")
    p.add_argument("--rows-per-shard", type=int, metavar="N", help="at most this many images per file (default 1000)")
    add_cluster_options(p)
    p.set_defaults(func=cmd_preprocess)


def cmd_preprocess(args: argparse.Namespace) -> int:
    from pipelines.preprocess import preprocess_coco, preprocess_dataset

    shard_options = dict(num_shards=args.num_shards, rows_per_shard=args.rows_per_shard, ray_address=args.address)
    if args.annotations or args.images:
        if not (args.annotations and args.images):
            raise CLIError("preprocess: --annotations and --images go together")
        if args.src is not None:
            raise CLIError(f"preprocess: give SRC or --annotations/--images, not both (got SRC {args.src})")
        if not args.split or len(args.split) != 1:
            raise CLIError("preprocess --annotations needs exactly one --split NAME (the output subfolder)")
        summaries = {
            args.split[0]: preprocess_coco(
                annotations=args.annotations, images=args.images, out=args.out, split=args.split[0], **shard_options
            )
        }
    else:
        if args.src is None:
            raise CLIError("preprocess needs SRC OUT, or OUT with --annotations ANN --images DIR --split NAME")
        summaries = preprocess_dataset(args.src, args.out, splits=args.split, **shard_options)
    for summary in summaries.values():
        print(summary.format())
    print(f"categories: {next(iter(summaries.values())).categories_path}")
    return 0
