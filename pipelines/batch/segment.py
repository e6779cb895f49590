"""Batch segmentation with Ray Data: a folder of images or a Parquet shard set -> detections.

``mrcnn segment --model URI --input DIR|SHARDS --out OUT`` writes::

    OUT/_segment.json            what the folder holds: input, model (URI and sha256), options
    OUT/_parts/part-<h>.parquet  one file per batch of images, rows of PART_COLUMNS (written as tmp + rename)
    OUT/results.json             COCO results json, the records `mrcnn predict` writes (--format coco|both)
    OUT/detections.parquet       one row per image, mrcnn.records.SEGMENT_COLUMNS (--format parquet|both)
    OUT/overlays/<name>.png      masks drawn over each image (--overlays)
    OUT/rejects.jsonl            one json per skipped image: key, file, image_id, reason, message
    OUT/_summary.json            counts, rejects by reason, images/s, output paths

How the work is split:

- the driver lists the input. For a folder it lists image files recursively, by suffix,
  skipping hidden entries and ``OUT``. For a shard set (``OUT/<split>`` of ``mrcnn preprocess``)
  it reads the ``image_id`` and ``file_name`` columns: one work item per row (file, row group,
  row). It also reads the keys of the part files already written. It never reads image bytes;
- a ``map_batches`` over an actor pool (``ActorPoolStrategy``) does the work: one
  :class:`SegmentWorker` per actor, each with one :class:`mrcnn.predictor.Predictor` loaded once
  in ``__init__``, and a GPU per actor with ``gpu=True``. Each call takes ``part_size`` images. It
  reads and decodes them, runs the model ``batch_size`` images per forward pass, writes the
  overlays, then writes one part file, and returns one small status row per image;
- the driver streams those rows for progress. At the end it assembles ``results.json``,
  ``detections.parquet`` and ``rejects.jsonl`` from the part files, one part at a time.

Bad images never fail a batch. An image that cannot be read or decoded is recorded with its
reason (the codes of :class:`mrcnn.data.images.ImageDecodeError`, plus ``read_error`` and
``inference_error``), and the rest of its batch goes on.

Resume: a part file is only there when it is complete. Its name is a hash of its image keys, so
a retried batch overwrites its own file. A re-run over the same ``OUT`` first drops the images
that a part file already holds, so a crashed run loses at most the batches in flight. Images
rejected for a reason that may pass (``RETRIED_REASONS``: I/O and model errors) are tried again,
and with ``retry_rejects`` every rejected image is. Outputs keep one row per image even if two
parts hold it, and a result wins over a reject. ``OUT/_segment.json`` records the input, the model's sha256 and the
options that change results. A re-run with different ones is refused unless ``overwrite=True``.

Paths may be local or pyarrow filesystem URIs (``s3://``); the model is sent to the actors
through the object store, so workers on other nodes need no access to it.

The package: :mod:`~pipelines.batch.inputs` (listing the input), :mod:`~pipelines.batch.worker` (the actor),
:mod:`~pipelines.batch.parts` (part files, manifest, resume, outputs), :mod:`~pipelines.batch.model`
(the checkpoint, loaded once on the driver), this driver, and :mod:`~pipelines.batch.evaluate`.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from pipelines.batch.inputs import _build_dataset, _Input, _open_input
from pipelines.batch.model import BatchModel, load_model
from pipelines.batch.parts import (
    OK,
    OVERLAYS_DIR,
    SUMMARY_FILE,
    _assemble,
    _done_keys,
    _manifest,
    _prepare_out,
)
from pipelines.batch.worker import DEFAULT_BATCH_SIZE, SegmentWorker
from pipelines.common.progress import StageLog
from pipelines.common.session import ray_session
from pipelines.common.storage import display_path, join_path, resolve_path, write_atomic

__all__ = ["DEFAULT_BATCH_SIZE", "DEFAULT_PART_SIZE", "SegmentInterrupted", "SegmentSummary", "segment"]

DEFAULT_PART_SIZE = 32  # images per map_batches call, and per part file
DEFAULT_SCORE_THRESHOLD = 0.5  # the global threshold where none is given (mrcnn.Predictor's default)
FORMATS = ("coco", "parquet", "both")


class SegmentInterrupted(RuntimeError):
    """Raised by the ``fail_after_parts`` test hook: the run stops as a crashed driver would."""


# ---------------------------------------------------------------- summary
@dataclass(frozen=True)
class SegmentSummary:
    """What one ``segment`` run did, and what ``OUT`` now holds.

    Attributes:
        input (str): the input folder or shard set, as given.
        input_kind (str): ``"images"`` or ``"shards"``.
        out_dir (str): the output folder.
        model_uri (str): the model URI, as given.
        model_sha256 (str): hash of the checkpoint file.
        num_inputs (int): images in the input (files with an image suffix, or shard rows).
        num_ignored_files (int): files of a folder input without an image suffix (not read).
        num_already_done (int): images with results from an earlier run, not processed again.
        num_processed (int): images this run gave results for.
        num_rejected_now (int): images this run skipped (unreadable, ...).
        num_results (int): images with results in the outputs (all runs).
        num_detections (int): detections in the outputs.
        rejects_by_reason (dict[str, int]): skipped images in the outputs, by reason.
        duplicates_dropped (int): extra results for an image found in the part files and left out
            of the outputs (a batch that a crashed run's last actors finished while the next run
            redid it). Older rejects that a later result or reject replaced are not counted.
        outputs (dict[str, str]): ``results``, ``detections``, ``rejects``, ``summary``, ``overlays`` paths.
        seconds (float): wall time of the whole run.
        pipeline_seconds (float): wall time of the Ray Data pipeline alone (0 when nothing was left to do).
    """

    input: str
    input_kind: str
    out_dir: str
    model_uri: str
    model_sha256: str
    num_inputs: int
    num_ignored_files: int
    num_already_done: int
    num_processed: int
    num_rejected_now: int
    num_results: int
    num_detections: int
    rejects_by_reason: dict[str, int] = field(repr=False)
    duplicates_dropped: int = 0
    outputs: dict[str, str] = field(default_factory=dict, repr=False)
    seconds: float = 0.0
    pipeline_seconds: float = 0.0

    @property
    def num_rejects(self) -> int:
        return sum(self.rejects_by_reason.values())

    @property
    def images_per_second(self) -> float:
        """Images handled by this run's pipeline (results and rejects) per second of its wall time."""
        done = self.num_processed + self.num_rejected_now
        return done / self.pipeline_seconds if self.pipeline_seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """The ``_summary.json`` object: the fields from ``input`` to ``num_detections`` as they are, then
        ``num_rejects``, ``rejects`` (by reason), ``duplicates_dropped``, ``outputs`` and the times (s, 3 decimals)."""
        counts = {f.name: getattr(self, f.name) for f in fields(self)[:_NUM_PLAIN_FIELDS]}
        return counts | {
            "num_rejects": self.num_rejects,
            "rejects": dict(self.rejects_by_reason),
            "duplicates_dropped": self.duplicates_dropped,
            "outputs": dict(self.outputs),
            "seconds": round(self.seconds, 3),
            "pipeline_seconds": round(self.pipeline_seconds, 3),
            "images_per_second": round(self.images_per_second, 3),
        }

    def format(self) -> str:
        """A few human lines: counts, rejects by reason, output paths."""
        lines = [
            (
                f"segment: {self.num_results} of {self.num_inputs} images have results ({self.num_detections} "
                f"detections); this run: {self.num_processed} processed, {self.num_rejected_now} skipped, "
                f"{self.num_already_done} already done; {self.seconds:.1f} s ({self.images_per_second:.2f} images/s)"
            )
        ]
        if self.num_ignored_files:
            lines.append(f"  ignored {self.num_ignored_files} file(s) without an image suffix")
        for reason, count in self.rejects_by_reason.items():
            lines.append(f"  skipped {reason}: {count}")
        for name, path in self.outputs.items():
            lines.append(f"  {name + ':':<12}{path}")
        return "\n".join(lines)


_NUM_PLAIN_FIELDS = [f.name for f in fields(SegmentSummary)].index("rejects_by_reason")  # input .. num_detections


# ---------------------------------------------------------------- driver
def _check_options(*, workers, batch_size, part_size, score_threshold, mask_threshold, output_format, cpus_per_worker):
    for name, value in (("workers", workers), ("batch_size", batch_size), ("part_size", part_size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
            raise ValueError(f"{name}: expected a positive int, got {value!r}")
    for name, value in (("score_threshold", score_threshold), ("mask_threshold", mask_threshold)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name}: expected a value in [0, 1], got {value!r}")
    if output_format not in FORMATS:
        raise ValueError(f"format: expected one of {', '.join(FORMATS)}, got {output_format!r}")
    if cpus_per_worker is not None and cpus_per_worker <= 0:
        raise ValueError(f"cpus_per_worker: expected a positive number, got {cpus_per_worker!r}")


def _default_workers(gpu: bool, cpus_per_worker: float) -> int:
    """One actor per GPU; on CPU as many as the cluster's CPUs hold."""
    import ray

    resources = ray.cluster_resources()
    if gpu:
        num_gpus = int(resources.get("GPU", 0))
        if num_gpus < 1:
            raise ValueError(
                "--gpu: the Ray cluster has no GPUs now; give --workers N to wait for N GPU workers "
                "(an autoscaling cluster starts them)"
            )
        return num_gpus
    return max(1, int(resources.get("CPU", 1) // cpus_per_worker))


_log = StageLog("segment", prefix="segment: ")

def segment(
    *,
    model: str | os.PathLike | BatchModel,
    input: str | os.PathLike,
    out: str | os.PathLike,
    workers: int | None = None,
    gpu: bool = False,
    overlays: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    part_size: int = DEFAULT_PART_SIZE,
    score_threshold: float | None = None,
    mask_threshold: float = 0.5,
    class_thresholds: Mapping[int, float] | None = None,
    output_format: str = "both",
    overwrite: bool = False,
    retry_rejects: bool = False,
    cpus_per_worker: float | None = None,
    tracking_uri: str | None = None,
    ray_address: str | None = None,
    progress: bool = True,
    fail_after_parts: int | None = None,
) -> SegmentSummary:
    """Segment every image of a folder (recursively) or of a Parquet shard set with an actor pool.

    Args:
        model: anything :func:`pipelines.tracking.resolve_model_uri` takes (``models:/NAME@best``,
            ``runs:/ID/path``, a local checkpoint file, ...), or a :class:`~pipelines.batch.model.BatchModel`
            a caller has loaded already (as :func:`pipelines.batch.evaluate.evaluate` does).
        input: a folder of images (searched recursively for image suffixes), or a shard folder
            ``OUT/<split>`` written by ``mrcnn preprocess`` (path or URI).
        out: the output folder (path or URI); a re-run over it resumes (see the module docstring).
        workers (int | None): actors, each with one model. Default: one per GPU with ``gpu``, else
            the cluster's CPUs over ``cpus_per_worker``; never more than there are parts to do.
        gpu (bool): one GPU per actor, the model on ``cuda``.
        overlays (bool): write ``OUT/overlays/*.png`` with the masks drawn.
        batch_size (int): images per forward pass.
        part_size (int): images per actor call and per part file: larger amortises Ray's per-task
            overhead, smaller loses less work in a crash.
        score_threshold (float | None): one global class-score threshold (detections scoring above it are kept),
            the class thresholds then off; None: the class thresholds, and 0.5 for classes without one.
        mask_threshold (float): as ``mrcnn predict`` (0.5).
        class_thresholds (Mapping[int, float] | None): per-class score thresholds ``{category_id: score}``
            (kept when score >= it); None: those stored with the model (:attr:`BatchModel.class_thresholds`),
            ``{}``: none. Ignored with a ``score_threshold``.
        output_format (str): ``"coco"`` (results.json), ``"parquet"`` (detections.parquet) or ``"both"``.
        overwrite (bool): discard what ``out`` holds instead of resuming.
        retry_rejects (bool): on a re-run, try every image rejected before again; by default only
            those rejected for a reason that may pass (``RETRIED_REASONS``: I/O and model errors).
        cpus_per_worker (float | None): CPUs per actor (and torch threads on CPU); default 1.
        tracking_uri (str | None): MLflow store for ``models:/`` and ``runs:/`` URIs (default
            ``MLFLOW_TRACKING_URI``).
        ray_address (str | None): Ray cluster; default ``RAY_ADDRESS``, else a local Ray. A
            connected Ray is used as is.
        progress (bool): Ray Data's progress bars and progress lines on stderr.
        fail_after_parts (int | None): test hook: raise :class:`SegmentInterrupted` once this many
            part files are reported, as a crash of the driver would stop the run.

    Returns:
        SegmentSummary: also written to ``OUT/_summary.json``.

    Raises:
        FileNotFoundError: the input holds no images or shard files.
        ValueError: bad options, a bad model URI, or ``out`` holding another run's results.
    """
    start = time.perf_counter()
    _check_options(workers=workers, batch_size=batch_size, part_size=part_size,
                   score_threshold=DEFAULT_SCORE_THRESHOLD if score_threshold is None else score_threshold,
                   mask_threshold=mask_threshold, output_format=output_format, cpus_per_worker=cpus_per_worker)  # fmt: skip
    out_fs, out_root = resolve_path(out)
    shown_out = os.fspath(out).rstrip("/") or os.fspath(out)
    inp = _open_input(input, out_fs, out_root)
    loaded = load_model(model, tracking_uri)
    score_threshold, class_thresholds = _thresholds_in_force(loaded, score_threshold, class_thresholds)
    manifest = _manifest(inp, loaded.uri, loaded.sha256, score_threshold, mask_threshold, overlays, class_thresholds)
    out_fs.create_dir(out_root, recursive=True)
    _prepare_out(out_fs, out_root, shown_out, manifest, overwrite)

    done = _done_keys(out_fs, out_root, retry_rejects=retry_rejects)
    keys = inp.keys
    num_already_done = sum(1 for key in keys if key in done)
    statuses: Counter = Counter()
    pipeline_seconds = 0.0
    todo = len(keys) - num_already_done
    if progress:
        _log(f"{len(keys)} images in {inp.shown} ({inp.kind}); {num_already_done} already done; {todo} to do")
        _log(f"score thresholds: per-class for {len(class_thresholds)} classes (others {score_threshold:g})"
             if class_thresholds else f"score threshold: global {score_threshold:g}")  # fmt: skip
    if todo:
        worker_kwargs = {
            "device": "cuda" if gpu else "cpu",
            "num_threads": None if gpu else max(1, int(cpus_per_worker or 1.0)),
            "score_threshold": score_threshold,
            "mask_threshold": mask_threshold,
            "class_thresholds": class_thresholds,
            "batch_size": batch_size,
            "out": display_path(out, out_fs, out_root),
            "overlays": overlays,
        }
        with ray_session(ray_address):
            statuses, pipeline_seconds = _run_pipeline(
                inp, done, loaded, worker_kwargs, workers=workers, gpu=gpu, cpus=cpus_per_worker or 1.0,
                part_size=part_size, progress=progress, fail_after_parts=fail_after_parts,
            )  # fmt: skip

    assembled = _assemble(out_fs, out_root, shown_out, output_format)
    outputs = dict(assembled.pop("outputs"))
    if overlays:
        outputs["overlays"] = f"{shown_out}/{OVERLAYS_DIR}"
    outputs["summary"] = f"{shown_out}/{SUMMARY_FILE}"
    summary = SegmentSummary(
        input=inp.shown,
        input_kind=inp.kind,
        out_dir=shown_out,
        model_uri=loaded.uri,
        model_sha256=loaded.sha256,
        num_inputs=len(keys),
        num_ignored_files=inp.num_ignored_files,
        num_already_done=num_already_done,
        num_processed=statuses[OK],
        num_rejected_now=sum(statuses.values()) - statuses[OK],
        outputs=outputs,
        seconds=time.perf_counter() - start,
        pipeline_seconds=pipeline_seconds,
        **assembled,
    )
    write_atomic(join_path(out_root, SUMMARY_FILE), json.dumps(summary.to_dict(), indent=1) + "\n", fs=out_fs)
    return summary


def _thresholds_in_force(model: BatchModel, score_threshold: float | None,
                         class_thresholds: Mapping[int, float] | None) -> tuple[float, dict[int, float]]:  # fmt: skip
    """(global threshold, ``{category_id: score}``) a run applies: a given ``score_threshold`` alone; else the
    given class thresholds, or the model's stored ones, with the default global threshold for the others.

    Raises:
        ValueError: class thresholds naming a category the model lacks, or a score outside [0, 1].
    """
    from mrcnn.thresholds import check_class_thresholds

    if score_threshold is not None:
        return float(score_threshold), {}
    if class_thresholds is None:
        return DEFAULT_SCORE_THRESHOLD, dict(model.class_thresholds)
    return DEFAULT_SCORE_THRESHOLD, check_class_thresholds(class_thresholds, model.categories, source="class_thresholds")


def _run_pipeline(
    inp: _Input, done: set[str], model: BatchModel, worker_kwargs: dict[str, Any], *, workers: int | None, gpu: bool,
    cpus: float, part_size: int, progress: bool, fail_after_parts: int | None,
) -> tuple[Counter, float]:  # fmt: skip
    """Run the actor pool over the images not ``done`` (in a connected Ray).

    Returns:
        (statuses, seconds): images by status (``"ok"`` or the reject reason), and the pipeline's wall time.
    """
    import ray

    dataset, todo = _build_dataset(inp, done, part_size)
    num_workers = min(workers or _default_workers(gpu, cpus), -(-todo // part_size))
    checkpoint_ref = ray.put(model.data)
    dataset = dataset.map_batches(
        SegmentWorker,
        batch_size=part_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=num_workers),
        num_cpus=cpus,
        num_gpus=1 if gpu else None,
        fn_constructor_kwargs={"checkpoint": checkpoint_ref, **worker_kwargs},
    )
    if progress:
        _log(f"{num_workers} worker(s) ({'1 GPU' if gpu else f'{cpus:g} CPU'} each), {part_size} images per part")
    context = ray.data.DataContext.get_current()
    previous_bars = context.enable_progress_bars
    context.enable_progress_bars = progress and previous_bars
    pipeline_start = time.perf_counter()
    try:
        statuses = _stream_statuses(dataset, todo, progress=progress, fail_after_parts=fail_after_parts)
    finally:
        context.enable_progress_bars = previous_bars
        del checkpoint_ref
    return statuses, time.perf_counter() - pipeline_start


def _stream_statuses(dataset, todo: int, *, progress: bool, fail_after_parts: int | None) -> Counter:
    """Count the workers' status rows as they come, with a progress line every 10 s and at the end.

    Raises:
        SegmentInterrupted: ``fail_after_parts`` part files were reported.
    """
    statuses: Counter = Counter()
    parts_seen: set[str] = set()
    pipeline_start = last_report = time.perf_counter()
    for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
        statuses.update(batch.column("status").to_pylist())
        parts_seen.update(batch.column("part").to_pylist())
        now = time.perf_counter()
        handled = sum(statuses.values())
        if progress and (now - last_report > 10 or handled == todo):
            last_report = now
            rate = handled / (now - pipeline_start)
            _log(f"{handled}/{todo} images ({handled - statuses[OK]} skipped), {rate:.2f} images/s")
        if fail_after_parts is not None and len(parts_seen) >= fail_after_parts:
            raise SegmentInterrupted(f"stopped after {len(parts_seen)} part file(s) (fail_after_parts={fail_after_parts})")
    return statuses
