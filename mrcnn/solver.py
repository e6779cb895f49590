"""Optimiser and learning-rate schedule: linear warm-up, then step decay at fractions of the run.

The schedule is a pure function of (iteration, progress), where progress in [0, 1] is the fraction of
the budget used: iterations of ``max_iters`` or, for a time-budgeted run, elapsed time of the budget.
"""

from __future__ import annotations

import torch
from torch import nn

from mrcnn.config import SolverConfig

_NORM_TYPES = (nn.BatchNorm2d, nn.SyncBatchNorm, nn.GroupNorm, nn.LayerNorm)


def build_optimizer(model: nn.Module, cfg: SolverConfig, *, total_batch_size: int | None = None) -> torch.optim.Optimizer:
    """SGD (momentum) or AdamW at the linearly scaled learning rate; no weight decay on norms and biases.

    Args:
        total_batch_size: images per step across all workers (default ``cfg.batch_size``).
    """
    decay, no_decay = [], []
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            (no_decay if isinstance(module, _NORM_TYPES) or name == "bias" else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    lr = cfg.scaled_lr(total_batch_size)
    if cfg.optimizer == "sgd":
        optimizer: torch.optim.Optimizer = torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum)
    else:
        optimizer = torch.optim.AdamW(groups, lr=lr)
    for group in optimizer.param_groups:
        group["initial_lr"] = lr
    return optimizer


def lr_factor(cfg: SolverConfig, *, iteration: int, progress: float) -> float:
    """Multiplier of the base learning rate.

    Args:
        iteration: optimizer steps done so far.
        progress: fraction of the run's budget used, in [0, 1].

    Returns:
        Linear warm-up from ``warmup_factor`` to 1 over ``warmup_iters``, times ``gamma`` for each step
        fraction already passed.
    """
    factor = 1.0
    if iteration < cfg.warmup_iters:
        alpha = iteration / cfg.warmup_iters
        factor = cfg.warmup_factor * (1 - alpha) + alpha
    passed = sum(1 for s in cfg.steps if progress >= s)
    return factor * cfg.gamma**passed


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> float:
    """Set every group's lr to its initial lr times ``factor``; returns the first group's lr."""
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * factor
    return optimizer.param_groups[0]["lr"]
