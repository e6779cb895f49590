"""Dataset-level inference and COCO evaluation of a model in training (``evaluate_model``)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mrcnn.data.categories import CategoryMap
from mrcnn.evaluation import evaluate_coco
from mrcnn.predictor import detections_to_records
from mrcnn.records import coco_result


@torch.no_grad()
def predict_coco_results(
    model: nn.Module,
    batches: Iterable[tuple[list[Tensor], list[dict[str, Any]]]],
    categories: CategoryMap,
    *,
    device: str | torch.device = "cpu",
    mask_threshold: float = 0.5,
) -> list[dict[str, Any]]:
    """COCO results records for every image of ``batches`` (targets must carry ``image_id``).

    Leaves ``model`` in eval mode.
    """
    model.eval()
    results: list[dict[str, Any]] = []
    for images, targets in batches:
        detections = model([img.to(device) for img in images]).detections
        for target, detection in zip(targets, detections):
            detection = {k: v.cpu() for k, v in detection.items()}
            for record in detections_to_records(detection, categories, mask_threshold=mask_threshold):
                results.append(coco_result(record, image_id=int(target["image_id"])))
    return results


def evaluate_model(
    model: nn.Module,
    batches: Iterable[tuple[list[Tensor], list[dict[str, Any]]]],
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
