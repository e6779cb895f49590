"""The checkpoint format: state dict + config + category map + metadata, versioned, loaded with weights_only.

A checkpoint file is a plain ``torch.save`` of::

    {"format": "mrcnn-checkpoint", "version": 1,
     "config": Config.to_dict(), "categories": CategoryMap.to_list(),
     "model": state_dict, "metadata": {...}, "training_state": {...} | None}

Only tensors and builtins are stored, so ``torch.load(weights_only=True)`` reads it. The loader also
accepts a bare torchvision ``maskrcnn_resnet50_fpn`` / ``_v2`` or ``keypointrcnn_resnet50_fpn`` state dict
(``torch.save(model.state_dict())``). A keypoint model's task is in its config, its keypoint names,
skeleton and OKS sigmas in its category map.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mrcnn.config import Config, ConfigError, get_preset
from mrcnn.data.categories import Category, CategoryMap
from mrcnn.modeling import MaskRCNN, build_model

CHECKPOINT_FORMAT = "mrcnn-checkpoint"
CHECKPOINT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, of an unknown format, or does not fit its model."""


@dataclass
class Checkpoint:
    """A loaded checkpoint.

    source_format: ``"mrcnn"`` for this project's format, ``"torchvision"`` for a bare state dict.
    """

    config: Config
    categories: CategoryMap
    model_state: dict[str, torch.Tensor]
    metadata: dict[str, Any] = field(default_factory=dict)
    training_state: dict[str, Any] | None = None
    source_format: str = "mrcnn"

    def build_model(self) -> MaskRCNN:
        """The model with these weights loaded (strict: every key must match)."""
        model = build_model(self.config)
        try:
            model.load_state_dict(self.model_state, strict=True)
        except RuntimeError as exc:
            first_line = str(exc).strip().splitlines()[0]
            raise CheckpointError(
                f"weights do not fit preset {self.config.name!r} ({first_line}); "
                "pass the right --arch for a bare torchvision state dict"
            ) from None
        return model


def save_checkpoint(
    path: str | os.PathLike,
    *,
    model: nn.Module,
    config: Config,
    categories: CategoryMap,
    metadata: dict[str, Any] | None = None,
    training_state: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically (temp file + rename), so a crash never leaves a half-written file.

    Args:
        model: the model (a DDP wrapper is unwrapped).
        metadata: builtins only (str, int, float, bool, lists, dicts), e.g. step, metrics, git commit;
            ``mrcnn train`` puts an evaluated checkpoint's per-class score thresholds under ``thresholds``
            (:meth:`mrcnn.thresholds.CalibratedThresholds.to_dict`).
        training_state: optimizer / scheduler / scaler state dicts and counters for resuming.
    """
    module = model.module if hasattr(model, "module") else model
    if config.model.num_classes != categories.num_classes:
        raise CheckpointError(
            f"config has {config.model.num_classes} classes but the category map has {categories.num_classes}"
        )
    _check_keypoints(config, categories, str(path))
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "config": config.to_dict(),
        "categories": categories.to_list(),
        "model": {k: v.detach().cpu() for k, v in module.state_dict().items()},
        "metadata": dict(metadata or {}),
        "training_state": training_state,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def _check_keypoints(config: Config, categories: CategoryMap, where: str) -> None:
    """A keypoint model's K must be its categories' K (their names, skeleton and sigmas travel with it)."""
    if config.model.has_keypoints and config.model.keypoint_head.num_keypoints != categories.num_keypoints:
        raise CheckpointError(
            f"checkpoint {where}: the keypoint head predicts {config.model.keypoint_head.num_keypoints} keypoints "
            f"but the category map names {categories.num_keypoints}"
        )


def _read(path: Path, map_location: str | torch.device) -> Any:
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch.load raises many types on a file that is not a checkpoint
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        if isinstance(exc, KeyError) or not reason:  # the unpickler's lookup of an opcode byte: "KeyError(101)"
            reason = f"{type(exc).__name__} {reason}".strip()
        raise CheckpointError(f"checkpoint {path}: not a readable checkpoint: not a file torch.save wrote, or it is "
                              f"damaged (torch.load: {reason[:200]})") from None  # fmt: skip


def torchvision_coco_categories() -> CategoryMap:
    """torchvision's COCO label space: labels 1..90 equal COCO category ids ('N/A' fills the gaps)."""
    from torchvision.models.detection import MaskRCNN_ResNet50_FPN_Weights

    names = MaskRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"]  # index = category id; 0 = background
    return CategoryMap(categories=tuple(Category(id=i, name=n) for i, n in enumerate(names) if i > 0))


KEYPOINT_PREDICTOR_KEY = "roi_heads.keypoint_predictor.kps_score_lowres.weight"


def torchvision_keypoint_categories(num_classes: int, num_keypoints: int) -> CategoryMap:
    """The label space of a bare torchvision keypoint R-CNN state dict: COCO's person (id 1) with its 17
    keypoints and skeleton for the usual 1 class x 17 keypoints, else ``class_i`` with ``keypoint_k`` names."""
    from mrcnn.data.keypoints import COCO_PERSON_KEYPOINTS, COCO_PERSON_SKELETON

    if num_classes == 1 and num_keypoints == len(COCO_PERSON_KEYPOINTS):
        person = Category(id=1, name="person", supercategory="person", keypoints=COCO_PERSON_KEYPOINTS,
                          skeleton=COCO_PERSON_SKELETON)  # fmt: skip
        return CategoryMap(categories=(person,))
    names = tuple(f"keypoint_{k}" for k in range(1, num_keypoints + 1))
    return CategoryMap(categories=tuple(Category(id=i, name=f"class_{i}", keypoints=names) for i in range(1, num_classes + 1)))


def detect_torchvision_arch(state: dict[str, torch.Tensor]) -> str:
    """The preset whose layout a bare torchvision state dict has: r50_fpn, r50_fpn_v2, r101_fpn or r50_fpn_keypoints."""
    if KEYPOINT_PREDICTOR_KEY in state:
        return "r50_fpn_keypoints"
    if "roi_heads.box_head.0.0.weight" in state:
        return "r50_fpn_v2"
    num_layer3_blocks = len({k.split(".")[3] for k in state if k.startswith("backbone.body.layer3.")})
    return "r101_fpn" if num_layer3_blocks == 23 else "r50_fpn"


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items())


def load_checkpoint(path: str | os.PathLike, *, arch: str | None = None, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read this project's checkpoint, or a bare torchvision Mask R-CNN state dict.

    Args:
        path: the file.
        arch: preset name for a bare torchvision state dict (detected from its keys when None);
            ignored for this project's checkpoints, which carry their config.

    Raises:
        CheckpointError: missing or unreadable file, unknown format or version, or an unknown preset.
    """
    path = Path(path)
    obj = _read(path, map_location)
    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        version = obj.get("version")
        if version != CHECKPOINT_VERSION:
            raise CheckpointError(f"checkpoint {path}: format version {version!r}, this code reads {CHECKPOINT_VERSION}")
        for key, kind in (("config", dict), ("categories", list), ("model", dict)):
            if not isinstance(obj.get(key), kind):
                raise CheckpointError(f"checkpoint {path}: '{key}' must be a {kind.__name__}, got {type(obj.get(key)).__name__}")
        if not _is_state_dict(obj["model"]):
            raise CheckpointError(f"checkpoint {path}: 'model' is not a state dict of tensors")
        try:
            config = Config.from_dict(obj["config"])
            categories = CategoryMap.from_list(obj["categories"], source=str(path))
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {path}: bad config or categories ({exc})") from None
        if config.model.num_classes != categories.num_classes:
            raise CheckpointError(
                f"checkpoint {path}: config has {config.model.num_classes} classes, category map has {categories.num_classes}"
            )
        _check_keypoints(config, categories, str(path))
        return Checkpoint(
            config=config,
            categories=categories,
            model_state=obj["model"],
            metadata=dict(obj.get("metadata") or {}),
            training_state=obj.get("training_state"),
        )

    # A torchvision references checkpoint keeps the state dict under "model".
    state = obj.get("model") if isinstance(obj, dict) and _is_state_dict(obj.get("model")) else obj
    if not _is_state_dict(state) or "roi_heads.box_predictor.cls_score.weight" not in state:
        raise CheckpointError(
            f"checkpoint {path}: neither an mrcnn checkpoint nor a torchvision Mask R-CNN state dict"
        )
    try:
        config = get_preset(arch or detect_torchvision_arch(state))
    except ConfigError as exc:
        raise CheckpointError(f"checkpoint {path}: {exc}") from None
    num_classes = state["roi_heads.box_predictor.cls_score.weight"].shape[0] - 1
    config = config.replace(**{"model.num_classes": num_classes})
    if KEYPOINT_PREDICTOR_KEY in state:
        num_keypoints = state[KEYPOINT_PREDICTOR_KEY].shape[1]  # ConvTranspose2d weight: [in, K, 4, 4]
        config = config.replace(**{
            "model.task": "keypoints",
            "model.keypoint_head.num_keypoints": num_keypoints,
            "model.mask_head.enabled": "roi_heads.mask_predictor.mask_fcn_logits.weight" in state,
        })  # fmt: skip
        categories = torchvision_keypoint_categories(num_classes, num_keypoints)
    elif num_classes == 90:
        categories = torchvision_coco_categories()
    else:
        categories = CategoryMap.from_names([f"class_{i}" for i in range(1, num_classes + 1)])
    return Checkpoint(
        config=config,
        categories=categories,
        model_state=state,
        metadata={"source": str(path)},
        source_format="torchvision",
    )
