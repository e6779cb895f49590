"""The model registry: a checkpoint file becomes a version of a registered model, and the alias ``best``
follows the version with the highest AP (segm AP, or keypoint AP for a keypoint model)."""

from __future__ import annotations

import math
import os
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
    segm_ap = _finite_ap(segm_ap)

    client = mlflow_client(tracking_uri)
    get_run(client, run_id, f"run {run_id!r}: no such run in {tracking_uri}")
    artifact_dir = f"checkpoints/{sanitize_key(checkpoint_path.stem)}-{uuid.uuid4().hex[:8]}"
    client.log_artifact(run_id, str(checkpoint_path), artifact_dir)
    source = f"runs:/{run_id}/{artifact_dir}"

    try:
        client.create_registered_model(model_name)
    except Exception as exc:
        if not is_already_exists(exc):
            raise
    version = client.create_model_version(
        model_name,
        source,
        run_id=run_id,
        tags={ap_tag: repr(segm_ap), "checkpoint": checkpoint_path.name},
        description=f"{checkpoint_path.name}, {ap_tag.replace('_', ' ')} {segm_ap:.2f}",
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

