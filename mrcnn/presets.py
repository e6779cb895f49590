"""The named presets: a few lines each over the config dataclasses of :mod:`mrcnn.config`.

``get_preset(name)`` is also importable from ``mrcnn.config``.
"""

from __future__ import annotations

from mrcnn.config import (
    BackboneConfig,
    BoxHeadConfig,
    Config,
    ConfigError,
    InputConfig,
    KeypointHeadConfig,
    MaskHeadConfig,
    ModelConfig,
    RPNConfig,
    SolverConfig,
)

__all__ = ["PRESETS", "get_preset"]


def _r50_fpn() -> Config:
    return Config(name="r50_fpn", model=ModelConfig(num_classes=90))


def _r50_fpn_v2() -> Config:
    return Config(
        name="r50_fpn_v2",
        model=ModelConfig(
            num_classes=90,
            backbone=BackboneConfig(fpn_norm="bn"),
            rpn=RPNConfig(head_conv_depth=2),
            box_head=BoxHeadConfig(head="4conv1fc", head_norm="bn"),
            mask_head=MaskHeadConfig(head_norm="bn"),
        ),
    )


def _r50_fpn_keypoints() -> Config:
    """torchvision's ``keypointrcnn_resnet50_fpn`` layout: person boxes + 17 COCO keypoints, no mask head,
    trained at a random shorter side in 640..800 (the paper's keypoint training), tested at 800."""
    return Config(
        name="r50_fpn_keypoints",
        model=ModelConfig(
            num_classes=1,
            input=InputConfig(min_size=(640, 672, 704, 736, 768, 800)),
            mask_head=MaskHeadConfig(enabled=False),
            task="keypoints",
        ),
    )


def _r101_fpn() -> Config:
    return Config(name="r101_fpn", model=ModelConfig(num_classes=90, backbone=BackboneConfig(depth=101)))


def _r18_fpn_small() -> Config:
    """ResNet-18-FPN for small images on a CPU: learns the synthetic shapes from scratch in minutes."""
    return Config(
        name="r18_fpn_small",
        model=ModelConfig(
            num_classes=5,
            backbone=BackboneConfig(depth=18, norm="bn", trainable_layers=5),
            input=InputConfig(min_size=(128,), max_size=224),
            # The paper's anchor sizes (32..512), although the objects are 10-77 px: they learned faster
            # than anchors scaled to the image (8..128): segm AP 24.7 vs 18.0 after 220 steps, 29.3 vs
            # 22.0 after 262 (benchmarks/RESULTS.md, "Learning per step").
            rpn=RPNConfig(
                pre_nms_top_n_train=1000,
                post_nms_top_n_train=500,
                pre_nms_top_n_test=500,
                post_nms_top_n_test=250,
            ),
            # Fewer sampled RoIs and a narrower mask head than the paper's: 1-4 objects per 128 px image
            # need no more, and it trains 1.5x faster on a CPU (benchmarks/RESULTS.md).
            box_head=BoxHeadConfig(batch_size_per_image=64, aligned=True),
            mask_head=MaskHeadConfig(conv_dim=128),
            # Used with model.task=keypoints: a narrower, shallower keypoint head than the paper's 8 x 512, which
            # counts ~1400 GFLOP per training step of 6 images against ~180 for the rest of this model (4 x 128:
            # ~60); 5 keypoints as the synthetic houses.
            keypoint_head=KeypointHeadConfig(num_keypoints=5, num_convs=4, conv_dim=128),
        ),
        solver=SolverConfig(
            optimizer="adamw",
            base_lr=1e-3,
            reference_batch_size=8,
            weight_decay=1e-4,
            warmup_iters=100,
            warmup_factor=0.01,
            steps=(0.8,),
            max_iters=3000,
            batch_size=8,
            clip_grad_norm=10.0,
        ),
    )


def _r18_fpn_small_keypoints() -> Config:
    """``r18_fpn_small`` for the synthetic houses' keypoints (``mrcnn demo --task keypoints``), from the
    per-step runs in benchmarks/RESULTS.md ("Keypoint demo (issue 16, B7)")."""
    return _r18_fpn_small().replace(
        **{
            "name": "r18_fpn_small_keypoints",
            "model.task": "keypoints",
            "model.num_classes": 1,
            # Boxes + keypoints only: the demo reports OKS AP, and the mask head would cost time per step.
            "model.mask_head.enabled": False,
            # The houses (20-55% of the side) keep enough detail at 96 px, which cuts the backbone's work.
            "model.input.min_size": [96],
            "model.input.max_size": 96,
            # 7x7 RoI features -> 28x28 heatmaps (1-2 px per cell on a 20-50 px house) instead of 56x56: 2.29
            # against 3.1 CPU seconds per step of 8 images; 52.9 holdout OKS AP after 180 steps.
            "model.keypoint_head.pooler_resolution": 7,
            # The demo's budget is a few hundred steps (180 reach the 40); 100 would be a third of it.
            "solver.warmup_iters": 30,
        }
    )


PRESETS = {
    "r50_fpn": _r50_fpn,
    "r50_fpn_v2": _r50_fpn_v2,
    "r101_fpn": _r101_fpn,
    "r18_fpn_small": _r18_fpn_small,
    "r50_fpn_keypoints": _r50_fpn_keypoints,
    "r18_fpn_small_keypoints": _r18_fpn_small_keypoints,
}


def get_preset(name: str) -> Config:
    """The named preset's config. Raises ConfigError naming the known presets."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; known presets: {sorted(PRESETS)}")
    return PRESETS[name]().validate()
