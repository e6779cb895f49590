"""What "the same detections" means for the optimized inference path (used by several tests).

BatchNorm folding and channels-last convolutions change the arithmetic order, so numbers move by float
rounding (~1e-5). The detections must be the same ones: every detection of ours pairs with one of the
reference's with the same label, box within 0.05 px and score within 1e-4. Two detections whose scores
differ by less than that may swap places in the ranking (and one tied with the last kept score may
replace another at the cut), but nothing else may differ. Each pair's binary masks must overlap at
IoU >= 0.98 (the performance issue's tolerance), except for boxes under 2 px on a side: pasting rounds the
box to whole pixels, so a 0.01 px shift can move such a mask by a whole column.
"""

from __future__ import annotations

import torch

BOX_ATOL = 0.05  # pixels
SCORE_ATOL = 1e-4
MIN_MASK_IOU = 0.98
MIN_SIDE_FOR_IOU = 2.0  # pixels


def mask_ious(reference: torch.Tensor, ours: torch.Tensor) -> torch.Tensor:
    """Per-instance IoU of two Tensor[D, H, W] bool stacks (1 where both are empty)."""
    inter = (reference & ours).flatten(1).sum(1).double()
    union = (reference | ours).flatten(1).sum(1).double()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def pair_detections(ours: dict, reference: dict) -> list[tuple[int, int]]:
    """Pairs (index in ours, index in reference) of the same detection; asserts that all pair up."""
    assert len(ours["labels"]) == len(reference["labels"])
    same = (
        (ours["labels"][:, None] == reference["labels"][None, :])
        & ((ours["boxes"][:, None, :] - reference["boxes"][None, :, :]).abs().amax(dim=2) <= BOX_ATOL)
        & ((ours["scores"][:, None] - reference["scores"][None, :]).abs() <= SCORE_ATOL)
    )  # [D, D]
    pairs, used = [], set()
    for i in range(len(ours["labels"])):
        candidates = [j for j in torch.where(same[i])[0].tolist() if j not in used]
        if not candidates:
            # Only a detection tied with the last kept score may differ (a different one made the cut).
            lowest = min(ours["scores"].min().item(), reference["scores"].min().item())
            assert ours["scores"][i].item() - lowest <= SCORE_ATOL, (
                f"detection {i} (label {ours['labels'][i].item()}, score {ours['scores'][i].item():.6f}, "
                f"box {ours['boxes'][i].tolist()}) has no counterpart in the reference"
            )
            continue
        j = min(candidates, key=lambda c: abs(c - i))
        used.add(j)
        pairs.append((i, j))
    return pairs


def assert_same_detections_up_to_rounding(
    ours: dict, reference: dict, *, mask_threshold: float = 0.5, min_masks_compared: int = 0
) -> None:
    """``ours``: a Predictor.predict_raw result (bool masks [D, H, W]); ``reference``: torchvision's output
    for the same image (mask probabilities [D, 1, H, W]). ``min_masks_compared``: how many pairs must be
    wide enough for the IoU check (random weights tend to give sliver boxes at the image border)."""
    pairs = pair_detections(ours, reference)
    if "masks" not in reference or not pairs:
        return
    mine, theirs = (torch.tensor(index) for index in zip(*pairs))
    ious = mask_ious(reference["masks"][theirs, 0] >= mask_threshold, ours["masks"][mine])
    sides = reference["boxes"][theirs, 2:] - reference["boxes"][theirs, :2]
    checked = sides.min(dim=1).values >= MIN_SIDE_FOR_IOU
    assert checked.sum() >= min_masks_compared, f"only {int(checked.sum())} detections wide enough to compare masks"
    if not checked.any():
        return
    worst = ious[checked].min().item()
    assert worst >= MIN_MASK_IOU, f"smallest mask IoU {worst:.4f}"
