"""Training: the step (``step``), the loop and its state (``trainer``), the hooks around it (``hooks``),
and dataset-level inference and evaluation (``evaluation``).

``fit`` is the loop with the LR schedule, for scripts and tests; Ray Train's worker
(``pipelines.train.worker``) builds the same :class:`Trainer` with its own hooks.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mrcnn.config import SolverConfig
from mrcnn.engine.evaluation import Evaluation, evaluate_model, predict_coco_results, run_evaluation
from mrcnn.engine.hooks import (
    BestModel,
    Checkpointer,
    EarlyStopping,
    HookBase,
    LRSchedule,
    MetricLogger,
    PeriodicEvaluation,
)
from mrcnn.engine.step import NonFiniteLossError, train_step
from mrcnn.engine.trainer import Trainer, TrainState

__all__ = [
    "BestModel",
    "Checkpointer",
    "EarlyStopping",
    "Evaluation",
    "HookBase",
    "LRSchedule",
    "MetricLogger",
    "NonFiniteLossError",
    "PeriodicEvaluation",
    "TrainState",
    "Trainer",
    "evaluate_model",
    "fit",
    "predict_coco_results",
    "run_evaluation",
    "train_step",
]


def fit(
    model: nn.Module,
    loader: Iterable[tuple[list[Tensor], list[dict[str, Any]]]],
    optimizer: torch.optim.Optimizer,
    solver: SolverConfig,
    *,
    max_iters: int | None = None,
    max_seconds: float | None = None,
    device: str | torch.device = "cpu",
    hooks: Sequence[HookBase] = (),
    autocast_dtype: torch.dtype | None = None,
) -> TrainState:
    """Train until ``max_iters`` steps (default ``solver.max_iters``) or ``max_seconds``, whichever comes first.

    The LR schedule's progress is the larger of the two fractions used, so a time-budgeted run still
    decays its learning rate at the configured fractions of its budget. ``hooks`` run after the schedule.

    Raises:
        ValueError: ``loader`` yields no batch.
        NonFiniteLossError: a step's loss was NaN or infinite.
    """
    trainer = Trainer(
        model, loader, optimizer, max_iters=max_iters or solver.max_iters, max_seconds=max_seconds, device=device,
        autocast_dtype=autocast_dtype, clip_grad_norm=solver.clip_grad_norm,
    )  # fmt: skip
    trainer.register_hooks([LRSchedule(solver), *hooks])
    return trainer.train()
