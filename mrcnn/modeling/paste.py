"""Pasting M x M mask probabilities into the image as binary masks, the fast way.

``paste_masks_binary`` does torchvision's geometry (``paste_masks_in_image``: pad the mask by one cell,
scale the box by (M + 2) / M, round it to integers, resize the padded mask to the box with bilinear
interpolation) and thresholds inside the box only. torchvision allocates a float image per instance,
fills it and stacks them; here each instance writes its thresholded box region into one preallocated
bool tensor. The result is bit-identical to thresholding torchvision's pasted probabilities.

The output is laid out column-major per instance (``[D, W, H]`` storage viewed as ``[D, H, W]``), which is
the order COCO's RLE encoder reads, so ``mrcnn.data.masks.masks_to_rles`` encodes it without a copy.

``paste_mask_crops`` computes the same pixels but keeps only each instance's window (its pasted box clipped
to the image; the mask is zero outside it), packed into one flat tensor for one copy to the host, where
``mrcnn.data.mask_crops.crops_to_rles`` encodes them. All of it runs on the probabilities' device; the only
host values it needs are the integer boxes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def expanded_int_boxes(boxes: Tensor, *, mask_size: int, padding: int = 1) -> Tensor:
    """torchvision's ``expand_boxes`` for a mask padded by ``padding`` cells, rounded down to int64.

    Args:
        boxes (Tensor[D, 4]): XYXY in the image's pixels.

    Returns:
        Tensor[D, 4] int64: the boxes scaled about their centres by (M + 2 * padding) / M.
    """
    scale = float(mask_size + 2 * padding) / mask_size
    w_half = (boxes[:, 2] - boxes[:, 0]) * 0.5 * scale
    h_half = (boxes[:, 3] - boxes[:, 1]) * 0.5 * scale
    x_c = (boxes[:, 2] + boxes[:, 0]) * 0.5
    y_c = (boxes[:, 3] + boxes[:, 1]) * 0.5
    return torch.stack([x_c - w_half, y_c - h_half, x_c + w_half, y_c + h_half], dim=1).to(torch.int64)


def _window_probs(
    mask_probs: Tensor, int_boxes: Sequence[Sequence[int]], image_size: tuple[int, int]
) -> Iterator[tuple[int, tuple[int, int, int, int], Tensor]]:
    """Per instance with a non-empty window: (index, window x0, y0, x1, y1 (exclusive), its probabilities [h, w])."""
    H, W = image_size
    padded = F.pad(mask_probs, (1, 1, 1, 1))  # [D, 1, M + 2, M + 2]
    for index, (x0, y0, x1, y1) in enumerate(int_boxes):
        w = max(x1 - x0 + 1, 1)
        h = max(y1 - y0 + 1, 1)
        cx0, cx1 = max(x0, 0), min(x1 + 1, W)
        cy0, cy1 = max(y0, 0), min(y1 + 1, H)
        if cx0 >= cx1 or cy0 >= cy1:
            continue
        resized = F.interpolate(padded[index : index + 1], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
        yield index, (cx0, cy0, cx1, cy1), resized[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]


def paste_masks_binary(mask_probs: Tensor, boxes: Tensor, image_size: tuple[int, int], *, threshold: float = 0.5) -> Tensor:
    """Binary full-image masks from per-detection mask probabilities.

    Args:
        mask_probs (Tensor[D, 1, M, M]): probabilities of each detection's class.
        boxes (Tensor[D, 4]): XYXY in the pixels of the output image (float).
        image_size: (H, W) of the output image.
        threshold: a pixel is foreground when its probability is >= threshold.

    Returns:
        Tensor[D, H, W] bool: equal to ``paste_masks_in_image(...)[:, 0] >= threshold`` (torchvision), with
        column-major storage per instance (see the module docstring).
    """
    D, M = mask_probs.shape[0], mask_probs.shape[-1]
    H, W = image_size
    out = torch.zeros((D, W, H), dtype=torch.bool, device=mask_probs.device).transpose(1, 2)  # [D, H, W] view
    if D == 0:
        return out
    int_boxes = expanded_int_boxes(boxes, mask_size=M).tolist()
    for index, (x0, y0, x1, y1), probs in _window_probs(mask_probs, int_boxes, image_size):
        torch.ge(probs, threshold, out=out[index, y0:y1, x0:x1])
    return out


def paste_mask_crops(
    mask_probs: Tensor, int_boxes: Sequence[Sequence[int]], image_size: tuple[int, int], *, threshold: float = 0.5
) -> tuple[Tensor, list[tuple[int, int, int, int]]]:
    """``paste_masks_binary``'s masks, but only each instance's window, packed for ``crops_to_rles``.

    Args:
        mask_probs (Tensor[D, 1, M, M]): probabilities of each detection's class (any device).
        int_boxes: D host-side ``expanded_int_boxes(boxes, mask_size=M)`` rows (x0, y0, x1, y1 ints).
        image_size: (H, W) of the output image.
        threshold: a pixel is foreground when its probability is >= threshold.

    Returns:
        (packed, windows): packed is Tensor[P] bool on ``mask_probs``' device, window i's pixels column by
        column, each column followed by one False (the layout ``mrcnn.data.mask_crops.crops_to_rles`` reads);
        windows are the D clipped windows (x0, y0, x1, y1), x1/y1 exclusive, (0, 0, 0, 0) where the pasted
        box misses the image. ``paste_masks_binary``'s mask i is ``packed``'s crop i placed at window i,
        zero elsewhere.
    """
    H, W = image_size
    windows = []
    for x0, y0, x1, y1 in int_boxes:
        cx0, cx1 = max(x0, 0), min(x1 + 1, W)
        cy0, cy1 = max(y0, 0), min(y1 + 1, H)
        windows.append((cx0, cy0, cx1, cy1) if cx0 < cx1 and cy0 < cy1 else (0, 0, 0, 0))
    offsets = [0]
    for x0, y0, x1, y1 in windows:
        offsets.append(offsets[-1] + (x1 - x0) * (y1 - y0 + 1))
    packed = torch.zeros(offsets[-1], dtype=torch.bool, device=mask_probs.device)
    if offsets[-1] == 0:
        return packed, windows
    for index, (x0, y0, x1, y1), probs in _window_probs(mask_probs, int_boxes, image_size):
        block = packed[offsets[index] : offsets[index + 1]].view(x1 - x0, y1 - y0 + 1)  # column by column
        torch.ge(probs.t(), threshold, out=block[:, : y1 - y0])
    return packed, windows
