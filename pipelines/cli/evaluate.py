"""``mrcnn evaluate``: COCO AP of a model on a shard split or a COCO set, distributed on Ray Data.

``mrcnn eval`` (:mod:`pipelines.cli.eval`) is its counterpart in one process.
"""

from __future__ import annotations

import argparse
import json

from pipelines.cli.options import add_actor_pool_options, add_cluster_options, add_model_options, add_tracking_options

DESCRIPTION = (
    "COCO AP of a model, distributed on Ray Data: the model predicts a shard split (--data) or a COCO json + image "
    "folder (--annotations, --images) on a pool of actors; the detections go to OUT/detections/ (running again "
    "resumes), the numbers to OUT/metrics.json and the console, the evaluation report to OUT/report/ (and, for a model "
    "of an MLflow run, to that run's artifacts). For a predictions json, or a quick run in this process, use `mrcnn eval`."
)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate", help="COCO AP of a model on a shard split or COCO set, distributed on Ray Data "
        "(resumable; writes metrics.json)", description=DESCRIPTION,
    )  # fmt: skip
    add_model_options(p, score_help="default: the model's (0.05 for the paper's presets)")
    p.add_argument("--data", metavar="SHARDS", help="a shard split OUT/<split> from `mrcnn preprocess` (path or s3://)")
    p.add_argument("--annotations", metavar="ANN", help="or a COCO instances json (with --images)")
    p.add_argument("--images", metavar="DIR", help="the image folder of --annotations")
    p.add_argument("--out", required=True, metavar="DIR", help="detections/ (resumable) and metrics.json go here")
    add_actor_pool_options(p)
    p.add_argument("--overwrite", action="store_true", help="discard earlier detections in OUT instead of resuming")
    p.add_argument("--report", metavar="DIR", help="write the evaluation report here (default OUT/report): per-class "
                   "AP/AR (CSV), PR curves per class at IoU .50 and .75, confusion matrices at IoU .5, the worst images "
                   "per class (with a local --images). A model of an MLflow run (models:/, runs:/) also gets it as "
                   "artifacts evaluate/<data>/report/ and metrics evaluate/<data>/<iou_type>/<stat> of that run")
    add_tracking_options(p)
    add_cluster_options(p)
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from mrcnn.evaluation import format_metrics_table, stat_names
    from pipelines.batch.evaluate import evaluate

    summary = evaluate(
        model=args.model, out=args.out, data=args.data, annotations=args.annotations, images=args.images,
        workers=args.workers, gpu=args.gpu, batch_size=args.batch_size, score_threshold=args.score_threshold,
        cpus_per_worker=args.cpus_per_worker, tracking_uri=args.tracking_uri, ray_address=args.address,
        overwrite=args.overwrite, report=args.report,
    )  # fmt: skip
    print(format_metrics_table(summary.metrics))
    print(f"{summary.num_images} images ({summary.num_rejected} unreadable), {summary.num_detections} detections, "
          f"{summary.seconds:.0f} s -> {summary.out_dir}/metrics.json")  # fmt: skip
    brief = summary.to_dict() | {"metrics": {t: {k: m[k] for k in stat_names(t)} for t, m in summary.metrics.items()}}
    print(json.dumps(brief))
    return 0
