"""The store: importing the package costs no mlflow, the embedded default keeps everything in the working
folder, and MLflow's "does not exist" becomes one ValueError naming what was asked for."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mrcnn.checkpoint import load_checkpoint
from pipelines.tracking import Tracker, default_tracking_uri, describe_model, register_checkpoint, resolve_model_uri
from pipelines.tracking.store import found_or_raise
from tests.pipelines.tracking.readback import fresh_client


def test_import_does_not_import_mlflow():
    code = "import sys, pipelines.tracking; assert 'mlflow' not in sys.modules, 'mlflow imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_embedded_default_keeps_store_and_artifacts_in_the_workdir(tmp_path, monkeypatch, checkpoints):
    workdir, cwd = tmp_path / "work", tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    uri = default_tracking_uri(workdir)
    assert uri == f"sqlite:///{workdir.resolve() / 'mlflow.db'}"

    tracker = Tracker.start(uri, "embedded", "embedded-run")
    tracker.log_metrics({"loss": 1.0}, step=0)
    result = register_checkpoint(tracker, checkpoints[30.0], model_name="embedded-model", segm_ap=30.0)
    tracker.end()

    assert (workdir / "mlflow.db").is_file()
    run = fresh_client(uri).get_run(tracker.run_id)
    assert run.info.artifact_uri.startswith((workdir / "mlartifacts").resolve().as_uri())
    # The registered MLflow Model (weights only) is stored in the workdir; the checkpoint file is not uploaded.
    stored = list((workdir / "mlartifacts").rglob("MLmodel"))
    assert len(stored) == 1 and (stored[0].parent / "artifacts" / "model.ckpt").is_file()
    assert not list((workdir / "mlartifacts").rglob("best.ckpt"))
    resolved = resolve_model_uri("models:/embedded-model@best", tracking_uri=uri, dst_dir=tmp_path / "dl")
    assert load_checkpoint(resolved).metadata["segm_AP"] == 30.0
    assert result.alias_moved and describe_model("models:/embedded-model@best", tracking_uri=uri)["version"] == "1"
    assert list(cwd.iterdir()) == []  # nothing in the current directory: no ./mlruns, no ./mlflow.db

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert default_tracking_uri(workdir) == "http://mlflow.example:5000"


def test_found_or_raise_turns_only_not_found_into_one_value_error(tmp_path):
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    client = fresh_client(default_tracking_uri(tmp_path))
    experiment_id = client.create_experiment("found-or-raise")
    run_id = client.create_run(experiment_id).info.run_id
    assert found_or_raise(lambda: client.get_run(run_id), "unused").info.run_id == run_id
    with pytest.raises(ValueError, match=r"^run 'f+': no such run here$") as excinfo:
        found_or_raise(lambda: client.get_run("f" * 32), f"run {'f' * 32!r}: no such run here")
    assert excinfo.value.__cause__ is None and excinfo.value.__suppress_context__  # one line, no MLflow chain

    def refused():
        raise MlflowException("bad value", error_code=INVALID_PARAMETER_VALUE)

    with pytest.raises(MlflowException, match="bad value"):  # any other error passes through as it is
        found_or_raise(refused, "unused")
    with pytest.raises(OSError, match="disk full"):
        found_or_raise(lambda: (_ for _ in ()).throw(OSError("disk full")), "unused")
