"""The overlay picture: ``overlay_png`` and ``save_overlay`` give ``draw_detections``'s pixels."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from mrcnn.data.masks import masks_to_rles
from mrcnn.records import detection_record
from mrcnn.visualize import category_color, draw_detections, overlay_png, save_overlay


@pytest.fixture()
def scene() -> tuple[np.ndarray, list[dict]]:
    image = np.full((40, 60, 3), 100, np.uint8)
    mask = np.zeros((1, 40, 60), bool)
    mask[0, 10:30, 20:50] = True
    record = detection_record(label=1, category_id=3, category_name="house", score=0.9, box_xyxy=[20, 10, 50, 30],
                              segmentation=masks_to_rles(mask)[0], area=600.0, keypoints=[25, 15, 1, 45, 25, 1],
                              keypoint_scores=[1.0, 1.0])  # fmt: skip
    return image, [record]


def test_overlay_png_is_the_drawing(scene):
    image, records = scene
    skeletons = {3: ((1, 2),)}
    decoded = np.asarray(Image.open(io.BytesIO(overlay_png(image, records, skeletons=skeletons))).convert("RGB"))
    expected = draw_detections(image, records, skeletons=skeletons)
    assert (decoded == expected).all()
    assert tuple(decoded[28, 40]) != (100, 100, 100)  # the mask is drawn
    assert tuple(decoded[28, 40]) == tuple((np.array(category_color(3)) * 0.5 + 50).astype(np.uint8))
    assert (decoded != draw_detections(image, records)).any()  # the skeleton line is drawn


def test_save_overlay_writes_the_suffix_format(scene, tmp_path):
    image, records = scene
    save_overlay(tmp_path / "a.png", image, records)
    assert (np.asarray(Image.open(tmp_path / "a.png")) == draw_detections(image, records)).all()
    save_overlay(tmp_path / "b.jpg", image, records)
    assert Image.open(tmp_path / "b.jpg").format == "JPEG"
    with pytest.raises(ValueError):
        save_overlay(tmp_path / "c.unknown", image, records)
