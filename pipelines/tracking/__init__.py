"""MLflow tracking and model selection: the one package of the project that imports mlflow.

- :mod:`~pipelines.tracking.store`: tracking URIs (:func:`default_tracking_uri`: a SQLite file and an
  artifact folder in the working folder when ``MLFLOW_TRACKING_URI`` is not set), the client, MLflow's
  errors and names, and the run look-ups (:func:`child_runs`).
- :mod:`~pipelines.tracking.run`: :class:`Tracker`, what rank 0 of training logs to one MLflow run
  (params from the config, per-step losses, COCO AP, artifacts, loss-curve PNG). A training run is
  identified by a *run key* (the Ray Train run name + storage path); starting again with the same key
  continues the same MLflow run.
- :mod:`~pipelines.tracking.metric_buffer`: :class:`MetricBuffer`, per-step metrics sent in batches (one
  ``log_batch`` per K steps or N seconds), with every step's value and step kept.
- :mod:`~pipelines.tracking.registry`: :func:`register_checkpoint`: a checkpoint file becomes an MLflow
  Model and a version of a registered model; the alias ``best`` points at the version with the highest segm AP.
- :mod:`~pipelines.tracking.pyfunc`: that MLflow Model, a pyfunc flavor wrapping ``mrcnn.Predictor``
  (importing it imports mlflow; it is not imported here).
- :mod:`~pipelines.tracking.model_uri`: :func:`resolve_model_uri` / :func:`describe_model`:
  ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``runs:/RUN_ID/path``, ``mlflow-artifacts:`` /
  ``file:`` URIs and local paths to a local checkpoint file (the weights file of an MLflow Model), for
  batch segmentation and Serve; :func:`model_thresholds`: the per-class score thresholds a resolved MLflow
  Model stores beside its weights.

Every function takes the tracking URI explicitly. mlflow is imported inside the functions, so importing
this package costs nothing.
"""

from pipelines.tracking.metric_buffer import MetricBuffer
from pipelines.tracking.model_uri import CHECKPOINT_SUFFIXES, describe_model, model_thresholds, resolve_model_uri
from pipelines.tracking.registry import BEST_ALIAS, SEGM_AP_TAG, RegistrationResult, register_checkpoint
from pipelines.tracking.run import ARTIFACT_IMAGE_SUFFIXES, RUN_STATUSES, Tracker, write_loss_curves_png
from pipelines.tracking.store import (
    ARTIFACTS_DIRNAME,
    DB_FILENAME,
    GIT_COMMIT_TAG,
    MAX_KEY_LENGTH,
    MAX_METRICS_PER_BATCH,
    MAX_PARAM_VALUE_LENGTH,
    MAX_PARAMS_PER_BATCH,
    PARENT_RUN_TAG,
    RUN_KEY_TAG,
    child_runs,
    default_tracking_uri,
    local_artifact_root,
    sanitize_key,
)

__all__ = [
    "ARTIFACTS_DIRNAME",
    "ARTIFACT_IMAGE_SUFFIXES",
    "BEST_ALIAS",
    "CHECKPOINT_SUFFIXES",
    "DB_FILENAME",
    "GIT_COMMIT_TAG",
    "MAX_KEY_LENGTH",
    "MAX_METRICS_PER_BATCH",
    "MAX_PARAMS_PER_BATCH",
    "MAX_PARAM_VALUE_LENGTH",
    "PARENT_RUN_TAG",
    "RUN_KEY_TAG",
    "RUN_STATUSES",
    "SEGM_AP_TAG",
    "MetricBuffer",
    "RegistrationResult",
    "Tracker",
    "child_runs",
    "default_tracking_uri",
    "describe_model",
    "local_artifact_root",
    "model_thresholds",
    "register_checkpoint",
    "resolve_model_uri",
    "sanitize_key",
    "write_loss_curves_png",
]
