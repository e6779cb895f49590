"""The model layer of a replica: :class:`SegmentationModel` loads the model once and batches requests.

It knows nothing of HTTP; :mod:`pipelines.serve.app` binds the routes (:mod:`pipelines.serve.api`)
onto it as the Serve deployment ``SegmentationService``.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray import serve

from pipelines.serve.config import ServeConfig

if TYPE_CHECKING:
    import numpy as np


class BatchStats:
    """What one replica has served: requests, forward passes, and how many images each pass held."""

    def __init__(self) -> None:
        self.batch_sizes: Counter[int] = Counter()
        self.errors: Counter[str] = Counter()
        self.requests = 0
        self.started = time.time()

    def record_batch(self, size: int) -> None:
        self.batch_sizes[size] += 1

    def snapshot(self) -> dict[str, Any]:
        """``GET /v1/stats``'s counters: requests, batches, images, batch sizes, errors by code, uptime."""
        batches = sum(self.batch_sizes.values())
        images = sum(size * count for size, count in self.batch_sizes.items())
        return {
            "requests": self.requests,
            "batches": batches,
            "images": images,
            "mean_batch_size": images / batches if batches else None,
            "max_batch_size": max(self.batch_sizes, default=0),
            "batch_sizes": {str(size): count for size, count in sorted(self.batch_sizes.items())},
            "errors": dict(self.errors),
            "uptime_s": round(time.time() - self.started, 3),
        }


@dataclass
class Job:
    """One image waiting for a forward pass.

    Attributes:
        image: np.ndarray[H, W, 3] uint8 RGB.
        score_threshold: the request's one global class-score threshold, or None.
        class_thresholds: the request's ``{category_id: score}`` (``{}``: none), or None: the served model's.
    """

    image: np.ndarray
    score_threshold: float | None = None
    class_thresholds: dict[int, float] | None = None

    @property
    def thresholds(self) -> dict[str, Any]:
        """The keyword arguments of ``Predictor.filter_detections`` / ``run_threshold`` for this job."""
        return {"score_threshold": self.score_threshold, "class_thresholds": self.class_thresholds}


class SegmentationModel:
    """A replica's model, batch queue and counters (loaded here, in the constructor, never at import).

    Args:
        config: ``ServeConfig.to_dict()``.

    Attributes:
        config (ServeConfig): the deployment's configuration.
        predictor (mrcnn.predictor.Predictor): the model, on ``cuda`` with ``gpu`` else the CPU, with the
            per-class score thresholds stored with it (the MLflow Model's ``thresholds.json``, else the
            checkpoint's metadata), or one global threshold where the config gives ``score_threshold``.
        model_info (dict): ``GET /v1/model``'s description of the model (URI, registry, AP, categories,
            ``class_thresholds`` in force ``{"category_id": score}``).
        stats (BatchStats): this replica's counters.
        replica (dict): ``{"id": Serve's replica id or None, "actor": the Ray actor's name}``.
    """

    def __init__(self, config: dict[str, Any]):
        import torch

        from mrcnn import runtime
        from mrcnn.predictor import Predictor
        from pipelines.tracking import describe_model, model_thresholds, resolve_model_uri

        self.config = ServeConfig.from_dict(config)
        if not self.config.gpu:
            torch.set_num_threads(max(1, int(self.config.cpus_per_replica)))
        # The replica's process, the replica's choice (mrcnn.runtime): on a CPU malloc keeps freed memory,
        # which is also what makes the Winograd 3x3s pay off.
        winograd = not self.config.gpu and runtime.keep_freed_memory()
        checkpoint = resolve_model_uri(self.config.model, tracking_uri=self.config.tracking_uri)
        # One global threshold where the config gives one; else the stored per-class ones (None: the checkpoint's).
        stored = {} if self.config.score_threshold is not None else model_thresholds(checkpoint)
        self.predictor = Predictor.from_checkpoint(
            checkpoint, device="cuda" if self.config.gpu else "cpu", class_thresholds=stored,
            optimize={"winograd": winograd},
            **({} if self.config.score_threshold is None else {"score_threshold": self.config.score_threshold}),
        )
        self.model_info = self._describe(describe_model, checkpoint)
        self.stats = BatchStats()
        self._predict_batch.set_max_batch_size(self.config.max_batch_size)
        self._predict_batch.set_batch_wait_timeout_s(self.config.batch_wait_timeout_s)
        self.replica = self._replica_names()

    def _describe(self, describe_model, checkpoint: Path) -> dict[str, Any]:
        """URI, registry name/version/alias, run, segm AP (registry tag, else the checkpoint's metadata)."""
        try:
            info = describe_model(self.config.model, tracking_uri=self.config.tracking_uri)
        except Exception as exc:  # noqa: BLE001 - the model is loaded; a failed registry lookup must not stop serving
            info = {"uri": self.config.model, "describe_error": str(exc).splitlines()[0][:300]}
        if info.get("segm_AP") is None:
            info["segm_AP"] = self.predictor.metadata.get("segm_AP")
        categories = self.predictor.categories
        info.update(
            checkpoint=checkpoint.name,
            preset=self.predictor.config.name,
            task=self.predictor.config.model.task,
            num_classes=categories.num_classes,
            categories=categories.to_list(),  # keypoint categories also name their keypoints and skeleton
            class_thresholds={str(c): t for c, t in sorted(self.predictor.class_thresholds.items())},
        )
        return info

    @staticmethod
    def _replica_names() -> dict[str, str | None]:
        import ray

        try:
            context = serve.get_replica_context()
            replica_id = context.replica_id.unique_id
        except Exception:  # noqa: BLE001 - not inside a Serve replica
            replica_id = None
        return {"id": replica_id, "actor": ray.get_runtime_context().get_actor_name()}

    async def predict(self, job: Job) -> tuple[dict[str, Any] | Exception, int]:
        """One image's detections, computed in a batch with the requests queued beside it.

        Returns:
            (detections, batch_size): ``predict_raw``'s dict for this image (its boxes, scores, labels,
            masks, keypoints above the job's threshold), or the exception its image raised; and how
            many images the forward pass held.
        """
        return await self._predict_batch(job)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05)
    async def _predict_batch(self, jobs: list[Job]) -> list[Any]:
        """Batched by Serve: one forward pass for every queued image (off the event loop)."""
        self.stats.record_batch(len(jobs))
        results = await asyncio.to_thread(self._predict_jobs, jobs)
        return [(result, len(jobs)) for result in results]

    def _predict_jobs(self, jobs: list[Job]) -> list[Any]:
        """The model's detections per job (``predict_raw`` dicts), or the exception its image raised.

        The model runs at the batch's lowest threshold and each job keeps what its own thresholds keep
        (``Predictor.filter_detections``: a global one, or per-class ones), which gives the same detections
        as running it alone. If the batch fails, each image runs alone, so one bad image fails only its own
        request.
        """
        threshold = min(self.predictor.run_threshold(**job.thresholds) for job in jobs)
        raw = self.predictor.predict_each([job.image for job in jobs], raw=True, score_threshold=threshold)
        return [
            detection if isinstance(detection, Exception) else self.predictor.filter_detections(detection, **job.thresholds)
            for detection, job in zip(raw, jobs)
        ]
