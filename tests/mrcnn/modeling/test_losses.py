"""mask_rcnn_loss (sigmoid and softmax variants) and fast_rcnn_loss against manual computations."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.ops import roi_align

from mrcnn.modeling.box_head import fast_rcnn_loss
from mrcnn.modeling.mask_head import mask_rcnn_loss

M = 8  # mask side
NUM_CLASSES = 4  # K; mask channels K + 1


def _problem(seed: int = 0, *, channels: int = NUM_CLASSES + 1):
    """Two images: image 0 with 2 instances and 3 positive RoIs, image 1 with 1 instance and 2 RoIs."""
    g = torch.Generator().manual_seed(seed)
    gt_masks = [(torch.rand(2, 24, 20, generator=g) > 0.5).to(torch.uint8), torch.zeros(1, 16, 16, dtype=torch.uint8)]
    gt_masks[1][0, 2:12, 3:9] = 1
    gt_labels = [torch.tensor([3, 1]), torch.tensor([2])]
    proposals = [
        torch.tensor([[1.0, 2.0, 15.5, 20.0], [0.0, 0.0, 19.0, 23.0], [4.3, 3.1, 12.7, 9.9]]),
        torch.tensor([[2.0, 1.0, 10.0, 13.0], [0.5, 0.5, 14.0, 15.0]]),
    ]
    matched_idxs = [torch.tensor([0, 1, 0]), torch.tensor([0, 0])]
    logits = torch.randn(5, channels, M, M, generator=g, requires_grad=True)
    return logits, proposals, gt_masks, gt_labels, matched_idxs


def _targets(proposals, gt_masks, matched_idxs) -> torch.Tensor:
    """The documented mask target: each matched GT mask cropped to its RoI by RoIAlign (legacy, not aligned)."""
    per_image = []
    for boxes, masks, idxs in zip(proposals, gt_masks, matched_idxs):
        rois = torch.cat([torch.zeros(len(boxes), 1), boxes], dim=1)
        per_roi = [roi_align(masks[i][None, None].float(), rois[r : r + 1], (M, M), 1.0)[0, 0] for r, i in enumerate(idxs)]
        per_image.append(torch.stack(per_roi))
    return torch.cat(per_image)  # [R, M, M]


def _roi_labels(gt_labels, matched_idxs) -> torch.Tensor:
    return torch.cat([labels[idxs] for labels, idxs in zip(gt_labels, matched_idxs)])


def _manual_bce(logits_per_roi: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    p = torch.sigmoid(logits_per_roi.double())
    t = targets.double()
    return -(t * torch.log(p) + (1 - t) * torch.log(1 - p)).mean()


def test_sigmoid_loss_equals_manual_bce_on_gt_channel():
    logits, proposals, gt_masks, gt_labels, matched = _problem()
    loss = mask_rcnn_loss(logits, proposals, gt_masks, gt_labels, matched, loss_type="sigmoid")
    labels = _roi_labels(gt_labels, matched)
    assert labels.tolist() == [3, 1, 3, 2, 2]
    expected = _manual_bce(logits[torch.arange(5), labels], _targets(proposals, gt_masks, matched))
    assert loss.ndim == 0
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-6)


def test_sigmoid_targets_are_the_cropped_masks():
    # A mask that is 1 inside the RoI gives targets of 1, a mask that is 0 gives 0: BCE = softplus(-x) / softplus(x).
    logits = torch.randn(2, 3, M, M)
    gt_masks = [torch.zeros(2, 32, 32, dtype=torch.uint8)]
    gt_masks[0][0] = 1
    proposals = [torch.tensor([[4.0, 4.0, 20.0, 20.0], [4.0, 4.0, 20.0, 20.0]])]
    matched = [torch.tensor([0, 1])]
    gt_labels = [torch.tensor([1, 2])]
    loss = mask_rcnn_loss(logits, proposals, gt_masks, gt_labels, matched)
    expected = torch.cat([torch.nn.functional.softplus(-logits[0, 1]), torch.nn.functional.softplus(logits[1, 2])]).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


def test_sigmoid_loss_ignores_every_channel_but_the_gt_class():
    logits, proposals, gt_masks, gt_labels, matched = _problem()
    labels = _roi_labels(gt_labels, matched)
    base = mask_rcnn_loss(logits, proposals, gt_masks, gt_labels, matched)
    for channel in range(NUM_CLASSES + 1):
        for roi in range(len(labels)):
            changed = logits.detach().clone()
            changed[roi, channel] += 5.0 * torch.randn(M, M)
            loss = mask_rcnn_loss(changed, proposals, gt_masks, gt_labels, matched)
            if channel == labels[roi]:
                assert loss.item() != base.item(), f"changing RoI {roi}'s GT channel {channel} left the loss unchanged"
            else:
                assert torch.equal(loss, base.detach()), f"RoI {roi}, channel {channel} (GT {labels[roi]}) changed the loss"


def test_sigmoid_gradient_only_on_gt_channel():
    logits, proposals, gt_masks, gt_labels, matched = _problem()
    mask_rcnn_loss(logits, proposals, gt_masks, gt_labels, matched).backward()
    labels = _roi_labels(gt_labels, matched)
    for roi, label in enumerate(labels.tolist()):
        others = [c for c in range(NUM_CLASSES + 1) if c != label]
        assert torch.count_nonzero(logits.grad[roi, others]) == 0
        assert torch.count_nonzero(logits.grad[roi, label]) == M * M


def test_class_agnostic_sigmoid_uses_channel_zero():
    logits, proposals, gt_masks, gt_labels, matched = _problem(channels=1)
    loss = mask_rcnn_loss(logits, proposals, gt_masks, gt_labels, matched)
    expected = _manual_bce(logits[:, 0], _targets(proposals, gt_masks, matched))
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-6)
    loss.backward()
    assert torch.count_nonzero(logits.grad) == logits.numel()


@pytest.mark.parametrize("loss_type", ["sigmoid", "softmax"])
@pytest.mark.parametrize("num_gt", [0, 2])
def test_no_positive_rois_gives_zero_and_stays_differentiable(loss_type, num_gt):
    logits = torch.zeros(0, NUM_CLASSES + 1, M, M, requires_grad=True)
    loss = mask_rcnn_loss(
        logits,
        [torch.zeros(0, 4)],
        [torch.ones(num_gt, 16, 16, dtype=torch.uint8)],
        [torch.ones(num_gt, dtype=torch.int64)],
        [torch.zeros(0, dtype=torch.int64)],
        loss_type=loss_type,
    )
    assert loss.ndim == 0 and loss.item() == 0.0
    assert loss.requires_grad
    loss.backward()
    assert logits.grad is not None and logits.grad.shape == logits.shape


def test_softmax_loss_equals_manual_per_pixel_cross_entropy_and_couples_channels():
    logits, proposals, gt_masks, gt_labels, matched = _problem()
    loss = mask_rcnn_loss(logits, proposals, gt_masks, gt_labels, matched, loss_type="softmax")
    labels = _roi_labels(gt_labels, matched)
    targets = _targets(proposals, gt_masks, matched)
    log_probs = torch.log_softmax(logits.detach().double(), dim=1)  # [R, C, M, M]
    total, count = 0.0, 0
    for r in range(len(labels)):
        for i in range(M):
            for j in range(M):
                cls = int(labels[r]) if targets[r, i, j] >= 0.5 else 0
                total -= float(log_probs[r, cls, i, j])
                count += 1
    torch.testing.assert_close(loss.double().item(), total / count, rtol=1e-5, atol=1e-6)

    loss.backward()
    for channel in range(NUM_CLASSES + 1):
        assert torch.count_nonzero(logits.grad[:, channel]) > 0, f"no gradient reaches channel {channel}"


def test_unknown_mask_loss_type_is_rejected():
    logits, proposals, gt_masks, gt_labels, matched = _problem()
    with pytest.raises(ValueError, match="sigmoid or softmax"):
        mask_rcnn_loss(logits, proposals, gt_masks, gt_labels, matched, loss_type="focal")


def _smooth_l1(x: float, beta: float) -> float:
    return 0.5 * x * x / beta if abs(x) < beta else abs(x) - 0.5 * beta


def test_fast_rcnn_loss_equals_manual_ce_plus_smooth_l1():
    g = torch.Generator().manual_seed(1)
    num_classes = 3  # K + 1 = 4 outputs
    class_logits = torch.randn(6, num_classes + 1, generator=g, requires_grad=True)
    box_regression = 0.2 * torch.randn(6, 4 * (num_classes + 1), generator=g)
    box_regression.requires_grad_(True)
    gt_labels = [torch.tensor([2, 0, 1]), torch.tensor([0, 3, 0])]
    regression_targets = [0.2 * torch.randn(3, 4, generator=g), 0.2 * torch.randn(3, 4, generator=g)]
    losses = fast_rcnn_loss(class_logits, box_regression, gt_labels, regression_targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg"}

    labels = torch.cat(gt_labels).tolist()
    targets = torch.cat(regression_targets)
    ce = 0.0
    box = 0.0
    for r, label in enumerate(labels):
        row = class_logits[r].detach().double()
        ce += -(row[label] - torch.logsumexp(row, 0)).item()
        if label > 0:
            deltas = box_regression[r, 4 * label : 4 * label + 4].detach()
            box += sum(_smooth_l1(float(d - t), 1 / 9) for d, t in zip(deltas, targets[r]))
    assert math.isclose(losses["loss_classifier"].item(), ce / len(labels), rel_tol=1e-5)
    assert math.isclose(losses["loss_box_reg"].item(), box / len(labels), rel_tol=1e-5)

    # Only the ground-truth class's deltas of positive RoIs get a gradient.
    losses["loss_box_reg"].backward()
    grad = box_regression.grad.reshape(6, num_classes + 1, 4)
    with_gradient = {tuple(rc) for rc in torch.nonzero(grad.abs().sum(-1) > 0).tolist()}  # (RoI, class)
    assert with_gradient == {(0, 2), (2, 1), (4, 3)}


def test_fast_rcnn_loss_without_positives_has_zero_box_loss():
    class_logits = torch.randn(4, 3)
    losses = fast_rcnn_loss(class_logits, torch.randn(4, 12), [torch.zeros(4, dtype=torch.int64)], [torch.randn(4, 4)])
    assert losses["loss_box_reg"].item() == 0.0
    torch.testing.assert_close(losses["loss_classifier"], torch.nn.functional.cross_entropy(class_logits, torch.zeros(4, dtype=torch.int64)))
