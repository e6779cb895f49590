"""Training augmentations: horizontal flip, multi-scale training, large-scale jitter, copy-paste.

The geometry is torchvision's: each sample is wrapped in ``torchvision.tv_tensors`` (``Image``,
``BoundingBoxes`` XYXY, ``Mask``, ``KeyPoints``) and moved by the ``torchvision.transforms.v2.functional``
kernels, so boxes, masks and keypoints follow the pixels; ``v2.SanitizeBoundingBoxes`` drops what a crop
leaves degenerate. The random parameters follow ``v2.RandomShortestSize``, ``v2.ScaleJitter`` and
``v2.RandomHorizontalFlip`` (the same formulas) but come from an explicit ``torch.Generator`` when one is
given, so augmenting on a background thread leaves the global RNG, which the model's samplers use, alone.

Per-image calls take and return ``(image, target)``:

- ``image`` (Tensor[3, H, W]): float pixels in 0..1, or uint8 pixels in 0..255 (4x less memory to move, and
  torchvision's fast uint8 resize: what ``mrcnn train`` passes); returned in the dtype it came in;
- ``target`` (dict): the target dict of :mod:`mrcnn.data.dataset`: ``boxes`` (Tensor[N, 4] float32, XYXY
  absolute pixels), ``masks`` (Tensor[N, H, W] uint8 0/1, optional), ``labels`` (Tensor[N] int64),
  ``iscrowd``, ``area`` (Tensor[N] float32), ``keypoints`` (Tensor[N, K, 3] float32, (x, y, v), optional);
  other keys (``image_id``, ...) pass through. N may be 0.

After every augmentation (kind other than ``none``) an instance's box is its mask's tight box
(``[x_min, y_min, x_max + 1, y_max + 1]``, pixel edges, as detectron2's ``recompute_boxes`` after a crop),
``area`` is its mask's pixel count, an instance whose mask is empty or whose box is under 1 px wide or
high is dropped with all its fields, and a keypoint outside the image becomes unlabelled (0, 0, 0).
Targets without masks keep torchvision's box geometry (clipped to the image) and get the box's area.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from mrcnn.config import ConfigError, from_dict, to_dict

__all__ = [
    "AUGMENTATION_KINDS",
    "AugmentationConfig",
    "TrainAugmentation",
    "build_train_augmentation",
    "mask_areas",
    "mask_boxes",
]

AUGMENTATION_KINDS = ("none", "flip", "multiscale", "lsj")
# The model's default InputConfig.pixel_mean: LSJ padding in this colour normalises to 0, as the
# model's own batch padding (torchvision's references pad LSJ crops with the mean too).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
# Per-instance fields that are indexed with the boxes; every other key passes through unchanged.
INSTANCE_KEYS = ("labels", "iscrowd", "area", "keypoints")


@dataclass(frozen=True)
class AugmentationConfig:
    """Which training augmentation runs, and its parameters.

    kind: ``none`` (images as decoded), ``flip`` (horizontal flip only), ``multiscale`` (flip, then the
        shorter side to one of ``min_sizes`` at random, the longer at most ``max_size``: the paper's
        640-800) or ``lsj`` (large-scale jitter: flip, scale to ``lsj_size`` x a random factor in
        ``lsj_scale``, then a random ``lsj_size`` square crop, padded at the bottom/right where smaller).
    hflip: probability of the horizontal flip (kinds flip, multiscale, lsj).
    copy_paste: probability that an image of a batch gets instances pasted from another image of the
        batch (:func:`copy_paste`); needs one image size, so only with ``lsj``.
    """

    kind: str = "none"
    min_sizes: tuple[int, ...] = (640, 672, 704, 736, 768, 800)
    max_size: int = 1333
    lsj_scale: tuple[float, float] = (0.1, 2.0)
    lsj_size: int = 1024
    hflip: float = 0.5
    copy_paste: float = 0.0

    def validate(self) -> AugmentationConfig:
        """Return self; raise :class:`mrcnn.config.ConfigError` naming the bad field."""
        if self.kind not in AUGMENTATION_KINDS:
            raise ConfigError(f"augmentation.kind: expected one of {list(AUGMENTATION_KINDS)}, got {self.kind!r}")
        if not self.min_sizes or any(s <= 0 for s in self.min_sizes):
            raise ConfigError(f"augmentation.min_sizes: expected positive sizes, got {list(self.min_sizes)}")
        if self.max_size < max(self.min_sizes):
            largest = max(self.min_sizes)
            raise ConfigError(f"augmentation.max_size: expected >= max(min_sizes) = {largest}, got {self.max_size}")
        low, high = self.lsj_scale
        if not 0 < low <= high:
            raise ConfigError(f"augmentation.lsj_scale: expected 0 < low <= high, got {list(self.lsj_scale)}")
        if self.lsj_size <= 0:
            raise ConfigError(f"augmentation.lsj_size: expected a positive size, got {self.lsj_size}")
        for name in ("hflip", "copy_paste"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"augmentation.{name}: expected a probability in [0, 1], got {getattr(self, name)}")
        if self.copy_paste > 0 and self.kind != "lsj":
            raise ConfigError(
                f"augmentation.copy_paste: pasting needs the images of a batch at one size, which only kind 'lsj' "
                f"gives (lsj_size x lsj_size); got kind {self.kind!r} with copy_paste {self.copy_paste}"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (tuples as lists), YAML/JSON-ready."""
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AugmentationConfig:
        """Build from a (possibly partial) dict and validate; unknown keys raise ConfigError."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"augmentation: expected a mapping, got {type(data).__name__}")
        return from_dict(cls, dict(data), where="augmentation").validate()


def mask_boxes(masks: Tensor) -> Tensor:
    """Tight boxes of instance masks.

    Args:
        masks (Tensor[N, H, W]): 0/1 or bool.

    Returns:
        Tensor[N, 4] float32: XYXY pixel edges, ``[x_min, y_min, x_max + 1, y_max + 1]``; all zeros for an
        empty mask.
    """
    N, H, W = masks.shape
    rows = masks.any(dim=2).to(torch.uint8)  # [N, H]
    cols = masks.any(dim=1).to(torch.uint8)  # [N, W]
    y0 = rows.argmax(dim=1)
    y1 = H - rows.flip(1).argmax(dim=1)
    x0 = cols.argmax(dim=1)
    x1 = W - cols.flip(1).argmax(dim=1)
    boxes = torch.stack([x0, y0, x1, y1], dim=1).to(torch.float32)
    return boxes * rows.any(dim=1, keepdim=True)


def mask_areas(masks: Tensor) -> Tensor:
    """Pixel counts of 0/1 instance masks.

    Args:
        masks (Tensor[N, H, W]): uint8 with values 0 and 1, or bool.

    Returns:
        Tensor[N] int32: the number of 1 pixels of each mask.

    The sum reads the masks 8 bytes at a time: as int64 words, summed over runs of at most 128 words, every
    byte lane of the partial sums stays <= 128, so no lane carries into the next, and the partial sums'
    bytes are then summed. That is 20-60x faster than ``sum(dtype=torch.int32)`` over uint8 on a CPU core
    (0.7 vs 44 ms for 20 masks of 1024 x 1024: ``benchmarks/bench_mask_areas.py``), which made the area the
    slowest part of large-scale jitter.
    Masks whose rows cannot be viewed as int64 words fall back to the plain sum.
    """
    N = masks.shape[0]
    if N == 0:
        return torch.zeros(0, dtype=torch.int32, device=masks.device)
    flat = masks.reshape(N, -1)
    if flat.dtype == torch.bool:
        flat = flat.view(torch.uint8)
    if flat.dtype != torch.uint8 or flat.shape[1] % 8:
        return flat.sum(dim=1, dtype=torch.int32)
    try:
        words = flat.view(torch.int64)  # [N, L / 8]: 8 byte lanes, each 0 or 1
    except RuntimeError:  # rows not 8-byte aligned in storage
        return flat.sum(dim=1, dtype=torch.int32)
    run = 1
    while run < 128 and words.shape[1] % (2 * run) == 0:
        run *= 2
    lanes = words.reshape(N, -1, run).sum(dim=-1)  # each byte lane <= run <= 128
    return lanes.view(torch.uint8).reshape(N, -1).sum(dim=1, dtype=torch.int32)


def draw_index(n: int, generator: torch.Generator | None) -> int:
    return int(torch.randint(n, (), generator=generator))


def draw_uniform(generator: torch.Generator | None) -> float:
    return float(torch.rand((), generator=generator))


def _resize(sample: dict, size: tuple[int, int]) -> dict:
    """Resize every tv_tensor of ``sample`` to ``size`` (H, W): image bilinear with antialiasing, masks
    nearest on pixel centres (``NEAREST_EXACT``, so they stay aligned with the boxes)."""
    if tuple(sample["image"].shape[-2:]) == size:
        return sample
    out = dict(sample)
    out["image"] = F.resize(sample["image"], list(size), antialias=True)
    out["boxes"] = F.resize(sample["boxes"], list(size))
    if "masks" in sample:
        out["masks"] = F.resize(sample["masks"], list(size), interpolation=v2.InterpolationMode.NEAREST_EXACT)
    if "keypoints" in sample:
        out["keypoints"] = F.resize(sample["keypoints"], list(size))
    return out


class _HorizontalFlip:
    """Mirror left-right with probability ``p`` (as ``v2.RandomHorizontalFlip``).

    Keypoints are mirrored here, not by torchvision's kernel: that one maps x to ``W - 1 - x`` (pixel
    indices), while our keypoints, like the boxes, are continuous coordinates (x to ``W - x``, as
    detectron2 and :class:`mrcnn.data.transforms.RandomHorizontalFlip`); then left and right trade places.
    """

    def __init__(self, p: float, flip_indices: Sequence[int] | None) -> None:
        self.p = p
        self.flip_indices = None if flip_indices is None else list(flip_indices)

    def __call__(self, sample: dict, generator: torch.Generator | None) -> dict:
        if draw_uniform(generator) >= self.p:
            return sample
        out = dict(sample)
        for key in ("image", "boxes", "masks"):
            if key in sample:
                out[key] = F.horizontal_flip(sample[key])
        if "keypoints" in sample:
            keypoints, W = sample["keypoints"], sample["image"].shape[-1]
            flipped = keypoints.as_subclass(Tensor)[:, self.flip_indices].clone()
            flipped[..., 0] = W - flipped[..., 0]
            out["keypoints"] = tv_tensors.wrap(flipped, like=keypoints)
            out["visibility"] = sample["visibility"][:, self.flip_indices]
        return out

    def __repr__(self) -> str:
        return f"HorizontalFlip(p={self.p})"


class _RandomShortestSide:
    """Shorter side to one of ``min_sizes`` at random, longer side at most ``max_size``
    (``v2.RandomShortestSize``'s sizes: ``int(side * scale)``)."""

    def __init__(self, min_sizes: Sequence[int], max_size: int) -> None:
        self.min_sizes, self.max_size = tuple(min_sizes), max_size

    def __call__(self, sample: dict, generator: torch.Generator | None) -> dict:
        H, W = sample["image"].shape[-2:]
        min_size = self.min_sizes[draw_index(len(self.min_sizes), generator)]
        scale = min(min_size / min(H, W), self.max_size / max(H, W))
        return _resize(sample, (max(1, int(H * scale)), max(1, int(W * scale))))

    def __repr__(self) -> str:
        return f"RandomShortestSide(min_sizes={self.min_sizes}, max_size={self.max_size})"


class _ScaleJitter:
    """Fit into ``size`` x ``size``, times a factor uniform in ``scale_range`` (``v2.ScaleJitter``'s sizes)."""

    def __init__(self, size: int, scale_range: tuple[float, float]) -> None:
        self.size, self.scale_range = size, tuple(scale_range)

    def __call__(self, sample: dict, generator: torch.Generator | None) -> dict:
        H, W = sample["image"].shape[-2:]
        low, high = self.scale_range
        factor = low + draw_uniform(generator) * (high - low)
        scale = min(self.size / W, self.size / H) * factor
        return _resize(sample, (max(1, int(H * scale)), max(1, int(W * scale))))

    def __repr__(self) -> str:
        return f"ScaleJitter(size={self.size}, scale_range={self.scale_range})"


class _FixedSizeCrop:
    """A ``size`` x ``size`` crop at a uniformly random offset where the image is larger, padded at the
    bottom/right where it is smaller (detectron2's and torchvision's references' ``FixedSizeCrop``):
    image padding in ``fill``, masks with 0."""

    def __init__(self, size: int, fill: Sequence[float]) -> None:
        self.size, self.fill = size, [float(v) for v in fill]

    def __call__(self, sample: dict, generator: torch.Generator | None) -> dict:
        H, W = sample["image"].shape[-2:]
        top = draw_index(H - self.size + 1, generator) if H > self.size else 0
        left = draw_index(W - self.size + 1, generator) if W > self.size else 0
        height, width = min(H, self.size), min(W, self.size)
        padding = [0, 0, self.size - width, self.size - height]  # left, top, right, bottom
        out = dict(sample)
        for key in ("image", "boxes", "masks", "keypoints"):
            if key not in sample:
                continue
            value = sample[key]
            if (height, width) != (H, W):
                value = F.crop(value, top, left, height, width)
            if padding != [0, 0, 0, 0]:
                value = F.pad(value, padding, fill=self._fill(value) if key == "image" else 0)
            out[key] = value
        return out

    def _fill(self, image: Tensor) -> list[float]:
        """The padding colour in the image's scale: 0..1 for a float image, 0..255 (rounded) for uint8."""
        return self.fill if image.is_floating_point() else [float(round(255 * v)) for v in self.fill]

    def __repr__(self) -> str:
        return f"FixedSizeCrop(size={self.size})"


def check_target(image: Tensor, target: Mapping) -> None:
    if image.ndim != 3 or image.shape[0] != 3 or not (image.is_floating_point() or image.dtype == torch.uint8):
        raise ValueError(f"augment: expected a float or uint8 image [3, H, W], got {image.dtype} {tuple(image.shape)}")
    boxes = target.get("boxes")
    if not isinstance(boxes, Tensor) or boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"augment: target boxes must be a Tensor[N, 4], got {getattr(boxes, 'shape', boxes)}")
    N, (H, W) = boxes.shape[0], image.shape[-2:]
    masks = target.get("masks")
    if masks is not None and tuple(masks.shape) != (N, H, W):
        raise ValueError(f"augment: target masks must be [N, H, W] = {[N, H, W]}, got {list(masks.shape)}")
    for key in INSTANCE_KEYS:
        value = target.get(key)
        if isinstance(value, Tensor) and (value.ndim == 0 or value.shape[0] != N):
            raise ValueError(f"augment: target {key} has {list(value.shape)}, expected {N} instances first")


def finish_target(
    target: Mapping, size: tuple[int, int], *, masks: Tensor | None, boxes: Tensor, keypoints: Tensor | None
) -> dict:
    """The target on an image of ``size`` (H, W) after a geometric change: boxes and areas from the masks,
    keypoints (Tensor[N, K, 3] or None) outside the image unlabelled, degenerate instances dropped."""
    H, W = size
    out = dict(target)
    if masks is not None:
        boxes = mask_boxes(masks)
        out["masks"] = masks
        out["area"] = mask_areas(masks).to(torch.float32)
    else:
        boxes = torch.stack([boxes[:, 0].clamp(0, W), boxes[:, 1].clamp(0, H),
                             boxes[:, 2].clamp(0, W), boxes[:, 3].clamp(0, H)], dim=1).to(torch.float32)  # fmt: skip
        out["area"] = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).to(torch.float32)
    if keypoints is not None:
        x, y, v = keypoints.unbind(-1)
        labelled = (v > 0) & (x >= 0) & (x <= W) & (y >= 0) & (y <= H)
        out["keypoints"] = keypoints * labelled[..., None]  # unlabelled: (0, 0, 0)
    out["boxes"] = boxes
    if ((boxes[:, 2:] - boxes[:, :2]) >= 1).all():
        return out  # nothing to drop: spare the sanitizer's copies
    # An empty mask's box is all zeros, which the sanitizer drops with the too-thin boxes.
    sample = {"boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(H, W))}
    if masks is not None:
        sample["masks"] = tv_tensors.Mask(masks)
    fields = [key for key in INSTANCE_KEYS if isinstance(out.get(key), Tensor)]
    sample.update({key: out[key] for key in fields})
    sanitize = v2.SanitizeBoundingBoxes(min_size=1.0, min_area=1.0, labels_getter=lambda s: tuple(s[k] for k in fields))
    kept = sanitize(sample)
    out["boxes"] = kept["boxes"].as_subclass(Tensor)
    if masks is not None:
        out["masks"] = kept["masks"].as_subclass(Tensor)
    out.update({key: kept[key] for key in fields})
    return out


class TrainAugmentation:
    """``image, target = augmentation(image, target, generator=None)``; see the module docstring.

    Built by :func:`build_train_augmentation`. ``generator`` (torch.Generator | None): the source of every
    random draw; None draws from torch's global generator (``torch.manual_seed`` makes runs repeat).
    """

    def __init__(self, steps: Sequence, *, config: AugmentationConfig) -> None:
        self.steps = list(steps)
        self.config = config

    def __call__(
        self, image: Tensor, target: Mapping, *, generator: torch.Generator | None = None
    ) -> tuple[Tensor, dict]:
        check_target(image, target)
        if self.config.kind == "none":
            return image, dict(target)
        H, W = image.shape[-2:]
        sample: dict[str, Any] = {
            "image": tv_tensors.Image(image),
            "boxes": tv_tensors.BoundingBoxes(target["boxes"], format="XYXY", canvas_size=(H, W)),
        }
        if target.get("masks") is not None:
            sample["masks"] = tv_tensors.Mask(target["masks"])
        if target.get("keypoints") is not None:
            keypoints = target["keypoints"]
            if self._lacks_flip_map(keypoints.shape[1]):
                raise ValueError(
                    f"augment: the target has {keypoints.shape[1]} keypoints per instance; a horizontal flip needs "
                    f"flip_indices with {keypoints.shape[1]} entries (mrcnn.data.keypoints.flip_indices(names))"
                )
            sample["keypoints"] = tv_tensors.KeyPoints(keypoints[..., :2], canvas_size=(H, W))
            sample["visibility"] = keypoints[..., 2]
        for step in self.steps:
            sample = step(sample, generator)
        keypoints = None
        if "keypoints" in sample:
            keypoints = torch.cat([sample["keypoints"].as_subclass(Tensor), sample["visibility"][..., None]], dim=-1)
        masks = sample["masks"].as_subclass(Tensor) if "masks" in sample else None
        image, boxes = sample["image"].as_subclass(Tensor), sample["boxes"].as_subclass(Tensor)
        return image, finish_target(target, image.shape[-2:], masks=masks, boxes=boxes, keypoints=keypoints)

    def _lacks_flip_map(self, num_keypoints: int) -> bool:
        """Whether a flip step lacks a keypoint flip map of ``num_keypoints`` entries."""
        flips = [s for s in self.steps if isinstance(s, _HorizontalFlip)]
        return num_keypoints > 0 and any(s.flip_indices is None or len(s.flip_indices) != num_keypoints for s in flips)

    def __repr__(self) -> str:
        return f"TrainAugmentation({self.config.kind}: {', '.join(map(repr, self.steps)) or 'identity'})"


def build_train_augmentation(
    spec: AugmentationConfig | Mapping[str, Any],
    *,
    flip_indices: Sequence[int] | None = None,
    pad_fill: Sequence[float] = IMAGENET_MEAN,
) -> TrainAugmentation:
    """The per-image training augmentation of ``spec``.

    Args:
        spec: an :class:`AugmentationConfig` or its dict.
        flip_indices (Sequence[int] | None): ``flipped[k] = keypoints[flip_indices[k]]``
            (:func:`mrcnn.data.keypoints.flip_indices` of the category's keypoint names); required when
            targets carry keypoints and the flip may run.
        pad_fill (Sequence[float]): RGB value (0..1) of LSJ's padding; give the model's
            ``InputConfig.pixel_mean`` so the padding normalises to 0 (a uint8 image pads with the nearest
            of its 256 levels).

    Returns:
        TrainAugmentation: ``(image, target) -> (image, target)``; the identity for kind ``none``.

    Raises:
        ConfigError: an invalid spec.
    """
    config = spec if isinstance(spec, AugmentationConfig) else AugmentationConfig.from_dict(spec)
    config.validate()
    if len(pad_fill) != 3:
        raise ValueError(f"pad_fill: expected 3 values (RGB), got {list(pad_fill)}")
    steps: list = []
    if config.kind != "none" and config.hflip > 0:
        steps.append(_HorizontalFlip(config.hflip, flip_indices))
    if config.kind == "multiscale":
        steps.append(_RandomShortestSide(config.min_sizes, config.max_size))
    elif config.kind == "lsj":
        steps += [_ScaleJitter(config.lsj_size, config.lsj_scale), _FixedSizeCrop(config.lsj_size, pad_fill)]
    return TrainAugmentation(steps, config=config)
