"""Drawing detections: translucent masks, boxes and "name score" labels over the image."""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from mrcnn.data.masks import rle_to_mask


def category_color(category_id: int) -> tuple[int, int, int]:
    """A stable, distinct colour per category (golden-ratio hue steps)."""
    hue = (category_id * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.75, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_detections(
    image: np.ndarray,
    detections: Sequence[dict[str, Any]],
    *,
    alpha: float = 0.5,
    draw_boxes: bool = True,
) -> np.ndarray:
    """Overlay detection records on an image.

    Args:
        image (np.ndarray[H, W, 3] uint8): RGB.
        detections: records with ``category_id``, ``category_name``, ``score``, ``box_xyxy`` and
            ``segmentation`` (compressed RLE of size H x W, may be None).
        alpha: mask opacity.

    Returns:
        np.ndarray[H, W, 3] uint8: a new image.
    """
    canvas = image.astype(np.float32).copy()
    for det in detections:
        if det.get("segmentation") is None:
            continue
        mask = rle_to_mask(det["segmentation"]).astype(bool)
        if mask.shape != canvas.shape[:2]:
            raise ValueError(f"mask is {mask.shape}, image is {canvas.shape[:2]}")
        color = np.array(category_color(det["category_id"]), dtype=np.float32)
        canvas[mask] = canvas[mask] * (1 - alpha) + color * alpha
    out = Image.fromarray(canvas.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(out)
    for det in detections:
        color = category_color(det["category_id"])
        x1, y1, x2, y2 = det["box_xyxy"]
        if draw_boxes:
            draw.rectangle([x1, y1, x2, y2], outline=color, width=2)
        text = f"{det['category_name']} {det['score']:.2f}"
        left, top, right, bottom = draw.textbbox((x1, y1), text)
        label_top = max(0.0, y1 - (bottom - top) - 2)
        draw.rectangle([x1, label_top, x1 + (right - left) + 4, label_top + (bottom - top) + 2], fill=color)
        draw.text((x1 + 2, label_top), text, fill=(0, 0, 0))
    return np.asarray(out)
