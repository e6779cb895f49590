"""Drawing detections: translucent masks, boxes, "name score" labels, and keypoints joined by their skeleton."""

from __future__ import annotations

import colorsys
import io
import os
from collections.abc import Mapping, Sequence
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
    skeletons: Mapping[int, Sequence[Sequence[int]]] | None = None,
) -> np.ndarray:
    """Overlay detection records on an image.

    Args:
        image (np.ndarray[H, W, 3] uint8): RGB.
        detections: records with ``category_id``, ``category_name``, ``score``, ``box_xyxy`` and
            ``segmentation`` (compressed RLE of size H x W, may be None), and optionally ``keypoints``
            (flat [x1, y1, v1, ...], absolute pixels; a keypoint with v = 0 is not drawn).
        alpha: mask opacity.
        skeletons: ``{category_id: [(a, b), ...]}``, 1-based keypoint pairs joined by a line
            (``CategoryMap.skeletons``); without one, a category's keypoints are drawn as points only.

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
        if det.get("keypoints"):
            _draw_keypoints(draw, det["keypoints"], (skeletons or {}).get(det["category_id"], ()), color, canvas.shape[:2])
        text = f"{det['category_name']} {det['score']:.2f}"
        left, top, right, bottom = draw.textbbox((x1, y1), text)
        label_top = max(0.0, y1 - (bottom - top) - 2)
        draw.rectangle([x1, label_top, x1 + (right - left) + 4, label_top + (bottom - top) + 2], fill=color)
        draw.text((x1 + 2, label_top), text, fill=(0, 0, 0))
    return np.asarray(out)


def overlay_png(
    image: np.ndarray,
    detections: Sequence[dict[str, Any]],
    *,
    skeletons: Mapping[int, Sequence[Sequence[int]]] | None = None,
) -> bytes:
    """``draw_detections`` (default look) encoded as a PNG file's bytes.

    Args:
        image (np.ndarray[H, W, 3] uint8): RGB.
        detections, skeletons: as ``draw_detections``.

    Returns:
        the PNG file, H x W RGB.
    """
    buffer = io.BytesIO()
    Image.fromarray(draw_detections(image, detections, skeletons=skeletons)).save(buffer, format="PNG")
    return buffer.getvalue()


def save_overlay(
    path: str | os.PathLike,
    image: np.ndarray,
    detections: Sequence[dict[str, Any]],
    *,
    skeletons: Mapping[int, Sequence[Sequence[int]]] | None = None,
) -> None:
    """``draw_detections`` (default look) written to the local file ``path``, in the format its suffix names
    (``.png``, ``.jpg``, ...); the parent folder must exist.

    Raises:
        ValueError: the suffix names no image format PIL can write.
    """
    Image.fromarray(draw_detections(image, detections, skeletons=skeletons)).save(path)


def _draw_keypoints(
    draw: ImageDraw.ImageDraw,
    keypoints: Sequence[float],
    skeleton: Sequence[Sequence[int]],
    color: tuple[int, int, int],
    image_size: tuple[int, int],
) -> None:
    """Skeleton lines in the category's colour, then each labelled keypoint as a white dot ringed in black."""
    points = [(keypoints[i], keypoints[i + 1], keypoints[i + 2]) for i in range(0, len(keypoints) - 2, 3)]
    radius = max(2.0, min(image_size) / 160)
    for a, b in skeleton:
        if 1 <= a <= len(points) and 1 <= b <= len(points) and points[a - 1][2] > 0 and points[b - 1][2] > 0:
            (xa, ya, _), (xb, yb, _) = points[a - 1], points[b - 1]
            draw.line([(xa, ya), (xb, yb)], fill=color, width=max(1, round(radius * 0.75)))
    for x, y, v in points:
        if v > 0:
            draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=(255, 255, 255), outline=(0, 0, 0))
