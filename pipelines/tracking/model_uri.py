"""Model URIs to local checkpoint files, for batch segmentation and Serve.

A registered version is an MLflow Model (:mod:`pipelines.tracking.pyfunc`): its weights-only checkpoint
file (``artifacts/model.ckpt``) is what resolves. A version registered before that (a run-artifact folder
holding the raw training checkpoint) resolves to that checkpoint; both load with ``load_checkpoint``.

``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` (or ``/latest``), ``runs:/RUN_ID/path``,
``mlflow-artifacts:`` / ``http(s):`` / ``s3:`` URIs, ``file:`` URIs and local paths: :func:`resolve_model_uri`
gives the checkpoint file, :func:`describe_model` says what the URI points at without downloading, and
:func:`model_thresholds` reads the per-class score thresholds an MLflow Model stores beside that file.
"""

from __future__ import annotations

import json
import os
import posixpath
import tempfile
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.tracking.registry import SEGM_AP_TAG, tag_float, version_by_alias
from pipelines.tracking.store import (
    env_tracking_uri,
    filter_literal,
    found_or_raise,
    get_run,
    mlflow_client,
    one_line,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient

CHECKPOINT_SUFFIXES = (".ckpt", ".pt", ".pth")
MLMODEL_FILENAME = "MLmodel"  # the file that makes a folder an MLflow Model
WEIGHTS_ARTIFACT = "weights"  # the pyfunc artifacts of pipelines.tracking.pyfunc's model
THRESHOLDS_ARTIFACT = "thresholds"



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
    found_or_raise(lambda: client.get_registered_model(ref.name),
                   f"model URI {uri!r}: no registered model named {ref.name!r}")  # fmt: skip
    if ref.alias is not None:
        version = version_by_alias(client, ref.name, ref.alias)
        if version is None:
            raise ValueError(f"model URI {uri!r}: model {ref.name!r} has no alias {ref.alias!r}")
        return version
    if ref.version == "latest":
        versions = client.search_model_versions(f"name = {filter_literal(ref.name)}")
        if not versions:
            raise ValueError(f"model URI {uri!r}: model {ref.name!r} has no versions")
        return max(versions, key=lambda v: int(v.version))
    return found_or_raise(lambda: client.get_model_version(ref.name, ref.version),
                          f"model URI {uri!r}: model {ref.name!r} has no version {ref.version}")  # fmt: skip


def _parse_runs_uri(uri: str) -> tuple[str, str]:
    body = uri[len("runs:") :].lstrip("/")
    run_id, _, path = body.partition("/")
    if not run_id:
        raise ValueError(f"run URI {uri!r}: expected runs:/RUN_ID/path/to/file.ckpt")
    return run_id, path.strip("/")


def _checkpoint_in(path: Path, uri: str) -> Path:
    """``path`` if a file; the weights-only checkpoint of an MLflow Model folder; else the one checkpoint
    (or the one file) in a directory (a raw checkpoint registered before models were MLflow Models)."""
    if path.is_file():
        return path
    if not path.is_dir():
        raise ValueError(f"model URI {uri!r}: downloaded {path}, which is neither a file nor a directory")
    if (path / MLMODEL_FILENAME).is_file():
        from pipelines.tracking.pyfunc import weights_in_model_dir  # imports mlflow

        try:
            return weights_in_model_dir(path)
        except ValueError as exc:
            raise ValueError(f"model URI {uri!r}: {exc}") from None
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


def pyfunc_artifacts(model_dir: str | os.PathLike) -> dict[str, Path]:
    """The artifacts of an MLflow Model folder's python_function flavor, ``{name: path}`` (paths inside
    ``model_dir``); {} where the folder has no MLmodel or no such flavor."""
    import yaml

    model_dir = Path(model_dir)
    try:
        flavor = yaml.safe_load((model_dir / MLMODEL_FILENAME).read_text())["flavors"]["python_function"]
        return {name: model_dir / entry["path"] for name, entry in (flavor.get("artifacts") or {}).items()}
    except (OSError, KeyError, TypeError, AttributeError, yaml.YAMLError):
        return {}


def read_thresholds(path: str | os.PathLike | None) -> dict[int, float] | None:
    """Per-class score thresholds from a ``thresholds.json`` (``{category_id: score}``); None without a file.

    Raises:
        ValueError: the file is not a JSON object of category id -> number.
    """
    if path is None or not Path(path).is_file():
        return None
    try:
        raw = json.loads(Path(path).read_text())
        return {int(k): float(v) for k, v in raw.items()}
    except (ValueError, TypeError, AttributeError) as exc:
        raise ValueError(f"thresholds {path}: expected a JSON object of category id -> score ({exc})") from None


def model_thresholds(checkpoint: str | os.PathLike) -> dict[int, float] | None:
    """The per-class score thresholds ``{category_id: score}`` stored with a resolved model: the
    ``thresholds.json`` of the MLflow Model folder whose weights ``checkpoint`` is. None where ``checkpoint``
    is not such a model's weights, or its model has no thresholds artifact: a checkpoint's own metadata
    (``mrcnn.thresholds.stored_class_thresholds``, what ``Predictor.from_checkpoint`` reads) then applies.

    Raises:
        ValueError: the model's thresholds file is not a JSON object of category id -> number.
    """
    checkpoint = Path(checkpoint).resolve()
    for folder in list(checkpoint.parents)[:3]:  # MODEL/artifacts/model.ckpt
        if (folder / MLMODEL_FILENAME).is_file():
            artifacts = pyfunc_artifacts(folder)
            weights = artifacts.get(WEIGHTS_ARTIFACT)
            if weights is None or weights.resolve() != checkpoint:
                return None
            return read_thresholds(artifacts.get(THRESHOLDS_ARTIFACT))
    return None


def _download_run_artifact(client: MlflowClient, uri: str, run_id: str, path: str, dst_dir: Path) -> Path:
    get_run(client, run_id, f"model URI {uri!r}: no such run {run_id!r}")
    parent = posixpath.dirname(path)
    listed = {info.path for info in client.list_artifacts(run_id, parent or None)}
    if path and path not in listed:
        raise ValueError(f"model URI {uri!r}: run {run_id} has no artifact {path!r}")
    try:
        local = client.download_artifacts(run_id, path, dst_path=str(dst_dir))
    except Exception as exc:
        raise ValueError(f"model URI {uri!r}: download failed ({one_line(exc)})") from None
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
        raise ValueError(f"model URI {uri!r}: cannot download {source!r} ({one_line(exc)})") from None
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
    """A local checkpoint file for a model URI (the weights-only checkpoint inside an MLflow Model).

    Args:
        uri: ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` (or ``/latest``), ``runs:/RUN_ID/path``,
            an ``mlflow-artifacts:``/``http(s):``/``s3:``... URI, a ``file:`` URI or a local path
            (local files are returned as they are, nothing is copied).
        tracking_uri: the MLflow server or store (default: ``MLFLOW_TRACKING_URI``).
        dst_dir: where downloads go (default: a new temporary directory).

    Raises:
        ValueError: one line naming the URI and why: unknown model, no such alias or version, no such
            run, missing file, an MLflow Model without weights, or not exactly one checkpoint in the artifacts.
    """
    uri = str(uri)
    local = _local_path_of(uri)
    if local is not None:
        if not local.exists():
            raise ValueError(f"model URI {uri!r}: no such file")
        return _checkpoint_in(local, uri)
    tracking_uri = env_tracking_uri(tracking_uri)
    dst = Path(dst_dir) if dst_dir is not None else Path(tempfile.mkdtemp(prefix="mrcnn-model-"))
    dst.mkdir(parents=True, exist_ok=True)
    scheme = urllib.parse.urlparse(uri).scheme
    if scheme == "models":
        client = mlflow_client(tracking_uri)
        version = _get_model_version(client, uri, _parse_models_uri(uri))
        source = client.get_model_version_download_uri(version.name, version.version) or version.source
        return _download_source(client, uri, source, tracking_uri, dst)
    if scheme == "runs":
        run_id, path = _parse_runs_uri(uri)
        return _download_run_artifact(mlflow_client(tracking_uri), uri, run_id, path, dst)
    return _download_source(mlflow_client(tracking_uri), uri, uri, tracking_uri, dst)


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
    tracking_uri = env_tracking_uri(tracking_uri)
    if scheme == "models":
        ref = _parse_models_uri(uri)
        version = _get_model_version(mlflow_client(tracking_uri), uri, ref)
        info.update(name=version.name, version=str(version.version), alias=ref.alias, run_id=version.run_id or None,
                    source=version.source, segm_AP=tag_float(version.tags, SEGM_AP_TAG))  # fmt: skip
    elif scheme == "runs":
        run_id, path = _parse_runs_uri(uri)
        run = get_run(mlflow_client(tracking_uri), run_id, f"model URI {uri!r}: no such run {run_id!r}")
        info.update(run_id=run_id, source=uri, segm_AP=run.data.metrics.get("segm/AP"))
    else:
        info["source"] = uri
    return info
