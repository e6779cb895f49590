"""``mrcnn export``: a model to ONNX or TorchScript, checked against PyTorch before it is written."""

from __future__ import annotations

import argparse
import sys

from pipelines.cli.options import add_model_options, add_tracking_options


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "export", help="export a model to ONNX or TorchScript, checked against PyTorch before it is written",
        description="Export the whole model (one float image [3, H, W] in 0..1 in; boxes, labels, scores and "
        "mask probabilities out) and check the file on sample images at two sizes against PyTorch "
        "(boxes within 0.5 px, mask IoU >= 0.98); a file that fails is not written. See docs/export.md.",
    )  # fmt: skip
    add_model_options(p, score_threshold=0.5, score_help="baked into the graph (default 0.5)", arch=True)
    add_tracking_options(p)
    p.add_argument("--format", choices=["onnx", "torchscript"], default="onnx", help="(default: onnx)")
    p.add_argument("--out", required=True, help="file to write (local path or s3://, gs:// URI)")
    p.add_argument("--sample-images", nargs="+", metavar="PATH",
                   help="images or folders for the parity check, two sizes at least (default: two synthetic scenes)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset version (default: 17)")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    """Run ``pipelines.export.export_model`` with the parsed flags; print the check and the file written."""
    from pipelines.export import export_model

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
