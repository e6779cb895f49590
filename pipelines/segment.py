"""``mrcnn segment``: re-exported from :mod:`pipelines.batch` (the driver is :mod:`pipelines.batch.segment`)."""

from pipelines.batch.segment import DEFAULT_BATCH_SIZE, DEFAULT_PART_SIZE, SegmentInterrupted, SegmentSummary, segment

__all__ = ["DEFAULT_BATCH_SIZE", "DEFAULT_PART_SIZE", "SegmentInterrupted", "SegmentSummary", "segment"]
