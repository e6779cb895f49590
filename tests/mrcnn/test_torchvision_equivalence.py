"""A bare torchvision maskrcnn_resnet50_fpn(_v2) state dict loads into our model and predicts exactly the same."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from pycocotools import mask as coco_mask
from torchvision.models.detection import MaskRCNN_ResNet50_FPN_Weights

from mrcnn.checkpoint import load_checkpoint
from mrcnn.data.images import load_image
from mrcnn.predictor import Predictor
from mrcnn.records import DETECTION_FIELDS
from tests.mrcnn.inference.inference_checks import assert_same_detections_up_to_rounding

PHOTO = Path(__file__).resolve().parents[1] / "data" / "photos" / "000000000072.jpg"

# Small inputs and fewer proposals/detections keep a ResNet-50 forward pass at a few seconds on a CPU.
MIN_SIZE, MAX_SIZE, PRE_NMS, POST_NMS, DETECTIONS = 320, 512, 300, 100, 20
TORCHVISION_KWARGS = dict(
    weights=None,
    weights_backbone=None,
    box_score_thresh=0.0,
    min_size=MIN_SIZE,
    max_size=MAX_SIZE,
    rpn_pre_nms_top_n_test=PRE_NMS,
    rpn_post_nms_top_n_test=POST_NMS,
    box_detections_per_img=DETECTIONS,
)
CONFIG_OVERRIDES = {
    "model.input.min_size": [MIN_SIZE],
    "model.input.max_size": MAX_SIZE,
    "model.box_head.score_thresh": 0.0,
    "model.rpn.pre_nms_top_n_test": PRE_NMS,
    "model.rpn.post_nms_top_n_test": POST_NMS,
    "model.box_head.detections_per_img": DETECTIONS,
}
BUILDERS = {
    "r50_fpn": torchvision.models.detection.maskrcnn_resnet50_fpn,
    "r50_fpn_v2": torchvision.models.detection.maskrcnn_resnet50_fpn_v2,
}


@pytest.fixture(autouse=True, scope="module")
def flush_denormals():
    """Randomly initialised ResNets with frozen BN produce denormal floats, which are ~30x slower on a CPU."""
    torch.set_flush_denormal(True)
    yield
    torch.set_flush_denormal(False)


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    """A real portrait photo (640x427) and a random landscape image (180x240), HxWx3 uint8."""
    photo = load_image(PHOTO)
    assert photo.shape == (640, 427, 3)
    random_image = np.random.default_rng(0).integers(0, 256, size=(180, 240, 3), dtype=np.uint8)
    return [photo, random_image]


def _to_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1).float() / 255.0


def _torchvision_run(arch: str, images, tmp_path_factory):
    """Random-init torchvision model: its state dict file and its detections on ``images``."""
    torch.manual_seed(0)
    model = BUILDERS[arch](**TORCHVISION_KWARGS).eval()
    path = tmp_path_factory.mktemp(arch) / "torchvision_state_dict.pth"
    torch.save(model.state_dict(), path)
    with torch.no_grad():
        detections = model([_to_tensor(img) for img in images])
    assert all(len(d["scores"]) == DETECTIONS for d in detections)  # a meaningful comparison
    return path, detections


def _assert_same_detections(ours, theirs):
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert set(a) == set(b) == {"boxes", "labels", "scores", "masks"}
        torch.testing.assert_close(a["labels"], b["labels"], rtol=0, atol=0)
        torch.testing.assert_close(a["boxes"], b["boxes"], rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(a["scores"], b["scores"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(a["masks"], b["masks"], rtol=1e-5, atol=1e-5)


def _expected_records(detection: dict[str, torch.Tensor]) -> list[dict]:
    """Detection records derived from torchvision's output with pycocotools, independently of mrcnn."""
    names = MaskRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"]  # index = COCO id = torchvision label
    records = []
    for box, label, score, mask in zip(detection["boxes"], detection["labels"], detection["scores"], detection["masks"]):
        binary = (mask[0] >= 0.5).numpy().astype(np.uint8)
        rle = coco_mask.encode(np.asfortranarray(binary))
        x1, y1, x2, y2 = box.tolist()
        records.append(
            {
                "label": int(label),
                "category_id": int(label),
                "category_name": names[int(label)],
                "score": float(score),
                "box_xyxy": [x1, y1, x2, y2],
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "segmentation": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")},
                "area": float(binary.sum()),
            }
        )
    return records


def _assert_records_equal(ours: list[dict], expected: list[dict]):
    assert len(ours) == len(expected)
    for a, b in zip(ours, expected):
        assert set(a) == set(DETECTION_FIELDS)
        for key in ("label", "category_id", "category_name", "segmentation", "area"):
            assert a[key] == b[key], key
        assert a["score"] == pytest.approx(b["score"], rel=1e-5, abs=1e-6)
        assert a["box_xyxy"] == pytest.approx(b["box_xyxy"], abs=1e-4)
        assert a["bbox"] == pytest.approx(b["bbox"], abs=1e-4)


def _check_arch(arch: str, images, tmp_path_factory):
    path, theirs = _torchvision_run(arch, images, tmp_path_factory)

    explicit = load_checkpoint(path, arch=arch)
    detected = load_checkpoint(path)  # arch=None: detected from the state-dict keys
    assert explicit.source_format == detected.source_format == "torchvision"
    assert explicit.config == detected.config
    assert detected.config.name == arch
    assert detected.config.model.num_classes == 90
    assert detected.categories.category_ids == list(range(1, 91))

    checkpoint = dataclasses.replace(explicit, config=explicit.config.replace(**CONFIG_OVERRIDES))
    model = checkpoint.build_model().eval()
    with torch.no_grad():
        ours = model([_to_tensor(img) for img in images]).detections
    _assert_same_detections(ours, theirs)

    # The served path: Predictor.from_checkpoint with arch auto-detection, HxWx3 uint8 in, records out;
    # optimize=False runs the model as loaded, so the records are exactly torchvision's.
    predictor = Predictor.from_checkpoint(path, score_threshold=0.0, optimize=False)
    assert predictor.metadata["source_format"] == "torchvision"
    # A bare state dict carries no config, so the preset's input size and top-n apply; set them as above.
    predictor.model.transform.min_size = (MIN_SIZE,)
    predictor.model.transform.max_size = MAX_SIZE
    predictor.model.rpn._pre_nms_top_n["testing"] = PRE_NMS
    predictor.model.rpn._post_nms_top_n["testing"] = POST_NMS
    predictor.model.roi_heads.detections_per_img = DETECTIONS
    records = predictor.predict(images)
    for per_image, detection, image in zip(records, theirs, images):
        _assert_records_equal(per_image, _expected_records(detection))
        assert all(r["segmentation"]["size"] == list(image.shape[:2]) for r in per_image)

    # The default, optimized predictor (BatchNorm folded, channels-last): the same detections up to
    # float rounding, masks at IoU >= 0.98 per instance (tests/mrcnn/modeling/test_inference.py has the details).
    fast = Predictor(model, config=checkpoint.config, categories=checkpoint.categories, score_threshold=0.0)
    for ours_raw, detection in zip(fast.predict_raw(images), theirs):
        assert_same_detections_up_to_rounding(ours_raw, detection)


def test_torchvision_maskrcnn_resnet50_fpn_state_dict(images, tmp_path_factory):
    _check_arch("r50_fpn", images, tmp_path_factory)


def test_torchvision_maskrcnn_resnet50_fpn_v2_state_dict(images, tmp_path_factory):
    _check_arch("r50_fpn_v2", images, tmp_path_factory)


def test_wrong_arch_for_state_dict_is_a_checkpoint_error(tmp_path):
    from mrcnn.checkpoint import CheckpointError

    torch.manual_seed(0)
    path = tmp_path / "v1.pth"
    torch.save(BUILDERS["r50_fpn"](weights=None, weights_backbone=None).state_dict(), path)
    with pytest.raises(CheckpointError, match="do not fit preset 'r50_fpn_v2'"):
        load_checkpoint(path, arch="r50_fpn_v2").build_model()


def test_torchvision_keypointrcnn_resnet50_fpn_state_dict(images, tmp_path):
    """A bare keypointrcnn_resnet50_fpn state dict: detected as r50_fpn_keypoints (COCO person, 17 keypoints),
    and the same boxes, keypoints and keypoint scores as torchvision's model."""
    from mrcnn.data.keypoints import COCO_PERSON_KEYPOINTS, COCO_PERSON_SKELETON

    torch.manual_seed(0)
    reference = torchvision.models.detection.keypointrcnn_resnet50_fpn(**TORCHVISION_KWARGS).eval()
    path = tmp_path / "keypointrcnn.pth"
    torch.save(reference.state_dict(), path)
    with torch.no_grad():
        theirs = reference([_to_tensor(img) for img in images])
    assert all(len(d["scores"]) == DETECTIONS for d in theirs)

    checkpoint = load_checkpoint(path)
    assert checkpoint.config.name == "r50_fpn_keypoints" and checkpoint.config.model.task == "keypoints"
    assert not checkpoint.config.model.mask_head.enabled
    person = checkpoint.categories.keypoint_category
    assert (person.id, person.name, person.keypoints, person.skeleton) == (1, "person", COCO_PERSON_KEYPOINTS, COCO_PERSON_SKELETON)
    model = dataclasses.replace(checkpoint, config=checkpoint.config.replace(**CONFIG_OVERRIDES)).build_model().eval()
    with torch.no_grad():
        ours = model([_to_tensor(img) for img in images]).detections
    for a, b in zip(ours, theirs):
        assert set(a) == set(b) == {"boxes", "labels", "scores", "keypoints", "keypoints_scores"}
        torch.testing.assert_close(a["labels"], b["labels"], rtol=0, atol=0)
        torch.testing.assert_close(a["boxes"], b["boxes"], rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(a["keypoints"], b["keypoints"], rtol=1e-5, atol=1e-3)
        torch.testing.assert_close(a["keypoints_scores"], b["keypoints_scores"], rtol=1e-4, atol=1e-4)
