"""Dataset-level inference and COCO evaluation of a model in training (``evaluate_model``), and the
evaluation a training run makes (``run_evaluation``: COCO metrics, validation losses, the results records)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from mrcnn.data.categories import CategoryMap
from mrcnn.evaluation import evaluate_coco
from mrcnn.predictor import detections_to_records
from mrcnn.records import coco_result

Batches = Iterable[tuple[list[Tensor], list[dict[str, Any]]]]


@dataclass
class Evaluation:
    """One evaluation of a model on a validation set.

    Attributes:
        metrics: ``{iou_type: {"AP": float (percent), ..., "per_category": {...}}}`` as
            :func:`mrcnn.evaluation.evaluate_coco` gives it.
        losses: the validation losses, mean per image over the set: ``loss`` (their sum) and each
            ``loss_*`` of the model's forward with the ground truth in eval mode; empty when not computed.
        results: the COCO results records the metrics were computed from (``image_id``, ``category_id``,
            ``bbox`` XYWH, ``score``, ``segmentation`` RLE, ``keypoints``), every detection above the model's
            own score threshold (``box_head.score_thresh``, 0.05 in the presets).
    """

    metrics: dict[str, dict[str, Any]]
    losses: dict[str, float] = field(default_factory=dict)
    results: list[dict[str, Any]] = field(default_factory=list)


def _on_device(target: dict[str, Any], device: str | torch.device) -> dict[str, Any]:
    return {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in target.items()}


def _predict(
    model: nn.Module, batches: Batches, categories: CategoryMap, *, device: str | torch.device, mask_threshold: float,
    with_losses: bool,
) -> tuple[list[dict[str, Any]], dict[str, float]]:  # fmt: skip
    """(results records, mean losses per image or {}); one forward per batch, in eval mode."""
    model.eval()
    results: list[dict[str, Any]] = []
    loss_sums: dict[str, float] = {}
    num_images = 0
    for images, targets in batches:
        images = [img.to(device) for img in images]
        output = model(images, [_on_device(t, device) for t in targets]) if with_losses else model(images)
        if with_losses:
            num_images += len(images)
            for name, value in output.losses.items():  # each a mean over the batch: weight it by the batch's images
                loss_sums[name] = loss_sums.get(name, 0.0) + float(value) * len(images)
        for target, detection in zip(targets, output.detections):
            detection = {k: v.cpu() for k, v in detection.items()}
            for record in detections_to_records(detection, categories, mask_threshold=mask_threshold):
                results.append(coco_result(record, image_id=int(target["image_id"])))
    losses = {name: total / num_images for name, total in sorted(loss_sums.items())} if num_images else {}
    if losses:
        losses = {"loss": sum(losses.values()), **losses}
    return results, losses


@torch.no_grad()
def predict_coco_results(
    model: nn.Module,
    batches: Batches,
    categories: CategoryMap,
    *,
    device: str | torch.device = "cpu",
    mask_threshold: float = 0.5,
) -> list[dict[str, Any]]:
    """COCO results records for every image of ``batches`` (targets must carry ``image_id``).

    Leaves ``model`` in eval mode.
    """
    results, _ = _predict(model, batches, categories, device=device, mask_threshold=mask_threshold, with_losses=False)
    return results


def evaluate_model(
    model: nn.Module,
    batches: Batches,
    gt: Any,
    categories: CategoryMap,
    *,
    device: str | torch.device = "cpu",
    iou_types: Sequence[str] = ("bbox", "segm"),
) -> dict[str, dict[str, Any]]:
    """Predict every image of ``batches`` and evaluate against ``gt`` (COCO json path, dict or COCO).

    ``iou_types``: ``("bbox",)`` for a model without a mask branch (Faster R-CNN).

    Returns:
        ``{iou_type: {"AP": float (percent), "AP50": ..., "per_category": {...}}}`` as
        :func:`mrcnn.evaluation.evaluate_coco` gives it.
    """
    results = predict_coco_results(model, batches, categories, device=device)
    return evaluate_coco(gt, results, iou_types=iou_types)


@torch.no_grad()
def run_evaluation(
    model: nn.Module,
    batches: Batches,
    gt: Any,
    categories: CategoryMap,
    *,
    device: str | torch.device = "cpu",
    iou_types: Sequence[str] = ("bbox", "segm"),
    with_losses: bool = True,
) -> Evaluation:
    """Evaluate ``model`` on a validation set: COCO metrics and, in the same forward passes, the losses.

    Args:
        batches: ``(images, targets)``; targets carry ``image_id`` and, for the losses, the training
            targets (``boxes`` XYXY pixels, ``labels``, ``masks``, ``keypoints``) of every non-crowd instance.
        gt: the COCO ground truth of the same images (json path, dict or COCO).
        with_losses: compute the validation losses (the model's eval-mode forward with targets).

    Returns:
        An :class:`Evaluation`. Leaves ``model`` in eval mode.
    """
    results, losses = _predict(model, batches, categories, device=device, mask_threshold=0.5, with_losses=with_losses)
    return Evaluation(metrics=evaluate_coco(gt, results, iou_types=iou_types), losses=losses, results=results)
