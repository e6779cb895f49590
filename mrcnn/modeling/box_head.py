"""Box/class head: pooled 7x7 RoI features -> class logits and per-class box deltas, and its loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.faster_rcnn import (
    FastRCNNConvFCHead,
    FastRCNNPredictor,
    TwoMLPHead,
)

from mrcnn.config import BoxHeadConfig
from mrcnn.modeling.backbone import norm_layer_for


def build_box_head(cfg: BoxHeadConfig, *, in_channels: int, num_classes: int) -> tuple[nn.Module, nn.Module]:
    """The box head and predictor (``roi_heads.box_head.*``, ``roi_heads.box_predictor.*`` as in torchvision).

    Args:
        in_channels: channels of the pooled features.
        num_classes: object classes K, without background; the predictor outputs K + 1 classes.

    Returns:
        (box_head, box_predictor). ``2fc`` is the paper's 2 x FC-1024; ``4conv1fc`` torchvision's v2 head.
    """
    R = cfg.pooler_resolution
    if cfg.head == "2fc":
        box_head: nn.Module = TwoMLPHead(in_channels * R * R, cfg.representation_size)
    else:
        box_head = FastRCNNConvFCHead(
            (in_channels, R, R), [256, 256, 256, 256], [cfg.representation_size], norm_layer=norm_layer_for(cfg.head_norm)
        )
    return box_head, FastRCNNPredictor(cfg.representation_size, num_classes + 1)


def fast_rcnn_loss(
    class_logits: Tensor,
    box_regression: Tensor,
    gt_labels: list[Tensor],
    regression_targets: list[Tensor],
) -> dict[str, Tensor]:
    """Cross-entropy over K + 1 classes plus smooth-L1 (beta 1/9) on the ground-truth class's box deltas.

    Args:
        class_logits (Tensor[R, K + 1]): logits of the sampled proposals of all images.
        box_regression (Tensor[R, 4 * (K + 1)]): encoded box deltas, one set per class.
        gt_labels: per image, Tensor[R_i] int64, 0 for background.
        regression_targets: per image, Tensor[R_i, 4] encoded deltas to the matched ground-truth box.

    Returns:
        ``loss_classifier`` and ``loss_box_reg`` (normalised by the number of sampled proposals).
    """
    labels = torch.cat(gt_labels, dim=0)
    targets = torch.cat(regression_targets, dim=0)
    loss_classifier = F.cross_entropy(class_logits, labels)

    positive = torch.where(labels > 0)[0]
    R = class_logits.shape[0]
    box_regression = box_regression.reshape(R, box_regression.size(-1) // 4, 4)  # [R, K + 1, 4]
    loss_box_reg = F.smooth_l1_loss(
        box_regression[positive, labels[positive]], targets[positive], beta=1 / 9, reduction="sum"
    )
    return {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg / labels.numel()}
