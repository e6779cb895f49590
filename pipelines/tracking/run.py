"""What rank 0 of training logs to one MLflow run: params from the config, per-step losses, COCO AP,
artifacts and the loss-curve PNG.

A training run is identified by a *run key* (the Ray Train run name + storage path); starting again with
the same key continues the same MLflow run.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.common.figures import write_png
from pipelines.tracking.store import (
    GIT_COMMIT_TAG,
    MAX_METRICS_PER_BATCH,
    MAX_PARAMS_PER_BATCH,
    PARENT_RUN_TAG,
    RUN_KEY_TAG,
    chunks,
    find_run_by_key,
    get_or_create_experiment,
    get_run,
    mlflow_client,
    param_value,
    sanitize_key,
    set_tags,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from mrcnn.config import Config

RUN_STATUSES = ("FINISHED", "FAILED", "KILLED")
# The image files Tracker.log_images logs from a folder (lower-case suffixes): the ones MLflow's UI shows.
ARTIFACT_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_PROJECT_DIR = Path(__file__).resolve().parents[2]



class Tracker:
    """One MLflow run of one training run, logged from rank 0 only.

    Every call goes through an explicit ``MlflowClient`` with this run's id, so there is no active
    run and no global tracking URI: several trackers (or a tracker and Serve) can live in one process.
    Use :meth:`start` to create one; it is also a context manager that ends the run FINISHED, or
    FAILED when the block raises.
    """

    def __init__(self, client: MlflowClient, *, tracking_uri: str, run_id: str, experiment_id: str, resumed: bool):
        self._client = client
        self.tracking_uri = tracking_uri
        self._run_id = run_id
        self.experiment_id = experiment_id
        self.resumed = resumed

    @property
    def run_id(self) -> str:
        return self._run_id

    @property
    def client(self) -> MlflowClient:
        return self._client

    def __repr__(self) -> str:
        return f"Tracker(run_id={self._run_id!r}, tracking_uri={self.tracking_uri!r}, resumed={self.resumed})"

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.end("FINISHED" if exc_type is None else ("KILLED" if exc_type is KeyboardInterrupt else "FAILED"))

    # -- start / end ---------------------------------------------------------------------------

    @classmethod
    def start(
        cls,
        tracking_uri: str,
        experiment: str,
        run_name: str,
        *,
        run_id: str | None = None,
        tags: Mapping[str, Any] | None = None,
        run_key: str | None = None,
        parent_run_id: str | None = None,
    ) -> Tracker:
        """Create or resume the MLflow run of a training run.

        Args:
            tracking_uri: an MLflow server (``http://...``) or store URI (see :func:`default_tracking_uri`).
            experiment: experiment name; created when missing (in a local SQLite store its artifacts
                go to ``mlartifacts/<experiment>`` beside the database).
            run_name: the MLflow run name (shown in the UI).
            run_id: resume exactly this run (it must exist in ``experiment``'s store).
            tags: run tags (set on create and on resume).
            run_key: what identifies the training run across restarts (tag ``mrcnn.run_key``);
                default ``run_name``. A run with this key is resumed instead of creating a duplicate.
            parent_run_id: nest this run under that run (tag ``mlflow.parentRunId``), as the child
                runs of ``mrcnn ablate`` are under its parent run.

        Raises:
            ValueError: ``run_id`` or ``parent_run_id`` is given but no such run exists, or the run key
                cannot be searched.
        """
        if not experiment:
            raise ValueError("experiment: expected a non-empty name")
        if not run_name and not run_id:
            raise ValueError("run_name: expected a non-empty name (it is the run key) or a run_id")
        client = mlflow_client(tracking_uri)
        run_key = run_key or run_name
        experiment_id = get_or_create_experiment(client, experiment, tracking_uri)

        existing = None
        if run_id:
            existing = get_run(client, run_id, f"run {run_id!r}: no such run in {tracking_uri}")
        elif run_key:
            existing = find_run_by_key(client, experiment_id, run_key)

        run_tags = {RUN_KEY_TAG: run_key} if run_key else {}
        if parent_run_id:
            get_run(client, parent_run_id, f"parent run {parent_run_id!r}: no such run in {tracking_uri}")
            run_tags[PARENT_RUN_TAG] = parent_run_id
        run_tags.update({k: str(v) for k, v in (tags or {}).items()})
        run_tags = {sanitize_key(k): v for k, v in run_tags.items()}
        if existing is not None:
            resumed_id = existing.info.run_id
            client.update_run(resumed_id, status="RUNNING")
            if run_key and existing.data.tags.get(RUN_KEY_TAG) not in (None, run_key):
                # The key of a run resumed by id stays what it was: two keys for one run would split it.
                run_tags.pop(RUN_KEY_TAG)
            set_tags(client, resumed_id, run_tags)
            return cls(client, tracking_uri=tracking_uri, run_id=resumed_id,
                       experiment_id=existing.info.experiment_id, resumed=True)  # fmt: skip
        run = client.create_run(experiment_id, run_name=run_name, tags=run_tags)
        return cls(client, tracking_uri=tracking_uri, run_id=run.info.run_id, experiment_id=experiment_id, resumed=False)

    @classmethod
    def attach(cls, tracking_uri: str, run_id: str) -> Tracker:
        """A Tracker on an existing run, leaving its status as it is (to tag or end a run another process made).

        Raises:
            ValueError: no such run.
        """
        client = mlflow_client(tracking_uri)
        run = get_run(client, run_id, f"run {run_id!r}: no such run in {tracking_uri}")
        return cls(client, tracking_uri=tracking_uri, run_id=run_id, experiment_id=run.info.experiment_id, resumed=True)

    def end(self, status: str = "FINISHED") -> None:
        """Mark the run ended: ``FINISHED``, ``FAILED`` or ``KILLED``."""
        if status not in RUN_STATUSES:
            raise ValueError(f"run status: expected one of {list(RUN_STATUSES)}, got {status!r}")
        self._client.set_terminated(self._run_id, status=status)

    # -- params --------------------------------------------------------------------------------

    def log_params(self, params: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
        """Log flat params (keys sanitized, values ``str``-ed and cut to 6000 chars).

        MLflow params are immutable. On resume a key already logged with the same value is skipped;
        a key logged with a *different* value is not re-logged (MLflow would refuse) but returned and
        reported in a warning.

        Returns:
            ``{key: (logged value, new value)}`` for the keys whose value changed.
        """
        from mlflow.entities import Param

        logged = self._client.get_run(self._run_id).data.params
        new: dict[str, str] = {}
        changed: dict[str, tuple[str, str]] = {}
        for raw_key, raw_value in params.items():
            key, value = sanitize_key(raw_key), param_value(raw_value)
            if key in logged:
                if logged[key] != value:
                    changed[key] = (logged[key], value)
            elif key in new and new[key] != value:
                raise ValueError(f"params: keys {raw_key!r} and another key both become {key!r} with different values")
            else:
                new[key] = value
        for batch in chunks([Param(k, v) for k, v in new.items()], MAX_PARAMS_PER_BATCH):
            self._client.log_batch(self._run_id, params=batch)
        if changed:
            shown = ", ".join(f"{k}: {old!r} -> {val!r}" for k, (old, val) in list(changed.items())[:5])
            warnings.warn(
                f"MLflow run {self._run_id}: {len(changed)} param(s) differ from the values logged before "
                f"and keep their first value ({shown})",
                stacklevel=2,
            )
        return changed

    def log_config(self, cfg: Config, artifact_file: str = "config.yaml") -> None:
        """The config as flat params (``model.rpn.nms_thresh``...) and as a YAML (or ``.json``) artifact."""
        from mrcnn.config import flatten

        data = cfg.to_dict()
        self.log_params(flatten(data))
        self._client.log_dict(self._run_id, data, artifact_file)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        set_tags(self._client, self._run_id, {sanitize_key(k): str(v) for k, v in tags.items()})

    def set_git_commit(self) -> str | None:
        """Tag ``mlflow.source.git.commit`` with the project's ``git rev-parse HEAD``; None (nothing set) without git.

        A job submitted with ``mrcnn submit`` runs from an uploaded copy without ``.git``: the commit it
        was submitted from comes in ``MRCNN_GIT_COMMIT`` (``+dirty`` when the copy had local changes).
        """
        submitted = os.environ.get("MRCNN_GIT_COMMIT", "").strip()
        if re.fullmatch(r"[0-9a-f]{40,64}(\+dirty)?", submitted):
            commit = submitted.removesuffix("+dirty")
            self._client.set_tag(self._run_id, GIT_COMMIT_TAG, commit)
            if submitted.endswith("+dirty"):
                self._client.set_tag(self._run_id, "mrcnn.git_dirty", "true")
            return commit
        try:
            result = subprocess.run(
                ["git", "-C", str(_PROJECT_DIR), "rev-parse", "HEAD"],
                capture_output=True, text=True, timeout=10, check=False,
            )  # fmt: skip
        except (OSError, subprocess.SubprocessError):
            return None
        commit = result.stdout.strip()
        if result.returncode != 0 or not re.fullmatch(r"[0-9a-f]{40,64}", commit):
            return None
        self._client.set_tag(self._run_id, GIT_COMMIT_TAG, commit)
        return commit

    # -- metrics -------------------------------------------------------------------------------

    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        """Log scalar metrics at ``step`` (keys sanitized; values anything ``float()`` takes; None skipped).

        One call to the store per call (per step, in training): :class:`~pipelines.tracking.MetricBuffer`
        gathers many steps into one.
        """
        self.log_metric_entries(self.metric_entries(metrics, step))

    @staticmethod
    def metric_entries(metrics: Mapping[str, Any], step: int) -> list:
        """``metrics`` at ``step`` as ``mlflow.entities.Metric`` entries (keys sanitized, None skipped), stamped
        now (milliseconds since the epoch).

        Raises:
            ValueError: a value ``float()`` does not take (names the key and the step).
        """
        from mlflow.entities import Metric

        timestamp = int(time.time() * 1000)
        entries = []
        for key, value in metrics.items():
            if value is None:
                continue
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise ValueError(f"metric {key!r} at step {step}: expected a number, got {value!r}") from None
            entries.append(Metric(sanitize_key(key), number, timestamp, int(step)))
        return entries

    def log_metric_entries(self, entries: list) -> None:
        """Send ``Metric`` entries (any steps) to the run, in ``log_batch`` calls of at most
        ``MAX_METRICS_PER_BATCH``."""
        for batch in chunks(entries, MAX_METRICS_PER_BATCH):
            self._client.log_batch(self._run_id, metrics=batch)

    def log_eval(self, metrics: Mapping[str, Mapping[str, Any]], step: int, *, prefix: str = "") -> dict[str, float]:
        """Log ``mrcnn.evaluation.evaluate_coco`` output at ``step``.

        Names: ``segm/AP``, ``bbox/AP50``... and ``segm_per_category/<category name>``, each after ``prefix``
        (``evaluate/val/`` gives ``evaluate/val/segm/AP``). Values of -1 (pycocotools' "no ground truth for
        this") are skipped.

        Returns:
            The flat ``{name: value}`` that was logged.
        """
        flat: dict[str, float] = {}
        for iou_type, stats in metrics.items():
            for name, value in stats.items():
                if name == "per_category":
                    for category, ap in (value or {}).items():
                        if ap is not None and float(ap) >= 0:
                            flat[sanitize_key(f"{prefix}{iou_type}_per_category/{category}")] = float(ap)
                elif isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
                    flat[sanitize_key(f"{prefix}{iou_type}/{name}")] = float(value)
        self.log_metrics(flat, step)
        return flat

    # -- artifacts -----------------------------------------------------------------------------

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """Log a file, or a directory's contents, under ``artifact_path`` of the run."""
        path = Path(path)
        if path.is_dir():
            self._client.log_artifacts(self._run_id, str(path), artifact_path)
        elif path.is_file():
            self._client.log_artifact(self._run_id, str(path), artifact_path)
        else:
            raise FileNotFoundError(f"artifact {path}: no such file or directory")

    def log_images(self, directory: str | os.PathLike, artifact_path: str = "images") -> int:
        """Log the PNG/JPEG files directly in ``directory`` under ``artifact_path``; returns how many."""
        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"images directory {directory}: no such directory")
        files = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in ARTIFACT_IMAGE_SUFFIXES)
        for file in files:
            self._client.log_artifact(self._run_id, str(file), artifact_path)
        return len(files)

    def log_figure_loss_curves(
        self, history: list[Mapping[str, Any]], path: str | os.PathLike, artifact_path: str = "plots"
    ) -> Path:
        """Plot every ``loss*`` term and ``lr`` over iterations to a PNG at ``path`` and log it.

        Args:
            history: one record per step, as ``mrcnn.engine.TrainState.history``:
                ``{"iteration": int, "lr": float, "loss": float, "loss_*": float...}``
                (``step`` is accepted for ``iteration``; without either the record's index is used).
        """
        path = write_loss_curves_png(history, path)
        self._client.log_artifact(self._run_id, str(path), artifact_path)
        return path


def write_loss_curves_png(history: list[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """The loss-curve figure of :meth:`Tracker.log_figure_loss_curves`, written without pyplot (Agg)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not history:
        raise ValueError("loss curves: the training history is empty")
    iterations = [float(r.get("iteration", r.get("step", i))) for i, r in enumerate(history)]
    loss_names = sorted({k for r in history for k in r if k.startswith("loss")}, key=lambda k: (k != "loss", k))
    if not loss_names:
        raise ValueError(f"loss curves: no 'loss*' key in the history records (keys: {sorted(history[0])})")

    def series(key: str) -> tuple[list[float], list[float]]:
        pairs = [(x, float(r[key])) for x, r in zip(iterations, history) if r.get(key) is not None]
        return [p[0] for p in pairs], [p[1] for p in pairs]

    figure = Figure(figsize=(9, 7), dpi=100)
    FigureCanvasAgg(figure)
    loss_axes, lr_axes = figure.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    all_positive = True
    for name in loss_names:
        xs, ys = series(name)
        all_positive &= all(y > 0 and math.isfinite(y) for y in ys)
        loss_axes.plot(xs, ys, label=name, linewidth=2.0 if name == "loss" else 1.0)
    if all_positive:
        loss_axes.set_yscale("log")
    loss_axes.set_ylabel("loss")
    loss_axes.legend(fontsize="small", ncol=2)
    loss_axes.grid(True, alpha=0.3)
    xs, ys = series("lr")
    if xs:
        lr_axes.plot(xs, ys, color="black")
    lr_axes.set_ylabel("lr")
    lr_axes.set_xlabel("iteration")
    lr_axes.grid(True, alpha=0.3)
    return write_png(figure, path)

