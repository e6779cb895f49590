"""Mask head: a small FCN on 14x14 RoI features giving one 28x28 mask per class, and its loss.

The paper decouples masks from classes: one sigmoid mask per class, and the loss reads only the
channel of the RoI's ground-truth class. The ``softmax`` variant (a per-pixel softmax across classes)
and the ``mlp`` head are the paper's ablations.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import roi_align

from mrcnn.config import MaskHeadConfig
from mrcnn.modeling.backbone import norm_layer_for


class MaskMLPHead(nn.Module):
    """The paper's MLP mask head ablation: flatten, fc, fc (ReLU after each)."""

    def __init__(self, *, in_channels: int, resolution: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(in_channels * resolution * resolution, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, hidden_dim)

    def forward(self, x: Tensor) -> Tensor:
        """Tensor[R, C, S, S] -> Tensor[R, hidden_dim]."""
        x = F.relu(self.fc1(x.flatten(start_dim=1)))
        return F.relu(self.fc2(x))


class MaskMLPPredictor(nn.Module):
    """fc to ``num_mask_classes`` masks of ``resolution`` x ``resolution`` logits."""

    def __init__(self, *, in_features: int, num_mask_classes: int, resolution: int):
        super().__init__()
        self.num_mask_classes = num_mask_classes
        self.resolution = resolution
        self.mask_fcn_logits = nn.Linear(in_features, num_mask_classes * resolution * resolution)

    def forward(self, x: Tensor) -> Tensor:
        M = self.resolution
        return self.mask_fcn_logits(x).view(-1, self.num_mask_classes, M, M)  # [R, K, M, M]


def num_mask_channels(cfg: MaskHeadConfig, *, num_classes: int) -> int:
    """Channels of the mask logits: 1 if class-agnostic, else K + 1 (channel 0 = background, unused by sigmoid)."""
    return 1 if cfg.class_agnostic else num_classes + 1


def build_mask_head(cfg: MaskHeadConfig, *, in_channels: int, num_classes: int) -> tuple[nn.Module, nn.Module]:
    """The mask head and predictor (``roi_heads.mask_head.*`` / ``roi_heads.mask_predictor.*`` as torchvision).

    ``fcn``: num_convs x (conv3x3-conv_dim + ReLU), then the predictor: deconv 2x2 stride 2 + ReLU, 1x1 conv
    to the mask channels, so 14x14 RoI features become 28x28 masks.
    """
    channels = num_mask_channels(cfg, num_classes=num_classes)
    if cfg.head == "fcn":
        layers = [cfg.conv_dim] * cfg.num_convs
        head = MaskRCNNHeads(in_channels, layers, 1, norm_layer=norm_layer_for(cfg.head_norm))
        predictor: nn.Module = MaskRCNNPredictor(cfg.conv_dim, cfg.conv_dim, channels)
    else:
        head = MaskMLPHead(in_channels=in_channels, resolution=cfg.pooler_resolution, hidden_dim=cfg.mlp_dim)
        predictor = MaskMLPPredictor(in_features=cfg.mlp_dim, num_mask_classes=channels, resolution=cfg.resolution)
    return head, predictor


def project_masks_on_boxes(gt_masks: Tensor, boxes: Tensor, matched_idxs: Tensor, M: int) -> Tensor:
    """Crop each matched ground-truth mask to its proposal box and resample it to M x M.

    Args:
        gt_masks (Tensor[G, H, W]): ground-truth masks of one image, 0/1.
        boxes (Tensor[P, 4]): positive proposals, XYXY in the same pixels as the masks.
        matched_idxs (Tensor[P]): index of each proposal's ground-truth instance.

    Returns:
        Tensor[P, M, M]: soft mask targets in 0..1 (the intersection of RoI and ground-truth mask).
    """
    rois = torch.cat([matched_idxs.to(boxes)[:, None], boxes], dim=1)
    return roi_align(gt_masks[:, None].to(rois), rois, (M, M), 1.0)[:, 0]


def mask_rcnn_loss(
    mask_logits: Tensor,
    proposals: list[Tensor],
    gt_masks: list[Tensor],
    gt_labels: list[Tensor],
    matched_idxs: list[Tensor],
    *,
    loss_type: str = "sigmoid",
) -> Tensor:
    """The mask loss over positive RoIs.

    Args:
        mask_logits (Tensor[R, C, M, M]): logits, not probabilities; C = K + 1, or 1 if class-agnostic.
        proposals: per image, Tensor[R_i, 4] XYXY positive proposals.
        gt_masks: per image, Tensor[G_i, H, W] uint8 ground-truth masks.
        gt_labels: per image, Tensor[G_i] int64 labels (1..K).
        matched_idxs: per image, Tensor[R_i] index of the matched ground-truth instance.
        loss_type: ``sigmoid``: mean per-pixel binary cross-entropy on the ground-truth class's channel only
            (channel 0 when class-agnostic); other channels get no gradient. ``softmax``: per-pixel
            cross-entropy across all channels, where a pixel's target is the RoI's class inside the mask
            and background (0) outside.

    Returns:
        Tensor[]: scalar loss (0, still attached to the graph, when there are no positive RoIs).
    """
    R, C, M, _ = mask_logits.shape
    labels = torch.cat([labels_i[idxs] for labels_i, idxs in zip(gt_labels, matched_idxs)], dim=0)
    mask_targets = torch.cat(
        [project_masks_on_boxes(m, p, i, M) for m, p, i in zip(gt_masks, proposals, matched_idxs)], dim=0
    )
    if mask_targets.numel() == 0:
        return mask_logits.sum() * 0

    if loss_type == "sigmoid":
        channel = labels if C > 1 else torch.zeros_like(labels)
        selected = mask_logits[torch.arange(R, device=labels.device), channel]  # [R, M, M]
        return F.binary_cross_entropy_with_logits(selected, mask_targets)
    if loss_type == "softmax":
        pixel_labels = torch.where(mask_targets >= 0.5, labels[:, None, None], torch.zeros_like(labels)[:, None, None])
        return F.cross_entropy(mask_logits, pixel_labels)
    raise ValueError(f"mask loss_type: expected sigmoid or softmax, got {loss_type!r}")


def mask_probs_for_labels(mask_logits: Tensor, labels: list[Tensor], *, loss_type: str = "sigmoid") -> list[Tensor]:
    """Per-detection mask probabilities of the predicted class.

    Args:
        mask_logits (Tensor[R, C, M, M]): logits of all detections of the batch.
        labels: per image, Tensor[R_i] predicted labels.

    Returns:
        per image, Tensor[R_i, 1, M, M] probabilities in 0..1.
    """
    R, C = mask_logits.shape[:2]
    probs = mask_logits.sigmoid() if loss_type == "sigmoid" else mask_logits.softmax(dim=1)
    all_labels = torch.cat(labels)
    channel = all_labels if C > 1 else torch.zeros_like(all_labels)
    probs = probs[torch.arange(R, device=probs.device), channel][:, None]
    return list(probs.split([l.shape[0] for l in labels], dim=0))


def predict_mask_probs(predictor: nn.Module, mask_features: Tensor, labels: list[Tensor], *, loss_type: str = "sigmoid") -> list[Tensor]:
    """Inference: per-detection mask probabilities of the predicted class, from the mask head's features.

    For the paper's head (FCN predictor, per-class sigmoid) only the predicted class's channel of the 1x1
    logits conv is computed (one dot product per pixel instead of K + 1); the result equals
    ``mask_probs_for_labels(predictor(mask_features), labels)`` up to float rounding. Other variants run
    the whole predictor.

    Args:
        predictor: the mask predictor (``roi_heads.mask_predictor``).
        mask_features (Tensor[R, C, S, S]): the mask head's output for all detections of the batch.
        labels: per image, Tensor[R_i] predicted labels.

    Returns:
        per image, Tensor[R_i, 1, M, M] probabilities in 0..1.
    """
    logits_conv = getattr(predictor, "mask_fcn_logits", None)
    if loss_type != "sigmoid" or not isinstance(predictor, MaskRCNNPredictor) or logits_conv.out_channels == 1:
        return mask_probs_for_labels(predictor(mask_features), labels, loss_type=loss_type)
    all_labels = torch.cat(labels)
    x = F.relu(predictor.conv5_mask(mask_features))  # [R, C, M, M]
    R, C, M, _ = x.shape
    weight = logits_conv.weight[all_labels, :, 0, 0]  # [R, C]
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        logits = torch.bmm(x.permute(0, 2, 3, 1).reshape(R, M * M, C), weight[:, :, None])  # [R, M*M, 1]
    else:
        logits = torch.bmm(weight[:, None, :], x.reshape(R, C, M * M))  # [R, 1, M*M]
    logits = logits.view(R, 1, M, M) + logits_conv.bias[all_labels].view(R, 1, 1, 1)
    return list(logits.sigmoid().split([l.shape[0] for l in labels], dim=0))
