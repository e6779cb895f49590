"""One kind of model reference everywhere: predict, eval, segment, evaluate and serve take a file,
``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` and ``runs:/RUN_ID/path`` with ``--model``, from a real
MLflow store (the embedded SQLite default); an unknown alias, version or run is one line, exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from pipelines.cli import build_parser, main
from tests.conftest import PHOTO

MODEL_NAME = "cli-refs"


@pytest.fixture(scope="module")
def store(tmp_path_factory, small_checkpoint):
    """``small_checkpoint`` registered as version 1 of ``cli-refs`` (alias ``best``) in a SQLite MLflow store.

    Yields: ``uri`` (the store), ``refs`` ({kind: reference}, every kind naming the same weights)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.delenv("MLFLOW_REGISTRY_URI", raising=False)
        mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        from pipelines.tracking import Tracker, default_tracking_uri, register_checkpoint

        uri = default_tracking_uri(tmp_path_factory.mktemp("store"))
        tracker = Tracker.start(uri, "cli-model-references", "register")
        registered = register_checkpoint(tracker, small_checkpoint, model_name=MODEL_NAME, segm_ap=12.5)
        tracker.log_artifact(small_checkpoint, "checkpoints")  # for a runs:/ reference to a file of the run
        tracker.end()
        assert (registered.version, registered.best_version) == ("1", "1")
        refs = {
            "file": str(small_checkpoint),
            "alias": f"models:/{MODEL_NAME}@best",
            "version": f"models:/{MODEL_NAME}/1",
            "run": f"runs:/{tracker.run_id}/checkpoints/{small_checkpoint.name}",
        }
        yield SimpleNamespace(uri=uri, refs=refs, run_id=tracker.run_id)


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("mrcnn: error:")]


def test_predict_takes_every_kind_of_reference(store, tmp_path):
    records = {}
    for kind, ref in store.refs.items():
        out = tmp_path / f"{kind}.json"
        argv = ["predict", str(PHOTO), "--model", ref, "--tracking-uri", store.uri, "--score-threshold", "0.0", "--out", str(out)]
        assert main(argv) == 0, kind
        records[kind] = json.loads(out.read_text())
    assert records["file"], "a random model at threshold 0 still gives detections"
    for kind in ("alias", "version", "run"):
        assert records[kind] == records["file"], f"{kind} reference: not the same model"


def test_eval_takes_every_kind_of_reference(store, synth_dataset, capsys):
    val = synth_dataset / "val"
    metrics = {}
    for kind, ref in store.refs.items():
        flag = "--weights" if kind == "version" else "--model"  # the older name still works
        argv = ["eval", flag, ref, "--tracking-uri", store.uri, "--annotations", str(val / "annotations.json"),
                "--images", str(val / "images"), "--score-threshold", "0.05", "--json"]  # fmt: skip
        assert main(argv) == 0, kind
        metrics[kind] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(metrics["file"]) == {"bbox", "segm"}
    for kind in ("alias", "version", "run"):
        assert metrics[kind] == metrics["file"], f"{kind} reference: not the same model"


def test_the_console_script_reads_the_store_from_the_environment(store, tmp_path):
    out = tmp_path / "env.json"
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "predict", str(PHOTO), "--model", store.refs["alias"], "--out", str(out)],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "MLFLOW_TRACKING_URI": store.uri, "MLFLOW_DISABLE_TELEMETRY": "true"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "detections on 1 images" in result.stdout


@pytest.mark.parametrize("verb", ["predict", "eval", "segment", "evaluate", "serve"])
@pytest.mark.parametrize("kind", ["file", "alias", "version", "run"])
def test_every_verb_parses_every_kind_of_reference(store, verb, kind):
    ref = store.refs[kind]
    rest = {"predict": ["x.jpg", "--out", "o.json"], "eval": [], "segment": ["--input", "in", "--out", "o"],
            "evaluate": ["--data", "shards", "--out", "o"], "serve": []}[verb]  # fmt: skip
    args = build_parser().parse_args([verb, *rest, "--model", ref, "--tracking-uri", store.uri])
    assert (args.model, args.tracking_uri) == (ref, store.uri)


@pytest.mark.parametrize(
    "ref, reason",
    [
        (f"models:/{MODEL_NAME}@champion", f"model '{MODEL_NAME}' has no alias 'champion'"),
        (f"models:/{MODEL_NAME}/7", f"model '{MODEL_NAME}' has no version 7"),
        ("models:/no-such-model@best", "no registered model named 'no-such-model'"),
        ("runs:/0123456789abcdef0123456789abcdef/small.ckpt", "no such run"),
    ],
    ids=["unknown-alias", "unknown-version", "unknown-model", "unknown-run"],
)
@pytest.mark.parametrize("verb", ["predict", "eval", "segment", "evaluate", "serve"])
def test_an_unknown_reference_is_one_line(store, synth_dataset, tmp_path, capsys, verb, ref, reason):
    """Refused before any work: no Ray, no output folder, exit code 2 and one line naming the reference."""
    val = synth_dataset / "val"
    rest = {
        "predict": [str(PHOTO), "--out", str(tmp_path / "o.json")],
        "eval": ["--annotations", str(val / "annotations.json"), "--images", str(val / "images")],
        "segment": ["--input", str(val / "images"), "--out", str(tmp_path / "seg")],
        "evaluate": ["--annotations", str(val / "annotations.json"), "--images", str(val / "images"),
                     "--out", str(tmp_path / "ev")],
        "serve": [],
    }[verb]  # fmt: skip
    assert main([verb, *rest, "--model", ref, "--tracking-uri", store.uri]) == 2
    errors = _errors(capsys.readouterr().err)
    assert len(errors) == 1, errors
    assert reason in errors[0] and ref in errors[0]
    assert not (tmp_path / "o.json").exists() and not (tmp_path / "seg").exists() and not (tmp_path / "ev").exists()
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()
