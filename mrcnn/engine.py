"""The training step, a minimal training loop with hooks, and dataset-level inference/evaluation.

The step stays minimal: checkpointing, evaluation, logging and the LR schedule are hooks around it.
Ray Train's loop (pipelines/train.py) calls the same ``train_step``.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from mrcnn.config import SolverConfig
from mrcnn.data.categories import CategoryMap
from mrcnn.evaluation import evaluate_coco
from mrcnn.predictor import detections_to_records
from mrcnn.records import coco_result
from mrcnn.solver import lr_factor, set_lr


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN or infinite; the message names the step and every loss value."""


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def train_step(
    model: nn.Module,
    images: list[Tensor],
    targets: list[dict[str, Tensor]],
    *,
    optimizer: torch.optim.Optimizer,
    step: int,
    scaler: torch.amp.GradScaler | None = None,
    autocast_dtype: torch.dtype | None = None,
    clip_grad_norm: float | None = None,
) -> dict[str, float]:
    """One optimisation step on one batch.

    Args:
        model: MaskRCNN (or a DDP wrapper of it) in train mode.
        images, targets: see ``MaskRCNN.forward``; already on the model's device.
        step: the step's number, for error messages.
        scaler: a GradScaler for fp16 autocast (None for fp32 and bf16).
        autocast_dtype: torch.float16 / torch.bfloat16 to train under autocast, None for fp32.

    Returns:
        Every ``loss_*`` term and their sum ``loss`` as floats.

    Raises:
        NonFiniteLossError: a loss is NaN or infinite (nothing is updated).
    """
    device = images[0].device
    with _autocast(device, autocast_dtype):
        losses = model(images, targets).losses
    total = sum(losses.values())
    values = {name: float(value.detach()) for name, value in losses.items()}
    values["loss"] = float(total.detach())
    if not math.isfinite(values["loss"]):
        shown = ", ".join(f"{k}={v:.4g}" for k, v in values.items())
        raise NonFiniteLossError(f"non-finite loss at step {step}: {shown}")
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(total).backward()
        if clip_grad_norm:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
        scaler.step(optimizer)
        scaler.update()
    else:
        total.backward()
        if clip_grad_norm:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
        optimizer.step()
    return values


class Hook(Protocol):
    """Called around the step. ``state`` is the loop's TrainState."""

    def after_step(self, state: TrainState, losses: dict[str, float]) -> None: ...


@dataclass
class TrainState:
    iteration: int = 0
    images_seen: int = 0
    elapsed_s: float = 0.0
    lr: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)


def _cycle(loader: Iterable) -> Iterator:
    while True:
        yielded = False
        for batch in loader:
            yielded = True
            yield batch
        if not yielded:
            raise ValueError("the training data is empty")


def fit(
    model: nn.Module,
    loader: Iterable[tuple[list[Tensor], list[dict[str, Any]]]],
    optimizer: torch.optim.Optimizer,
    solver: SolverConfig,
    *,
    max_iters: int | None = None,
    max_seconds: float | None = None,
    device: str | torch.device = "cpu",
    hooks: Sequence[Hook] = (),
    autocast_dtype: torch.dtype | None = None,
) -> TrainState:
    """Train until ``max_iters`` steps (default ``solver.max_iters``) or ``max_seconds``, whichever comes first.

    The LR schedule's progress is the larger of the two fractions used, so a time-budgeted run still
    decays its learning rate at the configured fractions of its budget.
    """
    device = torch.device(device)
    max_iters = max_iters or solver.max_iters
    model.train()
    state = TrainState()
    start = time.perf_counter()
    for images, targets in _cycle(loader):
        state.elapsed_s = time.perf_counter() - start
        progress = state.iteration / max_iters
        if max_seconds:
            progress = max(progress, state.elapsed_s / max_seconds)
        if progress >= 1.0:
            break
        state.lr = set_lr(optimizer, lr_factor(solver, iteration=state.iteration, progress=progress))
        images = [img.to(device, non_blocking=True) for img in images]
        targets = [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]
        losses = train_step(
            model,
            images,
            targets,
            optimizer=optimizer,
            step=state.iteration,
            autocast_dtype=autocast_dtype,
            clip_grad_norm=solver.clip_grad_norm,
        )
        state.iteration += 1
        state.images_seen += len(images)
        state.history.append({"iteration": state.iteration, "lr": state.lr, **losses})
        for hook in hooks:
            hook.after_step(state, losses)
    state.elapsed_s = time.perf_counter() - start
    return state


@torch.no_grad()
def predict_coco_results(
    model: nn.Module,
    batches: Iterable[tuple[list[Tensor], list[dict[str, Any]]]],
    categories: CategoryMap,
    *,
    device: str | torch.device = "cpu",
    mask_threshold: float = 0.5,
) -> list[dict[str, Any]]:
    """COCO results records for every image of ``batches`` (targets must carry ``image_id``)."""
    model.eval()
    results: list[dict[str, Any]] = []
    for images, targets in batches:
        detections = model([img.to(device) for img in images]).detections
        for target, detection in zip(targets, detections):
            detection = {k: v.cpu() for k, v in detection.items()}
            for record in detections_to_records(detection, categories, mask_threshold=mask_threshold):
                results.append(coco_result(record, image_id=int(target["image_id"])))
    return results


def evaluate_model(
    model: nn.Module,
    batches: Iterable[tuple[list[Tensor], list[dict[str, Any]]]],
    gt: Any,
    categories: CategoryMap,
    *,
    device: str | torch.device = "cpu",
    iou_types: Sequence[str] = ("bbox", "segm"),
) -> dict[str, dict[str, Any]]:
    """Predict every image of ``batches`` and evaluate against ``gt`` (COCO json path, dict or COCO).

    ``iou_types``: ``("bbox",)`` for a model without a mask branch (Faster R-CNN).
    """
    results = predict_coco_results(model, batches, categories, device=device)
    return evaluate_coco(gt, results, iou_types=iou_types)
