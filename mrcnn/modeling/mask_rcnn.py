"""Mask R-CNN assembled from its parts: transform, backbone + FPN, RPN, RoI heads (box + mask)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from mrcnn.config import Config, ModelConfig
from mrcnn.modeling.backbone import build_resnet_fpn_backbone
from mrcnn.modeling.paste import paste_masks_binary
from mrcnn.modeling.roi_heads import build_roi_heads
from mrcnn.modeling.rpn import build_rpn


class ModelOutput(NamedTuple):
    """What ``MaskRCNN.forward`` returns in every mode.

    losses: ``loss_*`` scalars; present whenever targets were given (train or eval mode).
    detections: per image, in eval mode only (empty list in train mode):
        ``boxes`` (Tensor[D, 4]): XYXY in the original image's pixels;
        ``labels`` (Tensor[D] int64): contiguous labels 1..K;
        ``scores`` (Tensor[D]): class probabilities;
        ``masks`` (Tensor[D, 1, H, W]): mask probabilities pasted into the original image (threshold at 0.5);
        with a keypoint head (``model.task: keypoints``): ``keypoints`` (Tensor[D, K, 3]): (x, y, 1) in the
        original image's pixels, and ``keypoints_scores`` (Tensor[D, K]): each keypoint's heatmap logit.
    """

    losses: dict[str, Tensor]
    detections: list[dict[str, Tensor]]


class MaskRCNN(nn.Module):
    """Mask R-CNN (He et al., 2017). Submodule names match torchvision's, so its state dicts load as they are."""

    def __init__(self, *, transform: GeneralizedRCNNTransform, backbone: nn.Module, rpn: nn.Module, roi_heads: nn.Module):
        super().__init__()
        self.transform = transform
        self.backbone = backbone
        self.rpn = rpn
        self.roi_heads = roi_heads
        # Set by mrcnn.inference.optimize_for_inference: run the convolutions in NHWC.
        self.channels_last = False

    @property
    def skip_resize_in_training(self) -> bool:
        """Whether training batches keep their images' sizes (default False: resized to ``input.min_size`` /
        ``max_size`` as in eval). Set it when the data pipeline chose the sizes itself (multi-scale training,
        large-scale jitter), as torchvision's references do (``_skip_resize``); eval mode always resizes."""
        return bool(getattr(self.transform, "_skip_resize", False))

    @skip_resize_in_training.setter
    def skip_resize_in_training(self, value: bool) -> None:
        self.transform._skip_resize = bool(value)

    def forward(
        self,
        images: list[Tensor],
        targets: list[dict[str, Tensor]] | None = None,
        *,
        mask_threshold: float | None = None,
        score_threshold: float | None = None,
        paste_masks: bool = True,
    ) -> ModelOutput:
        """
        Args:
            images: per image, Tensor[3, H, W] float RGB in 0..1; sizes may differ.
            targets: optional, per image: ``boxes`` (Tensor[G, 4] float, XYXY absolute pixels),
                ``labels`` (Tensor[G] int64, 1..K), ``masks`` (Tensor[G, H, W] uint8), and for a keypoint model
                ``keypoints`` (Tensor[G, K, 3] float, (x, y, v) absolute pixels). Required in train mode.
            mask_threshold: if given, detections carry binary masks, ``masks`` (Tensor[D, H, W] bool), equal to
                thresholding the probabilities at this value but pasted without full-image float maps
                (``mrcnn.modeling.paste``); the fast path of ``mrcnn.Predictor``.
            score_threshold: class probability at or below which a detection is dropped (eval mode), for this
                call only; default the RoI heads' ``score_thresh`` (the config's ``box_head.score_thresh``).
            paste_masks: False: detections carry ``mask_probs`` (Tensor[D, 1, M, M], the mask head's
                probabilities, not pasted) instead of ``masks``, for a caller that pastes them itself
                (``mrcnn.postprocess``); ``mask_threshold`` is then unused.

        Returns:
            ModelOutput(losses, detections); see its docstring.
        """
        if self.training and targets is None:
            raise ValueError("MaskRCNN in train mode needs targets; call model.eval() to get detections only")
        if targets is not None:
            _check_targets(images, targets)
        # Plain shape entries (ints in eager mode) so that a traced export keeps the sizes dynamic.
        original_sizes = [(img.shape[-2], img.shape[-1]) for img in images]
        image_list, targets = self.transform(images, targets)
        batch = image_list.tensors
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        features = self.backbone(batch)
        proposals, proposal_losses = self.rpn(image_list, features, targets)
        if self.channels_last:
            # RoIAlign/RoIPool read NCHW: convert each level once rather than in every pooling call.
            features = {name: level.contiguous() for name, level in features.items()}
        detections, detector_losses = self.roi_heads(
            features, proposals, image_list.image_sizes, targets, score_threshold=score_threshold
        )
        if detections:
            detections = self._postprocess(
                detections, image_list.image_sizes, original_sizes, mask_threshold=mask_threshold, paste_masks=paste_masks
            )
        return ModelOutput(losses={**proposal_losses, **detector_losses}, detections=detections)

    def _postprocess(
        self,
        detections: list[dict[str, Tensor]],
        image_sizes: list[tuple[int, int]],
        original_sizes: list[tuple[int, int]],
        *,
        mask_threshold: float | None,
        paste_masks: bool = True,
    ) -> list[dict[str, Tensor]]:
        """Boxes (and keypoints) back to the original images; masks pasted as probabilities or binary, or not."""
        if not paste_masks:
            mask_probs = [d.pop("masks", None) for d in detections]
            detections = self.transform.postprocess(detections, image_sizes, original_sizes)
            for detection, probs in zip(detections, mask_probs):
                if probs is not None:
                    detection["mask_probs"] = probs
            return detections
        if mask_threshold is None:
            return self.transform.postprocess(detections, image_sizes, original_sizes)
        mask_probs = [d.pop("masks", None) for d in detections]
        detections = self.transform.postprocess(detections, image_sizes, original_sizes)
        for detection, probs, size in zip(detections, mask_probs, original_sizes):
            if probs is not None:
                detection["masks"] = paste_masks_binary(probs, detection["boxes"], size, threshold=mask_threshold)
        return detections


def _check_targets(images: list[Tensor], targets: list[dict[str, Tensor]]) -> None:
    if len(images) != len(targets):
        raise ValueError(f"got {len(images)} images but {len(targets)} targets")
    for index, (image, target) in enumerate(zip(images, targets)):
        boxes = target.get("boxes")
        if boxes is None or boxes.ndim != 2 or boxes.shape[-1] != 4:
            raise ValueError(f"target {index}: boxes must be a Tensor[N, 4], got {None if boxes is None else tuple(boxes.shape)}")
        degenerate = (boxes[:, 2:] <= boxes[:, :2]).any(dim=1)
        if degenerate.any():
            raise ValueError(f"target {index}: box {boxes[degenerate][0].tolist()} has no positive width and height")
        masks = target.get("masks")
        if masks is not None and tuple(masks.shape[-2:]) != tuple(image.shape[-2:]):
            raise ValueError(f"target {index}: masks are {tuple(masks.shape[-2:])}, image is {tuple(image.shape[-2:])}")


def build_model(cfg: Config | ModelConfig) -> MaskRCNN:
    """The one builder from config to model. Weights are randomly initialised; nothing is downloaded."""
    model_cfg = cfg.model if isinstance(cfg, Config) else cfg
    model_cfg.validate()
    backbone = build_resnet_fpn_backbone(model_cfg.backbone)
    input_cfg = model_cfg.input
    transform = GeneralizedRCNNTransform(
        min_size=tuple(input_cfg.min_size),
        max_size=input_cfg.max_size,
        image_mean=list(input_cfg.pixel_mean),
        image_std=list(input_cfg.pixel_std),
        size_divisible=input_cfg.size_divisible,
    )
    return MaskRCNN(
        transform=transform,
        backbone=backbone,
        rpn=build_rpn(model_cfg.rpn, in_channels=backbone.out_channels),
        roi_heads=build_roi_heads(model_cfg, in_channels=backbone.out_channels),
    )
