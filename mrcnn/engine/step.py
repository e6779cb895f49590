"""One optimisation step (``train_step``) and the error it raises on a non-finite loss.

The step stays minimal: checkpointing, evaluation, logging and the LR schedule are hooks around it
(:mod:`mrcnn.engine.hooks`), run by :class:`mrcnn.engine.trainer.Trainer`.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import Tensor, nn


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
