"""build_model for every preset, the ModelOutput contract in train/eval mode, and the config switches."""

from __future__ import annotations

import pytest
import torch

import mrcnn.modeling.poolers as poolers_module
from mrcnn.config import PRESETS, Config, get_preset
from mrcnn.modeling import MaskRCNN, ModelOutput, build_model
from mrcnn.modeling.mask_head import MaskMLPHead, MaskMLPPredictor

LOSS_KEYS = {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask"}
IMAGE_SIZES = [(120, 160), (150, 110)]  # (H, W), different sizes and orientations

SMALL = {
    "model.input.min_size": [128],
    "model.input.max_size": 192,
    "model.rpn.pre_nms_top_n_test": 200,
    "model.rpn.post_nms_top_n_test": 100,
    "model.rpn.pre_nms_top_n_train": 200,
    "model.rpn.post_nms_top_n_train": 100,
    "model.box_head.batch_size_per_image": 64,
    "model.box_head.score_thresh": 0.0,  # a random model's class scores are ~1/(K+1)
    "model.box_head.detections_per_img": 8,
}


pytestmark = pytest.mark.usefixtures("flush_denormals")  # tests/mrcnn/conftest.py


def small_config(preset: str = "r18_fpn_small", **overrides) -> Config:
    return get_preset(preset).replace(**{**SMALL, **overrides})


def make_batch(num_classes: int, *, seed: int = 0, empty: tuple[int, ...] = ()):
    """Random images with 2 rectangle instances each (or none for image indices in ``empty``)."""
    g = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for index, (H, W) in enumerate(IMAGE_SIZES):
        images.append(torch.rand(3, H, W, generator=g))
        if index in empty:
            boxes = torch.zeros(0, 4)
        else:
            boxes = torch.tensor([[10.0, 12.0, 70.0, 80.0], [40.0, 30.0, W - 5.0, H - 8.0]])
        masks = torch.zeros(len(boxes), H, W, dtype=torch.uint8)
        for m, (x1, y1, x2, y2) in zip(masks, boxes.int().tolist()):
            m[y1 + 2 : y2 - 2, x1 + 2 : x2 - 2] = 1
        labels = torch.randint(1, num_classes + 1, (len(boxes),), generator=g)
        targets.append({"boxes": boxes, "labels": labels, "masks": masks})
    return images, targets


def _assert_detections(detections, images, *, num_classes: int, with_masks: bool = True):
    assert len(detections) == len(images)
    for detection, image in zip(detections, images):
        H, W = image.shape[-2:]
        D = len(detection["scores"])
        assert D > 0
        assert detection["boxes"].shape == (D, 4)
        assert detection["labels"].dtype == torch.int64
        assert detection["labels"].min() >= 1 and detection["labels"].max() <= num_classes
        assert ((detection["scores"] >= 0) & (detection["scores"] <= 1)).all()
        # Boxes are in the ORIGINAL image's pixels, not the resized input's.
        assert (detection["boxes"][:, 2] <= W + 1e-3).all() and (detection["boxes"][:, 3] <= H + 1e-3).all()
        if with_masks:
            assert detection["masks"].shape == (D, 1, H, W)
            assert detection["masks"].min() >= 0 and detection["masks"].max() <= 1
        else:
            assert "masks" not in detection


@pytest.mark.parametrize("preset", sorted(p for p in PRESETS if get_preset(p).model.task == "instances"))
def test_every_preset_builds_trains_and_evaluates(preset):  # keypoint presets: tests/mrcnn/modeling/test_keypoint_head.py
    torch.manual_seed(0)
    cfg = small_config(preset)
    model = build_model(cfg)
    assert isinstance(model, MaskRCNN)
    # Random deep ResNets without trained BN give huge box deltas that clip every box to nothing; with zero
    # delta layers the proposals are the anchors and the detections are the proposals, so some survive.
    for layer in (model.rpn.head.bbox_pred, model.roi_heads.box_predictor.bbox_pred):
        torch.nn.init.zeros_(layer.weight)
        torch.nn.init.zeros_(layer.bias)
    num_classes = cfg.model.num_classes
    assert model.roi_heads.box_predictor.cls_score.out_features == num_classes + 1
    images, targets = make_batch(num_classes)

    model.train()
    out = model(images, targets)
    assert isinstance(out, ModelOutput)
    assert set(out.losses) == LOSS_KEYS
    assert out.detections == []
    assert all(v.ndim == 0 and torch.isfinite(v) for v in out.losses.values())
    sum(out.losses.values()).backward()
    assert model.roi_heads.mask_predictor.mask_fcn_logits.weight.grad is not None

    model.eval()
    with torch.no_grad():
        out = model(images, targets)  # validation: losses AND detections
        assert set(out.losses) == LOSS_KEYS
        assert all(torch.isfinite(v) for v in out.losses.values())
        _assert_detections(out.detections, images, num_classes=num_classes)

        out = model(images)
        assert out.losses == {}
        _assert_detections(out.detections, images, num_classes=num_classes)


def test_empty_targets_train():
    torch.manual_seed(0)
    model = build_model(small_config()).train()
    images, targets = make_batch(5, empty=(0, 1))
    losses = model(images, targets).losses
    assert set(losses) == LOSS_KEYS
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_mask"].item() == 0.0 and losses["loss_box_reg"].item() == 0.0
    assert losses["loss_classifier"].item() > 0.0  # all sampled RoIs are background, still a loss
    sum(losses.values()).backward()

    # One empty image beside a non-empty one.
    images, targets = make_batch(5, empty=(1,))
    losses = model(images, targets).losses
    assert losses["loss_mask"].item() > 0.0


def _seeded_losses(model, images, targets) -> dict[str, float]:
    torch.manual_seed(123)  # the RoI samplers draw at random
    with torch.no_grad():
        return {k: v.item() for k, v in model(images, targets).losses.items()}


def _twin(cfg_a: Config, cfg_b: Config) -> tuple[MaskRCNN, MaskRCNN]:
    """Two models of two configs whose state dicts have the same layout, with identical weights."""
    torch.manual_seed(0)
    a = build_model(cfg_a).train()
    b = build_model(cfg_b).train()
    b.load_state_dict(a.state_dict())
    return a, b


def test_roi_pool_switch_uses_torchvision_roi_pool(monkeypatch):
    base_cfg = small_config()
    pool_cfg = small_config(**{"model.box_head.pooler": "roi_pool"})
    align, pool = _twin(base_cfg, pool_cfg)
    assert pool.roi_heads.box_roi_pool.mode == "roi_pool" and pool.roi_heads.mask_roi_pool.mode == "roi_pool"
    assert align.roi_heads.box_roi_pool.mode == "roi_align"

    calls = {"roi_pool": 0, "roi_align": 0}

    def spy(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(poolers_module, "roi_pool", spy("roi_pool", poolers_module.roi_pool))
    monkeypatch.setattr(poolers_module, "roi_align", spy("roi_align", poolers_module.roi_align))
    images, targets = make_batch(5)
    pool_losses = _seeded_losses(pool, images, targets)
    assert calls["roi_pool"] > 0 and calls["roi_align"] == 0
    calls.update(roi_pool=0, roi_align=0)
    align_losses = _seeded_losses(align, images, targets)
    assert calls["roi_align"] > 0 and calls["roi_pool"] == 0

    # Same weights, same samples: the RPN is untouched, the RoI head outputs differ.
    assert pool_losses["loss_objectness"] == align_losses["loss_objectness"]
    assert pool_losses["loss_classifier"] != align_losses["loss_classifier"]
    assert pool_losses["loss_mask"] != align_losses["loss_mask"]


def test_mlp_mask_head_switch():
    torch.manual_seed(0)
    cfg = small_config(**{"model.mask_head.head": "mlp", "model.mask_head.mlp_dim": 64})
    model = build_model(cfg)
    assert isinstance(model.roi_heads.mask_head, MaskMLPHead)
    assert isinstance(model.roi_heads.mask_predictor, MaskMLPPredictor)
    assert model.roi_heads.mask_head.fc1.in_features == 256 * 14 * 14
    images, targets = make_batch(5)
    losses = model.train()(images, targets).losses
    assert set(losses) == LOSS_KEYS and torch.isfinite(losses["loss_mask"])
    losses["loss_mask"].backward()
    assert model.roi_heads.mask_head.fc1.weight.grad.abs().sum() > 0
    with torch.no_grad():
        detections = model.eval()(images).detections
    _assert_detections(detections, images, num_classes=5)


def test_softmax_mask_loss_switch():
    sigmoid, softmax = _twin(small_config(), small_config(**{"model.mask_head.loss": "softmax"}))
    assert softmax.roi_heads.mask_loss_type == "softmax"
    images, targets = make_batch(5)
    a, b = _seeded_losses(sigmoid, images, targets), _seeded_losses(softmax, images, targets)
    assert {k: v for k, v in a.items() if k != "loss_mask"} == {k: v for k, v in b.items() if k != "loss_mask"}
    assert a["loss_mask"] != b["loss_mask"]
    # Inference reads the softmax probabilities: the masks differ with the same weights.
    with torch.no_grad():
        ma = sigmoid.eval()(images).detections[0]["masks"]
        mb = softmax.eval()(images).detections[0]["masks"]
    assert ma.shape == mb.shape and not torch.allclose(ma, mb)


def test_class_agnostic_mask_has_one_channel():
    torch.manual_seed(0)
    model = build_model(small_config(**{"model.mask_head.class_agnostic": True}))
    assert model.roi_heads.mask_predictor.mask_fcn_logits.out_channels == 1
    per_class = build_model(small_config())
    assert per_class.roi_heads.mask_predictor.mask_fcn_logits.out_channels == 6
    images, targets = make_batch(5)
    assert torch.isfinite(model.train()(images, targets).losses["loss_mask"])
    with torch.no_grad():
        detections = model.eval()(images).detections
    _assert_detections(detections, images, num_classes=5)


def test_mask_head_disabled_gives_faster_rcnn():
    torch.manual_seed(0)
    model = build_model(small_config(**{"model.mask_head.enabled": False}))
    assert not model.roi_heads.has_mask()
    assert not any(k.startswith("roi_heads.mask_") for k in model.state_dict())
    images, targets = make_batch(5)
    losses = model.train()(images, targets).losses
    assert set(losses) == LOSS_KEYS - {"loss_mask"}
    with torch.no_grad():
        out = model.eval()(images, targets)
    assert set(out.losses) == LOSS_KEYS - {"loss_mask"}
    _assert_detections(out.detections, images, num_classes=5, with_masks=False)


def test_train_mode_without_targets_raises():
    model = build_model(small_config()).train()
    images, _ = make_batch(5)
    with pytest.raises(ValueError, match="needs targets"):
        model(images)


def test_degenerate_box_raises_naming_the_target():
    model = build_model(small_config()).train()
    images, targets = make_batch(5)
    targets[1]["boxes"][0] = torch.tensor([30.0, 20.0, 30.0, 50.0])  # zero width
    with pytest.raises(ValueError, match=r"target 1: box \[30\.0, 20\.0, 30\.0, 50\.0\]"):
        model(images, targets)


def test_mismatched_targets_raise():
    model = build_model(small_config()).train()
    images, targets = make_batch(5)
    with pytest.raises(ValueError, match="2 images but 1 targets"):
        model(images, targets[:1])
    targets[0]["masks"] = targets[0]["masks"][:, :-1]
    with pytest.raises(ValueError, match="target 0: masks"):
        model(images, targets)
