"""RoI heads: the box/class branch and the parallel mask branch on pooled RoI features.

Reuses torchvision's proposal matching, sampling and detection post-processing, with our losses,
poolers and mask variants. Losses are computed whenever targets are given, detections whenever the
module is in eval mode, so both are available together for validation.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.models.detection.roi_heads import RoIHeads as TorchvisionRoIHeads

from mrcnn.config import ModelConfig
from mrcnn.modeling.box_head import build_box_head, fast_rcnn_loss
from mrcnn.modeling.mask_head import (
    build_mask_head,
    mask_probs_for_labels,
    mask_rcnn_loss,
)
from mrcnn.modeling.poolers import MultiScaleRoIPooler

FEATURE_NAMES = ["0", "1", "2", "3"]  # P2..P5 (P6, 'pool', is used by the RPN only)


class RoIHeads(TorchvisionRoIHeads):
    """Box and mask heads. ``mask_loss_type`` is ``sigmoid`` or ``softmax`` (see ``mask_rcnn_loss``)."""

    def __init__(self, *args, mask_loss_type: str = "sigmoid", **kwargs):
        super().__init__(*args, **kwargs)
        self.mask_loss_type = mask_loss_type

    def _box_outputs(self, features, proposals, image_shapes) -> tuple[Tensor, Tensor]:
        box_features = self.box_roi_pool(features, proposals, image_shapes)
        box_features = self.box_head(box_features)
        return self.box_predictor(box_features)

    def _mask_logits(self, features, boxes, image_shapes) -> Tensor:
        mask_features = self.mask_roi_pool(features, boxes, image_shapes)
        return self.mask_predictor(self.mask_head(mask_features))

    def forward(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]] | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        """
        Args:
            features: FPN feature maps by name.
            proposals: per image, Tensor[P_i, 4] XYXY in resized pixels.
            image_shapes: per image, (height, width) after resizing.
            targets: per image, ``boxes`` float [G, 4], ``labels`` int64 [G], ``masks`` uint8 [G, H, W].

        Returns:
            detections: in eval mode, per image ``boxes`` [D, 4], ``labels`` [D], ``scores`` [D], and
                ``masks`` [D, 1, 28, 28] probabilities of the predicted class; empty list in train mode.
            losses: ``loss_classifier``, ``loss_box_reg``, ``loss_mask`` when targets are given.
        """
        losses: dict[str, Tensor] = {}
        if targets is not None:
            self.check_targets(targets)
            sampled, matched_idxs, labels, regression_targets = self.select_training_samples(proposals, targets)
            class_logits, box_regression = self._box_outputs(features, sampled, image_shapes)
            losses.update(fast_rcnn_loss(class_logits, box_regression, labels, regression_targets))
            if self.has_mask():
                positive = [torch.where(l > 0)[0] for l in labels]
                positive_proposals = [p[i] for p, i in zip(sampled, positive)]
                positive_matched = [m[i] for m, i in zip(matched_idxs, positive)]
                mask_logits = self._mask_logits(features, positive_proposals, image_shapes)
                losses["loss_mask"] = mask_rcnn_loss(
                    mask_logits,
                    positive_proposals,
                    [t["masks"] for t in targets],
                    [t["labels"] for t in targets],
                    positive_matched,
                    loss_type=self.mask_loss_type,
                )

        detections: list[dict[str, Tensor]] = []
        if not self.training:
            class_logits, box_regression = self._box_outputs(features, proposals, image_shapes)
            boxes, scores, labels = self.postprocess_detections(class_logits, box_regression, proposals, image_shapes)
            detections = [{"boxes": b, "labels": l, "scores": s} for b, l, s in zip(boxes, labels, scores)]
            if self.has_mask():
                mask_logits = self._mask_logits(features, boxes, image_shapes)
                mask_probs = mask_probs_for_labels(mask_logits, labels, loss_type=self.mask_loss_type)
                for detection, probs in zip(detections, mask_probs):
                    detection["masks"] = probs
        return detections, losses


def build_roi_heads(cfg: ModelConfig, *, in_channels: int) -> RoIHeads:
    box_cfg, mask_cfg = cfg.box_head, cfg.mask_head
    box_pooler = MultiScaleRoIPooler(
        featmap_names=FEATURE_NAMES,
        output_size=box_cfg.pooler_resolution,
        mode=box_cfg.pooler,
        sampling_ratio=box_cfg.sampling_ratio,
        aligned=box_cfg.aligned,
    )
    box_head, box_predictor = build_box_head(box_cfg, in_channels=in_channels, num_classes=cfg.num_classes)
    mask_pooler = mask_head = mask_predictor = None
    if mask_cfg.enabled:
        mask_pooler = MultiScaleRoIPooler(
            featmap_names=FEATURE_NAMES,
            output_size=mask_cfg.pooler_resolution,
            mode=box_cfg.pooler,
            sampling_ratio=box_cfg.sampling_ratio,
            aligned=box_cfg.aligned,
        )
        mask_head, mask_predictor = build_mask_head(mask_cfg, in_channels=in_channels, num_classes=cfg.num_classes)
    return RoIHeads(
        box_pooler,
        box_head,
        box_predictor,
        box_cfg.fg_iou_thresh,
        box_cfg.bg_iou_thresh,
        box_cfg.batch_size_per_image,
        box_cfg.positive_fraction,
        box_cfg.bbox_reg_weights,
        box_cfg.score_thresh,
        box_cfg.nms_thresh,
        box_cfg.detections_per_img,
        mask_roi_pool=mask_pooler,
        mask_head=mask_head,
        mask_predictor=mask_predictor,
        mask_loss_type=mask_cfg.loss,
    )
