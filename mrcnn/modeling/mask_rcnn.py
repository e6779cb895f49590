"""Mask R-CNN assembled from its parts: transform, backbone + FPN, RPN, RoI heads (box + mask)."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor, nn
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from mrcnn.config import Config, ModelConfig
from mrcnn.modeling.backbone import build_resnet_fpn_backbone
from mrcnn.modeling.roi_heads import build_roi_heads
from mrcnn.modeling.rpn import build_rpn


class ModelOutput(NamedTuple):
    """What ``MaskRCNN.forward`` returns in every mode.

    losses: ``loss_*`` scalars; present whenever targets were given (train or eval mode).
    detections: per image, in eval mode only (empty list in train mode):
        ``boxes`` (Tensor[D, 4]): XYXY in the original image's pixels;
        ``labels`` (Tensor[D] int64): contiguous labels 1..K;
        ``scores`` (Tensor[D]): class probabilities;
        ``masks`` (Tensor[D, 1, H, W]): mask probabilities pasted into the original image (threshold at 0.5).
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

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None) -> ModelOutput:
        """
        Args:
            images: per image, Tensor[3, H, W] float RGB in 0..1; sizes may differ.
            targets: optional, per image: ``boxes`` (Tensor[G, 4] float, XYXY absolute pixels),
                ``labels`` (Tensor[G] int64, 1..K), ``masks`` (Tensor[G, H, W] uint8). Required in train mode.

        Returns:
            ModelOutput(losses, detections); see its docstring.
        """
        if self.training and targets is None:
            raise ValueError("MaskRCNN in train mode needs targets; call model.eval() to get detections only")
        if targets is not None:
            _check_targets(images, targets)
        original_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        image_list, targets = self.transform(images, targets)
        features = self.backbone(image_list.tensors)
        proposals, proposal_losses = self.rpn(image_list, features, targets)
        detections, detector_losses = self.roi_heads(features, proposals, image_list.image_sizes, targets)
        if detections:
            detections = self.transform.postprocess(detections, image_list.image_sizes, original_sizes)
        return ModelOutput(losses={**proposal_losses, **detector_losses}, detections=detections)


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
