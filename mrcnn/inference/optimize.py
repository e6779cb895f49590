"""Preparing a model for fast inference: BatchNorm folded into the convolutions, NHWC convolutions, and
(when asked for) Winograd 3x3 convolutions.

All are rewrites of the same function, not approximations: folding moves a frozen (or eval-mode)
BatchNorm's affine map into the preceding convolution's weight and bias, and channels-last changes only
the memory layout the convolutions run in. Outputs change by float rounding only
(tests/mrcnn/inference/test_optimize.py compares detections with the unmodified model's).
"""

from __future__ import annotations

import itertools

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet
from torchvision.ops.misc import FrozenBatchNorm2d

from mrcnn.modeling.mask_rcnn import MaskRCNN
from mrcnn.inference.winograd import use_winograd

# Containers whose children run in registration order where a conv is directly followed by its norm.
_SEQUENTIAL_CONTAINERS = (nn.Sequential, Bottleneck, BasicBlock, ResNet, nn.ModuleDict)


def _fold_into_conv(conv: nn.Conv2d, norm: nn.Module) -> None:
    """conv <- norm(conv(x)) for a frozen or eval-mode BatchNorm ``norm`` (in place)."""
    if not isinstance(norm, FrozenBatchNorm2d) and (norm.training or norm.running_var is None):
        raise ValueError(f"{norm}: only frozen or eval-mode BatchNorm with running statistics can be folded")
    eps = norm.eps
    weight = norm.weight if norm.weight is not None else torch.ones_like(norm.running_var)
    bias = norm.bias if norm.bias is not None else torch.zeros_like(norm.running_mean)
    scale = weight * (norm.running_var + eps).rsqrt()  # [C_out]
    conv_bias = conv.bias if conv.bias is not None else torch.zeros_like(norm.running_mean)
    with torch.no_grad():
        conv.weight = nn.Parameter(conv.weight * scale.reshape(-1, 1, 1, 1), requires_grad=False)
        conv.bias = nn.Parameter((conv_bias - norm.running_mean) * scale + bias, requires_grad=False)


def fold_batchnorm(module: nn.Module) -> int:
    """Fold every BatchNorm that directly follows a conv into it, replacing the norm by ``nn.Identity``.

    Covers torchvision's ResNet stem and blocks (``convN`` -> ``bnN``, ``downsample``) and ``Sequential``
    conv-norm pairs (e.g. ``Conv2dNormActivation`` in the v2 heads). GroupNorm is left alone (it depends
    on the input). Works in place; call it on a model in eval mode that will not be trained again.

    Returns:
        the number of norms folded.
    """
    folded = 0
    for parent in list(module.modules()):
        if not isinstance(parent, _SEQUENTIAL_CONTAINERS):
            continue
        children = list(parent.named_children())
        for (_, first), (second_name, second) in itertools.pairwise(children):
            if isinstance(first, nn.Conv2d) and isinstance(second, (FrozenBatchNorm2d, nn.BatchNorm2d)):
                if second.running_mean is None or first.out_channels != len(second.running_mean):
                    continue
                _fold_into_conv(first, second)
                setattr(parent, second_name, nn.Identity())
                folded += 1
    return folded


def optimize_for_inference(model: MaskRCNN, *, channels_last: bool = True, winograd: bool = False) -> MaskRCNN:
    """Rewrite ``model`` in place for inference: BatchNorm folded, convolutions in NHWC (channels-last),
    and with ``winograd=True`` the wide 3x3 convolutions as Winograd F(4x4, 3x3) on the CPU
    (``mrcnn.inference.winograd``).

    Args:
        model: the network; put in eval mode here.
        channels_last: run the backbone, RPN and mask head convolutions in NHWC.
        winograd: replace the FPN, RPN and mask head 3x3 convolutions by ``WinogradConv2d``. Pass True only
            where malloc keeps freed memory (``mrcnn.runtime.keep_freed_memory`` applied by the application):
            with glibc's default malloc the Winograd temporaries page-fault in on every pass and it is slower
            than the direct convolution (benchmarks/RESULTS.md).

    Measured on the 2-core CPU (benchmarks/bench_inference.py, notes in benchmarks/RESULTS.md): the
    backbone with FPN ran 1.4x faster folded and in NHWC than as loaded. The model is put in eval mode;
    do not train it afterwards (the folded convolutions have no norm to train).

    Returns:
        the same model.
    """
    model.eval()
    fold_batchnorm(model)
    if winograd:
        # Where it measured faster in the model (benchmarks/RESULTS.md): the FPN outputs, the RPN head and the
        # mask head; at run time only on inputs of at least MIN_TILES tiles (P2, P3 and the RoI batch).
        # The ResNet stages' 3x3s (14x17 tiles at most) ran as fast or faster direct.
        for part in (getattr(model.backbone, "fpn", None), model.rpn, model.roi_heads.mask_head):
            if part is not None:
                use_winograd(part)
    if channels_last:
        for part in (model.backbone, model.rpn, model.roi_heads.mask_head, model.roi_heads.mask_predictor):
            if part is not None:
                part.to(memory_format=torch.channels_last)
        model.channels_last = True
    return model
