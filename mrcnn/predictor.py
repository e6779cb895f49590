"""The predictor: images in, detections with RLE masks out. Batch segmentation and Serve both use it."""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mrcnn.checkpoint import Checkpoint, load_checkpoint
from mrcnn.config import Config
from mrcnn.data.categories import CategoryMap
from mrcnn.data.dataset import image_to_tensor
from mrcnn.data.images import load_image
from mrcnn.data.masks import masks_to_rles
from mrcnn.inference import optimize_for_inference
from mrcnn.modeling import MaskRCNN
from mrcnn.modeling.paste import paste_masks_binary
from mrcnn.postprocess import build_records, records_from_mask_probs
from mrcnn.thresholds import check_class_thresholds, stored_class_thresholds


def detections_to_records(
    detection: dict[str, Tensor],
    categories: CategoryMap,
    *,
    mask_threshold: float = 0.5,
    max_detections: int | None = None,
) -> list[dict[str, Any]]:
    """One image's model output as detection records (``mrcnn.records.DETECTION_FIELDS``), best first.

    Args:
        detection: ``boxes`` [D, 4] XYXY, ``scores`` [D], ``labels`` [D], optional ``masks``: either
            [D, 1, H, W] probabilities or [D, H, W] bool (already thresholded), optional ``keypoints``
            [D, K, 3] (x, y, v) and ``keypoints_scores`` [D, K]; all on the CPU.
        mask_threshold: probability at which a pixel belongs to the instance.
    """
    num = len(detection["scores"]) if max_detections is None else min(max_detections, len(detection["scores"]))
    boxes = detection["boxes"][:num].tolist()
    scores = detection["scores"][:num].tolist()
    labels = detection["labels"][:num].tolist()
    rles: list[dict[str, Any] | None] = [None] * num
    areas = [0.0] * num
    if "masks" in detection and num:
        masks = detection["masks"][:num]
        binary = masks if masks.dtype == torch.bool else masks[:, 0] >= mask_threshold  # [D, H, W]
        binary = binary.numpy()
        rles = masks_to_rles(binary)
        areas = binary.view(np.uint8).sum(axis=(1, 2), dtype=np.int64).astype(float).tolist()
    keypoints: list[list[float] | None] = [None] * num
    keypoint_scores: list[list[float] | None] = [None] * num
    if "keypoints" in detection:
        keypoints = detection["keypoints"][:num].flatten(start_dim=1).tolist()  # [D, 3K]
        keypoint_scores = detection["keypoints_scores"][:num].tolist()
    return build_records(
        categories,
        labels=labels,
        scores=scores,
        boxes=boxes,
        rles=rles,
        areas=areas,
        keypoints=keypoints,
        keypoint_scores=keypoint_scores,
    )


def _below(value: float) -> float:
    """The largest float32 below ``value``: the model drops scores at or below its threshold (``>``), so
    running it at this keeps every float32 score >= ``value``."""
    return float(np.nextafter(np.float32(value), np.float32(-np.inf)))


def _keep(detection: dict[str, Tensor], keep: Tensor) -> dict[str, Tensor]:
    """The detections where ``keep`` (bool [D]) is True; every value of ``detection`` is indexed by detection."""
    return {key: value[keep] for key, value in detection.items()}


class Predictor:
    """Runs a Mask R-CNN in eval mode and turns its output into detection records.

    Score thresholds. Each call keeps the detections that pass the thresholds in force:

    - by default, the per-class ``class_thresholds`` (``{category_id: score}``): a detection is kept when its
      score is >= its class's threshold; a class the map lacks uses ``score_threshold`` (also with >=);
    - without class thresholds (None or ``{}``), one global threshold, ``score_threshold``: a detection is
      kept when its score is > it (the model's own filter, as before class thresholds existed);
    - a call's ``score_threshold=`` sets one global threshold (score > it) and ignores the class thresholds;
    - a call's ``class_thresholds=`` replaces the predictor's for that call (``{}``: none, the global one only).

    With class thresholds the model runs at the lowest threshold in force, and its detection tensors are
    filtered per class before masks are pasted or encoded and before ``max_detections`` is applied.

    Args:
        model: the network (put into eval mode here).
        config: its config (for the record of what is served).
        categories: label <-> category id <-> name.
        device: where the model runs.
        score_threshold: the global class-score threshold (see above); inside the model, before the mask head.
        class_thresholds: per-class score thresholds ``{category_id: score}`` (see above); None or ``{}``: none.
        mask_threshold: mask probability at which a pixel belongs to the instance.
        autocast_dtype: run under ``torch.autocast`` with this dtype (e.g. torch.bfloat16 on a GPU).
        optimize: run a copy of the model rewritten for inference (``mrcnn.inference.optimize_for_inference``);
            same detections up to float rounding, faster. True: BatchNorm folded into the convolutions and
            channels-last. A mapping: ``optimize_for_inference``'s keyword arguments, e.g. ``{"winograd": True}``
            to add the Winograd 3x3s, which pay off only where the application has made malloc keep freed
            memory (``mrcnn.runtime.keep_freed_memory``; ``mrcnn predict``, segment and serve do both).
            ``model`` itself is left as it is (it can still be saved or trained). False: run ``model``
            exactly as given.

    Raises:
        ValueError: ``optimize`` names an option other than ``channels_last`` and ``winograd``;
            ``class_thresholds`` names a category the map lacks or a score outside [0, 1].

    The predictor changes nothing in the process (no malloc, thread or global settings).
    """

    def __init__(
        self,
        model: MaskRCNN,
        *,
        config: Config,
        categories: CategoryMap,
        device: str | torch.device = "cpu",
        score_threshold: float = 0.5,
        mask_threshold: float = 0.5,
        autocast_dtype: torch.dtype | None = None,
        metadata: dict[str, Any] | None = None,
        optimize: bool | Mapping[str, bool] = True,
        class_thresholds: Mapping[int, float] | None = None,
    ):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        # What predict runs: the model itself, or an optimized copy of it.
        self.inference_model = self.model
        if optimize is not False:
            options = {} if optimize is True else dict(optimize)
            unknown = sorted(set(options) - {"channels_last", "winograd"})
            if unknown:
                raise ValueError(f"Predictor(optimize=...): unknown option(s) {unknown}; expected channels_last, winograd")
            self.inference_model = optimize_for_inference(copy.deepcopy(self.model), **options)
        self.config = config
        self.categories = categories
        self.score_threshold = score_threshold
        self.class_thresholds = check_class_thresholds(class_thresholds or {}, categories, source="class_thresholds")
        self.mask_threshold = mask_threshold
        self.autocast_dtype = autocast_dtype
        self.metadata = dict(metadata or {})

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        *,
        arch: str | None = None,
        class_thresholds: Mapping[int, float] | None = None,
        **kwargs: Any,
    ) -> Predictor:
        """Load this project's checkpoint or a bare torchvision state dict (``arch`` names its preset).

        Args:
            class_thresholds: None: the per-class score thresholds the checkpoint stores (metadata
                ``thresholds``, see :func:`stored_class_thresholds`), if any; a mapping ``{category_id:
                score}`` replaces them (``{}``: none, the global ``score_threshold`` only).
            **kwargs: the other arguments of :class:`Predictor`.

        Raises:
            mrcnn.checkpoint.CheckpointError: a missing, unreadable or ill-fitting checkpoint.
            ValueError: stored or given thresholds that do not fit the category map.
        """
        checkpoint: Checkpoint = load_checkpoint(path, arch=arch)
        if class_thresholds is None:
            class_thresholds = stored_class_thresholds(checkpoint.metadata)
        return cls(
            checkpoint.build_model(),
            config=checkpoint.config,
            categories=checkpoint.categories,
            metadata={**checkpoint.metadata, "checkpoint": str(path), "source_format": checkpoint.source_format},
            class_thresholds=class_thresholds,
            **kwargs,
        )

    def thresholds_in_force(
        self, *, score_threshold: float | None = None, class_thresholds: Mapping[int, float] | None = None
    ) -> tuple[float, dict[int, float]]:
        """The thresholds a call with these arguments applies (see the class docstring).

        Returns:
            (global threshold, ``{category_id: score}``): with per-class thresholds the global one is that of
            the classes the map lacks (score >= it); with an empty map it is the one threshold (score > it).

        Raises:
            ValueError: ``class_thresholds`` does not fit the category map.
        """
        if score_threshold is not None:
            return float(score_threshold), {}
        if class_thresholds is not None:
            return float(self.score_threshold), check_class_thresholds(class_thresholds, self.categories, source="class_thresholds")
        return float(self.score_threshold), dict(self.class_thresholds)

    def describe_thresholds(self, **kwargs: Any) -> str:
        """One line saying which thresholds a call with ``kwargs`` (as :meth:`thresholds_in_force`) applies."""
        default, per_class = self.thresholds_in_force(**kwargs)
        if not per_class:
            return f"score threshold: global {default:g}"
        return f"score thresholds: per-class for {len(per_class)} classes (others {default:g})"

    def _plan(self, score_threshold: float | None, class_thresholds: Mapping[int, float] | None) -> tuple[float, Tensor | None]:
        """(the threshold to run the model at, per-label thresholds [K + 1] float32 or None for none)."""
        default, per_class = self.thresholds_in_force(score_threshold=score_threshold, class_thresholds=class_thresholds)
        if not per_class:
            return default, None
        per_label = torch.full((self.categories.num_classes + 1,), default, dtype=torch.float32)
        for category_id, threshold in per_class.items():
            per_label[self.categories.label_of(category_id)] = threshold
        return _below(float(per_label[1:].min())), per_label.to(self.device)

    def filter_detections(
        self,
        detection: dict[str, Tensor],
        *,
        score_threshold: float | None = None,
        class_thresholds: Mapping[int, float] | None = None,
    ) -> dict[str, Tensor]:
        """One image's detections (``predict_raw``'s dict, or the model's) that pass the thresholds in force
        for a call with these arguments (see the class docstring), in their order.

        For a caller that runs the model once at a lower threshold for several requests (Serve's batches):
        the model at :meth:`run_threshold` then this filter gives the detections the call itself would.
        """
        threshold, per_label = self._plan(score_threshold, class_thresholds)
        scores = detection["scores"]
        if per_label is None:
            return _keep(detection, scores > threshold)
        per_label = per_label.to(scores.device)
        return _keep(detection, scores >= per_label[detection["labels"]])

    def run_threshold(self, *, score_threshold: float | None = None, class_thresholds: Mapping[int, float] | None = None) -> float:
        """The score threshold the model runs at for a call with these arguments (the lowest in force)."""
        return self._plan(score_threshold, class_thresholds)[0]

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    @torch.inference_mode()
    def predict_raw(
        self,
        images: Sequence[np.ndarray],
        *,
        score_threshold: float | None = None,
        class_thresholds: Mapping[int, float] | None = None,
    ) -> list[dict[str, Tensor]]:
        """The model's detections for a batch of HxWx3 uint8 RGB images, on the CPU.

        Args:
            score_threshold: one global threshold for this call (scores above it are kept; class thresholds ignored).
            class_thresholds: ``{category_id: score}`` replacing the predictor's for this call (``{}``: none).

        Returns:
            per image: ``boxes`` [D, 4] XYXY, ``labels`` [D], ``scores`` [D], ``masks`` [D, H, W] bool, and
            for a keypoint model ``keypoints`` [D, K, 3] and ``keypoints_scores`` [D, K].
        """
        threshold, per_label = self._plan(score_threshold, class_thresholds)
        tensors = [image_to_tensor(img).to(self.device) for img in images]
        with self._autocast():
            if per_label is None:
                # Masks come back thresholded where they were computed (bool, pasted box by box).
                detections = self.inference_model(
                    tensors, mask_threshold=self.mask_threshold, score_threshold=threshold
                ).detections
            else:  # filter per class first, then paste only the masks that are kept (as the model would)
                detections = self.inference_model(tensors, score_threshold=threshold, paste_masks=False).detections
                detections = [self._paste(_keep(d, d["scores"] >= per_label[d["labels"]]), t) for d, t in zip(detections, tensors)]
        return [{k: v.float().cpu() if v.is_floating_point() else v.cpu() for k, v in d.items()} for d in detections]

    def _paste(self, detection: dict[str, Tensor], image: Tensor) -> dict[str, Tensor]:
        """``mask_probs`` [D, 1, M, M] -> ``masks`` [D, H, W] bool, as ``MaskRCNN(..., mask_threshold=...)`` pastes."""
        probs = detection.pop("mask_probs", None)
        if probs is not None:
            size = (image.shape[-2], image.shape[-1])
            detection["masks"] = paste_masks_binary(probs, detection["boxes"], size, threshold=self.mask_threshold)
        return detection

    def predict(
        self,
        images: Sequence[np.ndarray],
        *,
        score_threshold: float | None = None,
        class_thresholds: Mapping[int, float] | None = None,
        max_detections: int | None = None,
    ) -> list[list[dict[str, Any]]]:
        """Detections for each image, best first, as records (see ``mrcnn.records.DETECTION_FIELDS``).

        Args:
            images: HxWx3 uint8 RGB arrays (any sizes).
            score_threshold: one global threshold for this call (scores above it are kept; class thresholds ignored).
            class_thresholds: ``{category_id: score}`` replacing the predictor's for this call (``{}``: none).
            max_detections: keep at most this many per image (after the thresholds).

        Raises:
            ValueError: ``class_thresholds`` names a category the map lacks or a score outside [0, 1].
        """
        threshold, per_label = self._plan(score_threshold, class_thresholds)
        with torch.inference_mode():
            tensors = [image_to_tensor(img).to(self.device) for img in images]
            with self._autocast():
                # Masks stay unpasted: mrcnn.postprocess pastes each box's crop on the device and encodes
                # the RLE from the crops (same records as pasting full-size masks, far less to copy and scan).
                detections = self.inference_model(tensors, score_threshold=threshold, paste_masks=False).detections
                if per_label is not None:
                    detections = [_keep(d, d["scores"] >= per_label[d["labels"]]) for d in detections]
                return [
                    records_from_mask_probs(
                        detection,
                        self.categories,
                        (image.shape[-2], image.shape[-1]),
                        mask_threshold=self.mask_threshold,
                        max_detections=max_detections,
                    )
                    for detection, image in zip(detections, tensors)
                ]

    def predict_each(
        self,
        images: Sequence[np.ndarray],
        *,
        batch_size: int | None = None,
        raw: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        """``predict`` (or ``predict_raw`` with ``raw=True``) per image, where one bad image fails only itself.

        The images run ``batch_size`` at a time (all at once by default). If a forward pass raises, its images
        run again one at a time, and an image that fails alone gets its exception in its place.

        Args:
            images: HxWx3 uint8 RGB arrays (any sizes).
            batch_size: images per forward pass; None for one pass over all of them.
            raw: return ``predict_raw``'s tensor dicts instead of records.
            **kwargs: passed on to ``predict`` or ``predict_raw`` (``score_threshold``, ``class_thresholds``,
                ``max_detections``).

        Returns:
            one entry per image, in order: its records (``predict``) or tensor dict (``predict_raw``), or the
            ``Exception`` its image raised when run alone.
        """
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        run = self.predict_raw if raw else self.predict
        step = batch_size or max(1, len(images))
        results: list[Any] = []
        for start in range(0, len(images), step):
            chunk = images[start : start + step]
            try:
                results.extend(run(chunk, **kwargs))
            except Exception as exc:  # noqa: BLE001 -- a model error on one image must not fail the others
                if len(chunk) == 1:
                    results.append(exc)
                    continue
                for image in chunk:  # find the image that breaks the model: only it fails
                    try:
                        results.extend(run([image], **kwargs))
                    except Exception as single_exc:  # noqa: BLE001 -- that image's result
                        results.append(single_exc)
        return results

    def predict_files(self, paths: Sequence[str | os.PathLike], **kwargs: Any) -> list[list[dict[str, Any]]]:
        """``predict`` on image files (decoded with EXIF orientation, any mode -> RGB); ``kwargs`` as ``predict``'s."""
        return self.predict([load_image(Path(p)) for p in paths], **kwargs)
