"""Hooks around the training step (detectron2's ``engine/hooks.py``): each one owns one concern.

A hook is registered on a :class:`~mrcnn.engine.trainer.Trainer` (which sets ``hook.trainer``) and
overrides the calls it needs. Hooks run in the order they were registered, so an evaluation hook goes
before the hooks that read its results (best-model selection, checkpointing).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from mrcnn.config import SolverConfig
from mrcnn.engine.evaluation import Evaluation
from mrcnn.solver import lr_factor, set_lr

if TYPE_CHECKING:
    from mrcnn.engine.trainer import Trainer

EvalResults = dict[str, dict[str, Any]]


class HookBase:
    """Does nothing at every point of the loop; subclasses override what they need.

    ``before_train`` / ``after_train``: once, around the loop (``after_train`` only when the loop
    finished). ``before_step`` / ``after_step``: around every ``run_step``; ``trainer.state.iteration``
    counts the step in ``after_step``. ``on_failure``: the loop raised ``exc`` (it is re-raised after
    every hook's ``on_failure``).
    """

    trainer: Trainer

    def before_train(self) -> None:
        pass

    def after_train(self) -> None:
        pass

    def before_step(self) -> None:
        pass

    def after_step(self) -> None:
        pass

    def on_failure(self, exc: BaseException) -> None:
        pass


class LRSchedule(HookBase):
    """Sets the learning rate before every step: warm-up, then step decay at fractions of the budget
    (:func:`mrcnn.solver.lr_factor` of the trainer's progress); records it in ``state.lr``."""

    def __init__(self, solver: SolverConfig):
        self.solver = solver

    def before_step(self) -> None:
        state = self.trainer.state
        factor = lr_factor(self.solver, iteration=state.iteration, progress=self.trainer.progress())
        state.lr = set_lr(self.trainer.optimizer, factor)


class PeriodicEvaluation(HookBase):
    """Evaluates every ``period`` steps (not at the last one) and once after training (unless the loop
    stopped right after an evaluation, e.g. early stopping: that one is the final evaluation).

    Args:
        evaluate: returns an :class:`~mrcnn.engine.evaluation.Evaluation` (``run_evaluation``'s output: the
            metrics, validation losses and results records) or only the metrics ``{iou_type: {"AP": ...}}``
            (``evaluate_model``'s output) for the current weights; it leaves the model in train mode.
        period: steps between evaluations (0: only after training).

    The result goes to ``trainer.evaluation`` and its metrics to ``trainer.eval_results``, with
    ``trainer.eval_iteration`` = the step it belongs to.
    """

    def __init__(self, evaluate: Callable[[], EvalResults], period: int):
        self.evaluate = evaluate
        self.period = period

    def after_step(self) -> None:
        iteration = self.trainer.state.iteration
        if self.period and iteration % self.period == 0 and self.trainer.progress() < 1.0:
            self._run()

    def after_train(self) -> None:
        if fresh_evaluation(self.trainer) is None:
            self._run()

    def _run(self) -> None:
        output = self.evaluate()
        evaluation = output if isinstance(output, Evaluation) else Evaluation(metrics=output)
        self.trainer.evaluation = evaluation
        self.trainer.eval_results = evaluation.metrics
        self.trainer.eval_iteration = self.trainer.state.iteration


def fresh_eval(trainer: Trainer) -> EvalResults | None:
    """The metrics of the evaluation of the current step, or None when none ran at this step."""
    return trainer.eval_results if trainer.eval_iteration == trainer.state.iteration else None


def fresh_evaluation(trainer: Trainer) -> Evaluation | None:
    """The :class:`~mrcnn.engine.evaluation.Evaluation` of the current step, or None when none ran at this step."""
    return trainer.evaluation if trainer.eval_iteration == trainer.state.iteration else None


class BestModel(HookBase):
    """Follows the best value of one evaluation statistic in ``state.best_metric``.

    Args:
        metric: ``<iou_type>_<statistic>``, e.g. ``segm_AP``, ``keypoints_AP`` or ``bbox_AP``; higher is better.

    After each evaluation ``improved`` says whether it set a new best (a strictly higher value);
    hooks after this one (checkpointing, registration) read it.
    """

    def __init__(self, metric: str):
        iou_type, sep, statistic = metric.partition("_")
        if not sep or not statistic:
            raise ValueError(f"BestModel: metric {metric!r}: expected <iou_type>_<statistic>, e.g. segm_AP")
        self.metric = metric
        self._key = (iou_type, statistic)
        self.improved = False
        self._selected_at = -1

    def before_train(self) -> None:
        self.trainer.state.best_metric_name = self.metric

    def after_step(self) -> None:
        self._select()

    def after_train(self) -> None:
        self._select()

    def _select(self) -> None:
        results = fresh_eval(self.trainer)
        state = self.trainer.state
        if results is not None and self._selected_at == state.iteration:
            return  # after_train of a loop stopped right after an evaluation: that one was selected already
        self._selected_at = state.iteration if results is not None else self._selected_at
        iou_type, statistic = self._key
        value = (results or {}).get(iou_type, {}).get(statistic)
        self.improved = value is not None and float(value) > state.best_metric
        if self.improved:
            state.best_metric = float(value)
            state.evals_since_best = 0
        elif results is not None:
            state.evals_since_best += 1


class EarlyStopping(HookBase):
    """Stops the loop after ``patience`` evaluations in a row without a better selection metric.

    Args:
        best: the selection hook (registered before this one); its ``state.evals_since_best`` counts the
            evaluations since the best one.
        patience: evaluations without improvement to allow (>= 1).
        print_fn: where the line saying why training stopped goes (default ``print`` with flush).
    """

    def __init__(self, best: BestModel, patience: int, *, print_fn: Callable[[str], None] | None = None):
        if patience < 1:
            raise ValueError(f"EarlyStopping: patience must be >= 1, got {patience}")
        self.best = best
        self.patience = patience
        self.print_fn = print_fn or (lambda line: print(line, flush=True))

    def after_step(self) -> None:
        state = self.trainer.state
        if fresh_eval(self.trainer) is not None and state.evals_since_best >= self.patience:
            reason = (f"early stopping at iteration {state.iteration}: {state.evals_since_best} evaluations without a "
                      f"better {self.best.metric} than {state.best_metric:.2f}")  # fmt: skip
            self.print_fn(f"[train] {reason}")
            self.trainer.request_stop(reason)


class Checkpointer(HookBase):
    """Calls ``save(trainer)`` every ``period`` steps (not at the last one) and once after training."""

    def __init__(self, save: Callable[[Trainer], None], period: int):
        self.save = save
        self.period = period

    def after_step(self) -> None:
        if self.period and self.trainer.state.iteration % self.period == 0 and self.trainer.progress() < 1.0:
            self.save(self.trainer)

    def after_train(self) -> None:
        self.save(self.trainer)


class MetricLogger(HookBase):
    """Writes every step's record and prints a progress line at the first step of this launch (1, or the
    one after a resumed checkpoint), every ``period`` steps and the last of ``max_iters``; at every
    evaluation writes the validation losses and prints the evaluation's line.

    Args:
        write: receives ``({"train/<name>": value}, step)`` for every step's record (``lr``,
            ``images_per_s``, ``step_s`` and ``data_wait_s`` in seconds, ``loss`` and each ``loss_*``), and
            ``({"val/loss": ..., "val/loss_*": ...}, step)`` at every evaluation with losses; None: print only.
        period: steps between progress lines (0: none).
        prefix: starts every line.
        print_fn: where lines go (default ``print`` with flush).
    """

    def __init__(
        self,
        write: Callable[[Mapping[str, float], int], None] | None = None,
        *,
        period: int = 25,
        prefix: str = "[train]",
        print_fn: Callable[[str], None] | None = None,
    ):
        self.write = write
        self.period = period
        self.prefix = prefix
        self.print_fn = print_fn or (lambda line: print(line, flush=True))
        self._logged_eval = -1
        self._first = 1

    def before_train(self) -> None:
        self._first = self.trainer.state.iteration + 1

    def after_train(self) -> None:
        self._log_evaluation()

    def _log_evaluation(self) -> None:
        """The fresh evaluation's val losses (``write``) and one line with its APs and loss, once per evaluation."""
        evaluation, step = fresh_evaluation(self.trainer), self.trainer.state.iteration
        if evaluation is None or self._logged_eval == step:
            return
        self._logged_eval = step
        if self.write is not None and evaluation.losses:
            self.write({f"val/{k}": v for k, v in evaluation.losses.items()}, step)
        aps = [f"{iou_type} AP {stats['AP']:.1f}" for iou_type, stats in evaluation.metrics.items() if "AP" in stats]
        loss = [f"val loss {evaluation.losses['loss']:.3f}"] if "loss" in evaluation.losses else []
        self.print_fn(f"{self.prefix} evaluation at iteration {step}: {'  '.join(aps + loss)}")

    def after_step(self) -> None:
        self._log_evaluation()
        state, record = self.trainer.state, self.trainer.record
        if self.write is not None:
            self.write({f"train/{k}": v for k, v in record.items() if k != "iteration"}, state.iteration)
        if self.period and (state.iteration in (self._first, self.trainer.max_iters) or state.iteration % self.period == 0):
            rate = state.images_seen / max(state.elapsed_s, 1e-6)
            self.print_fn(f"{self.prefix} iteration {state.iteration}  epoch {state.epoch}  loss {record['loss']:.3f}  "
                          f"lr {record['lr']:.2e}  {rate:.1f} img/s  step {record['step_s']:.2f} s  "
                          f"data {record['data_wait_s']:.2f} s  {state.elapsed_s:.0f} s")  # fmt: skip

