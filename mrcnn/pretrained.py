"""Starting a model for a new dataset from a trained one: the first step of fine-tuning.

:func:`load_init_source` reads the source model file: a torchvision ``maskrcnn_resnet50_fpn``,
``maskrcnn_resnet50_fpn_v2`` or ``keypointrcnn_resnet50_fpn`` state dict, or this project's checkpoint.
:func:`init_from` then initialises a freshly built model for the dataset's K classes from it:

- every tensor whose name and shape fit the model is loaded (our state-dict names are torchvision's);
- the class-specific layers (box classifier ``cls_score``, box regressor ``bbox_pred``, mask predictor
  ``mask_fcn_logits``, keypoint predictor ``kps_score_lowres``) keep the new model's initialisation,
  sized for K classes (K keypoints), except the rows of background and of every dataset category whose
  name equals a source category's name (keypoints: a source keypoint's name), which are copied from the
  source. So "person" or "car" start trained. Source names are COCO's 80 in torchvision's 91-slot order
  for torchvision weights, the checkpoint's category map for ours.

A source with another architecture (another backbone or FPN layout, a missing mask or keypoint head, a
classification ResNet) is a :class:`~mrcnn.checkpoint.CheckpointError` naming the file and the reason.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from mrcnn.checkpoint import (
    KEYPOINT_PREDICTOR_KEY,
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    torchvision_coco_categories,
    torchvision_keypoint_categories,
)
from mrcnn.data.categories import CategoryMap

__all__ = ["CopiedRow", "InitReport", "default_source_categories", "init_from", "load_init_source"]

CLASSIFIER_KEY = "roi_heads.box_predictor.cls_score.weight"

# Class-specific tensors: the dimension that holds the classes (keypoints), and what a slot is.
# A "class" slot group: background + K classes, each owning a block of rows (1 classifier row, 4 regressor
# rows, 1 mask channel, M*M rows of the MLP mask predictor); a "keypoint" slot: one of K keypoint maps.
CLASS_SPECIFIC: dict[str, tuple[int, str]] = {
    "roi_heads.box_predictor.cls_score.weight": (0, "class"),
    "roi_heads.box_predictor.cls_score.bias": (0, "class"),
    "roi_heads.box_predictor.bbox_pred.weight": (0, "class"),
    "roi_heads.box_predictor.bbox_pred.bias": (0, "class"),
    "roi_heads.mask_predictor.mask_fcn_logits.weight": (0, "class"),
    "roi_heads.mask_predictor.mask_fcn_logits.bias": (0, "class"),
    KEYPOINT_PREDICTOR_KEY: (1, "keypoint"),  # ConvTranspose2d weight [in, K, 4, 4]
    "roi_heads.keypoint_predictor.kps_score_lowres.bias": (0, "keypoint"),
}

# The model's parts: a source must have each part the model has, with the same tensor names.
PARTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("ResNet body", ("backbone.body.",)),
    ("FPN", ("backbone.fpn.",)),
    ("RPN", ("rpn.",)),
    ("box head", ("roi_heads.box_head.", "roi_heads.box_predictor.")),
    ("mask head", ("roi_heads.mask_head.", "roi_heads.mask_predictor.")),
    ("keypoint head", ("roi_heads.keypoint_head.", "roi_heads.keypoint_predictor.")),
)

MAX_PARAM_CHARS = 500  # MLflow's limit on a param value in older servers


class CopiedRow(NamedTuple):
    """A category (keypoint) whose rows came from the source: its name, source index, new index.

    Indices are labels (0 = background, 1..K) for categories, 0-based channels for keypoints.
    """

    name: str
    source_index: int
    index: int


@dataclass
class InitReport:
    """What :func:`init_from` did.

    Attributes:
        source: a description of the source model (file, format, layout, classes).
        num_classes: K, the new model's object classes; num_keypoints: its keypoints (0: no keypoint head).
        loaded: names of the tensors loaded whole from the source.
        reinitialised: class-specific tensors sized for the new classes; they keep the new model's
            initialisation except for the rows in ``copied`` / ``copied_keypoints``.
        copied: categories whose classifier row, 4 regressor rows and mask channel were copied
            (background, label 0, included).
        copied_keypoints: keypoints whose predictor channel was copied.
        new_categories: dataset category names that no source category has (they start untrained).
        skipped: tensor name -> reason it was not loaded (shape mismatch, missing in the source).
        unused: source tensors with no place in the model (e.g. a head the model does not have).
    """

    source: str
    num_classes: int
    num_keypoints: int = 0
    loaded: list[str] = field(default_factory=list)
    reinitialised: list[str] = field(default_factory=list)
    copied: list[CopiedRow] = field(default_factory=list)
    copied_keypoints: list[CopiedRow] = field(default_factory=list)
    new_categories: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    unused: list[str] = field(default_factory=list)

    def to_params(self) -> dict[str, str | int]:
        """A small flat dict for ``mlflow.log_params``: counts, and lists as text cut to 500 characters
        (``init_from.copied_keypoints`` only for a keypoint model)."""
        params: dict[str, str | int] = {
            "init_from": _cut(self.source),
            "init_from.loaded_tensors": len(self.loaded),
            "init_from.reinitialised": _cut(", ".join(self.reinitialised) or "none"),
            "init_from.copied": _cut(_rows_text(self.copied)),
            "init_from.new_categories": _cut(", ".join(self.new_categories) or "none"),
            "init_from.skipped": _cut("; ".join(f"{k} ({v})" for k, v in self.skipped.items()) or "none"),
            "init_from.unused_tensors": len(self.unused),
        }
        if self.num_keypoints:
            params["init_from.copied_keypoints"] = _cut(_rows_text(self.copied_keypoints))
        return params

    def summary(self) -> str:
        """A few lines for the training log."""
        lines = [
            f"init from {self.source}: {len(self.loaded)} tensors loaded, {len(self.reinitialised)} re-initialised "
            f"for {self.num_classes} classes, {len(self.skipped)} skipped, {len(self.unused)} source tensors unused",
            f"  copied rows (name source->new label): {_rows_text(self.copied)}",
        ]
        if self.num_keypoints:
            lines.append(f"  copied keypoints (name source->new channel): {_rows_text(self.copied_keypoints)}")
        lines.append(f"  new categories (no source category of that name): {', '.join(self.new_categories) or 'none'}")
        if self.reinitialised:
            lines.append(f"  re-initialised: {', '.join(self.reinitialised)}")
        lines.extend(f"  skipped {name}: {reason}" for name, reason in self.skipped.items())
        return "\n".join(lines)


def _rows_text(rows: list[CopiedRow]) -> str:
    return ", ".join(f"{r.name} {r.source_index}->{r.index}" for r in rows) or "none"


def _cut(text: str) -> str:
    return text if len(text) <= MAX_PARAM_CHARS else text[: MAX_PARAM_CHARS - 3] + "..."


# ------------------------------------------------------------------ reading the source
def load_init_source(path: str | os.PathLike) -> tuple[dict[str, Tensor], CategoryMap, str]:
    """Read a model to initialise from.

    Args:
        path: a torchvision ``maskrcnn_resnet50_fpn`` / ``_v2`` / ``keypointrcnn_resnet50_fpn`` state dict
            (``torch.save(model.state_dict())``, also under a ``"model"`` key as torchvision's references
            save it), or this project's checkpoint.

    Returns:
        (state_dict, source_categories, description): the tensors by torchvision's names; the source's
        label space (COCO's 80 names at their torchvision labels 1..90 for a 91-class torchvision dict,
        COCO's person with 17 keypoints for a keypoint R-CNN, the category map of our checkpoints); a
        one-line description of the source for the log.

    Raises:
        CheckpointError: one line naming the file: missing, unreadable, not a state dict, or a state
            dict of another model (e.g. an image-classification ResNet).
    """
    try:
        checkpoint = load_checkpoint(path)
    except CheckpointError as exc:
        raise CheckpointError(_explain_unfit_file(Path(path)) or str(exc)) from None
    return checkpoint.model_state, checkpoint.categories, _describe(checkpoint, str(path))


def _describe(checkpoint: Checkpoint, where: str) -> str:
    state, cfg = checkpoint.model_state, checkpoint.config
    if checkpoint.source_format == "mrcnn":
        return f"{where} (mrcnn checkpoint, preset {cfg.name}, {cfg.model.num_classes} classes)"
    heads = ["box"] + [name for key, name in (("roi_heads.mask_predictor.mask_fcn_logits.weight", "mask"),
                                              (KEYPOINT_PREDICTOR_KEY, "keypoint")) if key in state]  # fmt: skip
    layout = f"{cfg.name} layout, {'+'.join(heads)} heads"
    return f"{where} (torchvision state dict, {layout}, {cfg.model.num_classes} classes)"


def _explain_unfit_file(path: Path) -> str | None:
    """A precise reason for a readable file that is no detection model (None: keep load_checkpoint's)."""
    if not path.is_file():
        return None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # unreadable: load_checkpoint's message says so
        return None
    if not isinstance(obj, dict) or not obj or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items()):
        kind = type(obj).__name__ if not isinstance(obj, dict) else f"dict with keys {sorted(map(str, obj))[:5]}"
        return (f"checkpoint {path}: not a state dict of tensors (a {kind}), neither an mrcnn checkpoint nor a "
                "torchvision state dict")  # fmt: skip
    if "fc.weight" in obj and "conv1.weight" in obj:
        return (f"checkpoint {path}: an image-classification ResNet state dict (conv1.weight ... fc.weight), not a "
                "Mask R-CNN; ImageNet weights go to backbone_weights, not init_from")  # fmt: skip
    return (f"checkpoint {path}: a state dict of another model ({len(obj)} tensors, e.g. {sorted(obj)[:3]}), "
            "neither an mrcnn checkpoint nor a torchvision Mask R-CNN / keypoint R-CNN state dict")  # fmt: skip


def default_source_categories(state: dict[str, Tensor]) -> CategoryMap:
    """The label space of a bare torchvision state dict, as :func:`mrcnn.checkpoint.load_checkpoint` gives it:
    COCO's names for 91 classes, COCO's person for a keypoint R-CNN, else ``class_i`` (whose names match nothing)."""
    num_classes = state[CLASSIFIER_KEY].shape[0] - 1
    if KEYPOINT_PREDICTOR_KEY in state:
        return torchvision_keypoint_categories(num_classes, state[KEYPOINT_PREDICTOR_KEY].shape[1])
    if num_classes == 90:
        return torchvision_coco_categories()
    return CategoryMap.from_names([f"class_{i}" for i in range(1, num_classes + 1)])


# ------------------------------------------------------------------ initialising
def init_from(
    model: nn.Module,
    source: dict[str, Tensor] | Checkpoint,
    *,
    categories: CategoryMap,
    source_categories: CategoryMap | None = None,
    source_name: str = "",
) -> InitReport:
    """Initialise a freshly built model for the dataset's categories from a trained model's weights.

    Args:
        model: a MaskRCNN built for ``categories`` (a DDP wrapper is unwrapped); changed in place.
        source: a state dict by torchvision's names (as :func:`load_init_source` returns it) or a
            :class:`~mrcnn.checkpoint.Checkpoint`.
        categories: the dataset's category map: K = ``categories.num_classes`` classes, label i = its
            i-th category; keypoint names from its keypoint category.
        source_categories: the source's label space; default: the checkpoint's map, or for a bare state
            dict torchvision's (:func:`default_source_categories`).
        source_name: the source for the report and error messages: the file, or the description that
            :func:`load_init_source` returns (for a Checkpoint, the file: its description is added).

    Returns:
        The :class:`InitReport`: what was loaded, re-initialised, copied and skipped.

    Raises:
        ValueError: ``categories`` does not fit the model (K classes, K keypoints).
        CheckpointError: the source is not a state dict, another architecture (a part of the model it
            lacks or has in another layout) or nothing of it fits; one line naming ``source_name``.
    """
    module = model.module if hasattr(model, "module") else model
    description = source_name or "a state dict"
    if isinstance(source, Checkpoint):
        state, source_categories = source.model_state, source_categories or source.categories
        description = _describe(source, source_name or str(source.metadata.get("source", "a checkpoint")))
    else:
        state = source
    where = f"init_from {source_name or 'source'}"
    if not isinstance(state, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        raise CheckpointError(f"{where}: not a state dict of tensors (got a {type(state).__name__})")
    state = {k.removeprefix("module."): v for k, v in state.items()}  # saved from a DDP wrapper
    if source_categories is None and CLASSIFIER_KEY in state:
        source_categories = default_source_categories(state)
    target = module.state_dict()
    _check_categories(target, categories)
    _check_architecture(target, state, where)

    report = InitReport(source=description, num_classes=categories.num_classes, num_keypoints=categories.num_keypoints)
    merged = _merge(target, state, categories, source_categories, report)
    if not report.loaded:
        raise CheckpointError(f"{where}: nothing fits this model: no source tensor has a model tensor's name and shape")
    module.load_state_dict(merged, strict=True)
    return report


def _merge(
    target: dict[str, Tensor],
    state: dict[str, Tensor],
    categories: CategoryMap,
    source_categories: CategoryMap | None,
    report: InitReport,
) -> dict[str, Tensor]:
    """The model's new state dict: the source's tensors where they fit, the class-specific ones with the
    rows of same-named categories (keypoints) copied, the model's own elsewhere; fills in ``report``."""
    class_pairs, report.copied, report.new_categories = _category_pairs(categories, source_categories)
    keypoint_pairs, report.copied_keypoints = _keypoint_pairs(categories, source_categories)
    slots = {"class": (class_pairs, categories.num_classes + 1), "keypoint": (keypoint_pairs, categories.num_keypoints)}
    merged = dict(target)
    for name, new in target.items():
        if name not in state:
            if not name.endswith("num_batches_tracked"):
                report.skipped[name] = "missing in the source"
            continue
        old = state[name]
        if name in CLASS_SPECIFIC:
            dim, kind = CLASS_SPECIFIC[name]
            pairs, num_new = slots[kind]
            num_old = _num_slots(source_categories, kind)
            merged[name], status = _copy_slots(new, old, dim=dim, num_new=num_new, num_old=num_old, pairs=pairs)
            if status == "loaded":
                report.loaded.append(name)
            else:
                report.reinitialised.append(name)
                if status != "copied":
                    report.skipped[name] = status
        elif old.shape == new.shape:
            merged[name] = old
            report.loaded.append(name)
        else:
            report.skipped[name] = f"shape mismatch: {list(old.shape)} in the source, {list(new.shape)} in the model"
    report.unused = [k for k in state if k not in target and not k.endswith("num_batches_tracked")]
    return merged


def _check_categories(target: dict[str, Tensor], categories: CategoryMap) -> None:
    num_classes = target[CLASSIFIER_KEY].shape[0] - 1
    if categories.num_classes != num_classes:
        raise ValueError(f"init_from: the model has {num_classes} classes but the category map {categories.num_classes}")
    if KEYPOINT_PREDICTOR_KEY in target and target[KEYPOINT_PREDICTOR_KEY].shape[1] != categories.num_keypoints:
        raise ValueError(f"init_from: the model predicts {target[KEYPOINT_PREDICTOR_KEY].shape[1]} keypoints "
                         f"but the category map names {categories.num_keypoints}")  # fmt: skip


def _part_names(state: dict[str, Any], prefixes: tuple[str, ...]) -> set[str]:
    return {k for k in state if k.startswith(prefixes) and not k.endswith("num_batches_tracked")}


def _check_architecture(target: dict[str, Tensor], state: dict[str, Tensor], where: str) -> None:
    """Raise a one-line CheckpointError if the source lacks a part of the model or has it in another layout."""
    if not any(k in state for k in target):
        hint = ""
        if "fc.weight" in state and "conv1.weight" in state:
            hint = ": an image-classification ResNet state dict; ImageNet weights go to backbone_weights"
        raise CheckpointError(f"{where}: nothing fits this model: none of its {len(target)} tensor names is in the "
                              f"source ({len(state)} tensors, e.g. {sorted(state)[:3]}){hint}")  # fmt: skip
    problems = []
    for label, prefixes in PARTS:
        model_names, source_names = _part_names(target, prefixes), _part_names(state, prefixes)
        if not model_names:
            continue
        if not source_names:
            problems.append(f"the source has no {label}")
        elif model_names != source_names:
            only_model, only_source = sorted(model_names - source_names), sorted(source_names - model_names)
            sides = [f"{len(only_model)} of the model's {len(model_names)} tensors not in the source, e.g. {only_model[:2]}"
                     if only_model else "",
                     f"{len(only_source)} source tensors not in the model, e.g. {only_source[:2]}" if only_source else ""]  # fmt: skip
            problems.append(f"its {label} has another layout ({'; '.join(side for side in sides if side)})")
    if problems:
        raise CheckpointError(f"{where}: another architecture: {'; '.join(problems)}")


def _unique_index(names: list[str]) -> dict[str, int]:
    """name -> 0-based position for names that occur once (torchvision's repeated 'N/A' matches nothing)."""
    counts: dict[str, int] = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    return {name: i for i, name in enumerate(names) if counts[name] == 1}


def _category_pairs(
    categories: CategoryMap, source: CategoryMap | None
) -> tuple[list[tuple[int, int]], list[CopiedRow], list[str]]:
    """(source label, new label) pairs, background first; the copied rows; the names with no source match."""
    by_name = _unique_index(source.names) if source is not None else {}
    labelled = enumerate(categories.names, start=1)
    copied = [CopiedRow(name, by_name[name] + 1, label) for label, name in labelled if name in by_name]
    new = [name for name in categories.names if name not in by_name]
    return [(0, 0)] + [(row.source_index, row.index) for row in copied], copied, new


def _keypoint_pairs(categories: CategoryMap, source: CategoryMap | None) -> tuple[list[tuple[int, int]], list[CopiedRow]]:
    """(source channel, new channel) pairs of the keypoints with the same name."""
    new_category = categories.keypoint_category
    source_category = source.keypoint_category if source is not None else None
    if new_category is None or source_category is None:
        return [], []
    by_name = _unique_index(list(source_category.keypoints))
    copied = [CopiedRow(name, by_name[name], k) for k, name in enumerate(new_category.keypoints) if name in by_name]
    return [(row.source_index, row.index) for row in copied], copied


def _num_slots(source: CategoryMap | None, kind: str) -> int:
    if source is None:
        return 0
    return source.num_classes + 1 if kind == "class" else source.num_keypoints


def _copy_slots(
    new: Tensor, old: Tensor, *, dim: int, num_new: int, num_old: int, pairs: list[tuple[int, int]]
) -> tuple[Tensor, str]:
    """The new class-specific tensor with the paired slots' blocks copied from the source tensor.

    Returns:
        (tensor, status): status ``loaded`` (the same slots in the same order, or a class-agnostic tensor of
        the same shape: the source tensor whole), ``copied`` (the paired slots), or the reason nothing could
        be copied.
    """
    if new.shape[dim] == 1 and old.shape == new.shape:  # class-agnostic mask predictor: one channel for all
        return old, "loaded"
    other_dims_fit = new.dim() == old.dim() and all(
        a == b for d, (a, b) in enumerate(zip(new.shape, old.shape)) if d != dim
    )
    if not (num_old and other_dims_fit and new.shape[dim] % num_new == 0 and old.shape[dim] % num_old == 0
            and new.shape[dim] // num_new == old.shape[dim] // num_old):  # fmt: skip
        shapes = f"{list(old.shape)} in the source, {list(new.shape)} in the model"
        return new, f"class-specific, source layout differs: {shapes}"
    block = new.shape[dim] // num_new  # rows (channels) per class: 1, 4 (regressor) or M*M (MLP mask predictor)
    result = new.clone()
    for source_index, index in pairs:
        result.narrow(dim, index * block, block).copy_(old.narrow(dim, source_index * block, block))
    if old.shape == new.shape and sorted(pairs) == [(i, i) for i in range(num_new)]:
        return result, "loaded"
    return result, "copied"
