"""Post-processing from box crops (mrcnn.postprocess) gives the records of the full-size path, exactly.

Random weights leave mask probabilities near 0.5, so both paths are fed the same probabilities and the
records are compared for equality (RLE strings, areas, boxes, scores, order).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mrcnn.config import get_preset
from mrcnn.data.categories import CategoryMap
from mrcnn.data.images import load_image
from mrcnn.modeling import build_model
from mrcnn.modeling.paste import expanded_int_boxes, paste_mask_crops, paste_masks_binary
from mrcnn.postprocess import records_from_mask_probs
from mrcnn.predictor import Predictor, detections_to_records
from tests.conftest import PHOTO

pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)

CATEGORIES = CategoryMap.from_names(["a", "b", "c", "d", "e"])


def _detection(seed: int, num: int, height: int, width: int, *, keypoints: int = 0) -> dict[str, torch.Tensor]:
    """Unpasted detections as the model gives them, with boxes clipped to the image and some at its edges."""
    generator = torch.Generator().manual_seed(seed)
    xy = torch.rand(num, 2, generator=generator) * torch.tensor([width, height]) * 1.1 - 5
    wh = torch.rand(num, 2, generator=generator) * torch.tensor([width, height]) * 0.6 + 0.2
    boxes = torch.cat([xy, xy + wh], dim=1)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    if num >= 3:
        boxes[0] = torch.tensor([0.0, 0.0, width, height])  # the whole image
        boxes[1] = torch.tensor([10.0, 10.0, 10.3, 10.2])  # under a pixel
        boxes[2] = torch.tensor([width - 4.0, height - 3.0, width, height])  # in a corner
    detection = {
        "boxes": boxes,
        "scores": torch.rand(num, generator=generator).sort(descending=True).values,
        "labels": torch.randint(1, 6, (num,), generator=generator),
        # Near 0.5, like a random model's, and with exact 0.5s, so the threshold's >= matters.
        "mask_probs": (0.5 + 0.02 * torch.randn(num, 1, 28, 28, generator=generator)).round(decimals=2),
    }
    if keypoints:
        detection["keypoints"] = torch.rand(num, keypoints, 3, generator=generator) * width
        detection["keypoints_scores"] = torch.randn(num, keypoints, generator=generator)
    return detection


def _full_size_records(detection, size, *, mask_threshold=0.5, max_detections=None):
    full = {k: v for k, v in detection.items() if k != "mask_probs"}
    full["masks"] = paste_masks_binary(detection["mask_probs"], detection["boxes"], size, threshold=mask_threshold)
    full = {k: v.cpu() for k, v in full.items()}
    return detections_to_records(full, CATEGORIES, mask_threshold=mask_threshold, max_detections=max_detections)


def test_paste_mask_crops_are_the_full_masks_windows():
    H, W = 61, 83
    detection = _detection(0, 40, H, W)
    probs, boxes = detection["mask_probs"], detection["boxes"]
    full = paste_masks_binary(probs, boxes, (H, W))
    packed, windows = paste_mask_crops(probs, expanded_int_boxes(boxes, mask_size=28).tolist(), (H, W))
    offset = 0
    for mask, (x0, y0, x1, y1) in zip(full, windows):
        outside = mask.clone()
        if x1 > x0:
            block = packed[offset : offset + (x1 - x0) * (y1 - y0 + 1)].view(x1 - x0, y1 - y0 + 1)
            assert torch.equal(block[:, : y1 - y0].t(), mask[y0:y1, x0:x1])
            assert not block[:, -1].any()
            offset += block.numel()
            outside[y0:y1, x0:x1] = False
        assert not outside.any()
    assert offset == len(packed)


@pytest.mark.parametrize(("size", "num", "threshold", "max_detections"),
                         [((61, 83), 40, 0.5, None), ((50, 50), 100, 0.49, 7), ((17, 90), 3, 0.5, None), ((30, 40), 0, 0.5, None)])
def test_records_from_crops_equal_the_full_size_path(size, num, threshold, max_detections):
    detection = _detection(num, num, *size)
    ours = records_from_mask_probs(detection, CATEGORIES, size, mask_threshold=threshold, max_detections=max_detections)
    reference = _full_size_records(detection, size, mask_threshold=threshold, max_detections=max_detections)
    assert len(ours) == (num if max_detections is None else min(num, max_detections))
    assert ours == reference
    assert any(r["area"] > 0 for r in ours) or num == 0


def test_records_from_crops_carry_keypoints_like_the_full_size_path():
    detection = _detection(5, 12, 40, 60, keypoints=17)
    assert records_from_mask_probs(detection, CATEGORIES, (40, 60)) == _full_size_records(detection, (40, 60))
    without_masks = {k: v for k, v in detection.items() if k != "mask_probs"}
    records = records_from_mask_probs(without_masks, CATEGORIES, (40, 60))
    assert records == detections_to_records(without_masks, CATEGORIES)
    assert all(r["segmentation"] is None and len(r["keypoints"]) == 51 for r in records)


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    torch.manual_seed(0)
    config = get_preset("r18_fpn_small").replace(**{"model.input.min_size": [128], "model.input.max_size": 192})
    return Predictor(build_model(config), config=config, categories=CATEGORIES, score_threshold=0.0)


def test_predict_equals_records_of_predict_raw(predictor):
    images = [load_image(PHOTO), np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)]
    raw = predictor.predict_raw(images)
    records = predictor.predict(images)
    assert [len(r) for r in records] == [len(d["scores"]) for d in raw] and len(records[0]) > 0
    assert records == [detections_to_records(d, CATEGORIES) for d in raw]
    assert predictor.predict(images, max_detections=3) == [detections_to_records(d, CATEGORIES, max_detections=3) for d in raw]


@pytest.mark.needs_cuda
def test_records_from_crops_on_cuda_equal_the_full_size_path_on_the_cpu():
    size = (480, 640)
    detection = _detection(1, 100, *size)
    on_gpu = {k: v.cuda() for k, v in detection.items()}
    assert records_from_mask_probs(on_gpu, CATEGORIES, size) == _full_size_records(detection, size)


@pytest.mark.needs_cuda
def test_predictor_on_cuda_gives_the_full_size_records_of_its_own_detections(predictor):
    """One forward pass on the GPU; its detections through both paths (crops on the GPU, full masks)."""
    import copy

    gpu = Predictor(copy.deepcopy(predictor.model), config=predictor.config, categories=CATEGORIES, score_threshold=0.0,
                    device="cuda")
    image = load_image(PHOTO)
    tensor = torch.from_numpy(image).permute(2, 0, 1).float().div(255).cuda()
    with torch.inference_mode():
        detection = gpu.inference_model([tensor], score_threshold=0.0, paste_masks=False).detections[0]
        size = tuple(image.shape[:2])
        ours = records_from_mask_probs(detection, CATEGORIES, size)
        assert len(ours) > 0 and ours == _full_size_records(detection, size)
    records = gpu.predict([image])[0]
    assert len(records) == len(gpu.predict_raw([image])[0]) and records[0]["segmentation"]["size"] == list(size)
