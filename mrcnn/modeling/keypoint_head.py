"""Keypoint head (the paper's Section 5): one m x m one-hot "mask" per keypoint, its loss and its decoding.

The paper models each of an instance's K keypoints as a one-hot mask: of the m^2 locations of the RoI's
m x m grid, only the keypoint's is foreground, and the loss is a softmax cross-entropy over the m^2
locations (not a per-pixel sigmoid), one per labelled keypoint. The head is torchvision's
(``KeypointRCNNHeads`` + ``KeypointRCNNPredictor``), so torchvision's keypoint R-CNN state dicts load:
``num_convs`` x conv3x3 on 14x14 RoI features, a 4x4 stride-2 deconv and a 2x bilinear upsampling to
m = 56. Loss and decoding are torchvision's ``keypointrcnn_loss`` and ``heatmaps_to_keypoints``.
"""

from __future__ import annotations

from torch import Tensor, nn
from torchvision.models.detection.keypoint_rcnn import (
    KeypointRCNNHeads,
    KeypointRCNNPredictor,
)
from torchvision.models.detection.roi_heads import (
    heatmaps_to_keypoints,
    keypointrcnn_loss,
)

from mrcnn.config import KeypointHeadConfig


def build_keypoint_head(cfg: KeypointHeadConfig, *, in_channels: int) -> tuple[nn.Module, nn.Module]:
    """The keypoint head and predictor (``roi_heads.keypoint_head.*`` / ``roi_heads.keypoint_predictor.*``)."""
    head = KeypointRCNNHeads(in_channels, [cfg.conv_dim] * cfg.num_convs)
    predictor = KeypointRCNNPredictor(cfg.conv_dim, cfg.num_keypoints)
    return head, predictor


def keypoint_rcnn_loss(
    keypoint_logits: Tensor, proposals: list[Tensor], gt_keypoints: list[Tensor], matched_idxs: list[Tensor]
) -> Tensor:
    """The keypoint loss over positive RoIs: for every labelled keypoint (v > 0) that falls inside its RoI,
    the cross-entropy of a softmax over the m^2 heatmap locations against the one-hot target location.

    Args:
        keypoint_logits (Tensor[R, K, m, m]): logits, not probabilities.
        proposals: per image, Tensor[R_i, 4] XYXY positive proposals (the pixels of ``gt_keypoints``).
        gt_keypoints: per image, Tensor[G_i, K, 3] ``(x, y, v)`` absolute pixels.
        matched_idxs: per image, Tensor[R_i] index of each proposal's ground-truth instance.

    Returns:
        Tensor[]: mean over the labelled keypoints (0, still attached to the graph, when there are none).
    """
    # contiguous: torchvision views the logits as [R * K, m^2], which a channels_last model's are not.
    return keypointrcnn_loss(keypoint_logits.contiguous(), proposals, gt_keypoints, matched_idxs)


def keypoints_from_heatmaps(keypoint_logits: Tensor, boxes: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
    """Each keypoint at the maximum of its heatmap, resampled (bicubic) to the box's size in pixels.

    Args:
        keypoint_logits (Tensor[R, K, m, m]): heatmap logits of all detections of the batch.
        boxes: per image, Tensor[D_i, 4] XYXY detection boxes.

    Returns:
        keypoints: per image, Tensor[D_i, K, 3] ``(x, y, 1)`` in the boxes' pixels.
        scores: per image, Tensor[D_i, K]: the heatmap logit at each keypoint (higher = more confident).
    """
    keypoints, scores = [], []
    for logits, image_boxes in zip(keypoint_logits.split([b.shape[0] for b in boxes], dim=0), boxes):
        xy, score = heatmaps_to_keypoints(logits, image_boxes)
        keypoints.append(xy)
        scores.append(score)
    return keypoints, scores
