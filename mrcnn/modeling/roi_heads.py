"""RoI heads: the box/class branch and the parallel mask and keypoint branches on pooled RoI features.

Reuses torchvision's proposal matching, sampling and detection post-processing, with our losses,
poolers and mask variants. Losses are computed whenever targets are given, detections whenever the
module is in eval mode, so both are available together for validation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection.roi_heads import RoIHeads as TorchvisionRoIHeads
from torchvision.ops import boxes as box_ops

from mrcnn.config import ModelConfig
from mrcnn.modeling.box_head import build_box_head, fast_rcnn_loss
from mrcnn.modeling.keypoint_head import (
    build_keypoint_head,
    keypoint_rcnn_loss,
    keypoints_from_heatmaps,
)
from mrcnn.modeling.mask_head import (
    build_mask_head,
    mask_rcnn_loss,
    predict_mask_probs,
)
from mrcnn.modeling.poolers import MultiScaleRoIPooler

FEATURE_NAMES = ["0", "1", "2", "3"]  # P2..P5 (P6, 'pool', is used by the RPN only)


class RoIHeads(TorchvisionRoIHeads):
    """Box and mask heads. ``mask_loss_type`` is ``sigmoid`` or ``softmax`` (see ``mask_rcnn_loss``)."""

    def __init__(self, *args, mask_loss_type: str = "sigmoid", **kwargs):
        super().__init__(*args, **kwargs)
        self.mask_loss_type = mask_loss_type

    def postprocess_detections(
        self,
        class_logits: Tensor,
        box_regression: Tensor,
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
        *,
        score_threshold: float | None = None,
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """torchvision's detection post-processing, with the class-wise NMS run on the best candidates only.

        Same steps and result as torchvision's: decode per-class boxes, softmax scores, clip, drop the
        background, drop scores <= ``score_thresh`` and boxes smaller than 0.01 px, NMS per class, keep the
        ``detections_per_img`` best. NMS is first run on the highest-scoring candidates only (at least
        4 x ``detections_per_img``) and widened until ``detections_per_img`` survive or all candidates are in.
        Whether a box survives depends only on higher-scoring boxes of its class, so the survivors
        among the best candidates are exactly the full run's survivors there: the result is identical,
        while NMS sees ~400 instead of up to 1000 x K boxes per image (a score threshold of 0 keeps them all).

        Args:
            class_logits (Tensor[R, K + 1]): logits, not probabilities.
            box_regression (Tensor[R, (K + 1) * 4]): encoded per-class box deltas.
            proposals: per image, Tensor[R_i, 4] XYXY in resized pixels.
            score_threshold: class probability at or below which a candidate is dropped; default ``score_thresh``.

        Returns:
            per image: boxes Tensor[D, 4] XYXY, scores Tensor[D], labels Tensor[D] int64; best first.
        """
        score_threshold = self.score_thresh if score_threshold is None else score_threshold
        num_classes = class_logits.shape[-1]
        boxes_per_image = [p.shape[0] for p in proposals]  # shape, not len: dynamic in a traced export
        pred_boxes = self.box_coder.decode(box_regression, proposals).split(boxes_per_image, 0)
        pred_scores = F.softmax(class_logits, -1).split(boxes_per_image, 0)
        all_boxes, all_scores, all_labels = [], [], []
        for boxes, scores, image_shape in zip(pred_boxes, pred_scores, image_shapes):
            boxes = box_ops.clip_boxes_to_image(boxes, image_shape)
            labels = torch.arange(num_classes, device=scores.device).view(1, -1).expand_as(scores)
            boxes = boxes[:, 1:].reshape(-1, 4)  # [R * K, 4]: one candidate per proposal and class
            scores = scores[:, 1:].reshape(-1)
            labels = labels[:, 1:].reshape(-1)
            inds = torch.where(scores > score_threshold)[0]
            boxes, scores, labels = boxes[inds], scores[inds], labels[inds]
            keep = box_ops.remove_small_boxes(boxes, min_size=1e-2)
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            keep = _class_nms_top(boxes, scores, labels, iou_threshold=self.nms_thresh, top=self.detections_per_img)
            all_boxes.append(boxes[keep])
            all_scores.append(scores[keep])
            all_labels.append(labels[keep])
        return all_boxes, all_scores, all_labels

    def _box_outputs(self, features, proposals, image_shapes) -> tuple[Tensor, Tensor]:
        box_features = self.box_roi_pool(features, proposals, image_shapes)
        box_features = self.box_head(box_features)
        return self.box_predictor(box_features)

    def _mask_logits(self, features, boxes, image_shapes) -> Tensor:
        mask_features = self.mask_roi_pool(features, boxes, image_shapes)
        return self.mask_predictor(self.mask_head(mask_features))

    def _keypoint_logits(self, features, boxes, image_shapes) -> Tensor:
        keypoint_features = self.keypoint_roi_pool(features, boxes, image_shapes)
        return self.keypoint_predictor(self.keypoint_head(keypoint_features))

    def _gt_keypoints(self, targets: list[dict[str, Tensor]]) -> list[Tensor]:
        """Each target's ``keypoints`` [G, K, 3]; an image without instances may leave them out."""
        K = self.keypoint_predictor.out_channels
        gt_keypoints = []
        for index, t in enumerate(targets):
            keypoints = t.get("keypoints")
            if keypoints is None and len(t["boxes"]) == 0:
                keypoints = t["boxes"].new_zeros((0, K, 3))
            if keypoints is None or keypoints.ndim != 3 or tuple(keypoints.shape[1:]) != (K, 3):
                shape = None if keypoints is None else tuple(keypoints.shape)
                raise ValueError(f"target {index}: keypoints must be a Tensor[{len(t['boxes'])}, {K}, 3] for this model, got {shape}")
            gt_keypoints.append(keypoints)
        return gt_keypoints

    def forward(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]] | None = None,
        *,
        score_threshold: float | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        """
        Args:
            features: FPN feature maps by name.
            proposals: per image, Tensor[P_i, 4] XYXY in resized pixels.
            image_shapes: per image, (height, width) after resizing.
            targets: per image, ``boxes`` float [G, 4], ``labels`` int64 [G], ``masks`` uint8 [G, H, W],
                and for a keypoint model ``keypoints`` float [G, K, 3] (x, y, v).
            score_threshold: in eval mode, class probability at or below which a detection is dropped;
                default ``score_thresh``.

        Returns:
            detections: in eval mode, per image ``boxes`` [D, 4], ``labels`` [D], ``scores`` [D],
                ``masks`` [D, 1, 28, 28] probabilities of the predicted class (with a mask head), and
                ``keypoints`` [D, K, 3] (x, y, 1) and ``keypoints_scores`` [D, K] heatmap logits (with a
                keypoint head); empty list in train mode.
            losses: ``loss_classifier``, ``loss_box_reg``, ``loss_mask``, ``loss_keypoint`` when targets are given.
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
            if self.has_keypoint():
                positive = [torch.where(l > 0)[0] for l in labels]
                positive_proposals = [p[i] for p, i in zip(sampled, positive)]
                positive_matched = [m[i] for m, i in zip(matched_idxs, positive)]
                keypoint_logits = self._keypoint_logits(features, positive_proposals, image_shapes)
                losses["loss_keypoint"] = keypoint_rcnn_loss(
                    keypoint_logits, positive_proposals, self._gt_keypoints(targets), positive_matched
                )

        detections: list[dict[str, Tensor]] = []
        if not self.training:
            class_logits, box_regression = self._box_outputs(features, proposals, image_shapes)
            boxes, scores, labels = self.postprocess_detections(
                class_logits, box_regression, proposals, image_shapes, score_threshold=score_threshold
            )
            detections = [{"boxes": b, "labels": l, "scores": s} for b, l, s in zip(boxes, labels, scores)]
            if self.has_mask():
                mask_features = self.mask_head(self.mask_roi_pool(features, boxes, image_shapes))
                mask_probs = predict_mask_probs(self.mask_predictor, mask_features, labels, loss_type=self.mask_loss_type)
                for detection, probs in zip(detections, mask_probs):
                    detection["masks"] = probs
            if self.has_keypoint():
                keypoint_logits = self._keypoint_logits(features, boxes, image_shapes)
                keypoints, keypoint_scores = keypoints_from_heatmaps(keypoint_logits, boxes)
                for detection, points, point_scores in zip(detections, keypoints, keypoint_scores):
                    detection["keypoints"] = points
                    detection["keypoints_scores"] = point_scores
        return detections, losses


def _class_nms_top(boxes: Tensor, scores: Tensor, labels: Tensor, *, iou_threshold: float, top: int) -> Tensor:
    """``batched_nms(boxes, scores, labels, iou_threshold)[:top]``, running NMS on as few candidates as needed.

    Returns:
        Tensor[<= top] int64: indices into ``boxes``, by decreasing score.
    """
    if torch.jit.is_tracing():
        # ONNX/TorchScript export: no data-dependent loop; batched_nms over all candidates, the same result.
        return box_ops.batched_nms(boxes, scores, labels, iou_threshold)[:top]
    order = scores.argsort(descending=True, stable=True)
    num = min(len(order), max(4 * top, 1))
    while True:
        if num < len(order):
            # Boxes tied with the last candidate's score go in too, so that the cut never splits a tie.
            num = int((scores >= scores[order[num - 1]]).sum())
        candidates = order[:num]
        keep = box_ops.batched_nms(boxes[candidates], scores[candidates], labels[candidates], iou_threshold)
        if len(keep) >= top or num >= len(order):
            return candidates[keep[:top]]
        num = min(len(order), 4 * num)


def build_roi_heads(cfg: ModelConfig, *, in_channels: int) -> RoIHeads:
    box_cfg, mask_cfg, keypoint_cfg = cfg.box_head, cfg.mask_head, cfg.keypoint_head

    def pooler(output_size: int) -> MultiScaleRoIPooler:
        # Every head pools the same way (RoIAlign or the RoIPool ablation), at its own resolution.
        return MultiScaleRoIPooler(
            featmap_names=FEATURE_NAMES,
            output_size=output_size,
            mode=box_cfg.pooler,
            sampling_ratio=box_cfg.sampling_ratio,
            aligned=box_cfg.aligned,
        )

    box_pooler = pooler(box_cfg.pooler_resolution)
    box_head, box_predictor = build_box_head(box_cfg, in_channels=in_channels, num_classes=cfg.num_classes)
    mask_pooler = mask_head = mask_predictor = None
    if mask_cfg.enabled:
        mask_pooler = pooler(mask_cfg.pooler_resolution)
        mask_head, mask_predictor = build_mask_head(mask_cfg, in_channels=in_channels, num_classes=cfg.num_classes)
    keypoint_pooler = keypoint_head = keypoint_predictor = None
    if cfg.has_keypoints:
        keypoint_pooler = pooler(keypoint_cfg.pooler_resolution)
        keypoint_head, keypoint_predictor = build_keypoint_head(keypoint_cfg, in_channels=in_channels)
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
        keypoint_roi_pool=keypoint_pooler,
        keypoint_head=keypoint_head,
        keypoint_predictor=keypoint_predictor,
        mask_loss_type=mask_cfg.loss,
    )
