"""The keypoint head (paper Section 5): its loss against a hand computation, heatmap decoding, and a keypoint
model's train/eval contract, with and without the mask head."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision

from mrcnn.config import ConfigError, get_preset
from mrcnn.modeling import build_model
from mrcnn.modeling.keypoint_head import keypoint_rcnn_loss, keypoints_from_heatmaps

from .test_model import IMAGE_SIZES, SMALL, make_batch

K, M = 3, 56


def test_loss_is_a_softmax_cross_entropy_over_the_m2_locations_of_each_labelled_keypoint():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, K, M, M, generator=g, requires_grad=True)
    proposals = [torch.tensor([[10.0, 20.0, 66.0, 76.0], [0.0, 0.0, 28.0, 56.0]])]  # 56x56 and 28x56 px
    gt = torch.tensor(
        [
            [[30.5, 40.2, 2.0], [11.0, 75.9, 1.0], [50.0, 50.0, 0.0]],  # third: not labelled
            [[100.0, 5.0, 2.0], [7.3, 13.9, 2.0], [27.9, 55.0, 2.0]],  # first: outside the RoI
        ]
    )
    matched = [torch.tensor([0, 1])]
    loss = keypoint_rcnn_loss(logits, proposals, [gt], matched)

    expected = []
    for r, k, (x, y) in ((0, 0, (30.5, 40.2)), (0, 1, (11.0, 75.9)), (1, 1, (7.3, 13.9)), (1, 2, (27.9, 55.0))):
        x0, y0, x1, y1 = proposals[0][r].tolist()
        col, row = int((x - x0) * M / (x1 - x0)), int((y - y0) * M / (y1 - y0))
        expected.append(-F.log_softmax(logits[r, k].flatten(), dim=0)[row * M + col])
    torch.testing.assert_close(loss, torch.stack(expected).mean())
    loss.backward()
    assert logits.grad[0, 2].abs().sum() == 0 and logits.grad[1, 0].abs().sum() == 0  # ignored keypoints

    nothing = keypoint_rcnn_loss(logits, proposals, [torch.zeros(2, K, 3)], matched)
    assert nothing.item() == 0 and nothing.requires_grad


def test_keypoints_from_heatmaps_returns_each_peak_in_box_pixels():
    logits = torch.full((1, K, M, M), -5.0)
    peaks = [(5, 10), (28, 28), (50, 3)]  # (row, col)
    for k, (row, col) in enumerate(peaks):
        logits[0, k, row, col] = 5.0
    box = torch.tensor([[100.0, 50.0, 212.0, 162.0]])  # 112 px: 2 px per heatmap cell
    keypoints, scores = keypoints_from_heatmaps(logits, [box, box[:0]])
    assert keypoints[0].shape == (1, K, 3) and scores[0].shape == (1, K)
    assert keypoints[1].shape == (0, K, 3)
    for k, (row, col) in enumerate(peaks):
        x, y, v = keypoints[0][0, k].tolist()
        assert abs(x - (100 + 2 * col + 1)) <= 1.0 and abs(y - (50 + 2 * row + 1)) <= 1.0 and v == 1
    assert (scores[0] > 0).all()


def _with_keypoints(targets, num_keypoints=K):
    for t in targets:
        boxes = t["boxes"]
        centre = (boxes[:, :2] + boxes[:, 2:]) / 2
        points = torch.stack([boxes[:, :2] + 3, centre, boxes[:, 2:] - 3], dim=1)[:, :num_keypoints]  # [G, K, 2]
        t["keypoints"] = torch.cat([points, torch.full((len(boxes), num_keypoints, 1), 2.0)], dim=2)
    return targets


@pytest.mark.parametrize("with_masks", [True, False])
def test_keypoint_model_trains_and_predicts_keypoints_in_original_pixels(with_masks):
    torch.manual_seed(0)
    cfg = get_preset("r18_fpn_small").replace(
        **{**SMALL, "model.task": "keypoints", "model.keypoint_head.num_keypoints": K, "model.mask_head.enabled": with_masks}
    )
    assert cfg.model.iou_types == (("bbox", "segm", "keypoints") if with_masks else ("bbox", "keypoints"))
    model = build_model(cfg)
    images, targets = make_batch(cfg.model.num_classes, empty=(1,))
    targets = _with_keypoints(targets)

    model.train()
    losses = model(images, targets).losses
    assert ("loss_mask" in losses) == with_masks and "loss_keypoint" in losses
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.roi_heads.keypoint_predictor.kps_score_lowres.weight.grad.abs().sum() > 0

    model.eval()
    with torch.no_grad():
        out = model(images, targets)
    assert "loss_keypoint" in out.losses
    for detection, (H, W) in zip(out.detections, IMAGE_SIZES):
        D = len(detection["scores"])
        assert D > 0 and detection["keypoints"].shape == (D, K, 3) and detection["keypoints_scores"].shape == (D, K)
        assert ("masks" in detection) == with_masks
        x, y = detection["keypoints"][..., 0], detection["keypoints"][..., 1]
        boxes = detection["boxes"]
        # decoded inside (or on the edge of) each detection's box, in the original image's pixels
        assert (x >= boxes[:, None, 0] - 1).all() and (x <= boxes[:, None, 2] + 1).all() and (x <= W + 1).all()
        assert (y >= boxes[:, None, 1] - 1).all() and (y <= boxes[:, None, 3] + 1).all() and (y <= H + 1).all()


def test_missing_or_misshaped_keypoint_targets_are_clear_errors():
    cfg = get_preset("r18_fpn_small").replace(**{**SMALL, "model.task": "keypoints", "model.keypoint_head.num_keypoints": K})
    model = build_model(cfg).train()
    images, targets = make_batch(cfg.model.num_classes, empty=(1,))
    with pytest.raises(ValueError, match=r"target 0: keypoints must be a Tensor\[2, 3, 3\] for this model, got None"):
        model(images, targets)  # the empty image 1 needs none
    targets[0]["keypoints"] = torch.zeros(2, 5, 3)  # 5 keypoints for a 3-keypoint head
    with pytest.raises(ValueError, match=r"got \(2, 5, 3\)"):
        model(images, targets)


def test_task_config_and_the_r50_keypoint_preset_layout():
    with pytest.raises(ConfigError, match=r"model\.task: expected one of \['instances', 'keypoints'\]"):
        get_preset("r18_fpn_small").replace(**{"model.task": "pose"})
    with pytest.raises(ConfigError, match="num_keypoints"):
        get_preset("r18_fpn_small").replace(**{"model.keypoint_head.num_keypoints": 0})
    cfg = get_preset("r50_fpn_keypoints")
    assert cfg.model.keypoint_head.heatmap_size == 56 and cfg.model.iou_types == ("bbox", "keypoints")
    model = build_model(cfg)
    theirs = torchvision.models.detection.keypointrcnn_resnet50_fpn(weights=None, weights_backbone=None).state_dict()
    shapes = {k: tuple(v.shape) for k, v in theirs.items() if not k.endswith("num_batches_tracked")}  # frozen BN here
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == shapes
    model.load_state_dict(theirs, strict=True)  # submodule names are torchvision's
