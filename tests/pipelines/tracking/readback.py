"""Reading MLflow back through a fresh ``MlflowClient``, not through the Tracker that wrote it."""

from __future__ import annotations


def fresh_client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def artifact_paths(client, run_id: str, path: str | None = None) -> set[str]:
    """Every file path in a run's artifacts, recursively."""
    found = set()
    for info in client.list_artifacts(run_id, path):
        found |= artifact_paths(client, run_id, info.path) if info.is_dir else {info.path}
    return found
