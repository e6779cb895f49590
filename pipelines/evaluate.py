"""``mrcnn evaluate``: re-exported from :mod:`pipelines.batch` (the driver is :mod:`pipelines.batch.evaluate`)."""

from pipelines.batch.evaluate import EvaluationSummary, evaluate, match_file_names

__all__ = ["EvaluationSummary", "evaluate", "match_file_names"]
