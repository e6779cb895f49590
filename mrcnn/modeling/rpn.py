"""Region proposal network: anchors at 5 scales (one per FPN level) x 3 aspect ratios, NMS on proposals.

torchvision's RPN computes its losses only in training mode; ours computes them whenever targets are
given, so a validation loss exists in eval mode too.
"""

from __future__ import annotations

from torch import Tensor
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import (
    RegionProposalNetwork,
    RPNHead,
    concat_box_prediction_layers,
)

from mrcnn.config import RPNConfig


class RPN(RegionProposalNetwork):
    """torchvision's RegionProposalNetwork with losses available in both modes."""

    def forward(
        self,
        images: ImageList,
        features: dict[str, Tensor],
        targets: list[dict[str, Tensor]] | None = None,
    ) -> tuple[list[Tensor], dict[str, Tensor]]:
        """
        Args:
            images: the resized, padded batch.
            features: FPN feature maps, finest first.
            targets: per image, ``boxes`` Tensor[N, 4] XYXY in resized pixels; losses are computed iff given.

        Returns:
            proposals: per image, Tensor[P, 4] XYXY (P <= post-NMS top-n of the current mode).
            losses: ``loss_objectness``, ``loss_rpn_box_reg`` when targets are given, else empty.
        """
        feature_maps = list(features.values())
        objectness, pred_bbox_deltas = self.head(feature_maps)
        anchors = self.anchor_generator(images, feature_maps)

        num_images = len(anchors)
        num_anchors_per_level = [o[0].shape[0] * o[0].shape[1] * o[0].shape[2] for o in objectness]
        objectness, pred_bbox_deltas = concat_box_prediction_layers(objectness, pred_bbox_deltas)
        # Proposals do not backpropagate into the RPN (as in Faster R-CNN).
        proposals = self.box_coder.decode(pred_bbox_deltas.detach(), anchors)
        proposals = proposals.view(num_images, -1, 4)
        boxes, _scores = self.filter_proposals(proposals, objectness, images.image_sizes, num_anchors_per_level)

        losses: dict[str, Tensor] = {}
        if targets is not None:
            labels, matched_gt_boxes = self.assign_targets_to_anchors(anchors, targets)
            regression_targets = self.box_coder.encode(matched_gt_boxes, anchors)
            loss_objectness, loss_rpn_box_reg = self.compute_loss(
                objectness, pred_bbox_deltas, labels, regression_targets
            )
            losses = {"loss_objectness": loss_objectness, "loss_rpn_box_reg": loss_rpn_box_reg}
        return boxes, losses


def build_rpn(cfg: RPNConfig, *, in_channels: int) -> RPN:
    """The RPN with its anchor generator and head (``rpn.head.*`` keys as in torchvision)."""
    anchor_generator = AnchorGenerator(
        sizes=tuple((s,) for s in cfg.anchor_sizes),
        aspect_ratios=(tuple(cfg.aspect_ratios),) * len(cfg.anchor_sizes),
    )
    head = RPNHead(in_channels, anchor_generator.num_anchors_per_location()[0], conv_depth=cfg.head_conv_depth)
    return RPN(
        anchor_generator,
        head,
        fg_iou_thresh=cfg.fg_iou_thresh,
        bg_iou_thresh=cfg.bg_iou_thresh,
        batch_size_per_image=cfg.batch_size_per_image,
        positive_fraction=cfg.positive_fraction,
        pre_nms_top_n={"training": cfg.pre_nms_top_n_train, "testing": cfg.pre_nms_top_n_test},
        post_nms_top_n={"training": cfg.post_nms_top_n_train, "testing": cfg.post_nms_top_n_test},
        nms_thresh=cfg.nms_thresh,
        score_thresh=cfg.score_thresh,
    )
