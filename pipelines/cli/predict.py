"""``mrcnn predict``: segment images in this process; write a COCO results json (and overlays)."""

from __future__ import annotations

import argparse
import json
import sys

from pipelines.cli.images import image_names, load_predictor, match_annotations, predict_images, thresholds_line
from pipelines.cli.options import add_model_options, add_tracking_options, class_thresholds_option


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "predict", help="segment images in this process; write a COCO results json (and overlays)",
        description="Segment image files and folders in this process, with a progress bar over the images; write "
        "their detections as a COCO results json, and overlays with --overlay-dir. The per-class score thresholds "
        "stored with the model apply unless --score-threshold or --class-thresholds say otherwise.",
    )  # fmt: skip
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders")
    add_model_options(p, aliases=("--weights",), arch=True, device=True, class_thresholds=True,
                      score_help="one global threshold: keep detections scoring above T, whatever the model's "
                      "per-class thresholds (default: those, and 0.5 for classes without one)")  # fmt: skip
    add_tracking_options(p)
    p.add_argument("--out", required=True, help="COCO results json to write")
    p.add_argument("--overlay-dir", help="write PNGs with the masks drawn here")
    p.add_argument("--annotations", help="COCO json giving each file's image_id")
    p.add_argument("--batch-size", type=int, default=2, help="images per forward pass (default 2)")
    p.set_defaults(func=cmd_predict)


def cmd_predict(args: argparse.Namespace) -> int:
    from pipelines.common.storage import write_atomic

    named, image_ids = match_annotations(args.annotations, image_names(args.images))
    class_thresholds = class_thresholds_option(args.class_thresholds, args.score_threshold)
    predictor = load_predictor(args.model, arch=args.arch, device=args.device, score_threshold=args.score_threshold,
                               class_thresholds=class_thresholds, tracking_uri=args.tracking_uri)  # fmt: skip
    print(thresholds_line(predictor, class_thresholds), file=sys.stderr)
    results, skipped = predict_images(
        predictor,
        named,
        batch_size=args.batch_size,
        image_ids=image_ids,
        overlay_dir=args.overlay_dir,
    )
    paths = [path for path, _ in named]
    write_atomic(args.out, json.dumps(results))
    print(f"{len(results)} detections on {len(paths) - len(skipped)} images -> {args.out}")
    for path, reason in skipped:
        print(f"mrcnn: error: skipped {reason}", file=sys.stderr)
    return 1 if skipped else 0
