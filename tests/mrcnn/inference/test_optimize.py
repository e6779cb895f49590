"""The fast inference path against the reference computations it replaces.

Each fast path is checked on its own (pasting, class-wise NMS, label-only mask logits, threaded RoI
pooling, BatchNorm folding, the RLE of column-major masks) and end to end: the fully optimized
Predictor (Winograd included) against torchvision's own Mask R-CNN with the same random weights, on the bundled real photos.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.models.detection import maskrcnn_resnet50_fpn, maskrcnn_resnet50_fpn_v2
from torchvision.models.detection.roi_heads import paste_masks_in_image
from torchvision.ops import batched_nms
from torchvision.ops.misc import FrozenBatchNorm2d

from mrcnn.config import get_preset
from mrcnn.data.categories import CategoryMap
from mrcnn.data.dataset import image_to_tensor
from mrcnn.data.images import load_image
from mrcnn.data.masks import masks_to_rles
from mrcnn.inference import WinogradConv2d, fold_batchnorm, optimize_for_inference
from mrcnn.modeling import build_model
from mrcnn.modeling.mask_head import (
    build_mask_head,
    mask_probs_for_labels,
    predict_mask_probs,
)
from mrcnn.modeling.paste import paste_masks_binary
from mrcnn.modeling.poolers import MultiScaleRoIPooler
from mrcnn.modeling.roi_heads import _class_nms_top
from mrcnn.predictor import Predictor
from tests.conftest import COCO_MINI_IMAGES, PHOTO
from tests.mrcnn.inference.inference_checks import assert_same_detections_up_to_rounding

SIZE, MAX_SIZE = 320, 533  # small inputs keep the R50 runs to seconds


def _random_boxes(generator: torch.Generator, num: int, *, width: int, height: int) -> torch.Tensor:
    xy = torch.rand(num, 2, generator=generator) * torch.tensor([width, height]) * 1.1 - 10
    wh = torch.rand(num, 2, generator=generator) * 150 + 0.2
    return torch.cat([xy, xy + wh], dim=1)


def test_paste_masks_binary_equals_torchvision_paste_then_threshold():
    generator = torch.Generator().manual_seed(0)
    H, W = 97, 131
    # Detections are clipped to the image (the box head does it); pasting expands them past its edges.
    boxes = _random_boxes(generator, 60, width=W, height=H)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, W)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, H)
    boxes[0] = torch.tensor([0.0, 0.0, W, H])  # the whole image
    boxes[1] = torch.tensor([10.0, 10.0, 10.3, 10.2])  # under a pixel
    boxes[2] = torch.tensor([125.0, 90.0, W, H])  # in a corner
    probs = torch.rand(60, 1, 28, 28, generator=generator)
    for threshold in (0.5, 0.3):
        reference = paste_masks_in_image(probs, boxes, (H, W))[:, 0] >= threshold
        ours = paste_masks_binary(probs, boxes, (H, W), threshold=threshold)
        assert ours.shape == (60, H, W) and ours.dtype == torch.bool
        assert torch.equal(ours, reference)
    assert paste_masks_binary(probs[:0], boxes[:0], (H, W)).shape == (0, H, W)


def test_column_major_masks_encode_like_contiguous_ones():
    generator = torch.Generator().manual_seed(1)
    masks = paste_masks_binary(torch.rand(5, 1, 28, 28, generator=generator), _random_boxes(generator, 5, width=64, height=48), (48, 64))
    assert not masks.is_contiguous()
    assert masks_to_rles(masks.numpy()) == masks_to_rles(masks.contiguous().numpy().astype(np.uint8))


@pytest.mark.parametrize("num_candidates", [0, 30, 5000])
def test_class_nms_top_equals_batched_nms_then_top(num_candidates):
    generator = torch.Generator().manual_seed(num_candidates)
    # Clustered boxes, so that NMS suppresses a lot and the candidate window has to widen.
    centres = torch.rand(20, 2, generator=generator) * 400
    pick = torch.randint(0, 20, (num_candidates,), generator=generator)
    xy = centres[pick] + torch.randn(num_candidates, 2, generator=generator) * 4
    boxes = torch.cat([xy, xy + 40 + torch.rand(num_candidates, 2, generator=generator) * 5], dim=1)
    scores = torch.rand(num_candidates, generator=generator)
    scores[: num_candidates // 10] = 0.5  # ties
    labels = torch.randint(1, 4, (num_candidates,), generator=generator)
    for top in (1, 100):
        reference = batched_nms(boxes, scores, labels, 0.5)[:top]
        ours = _class_nms_top(boxes, scores, labels, iou_threshold=0.5, top=top)
        assert set(ours.tolist()) == set(reference.tolist())
        assert torch.equal(scores[ours], scores[reference])


@pytest.mark.parametrize("loss_type,class_agnostic", [("sigmoid", False), ("softmax", False), ("sigmoid", True)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_predict_mask_probs_equals_full_predictor(loss_type, class_agnostic, channels_last):
    torch.manual_seed(0)
    cfg = get_preset("r18_fpn_small").model.mask_head
    cfg = type(cfg)(**{**cfg.__dict__, "loss": loss_type, "class_agnostic": class_agnostic})
    _, predictor = build_mask_head(cfg, in_channels=256, num_classes=5)
    predictor.eval()
    features = torch.randn(7, cfg.conv_dim, 14, 14)
    if channels_last:
        predictor.to(memory_format=torch.channels_last)
        features = features.contiguous(memory_format=torch.channels_last)
    labels = [torch.tensor([1, 5, 3]), torch.tensor([], dtype=torch.int64), torch.tensor([2, 2, 4, 1])]
    with torch.inference_mode():
        reference = mask_probs_for_labels(predictor(features), labels, loss_type=loss_type)
        ours = predict_mask_probs(predictor, features, labels, loss_type=loss_type)
    assert [p.shape for p in ours] == [p.shape for p in reference] == [(3, 1, 28, 28), (0, 1, 28, 28), (4, 1, 28, 28)]
    for a, b in zip(ours, reference):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


@pytest.mark.parametrize("mode", ["roi_align", "roi_pool"])
def test_threaded_pooling_equals_serial(mode):
    generator = torch.Generator().manual_seed(0)
    features = {str(i): torch.randn(2, 8, 64 // 2**i, 80 // 2**i, generator=generator) for i in range(4)}
    boxes = [_random_boxes(generator, 300, width=320, height=256).clamp(0, 250) for _ in range(2)]
    boxes = [torch.cat([b[:, :2], b[:, :2] + (b[:, 2:] - b[:, :2]).clamp(min=1)], dim=1) for b in boxes]
    pooler = MultiScaleRoIPooler(featmap_names=list(features), output_size=7, mode=mode)
    shapes = [(256, 320)] * 2
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        serial = pooler(features, boxes, shapes)
        torch.set_num_threads(2)
        with torch.inference_mode():
            threaded = pooler(features, boxes, shapes)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(threaded, serial)


@pytest.mark.parametrize("norm", ["frozen", "bn"])
def test_fold_batchnorm_keeps_the_function(norm):
    torch.manual_seed(0)
    make_norm = (lambda c: FrozenBatchNorm2d(c)) if norm == "frozen" else nn.BatchNorm2d
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), make_norm(8), nn.ReLU(), nn.Conv2d(8, 4, 1, bias=True), make_norm(4))
    for module in net.modules():
        if isinstance(module, (FrozenBatchNorm2d, nn.BatchNorm2d)):
            module.weight.data.uniform_(0.5, 2)
            module.bias.data.uniform_(-1, 1)
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    net.eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = net(x)
        folded = copy.deepcopy(net)
        assert fold_batchnorm(folded) == 2
        assert not any(isinstance(m, (FrozenBatchNorm2d, nn.BatchNorm2d)) for m in folded.modules())
        torch.testing.assert_close(folded(x), expected, rtol=1e-5, atol=1e-5)


def test_fold_batchnorm_refuses_a_training_batchnorm():
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)).train()
    with pytest.raises(ValueError, match="eval-mode BatchNorm"):
        fold_batchnorm(net)


def test_optimize_for_inference_folds_every_resnet50_norm():
    plain = optimize_for_inference(build_model(get_preset("r50_fpn")))  # Winograd only when asked for
    assert plain.channels_last and not any(isinstance(m, WinogradConv2d) for m in plain.modules())
    model = build_model(get_preset("r50_fpn"))
    optimize_for_inference(model, winograd=True)
    assert model.channels_last and not model.training
    assert not any(isinstance(m, (FrozenBatchNorm2d, nn.BatchNorm2d)) for m in model.backbone.modules())
    # Winograd for the 3x3 convolutions of the FPN outputs (4), the RPN head (1) and the mask head (4).
    winograd = [name for name, m in model.named_modules() if isinstance(m, WinogradConv2d)]
    assert len(winograd) == 9
    assert sum(name.startswith("roi_heads.mask_head") for name in winograd) == 4


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    return [load_image(PHOTO)] + [load_image(p) for p in sorted(COCO_MINI_IMAGES.glob("*.jpg"))[:2]]


@pytest.mark.parametrize("arch", ["r50_fpn", "r50_fpn_v2"])
def test_optimized_predictor_matches_torchvision_on_real_photos(arch, photos):
    """Random weights, score threshold 0 (100 detections per image go through the mask head)."""
    builder = {"r50_fpn": maskrcnn_resnet50_fpn, "r50_fpn_v2": maskrcnn_resnet50_fpn_v2}[arch]
    torch.manual_seed(0)
    theirs = builder(weights=None, weights_backbone=None, box_score_thresh=0.0, min_size=SIZE, max_size=MAX_SIZE).eval()
    with torch.no_grad():
        # Random box deltas are large (unnormalised features) and give sliver boxes along the image border;
        # small ones keep the detections near their anchors, with masks worth comparing.
        theirs.rpn.head.bbox_pred.weight.mul_(1e-3)
        theirs.roi_heads.box_predictor.bbox_pred.weight.mul_(1e-3)
    if arch == "r50_fpn_v2":  # fresh BatchNorm statistics are the identity: give them some to fold
        for module in theirs.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.8, 1.2)
    cfg = get_preset(arch).replace(
        **{"model.input.min_size": [SIZE], "model.input.max_size": MAX_SIZE, "model.box_head.score_thresh": 0.0}
    )
    model = build_model(cfg)
    model.load_state_dict(theirs.state_dict())
    categories = CategoryMap.from_names([f"c{i}" for i in range(1, cfg.model.num_classes + 1)])
    predictor = Predictor(model, config=cfg, categories=categories, score_threshold=0.0, optimize={"winograd": True})
    assert predictor.inference_model is not predictor.model and predictor.inference_model.channels_last
    assert any(isinstance(m, WinogradConv2d) for m in predictor.inference_model.modules())
    with torch.inference_mode():
        references = [theirs([image_to_tensor(img)])[0] for img in photos]
    for photo, reference in zip(photos, references):
        (ours,) = predictor.predict_raw([photo])  # one at a time: a batch pads every image to its largest
        assert len(ours["labels"]) == 100
        assert_same_detections_up_to_rounding(ours, reference, min_masks_compared=50)
    # The model handed in is untouched: its state dict still loads into torchvision's model.
    theirs.load_state_dict(predictor.model.state_dict())
