"""The Ray and MLflow hooks of a training worker, its loop state, and hooks given by import path.

- :class:`RayReport`: every ``checkpoint_every`` steps and at the end, rank 0 writes a checkpoint (the
  model, optimizer, scaler and :class:`RunState`), registers it when it is the best so far, and every
  rank reports to Ray Train (every rank must report the same number of times).
- :class:`ThresholdCalibration`: at every evaluation (rank 0), per-class score thresholds calibrated on its
  val predictions; they go into that step's checkpoint (metadata ``thresholds``) and registered model.
- :class:`MlflowTracking`: rank 0's MLflow run: the evaluations, the loss curves, val overlays and the final
  evaluation's report (``report/``) at the end, the run's end (FINISHED, or FAILED when the loop raised).
  The per-step ``train/*`` metrics and the evaluations' ``val/*`` losses go through
  :class:`mrcnn.engine.MetricLogger` into a :class:`pipelines.tracking.MetricBuffer` (one ``log_batch`` per
  50 steps or 10 s), which this hook sends at evaluations, checkpoints, the end and on failure.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mrcnn.engine.hooks import BestModel, HookBase, fresh_eval, fresh_evaluation
from mrcnn.engine.trainer import TrainState
from pipelines.train.config import CHECKPOINT_FILE, TrainRunConfig

# A hook given to ``train(extra_hooks=...)``: a picklable HookBase (every worker gets a copy), or a factory
# called on every worker that returns one: "module:factory", {"factory": "module:factory", "kwargs": {...}},
# or a picklable callable.
HookSpec = HookBase | str | Mapping[str, Any] | Callable[[], HookBase]


@dataclass
class RunState(TrainState):
    """The loop state of a Ray Train run: :class:`TrainState` plus what a relaunch continues.

    Attributes:
        mlflow_run_id: the run's MLflow run (a resume logs into the same one).
        attempt: how many times the run was resumed from a checkpoint (it reseeds the shuffling).
        reports: checkpoints reported to Ray Train (it names them uniquely).
    """

    mlflow_run_id: str | None = None
    attempt: int = 0
    reports: int = 0


def selection_metric(cfg) -> str:
    """What "best" means for this model: ``keypoints_AP``, ``segm_AP``, or ``bbox_AP`` without a mask branch."""
    if cfg.model.has_keypoints:
        return "keypoints_AP"
    return "segm_AP" if "segm" in cfg.model.iou_types else "bbox_AP"


def start_tracker(run: TrainRunConfig, cfg, data_stats: Mapping[str, Any], state: RunState, *, resumed: bool):
    """Create (or, resumed, reopen) the run's MLflow run; logs the config, or where it resumed."""
    from mrcnn.config import flatten
    from pipelines.train.driver import run_key
    from pipelines.tracking import Tracker

    tracker = Tracker.start(run.tracking_uri, run.experiment, run.name, run_id=state.mlflow_run_id, run_key=run_key(run),
                            parent_run_id=run.parent_run_id or None)  # fmt: skip
    state.mlflow_run_id = tracker.run_id
    if not resumed:
        tracker.log_config(cfg)
        tracker.log_params({f"run.{k}": v for k, v in flatten(dataclasses.asdict(run)).items()})
        tracker.log_params({f"data.{k}": v for k, v in data_stats.items()})
        tracker.set_git_commit()
    else:
        tracker.log_metrics({"train/resumed_at_iteration": state.iteration}, step=state.iteration)
    return tracker


class ThresholdCalibration(HookBase):
    """Per-class score thresholds calibrated on every evaluation's val predictions (rank 0).

    Args:
        gt: the val ground truth (COCO dict) the evaluations are scored against.
        iou_type: what the F1-maximising threshold matches on at IoU 0.5: ``segm`` for a mask model, else ``bbox``.

    :meth:`fresh` gives the :class:`mrcnn.thresholds.CalibratedThresholds` of the current step's evaluation
    (None without one). The predictions are every detection above the model's own score threshold
    (``box_head.score_thresh``, 0.05), so a class's threshold can be any score above it.
    """

    def __init__(self, gt: Mapping[str, Any], *, iou_type: str):
        self.gt = gt
        self.iou_type = iou_type
        self.calibrated = None
        self.iteration = -1

    def after_step(self) -> None:
        self._calibrate()

    def after_train(self) -> None:
        self._calibrate()

    def fresh(self):
        return self.calibrated if self.iteration == self.trainer.state.iteration else None

    def _calibrate(self) -> None:
        from mrcnn.thresholds import calibrate_thresholds

        evaluation = fresh_evaluation(self.trainer)
        if evaluation is None or self.iteration == self.trainer.state.iteration:
            return
        self.calibrated = calibrate_thresholds(self.gt, evaluation.results, iou_type=self.iou_type)
        self.iteration = self.trainer.state.iteration


class RayReport(HookBase):
    """Checkpoint (rank 0) and ``ray.train.report`` (every rank) every ``period`` steps and after training.

    Args:
        period: steps between reports (``checkpoint_every``).
        rank: this worker's rank; rank 0 writes the checkpoint.
        cfg, categories: go into the checkpoint. key: the run key (checkpoint metadata ``run``).
        best: the selection hook (registered before this one); ``register(path, thresholds)`` is called with
            the checkpoint file when its evaluation set a new best.
        calibration: the threshold hook (registered before this one): an evaluated step's thresholds go
            into its checkpoint's metadata (``thresholds``: ``CalibratedThresholds.to_dict()``) and, as
            ``{category_id: score}``, to ``register``.
    """

    def __init__(self, period: int, *, rank: int, cfg, categories, key: str, best: BestModel | None = None,
                 register: Callable[..., Any] | None = None, calibration: ThresholdCalibration | None = None):  # fmt: skip
        self.period = period
        self.rank = rank
        self.cfg = cfg
        self.categories = categories
        self.key = key
        self.best = best
        self.register = register
        self.calibration = calibration

    def after_step(self) -> None:
        if self.period and self.trainer.state.iteration % self.period == 0 and self.trainer.progress() < 1.0:
            self._report(final=False)

    def after_train(self) -> None:
        self._report(final=True)

    def _report(self, *, final: bool) -> None:
        import ray.train

        state: RunState = self.trainer.state
        results = fresh_eval(self.trainer)
        metrics: dict[str, Any] = {"iteration": state.iteration, "epoch": state.epoch, "images_seen": state.images_seen,
                                   "final": final, "train_seconds": state.elapsed_s,
                                   "train_images_per_s": state.images_seen / max(state.elapsed_s, 1e-6)}  # fmt: skip
        if state.history:
            metrics.update({k: v for k, v in state.history[-1].items() if k.startswith("loss") or k == "lr"})
        for iou_type, stats in (results or {}).items():
            metrics.update({f"{iou_type}_{k}": v for k, v in stats.items() if k != "per_category"})
        evaluation = fresh_evaluation(self.trainer)
        metrics.update({f"val_{k}": v for k, v in (evaluation.losses if evaluation is not None else {}).items()})
        calibrated = self.calibration.fresh() if self.calibration is not None else None
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if self.rank == 0:
                path = self._save(Path(tmp) / CHECKPOINT_FILE, results or {}, calibrated)
                if self.register is not None and self.best is not None and self.best.improved:
                    self.register(path, thresholds=calibrated.thresholds if calibrated is not None else None)
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            # A unique name per report: a final report can come at the same iteration as a periodic one.
            state.reports += 1
            name = f"checkpoint_{state.iteration:07d}_{state.reports:04d}"
            ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=name)

    def _save(self, path: Path, results: Mapping[str, Mapping[str, Any]], calibrated) -> Path:
        from mrcnn.checkpoint import save_checkpoint

        trainer = self.trainer
        ap = {f"{iou_type}_AP": results[iou_type]["AP"] if iou_type in results else None for iou_type in ("segm", "keypoints")}
        thresholds = {"thresholds": calibrated.to_dict()} if calibrated is not None else {}
        return save_checkpoint(
            path,
            model=trainer.model,
            config=self.cfg,
            categories=self.categories,
            metadata={"iteration": trainer.state.iteration, **ap, "run": self.key, **thresholds},
            training_state={
                "optimizer": trainer.optimizer.state_dict(),
                "scaler": trainer.scaler.state_dict() if trainer.scaler is not None else None,
                "loop_state": json.dumps(trainer.state.state_dict()),
            },
        )


def register_best(tracker, run: TrainRunConfig, state: RunState) -> Callable[..., Any]:
    """``register(path, thresholds=None)`` for :class:`RayReport`: the checkpoint becomes a version of
    ``run.model_name``, tagged with its selection metric (``state.best_metric_name``), with its per-class
    score thresholds ``{category_id: score}`` (``thresholds.json`` in the MLflow model)."""

    def register(path: Path, thresholds: Mapping[int, float] | None = None):
        from pipelines.tracking import register_checkpoint

        return register_checkpoint(tracker, path, model_name=run.model_name, segm_ap=state.best_metric,
                                   tracking_uri=run.tracking_uri, ap_tag=state.best_metric_name,
                                   thresholds=thresholds)  # fmt: skip

    return register


class MlflowTracking(HookBase):
    """Rank 0's MLflow run: evaluations as they come; loss curves, val overlays, the final evaluation's
    report and FINISHED at the end; FAILED when the loop raises.

    Args:
        val: ``(images, targets, gt)`` of the val shards, or None; categories, device: for the overlays.
        num_overlays: val images drawn with their detections and logged under ``images/``.
        calibration: the threshold hook: the final evaluation's report (:func:`mrcnn.report.write_report`,
            logged under ``report/``) uses its thresholds for the confusion matrices; iou_types: the report's.
        metrics: the :class:`pipelines.tracking.MetricBuffer` that the per-step metrics are written to (None:
            they are sent unbuffered); this hook sends what it holds at every evaluation, every
            ``flush_every`` steps (the checkpoints: a killed worker loses at most the steps a resume trains
            again), at the end and on failure, each time before the run's own logging.
    """

    def __init__(self, tracker, *, val=None, categories=None, device=None, num_overlays: int = 0,
                 calibration: ThresholdCalibration | None = None, iou_types: Sequence[str] = ("bbox", "segm"),
                 metrics=None, flush_every: int = 0):  # fmt: skip
        self.tracker = tracker
        self.metrics = metrics
        self.flush_every = flush_every
        self.val = val
        self.categories = categories
        self.device = device
        self.num_overlays = num_overlays
        self.calibration = calibration
        self.iou_types = tuple(iou_types)
        self._logged_at = -1

    def after_step(self) -> None:
        iteration = self.trainer.state.iteration
        if fresh_eval(self.trainer) is not None or (self.flush_every and iteration % self.flush_every == 0):
            self._flush()
        self._log_eval()

    def after_train(self) -> None:
        self._flush()
        self._log_eval()
        evaluation = fresh_evaluation(self.trainer)
        if evaluation is not None and self.val is not None:
            self._log_report(evaluation)
        self.tracker.log_figure_loss_curves(self.trainer.state.history, "plots/loss_curves.png")
        if self.val is not None and self.num_overlays:
            _log_overlays(self.tracker, self.trainer.model, self.val, self.categories, self.device, self.num_overlays)
        self.tracker.end("FINISHED")

    def on_failure(self, exc: BaseException) -> None:
        try:
            self._flush()  # the steps before the failure stay in the history
        finally:
            self.tracker.end("FAILED")

    def _flush(self) -> None:
        if self.metrics is not None:
            self.metrics.flush()

    def _log_eval(self) -> None:
        results = fresh_eval(self.trainer)
        if results is not None and self._logged_at != self.trainer.state.iteration:
            self._logged_at = self.trainer.state.iteration
            self.tracker.log_eval(results, step=self.trainer.state.iteration)

    def _log_report(self, evaluation) -> None:
        """The evaluation report (per-class AP/AR, PR curves, confusion matrices) and the calibrated thresholds
        (``report/thresholds.json``) as artifacts under ``report/``."""
        from mrcnn.report import write_report

        calibrated = self.calibration.fresh() if self.calibration is not None else None
        names = {c.id: c.name for c in self.categories.categories} if self.categories is not None else None
        with tempfile.TemporaryDirectory(prefix="mrcnn-report-") as tmp:
            write_report(tmp, self.val[2], evaluation.results, iou_types=self.iou_types, category_names=names,
                         **({"score_threshold": calibrated.thresholds} if calibrated is not None else {}))  # fmt: skip
            if calibrated is not None:
                (Path(tmp) / "thresholds.json").write_text(json.dumps(calibrated.to_dict(), indent=1))
            self.tracker.log_artifact(tmp, "report")


def _log_overlays(tracker, model, val, categories, device, count: int) -> None:
    import numpy as np
    import torch

    from mrcnn.predictor import detections_to_records
    from mrcnn.visualize import save_overlay

    module = model.module if hasattr(model, "module") else model
    module.eval()
    images = val[0][:count]
    with torch.no_grad():
        detections = module([img.to(device) for img in images]).detections
    with tempfile.TemporaryDirectory() as tmp:
        for i, (image, det) in enumerate(zip(images, detections)):
            rgb = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            records = detections_to_records({k: v.cpu() for k, v in det.items()}, categories)
            records = [r for r in records if r["score"] >= 0.5]
            save_overlay(Path(tmp) / f"val_{i}.png", rgb, records, skeletons=categories.skeletons)
        tracker.log_images(tmp)


def check_hook_specs(specs: Sequence[HookSpec]) -> list[HookSpec]:
    """Normalise ``specs`` (strings become ``{"factory": ..., "kwargs": {}}``).

    Raises:
        ValueError: a spec is not a HookBase, ``module:name``, a mapping with such a ``factory``, or a callable.
    """
    checked: list[HookSpec] = []
    for spec in specs:
        if isinstance(spec, HookBase) or callable(spec):
            checked.append(spec)
            continue
        if isinstance(spec, str):
            spec = {"factory": spec}
        if not isinstance(spec, Mapping) or set(spec) - {"factory", "kwargs"}:
            raise ValueError(f"train hook {spec!r}: expected a HookBase, 'module:name', "
                             "{'factory': 'module:name', 'kwargs': {...}} or a callable")  # fmt: skip
        module, sep, name = str(spec.get("factory", "")).partition(":")
        if not (module and sep and name):
            raise ValueError(f"train hook {spec!r}: factory must be 'module:name', e.g. 'tests.pipelines.train_hooks:FailOnce'")
        checked.append({"factory": spec["factory"], "kwargs": dict(spec.get("kwargs") or {})})
    return checked


def build_hooks(specs: Sequence[HookSpec]) -> list[HookBase]:
    """Call every spec's factory (on a worker: imported there) and check it gave a HookBase.

    Raises:
        TypeError: a factory returned something else.
    """
    hooks = []
    for spec in specs:
        if isinstance(spec, HookBase):
            hook = spec
        elif callable(spec):
            hook = spec()
        else:
            module, _, name = spec["factory"].partition(":")
            hook = getattr(importlib.import_module(module), name)(**spec.get("kwargs", {}))
        if not isinstance(hook, HookBase):
            raise TypeError(f"train hook {spec!r}: the factory returned {type(hook).__name__}, expected a HookBase")
        hooks.append(hook)
    return hooks
