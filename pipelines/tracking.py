"""MLflow tracking and model selection: the one module of the project that imports mlflow.

Three parts:

- :class:`Tracker`: what rank 0 of training logs to one MLflow run (params from the config, per-step
  losses, COCO AP, artifacts, loss-curve PNG). A training run is identified by a *run key* (the Ray
  Train run name + storage path); starting again with the same key continues the same MLflow run.
- :func:`register_checkpoint`: a checkpoint file becomes a version of a registered model; the alias
  ``best`` points at the version with the highest segm AP.
- :func:`resolve_model_uri` / :func:`describe_model`: ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``,
  ``runs:/RUN_ID/path``, ``mlflow-artifacts:`` / ``file:`` URIs and local paths to a local checkpoint
  file, for batch segmentation and Serve.

Every function takes the tracking URI explicitly; :func:`default_tracking_uri` gives the embedded
default (a SQLite file and an artifact folder in the working folder) when ``MLFLOW_TRACKING_URI`` is
not set. mlflow is imported inside the functions, so importing this module costs nothing.
"""

from __future__ import annotations

import math
import os
import posixpath
import re
import subprocess
import tempfile
import time
import urllib.parse
import uuid
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from mrcnn.config import Config

RUN_KEY_TAG = "mrcnn.run_key"
SEGM_AP_TAG = "segm_AP"
BEST_ALIAS = "best"
GIT_COMMIT_TAG = "mlflow.source.git.commit"
PARENT_RUN_TAG = "mlflow.parentRunId"  # how MLflow nests a child run under its parent
RUN_STATUSES = ("FINISHED", "FAILED", "KILLED")
CHECKPOINT_SUFFIXES = (".ckpt", ".pt", ".pth")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
ARTIFACTS_DIRNAME = "mlartifacts"
DB_FILENAME = "mlflow.db"

# MLflow's limits (mlflow.utils.validation).
MAX_PARAM_VALUE_LENGTH = 6000
MAX_KEY_LENGTH = 250
MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000

_NOT_FOUND_CODES = ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND")
_ALREADY_EXISTS_CODES = ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS")
_PROJECT_DIR = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------
# Tracking URIs and stores


def default_tracking_uri(workdir: str | os.PathLike = ".") -> str:
    """``MLFLOW_TRACKING_URI`` when set, else the embedded default ``sqlite:///<abs workdir>/mlflow.db``.

    With the embedded default, experiments that :meth:`Tracker.start` creates keep their artifacts in
    ``<workdir>/mlartifacts`` (never in the current directory).
    """
    env_uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if env_uri:
        return env_uri
    return f"sqlite:///{Path(workdir).resolve() / DB_FILENAME}"


def _sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for other URIs and in-memory databases)."""
    if not tracking_uri.startswith("sqlite:"):
        return None
    path = urllib.parse.urlparse(tracking_uri).path
    if not path or path == "/:memory:" or path == "/":
        return None
    # sqlite:///rel/x.db -> path "/rel/x.db" is relative; sqlite:////abs/x.db -> "//abs/x.db".
    return Path(path[1:]).resolve()


def local_artifact_root(tracking_uri: str) -> Path | None:
    """Where experiments created in a local SQLite store keep artifacts: ``mlartifacts/`` beside the db."""
    db_path = _sqlite_path(tracking_uri)
    return db_path.parent / ARTIFACTS_DIRNAME if db_path is not None else None


def _client(tracking_uri: str | None) -> MlflowClient:
    from mlflow import MlflowClient

    if tracking_uri:
        db_path = _sqlite_path(tracking_uri)
        if db_path is not None:
            db_path.parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=tracking_uri)


def _error_code(exc: BaseException) -> str:
    return str(getattr(exc, "error_code", ""))


def _is_not_found(exc: BaseException) -> bool:
    return _error_code(exc) in _NOT_FOUND_CODES


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line[:limit]


# ----------------------------------------------------------------------------------------------
# Names


def sanitize_key(key: str) -> str:
    """A param/metric/tag key MLflow accepts: ``[/\\w.\\- ]`` only, no ``..``/empty segments, <= 250 chars.

    ``"segm per-category/traffic light"`` stays as is; ``"bbox/AP@50"`` becomes ``"bbox/AP_50"``.
    """
    key = re.sub(r"[^/\w.\- ]", "_", str(key))
    segments = [s for s in key.split("/") if s not in ("", ".")]
    segments = ["_" if s == ".." else s for s in segments]
    key = "/".join(segments) or "_"
    return key[:MAX_KEY_LENGTH].rstrip("/")


def _param_value(value: Any) -> str:
    """How MLflow stores a param value (``str``), cut to its length limit."""
    text = str(value)
    if len(text) > MAX_PARAM_VALUE_LENGTH:
        text = text[: MAX_PARAM_VALUE_LENGTH - 3] + "..."
    return text


def _filter_literal(value: str) -> str:
    """A quoted string literal for an MLflow search filter."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise ValueError(f"run key {value!r}: cannot contain both ' and \" (it is used in an MLflow search filter)")


def _chunks(items: list, size: int) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# ----------------------------------------------------------------------------------------------
# The training run


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
        client = _client(tracking_uri)
        run_key = run_key or run_name
        experiment_id = _get_or_create_experiment(client, experiment, tracking_uri)

        existing = None
        if run_id:
            try:
                existing = client.get_run(run_id)
            except Exception as exc:
                if _is_not_found(exc):
                    raise ValueError(f"run {run_id!r}: no such run in {tracking_uri}") from None
                raise
        elif run_key:
            existing = _find_run_by_key(client, experiment_id, run_key)

        run_tags = {RUN_KEY_TAG: run_key} if run_key else {}
        if parent_run_id:
            try:
                client.get_run(parent_run_id)
            except Exception as exc:
                if _is_not_found(exc):
                    raise ValueError(f"parent run {parent_run_id!r}: no such run in {tracking_uri}") from None
                raise
            run_tags[PARENT_RUN_TAG] = parent_run_id
        run_tags.update({k: str(v) for k, v in (tags or {}).items()})
        run_tags = {sanitize_key(k): v for k, v in run_tags.items()}
        if existing is not None:
            resumed_id = existing.info.run_id
            client.update_run(resumed_id, status="RUNNING")
            if run_key and existing.data.tags.get(RUN_KEY_TAG) not in (None, run_key):
                # The key of a run resumed by id stays what it was: two keys for one run would split it.
                run_tags.pop(RUN_KEY_TAG)
            _set_tags(client, resumed_id, run_tags)
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
        client = _client(tracking_uri)
        try:
            run = client.get_run(run_id)
        except Exception as exc:
            if _is_not_found(exc):
                raise ValueError(f"run {run_id!r}: no such run in {tracking_uri}") from None
            raise
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
            key, value = sanitize_key(raw_key), _param_value(raw_value)
            if key in logged:
                if logged[key] != value:
                    changed[key] = (logged[key], value)
            elif key in new and new[key] != value:
                raise ValueError(f"params: keys {raw_key!r} and another key both become {key!r} with different values")
            else:
                new[key] = value
        for batch in _chunks([Param(k, v) for k, v in new.items()], MAX_PARAMS_PER_BATCH):
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
        _set_tags(self._client, self._run_id, {sanitize_key(k): str(v) for k, v in tags.items()})

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
        """Log scalar metrics at ``step`` (keys sanitized; values anything ``float()`` takes; None skipped)."""
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
        for batch in _chunks(entries, MAX_METRICS_PER_BATCH):
            self._client.log_batch(self._run_id, metrics=batch)

    def log_eval(self, metrics: Mapping[str, Mapping[str, Any]], step: int) -> dict[str, float]:
        """Log ``mrcnn.evaluation.evaluate_coco`` output at ``step``.

        Names: ``segm/AP``, ``bbox/AP50``... and ``segm_per_category/<category name>``. Values of -1
        (pycocotools' "no ground truth for this") are skipped.

        Returns:
            The flat ``{name: value}`` that was logged.
        """
        flat: dict[str, float] = {}
        for iou_type, stats in metrics.items():
            for name, value in stats.items():
                if name == "per_category":
                    for category, ap in (value or {}).items():
                        if ap is not None and float(ap) >= 0:
                            flat[sanitize_key(f"{iou_type}_per_category/{category}")] = float(ap)
                elif isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
                    flat[sanitize_key(f"{iou_type}/{name}")] = float(value)
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
        files = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
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


def _get_or_create_experiment(client: MlflowClient, name: str, tracking_uri: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            raise ValueError(f"experiment {name!r} in {tracking_uri} is deleted; restore it or pick another name")
        return experiment.experiment_id
    artifact_location = None
    root = local_artifact_root(tracking_uri)
    if root is not None:
        artifact_location = (root / (re.sub(r"[^\w.\-]+", "_", name).strip(".") or "experiment")).as_uri()
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except Exception as exc:  # another process created it between the lookup and the create
        if _error_code(exc) in _ALREADY_EXISTS_CODES:
            return client.get_experiment_by_name(name).experiment_id
        raise


def _find_run_by_key(client: MlflowClient, experiment_id: str, run_key: str):
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{RUN_KEY_TAG}` = {_filter_literal(run_key)}",
        order_by=["attributes.start_time ASC"],
        max_results=10,
    )
    runs = [r for r in runs if r.data.tags.get(RUN_KEY_TAG) == run_key]
    if len(runs) > 1:
        warnings.warn(
            f"{len(runs)} MLflow runs have {RUN_KEY_TAG}={run_key!r}; resuming the oldest, {runs[0].info.run_id}",
            stacklevel=3,
        )
    return runs[0] if runs else None


def child_runs(tracking_uri: str, parent_run_id: str, *, run_name: str | None = None) -> list[dict[str, Any]]:
    """The runs nested under ``parent_run_id`` (tag ``mlflow.parentRunId``), oldest first.

    Returns:
        one ``{"run_id", "run_name", "status", "params", "metrics", "tags"}`` per child run (``run_name``:
        only the children with that name).
    """
    client = _client(tracking_uri)
    parent = client.get_run(parent_run_id)
    runs = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`{PARENT_RUN_TAG}` = {_filter_literal(parent_run_id)}",
        order_by=["attributes.start_time ASC"],
        max_results=1000,
    )
    return [
        {"run_id": r.info.run_id, "run_name": r.info.run_name, "status": r.info.status, "params": dict(r.data.params),
         "metrics": dict(r.data.metrics), "tags": dict(r.data.tags)}
        for r in runs
        if run_name is None or r.info.run_name == run_name
    ]  # fmt: skip


def _set_tags(client: MlflowClient, run_id: str, tags: Mapping[str, str]) -> None:
    from mlflow.entities import RunTag

    entries = [RunTag(k, v) for k, v in tags.items()]
    for batch in _chunks(entries, MAX_PARAMS_PER_BATCH):
        client.log_batch(run_id, tags=batch)


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
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path


# ----------------------------------------------------------------------------------------------
# The registry


@dataclass(frozen=True)
class RegistrationResult:
    """A registered checkpoint.

    version: the new model version (as MLflow numbers them, "1", "2"...).
    alias_moved: whether ``best`` now points at this version.
    best_version: the version holding ``best`` after the registration.
    model_uri: ``models:/NAME/VERSION``.
    source: the version's source, ``runs:/RUN_ID/checkpoints/...``.
    """

    version: str
    alias_moved: bool
    best_version: str
    model_uri: str
    source: str
    run_id: str


def register_checkpoint(
    tracker_or_run_id: Tracker | str,
    checkpoint_path: str | os.PathLike,
    *,
    model_name: str,
    segm_ap: float,
    tracking_uri: str | None = None,
    alias: str = BEST_ALIAS,
    ap_tag: str = SEGM_AP_TAG,
) -> RegistrationResult:
    """Log a checkpoint to its run and register it; move ``best`` to it if its segm AP is the highest.

    The file goes to the run's artifacts at ``checkpoints/<stem>-<id>/<file name>`` (a folder per
    registration, so a later ``best.ckpt`` never overwrites what an earlier version points at); the
    version's source is that folder as a ``runs:/`` URI, and it is tagged ``segm_AP``.

    Args:
        tracker_or_run_id: the training run (a Tracker, or a run id with ``tracking_uri``).
        segm_ap: the checkpoint's segm AP (percent, as ``evaluate_coco`` reports it).
        tracking_uri: default: the tracker's.
        alias: the alias that follows the highest AP.
        ap_tag: the version tag that holds ``segm_ap`` and that the alias follows: ``segm_AP``, or
            ``keypoints_AP`` for a keypoint model (whose ``segm_ap`` argument is then its keypoint AP).

    Returns:
        The version and whether the alias moved (it moves only on a strictly higher AP than the
        version holding it, or when no version holds it).
    """
    if isinstance(tracker_or_run_id, Tracker):
        run_id = tracker_or_run_id.run_id
        tracking_uri = tracking_uri or tracker_or_run_id.tracking_uri
    else:
        run_id = str(tracker_or_run_id)
    if not tracking_uri:
        raise ValueError("register_checkpoint: tracking_uri is required with a run id")
    checkpoint_path = Path(checkpoint_path)
    if not checkpoint_path.is_file():
        raise FileNotFoundError(f"checkpoint {checkpoint_path}: no such file")
    if not model_name or "/" in model_name or ":" in model_name:
        raise ValueError(f"model name {model_name!r}: expected a non-empty name without '/' or ':'")
    try:
        segm_ap = float(segm_ap)
    except (TypeError, ValueError):
        raise ValueError(f"segm_ap: expected a number, got {segm_ap!r}") from None
    if not math.isfinite(segm_ap):
        raise ValueError(f"segm_ap: expected a finite number, got {segm_ap!r}")

    client = _client(tracking_uri)
    try:
        client.get_run(run_id)
    except Exception as exc:
        if _is_not_found(exc):
            raise ValueError(f"run {run_id!r}: no such run in {tracking_uri}") from None
        raise
    artifact_dir = f"checkpoints/{sanitize_key(checkpoint_path.stem)}-{uuid.uuid4().hex[:8]}"
    client.log_artifact(run_id, str(checkpoint_path), artifact_dir)
    source = f"runs:/{run_id}/{artifact_dir}"

    try:
        client.create_registered_model(model_name)
    except Exception as exc:
        if _error_code(exc) not in _ALREADY_EXISTS_CODES:
            raise
    version = client.create_model_version(
        model_name,
        source,
        run_id=run_id,
        tags={ap_tag: repr(segm_ap), "checkpoint": checkpoint_path.name},
        description=f"{checkpoint_path.name}, {ap_tag.replace('_', ' ')} {segm_ap:.2f}",
    )
    holder = _version_by_alias(client, model_name, alias)
    holder_ap = _tag_float(holder.tags, ap_tag) if holder is not None else None
    moved = holder is None or holder_ap is None or segm_ap > holder_ap
    if moved:
        client.set_registered_model_alias(model_name, alias, version.version)
    return RegistrationResult(
        version=str(version.version),
        alias_moved=moved,
        best_version=str(version.version if moved else holder.version),
        model_uri=f"models:/{model_name}/{version.version}",
        source=source,
        run_id=run_id,
    )


def _version_by_alias(client: MlflowClient, name: str, alias: str):
    try:
        return client.get_model_version_by_alias(name, alias)
    except Exception as exc:
        if _is_not_found(exc) or _error_code(exc) == "INVALID_PARAMETER_VALUE":
            return None
        raise


def _tag_float(tags: Mapping[str, str] | None, key: str) -> float | None:
    try:
        value = float((tags or {})[key])
    except (KeyError, TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


# ----------------------------------------------------------------------------------------------
# Model URIs


@dataclass(frozen=True)
class _ModelRef:
    name: str
    version: str | None
    alias: str | None


def _parse_models_uri(uri: str) -> _ModelRef:
    body = uri[len("models:") :].lstrip("/")
    if "/" in body:
        name, version = body.split("/", 1)
        if not name or not (version.isdigit() or version == "latest"):
            raise ValueError(f"model URI {uri!r}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
        return _ModelRef(name=name, version=version, alias=None)
    if "@" in body:
        name, alias = body.rsplit("@", 1)
        if not name or not alias:
            raise ValueError(f"model URI {uri!r}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
        return _ModelRef(name=name, version=None, alias=alias)
    raise ValueError(f"model URI {uri!r}: expected models:/NAME@ALIAS or models:/NAME/VERSION")


def _get_model_version(client: MlflowClient, uri: str, ref: _ModelRef):
    """The ModelVersion a models:/ URI names; ValueError for an unknown model, version or alias."""
    try:
        client.get_registered_model(ref.name)
    except Exception as exc:
        if _is_not_found(exc):
            raise ValueError(f"model URI {uri!r}: no registered model named {ref.name!r}") from None
        raise
    if ref.alias is not None:
        version = _version_by_alias(client, ref.name, ref.alias)
        if version is None:
            raise ValueError(f"model URI {uri!r}: model {ref.name!r} has no alias {ref.alias!r}")
        return version
    if ref.version == "latest":
        versions = client.search_model_versions(f"name = {_filter_literal(ref.name)}")
        if not versions:
            raise ValueError(f"model URI {uri!r}: model {ref.name!r} has no versions")
        return max(versions, key=lambda v: int(v.version))
    try:
        return client.get_model_version(ref.name, ref.version)
    except Exception as exc:
        if _is_not_found(exc):
            raise ValueError(f"model URI {uri!r}: model {ref.name!r} has no version {ref.version}") from None
        raise


def _parse_runs_uri(uri: str) -> tuple[str, str]:
    body = uri[len("runs:") :].lstrip("/")
    run_id, _, path = body.partition("/")
    if not run_id:
        raise ValueError(f"run URI {uri!r}: expected runs:/RUN_ID/path/to/file.ckpt")
    return run_id, path.strip("/")


def _checkpoint_in(path: Path, uri: str) -> Path:
    """``path`` if a file; the one checkpoint (or the one file) in it if a directory."""
    if path.is_file():
        return path
    if not path.is_dir():
        raise ValueError(f"model URI {uri!r}: downloaded {path}, which is neither a file nor a directory")
    files = sorted(p for p in path.rglob("*") if p.is_file())
    checkpoints = [p for p in files if p.suffix in CHECKPOINT_SUFFIXES]
    if len(checkpoints) == 1:
        return checkpoints[0]
    if not checkpoints and len(files) == 1:
        return files[0]
    found = [str(p.relative_to(path)) for p in (checkpoints or files)][:5]
    raise ValueError(
        f"model URI {uri!r}: expected one checkpoint file in the artifacts, found {len(checkpoints or files)} {found}"
    )


def _download_run_artifact(client: MlflowClient, uri: str, run_id: str, path: str, dst_dir: Path) -> Path:
    try:
        client.get_run(run_id)
    except Exception as exc:
        if _is_not_found(exc):
            raise ValueError(f"model URI {uri!r}: no such run {run_id!r}") from None
        raise
    parent = posixpath.dirname(path)
    listed = {info.path for info in client.list_artifacts(run_id, parent or None)}
    if path and path not in listed:
        raise ValueError(f"model URI {uri!r}: run {run_id} has no artifact {path!r}")
    try:
        local = client.download_artifacts(run_id, path, dst_path=str(dst_dir))
    except Exception as exc:
        raise ValueError(f"model URI {uri!r}: download failed ({_one_line(exc)})") from None
    return _checkpoint_in(Path(local), uri)


def _download_source(client: MlflowClient, uri: str, source: str, tracking_uri: str | None, dst_dir: Path) -> Path:
    if source.startswith("runs:"):
        run_id, path = _parse_runs_uri(source)
        return _download_run_artifact(client, uri, run_id, path, dst_dir)
    local = _local_path_of(source)
    if local is not None:
        if not local.exists():
            raise ValueError(f"model URI {uri!r}: no such file {local}")
        return _checkpoint_in(local, uri)
    import mlflow.artifacts

    try:
        downloaded = mlflow.artifacts.download_artifacts(
            artifact_uri=source, dst_path=str(dst_dir), tracking_uri=tracking_uri
        )
    except Exception as exc:
        raise ValueError(f"model URI {uri!r}: cannot download {source!r} ({_one_line(exc)})") from None
    return _checkpoint_in(Path(downloaded), uri)


def _local_path_of(uri: str) -> Path | None:
    """The local path of a ``file:`` URI or a scheme-less path; None for other schemes."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme == "file":
        return Path(urllib.parse.unquote(parsed.path))
    if parsed.scheme == "" or (len(parsed.scheme) == 1 and os.name == "nt"):  # c:\... on Windows
        return Path(uri)
    return None


def resolve_model_uri(
    uri: str | os.PathLike, *, tracking_uri: str | None = None, dst_dir: str | os.PathLike | None = None
) -> Path:
    """A local checkpoint file for a model URI.

    Args:
        uri: ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` (or ``/latest``), ``runs:/RUN_ID/path``,
            an ``mlflow-artifacts:``/``http(s):``/``s3:``... URI, a ``file:`` URI or a local path
            (local files are returned as they are, nothing is copied).
        tracking_uri: the MLflow server or store (default: ``MLFLOW_TRACKING_URI``).
        dst_dir: where downloads go (default: a new temporary directory).

    Raises:
        ValueError: one line naming the URI and why: unknown model, no such alias or version, no such
            run, missing file, or not exactly one checkpoint in the artifacts.
    """
    uri = str(uri)
    local = _local_path_of(uri)
    if local is not None:
        if not local.exists():
            raise ValueError(f"model URI {uri!r}: no such file")
        return _checkpoint_in(local, uri)
    tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or None
    dst = Path(dst_dir) if dst_dir is not None else Path(tempfile.mkdtemp(prefix="mrcnn-model-"))
    dst.mkdir(parents=True, exist_ok=True)
    scheme = urllib.parse.urlparse(uri).scheme
    if scheme == "models":
        client = _client(tracking_uri)
        version = _get_model_version(client, uri, _parse_models_uri(uri))
        source = client.get_model_version_download_uri(version.name, version.version) or version.source
        return _download_source(client, uri, source, tracking_uri, dst)
    if scheme == "runs":
        run_id, path = _parse_runs_uri(uri)
        return _download_run_artifact(_client(tracking_uri), uri, run_id, path, dst)
    return _download_source(_client(tracking_uri), uri, uri, tracking_uri, dst)


def describe_model(uri: str | os.PathLike, tracking_uri: str | None = None) -> dict[str, Any]:
    """What a model URI points at, for Serve's ``/info``: nothing is downloaded.

    Returns:
        ``{"uri", "name", "version", "alias", "run_id", "source", "segm_AP"}``; keys that do not apply
        (or are unknown) are None. ``segm_AP`` comes from the version's tag, or for a ``runs:/`` URI
        from the run's latest ``segm/AP`` metric.

    Raises:
        ValueError: as :func:`resolve_model_uri` for an unknown model, alias, version or run.
    """
    uri = str(uri)
    info: dict[str, Any] = {"uri": uri, "name": None, "version": None, "alias": None,
                            "run_id": None, "source": None, "segm_AP": None}  # fmt: skip
    scheme = urllib.parse.urlparse(uri).scheme
    tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or None
    if scheme == "models":
        ref = _parse_models_uri(uri)
        version = _get_model_version(_client(tracking_uri), uri, ref)
        info.update(name=version.name, version=str(version.version), alias=ref.alias, run_id=version.run_id or None,
                    source=version.source, segm_AP=_tag_float(version.tags, SEGM_AP_TAG))  # fmt: skip
    elif scheme == "runs":
        run_id, path = _parse_runs_uri(uri)
        client = _client(tracking_uri)
        try:
            run = client.get_run(run_id)
        except Exception as exc:
            if _is_not_found(exc):
                raise ValueError(f"model URI {uri!r}: no such run {run_id!r}") from None
            raise
        info.update(run_id=run_id, source=uri, segm_AP=run.data.metrics.get("segm/AP"))
    else:
        info["source"] = uri
    return info
