"""The training loop: ``before_train``, then ``before_step`` → ``run_step`` → ``after_step`` until the
budget is used, then ``after_train`` (the shape of detectron2's ``engine/train_loop.py``).

Everything but the step hangs on hooks (:mod:`mrcnn.engine.hooks`): the LR schedule, evaluation,
checkpointing, "best" selection, metric logging. The loop's counters are a :class:`TrainState` that
goes into checkpoints through ``state_dict()`` / ``load_state_dict()``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from mrcnn.engine.step import train_step

if TYPE_CHECKING:
    from mrcnn.engine.evaluation import Evaluation
    from mrcnn.engine.hooks import HookBase

Batch = tuple[list[Tensor], list[dict[str, Any]]]


@dataclass
class TrainState:
    """The training loop's counters: what a resume needs besides the weights and the optimizer.

    Attributes:
        iteration: optimizer steps done.
        epoch: passes over the training data started before the current one (0 in the first pass).
        images_seen: training images over all replicas.
        elapsed_s: seconds of training (over every attempt of a resumed run).
        lr: the learning rate of the latest step.
        best_metric: the best value so far of the selection metric (-1: none evaluated yet).
        best_metric_name: what ``best_metric`` measures, e.g. ``segm_AP`` (percent, COCO AP).
        evals_since_best: evaluations since the one that set ``best_metric`` (early stopping counts them).
        history: one record per step: ``{"iteration", "lr", "images_per_s", "step_s", "data_wait_s",
            "loss", "loss_*"}``.
    """

    iteration: int = 0
    epoch: int = 0
    images_seen: int = 0
    elapsed_s: float = 0.0
    lr: float = 0.0
    best_metric: float = -1.0
    best_metric_name: str = ""
    evals_since_best: int = 0
    history: list[dict[str, float]] = field(default_factory=list)

    # Keys of loop states written before they got their present names (checkpoints still resume).
    RENAMED_KEYS: ClassVar[dict[str, str]] = {"best_segm_ap": "best_metric"}

    def state_dict(self) -> dict[str, Any]:
        """Every field, JSON-serialisable."""
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Set the fields from ``state`` (as ``state_dict()`` gives; older key names are accepted).

        Raises:
            ValueError: a key is not a field of this state (names the unknown keys).
        """
        known = {f.name for f in dataclasses.fields(self)}
        renamed = {self.RENAMED_KEYS.get(key, key): value for key, value in state.items()}
        unknown = sorted(set(renamed) - known)
        if unknown:
            raise ValueError(f"{type(self).__name__}.load_state_dict: unknown key(s) {unknown}; expected some of {sorted(known)}")
        for key, value in renamed.items():
            setattr(self, key, value)


class Trainer:
    """Runs ``train_step`` on batches from ``data`` until ``max_iters`` steps or ``max_seconds``.

    Args:
        model: MaskRCNN (or a DDP wrapper of it); put in train mode by ``train()``.
        data: an iterable of ``(images, targets)`` batches (``MaskRCNN.forward``'s inputs, any device);
            one pass over it is one epoch, and it is iterated again for the next one.
        optimizer: its learning rate is set by the hooks (:class:`~mrcnn.engine.hooks.LRSchedule`).
        max_iters: the step budget.
        max_seconds: a time budget (None: none); the run stops at whichever budget is used up first.
        device: where the batches are moved.
        scaler, autocast_dtype, clip_grad_norm: passed to ``train_step``.
        world_size: replicas that each take one batch per step (DDP): ``images_seen`` counts all of them.
        state: the state to continue from (a resume); default a fresh :class:`TrainState`.
        sync_elapsed: maps this process's elapsed seconds to the value all replicas agree on (the
            maximum over ranks under DDP), so every replica takes the same time-based decisions.
        sync_stop: maps whether this process asked to stop (:meth:`request_stop`) to whether any replica
            did (under DDP an all-reduce; every replica calls it after every step while budget is left), so
            every replica stops at the same step.

    Attributes hooks read:
        state, model, optimizer, progress(); after ``run_step``: ``batch`` (the step's images and
        targets, on ``device``), ``losses`` (``train_step``'s floats), ``record`` (the step's history
        entry); ``evaluation`` (an :class:`~mrcnn.engine.evaluation.Evaluation`), its metrics
        ``eval_results`` and ``eval_iteration`` (set by an evaluation hook); ``stop_reason`` (None until
        :meth:`request_stop`).
    """

    def __init__(
        self,
        model: nn.Module,
        data: Iterable[Batch],
        optimizer: torch.optim.Optimizer,
        *,
        max_iters: int,
        max_seconds: float | None = None,
        device: str | torch.device = "cpu",
        scaler: torch.amp.GradScaler | None = None,
        autocast_dtype: torch.dtype | None = None,
        clip_grad_norm: float | None = None,
        world_size: int = 1,
        state: TrainState | None = None,
        sync_elapsed: Callable[[float], float] | None = None,
        sync_stop: Callable[[bool], bool] | None = None,
    ):
        if max_iters < 1:
            raise ValueError(f"Trainer: max_iters must be >= 1, got {max_iters}")
        self.model = model
        self.data = data
        self.optimizer = optimizer
        self.max_iters = max_iters
        self.max_seconds = max_seconds
        self.device = torch.device(device)
        self.scaler = scaler
        self.autocast_dtype = autocast_dtype
        self.clip_grad_norm = clip_grad_norm
        self.world_size = world_size
        self.state = state if state is not None else TrainState()
        self.sync_elapsed = sync_elapsed or (lambda seconds: seconds)
        self.sync_stop = sync_stop or (lambda stop: stop)
        self.batch: Batch | None = None
        self.losses: dict[str, float] = {}
        self.record: dict[str, float] = {}
        self.evaluation: Evaluation | None = None
        self.eval_results: dict[str, dict[str, Any]] | None = None
        self.eval_iteration = -1
        self.stop_reason: str | None = None
        self._hooks: list[HookBase] = []
        self._start = 0.0
        self._batches: Iterator[Batch] | None = None

    def register_hooks(self, hooks: Sequence[HookBase | None]) -> None:
        """Append hooks (None entries are skipped); they run in the order registered."""
        for hook in hooks:
            if hook is not None:
                hook.trainer = self
                self._hooks.append(hook)

    def request_stop(self, reason: str) -> None:
        """End the loop after the current step (``after_train`` still runs), e.g. early stopping."""
        self.stop_reason = self.stop_reason or reason

    def _stopping(self) -> bool:
        """Whether any replica asked to stop (every replica then stops at this step)."""
        if self.sync_stop(self.stop_reason is not None) and self.stop_reason is None:
            self.stop_reason = "another replica asked to stop"
        return self.stop_reason is not None

    def progress(self) -> float:
        """The fraction of the budget used: the larger of steps / ``max_iters`` and time / ``max_seconds``."""
        used = self.state.iteration / self.max_iters
        return max(used, self.state.elapsed_s / self.max_seconds) if self.max_seconds else used

    def train(self) -> TrainState:
        """Run the loop until the budget is used or a hook calls :meth:`request_stop`; returns the final state.

        Raises:
            NonFiniteLossError: a step's loss was NaN or infinite (the step and the losses are named).
            Whatever the data or a hook raises; every hook's ``on_failure`` is called first.
        """
        self.model.train()
        self._start = time.perf_counter() - self.state.elapsed_s
        self._update_elapsed()
        try:
            self.before_train()
            while self.progress() < 1.0 and not self._stopping():
                self.before_step()
                self.run_step()
                self._update_elapsed()
                self.after_step()
            self.after_train()
        except Exception as exc:
            for hook in self._hooks:
                hook.on_failure(exc)
            raise
        return self.state

    def before_train(self) -> None:
        for hook in self._hooks:
            hook.before_train()

    def after_train(self) -> None:
        for hook in self._hooks:
            hook.after_train()

    def before_step(self) -> None:
        for hook in self._hooks:
            hook.before_step()

    def after_step(self) -> None:
        for hook in self._hooks:
            hook.after_step()

    def run_step(self) -> None:
        """Take the next batch, move it to ``device``, run ``train_step`` and count the step."""
        waited = time.perf_counter()
        images, targets = next(self._next_batches())
        data_wait_s = time.perf_counter() - waited
        images = [img.to(self.device, non_blocking=True) for img in images]
        targets = [{k: (v.to(self.device) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]
        self.batch = (images, targets)
        started = time.perf_counter()
        self.losses = train_step(
            self.model, images, targets, optimizer=self.optimizer, step=self.state.iteration, scaler=self.scaler,
            autocast_dtype=self.autocast_dtype, clip_grad_norm=self.clip_grad_norm,
        )  # fmt: skip
        step_s = time.perf_counter() - started
        num_images = len(images) * self.world_size
        self.state.iteration += 1
        self.state.images_seen += num_images
        self.record = {"iteration": self.state.iteration, "lr": self.state.lr, "images_per_s": num_images / max(step_s, 1e-9),
                       "step_s": step_s, "data_wait_s": data_wait_s, **self.losses}  # fmt: skip
        self.state.history.append(self.record)

    def _next_batches(self) -> Iterator[Batch]:
        if self._batches is None:
            self._batches = self._epochs()
        return self._batches

    def _epochs(self) -> Iterator[Batch]:
        """The batches of ``data``, pass after pass; ``state.epoch`` counts the passes."""
        while True:
            empty = True
            for batch in self.data:
                empty = False
                yield batch
            if empty:
                raise ValueError("the training data is empty")
            self.state.epoch += 1

    def _update_elapsed(self) -> None:
        self.state.elapsed_s = self.sync_elapsed(time.perf_counter() - self._start)
