"""Geometric transforms that move an image and its instance targets together.

Every transform is called as ``image, target = t(image, target)`` with

- ``image`` (Tensor[3, H, W] float): pixels, any value range;
- ``target`` (dict | None): ``boxes`` (Tensor[N, 4] float32, XYXY absolute pixels),
  optional ``masks`` (Tensor[N, H, W] uint8 0/1), optional ``area`` (Tensor[N] float32,
  pixels), optional ``keypoints`` (Tensor[N, K, 3] float32, (x, y, v) absolute pixels); every other key (``labels``, ``image_id``, ``iscrowd``, ...) passes through.
  ``target=None`` (inference) transforms the image only. N may be 0.

Randomness comes from ``torch``'s generator, so ``torch.manual_seed`` and DataLoader
worker seeding control it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["Compose", "RandomHorizontalFlip", "Resize", "resized_shape"]

Target = dict[str, object]


class Compose:
    """Apply transforms in order.

    Args:
        transforms (Sequence[callable]): each ``(image, target) -> (image, target)``.
    """

    def __init__(
        self, transforms: Sequence[Callable[[Tensor, Target | None], tuple[Tensor, Target | None]]]
    ) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: Tensor, target: Target | None = None) -> tuple[Tensor, Target | None]:
        for transform in self.transforms:
            image, target = transform(image, target)
        return image, target

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


def resized_shape(height: int, width: int, *, min_size: int, max_size: int) -> tuple[int, int]:
    """Output size of :class:`Resize` for one input size.

    The shorter side becomes ``min_size`` unless that would make the longer side exceed
    ``max_size``, in which case the longer side becomes ``max_size``; the aspect ratio is
    kept and each side is rounded to the nearest integer (at least 1).

    Returns:
        tuple[int, int]: ``(new_height, new_width)``.
    """
    scale = min_size / min(height, width)
    if max(height, width) * scale > max_size:
        scale = max_size / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


class Resize:
    """Resize so the shorter side is ``min_size`` and the longer side at most ``max_size``.

    Image: bilinear (antialiased when shrinking). Masks: nearest neighbour on pixel centres
    (``nearest-exact``), so they stay 0/1 and aligned with the boxes. Boxes are scaled by the
    exact per-axis factors and clipped to the new size; ``area`` is scaled by their product.

    Args:
        min_size (int | tuple[int, ...]): target shorter side; a tuple picks one value
            uniformly at random per call (multi-scale training).
        max_size (int): cap on the longer side.
    """

    def __init__(self, min_size: int | Sequence[int], max_size: int) -> None:
        sizes = (min_size,) if isinstance(min_size, int) else tuple(min_size)
        if not sizes or not all(isinstance(s, int) and s > 0 for s in sizes):
            raise ValueError(f"min_size must be a positive int or a non-empty tuple of them, got {min_size!r}")
        if not isinstance(max_size, int) or max_size <= 0:
            raise ValueError(f"max_size must be a positive int, got {max_size!r}")
        self.min_sizes = sizes
        self.max_size = max_size

    def __call__(self, image: Tensor, target: Target | None = None) -> tuple[Tensor, Target | None]:
        _, H, W = image.shape
        if len(self.min_sizes) == 1:
            min_size = self.min_sizes[0]
        else:
            min_size = self.min_sizes[int(torch.randint(len(self.min_sizes), ()).item())]
        new_h, new_w = resized_shape(H, W, min_size=min_size, max_size=self.max_size)
        if (new_h, new_w) == (H, W):
            return image, target
        image = F.interpolate(
            image[None].float(), size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True
        )[0].to(image.dtype)
        if target is None:
            return image, None
        target = dict(target)
        scale_x, scale_y = new_w / W, new_h / H
        boxes = target["boxes"] * target["boxes"].new_tensor([scale_x, scale_y, scale_x, scale_y])
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, new_w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, new_h)
        target["boxes"] = boxes
        if "masks" in target:
            masks = target["masks"]
            if masks.shape[0] == 0:
                target["masks"] = masks.new_zeros((0, new_h, new_w))
            else:
                resized = F.interpolate(masks[:, None].float(), size=(new_h, new_w), mode="nearest-exact")
                target["masks"] = resized[:, 0].to(masks.dtype)  # [N, new_h, new_w]
        if "area" in target:
            target["area"] = target["area"] * (scale_x * scale_y)
        if "keypoints" in target:
            keypoints = target["keypoints"].clone()
            keypoints[..., 0] *= scale_x
            keypoints[..., 1] *= scale_y
            target["keypoints"] = keypoints
        return image, target

    def __repr__(self) -> str:
        return f"Resize(min_size={self.min_sizes}, max_size={self.max_size})"


class RandomHorizontalFlip:
    """Mirror image, boxes, masks and keypoints left-right with probability ``p``.

    A box ``[x0, y0, x1, y1]`` becomes ``[W - x1, y0, W - x0, y1]``: boxes are pixel-edge
    coordinates, so the flipped box is exactly the box of the flipped mask. A keypoint's x becomes
    ``W - x`` and keypoints trade places by ``keypoint_flip_indices`` (a mirrored left eye is a
    right eye); unlabelled keypoints (v = 0) stay (0, 0, 0).

    Args:
        p (float): flip probability in [0, 1].
        keypoint_flip_indices (Sequence[int] | None): ``flipped[k] = keypoints[indices[k]]``, e.g.
            :func:`mrcnn.data.keypoints.flip_indices` of the keypoint names. Required when targets
            carry keypoints: without it, flipping would silently swap their meaning.
    """

    def __init__(self, p: float = 0.5, *, keypoint_flip_indices: Sequence[int] | None = None) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.p = p
        self.keypoint_flip_indices = None if keypoint_flip_indices is None else list(keypoint_flip_indices)

    def __call__(self, image: Tensor, target: Target | None = None) -> tuple[Tensor, Target | None]:
        if torch.rand(()).item() >= self.p:
            return image, target
        W = image.shape[-1]
        image = image.flip(-1)
        if target is None:
            return image, None
        target = dict(target)
        boxes = target["boxes"]
        target["boxes"] = torch.stack([W - boxes[:, 2], boxes[:, 1], W - boxes[:, 0], boxes[:, 3]], dim=1)
        if "masks" in target:
            target["masks"] = target["masks"].flip(-1)
        if "keypoints" in target and target["keypoints"].shape[1] > 0:
            keypoints = target["keypoints"]
            K = keypoints.shape[1]
            if self.keypoint_flip_indices is None or len(self.keypoint_flip_indices) != K:
                raise ValueError(
                    f"RandomHorizontalFlip: the target has {K} keypoints per instance; pass keypoint_flip_indices "
                    f"with {K} entries (mrcnn.data.keypoints.flip_indices(names)), got {self.keypoint_flip_indices}"
                )
            keypoints = keypoints[:, self.keypoint_flip_indices].clone()
            labelled = keypoints[..., 2] > 0
            keypoints[..., 0] = torch.where(labelled, W - keypoints[..., 0], keypoints[..., 0])
            target["keypoints"] = keypoints
        return image, target

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"
