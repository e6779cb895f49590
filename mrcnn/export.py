"""Exporting a Mask R-CNN to ONNX or TorchScript, checked against PyTorch before anything is written.

The exported graph is the whole model for one image, in torchvision's ONNX convention:

    image (float32 [3, H, W], RGB in 0..1, any H and W)
      -> boxes [N, 4] float32 XYXY pixels of the input, labels [N] int64 (1..K), scores [N] float32,
         masks [N, 1, H, W] float32 probabilities (a pixel is in the instance at >= 0.5),
         and for a keypoint model keypoints [N, K, 3] float32 (x, y, 1) and keypoints_scores [N, K] float32.

Normalisation, resizing, box rescaling and mask pasting are inside the graph (the model's own transform and
torchvision's tracing-friendly paste). Detections are best first; ``score_threshold`` is baked in.

Both formats are produced by tracing the plain eval-mode model (``ExportableMaskRCNN``), never the copy that
``mrcnn.inference.optimize_for_inference`` rewrites. ONNX goes through PyTorch's TorchScript-based
exporter (``torch.onnx.export(..., dynamo=False)``), the path torchvision tests Mask R-CNN with: the
torch.export-based exporter cannot capture the data-dependent control flow of detection post-processing
(torchvision's ``batched_nms`` branches on the number of boxes), see docs/export.md.

Parity check (``check_parity``): on sample images of at least two sizes, the exported file, loaded back,
must give PyTorch's detections: the same number, each matched to one of the same label with every box
coordinate within ``BOX_TOLERANCE_PX``, score within ``SCORE_TOLERANCE``, mask IoU (both thresholded at 0.5)
of at least ``MIN_MASK_IOU`` (``mask_iou``) and keypoints within ``BOX_TOLERANCE_PX``. A failure raises ``ExportCheckError``
naming the image, the detection and how far off it was; ``export_model`` then returns nothing to write.
"""

from __future__ import annotations

import io
import json
import tempfile
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from mrcnn.data.dataset import image_to_tensor
from mrcnn.modeling.mask_rcnn import MaskRCNN
from mrcnn.inference.winograd import WinogradConv2d

FORMATS = ("onnx", "torchscript")
FILE_SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt"}
ONNX_OPSET = 17
BOX_TOLERANCE_PX = 0.5
SCORE_TOLERANCE = 1e-3
MIN_MASK_IOU = 0.98
MASK_AMBIGUITY = 1e-3  # mask pixels this close to 0.5 are left out of the IoU (see mask_iou)
# Inside a TorchScript archive: the JSON list of the output names, in order.
TORCHSCRIPT_NAMES_FILE = "output_names.json"

Outputs = dict[str, np.ndarray]


class ExportCheckError(ValueError):
    """The exported file does not give the same detections as PyTorch; the message says where and by how much."""


class ExportableMaskRCNN(nn.Module):
    """A Mask R-CNN as one traceable function of one image (see the module docstring for the outputs).

    Args:
        model: the plain model (not one rewritten by ``optimize_for_inference``); put into eval mode here.
        score_threshold: detections with a lower class score are dropped (before the mask head), as
            ``mrcnn.Predictor``'s ``score_threshold``; None keeps the model's ``roi_heads.score_thresh``.

    Raises:
        ValueError: the model was optimized for inference (folded BatchNorm, channels-last or Winograd).
    """

    def __init__(self, model: MaskRCNN, *, score_threshold: float | None = None):
        super().__init__()
        if model.channels_last or any(isinstance(m, WinogradConv2d) for m in model.modules()):
            raise ValueError("export the plain eval model, not one rewritten by optimize_for_inference")
        if score_threshold is not None and not 0.0 <= score_threshold <= 1.0:
            raise ValueError(f"score_threshold: expected a value in [0, 1], got {score_threshold}")
        self.model = model
        self.score_threshold = score_threshold
        names = ["boxes", "labels", "scores"]
        if model.roi_heads.has_mask():
            names.append("masks")
        if model.roi_heads.has_keypoint():
            names += ["keypoints", "keypoints_scores"]
        self.output_names: tuple[str, ...] = tuple(names)
        self.eval()

    def train(self, mode: bool = True) -> ExportableMaskRCNN:
        """Always eval mode: an exporter that restores the previous mode must not switch the model to training."""
        return super().train(False)

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        """
        Args:
            image (Tensor[3, H, W] float32): RGB in 0..1.

        Returns:
            the tensors named by ``output_names``, in that order.
        """
        if not torch.jit.is_tracing() and (image.ndim != 3 or image.shape[0] != 3 or not image.is_floating_point()):
            raise ValueError(f"expected one float image [3, H, W], got {image.dtype} {tuple(image.shape)}")
        # The threshold is an argument of the model call: a constant of the traced graph.
        detection = self.model([image], score_threshold=self.score_threshold).detections[0]
        return tuple(detection[name] for name in self.output_names)

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """ONNX dynamic axes: the input's height and width, every output's detections (and the masks' H, W)."""
        axes: dict[str, dict[int, str]] = {"image": {1: "height", 2: "width"}}
        for name in self.output_names:
            axes[name] = {0: "detections"}
        if "masks" in axes:
            axes["masks"].update({2: "height", 3: "width"})
        return axes


@dataclass(frozen=True)
class SampleParity:
    """How one sample image's exported detections compare with PyTorch's (all matched; worst values)."""

    name: str
    height: int
    width: int
    num_detections: int
    max_box_diff_px: float
    max_score_diff: float
    min_mask_iou: float | None  # None: no masks compared


@dataclass(frozen=True)
class ParityReport:
    """The parity check an export passed: its format and one ``SampleParity`` per sample image."""

    fmt: str
    samples: tuple[SampleParity, ...]

    @property
    def num_detections(self) -> int:
        return sum(s.num_detections for s in self.samples)

    def lines(self) -> list[str]:
        """One line per sample image, for the command line."""
        out = []
        for s in self.samples:
            iou = "-" if s.min_mask_iou is None else f"{s.min_mask_iou:.4f}"
            out.append(
                f"{s.name} ({s.height}x{s.width}): {s.num_detections} detections match; "
                f"max box diff {s.max_box_diff_px:.3g} px, max score diff {s.max_score_diff:.2g}, min mask IoU {iou}"
            )
        return out


@dataclass(frozen=True)
class ExportResult:
    """The exported file's bytes (write them as they are) and the parity check they passed."""

    data: bytes
    report: ParityReport


def default_sample_images(seed: int = 0) -> dict[str, np.ndarray]:
    """Two synthetic scenes of different sizes and aspect ratios (H x W x 3 uint8): 320x320 and 240x384."""
    from mrcnn.data.synthetic import render_synthetic_image

    rng = np.random.default_rng(seed)
    square, _ = render_synthetic_image(rng, size=320, min_shapes=2)
    wide, _ = render_synthetic_image(rng, size=384, min_shapes=2)
    return {"synthetic-square": square, "synthetic-wide": np.ascontiguousarray(wide[72:312])}


def _match(ref: Outputs, out: Outputs, name: str, engine: str) -> list[tuple[int, int, float]]:
    """Pairs (reference index, candidate index, box diff) of the same label, closest box first."""
    num_ref, num_out = len(ref["scores"]), len(out["scores"])
    if num_ref and num_out:
        diff = np.abs(ref["boxes"][:, None, :] - out["boxes"][None, :, :]).max(axis=2)  # [R, O] px
        diff = np.where(ref["labels"][:, None] == out["labels"][None, :], diff, np.inf)
    else:
        diff = np.full((num_ref, num_out), np.inf)
    pairs, taken = [], set()
    for i in range(num_ref):
        order = [j for j in np.argsort(diff[i], kind="stable") if j not in taken]
        j = order[0] if order else None
        if j is None or diff[i, j] > BOX_TOLERANCE_PX:
            none = j is None or not np.isfinite(diff[i, j])
            closest = "none of its label" if none else f"the closest is {diff[i, j]:.3g} px away"
            raise ExportCheckError(
                f"sample {name}: PyTorch detection {i} (label {int(ref['labels'][i])}, score {ref['scores'][i]:.4f}, "
                f"box {np.round(ref['boxes'][i], 2).tolist()}) has no match in {engine}'s {num_out} detections: "
                f"{closest} (tolerance {BOX_TOLERANCE_PX} px)"
            )
        taken.add(j)
        pairs.append((i, int(j), float(diff[i, j])))
    if num_out != num_ref:
        extra = next(j for j in range(num_out) if j not in taken)
        raise ExportCheckError(
            f"sample {name}: {engine} gives {num_out} detections, PyTorch {num_ref}; {engine} detection {extra} "
            f"(label {int(out['labels'][extra])}, score {out['scores'][extra]:.4f}) has no match"
        )
    return pairs


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two [H, W] probability maps thresholded at 0.5, over the pixels where neither is within
    ``MASK_AMBIGUITY`` of 0.5 (1.0 when both are empty there).

    Such pixels are left out because float rounding decides their side: a saturated mask (probability
    exactly 1.0) next to the paste's zero padding interpolates to exactly 0.5 along the box's edge, which
    one engine rounds to 0.49999994 and another to 0.5.
    """
    clear = (np.abs(a - 0.5) >= MASK_AMBIGUITY) & (np.abs(b - 0.5) >= MASK_AMBIGUITY)
    a, b = (a >= 0.5) & clear, (b >= 0.5) & clear
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def compare_detections(ref: Outputs, out: Outputs, *, name: str, size: tuple[int, int], engine: str) -> SampleParity:
    """Check one image's exported detections (``out``) against PyTorch's (``ref``).

    Args:
        ref, out: the wrapper's outputs by name as numpy arrays (``boxes`` [N, 4] XYXY px, ``labels`` [N],
            ``scores`` [N], optional ``masks`` [N, 1, H, W] probabilities, ``keypoints`` [N, K, 3]).
        name: the image, for messages and the report.
        size: the image's (H, W).
        engine: what produced ``out`` ("ONNX Runtime"), for messages.

    Raises:
        ExportCheckError: a detection without a match (count, label or box), or a match whose score, mask or
            keypoints differ beyond the tolerances; the message names the detection and the difference.
    """
    label = f"{name!r} ({size[0]}x{size[1]})"
    if list(out) != list(ref):
        raise ExportCheckError(f"sample {label}: {engine} gives the outputs {list(out)}, PyTorch {list(ref)}")
    if "masks" in out and tuple(out["masks"].shape[-2:]) != tuple(size):
        raise ExportCheckError(f"sample {label}: {engine}'s masks are {tuple(out['masks'].shape[-2:])}, not the image's size")
    pairs = _match(ref, out, label, engine)
    max_score = max_box = 0.0
    min_iou: float | None = 1.0 if "masks" in ref else None
    for i, j, box_diff in pairs:
        where = f"sample {label}: PyTorch detection {i} (label {int(ref['labels'][i])}, score {ref['scores'][i]:.4f})"
        score_diff = abs(float(ref["scores"][i]) - float(out["scores"][j]))
        if score_diff > SCORE_TOLERANCE:
            raise ExportCheckError(
                f"{where}: {engine}'s score {out['scores'][j]:.4f} differs by {score_diff:.2g} (tolerance {SCORE_TOLERANCE})"
            )
        if "masks" in ref:
            iou = mask_iou(ref["masks"][i, 0], out["masks"][j, 0])
            if iou < MIN_MASK_IOU:
                raise ExportCheckError(f"{where}: mask IoU with {engine}'s is {iou:.4f} (need >= {MIN_MASK_IOU})")
            min_iou = min(min_iou, iou)
        if "keypoints" in ref:
            point_diff = float(np.abs(ref["keypoints"][i, :, :2] - out["keypoints"][j, :, :2]).max(initial=0.0))
            if point_diff > BOX_TOLERANCE_PX:
                raise ExportCheckError(
                    f"{where}: a keypoint differs by {point_diff:.3g} px from {engine}'s (tolerance {BOX_TOLERANCE_PX} px)"
                )
        max_score, max_box = max(max_score, score_diff), max(max_box, box_diff)
    return SampleParity(name, size[0], size[1], len(pairs), max_box, max_score, min_iou if pairs else None)


def check_parity(
    reference: Callable[[Tensor], Outputs],
    candidate: Callable[[Tensor], Outputs],
    samples: Mapping[str, Tensor],
    *,
    fmt: str,
    engine: str,
) -> ParityReport:
    """Run both on every sample image [3, H, W] and compare (``compare_detections``).

    Raises:
        ExportCheckError: ``candidate`` fails on an image or its detections differ from ``reference``'s.
    """
    results = []
    for name, image in samples.items():
        size = (int(image.shape[1]), int(image.shape[2]))
        try:
            outputs = candidate(image)
        except Exception as exc:
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            where = f"sample {name!r} ({size[0]}x{size[1]})"
            raise ExportCheckError(f"{where}: {engine} cannot run the exported graph: {first_line}") from exc
        results.append(compare_detections(reference(image), outputs, name=name, size=size, engine=engine))
    return ParityReport(fmt=fmt, samples=tuple(results))


def _eager_runner(wrapper: ExportableMaskRCNN) -> Callable[[Tensor], Outputs]:
    def run(image: Tensor) -> Outputs:
        with torch.no_grad():
            outputs = wrapper(image)
        return {name: t.numpy() for name, t in zip(wrapper.output_names, outputs)}

    return run


def onnx_runner(data: bytes, *, num_threads: int | None = None) -> Callable[[Tensor], Outputs]:
    """An ONNX Runtime CPU session on an exported file's bytes, as a function of one image [3, H, W]."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # the paste loop's growing outputs log a warning per detection
    if num_threads:
        options.intra_op_num_threads = num_threads
    session = onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]

    def run(image: Tensor) -> Outputs:
        return dict(zip(names, session.run(None, {"image": image.numpy()})))

    return run


def torchscript_runner(data: bytes) -> Callable[[Tensor], Outputs]:
    """An exported TorchScript file's bytes loaded back, as a function of one image [3, H, W]."""
    extra = {TORCHSCRIPT_NAMES_FILE: ""}
    module = torch.jit.load(io.BytesIO(data), map_location="cpu", _extra_files=extra)
    names = json.loads(extra[TORCHSCRIPT_NAMES_FILE])

    def run(image: Tensor) -> Outputs:
        with torch.no_grad():
            outputs = module(image)
        return {name: t.numpy() for name, t in zip(names, outputs)}

    return run


def _export_onnx(wrapper: ExportableMaskRCNN, example: Tensor, *, opset: int) -> bytes:
    try:
        import onnx  # noqa: F401  (the TorchScript-based exporter needs it)
    except ImportError as exc:
        raise ImportError("ONNX export needs the packages of the 'export' extra: pip install -e '.[export]'") from exc
    with tempfile.TemporaryDirectory(prefix="mrcnn-export-") as tmp, warnings.catch_warnings(), torch.no_grad():
        # Tracer warnings (Python values recorded as constants) are expected where they are constant; the
        # parity check at other image sizes is what tells whether the graph is right.
        warnings.simplefilter("ignore")
        path = Path(tmp) / "model.onnx"
        torch.onnx.export(
            wrapper,
            (example,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=["image"],
            output_names=list(wrapper.output_names),
            dynamic_axes=wrapper.dynamic_axes(),
        )
        return path.read_bytes()


def _export_torchscript(wrapper: ExportableMaskRCNN, example: Tensor) -> bytes:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(wrapper, (example,), check_trace=False)
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer, _extra_files={TORCHSCRIPT_NAMES_FILE: json.dumps(list(wrapper.output_names))})
    return buffer.getvalue()


def _sample_tensors(sample_images: Mapping[str, np.ndarray] | None) -> dict[str, Tensor]:
    images = default_sample_images() if sample_images is None else dict(sample_images)
    tensors = {name: image_to_tensor(image) for name, image in images.items()}
    if len({tuple(t.shape) for t in tensors.values()}) < 2:
        sizes = sorted({f"{t.shape[1]}x{t.shape[2]}" for t in tensors.values()})
        raise ValueError(f"sample images: need at least two different sizes to check dynamic shapes, got {sizes}")
    return tensors


def export_model(
    model: MaskRCNN,
    *,
    fmt: str,
    sample_images: Mapping[str, np.ndarray] | None = None,
    score_threshold: float | None = 0.5,
    opset: int = ONNX_OPSET,
) -> ExportResult:
    """Export ``model`` and check the result against PyTorch before handing it back.

    Args:
        model: the plain model (e.g. ``load_checkpoint(path).build_model()``), on the CPU.
        fmt: ``"onnx"`` (an ONNX file, opset ``opset``) or ``"torchscript"`` (a traced ``torch.jit`` archive
            for ``torch.jit.load``; CPU only; TorchScript is deprecated in PyTorch but still loads and runs).
        sample_images: name -> H x W x 3 uint8 RGB, at least two different sizes; the first is the example
            the graph is traced with. Default: ``default_sample_images()``.
        score_threshold: baked into the graph (see ``ExportableMaskRCNN``); 0.5 as ``mrcnn predict``.
        opset: ONNX opset version (ONNX only).

    Returns:
        ExportResult: the file's bytes and the parity report. Nothing is written here.

    Raises:
        ValueError: unknown format, or sample images of one size only.
        ExportCheckError: the exported file's detections differ from PyTorch's (the message says where).
    """
    if fmt not in FORMATS:
        raise ValueError(f"export format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    model = model.cpu()
    wrapper = ExportableMaskRCNN(model, score_threshold=score_threshold)
    samples = _sample_tensors(sample_images)
    example = next(iter(samples.values()))
    if fmt == "onnx":
        data = _export_onnx(wrapper, example, opset=opset)
        candidate, engine = onnx_runner(data), "ONNX Runtime"
    else:
        data = _export_torchscript(wrapper, example)
        candidate, engine = torchscript_runner(data), "TorchScript"
    report = check_parity(_eager_runner(wrapper), candidate, samples, fmt=fmt, engine=engine)
    return ExportResult(data=data, report=report)
