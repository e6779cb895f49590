"""The model registry: a checkpoint file becomes an MLflow Model (:mod:`pipelines.tracking.pyfunc`) and a
version of a registered model, and the alias ``best`` follows the version with the highest AP (segm AP, or
keypoint AP for a keypoint model)."""

from __future__ import annotations

import math
import os
import tempfile
import urllib.parse
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.tracking.run import Tracker
from pipelines.tracking.store import error_code, get_run, is_already_exists, is_not_found, mlflow_client, sanitize_key

if TYPE_CHECKING:
    from mlflow import MlflowClient

SEGM_AP_TAG = "segm_AP"
BEST_ALIAS = "best"


@dataclass(frozen=True)
class RegistrationResult:
    """A registered checkpoint.

    version: the new model version (as MLflow numbers them, "1", "2"...).
    alias_moved: whether ``best`` now points at this version.
    best_version: the version holding ``best`` after the registration.
    model_uri: ``models:/NAME/VERSION``.
    source: the version's source: the logged MLflow Model, ``models:/MODEL_ID`` through a tracking server,
        its artifact location in an in-process store (``runs:/RUN_ID/checkpoints/...`` for a raw checkpoint
        registered the way versions were before).
    run_id: the training run.
    model_id: the logged model's id, ``models:/MODEL_ID`` in MLflow (None for a raw checkpoint).
    """

    version: str
    alias_moved: bool
    best_version: str
    model_uri: str
    source: str
    run_id: str
    model_id: str | None = None


def register_checkpoint(
    tracker_or_run_id: Tracker | str,
    checkpoint_path: str | os.PathLike,
    *,
    model_name: str,
    segm_ap: float,
    tracking_uri: str | None = None,
    alias: str = BEST_ALIAS,
    ap_tag: str = SEGM_AP_TAG,
    thresholds: Mapping[int, float] | None = None,
) -> RegistrationResult:
    """Log a checkpoint's MLflow Model to its run and register it; move ``best`` to it if its AP is the highest.

    The model (:mod:`pipelines.tracking.pyfunc`: a pyfunc flavor wrapping ``mrcnn.Predictor``, with the
    weights only, the config and the category map) is a logged model of the run (``models:/m-ID``), and
    the new version's source is that model. The checkpoint file itself, with its training state, is not
    uploaded: it stays where training wrote it. The version is tagged ``ap_tag`` and ``checkpoint``.

    Args:
        tracker_or_run_id: the training run (a Tracker, or a run id with ``tracking_uri``).
        checkpoint_path: an mrcnn checkpoint file (training state, if any, is dropped).
        segm_ap: the checkpoint's segm AP (percent, as ``evaluate_coco`` reports it).
        tracking_uri: default: the tracker's.
        alias: the alias that follows the highest AP.
        ap_tag: the version tag that holds ``segm_ap`` and that the alias follows: ``segm_AP``, or
            ``keypoints_AP`` for a keypoint model (whose ``segm_ap`` argument is then its keypoint AP).
        thresholds: per-class score thresholds {category_id: score}, stored with the model.

    Returns:
        The version and whether the alias moved (it moves only on a strictly higher AP than the
        version holding it, or when no version holds it).

    Raises:
        FileNotFoundError: no such checkpoint file.
        ValueError: a bad model name, a non-finite AP, or an unknown run.
        mrcnn.checkpoint.CheckpointError: the file is not a checkpoint that fits its config.
    """
    run_id, tracking_uri = _run_of(tracker_or_run_id, tracking_uri)
    checkpoint_path = _checked_inputs(checkpoint_path, model_name)
    segm_ap = _finite_ap(segm_ap)
    client = mlflow_client(tracking_uri)
    run = get_run(client, run_id, f"run {run_id!r}: no such run in {tracking_uri}")
    tags = {ap_tag: repr(segm_ap), "checkpoint": checkpoint_path.name}
    logged = _log_pyfunc_model(client, run, checkpoint_path, model_name, tags, thresholds)
    return _create_version(client, model_name, _logged_model_source(tracking_uri, logged), run_id, segm_ap,
                           checkpoint_path.name, alias=alias, ap_tag=ap_tag, model_id=logged.model_id)  # fmt: skip


def _logged_model_source(tracking_uri: str, logged) -> str:
    """The version source naming a logged model: ``models:/MODEL_ID`` through a tracking server. An
    in-process store (SQLite, files) gets the model's artifact location instead: MLflow's in-process SQL
    registry resolves ``models:/MODEL_ID`` through its process-global tracking URI, which need not be this
    store (the server resolves it in its own store)."""
    if urllib.parse.urlparse(tracking_uri).scheme in ("http", "https", "databricks"):
        return f"models:/{logged.model_id}"
    return logged.artifact_location


def _run_of(tracker_or_run_id: Tracker | str, tracking_uri: str | None) -> tuple[str, str]:
    if isinstance(tracker_or_run_id, Tracker):
        return tracker_or_run_id.run_id, tracking_uri or tracker_or_run_id.tracking_uri
    if not tracking_uri:
        raise ValueError("register_checkpoint: tracking_uri is required with a run id")
    return str(tracker_or_run_id), tracking_uri


def _checked_inputs(checkpoint_path: str | os.PathLike, model_name: str) -> Path:
    checkpoint_path = Path(checkpoint_path)
    if not checkpoint_path.is_file():
        raise FileNotFoundError(f"checkpoint {checkpoint_path}: no such file")
    if not model_name or "/" in model_name or ":" in model_name:
        raise ValueError(f"model name {model_name!r}: expected a non-empty name without '/' or ':'")
    return checkpoint_path


def _log_pyfunc_model(client: MlflowClient, run, checkpoint_path: Path, name: str, tags: dict[str, str],
                      thresholds: Mapping[int, float] | None):  # fmt: skip
    """Write the checkpoint's MLflow Model and log it as a logged model of ``run``; the LoggedModel."""
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus
    from mlflow.models import Model

    from pipelines.tracking.pyfunc import save_pyfunc_model

    run_id = run.info.run_id
    logged = client.create_logged_model(run.info.experiment_id, name=name, source_run_id=run_id, tags=tags)
    try:
        with tempfile.TemporaryDirectory(prefix="mrcnn-register-") as tmp:
            mlflow_model = Model(artifact_path=logged.artifact_location, model_uuid=logged.model_id, run_id=run_id,
                                 model_id=logged.model_id)  # fmt: skip
            local = save_pyfunc_model(checkpoint_path, Path(tmp) / "model", mlflow_model=mlflow_model,
                                      thresholds=dict(thresholds) if thresholds is not None else None)  # fmt: skip
            client.log_model_artifacts(logged.model_id, str(local))
    except BaseException:
        client.finalize_logged_model(logged.model_id, LoggedModelStatus.FAILED)
        raise
    client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
    client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
    return logged


def _log_checkpoint_artifact(client: MlflowClient, run_id: str, checkpoint_path: Path) -> str:
    """How versions were registered before MLflow Models: the raw checkpoint file as a run artifact at
    ``checkpoints/<stem>-<id>/<file name>`` (a folder per registration); its folder as a ``runs:/`` URI.
    Kept to register (and test loading) such versions."""
    artifact_dir = f"checkpoints/{sanitize_key(checkpoint_path.stem)}-{uuid.uuid4().hex[:8]}"
    client.log_artifact(run_id, str(checkpoint_path), artifact_dir)
    return f"runs:/{run_id}/{artifact_dir}"


def _create_version(client: MlflowClient, model_name: str, source: str, run_id: str, segm_ap: float,
                    checkpoint_name: str, *, alias: str, ap_tag: str, model_id: str | None) -> RegistrationResult:  # fmt: skip
    """A new version of ``model_name`` from ``source``, tagged with its AP; ``alias`` moves to it on a higher AP."""
    try:
        client.create_registered_model(model_name)
    except Exception as exc:
        if not is_already_exists(exc):
            raise
    version = client.create_model_version(
        model_name,
        source,
        run_id=run_id,
        tags={ap_tag: repr(segm_ap), "checkpoint": checkpoint_name},
        description=f"{checkpoint_name}, {ap_tag.replace('_', ' ')} {segm_ap:.2f}",
        model_id=model_id,
    )
    holder = version_by_alias(client, model_name, alias)
    holder_ap = tag_float(holder.tags, ap_tag) if holder is not None else None
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
        model_id=model_id,
    )


def _finite_ap(segm_ap: Any) -> float:
    """``segm_ap`` as a finite float; ValueError naming the value otherwise."""
    try:
        value = float(segm_ap)
    except (TypeError, ValueError):
        raise ValueError(f"segm_ap: expected a number, got {segm_ap!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"segm_ap: expected a finite number, got {value!r}")
    return value


def version_by_alias(client: MlflowClient, name: str, alias: str):
    """The ModelVersion that ``alias`` of model ``name`` points at; None when no version holds it."""
    try:
        return client.get_model_version_by_alias(name, alias)
    except Exception as exc:
        if is_not_found(exc) or error_code(exc) == "INVALID_PARAMETER_VALUE":
            return None
        raise


def tag_float(tags: Mapping[str, str] | None, key: str) -> float | None:
    """The tag ``key`` as a finite float; None when missing or not a finite number."""
    try:
        value = float((tags or {})[key])
    except (KeyError, TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None

