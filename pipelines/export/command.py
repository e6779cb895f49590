"""``mrcnn export``: its parser and its command (the CLI registers both)."""

from __future__ import annotations

import argparse
import sys

MODEL_HELP = "models:/NAME@ALIAS, models:/NAME/VERSION, runs:/ID/path or a checkpoint file"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``export`` verb to ``subparsers`` (``parser.add_subparsers()``); its ``func`` is ``cmd_export``."""
    p = subparsers.add_parser(
        "export",
        help="export a model to ONNX or TorchScript, checked against PyTorch before it is written",
        description="Export the whole model (one float image [3, H, W] in 0..1 in; boxes, labels, scores and "
        "mask probabilities out) and check the file on sample images at two sizes against PyTorch "
        "(boxes within 0.5 px, mask IoU >= 0.98); a file that fails is not written. See docs/export.md.",
    )
    p.add_argument("--model", required=True, metavar="URI", help=MODEL_HELP)
    p.add_argument("--format", choices=["onnx", "torchscript"], default="onnx", help="(default: onnx)")
    p.add_argument("--out", required=True, help="file to write (local path or s3://, gs:// URI)")
    p.add_argument("--sample-images", nargs="+", metavar="PATH",
                   help="images or folders for the parity check, two sizes at least (default: two synthetic scenes)")
    p.add_argument("--score-threshold", type=float, default=0.5, help="baked into the graph (default: 0.5)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset version (default: 17)")
    p.add_argument("--arch", help="preset of a bare torchvision state dict (r50_fpn, r50_fpn_v2, r101_fpn, ...)")
    p.add_argument("--tracking-uri", help="MLflow store for models:/ and runs:/ URIs (default: MLFLOW_TRACKING_URI)")
    p.set_defaults(func=cmd_export)
    return p


def cmd_export(args: argparse.Namespace) -> int:
    """Run ``export_model`` with the parsed flags; print the check and the file written. Errors propagate."""
    from pipelines.export.model_export import export_model

    if not 0.0 <= args.score_threshold <= 1.0:
        raise ValueError(f"--score-threshold: expected a value in [0, 1], got {args.score_threshold}")
    summary = export_model(
        args.model, fmt=args.format, out=args.out, tracking_uri=args.tracking_uri, sample_images=args.sample_images,
        score_threshold=args.score_threshold, opset=args.opset, arch=args.arch,
    )  # fmt: skip
    print(summary.format())
    if summary.report.num_detections == 0:
        print(f"mrcnn export: warning: no detections on the sample images at score threshold {args.score_threshold}, "
              "so no boxes or masks were compared; pass --sample-images with photos the model finds objects in",
              file=sys.stderr)  # fmt: skip
    return 0
