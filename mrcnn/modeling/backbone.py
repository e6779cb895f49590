"""Backbone: ResNet (18/34/50/101) with a Feature Pyramid Network giving P2-P6.

Built from torchvision's ResNet and FPN so that torchvision state dicts load key for key.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from torch import nn
from torchvision.models import resnet
from torchvision.models.detection.backbone_utils import (
    BackboneWithFPN,
    _resnet_fpn_extractor,
)
from torchvision.ops import misc as misc_nn_ops

from mrcnn.config import BackboneConfig

_RESNETS = {18: resnet.resnet18, 34: resnet.resnet34, 50: resnet.resnet50, 101: resnet.resnet101}


def norm_layer_for(name: str, *, num_groups: int = 32) -> Callable[..., nn.Module] | None:
    """The normalisation layer factory named by a config value (``None`` for ``"none"``)."""
    if name == "frozen_bn":
        return misc_nn_ops.FrozenBatchNorm2d
    if name == "bn":
        return nn.BatchNorm2d
    if name == "gn":
        return partial(nn.GroupNorm, num_groups)
    if name == "none":
        return None
    raise ValueError(f"unknown norm {name!r}; expected frozen_bn, bn, gn or none")


def build_resnet_fpn_backbone(cfg: BackboneConfig) -> BackboneWithFPN:
    """ResNet body (``backbone.body``) + FPN (``backbone.fpn``) returning feature maps '0'..'3' and 'pool'.

    Returns:
        BackboneWithFPN: maps an image batch Tensor[B, 3, H, W] to an OrderedDict of 5 feature maps
        (strides 4, 8, 16, 32, 64), each with ``cfg.out_channels`` channels.
    """
    body_norm = norm_layer_for(cfg.norm)
    if body_norm is None:
        raise ValueError("backbone.norm: a ResNet needs a normalisation layer; use frozen_bn, bn or gn")
    body = _RESNETS[cfg.depth](weights=None, norm_layer=body_norm)
    return _resnet_fpn_extractor(body, cfg.trainable_layers, norm_layer=norm_layer_for(cfg.fpn_norm))
