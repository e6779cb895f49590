"""Predictor: images in, detection records (DETECTION_FIELDS, COCO RLE) out."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as coco_mask

from mrcnn.checkpoint import save_checkpoint
from mrcnn.config import get_preset
from mrcnn.data.categories import Category, CategoryMap
from mrcnn.data.images import decode_image, load_image
from mrcnn.modeling import build_model
from mrcnn.predictor import Predictor
from mrcnn.records import DETECTION_FIELDS, coco_result

PHOTO = Path(__file__).resolve().parents[1] / "data" / "photos" / "000000000072.jpg"
ID_OF_LABEL = {1: 7, 2: 11, 3: 23, 4: 42, 5: 90}
NAME_OF_LABEL = {1: "circle", 2: "square", 3: "triangle", 4: "star", 5: "hexagon"}
CATEGORIES = CategoryMap(categories=tuple(Category(id=ID_OF_LABEL[l], name=NAME_OF_LABEL[l]) for l in (3, 1, 5, 2, 4)))

pytestmark = pytest.mark.filterwarnings(
    # pycocotools 2.0.x calls np.array(copy=False) on its own buffer type; numpy 2 warns on every decode.
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    torch.manual_seed(0)
    config = get_preset("r18_fpn_small").replace(**{"model.input.min_size": [128], "model.input.max_size": 192})
    return Predictor(build_model(config), config=config, categories=CATEGORIES, score_threshold=0.0)


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    first = rng.integers(0, 256, size=(120, 160, 3), dtype=np.uint8)
    first[30:90, 40:110] = (250, 30, 30)  # some structure
    second = rng.integers(0, 256, size=(150, 100, 3), dtype=np.uint8)
    return [first, second]


@pytest.fixture(scope="module")
def full_records(predictor, images):
    return predictor.predict(images)


def test_records_follow_the_schema(predictor, images, full_records):
    raw = predictor.predict_raw(images)
    assert len(full_records) == len(images)
    for records, detection, image in zip(full_records, raw, images):
        H, W = image.shape[:2]
        assert len(records) == len(detection["scores"]) > 10
        D = len(records)
        assert detection["masks"].shape == (D, H, W) and detection["masks"].dtype == torch.bool  # thresholded
        assert detection["boxes"].device.type == "cpu"
        scores = [r["score"] for r in records]
        assert scores == sorted(scores, reverse=True)
        for record, box, label, mask in zip(records, detection["boxes"], detection["labels"], detection["masks"]):
            assert tuple(record) == DETECTION_FIELDS
            assert record["label"] == int(label)
            assert record["category_id"] == ID_OF_LABEL[record["label"]]
            assert record["category_name"] == NAME_OF_LABEL[record["label"]]
            assert record["box_xyxy"] == pytest.approx(box.tolist())
            x1, y1, x2, y2 = record["box_xyxy"]
            assert record["bbox"] == pytest.approx([x1, y1, x2 - x1, y2 - y1])
            rle = record["segmentation"]
            assert rle["size"] == [H, W] and isinstance(rle["counts"], str)
            decoded = coco_mask.decode({"size": rle["size"], "counts": rle["counts"].encode()})
            np.testing.assert_array_equal(decoded, mask.numpy().astype(np.uint8))
            assert record["area"] == float(decoded.sum())
            result = coco_result(record, image_id=5)
            assert result["category_id"] == record["category_id"] and result["segmentation"] is rle


def test_score_threshold_filters(predictor, images, full_records):
    threshold = float(np.median([r["score"] for r in full_records[0]]))
    filtered = predictor.predict(images, score_threshold=threshold)
    for kept, full in zip(filtered, full_records):
        above = [r for r in full if r["score"] > threshold]
        assert 0 < len(kept) == len(above) < len(full)
        for a, b in zip(kept, above):
            assert a["label"] == b["label"]
            assert a["score"] == pytest.approx(b["score"], rel=1e-5)
            assert a["box_xyxy"] == pytest.approx(b["box_xyxy"], abs=1e-3)
    # The per-call threshold does not stick: the model's own (config) threshold is restored.
    assert predictor.model.roi_heads.score_thresh == predictor.config.model.box_head.score_thresh == 0.05

    strict = Predictor(predictor.model, config=predictor.config, categories=CATEGORIES, score_threshold=threshold)
    assert [len(r) for r in strict.predict(images)] == [len(r) for r in filtered]
    assert strict.predict(images, score_threshold=1.0) == [[], []]


def test_max_detections_caps(predictor, images, full_records):
    capped = predictor.predict(images, max_detections=3)
    assert [len(r) for r in capped] == [3, 3]
    assert capped == [r[:3] for r in full_records]
    assert predictor.predict(images, max_detections=0) == [[], []]


def _png_bytes(array: np.ndarray, mode: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


def test_grayscale_and_rgba_inputs_end_to_end(predictor):
    rng = np.random.default_rng(3)
    grey = rng.integers(0, 256, size=(96, 130), dtype=np.uint8)
    rgb = rng.integers(0, 256, size=(110, 90, 3), dtype=np.uint8)
    rgba = np.dstack([rgb, rng.integers(0, 256, size=(110, 90), dtype=np.uint8)])

    grey_image = decode_image(_png_bytes(grey, "L"), source="grey.png")
    rgba_image = decode_image(_png_bytes(rgba, "RGBA"), source="rgba.png")
    assert grey_image.shape == (96, 130, 3) and rgba_image.shape == (110, 90, 3)
    assert all(np.array_equal(grey_image[..., c], grey) for c in range(3))
    np.testing.assert_array_equal(rgba_image, rgb)  # alpha dropped, colour kept

    records = predictor.predict([grey_image, rgba_image])
    assert len(records[0]) > 0 and len(records[1]) > 0
    assert all(r["segmentation"]["size"] == [96, 130] for r in records[0])
    assert all(r["segmentation"]["size"] == [110, 90] for r in records[1])


def test_mask_threshold_is_applied(predictor, images):
    strict = Predictor(predictor.model, config=predictor.config, categories=CATEGORIES, score_threshold=0.0, mask_threshold=0.9)
    loose = Predictor(predictor.model, config=predictor.config, categories=CATEGORIES, score_threshold=0.0, mask_threshold=0.1)
    strict_raw, loose_raw = strict.predict_raw(images[:1])[0], loose.predict_raw(images[:1])[0]
    assert (strict_raw["masks"] <= loose_raw["masks"]).all()  # a higher threshold keeps a subset of pixels
    assert strict_raw["masks"].sum() < loose_raw["masks"].sum()
    strict_areas = [r["area"] for r in strict.predict(images[:1])[0]]
    loose_areas = [r["area"] for r in loose.predict(images[:1])[0]]
    assert all(a <= b for a, b in zip(strict_areas, loose_areas)) and sum(strict_areas) < sum(loose_areas)


def test_predict_rejects_non_rgb_arrays(predictor):
    with pytest.raises(ValueError, match=r"expected an \[H, W, 3\] uint8 image"):
        predictor.predict([np.zeros((20, 20), dtype=np.uint8)])


def test_from_checkpoint_and_predict_files(tmp_path, predictor):
    path = save_checkpoint(tmp_path / "m.pt", model=predictor.model, config=predictor.config, categories=CATEGORIES)
    loaded = Predictor.from_checkpoint(path, score_threshold=0.0)
    assert loaded.metadata["source_format"] == "mrcnn" and loaded.metadata["checkpoint"] == str(path)
    assert loaded.categories.category_ids == [7, 11, 23, 42, 90]
    records = loaded.predict_files([PHOTO], max_detections=5)
    assert len(records) == 1 and len(records[0]) == 5
    assert all(r["segmentation"]["size"] == [640, 427] for r in records[0])
    assert records == predictor.predict([load_image(PHOTO)], max_detections=5)


def test_default_predictor_is_optimized_without_winograd(predictor, images):
    """``optimize=True``: BatchNorm folded and channels-last; Winograd only when asked for (it pays only where
    the application keeps freed memory). A per-call threshold reaches the model as an argument."""
    from mrcnn.inference import WinogradConv2d

    model = predictor.inference_model
    assert model is not predictor.model and model.channels_last
    assert not any(isinstance(m, WinogradConv2d) for m in model.modules())
    assert model.roi_heads.score_thresh == predictor.model.roi_heads.score_thresh
    predictor.predict_raw(images[:1], score_threshold=0.9)
    assert model.roi_heads.score_thresh == predictor.config.model.box_head.score_thresh
    winograd = Predictor(predictor.model, config=predictor.config, categories=CATEGORIES, optimize={"winograd": True})
    assert any(isinstance(m, WinogradConv2d) for m in winograd.inference_model.modules())
    assert Predictor(predictor.model, config=predictor.config, categories=CATEGORIES, optimize=False).inference_model is predictor.model
    with pytest.raises(ValueError, match="winograd"):
        Predictor(predictor.model, config=predictor.config, categories=CATEGORIES, optimize={"wino": True})


def test_predict_each_reruns_a_failing_batch_image_by_image(predictor, images):
    """A 0 x 0 image breaks the forward pass: only its own entry is the error, the others are as ``predict``."""
    bad = np.zeros((0, 0, 3), np.uint8)
    with pytest.raises(Exception):  # noqa: B017 -- whatever the model raises
        predictor.predict([images[0], bad])
    results = predictor.predict_each([images[0], bad, images[1]], batch_size=2)
    assert len(results) == 3 and isinstance(results[1], Exception)
    # Re-run alone (a batch pads every image to its largest, so alone is what they are compared with).
    assert [results[0], results[2]] == [predictor.predict([image])[0] for image in images]
    assert predictor.predict_each(images) == predictor.predict(images)  # no failure: one batch, as predict
    raw = predictor.predict_each([bad, images[1]], raw=True, score_threshold=0.5)
    assert isinstance(raw[0], Exception) and set(raw[1]) >= {"boxes", "scores", "labels", "masks"}
    assert bool((raw[1]["scores"] > 0.5).all())
    with pytest.raises(ValueError, match="batch_size"):
        predictor.predict_each(images, batch_size=0)
