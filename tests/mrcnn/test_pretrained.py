"""Initialising a model for a new dataset from torchvision's weights or our checkpoints (``init_from``).

The sources are written by the tests, with every float tensor distinct, so a tensor that was not loaded
(or a row copied from the wrong class) differs from the file's.
"""

from __future__ import annotations

import pytest
import torch
import torchvision

from mrcnn.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from mrcnn.config import get_preset
from mrcnn.data.categories import Category, CategoryMap
from mrcnn.data.keypoints import COCO_PERSON_KEYPOINTS
from mrcnn.engine import train_step
from mrcnn.modeling import build_model
from mrcnn.pretrained import CLASS_SPECIFIC, CopiedRow, init_from, load_init_source

CLS = "roi_heads.box_predictor.cls_score"
BOX = "roi_heads.box_predictor.bbox_pred"
MASK = "roi_heads.mask_predictor.mask_fcn_logits"
KPS = "roi_heads.keypoint_predictor.kps_score_lowres"
COCO_PERSON, COCO_CAR = 1, 3  # torchvision's labels (= COCO category ids)
TINY = {"model.input.min_size": [64], "model.input.max_size": 96}

# The dataset: "car" and "person" are COCO's, "traffic cone" is not; labels 1..3 in id order.
DATASET = CategoryMap(
    categories=(Category(id=4, name="person"), Category(id=1, name="car"), Category(id=2, name="traffic cone"))
)
CAR, CONE, PERSON = 1, 2, 3


def _distinct(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every float tensor moved off any fresh initialisation: + (-1)^j 1e-3 (1 + j/n + i/1000) for element j of
    tensor i (no element becomes 0, running variances stay positive, activations keep their scale)."""
    out = {}
    for i, (name, tensor) in enumerate(state.items()):
        if tensor.is_floating_point():
            j = torch.arange(tensor.numel(), dtype=torch.float64)
            offset = (1 - 2 * (j % 2)) * 1e-3 * (1 + j / tensor.numel() + i / 1000)
            tensor = tensor + offset.reshape(tensor.shape).to(tensor.dtype)
        out[name] = tensor
    return out


@pytest.fixture(autouse=True, scope="module")
def flush_denormals():
    """Random ResNets with frozen BN produce denormal floats, ~30x slower on a CPU."""
    torch.set_flush_denormal(True)
    yield
    torch.set_flush_denormal(False)


@pytest.fixture(scope="module")
def coco_file(tmp_path_factory):
    """A torchvision maskrcnn_resnet50_fpn state dict over COCO's 91 slots, every float tensor distinct."""
    torch.manual_seed(0)
    tv = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91)
    state = _distinct(tv.state_dict())
    path = tmp_path_factory.mktemp("tv") / "maskrcnn_resnet50_fpn_coco.pth"
    torch.save(state, path)
    return path, state


def _images_and_targets():
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 64, 80, generator=g), torch.rand(3, 72, 64, generator=g)]
    targets = []
    for image, labels in zip(images, ([PERSON, CONE], [CAR])):
        H, W = image.shape[1:]
        boxes = torch.tensor([[4.0, 6.0, 40.0, 50.0], [20.0, 10.0, 60.0, 60.0]])[: len(labels)]
        masks = torch.zeros(len(labels), H, W, dtype=torch.uint8)
        for m, (x0, y0, x1, y1) in zip(masks, boxes.int().tolist()):
            m[y0:y1, x0:x1] = 1
        targets.append({"boxes": boxes, "labels": torch.tensor(labels), "masks": masks})
    return images, targets


def test_torchvision_coco_weights_initialise_a_new_dataset_and_survive_a_step(coco_file):
    path, file_state = coco_file
    cfg = get_preset("r50_fpn").replace(**{"model.num_classes": DATASET.num_classes, **TINY})
    torch.manual_seed(1)
    model = build_model(cfg)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}

    state, source_categories, description = load_init_source(path)
    assert source_categories.name_of_label(COCO_PERSON) == "person" and source_categories.name_of_label(COCO_CAR) == "car"
    report = init_from(model, state, categories=DATASET, source_categories=source_categories, source_name=description)

    # One step at a learning rate too small to change a float32 weight: everything shared stays the file's.
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=1e-30, momentum=0.9, weight_decay=1e-4)
    images, targets = _images_and_targets()
    losses = train_step(model, images, targets, optimizer=optimizer, step=0)
    # A real step: every trainable tensor got a gradient (stem and res2 are frozen, as the preset says).
    assert losses["loss_classifier"] > 0 and losses["loss_mask"] > 0
    assert all(p.grad is not None and bool(p.grad.any()) for p in trainable), "a trainable tensor got no gradient"
    assert not model.backbone.body.conv1.weight.requires_grad and model.backbone.body.layer2[0].conv1.weight.requires_grad
    after = model.state_dict()

    shared = set(after) - set(CLASS_SPECIFIC)
    assert set(report.loaded) == shared and len(shared) > 250
    for name in shared:
        assert torch.equal(after[name], file_state[name]), name
    assert sorted(report.reinitialised) == sorted(k for k in CLASS_SPECIFIC if k in after)
    assert not report.skipped
    assert report.unused == []  # torchvision's BatchNorm counters (num_batches_tracked) are no tensors to report

    # K + 1 rows; background, car and person copied from COCO's slots 0, 3 and 1; the cone keeps its fresh init.
    assert after[f"{CLS}.weight"].shape == (DATASET.num_classes + 1, 1024)
    assert after[f"{BOX}.weight"].shape == (4 * (DATASET.num_classes + 1), 1024)
    assert after[f"{MASK}.weight"].shape == (DATASET.num_classes + 1, 256, 1, 1)
    assert report.copied == [CopiedRow("car", COCO_CAR, CAR), CopiedRow("person", COCO_PERSON, PERSON)]
    assert report.new_categories == ["traffic cone"]
    for new, old in ((0, 0), (CAR, COCO_CAR), (PERSON, COCO_PERSON)):
        for suffix in ("weight", "bias"):
            assert torch.equal(after[f"{CLS}.{suffix}"][new], file_state[f"{CLS}.{suffix}"][old])
            box_rows = after[f"{BOX}.{suffix}"][4 * new : 4 * new + 4]
            assert torch.equal(box_rows, file_state[f"{BOX}.{suffix}"][4 * old : 4 * old + 4])
            assert torch.equal(after[f"{MASK}.{suffix}"][new], file_state[f"{MASK}.{suffix}"][old])
    for name in (f"{CLS}.weight", f"{BOX}.weight", f"{MASK}.weight"):
        block = after[name].shape[0] // (DATASET.num_classes + 1)
        assert torch.equal(after[name][CONE * block : (CONE + 1) * block], fresh[name][CONE * block : (CONE + 1) * block])

    params = report.to_params()
    assert params["init_from.loaded_tensors"] == len(shared)
    assert params["init_from.copied"] == "car 3->1, person 1->3"
    assert params["init_from.new_categories"] == "traffic cone" and "init_from.copied_keypoints" not in params
    assert all(isinstance(v, (str, int)) and len(str(v)) <= 500 for v in params.values())
    assert params["init_from"] == description
    assert description == f"{path} (torchvision state dict, r50_fpn layout, box+mask heads, 90 classes)"
    assert "person 1->3" in report.summary() and "traffic cone" in report.summary()


def test_keypoint_rcnn_weights_copy_keypoints_by_name(tmp_path):
    """A person-keypoint R-CNN into a model of 3 keypoints, two of them COCO's (in another order)."""
    torch.manual_seed(0)
    tv = torchvision.models.detection.keypointrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    file_state = _distinct(tv.state_dict())
    path = tmp_path / "keypointrcnn_resnet50_fpn.pth"
    torch.save(file_state, path)

    names = ("left_eye", "nose", "tail_tip")
    dataset = CategoryMap(categories=(Category(id=1, name="dog"), Category(id=2, name="person", keypoints=names)))
    cfg = get_preset("r50_fpn_keypoints").replace(**{"model.num_classes": 2, "model.keypoint_head.num_keypoints": 3})
    model = build_model(cfg)
    fresh = model.state_dict()[f"{KPS}.weight"].clone()
    state, source_categories, _ = load_init_source(path)
    report = init_from(model, state, categories=dataset, source_categories=source_categories, source_name=str(path))
    after = model.state_dict()

    assert after[f"{KPS}.weight"].shape[1] == 3
    left_eye, nose = COCO_PERSON_KEYPOINTS.index("left_eye"), COCO_PERSON_KEYPOINTS.index("nose")
    assert report.copied_keypoints == [CopiedRow("left_eye", left_eye, 0), CopiedRow("nose", nose, 1)]
    assert torch.equal(after[f"{KPS}.weight"][:, 0], file_state[f"{KPS}.weight"][:, left_eye])
    assert torch.equal(after[f"{KPS}.weight"][:, 1], file_state[f"{KPS}.weight"][:, nose])
    assert torch.equal(after[f"{KPS}.bias"][:2], file_state[f"{KPS}.bias"][[left_eye, nose]])
    assert torch.equal(after[f"{KPS}.weight"][:, 2], fresh[:, 2])
    assert report.copied == [CopiedRow("person", 1, 2)] and report.new_categories == ["dog"]
    assert torch.equal(after[f"{CLS}.weight"][2], file_state[f"{CLS}.weight"][1])
    assert set(report.loaded) == set(after) - set(CLASS_SPECIFIC)
    assert all(torch.equal(after[k], file_state[k]) for k in report.loaded)
    assert "left_eye 1->0" in report.summary() and report.to_params()["init_from.copied_keypoints"] == "left_eye 1->0, nose 0->1"

    # The same 17 COCO keypoints: the keypoint predictor loads whole.
    model = build_model(get_preset("r50_fpn_keypoints"))
    person = source_categories.categories[0]
    report = init_from(model, state, categories=CategoryMap(categories=(person,)), source_categories=source_categories)
    assert f"{KPS}.weight" in report.loaded and f"{CLS}.weight" in report.loaded and not report.reinitialised


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: torchvision.models.resnet18(weights=None).state_dict(), "image-classification ResNet"),
        (lambda: [1, 2, 3], "not a state dict"),
        (lambda: {"encoder.weight": torch.zeros(3)}, "state dict of another model"),
    ],
    ids=["resnet", "list", "other-model"],
)
def test_a_file_that_is_no_detection_model_is_one_clear_error(tmp_path, make, message):
    path = tmp_path / "weights.pth"
    torch.save(make(), path)
    with pytest.raises(CheckpointError, match=message) as info:
        load_init_source(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(CheckpointError, match="no such file"):
        load_init_source(tmp_path / "missing.pth")


def test_another_architecture_is_one_clear_error(coco_file, tmp_path):
    """Faster R-CNN into a Mask R-CNN or a keypoint model; v1 weights into the v2 layout; a classification ResNet,
    a dict that is no state dict, and a category map of another K passed directly."""
    path, coco_state = coco_file
    torch.manual_seed(0)
    faster = torchvision.models.detection.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None).state_dict()
    faster_path = tmp_path / "fasterrcnn_resnet50_fpn.pth"
    torch.save(faster, faster_path)
    state, source_categories, _ = load_init_source(faster_path)
    keypoint_categories = CategoryMap(categories=(Category(id=1, name="person", keypoints=COCO_PERSON_KEYPOINTS),))
    cases = [
        (build_model(get_preset("r50_fpn").replace(**{"model.num_classes": 3})), DATASET, "the source has no mask head"),
        (build_model(get_preset("r50_fpn_keypoints")), keypoint_categories, "the source has no keypoint head"),
    ]
    for model, categories, message in cases:
        with pytest.raises(CheckpointError, match=message) as info:
            init_from(model, state, categories=categories, source_categories=source_categories,
                      source_name=str(faster_path))  # fmt: skip
        text = str(info.value)
        assert str(faster_path) in text and "another architecture" in text and "\n" not in text

    v2 = build_model(get_preset("r50_fpn_v2").replace(**{"model.num_classes": 3}))
    with pytest.raises(CheckpointError, match=r"its FPN has another layout .*its RPN has another layout") as info:
        init_from(v2, coco_state, categories=DATASET, source_name=str(path))
    assert "\n" not in str(info.value)

    resnet = torchvision.models.resnet50(weights=None).state_dict()
    with pytest.raises(CheckpointError, match="nothing fits this model.*image-classification ResNet"):
        init_from(v2, resnet, categories=DATASET, source_name="resnet50.pth")
    with pytest.raises(CheckpointError, match="init_from x.pth: not a state dict of tensors"):
        init_from(v2, {"model": coco_state}, categories=DATASET, source_name="x.pth")
    with pytest.raises(ValueError, match="the model has 3 classes but the category map 2"):
        init_from(v2, coco_state, categories=CategoryMap.from_names(["a", "b"]))


def _small(**overrides):
    return get_preset("r18_fpn_small").replace(**{"model.num_classes": 3, **overrides})


def test_our_checkpoint_copies_rows_by_category_name(tmp_path):
    """A checkpoint over circle/square/triangle into a dataset of triangle, hexagon, circle (renamed, reordered)."""
    torch.manual_seed(0)
    source_cfg = _small(**{"model.rpn.aspect_ratios": [1.0]})  # one anchor per place: the RPN's predictors differ
    source_model = build_model(source_cfg)
    with torch.no_grad():
        for tensor in source_model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(_distinct({"t": tensor})["t"])
    source_categories = CategoryMap.from_names(["circle", "square", "triangle"])
    path = save_checkpoint(tmp_path / "shapes.ckpt", model=source_model, config=source_cfg, categories=source_categories)
    file_state = load_checkpoint(path).model_state

    dataset = CategoryMap(
        categories=(Category(id=7, name="triangle"), Category(id=8, name="hexagon"), Category(id=9, name="circle"))
    )
    model = build_model(_small())
    state, categories_read, description = load_init_source(path)
    assert categories_read == source_categories and "mrcnn checkpoint" in description
    report = init_from(model, load_checkpoint(path), categories=dataset, source_name=str(path))
    after = model.state_dict()

    assert report.copied == [CopiedRow("triangle", 3, 1), CopiedRow("circle", 1, 3)]
    assert report.new_categories == ["hexagon"]
    for new, old in ((0, 0), (1, 3), (3, 1)):
        assert torch.equal(after[f"{CLS}.weight"][new], file_state[f"{CLS}.weight"][old])
        assert torch.equal(after[f"{BOX}.bias"][4 * new : 4 * new + 4], file_state[f"{BOX}.bias"][4 * old : 4 * old + 4])
        assert torch.equal(after[f"{MASK}.weight"][new], file_state[f"{MASK}.weight"][old])
    rpn_predictors = {f"rpn.head.{layer}.{p}" for layer in ("cls_logits", "bbox_pred") for p in ("weight", "bias")}
    assert set(report.skipped) == rpn_predictors and all("shape mismatch" in r for r in report.skipped.values())
    assert set(report.loaded) == set(after) - set(CLASS_SPECIFIC) - rpn_predictors
    assert all(torch.equal(after[k], file_state[k]) for k in report.loaded)  # BN running stats included
    assert any(k.endswith("num_batches_tracked") for k in report.loaded)

    # The same categories in the same order: the class-specific layers load whole.
    model = build_model(_small())
    report = init_from(model, load_checkpoint(path), categories=source_categories)
    assert not report.reinitialised and f"{MASK}.weight" in report.loaded


def test_our_checkpoint_with_another_mask_head_is_another_architecture(tmp_path):
    cfg = _small(**{"model.mask_head.head": "mlp"})
    categories = CategoryMap.from_names("abc")
    path = save_checkpoint(tmp_path / "mlp.ckpt", model=build_model(cfg), config=cfg, categories=categories)
    message = r"init_from .*mlp.ckpt: another architecture: its mask head has another layout"
    with pytest.raises(CheckpointError, match=message):
        init_from(build_model(_small()), load_checkpoint(path), categories=categories, source_name=str(path))
