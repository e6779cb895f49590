"""The MLflow store: tracking URIs (the embedded SQLite default), artifact roots, the client, its error
codes, the names MLflow accepts, and the run and experiment look-ups the rest of the package shares.

mlflow is imported inside the functions, so importing this module costs nothing.
"""

from __future__ import annotations

import os
import re
import urllib.parse
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from mlflow import MlflowClient

T = TypeVar("T")

RUN_KEY_TAG = "mrcnn.run_key"
GIT_COMMIT_TAG = "mlflow.source.git.commit"
PARENT_RUN_TAG = "mlflow.parentRunId"  # how MLflow nests a child run under its parent
ARTIFACTS_DIRNAME = "mlartifacts"
DB_FILENAME = "mlflow.db"

# MLflow's limits (mlflow.utils.validation).
MAX_PARAM_VALUE_LENGTH = 6000
MAX_KEY_LENGTH = 250
MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000

_NOT_FOUND_CODES = ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND")
_ALREADY_EXISTS_CODES = ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS")


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


def env_tracking_uri(tracking_uri: str | None) -> str | None:
    """``tracking_uri``, else ``MLFLOW_TRACKING_URI``, else None (MLflow's own default)."""
    return tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or None


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


def mlflow_client(tracking_uri: str | None) -> MlflowClient:
    """An ``MlflowClient`` on ``tracking_uri`` (None: MLflow's default); a SQLite store's folder is created."""
    from mlflow import MlflowClient

    if tracking_uri:
        db_path = _sqlite_path(tracking_uri)
        if db_path is not None:
            db_path.parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=tracking_uri)


# ----------------------------------------------------------------------------------------------
# MLflow's errors


def error_code(exc: BaseException) -> str:
    """The ``error_code`` of an MLflow exception (``RESOURCE_DOES_NOT_EXIST``...); "" for other errors."""
    return str(getattr(exc, "error_code", ""))


def is_not_found(exc: BaseException) -> bool:
    return error_code(exc) in _NOT_FOUND_CODES


def is_already_exists(exc: BaseException) -> bool:
    return error_code(exc) in _ALREADY_EXISTS_CODES


def found_or_raise(fetch: Callable[[], T], message: str) -> T:
    """``fetch()``, with MLflow's "does not exist" turned into ``ValueError(message)``.

    Every other error passes through as it is. ``message`` names what was asked for and where, e.g.
    ``"run 'abc': no such run in sqlite:///..."``.
    """
    try:
        return fetch()
    except Exception as exc:
        if is_not_found(exc):
            raise ValueError(message) from None
        raise


def get_run(client: MlflowClient, run_id: str, message: str):
    """The ``mlflow.entities.Run`` with id ``run_id``; ``ValueError(message)`` when there is none."""
    return found_or_raise(lambda: client.get_run(run_id), message)


def one_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (its type name when empty), at most ``limit`` characters."""
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


def param_value(value: Any) -> str:
    """How MLflow stores a param value (``str``), cut to its length limit."""
    text = str(value)
    if len(text) > MAX_PARAM_VALUE_LENGTH:
        text = text[: MAX_PARAM_VALUE_LENGTH - 3] + "..."
    return text


def filter_literal(value: str) -> str:
    """A quoted string literal for an MLflow search filter."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise ValueError(f"run key {value!r}: cannot contain both ' and \" (it is used in an MLflow search filter)")


def chunks(items: list, size: int) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# ----------------------------------------------------------------------------------------------
# Experiments and runs


def get_or_create_experiment(client: MlflowClient, name: str, tracking_uri: str) -> str:
    """The id of experiment ``name``, created when missing (in a local SQLite store with its artifacts in
    ``mlartifacts/<name>`` beside the database); ValueError for a deleted one."""
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
        if is_already_exists(exc):
            return client.get_experiment_by_name(name).experiment_id
        raise


def find_run_by_key(client: MlflowClient, experiment_id: str, run_key: str):
    """The oldest run of the experiment tagged ``mrcnn.run_key=run_key`` (a warning when several are), or None."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{RUN_KEY_TAG}` = {filter_literal(run_key)}",
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
    client = mlflow_client(tracking_uri)
    parent = client.get_run(parent_run_id)
    runs = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`{PARENT_RUN_TAG}` = {filter_literal(parent_run_id)}",
        order_by=["attributes.start_time ASC"],
        max_results=1000,
    )
    return [
        {"run_id": r.info.run_id, "run_name": r.info.run_name, "status": r.info.status, "params": dict(r.data.params),
         "metrics": dict(r.data.metrics), "tags": dict(r.data.tags)}
        for r in runs
        if run_name is None or r.info.run_name == run_name
    ]  # fmt: skip


def set_tags(client: MlflowClient, run_id: str, tags: Mapping[str, str]) -> None:
    """Set run tags in batches of MLflow's size limit (keys as given: sanitize them first)."""
    from mlflow.entities import RunTag

    entries = [RunTag(k, v) for k, v in tags.items()]
    for batch in chunks(entries, MAX_PARAMS_PER_BATCH):
        client.log_batch(run_id, tags=batch)
