"""``mrcnn eval``: COCO AP in this process, of a predictions json or of a model over an image folder.

``mrcnn evaluate`` (:mod:`pipelines.cli.evaluate`) is its distributed counterpart on Ray Data.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pipelines.cli.errors import CLIError
from pipelines.cli.images import load_predictor, predict_images
from pipelines.cli.options import add_model_options, add_tracking_options

DESCRIPTION = (
    "COCO bbox + segm (+ keypoints) AP, computed in this process: of a COCO results json (--gt, --predictions), or "
    "of a model predicting every image of a ground truth from an image folder (--model, --annotations, --images), "
    "with a progress bar over the images. Prints the numbers (a table, or one JSON object with --json); writes "
    "nothing. For a large set, `mrcnn evaluate` does the same with Ray Data: distributed over actors, on a shard "
    "split or a COCO set, resumable, and writes OUT/metrics.json."
)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "eval", help="COCO AP in this process: of a predictions json, or of a model over an image folder",
        description=DESCRIPTION,
    )  # fmt: skip
    p.add_argument("--gt", help="ground-truth COCO instances json")
    p.add_argument("--predictions", help="COCO results json")
    add_model_options(p, required=False, aliases=("--weights",), arch=True, device=True,
                      model_help="evaluate this model instead (needs --annotations and --images): a checkpoint "
                      "file, models:/NAME@ALIAS, models:/NAME/VERSION or runs:/RUN_ID/path",
                      score_help="default: the model's (0.05)")  # fmt: skip
    add_tracking_options(p)
    p.add_argument("--annotations", help="ground-truth json for --model")
    p.add_argument("--images", help="image folder for --model")
    p.add_argument("--batch-size", type=int, default=2, help="images per forward pass (default 2)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the tables")
    p.add_argument("--report", metavar="DIR", help="write the evaluation report here: per-class AP/AR (CSV), PR curves "
                   "per class at IoU .50 and .75, confusion matrices at IoU .5, the worst images per class (with --images)")
    compare = p.add_mutually_exclusive_group()
    compare.add_argument("--compare-predictions", metavar="PRED.json",
                         help="a second model's results on the same data: print the per-class AP difference")
    compare.add_argument("--compare-model", metavar="MODEL",
                         help="a second model (any model reference) predicting the same images: print the per-class AP difference")
    p.set_defaults(func=cmd_eval)


def _attach_image_ids(results: list[dict[str, Any]], gt, source: str) -> list[dict[str, Any]]:
    """Fill ``image_id`` from ``file_name`` for records that only name their file (matched by path, as
    ``mrcnn evaluate`` does: ``cam1/0001.png`` is not ``cam2/0001.png``; an ambiguous base name is refused)."""
    from pipelines.batch.evaluate import match_file_names

    names = [str(record.get("file_name", "")) for record in results if "image_id" not in record]
    try:
        by_name = match_file_names(gt.dataset["images"], names, source=source)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    for index, record in enumerate(results):
        if "image_id" not in record:
            name = str(record.get("file_name", ""))
            if name not in by_name:
                raise CLIError(f"{source}: record {index} has no image_id and file_name {name!r} is not in the ground truth")
            record["image_id"] = by_name[name]
    return results


def _print_metrics(metrics: dict[str, Any], as_json: bool) -> None:
    from mrcnn.evaluation import format_metrics_table, stat_names

    if as_json:
        print(json.dumps({t: {k: m[k] for k in stat_names(t)} | {"per_category": m["per_category"]} for t, m in metrics.items()}))
    else:
        print(format_metrics_table(metrics))


def _result_iou_types(results: list[dict[str, Any]]) -> tuple[str, ...]:
    """bbox; segm unless no record has a mask (a model without a mask head); keypoints when records have them."""
    has_segm = not results or any("segmentation" in r for r in results)
    has_keypoints = any("keypoints" in r for r in results)
    return ("bbox",) + (("segm",) if has_segm else ()) + (("keypoints",) if has_keypoints else ())


class Evaluated:
    """One model's (or predictions file's) results on the ground truth, and their metrics."""

    def __init__(self, gt, results: list[dict[str, Any]], iou_types: tuple[str, ...]) -> None:
        from mrcnn.evaluation import evaluate_coco

        self.gt, self.results, self.iou_types = gt, results, iou_types
        self.metrics = evaluate_coco(gt, results, iou_types=iou_types)


def _read_predictions(path: Path, gt) -> list[dict[str, Any]]:
    if not path.is_file():
        raise CLIError(f"{path}: no such file")
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CLIError(f"{path}: not valid json ({exc})") from None
    if not isinstance(results, list):
        raise CLIError(f"{path}: expected a COCO results list, got {type(results).__name__}")
    return _attach_image_ids(results, gt, str(path))


def _evaluate_predictions(args: argparse.Namespace, path: str) -> Evaluated:
    from mrcnn.evaluation import load_coco_gt

    annotations = args.gt or args.annotations
    if not annotations:
        raise CLIError("eval --predictions needs --gt ANN.json")
    gt = load_coco_gt(annotations)
    results = _read_predictions(Path(path), gt)
    return Evaluated(gt, results, _result_iou_types(results))


def _evaluate_model(args: argparse.Namespace, model: str) -> Evaluated:
    from mrcnn.evaluation import load_coco_gt

    if not (model and (args.annotations or args.gt) and args.images):
        raise CLIError("eval needs either --gt and --predictions, or --model, --annotations and --images")
    annotations = args.annotations or args.gt
    gt = load_coco_gt(annotations)
    # AP is measured over every detection above one low threshold: per-class thresholds stay off.
    predictor = load_predictor(model, arch=args.arch, device=args.device, score_threshold=args.score_threshold,
                               class_thresholds={}, tracking_uri=args.tracking_uri)  # fmt: skip
    if args.score_threshold is None:
        predictor.score_threshold = predictor.config.model.box_head.score_thresh
    image_dir = Path(args.images)
    if not image_dir.is_dir():
        raise CLIError(f"{image_dir}: no such folder")
    # Each image is its ground-truth entry: the id comes with it, never from a name match.
    named = [(image_dir / img["file_name"], str(img["file_name"])) for img in gt.dataset["images"]]
    image_ids = {str(img["file_name"]): img["id"] for img in gt.dataset["images"]}
    results, skipped = predict_images(
        predictor, named, batch_size=args.batch_size, image_ids=image_ids, overlay_dir=None, desc="eval images"
    )
    for path, reason in skipped:
        print(f"mrcnn: warning: skipped {reason}", file=sys.stderr)
    return Evaluated(gt, results, tuple(predictor.config.model.iou_types))


def cmd_eval(args: argparse.Namespace) -> int:
    from mrcnn.report import evaluate_per_class, format_per_class_table

    evaluated = _evaluate_predictions(args, args.predictions) if args.predictions else _evaluate_model(args, args.model)
    if not args.json:  # the per-class table, then the 12 numbers (the summary stays the last lines)
        print(format_per_class_table(evaluate_per_class(evaluated.gt, evaluated.results, iou_types=evaluated.iou_types)))
        print()
    _print_metrics(evaluated.metrics, args.json)
    if args.compare_predictions or args.compare_model:
        _print_comparison(args, evaluated)
    if args.report:
        from mrcnn.report import write_report

        write_report(args.report, evaluated.gt, evaluated.results, iou_types=evaluated.iou_types, images_dir=args.images)
        print(f"report: {args.report}", file=sys.stderr)
    return 0


def _print_comparison(args: argparse.Namespace, evaluated: Evaluated) -> None:
    """The per-class AP of a second model on the same data, beside the first's (B - A)."""
    from mrcnn.report import compare_per_class, format_per_class_comparison

    if args.compare_predictions:
        other, label = _evaluate_predictions(args, args.compare_predictions), Path(args.compare_predictions).name
    else:
        other, label = _evaluate_model(args, args.compare_model), args.compare_model
    first = Path(args.predictions).name if args.predictions else args.model
    print()
    print(f"per-class AP: A = {first}, B = {label}")
    print(format_per_class_comparison(compare_per_class(evaluated.metrics, other.metrics)))
