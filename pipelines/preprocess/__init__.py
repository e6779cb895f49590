"""Preprocessing with Ray Data: COCO json + images -> validated Parquet shards.

For each split::

    OUT/categories.json                      CategoryMap.save_json format, one per dataset
    OUT/<split>/part-KKKKK-of-NNNNN.parquet  rows with exactly mrcnn.records.SHARD_COLUMNS
    OUT/<split>/rejects.jsonl                one json per reject: image_id, annotation_id, file, reason, message
    OUT/<split>/_summary.json                rows, rejects by reason, images/s, shard paths

How the work is split:

- the driver reads the json and validates it with :func:`mrcnn.data.coco.load_coco`
  (``check_files=False``: ids, categories, boxes, polygons/RLE -> canonical RLE). That is
  json-sized; no image bytes ever reach the driver;
- Ray tasks (``map_batches`` over image records, ``batch_size`` images at a time) read each
  image's bytes through pyarrow.fs, decode it fully (:func:`mrcnn.data.images.decode_image`),
  and reject a missing file (``missing_image_file``), an undecodable or truncated one
  (``unreadable_image``) and one whose size differs from the json (``image_size_mismatch``);
- the same tasks write the shard files (a Ray Data datasink fused with the map), one row
  group per batch, and send only the reject records back to the driver.

The package's modules: :mod:`~pipelines.preprocess.splits` finds a dataset root's splits,
:mod:`~pipelines.preprocess.tasks` holds the tasks' work and the shard plan, :mod:`~pipelines.preprocess.writer`
the datasink and the staging folder, :mod:`~pipelines.preprocess.summary` the summary and report files,
:mod:`~pipelines.preprocess.driver` the two entry points.

Each shard is one contiguous range of the json's images, processed by one task, so the
number of files is exactly ``num_shards``, and memory is bounded by the shards in flight
(about ``rows_per_shard`` encoded images per running task), not by the dataset.

Bad records are rejected with the reason codes of :mod:`mrcnn.data.coco` and never stop the
job; an image with a bad annotation keeps its other annotations. Ids (image, annotation, category)
are int64 throughout.

A split is written into a staging folder ``OUT/_staging-<split>-*`` and moved into ``OUT/<split>``
when complete, ``OUT/categories.json`` last: a run that fails leaves ``OUT`` as it was. Inputs and outputs are local
paths or pyarrow filesystem URIs (``s3://bucket/prefix``).
"""

from pipelines.preprocess.driver import preprocess_coco, preprocess_dataset
from pipelines.preprocess.splits import find_coco_splits
from pipelines.preprocess.summary import PreprocessSummary
from pipelines.preprocess.tasks import DEFAULT_BATCH_SIZE, DEFAULT_ROWS_PER_SHARD, read_and_check_images

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_ROWS_PER_SHARD",
    "PreprocessSummary",
    "find_coco_splits",
    "preprocess_coco",
    "preprocess_dataset",
    "read_and_check_images",
]
