"""The model registry and model URIs against a real ``mlflow server``: the ``best`` alias follows the highest
segm AP, and every kind of URI resolves to the checkpoint (or fails with one line naming it and why)."""

from __future__ import annotations

import pytest

from mrcnn.checkpoint import load_checkpoint
from pipelines.tracking import Tracker, describe_model, register_checkpoint, resolve_model_uri
from tests.pipelines.tracking.readback import artifact_paths, fresh_client


def test_registry_best_alias_follows_the_highest_segm_ap(server, checkpoints, tmp_path):
    uri = server.tracking_uri
    name = "mrcnn-synthetic"
    tracker = Tracker.start(uri, "tracking-registry", "registry-run")
    results = [register_checkpoint(tracker, path, model_name=name, segm_ap=ap, tracking_uri=uri)
               for ap, path in checkpoints.items()]  # fmt: skip
    tracker.end()
    assert [(r.version, r.alias_moved, r.best_version) for r in results] == [
        ("1", True, "1"), ("2", False, "1"), ("3", True, "3")
    ]  # fmt: skip

    client = fresh_client(uri)
    assert client.get_model_version_by_alias(name, "best").version == "3"
    versions = {v.version: v for v in client.search_model_versions(f"name = '{name}'")}
    assert {v: float(mv.tags["segm_AP"]) for v, mv in versions.items()} == {"1": 30.0, "2": 20.0, "3": 40.0}
    assert all(mv.run_id == tracker.run_id for mv in versions.values())
    # Each version has its own MLflow Model (a logged model of the run); the checkpoint is not uploaded.
    assert len({r.source for r in results}) == 3
    assert all(r.source == f"models:/{r.model_id}" == versions[r.version].source for r in results)
    assert {client.get_logged_model(r.model_id).source_run_id for r in results} == {tracker.run_id}
    assert not {p for p in artifact_paths(client, tracker.run_id) if p.endswith(".ckpt")}

    best = resolve_model_uri(f"models:/{name}@best", tracking_uri=uri, dst_dir=tmp_path / "best")
    assert best.is_file() and best.is_relative_to(tmp_path / "best")
    assert (best.parent.parent / "MLmodel").is_file()  # the weights file inside the downloaded MLflow Model
    loaded = load_checkpoint(best)
    assert loaded.metadata["segm_AP"] == 40.0 and loaded.training_state is None
    loaded.build_model()  # strict load: every weight made it through the server

    second = resolve_model_uri(f"models:/{name}/2", tracking_uri=uri, dst_dir=tmp_path / "v2")
    assert load_checkpoint(second).metadata["segm_AP"] == 20.0
    assert load_checkpoint(resolve_model_uri(f"models:/{name}/latest", tracking_uri=uri)).metadata["segm_AP"] == 40.0
    local = checkpoints[30.0]
    assert resolve_model_uri(local) == local and resolve_model_uri(str(local)) == local
    assert resolve_model_uri(local.as_uri()) == local
    model_dir = best.parent.parent
    assert resolve_model_uri(model_dir) == best  # a local MLflow Model folder resolves to its weights

    info = describe_model(f"models:/{name}@best", tracking_uri=uri)
    assert info == {"uri": f"models:/{name}@best", "name": name, "version": "3", "alias": "best",
                    "run_id": tracker.run_id, "source": results[2].source, "segm_AP": 40.0}  # fmt: skip
    assert describe_model(f"models:/{name}/2", tracking_uri=uri)["segm_AP"] == 20.0

    artifact_uri = client.get_run(tracker.run_id).info.artifact_uri  # mlflow-artifacts:/<exp>/<run>/artifacts
    bad = {
        "models:/no-such-model@best": "no registered model named 'no-such-model'",
        f"models:/{name}@champion": "has no alias 'champion'",
        f"models:/{name}/99": "has no version 99",
        f"models:/{name}/Production": "expected models:/NAME@ALIAS or models:/NAME/VERSION",
        "runs:/0123456789abcdef0123456789abcdef/best.ckpt": "no such run",
        f"runs:/{tracker.run_id}/checkpoints/missing.ckpt": "has no artifact 'checkpoints/missing.ckpt'",
        str(tmp_path / "missing.ckpt"): "no such file",
        f"{artifact_uri}/checkpoints/missing.ckpt": "cannot download",
    }
    for bad_uri, reason in bad.items():
        with pytest.raises(ValueError, match=reason) as excinfo:
            resolve_model_uri(bad_uri, tracking_uri=uri, dst_dir=tmp_path / "bad")
        message = str(excinfo.value)
        assert "\n" not in message and bad_uri in message
    with pytest.raises(ValueError, match="has no alias"):
        describe_model(f"models:/{name}@champion", tracking_uri=uri)



def test_versions_registered_as_raw_checkpoints_still_resolve(server, checkpoints, tmp_path):
    """Versions registered before models were MLflow Models (the raw checkpoint file as a run artifact, the
    version's source its ``runs:/`` folder) still resolve to that checkpoint, by every kind of URI."""
    from mrcnn.predictor import Predictor
    from pipelines.tracking.registry import _create_version, _log_checkpoint_artifact
    from pipelines.tracking.store import mlflow_client

    uri = server.tracking_uri
    name = "mrcnn-raw-checkpoints"
    tracker = Tracker.start(uri, "tracking-registry", "raw-checkpoint-run")
    client = mlflow_client(uri)
    results = []
    for ap, path in checkpoints.items():  # exactly what register_checkpoint did before
        source = _log_checkpoint_artifact(client, tracker.run_id, path)
        results.append(_create_version(client, name, source, tracker.run_id, ap, path.name, alias="best",
                                       ap_tag="segm_AP", model_id=None))  # fmt: skip
    tracker.end()
    assert [(r.version, r.best_version) for r in results] == [("1", "1"), ("2", "1"), ("3", "3")]
    assert all(r.source.startswith(f"runs:/{tracker.run_id}/checkpoints/best-") for r in results)
    client = fresh_client(uri)
    assert {p for p in artifact_paths(client, tracker.run_id) if p.endswith(".ckpt")} == {
        f"{r.source.split(tracker.run_id + '/', 1)[1]}/best.ckpt" for r in results
    }

    best = resolve_model_uri(f"models:/{name}@best", tracking_uri=uri, dst_dir=tmp_path / "best")
    assert best.name == "best.ckpt" and best.read_bytes() == checkpoints[40.0].read_bytes()
    assert Predictor.from_checkpoint(best).metadata["segm_AP"] == 40.0  # what every verb loads
    assert load_checkpoint(resolve_model_uri(f"models:/{name}/2", tracking_uri=uri)).metadata["segm_AP"] == 20.0
    run_file = f"{results[0].source}/best.ckpt"
    assert load_checkpoint(resolve_model_uri(run_file, tracking_uri=uri, dst_dir=tmp_path / "r")).metadata["segm_AP"] == 30.0
    run_dir = resolve_model_uri(results[1].source, tracking_uri=uri, dst_dir=tmp_path / "d")  # a folder with one ckpt
    assert load_checkpoint(run_dir).metadata["segm_AP"] == 20.0
    artifact_uri = client.get_run(tracker.run_id).info.artifact_uri  # mlflow-artifacts:/<exp>/<run>/artifacts
    assert artifact_uri.startswith("mlflow-artifacts:")
    proxied = f"{artifact_uri}/{run_file.split(tracker.run_id + '/', 1)[1]}"
    assert load_checkpoint(resolve_model_uri(proxied, tracking_uri=uri, dst_dir=tmp_path / "p")).metadata["segm_AP"] == 30.0
    info = describe_model(f"models:/{name}@best", tracking_uri=uri)
    assert info == {"uri": f"models:/{name}@best", "name": name, "version": "3", "alias": "best",
                    "run_id": tracker.run_id, "source": results[2].source, "segm_AP": 40.0}  # fmt: skip
