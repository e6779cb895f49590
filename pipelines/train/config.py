"""The run config of ``mrcnn train`` (``configs/*.yaml``, ``jobs/configs/train.yaml``, the CLI flags)."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

CHECKPOINT_FILE = "model.ckpt"


@dataclass(frozen=True)
class TrainRunConfig:
    """Run-level settings of ``mrcnn train`` (the YAML run config; model settings are in ``model``).

    model: a preset name plus dotted-key overrides of its config, e.g.
        ``{"preset": "r18_fpn_small", "overrides": {"model.box_head.pooler": "roi_pool"}}``.
    batch_size: images per worker per step; the learning rate follows the linear scaling rule for
        ``batch_size * workers`` against the preset's reference batch.
    max_iters / epochs / minutes: the budget; the schedule's decay points are fractions of it. ``epochs``
        (passes over the training shards) becomes ``max_iters = ceil(epochs * train images / total batch)``,
        so a total batch other than the preset's keeps the same number of images seen (the linear scaling
        rule: the learning rate follows the batch, the iterations its inverse).
    accelerator_type: GPU workers only on nodes with this accelerator (Ray's ``accelerator_type:H200``
        resource; an autoscaling cluster starts such nodes), e.g. ``H200`` or ``A10G``.
    backbone_weights: an ImageNet ResNet state dict (torchvision's ``resnet50-*.pth``; path or s3:// URI)
        loaded into ``backbone.body`` before the first step, as the paper's training starts.
    model_name: the registered model that the best checkpoint becomes a version of; "best" by the selection
        metric: keypoint AP for a keypoint model, else segm AP (bbox AP without a mask branch). Empty:
        register nothing (the checkpoints stay in ``storage_path``).
    parent_run_id: nest this run's MLflow run under that run (``mrcnn ablate``'s variants are child runs).
    eval_every: evaluate on the val shards (rank 0) at the checkpoints whose iteration is a multiple of
        it, and after training; 0 (the default): only after training; -1: never (nothing is registered).
        Without val shards nothing is evaluated. The final evaluation also logs the evaluation report
        (``report/`` artifacts) and calibrates per-class score thresholds, stored with the checkpoint and
        the registered model.
    patience: early stopping: stop after this many evaluations in a row without a better selection metric
        (0: never stop early); the ``best`` alias still follows the best evaluation.
    init_from: a trained model to start from (fine-tuning, :func:`mrcnn.pretrained.init_from`): a file,
        s3:// URI, ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or ``runs:/...`` holding a torchvision
        Mask R-CNN / keypoint R-CNN state dict or this project's checkpoint. Every tensor that fits is
        loaded, the class-specific layers are sized for the dataset's classes, and the rows of categories
        with a source category's name are copied. Not applied when resuming from a checkpoint.
    augmentation: the training augmentation, a mapping read by
        :meth:`mrcnn.data.augment.AugmentationConfig.from_dict` (``kind``: none, flip, multiscale, lsj;
        ``copy_paste``, ...); empty: none. With ``multiscale`` or ``lsj`` the model's own resize is skipped
        in training (the augmentation chose the sizes); inference resizes as before.
    loader_threads: background threads per worker that decode, augment and collate the next batches while
        the model computes (:class:`mrcnn.data.prefetch.Prefetcher`); 0: in the loop's own thread, nothing
        ahead; -1 (default): 2 on GPU workers, 1 on CPU workers.
    """

    data: str = ""
    preset: str = "r18_fpn_small"
    overrides: dict[str, Any] = field(default_factory=dict)
    workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 0.0
    gpus_per_worker: float = 1.0
    accelerator_type: str = ""
    amp: str = "none"
    batch_size: int = 4
    max_iters: int = 0
    epochs: float = 0.0
    minutes: float = 0.0
    eval_every: int = 0
    checkpoint_every: int = 50
    eval_max_images: int = 0
    storage_path: str = ""
    name: str = "mrcnn-train"
    max_failures: int = 2
    tracking_uri: str = ""
    experiment: str = "mrcnn"
    model_name: str = "mrcnn"
    parent_run_id: str = ""
    seed: int = 0
    num_val_overlays: int = 4
    placement_strategy: str = "PACK"
    backbone_weights: str = ""
    init_from: str = ""
    patience: int = 0
    augmentation: dict[str, Any] = field(default_factory=dict)
    loader_threads: int = -1

    def validate(self) -> TrainRunConfig:
        if not self.data:
            raise ValueError("train: 'data' (the preprocessed shards folder) is required")
        if self.workers < 1 or self.batch_size < 1:
            raise ValueError(f"train: workers and batch_size must be >= 1, got {self.workers} and {self.batch_size}")
        if self.amp not in ("none", "bf16", "fp16"):
            raise ValueError(f"train: amp must be none, bf16 or fp16, got {self.amp!r}")
        if self.amp != "none" and not self.use_gpu:
            raise ValueError("train: amp needs use_gpu (autocast on CPU workers is not supported here)")
        if self.epochs < 0 or self.max_iters < 0:
            raise ValueError(f"train: epochs and max_iters must be >= 0, got {self.epochs} and {self.max_iters}")
        if self.epochs and self.max_iters:
            raise ValueError(f"train: give max_iters or epochs, not both (got {self.max_iters} and {self.epochs})")
        if self.eval_every < -1 or self.patience < 0:
            raise ValueError(f"train: eval_every must be >= -1 and patience >= 0, got {self.eval_every} and {self.patience}")
        if self.patience and self.eval_every <= 0:
            raise ValueError(f"train: patience {self.patience} needs periodic evaluations (eval_every > 0), "
                             f"got eval_every {self.eval_every}")  # fmt: skip
        if self.loader_threads < -1:
            raise ValueError(f"train: loader_threads must be >= 0 (or -1: auto), got {self.loader_threads}")
        self.augmentation_config()
        return self

    def augmentation_config(self):
        """The :class:`mrcnn.data.augment.AugmentationConfig` of ``augmentation``.

        Raises:
            mrcnn.config.ConfigError: an unknown key or invalid value (named ``augmentation.<key>``).
        """
        from mrcnn.data.augment import AugmentationConfig

        return AugmentationConfig.from_dict(self.augmentation or {})

    def num_loader_threads(self) -> int:
        """``loader_threads`` with -1 resolved: 2 on GPU workers, 1 on CPU workers."""
        if self.loader_threads >= 0:
            return self.loader_threads
        return 2 if self.use_gpu else 1

    def model_config(self):
        from mrcnn.config import get_preset

        cfg = get_preset(self.preset)
        return cfg.replace(**self.overrides) if self.overrides else cfg

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, **overrides: Any) -> TrainRunConfig:
        from mrcnn.config import load_yaml

        data = load_yaml(path) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping of run settings")
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"{path}: unknown key(s) {sorted(unknown)}")
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**data)
