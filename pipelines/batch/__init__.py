"""Batch stages on a Ray Data actor pool: ``mrcnn segment`` (:func:`segment`) and ``mrcnn evaluate`` (:func:`evaluate`).

- :mod:`pipelines.batch.inputs`: the input listing (a folder of images, recursive; a shard set) as work items;
- :mod:`pipelines.batch.model`: the checkpoint, resolved and loaded once on the driver;
- :mod:`pipelines.batch.worker`: the actor, :class:`SegmentWorker` (loads in ``__init__``, infers in ``__call__``);
- :mod:`pipelines.batch.parts`: part files, the manifest, resume, and assembling the outputs;
- :mod:`pipelines.batch.segment`: the segment driver;
- :mod:`pipelines.batch.evaluate`: the evaluate driver (segment, then COCO evaluation);
- :mod:`pipelines.batch.report`: evaluate's report, written to a folder and logged to the model's MLflow run.
"""

from pipelines.batch.evaluate import EvaluationSummary, evaluate, match_file_names
from pipelines.batch.model import BatchModel, load_model
from pipelines.batch.parts import PART_COLUMNS, segment_schema
from pipelines.batch.segment import DEFAULT_BATCH_SIZE, DEFAULT_PART_SIZE, SegmentInterrupted, SegmentSummary, segment
from pipelines.batch.worker import SegmentWorker

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_PART_SIZE",
    "PART_COLUMNS",
    "BatchModel",
    "EvaluationSummary",
    "SegmentInterrupted",
    "SegmentSummary",
    "SegmentWorker",
    "evaluate",
    "load_model",
    "match_file_names",
    "segment",
    "segment_schema",
]
