"""mrcnn.export: the exported ONNX and TorchScript files give PyTorch's detections at image sizes other than the
one traced; a broken export is refused with a message that says where; the export-only branches of the model are
the same function as the normal ones."""

from __future__ import annotations

import copy
import io

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from mrcnn import export as mrcnn_export
from mrcnn.checkpoint import load_checkpoint
from mrcnn.data.dataset import image_to_tensor
from mrcnn.data.images import load_image
from mrcnn.export import (
    ExportableMaskRCNN,
    ExportCheckError,
    check_parity,
    compare_detections,
    export_model,
    mask_iou,
    onnx_runner,
    torchscript_runner,
)
from mrcnn.inference import optimize_for_inference
from mrcnn.modeling.poolers import MultiScaleRoIPooler
from mrcnn.modeling.roi_heads import _class_nms_top
from mrcnn.predictor import Predictor
from tests.conftest import PHOTO

SCORE_THRESHOLD = 0.3

pytestmark = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning", "ignore::torch.jit.TracerWarning"
)


def decisive(model):
    """Random weights give class scores near 1/6 and mask probabilities near 0.5, where float rounding decides.
    Scaled-up logits give a spread of scores (some detections pass 0.3, not all 100) and masks with
    structure; the negative mask bias makes featureless cells clear background instead of exactly 0.5."""
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.weight.mul_(5.0)
        model.roi_heads.mask_predictor.mask_fcn_logits.weight.mul_(5.0)
        model.roi_heads.mask_predictor.mask_fcn_logits.bias.fill_(-1.0)
    return model.eval()


def photo_samples() -> dict[str, np.ndarray]:
    """The photo resized to 213x320 (landscape) and a 240x160 portrait crop of it."""
    photo = Image.fromarray(load_image(PHOTO))  # 640x427 (H x W)
    landscape = np.asarray(photo.resize((320, 213), Image.BILINEAR))
    portrait = np.asarray(photo.crop((100, 0, 340, 360)).resize((160, 240), Image.BILINEAR))
    return {"photo-landscape": landscape, "photo-portrait": portrait}


@pytest.fixture(scope="module")
def checkpoint(small_checkpoint):
    return load_checkpoint(small_checkpoint)


@pytest.fixture(scope="module")
def model(checkpoint):
    return decisive(checkpoint.build_model())


def plain_predictor(model, checkpoint) -> Predictor:
    return Predictor(model, config=checkpoint.config, categories=checkpoint.categories, score_threshold=SCORE_THRESHOLD,
                     optimize=False)  # fmt: skip


@pytest.fixture(scope="module")
def onnx_result(model):
    return export_model(model, fmt="onnx", sample_images=photo_samples(), score_threshold=SCORE_THRESHOLD)


def square_photo() -> np.ndarray:
    """A third size, used by neither the trace nor the export's own check."""
    return np.asarray(Image.fromarray(load_image(PHOTO)).crop((0, 100, 427, 527)).resize((176, 176), Image.BILINEAR))


def test_onnx_file_has_dynamic_image_and_torchvision_outputs(onnx_result):
    graph = onnx.load_model_from_string(onnx_result.data).graph
    assert [i.name for i in graph.input] == ["image"]
    image_dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert image_dims == [3, "height", "width"]
    assert [o.name for o in graph.output] == ["boxes", "labels", "scores", "masks"]
    mask_dims = [d.dim_param or d.dim_value for d in graph.output[3].type.tensor_type.shape.dim]
    assert mask_dims[0] == "detections" and mask_dims[2:] == ["height", "width"]


def test_onnx_parity_at_two_sizes(onnx_result):
    report = onnx_result.report
    assert report.fmt == "onnx"
    assert [(s.name, s.height, s.width) for s in report.samples] == [("photo-landscape", 213, 320), ("photo-portrait", 240, 160)]
    for sample in report.samples:
        assert sample.num_detections >= 3, "the check compared too little to mean anything"
        assert sample.max_box_diff_px <= 0.5 and sample.min_mask_iou >= 0.98
    assert len(report.lines()) == 2 and "detections match" in report.lines()[0]


def test_onnx_runtime_gives_the_predictors_detections_at_a_third_size(onnx_result, model, checkpoint):
    image = square_photo()
    outputs = onnx_runner(onnx_result.data)(image_to_tensor(image))
    assert outputs["masks"].shape[1:] == (1, 176, 176) and outputs["masks"].dtype == np.float32
    assert outputs["labels"].dtype == np.int64
    expected = plain_predictor(model, checkpoint).predict_raw([image])[0]
    assert len(expected["scores"]) >= 3
    assert len(outputs["scores"]) == len(expected["scores"])
    np.testing.assert_array_equal(outputs["labels"], expected["labels"].numpy())
    np.testing.assert_allclose(outputs["boxes"], expected["boxes"].numpy(), atol=0.5)
    np.testing.assert_allclose(outputs["scores"], expected["scores"].numpy(), atol=1e-4)
    for ours, theirs in zip(outputs["masks"][:, 0], expected["masks"].numpy()):
        assert mask_iou(ours, theirs.astype(np.float32)) >= 0.98  # ONNX Runtime's pixels at exactly 0.5 left out


def test_eager_wrapper_is_the_predictor_exactly(model, checkpoint):
    image = square_photo()
    model_threshold = model.roi_heads.score_thresh
    wrapper = ExportableMaskRCNN(model, score_threshold=SCORE_THRESHOLD)
    with torch.no_grad():
        boxes, labels, scores, masks = wrapper(image_to_tensor(image))
    expected = plain_predictor(model, checkpoint).predict_raw([image])[0]
    assert len(expected["scores"]) >= 3
    torch.testing.assert_close(boxes, expected["boxes"], rtol=0, atol=0)
    assert torch.equal(labels, expected["labels"]) and torch.equal(scores, expected["scores"])
    assert torch.equal(masks[:, 0] >= 0.5, expected["masks"])
    assert model.roi_heads.score_thresh == model_threshold != SCORE_THRESHOLD, "the wrapper leaves the model's threshold alone"


def test_torchscript_parity_and_reload(model):
    result = export_model(model, fmt="torchscript", sample_images=photo_samples(), score_threshold=SCORE_THRESHOLD)
    assert result.report.fmt == "torchscript" and all(s.num_detections >= 3 for s in result.report.samples)
    module = torch.jit.load(io.BytesIO(result.data))
    image = image_to_tensor(square_photo())
    with torch.no_grad():
        traced = module(image)
        eager = ExportableMaskRCNN(model, score_threshold=SCORE_THRESHOLD)(image)
    assert len(traced) == 4 and len(traced[0]) == len(eager[0]) >= 3
    for ours, theirs in zip(traced, eager):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    assert torchscript_runner(result.data)(image)["masks"].shape == (len(eager[0]), 1, 176, 176)


def test_keypoint_model_exports_keypoints(small_keypoint_checkpoint):
    model = load_checkpoint(small_keypoint_checkpoint).build_model()
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.weight.mul_(5.0)
    result = export_model(model.eval(), fmt="onnx", sample_images=photo_samples(), score_threshold=SCORE_THRESHOLD)
    assert sum(s.num_detections for s in result.report.samples) >= 3
    outputs = onnx_runner(result.data)(image_to_tensor(square_photo()))
    assert list(outputs) == ["boxes", "labels", "scores", "masks", "keypoints", "keypoints_scores"]
    N = len(outputs["scores"])
    assert outputs["keypoints"].shape == (N, 5, 3) and outputs["keypoints_scores"].shape == (N, 5)


def test_a_broken_graph_is_refused(model, monkeypatch):
    """A graph whose boxes are 1 px off (only in the traced function, as a wrong export branch would be)."""
    forward = ExportableMaskRCNN.forward

    def shifted(self, image):
        boxes, *rest = forward(self, image)
        return (boxes + 1.0 if torch.jit.is_tracing() else boxes, *rest)

    monkeypatch.setattr(ExportableMaskRCNN, "forward", shifted)
    with pytest.raises(ExportCheckError, match=r"sample 'photo-landscape' \(213x320\): PyTorch detection 0 .* "
                       r"has no match in ONNX Runtime's \d+ detections: the closest is 1 px away \(tolerance 0.5 px\)"):
        export_model(model, fmt="onnx", sample_images=photo_samples(), score_threshold=SCORE_THRESHOLD)


def test_a_graph_that_cannot_run_is_refused():
    def reference(image):
        raise AssertionError("not reached")

    def candidate(image):
        raise RuntimeError("Reshape node: input shape {17,256,14,14}, requested {256,14,14}\nmore")

    samples = {"a": torch.zeros(3, 20, 30), "b": torch.zeros(3, 30, 20)}
    with pytest.raises(ExportCheckError, match=r"^sample 'a' \(20x30\): ONNX Runtime cannot run the exported graph: "
                       r"Reshape node: input shape \{17,256,14,14\}, requested \{256,14,14\}$"):
        check_parity(reference, candidate, samples, fmt="onnx", engine="ONNX Runtime")


def _detections(num: int = 3, size: int = 40) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    boxes = np.array([[2 + 10 * i, 3, 12 + 10 * i, 30] for i in range(num)], dtype=np.float32)
    masks = np.zeros((num, 1, size, size), dtype=np.float32)
    for i, (x0, y0, x1, y1) in enumerate(boxes.astype(int)):
        masks[i, 0, y0:y1, x0:x1] = rng.uniform(0.6, 1.0, size=(y1 - y0, x1 - x0))
    return {
        "boxes": boxes,
        "labels": np.array([1, 2, 1][:num], dtype=np.int64),
        "scores": np.array([0.9, 0.8, 0.7][:num], dtype=np.float32),
        "masks": masks,
    }


def _compare(ref, out):
    return compare_detections(ref, out, name="img", size=(40, 40), engine="ONNX Runtime")


def test_compare_accepts_rounding_and_a_swapped_order():
    ref = _detections()
    out = {k: v.copy() for k, v in ref.items()}
    out["boxes"] += 0.4
    out["scores"] += 1e-4
    swapped = {k: v[[1, 0, 2]] for k, v in out.items()}
    parity = _compare(ref, swapped)
    assert parity.num_detections == 3 and parity.max_box_diff_px == pytest.approx(0.4, abs=1e-5)
    assert parity.min_mask_iou == 1.0


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda o: o["boxes"].__setitem__((1, 2), o["boxes"][1, 2] + 0.6),
         r"^sample 'img' \(40x40\): PyTorch detection 1 \(label 2, score 0.8000, box \[12.0, 3.0, 22.0, 30.0\]\) "
         r"has no match in ONNX Runtime's 3 detections: the closest is 0.6 px away \(tolerance 0.5 px\)$"),
        (lambda o: o["labels"].__setitem__(1, 3), r"PyTorch detection 1 \(label 2.*none of its label"),
        (lambda o: o["scores"].__setitem__(2, 0.69), r"PyTorch detection 2 .*score 0.6900 differs by 0.01 \(tolerance 0.001\)"),
        (lambda o: o["masks"].__setitem__((0, 0), np.roll(o["masks"][0, 0], 3, axis=0)),
         r"PyTorch detection 0 .*: mask IoU with ONNX Runtime's is 0.8\d+ \(need >= 0.98\)"),
    ],
    ids=["box", "label", "score", "mask"],
)
def test_compare_names_the_detection_and_how_far(change, message):
    ref = _detections()
    out = {k: v.copy() for k, v in ref.items()}
    change(out)
    with pytest.raises(ExportCheckError, match=message):
        _compare(ref, out)


def test_compare_counts():
    ref = _detections()
    with pytest.raises(ExportCheckError, match=r"PyTorch detection 1 .*no match in ONNX Runtime's 2 detections: none of its label"):
        _compare(ref, {k: v[[0, 2]] for k, v in ref.items()})
    extra = _detections()
    extra = {k: np.concatenate([v, v[:1]]) for k, v in extra.items()}
    extra["boxes"][3] += 5
    with pytest.raises(ExportCheckError, match=r"ONNX Runtime gives 4 detections, PyTorch 3; ONNX Runtime detection 3 \(label 1, score 0.9000\)"):
        _compare(ref, extra)
    empty = {k: v[:0] for k, v in ref.items()}
    assert _compare(empty, empty).min_mask_iou is None


def test_mask_iou_leaves_out_pixels_at_the_threshold():
    a = np.full((4, 4), 0.9, dtype=np.float32)
    b = a.copy()
    a[0] = 0.5  # a saturated mask's edge against the paste's padding: exactly 0.5 in one engine ...
    b[0] = np.nextafter(np.float32(0.5), np.float32(0))  # ... 0.49999997 in the other
    assert mask_iou(a, b) == 1.0
    b[1] = 0.2  # a real difference
    assert mask_iou(a, b) == pytest.approx(2 / 3)
    assert mask_iou(np.zeros((2, 2)), np.zeros((2, 2))) == 1.0


def test_export_refuses_bad_input(model):
    with pytest.raises(ValueError, match="not one rewritten by optimize_for_inference"):
        ExportableMaskRCNN(optimize_for_inference(copy.deepcopy(model), winograd=False))
    same_size = {"a": np.zeros((50, 60, 3), np.uint8), "b": np.ones((50, 60, 3), np.uint8)}
    with pytest.raises(ValueError, match=r"at least two different sizes .*got \['50x60'\]"):
        export_model(model, fmt="onnx", sample_images=same_size)
    with pytest.raises(ValueError, match="expected one of onnx, torchscript, got 'tflite'"):
        export_model(model, fmt="tflite")
    with pytest.raises(ValueError, match=r"expected one float image \[3, H, W\], got torch.uint8"):
        ExportableMaskRCNN(model)(torch.zeros(3, 20, 20, dtype=torch.uint8))


def test_default_samples_have_two_sizes():
    samples = mrcnn_export.default_sample_images()
    assert [s.shape for s in samples.values()] == [(320, 320, 3), (240, 384, 3)]
    assert all(s.dtype == np.uint8 for s in samples.values())


def test_tracing_branch_of_the_pooler_is_the_same_function():
    """Traced with 7 RoIs, the pooler's graph pools 40 RoIs over all levels as the eager module does."""
    torch.manual_seed(0)
    pooler = MultiScaleRoIPooler(featmap_names=["0", "1", "2", "3"], output_size=7, aligned=True)
    features = {str(i): torch.randn(1, 8, 64 // 2**i, 64 // 2**i) for i in range(4)}

    def boxes_of(num):
        xy = torch.rand(num, 2) * 150
        wh = torch.rand(num, 2) * 250 + 4
        return torch.cat([xy, xy + wh], dim=1)

    traced = torch.jit.trace(lambda f0, f1, f2, f3, b: pooler({"0": f0, "1": f1, "2": f2, "3": f3}, [b], [(256, 256)]),
                             (*features.values(), boxes_of(7)), check_trace=False)  # fmt: skip
    boxes = boxes_of(40)
    with torch.no_grad():
        expected = pooler(features, [boxes], [(256, 256)])
    torch.testing.assert_close(traced(*features.values(), boxes), expected, rtol=0, atol=0)


def test_tracing_branch_of_the_class_nms_is_the_same_function():
    """Traced, ``_class_nms_top`` is plain batched NMS cut to ``top``: the same indices as the eager search."""
    torch.manual_seed(0)

    def candidates(num):
        xy = torch.rand(num, 2) * 100
        boxes = torch.cat([xy, xy + torch.rand(num, 2) * 40 + 1], dim=1)
        return boxes, torch.rand(num), torch.randint(1, 4, (num,))

    traced = torch.jit.trace(lambda b, s, l: _class_nms_top(b, s, l, iou_threshold=0.5, top=10), candidates(30),
                             check_trace=False)  # fmt: skip
    for num in (5, 300):
        boxes, scores, labels = candidates(num)
        assert torch.equal(traced(boxes, scores, labels), _class_nms_top(boxes, scores, labels, iou_threshold=0.5, top=10))
