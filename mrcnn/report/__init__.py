"""The evaluation report: per-class numbers from COCOeval's arrays, PR curves, confusion matrices, worst images."""

from mrcnn.report.matching import ConfusionMatrix, confusion_matrix, match_per_class, per_image_f1
from mrcnn.report.per_class import (
    compare_per_class,
    evaluate_per_class,
    format_per_class_comparison,
    format_per_class_table,
    per_class_metrics,
    pr_curves,
    run_cocoeval,
)
from mrcnn.report.writer import write_report

__all__ = [
    "ConfusionMatrix",
    "compare_per_class",
    "confusion_matrix",
    "evaluate_per_class",
    "format_per_class_comparison",
    "format_per_class_table",
    "match_per_class",
    "per_class_metrics",
    "per_image_f1",
    "pr_curves",
    "run_cocoeval",
    "write_report",
]
