"""Transforms keep image, boxes and masks aligned."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from mrcnn.data.synthetic import render_synthetic_image
from mrcnn.data.transforms import Compose, RandomHorizontalFlip, Resize, resized_shape


def _boxes_of_masks(masks: torch.Tensor) -> torch.Tensor:
    """Tight XYXY pixel-edge boxes of non-empty masks [N, H, W]."""
    boxes = []
    for mask in masks:
        ys, xs = torch.nonzero(mask, as_tuple=True)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    return torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)


def _sample(seed: int = 0, size: int = 80):
    image, instances = render_synthetic_image(np.random.default_rng(seed), size=size, min_shapes=3, max_shapes=4)
    masks = torch.from_numpy(np.stack([m for _, m in instances]))
    target = {
        "boxes": _boxes_of_masks(masks),
        "masks": masks,
        "labels": torch.arange(1, len(instances) + 1),
        "area": masks.flatten(1).sum(1).float(),
        "image_id": 7,
    }
    return torch.from_numpy(image).permute(2, 0, 1).float() / 255, target


def _empty_target(height: int, width: int) -> dict:
    return {
        "boxes": torch.zeros((0, 4)),
        "masks": torch.zeros((0, height, width), dtype=torch.uint8),
        "labels": torch.zeros((0,), dtype=torch.int64),
    }


def test_flip_twice_is_identity_and_boxes_follow_masks():
    image, target = _sample()
    flip = RandomHorizontalFlip(p=1.0)
    flipped_image, flipped = flip(image, target)
    assert not torch.equal(flipped_image, image)
    torch.testing.assert_close(flipped_image, image.flip(-1))
    torch.testing.assert_close(flipped["boxes"], _boxes_of_masks(flipped["masks"]), rtol=0, atol=0)
    assert flipped["image_id"] == 7 and torch.equal(flipped["labels"], target["labels"])
    back_image, back = flip(flipped_image, flipped)
    assert torch.equal(back_image, image)
    assert torch.equal(back["boxes"], target["boxes"]) and torch.equal(back["masks"], target["masks"])


def test_flip_probability_zero_keeps_everything():
    image, target = _sample()
    out_image, out = RandomHorizontalFlip(p=0.0)(image, target)
    assert out_image is image and out is target


def _blob_sample(seed: int, height: int = 96, width: int = 112):
    """Ellipses and rotated rectangles: solid shapes without one-pixel tips, which nearest
    neighbour sampling may drop when shrinking (stars and triangles can lose their tips)."""
    rng = np.random.default_rng(seed)
    masks = []
    for index in range(5):
        canvas = Image.new("L", (width, height), 0)
        draw = ImageDraw.Draw(canvas)
        cx, cy = rng.uniform(10, width - 10), rng.uniform(10, height - 10)
        rx, ry = rng.uniform(8, 30, size=2)
        if index % 2:
            draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=1)
        else:
            angle = rng.uniform(0, np.pi)
            corners = [(rx, ry), (-rx, ry), (-rx, -ry), (rx, -ry)]
            cos, sin = np.cos(angle), np.sin(angle)
            draw.polygon([(cx + x * cos - y * sin, cy + x * sin + y * cos) for x, y in corners], fill=1)
        masks.append(np.asarray(canvas, dtype=np.uint8))
    masks = torch.from_numpy(np.stack(masks))
    target = {"boxes": _boxes_of_masks(masks), "masks": masks, "area": masks.flatten(1).sum(1).float(), "image_id": 7}
    return torch.rand(3, height, width), target


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("min_size, max_size", [(50, 1000), (200, 1000), (120, 130), (37, 61)])
def test_resize_keeps_boxes_on_masks(min_size, max_size, seed):
    image, target = _blob_sample(seed)
    H, W = image.shape[1:]
    out_image, out = Resize(min_size, max_size)(image, target)
    new_h, new_w = resized_shape(H, W, min_size=min_size, max_size=max_size)
    assert out_image.shape == (3, new_h, new_w) and out_image.dtype == torch.float32
    assert out["masks"].shape == (len(target["masks"]), new_h, new_w) and out["masks"].dtype == torch.uint8
    assert set(out["masks"].unique().tolist()) <= {0, 1}
    assert (out["boxes"] - _boxes_of_masks(out["masks"])).abs().max() <= 1.0
    scale = (new_h / H) * (new_w / W)
    torch.testing.assert_close(out["area"], target["area"] * scale)
    assert out["image_id"] == 7


def test_resized_shape_caps_the_long_side():
    assert resized_shape(480, 640, min_size=800, max_size=1333) == (800, 1067)
    assert resized_shape(100, 1000, min_size=800, max_size=1333) == (133, 1333)
    assert resized_shape(640, 427, min_size=320, max_size=1000) == (480, 320)


def test_resize_non_square_image():
    image = torch.rand(3, 40, 100)
    masks = torch.zeros(1, 40, 100, dtype=torch.uint8)
    masks[0, 10:30, 20:60] = 1
    target = {"boxes": torch.tensor([[20.0, 10.0, 60.0, 30.0]]), "masks": masks}
    out_image, out = Resize(20, 1000)(image, target)
    assert out_image.shape == (3, 20, 50)
    torch.testing.assert_close(out["boxes"], torch.tensor([[10.0, 5.0, 30.0, 15.0]]))
    torch.testing.assert_close(_boxes_of_masks(out["masks"]), out["boxes"])


def test_random_min_size_uses_every_choice():
    image = torch.rand(3, 50, 50)
    torch.manual_seed(0)
    heights = {Resize((30, 40, 60), 1000)(image, None)[0].shape[1] for _ in range(40)}
    assert heights == {30, 40, 60}


def test_empty_target():
    image = torch.rand(3, 30, 60)
    transform = Compose([RandomHorizontalFlip(p=1.0), Resize(60, 1000)])
    out_image, out = transform(image, _empty_target(30, 60))
    assert out_image.shape == (3, 60, 120)
    assert out["boxes"].shape == (0, 4) and out["masks"].shape == (0, 60, 120) and out["labels"].shape == (0,)


def test_invalid_arguments():
    with pytest.raises(ValueError):
        Resize(0, 100)
    with pytest.raises(ValueError):
        Resize((), 100)
    with pytest.raises(ValueError):
        RandomHorizontalFlip(p=1.5)
