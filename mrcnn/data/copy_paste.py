"""Simple Copy-Paste (Ghiasi et al., "Simple Copy-Paste is a Strong Data Augmentation Method for Instance
Segmentation", CVPR 2021) between the images of one batch.

Targets are the target dicts of :mod:`mrcnn.data.augment` (which this module shares its target checks
and its box/area/degenerate-instance rules with).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from mrcnn.data.augment import INSTANCE_KEYS, check_target, draw_index, draw_uniform, finish_target

__all__ = ["copy_paste"]


def copy_paste(
    images: Sequence[Tensor],
    targets: Sequence[Mapping],
    *,
    probability: float,
    generator: torch.Generator | None = None,
) -> tuple[list[Tensor], list[dict]]:
    """Simple Copy-Paste (Ghiasi et al., CVPR 2021) between the images of one batch.

    With ``probability``, image i gets a random non-empty subset of the instances of another image j of
    the batch (chosen uniformly), pasted on top: their pixels replace image i's, their targets are
    appended. Image i's own instances lose the pasted pixels from their masks; their boxes and areas are
    recomputed from what is left; an instance left with no pixel is dropped; a labelled keypoint of
    image i whose pixel a pasted object covers becomes unlabelled (0, 0, 0). The sources are the batch as
    given, never an image already pasted onto. Call it after the per-image augmentation (``lsj``, so that
    all images have one size).

    Args:
        images (Sequence[Tensor[3, H, W] float]): one size for all.
        targets (Sequence[dict]): target dicts (see the module docstring) with ``masks``; the same
            per-instance keys in every target.
        probability (float): chance in [0, 1] that an image gets a paste.
        generator (torch.Generator | None): source of the random draws; None: torch's global generator.

    Returns:
        (list[Tensor], list[dict]): new images and targets; the inputs are not modified.

    Raises:
        ValueError: images of different sizes, a target without masks, targets with different keys.
    """
    if len(images) != len(targets):
        raise ValueError(f"copy_paste: {len(images)} images but {len(targets)} targets")
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"copy_paste: probability must be in [0, 1], got {probability}")
    out_images, out_targets = list(images), [dict(t) for t in targets]
    if len(images) < 2 or probability == 0:
        return out_images, out_targets
    shapes = {tuple(image.shape) for image in images}
    if len(shapes) != 1:
        raise ValueError(f"copy_paste: the images of a batch must have one size (kind 'lsj'), got {sorted(shapes)}")
    fields = [[key for key in INSTANCE_KEYS if isinstance(t.get(key), Tensor)] for t in targets]
    for index, (image, target) in enumerate(zip(images, targets)):
        if target.get("masks") is None:
            raise ValueError(f"copy_paste: target {index} has no masks")
        if fields[index] != fields[0]:
            raise ValueError(f"copy_paste: target {index} has the fields {fields[index]}, target 0 {fields[0]}")
        check_target(image, target)
    for i in range(len(images)):
        if draw_uniform(generator) >= probability:
            continue
        j = draw_index(len(images) - 1, generator)
        j += j >= i  # any image but i
        num_source = targets[j]["boxes"].shape[0]
        if num_source == 0:
            continue
        count = 1 + draw_index(num_source, generator)
        chosen = torch.randperm(num_source, generator=generator)[:count].sort().values
        out_images[i], out_targets[i] = _paste(images[i], targets[i], images[j], targets[j], chosen, fields[0])
    return out_images, out_targets


def _paste(
    image: Tensor, target: Mapping, source_image: Tensor, source_target: Mapping, chosen: Tensor, fields: Sequence[str]
) -> tuple[Tensor, dict]:
    """Paste ``source_target``'s instances ``chosen`` (Tensor[M] int64) and their pixels onto ``image``."""
    pasted = source_target["masks"][chosen].bool()  # [M, H, W]
    alpha = pasted.any(dim=0)  # [H, W]: covered by a pasted object
    image = torch.where(alpha, source_image, image)
    masks = target["masks"] * ~alpha
    keypoints = target.get("keypoints")
    if keypoints is not None and keypoints.shape[0] > 0:
        H, W = alpha.shape
        cols = keypoints[..., 0].floor().long().clamp(0, W - 1)
        rows = keypoints[..., 1].floor().long().clamp(0, H - 1)
        hidden = alpha[rows, cols] & (keypoints[..., 2] > 0)  # [N, K]
        keypoints = keypoints * ~hidden[..., None]
    own = finish_target(target, alpha.shape, masks=masks, boxes=target["boxes"], keypoints=keypoints)
    source = {key: source_target[key][chosen] for key in ("boxes", *fields)}
    pasted_target = finish_target(
        source, alpha.shape, masks=pasted.to(masks.dtype), boxes=source["boxes"], keypoints=source.get("keypoints")
    )
    merged = dict(own)
    for key in ("boxes", "masks", *(key for key in INSTANCE_KEYS if key in own)):
        merged[key] = torch.cat([own[key], pasted_target[key]])
    return image, merged
