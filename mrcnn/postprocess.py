"""Detections to records on the model's device: masks pasted and thresholded there, RLE from box crops.

The predictor's fast path. Per image, two copies to the host: the boxes, scores, labels, integer paste boxes
(and keypoints) as one float64 block; then, of the packed thresholded crops
(``mrcnn.modeling.paste.paste_mask_crops``), only the positions where they change value, from which
``mrcnn.data.mask_crops.crop_changes_to_rles`` builds the RLE. No full-size mask is made. The records are
identical to ``mrcnn.predictor.detections_to_records`` on the full-size masks of ``paste_masks_binary``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from mrcnn.data.categories import CategoryMap
from mrcnn.data.mask_crops import crop_changes_to_rles
from mrcnn.modeling.paste import expanded_int_boxes, paste_mask_crops
from mrcnn.records import detection_record


def build_records(
    categories: CategoryMap,
    *,
    labels: Sequence[int],
    scores: Sequence[float],
    boxes: Sequence[Sequence[float]],
    rles: Sequence[dict[str, Any] | None],
    areas: Sequence[float],
    keypoints: Sequence[Sequence[float] | None],
    keypoint_scores: Sequence[Sequence[float] | None],
) -> list[dict[str, Any]]:
    """Detection records (``mrcnn.records.DETECTION_FIELDS``) from per-detection host values, in order.

    Args:
        labels, scores, boxes (XYXY pixels), rles (COCO RLE or None), areas (pixels), keypoints (flat
        [x1, y1, v1, ...] or None), keypoint_scores: one entry per detection each.
    """
    return [
        detection_record(
            label=label,
            category_id=categories.category_id_of(label),
            category_name=categories.name_of_label(label),
            score=score,
            box_xyxy=box,
            segmentation=rle,
            area=area,
            keypoints=points,
            keypoint_scores=point_scores,
        )
        for label, score, box, rle, area, points, point_scores in zip(
            labels, scores, boxes, rles, areas, keypoints, keypoint_scores
        )
    ]


def records_from_mask_probs(
    detection: dict[str, Tensor],
    categories: CategoryMap,
    image_size: tuple[int, int],
    *,
    mask_threshold: float = 0.5,
    max_detections: int | None = None,
) -> list[dict[str, Any]]:
    """One image's unpasted model output (``MaskRCNN(..., paste_masks=False)``) as detection records, best first.

    Args:
        detection: on any device: ``boxes`` [D, 4] XYXY in the image's pixels, ``scores`` [D], ``labels`` [D],
            optional ``mask_probs`` [D, 1, M, M] (the mask head's probabilities), optional ``keypoints``
            [D, K, 3] and ``keypoints_scores`` [D, K].
        image_size: (H, W) of the image, the size of the masks' RLE.
        mask_threshold: probability at which a pixel belongs to the instance.
        max_detections: keep at most this many (the best).

    Returns:
        the records ``mrcnn.predictor.detections_to_records`` gives for the same detections with masks
        pasted by ``paste_masks_binary``: same values, same RLE strings, same order.
    """
    total = len(detection["scores"])
    num = total if max_detections is None else min(max_detections, total)
    boxes = detection["boxes"][:num]
    probs = detection.get("mask_probs")
    columns = [boxes.double(), detection["scores"][:num, None].double(), detection["labels"][:num, None].double()]
    if probs is not None:
        columns.append(expanded_int_boxes(boxes, mask_size=probs.shape[-1]).double())
    has_keypoints = "keypoints" in detection
    if has_keypoints:
        columns += [detection["keypoints"][:num].flatten(start_dim=1).double(), detection["keypoints_scores"][:num].double()]
    host = torch.cat(columns, dim=1).cpu().numpy()  # the one copy of the per-detection values
    rles: list[dict[str, Any] | None] = [None] * num
    areas = [0.0] * num
    column = 6
    if probs is not None:
        int_boxes = host[:, column : column + 4].astype("int64").tolist()
        column += 4
        if num:
            packed, windows = paste_mask_crops(probs[:num], int_boxes, image_size, threshold=mask_threshold)
            # Where the crops change value, found on the device: the run boundaries are all the host needs.
            padded = torch.cat([packed.new_zeros(1), packed])
            changes = torch.nonzero(padded[1:] != padded[:-1]).flatten()
            rles, pixel_counts = crop_changes_to_rles(changes.cpu().numpy(), windows, *image_size)
            areas = pixel_counts.astype(float).tolist()
    keypoints: list[list[float] | None] = [None] * num
    keypoint_scores: list[list[float] | None] = [None] * num
    if has_keypoints:
        num_keypoints = detection["keypoints"].shape[1]
        keypoints = host[:, column : column + 3 * num_keypoints].tolist()
        keypoint_scores = host[:, column + 3 * num_keypoints :].tolist()
    return build_records(
        categories,
        labels=host[:, 5].astype("int64").tolist(),
        scores=host[:, 4].tolist(),
        boxes=host[:, :4].tolist(),
        rles=rles,
        areas=areas,
        keypoints=keypoints,
        keypoint_scores=keypoint_scores,
    )
