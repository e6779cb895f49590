"""Configuration: small frozen dataclasses, one per part of the model (the named presets: ``mrcnn.presets``).

A config round-trips through plain dicts (``to_dict()`` / ``from_dict()``), so the same dict goes to
Ray's ``train_loop_config``, to ``mlflow.log_params`` (flattened) and into every checkpoint.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any

NORMS = ("frozen_bn", "bn", "gn", "none")
POOLERS = ("roi_align", "roi_pool")
BOX_HEADS = ("2fc", "4conv1fc")
MASK_HEADS = ("fcn", "mlp")
MASK_LOSSES = ("sigmoid", "softmax")
OPTIMIZERS = ("sgd", "adamw")
TASKS = ("instances", "keypoints")
RESNET_DEPTHS = (18, 34, 50, 101)


class ConfigError(ValueError):
    """A config value is invalid or a config dict has an unknown key."""


# A number as people write it: YAML 1.2's int and float (``1e-4``, ``2E-4``, ``.5``, ``+3``, ``1.``) plus
# Python's digit separators (``1_000``). YAML 1.1, which PyYAML reads, needs a dot in a float, so
# ``1e-4`` would otherwise stay the string "1e-4".
_NUMBER = re.compile(
    r"""[-+]?(?:
        (?P<int>[0-9](?:_?[0-9])*)
      | (?:[0-9](?:_?[0-9])*\.(?:[0-9](?:_?[0-9])*)?|\.[0-9](?:_?[0-9])*)(?:[eE][-+]?[0-9]+)?
      | [0-9](?:_?[0-9])*[eE][-+]?[0-9]+
      | \.(?:inf|Inf|INF) | \.(?:nan|NaN|NAN)
    )""",
    re.VERBOSE,
)


def parse_number(text: str) -> int | float | None:
    """The int or float that ``text`` writes (``"1e-4"`` -> 0.0001, ``"1_000"`` -> 1000, ``".5"`` -> 0.5,
    ``".inf"`` -> inf), or None when it is not a number."""
    match = _NUMBER.fullmatch(text.strip())
    if match is None:
        return None
    body = text.strip().replace("_", "")
    if match.group("int") is not None:
        return int(body)
    return float(body.lower().replace(".inf", "inf").replace(".nan", "nan"))


@functools.lru_cache(maxsize=1)
def _yaml_loader() -> type:
    """A SafeLoader that also resolves YAML 1.2 floats without a dot (``1e-4``) as floats."""
    import yaml

    class NumberLoader(yaml.SafeLoader):
        pass

    NumberLoader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
        list("-+0123456789"),
    )
    return NumberLoader


def load_yaml(source: str | os.PathLike, *, text: str | None = None) -> Any:
    """Parse a YAML config: every config read (run YAML, job YAML, ``--set`` values) goes through here.

    Numbers are read as people write them: ``1e-4`` and ``2E-4`` are floats (YAML 1.2), not strings as
    in YAML 1.1; everything else is PyYAML's safe loading.

    Args:
        source: a YAML file, or a name for messages when ``text`` is given.
        text: the YAML text itself (then ``source`` is not read).

    Raises:
        FileNotFoundError: ``source`` does not exist (and no ``text``).
        ConfigError: not valid YAML (the message names ``source`` and the line).
    """
    import yaml

    if text is None:
        try:
            with open(source, encoding="utf-8") as handle:
                text = handle.read()
        except FileNotFoundError:
            raise FileNotFoundError(f"{source}: no such file") from None
    try:
        return yaml.load(text, Loader=_yaml_loader())  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML ({' '.join(str(exc).split())})") from None


def _check_choice(section: str, name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError(f"{section}.{name}: expected one of {list(choices)}, got {value!r}")


@dataclass(frozen=True)
class BackboneConfig:
    """ResNet + FPN (P2-P6).

    norm: normalisation inside the ResNet. ``frozen_bn`` is torchvision's default for pretrained
        backbones; from scratch use ``bn`` (SyncBN under DDP) or ``gn``.
    fpn_norm: normalisation in the FPN convs (``bn`` in torchvision's v2 layout).
    trainable_layers: ResNet stages that train, counted from the last (0-5).
    """

    depth: int = 50
    norm: str = "frozen_bn"
    fpn_norm: str = "none"
    trainable_layers: int = 3
    out_channels: int = 256

    def validate(self) -> None:
        _check_choice("backbone", "depth", self.depth, RESNET_DEPTHS)
        _check_choice("backbone", "norm", self.norm, NORMS)
        _check_choice("backbone", "fpn_norm", self.fpn_norm, NORMS)
        if not 0 <= self.trainable_layers <= 5:
            raise ConfigError(f"backbone.trainable_layers: expected 0..5, got {self.trainable_layers}")


@dataclass(frozen=True)
class InputConfig:
    """Resize and normalisation done inside the model (torchvision's GeneralizedRCNNTransform).

    min_size: shorter side in pixels; several values = one chosen at random per training batch.
    pixel_mean, pixel_std: applied to RGB images in 0..1.
    """

    min_size: tuple[int, ...] = (800,)
    max_size: int = 1333
    pixel_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    pixel_std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    size_divisible: int = 32

    def validate(self) -> None:
        if not self.min_size or any(s <= 0 for s in self.min_size):
            raise ConfigError(f"input.min_size: expected positive sizes, got {self.min_size}")
        if self.max_size < max(self.min_size):
            raise ConfigError(f"input.max_size: expected >= max(min_size)={max(self.min_size)}, got {self.max_size}")


@dataclass(frozen=True)
class RPNConfig:
    """Region proposal network. One anchor size per FPN level (P2..P6), each at every aspect ratio."""

    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    head_conv_depth: int = 1
    pre_nms_top_n_train: int = 2000
    pre_nms_top_n_test: int = 1000
    post_nms_top_n_train: int = 2000
    post_nms_top_n_test: int = 1000
    nms_thresh: float = 0.7
    fg_iou_thresh: float = 0.7
    bg_iou_thresh: float = 0.3
    batch_size_per_image: int = 256
    positive_fraction: float = 0.5
    score_thresh: float = 0.0

    def validate(self) -> None:
        if len(self.anchor_sizes) != 5:
            raise ConfigError(f"rpn.anchor_sizes: expected 5 sizes (one per level P2..P6), got {self.anchor_sizes}")
        if not self.aspect_ratios:
            raise ConfigError("rpn.aspect_ratios: expected at least one ratio")


@dataclass(frozen=True)
class BoxHeadConfig:
    """RoI feature pooling, the box/class head, its training sampler and its inference post-processing.

    pooler: ``roi_align`` (bilinear, no quantisation) or ``roi_pool`` (quantised, the paper's baseline).
    sampling_ratio: bilinear points per bin side; 2 means 2x2 = 4 points averaged per bin.
    aligned: half-pixel offset of RoIAlign (detectron2's ROIAlignV2). torchvision's model uses False.
    """

    pooler: str = "roi_align"
    pooler_resolution: int = 7
    sampling_ratio: int = 2
    aligned: bool = False
    head: str = "2fc"
    head_norm: str = "none"
    representation_size: int = 1024
    fg_iou_thresh: float = 0.5
    bg_iou_thresh: float = 0.5
    batch_size_per_image: int = 512
    positive_fraction: float = 0.25
    bbox_reg_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)
    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    detections_per_img: int = 100

    def validate(self) -> None:
        if self.pooler_resolution < 1 or self.sampling_ratio < 0 or self.detections_per_img < 1:
            raise ConfigError("box_head: pooler_resolution and detections_per_img must be >= 1, sampling_ratio >= 0")
        _check_choice("box_head", "pooler", self.pooler, POOLERS)
        _check_choice("box_head", "head", self.head, BOX_HEADS)
        _check_choice("box_head", "head_norm", self.head_norm, NORMS)


@dataclass(frozen=True)
class MaskHeadConfig:
    """The mask branch.

    head: ``fcn`` (4 x conv3x3, deconv 2x, 1x1 conv to K masks of 28x28) or ``mlp`` (the paper's
        fc-1024, fc-1024, fc-K*28*28 ablation).
    loss: ``sigmoid`` (per-class binary masks, loss only on the ground-truth class: the paper's
        decoupling) or ``softmax`` (per-pixel softmax across classes: the coupled ablation).
    class_agnostic: predict one mask for all classes.
    """

    enabled: bool = True
    head: str = "fcn"
    pooler_resolution: int = 14
    num_convs: int = 4
    conv_dim: int = 256
    head_norm: str = "none"
    mlp_dim: int = 1024
    loss: str = "sigmoid"
    class_agnostic: bool = False

    @property
    def resolution(self) -> int:
        """Side of the predicted mask (28 for a 14x14 pooler)."""
        return 2 * self.pooler_resolution

    def validate(self) -> None:
        if self.pooler_resolution < 1 or self.conv_dim < 1:
            raise ConfigError("mask_head: pooler_resolution and conv_dim must be >= 1")
        _check_choice("mask_head", "head", self.head, MASK_HEADS)
        _check_choice("mask_head", "loss", self.loss, MASK_LOSSES)
        _check_choice("mask_head", "head_norm", self.head_norm, NORMS)
        if self.class_agnostic and self.loss == "softmax":
            raise ConfigError("mask_head: a softmax across classes needs per-class masks; class_agnostic must be False")


@dataclass(frozen=True)
class KeypointHeadConfig:
    """The keypoint branch (the paper's Section 5), used when ``model.task`` is ``keypoints``.

    Each of the K keypoints is a one-hot m x m mask, trained with a softmax cross-entropy over the m^2
    locations. The head is torchvision's: ``num_convs`` x (conv3x3-``conv_dim`` + ReLU) on
    ``pooler_resolution`` RoI features, a 4x4 stride-2 deconv to K maps and a 2x bilinear upsampling, so a
    14x14 pooler gives m = 56 (the paper's).

    num_keypoints: K; ``mrcnn train`` sets it from the dataset's categories.
    """

    num_keypoints: int = 17
    pooler_resolution: int = 14
    num_convs: int = 8
    conv_dim: int = 512

    @property
    def heatmap_size(self) -> int:
        """Side m of the predicted heatmaps (56 for a 14x14 pooler)."""
        return 4 * self.pooler_resolution

    def validate(self) -> None:
        if self.num_keypoints < 1:
            raise ConfigError(f"keypoint_head.num_keypoints: expected >= 1, got {self.num_keypoints}")
        if self.pooler_resolution < 1 or self.num_convs < 1 or self.conv_dim < 1:
            raise ConfigError("keypoint_head: pooler_resolution, num_convs and conv_dim must be >= 1")


@dataclass(frozen=True)
class ModelConfig:
    """The whole Mask R-CNN. ``num_classes`` counts object classes, without background.

    task: ``instances`` (boxes + masks) or ``keypoints``, which adds the keypoint head (``keypoint_head``);
        the mask head stays as ``mask_head.enabled`` says (the paper trains keypoints with and without it).
    """

    num_classes: int = 80
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    input: InputConfig = field(default_factory=InputConfig)
    rpn: RPNConfig = field(default_factory=RPNConfig)
    box_head: BoxHeadConfig = field(default_factory=BoxHeadConfig)
    mask_head: MaskHeadConfig = field(default_factory=MaskHeadConfig)
    task: str = "instances"
    keypoint_head: KeypointHeadConfig = field(default_factory=KeypointHeadConfig)

    @property
    def has_keypoints(self) -> bool:
        return self.task == "keypoints"

    @property
    def iou_types(self) -> tuple[str, ...]:
        """The COCO evaluations of this model's detections: bbox, segm with a mask head, keypoints with a keypoint head."""
        return ("bbox",) + (("segm",) if self.mask_head.enabled else ()) + (("keypoints",) if self.has_keypoints else ())

    def validate(self) -> None:
        if self.num_classes < 1:
            raise ConfigError(f"model.num_classes: expected >= 1, got {self.num_classes}")
        _check_choice("model", "task", self.task, TASKS)
        for part in (self.backbone, self.input, self.rpn, self.box_head, self.mask_head, self.keypoint_head):
            part.validate()


@dataclass(frozen=True)
class SolverConfig:
    """Optimiser and learning-rate schedule.

    base_lr is the rate for ``reference_batch_size`` images per step; the linear scaling rule gives
    ``base_lr * batch / reference_batch_size`` for another total batch. Steps are fractions of
    ``max_iters`` (the paper: 60k and 80k of 90k).
    """

    optimizer: str = "sgd"
    base_lr: float = 0.02
    reference_batch_size: int = 16
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 1000
    warmup_factor: float = 0.001
    steps: tuple[float, ...] = (2 / 3, 8 / 9)
    gamma: float = 0.1
    max_iters: int = 90000
    batch_size: int = 16
    clip_grad_norm: float | None = None

    def validate(self) -> None:
        _check_choice("solver", "optimizer", self.optimizer, OPTIMIZERS)
        if any(not 0 < s < 1 for s in self.steps):
            raise ConfigError(f"solver.steps: expected fractions of max_iters in (0, 1), got {self.steps}")
        if self.base_lr <= 0 or self.batch_size <= 0 or self.max_iters <= 0:
            raise ConfigError("solver: base_lr, batch_size and max_iters must be positive")

    def scaled_lr(self, total_batch_size: int | None = None) -> float:
        """Learning rate by the linear scaling rule for ``total_batch_size`` images per step."""
        batch = self.batch_size if total_batch_size is None else total_batch_size
        return self.base_lr * batch / self.reference_batch_size


@dataclass(frozen=True)
class Config:
    """A preset: model + solver. ``name`` records which preset it started from."""

    name: str = "custom"
    model: ModelConfig = field(default_factory=ModelConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)

    def validate(self) -> Config:
        self.model.validate()
        self.solver.validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        return from_dict(cls, data).validate()

    def replace(self, **overrides: Any) -> Config:
        """A copy with dotted-key overrides, e.g. ``replace(**{"model.box_head.pooler": "roi_pool"})``."""
        data = self.to_dict()
        for dotted, value in overrides.items():
            node = data
            *parents, leaf = dotted.split(".")
            for key in parents:
                if key not in node or not isinstance(node[key], dict):
                    raise ConfigError(f"override {dotted!r}: no section {key!r}")
                node = node[key]
            if leaf not in node:
                raise ConfigError(f"override {dotted!r}: no key {leaf!r}; known: {sorted(node)}")
            node[leaf] = value
        return Config.from_dict(data)


def to_dict(obj: Any) -> Any:
    """Nested plain dict of a config dataclass (tuples become lists, so the dict is JSON/YAML-ready)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (tuple, list)):
        return [to_dict(v) for v in obj]
    return obj


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return from_dict(tp, value, where=where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        fixed_length = bool(args) and args[-1] is not Ellipsis
        if fixed_length and len(value) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
        item_tp = args[0] if args else Any
        return tuple(_coerce(item_tp, v, where) for v in value)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        non_none = [a for a in typing.get_args(tp) if a is not type(None)]
        return _coerce(non_none[0], value, where)
    if tp in (int, float) and isinstance(value, str):  # "1e-4" from a YAML 1.1 reader or a quoted value
        number = parse_number(value)
        if number is not None:
            value = number
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if tp in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    if tp in (int, float, str, bool) and not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def from_dict(cls: type, data: dict[str, Any], *, where: str = "config") -> Any:
    """Build a config dataclass from a (possibly partial) nested dict; unknown keys are errors."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; known: {sorted(names)}")
    kwargs = {name: _coerce(hints[name], value, f"{where}.{name}") for name, value in data.items()}
    return cls(**kwargs)


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"model": {"rpn": {"nms_thresh": 0.7}}}`` -> ``{"model.rpn.nms_thresh": 0.7}``."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat


# The named presets live in mrcnn/presets.py; imported last, since they are built from the classes above.
from mrcnn.presets import PRESETS, get_preset  # noqa: E402, F401 (re-exported)
