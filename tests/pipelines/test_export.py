"""pipelines.export: a registered model (models:/NAME@ALIAS, models:/NAME/VERSION, runs:/, a file) exported to ONNX,
checked on sample photos and written atomically; a failed check writes nothing; `mrcnn export`'s parser and command."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
from PIL import Image

from mrcnn import export as mrcnn_export
from mrcnn.checkpoint import load_checkpoint, save_checkpoint
from mrcnn.data.dataset import image_to_tensor
from mrcnn.export import ExportCheckError, onnx_runner
from pipelines.cli.export import add_parser, cmd_export
from pipelines.export import export_model, load_sample_images
from pipelines.tracking import Tracker, default_tracking_uri, register_checkpoint
from tests.mrcnn.test_export import SCORE_THRESHOLD, decisive, photo_samples

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning")


@pytest.fixture(scope="module", autouse=True)
def _mlflow_env():
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        yield


@pytest.fixture(scope="module")
def checkpoint_file(small_checkpoint, tmp_path_factory):
    """The small random checkpoint with decisive heads (see tests/mrcnn/test_export.py)."""
    checkpoint = load_checkpoint(small_checkpoint)
    path = tmp_path_factory.mktemp("decisive") / "decisive.ckpt"
    return save_checkpoint(path, model=decisive(checkpoint.build_model()), config=checkpoint.config,
                           categories=checkpoint.categories)  # fmt: skip


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    for name, image in photo_samples().items():
        Image.fromarray(image).save(folder / f"{name}.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.fixture(scope="module")
def registry(checkpoint_file, tmp_path_factory):
    uri = default_tracking_uri(tmp_path_factory.mktemp("mlflow"))
    tracker = Tracker.start(uri, "export-test", "export-run")
    register_checkpoint(tracker, checkpoint_file, model_name="export-model", segm_ap=10.0, tracking_uri=uri)
    tracker.end()
    return uri


@pytest.fixture(scope="module")
def exported(registry, photo_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "sub" / "model.onnx"
    summary = export_model("models:/export-model@best", fmt="onnx", out=out, tracking_uri=registry,
                           sample_images=[photo_folder], score_threshold=SCORE_THRESHOLD)  # fmt: skip
    return summary, out


def test_registered_model_exports_to_onnx(exported, photo_folder):
    summary, out = exported
    assert out.is_file() and sorted(p.name for p in out.parent.iterdir()) == ["model.onnx"], "no temporaries left"
    assert summary.num_bytes == out.stat().st_size and summary.fmt == "onnx" and summary.opset == 17
    assert [(s.name, s.height, s.width) for s in summary.report.samples] == [
        (str(photo_folder / "photo-landscape.png"), 213, 320), (str(photo_folder / "photo-portrait.png"), 240, 160)
    ]  # fmt: skip
    assert all(s.num_detections >= 3 for s in summary.report.samples)
    text = summary.format().splitlines()
    assert len(text) == 3 and text[-1].startswith(f"wrote {out} (onnx, opset 17, ")
    image = image_to_tensor(np.asarray(Image.open(photo_folder / "photo-portrait.png")))
    outputs = onnx_runner(out.read_bytes())(image)
    assert outputs["masks"].shape[1:] == (1, 240, 160) and len(outputs["scores"]) >= 3


def _reuse_export(monkeypatch, exported):
    """Skip the tracing (tested above): the export step returns the bytes already exported; the check runs for real."""
    data = exported[1].read_bytes()
    monkeypatch.setattr(mrcnn_export, "_export_onnx", lambda wrapper, example, opset: data)


def test_failed_check_writes_nothing(exported, checkpoint_file, photo_folder, tmp_path, monkeypatch):
    _reuse_export(monkeypatch, exported)
    real_runner = mrcnn_export.onnx_runner

    def off_by_one(data):
        run = real_runner(data)

        def shifted(image):
            outputs = run(image)
            outputs["boxes"] = outputs["boxes"] + np.float32(0.75)
            return outputs

        return shifted

    monkeypatch.setattr(mrcnn_export, "onnx_runner", off_by_one)
    out = tmp_path / "model.onnx"
    with pytest.raises(ExportCheckError, match=rf"the closest is 0.75 px away \(tolerance 0.5 px\); {out} was not written$"):
        export_model(checkpoint_file, fmt="onnx", out=out, sample_images=[photo_folder], score_threshold=SCORE_THRESHOLD)
    assert list(tmp_path.iterdir()) == []
    out.write_bytes(b"the previous export")
    with pytest.raises(ExportCheckError):
        export_model(checkpoint_file, fmt="onnx", out=out, sample_images=[photo_folder], score_threshold=SCORE_THRESHOLD)
    assert out.read_bytes() == b"the previous export" and list(tmp_path.iterdir()) == [out]


def test_command_with_a_version_reference(exported, registry, photo_folder, tmp_path, monkeypatch, capsys):
    _reuse_export(monkeypatch, exported)
    parser = argparse.ArgumentParser(prog="mrcnn")
    add_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "v1.onnx"
    args = parser.parse_args(["export", "--model", "models:/export-model/1", "--out", str(out), "--tracking-uri", registry,
                              "--sample-images", *(str(p) for p in sorted(photo_folder.glob("*.png"))),
                              "--score-threshold", str(SCORE_THRESHOLD)])  # fmt: skip
    assert args.func is cmd_export and args.format == "onnx"
    assert args.func(args) == 0
    printed = capsys.readouterr()
    assert printed.out.splitlines()[-1].startswith(f"wrote {out} (onnx, opset 17, ")
    assert "detections match" in printed.out and "warning" not in printed.err
    assert out.read_bytes() == exported[1].read_bytes()


def test_bad_references_and_inputs_fail_in_one_line(registry, checkpoint_file, photo_folder, tmp_path):
    out = tmp_path / "m.onnx"
    with pytest.raises(ValueError, match=r"^model URI 'models:/export-model@champion'.*has no alias 'champion'"):
        export_model("models:/export-model@champion", fmt="onnx", out=out, tracking_uri=registry)
    with pytest.raises(ValueError, match="no such file"):
        export_model(tmp_path / "missing.ckpt", fmt="onnx", out=out)
    with pytest.raises(ValueError, match="expected one of onnx, torchscript, got 'engine'"):
        export_model(checkpoint_file, fmt="engine", out=out)
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        export_model(checkpoint_file, fmt="onnx", out=out, sample_images=[tmp_path / "nowhere"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images in this folder"):
        load_sample_images([tmp_path / "empty"])
    one = sorted(photo_folder.glob("*.png"))[:1]
    with pytest.raises(ValueError, match="at least two different sizes"):
        export_model(checkpoint_file, fmt="onnx", out=out, sample_images=one)
    assert list(tmp_path.iterdir()) == [tmp_path / "empty"]


def test_warns_when_nothing_was_compared(exported, checkpoint_file, photo_folder, tmp_path, monkeypatch, capsys):
    _reuse_export(monkeypatch, exported)
    monkeypatch.setattr(mrcnn_export, "onnx_runner", lambda data: _no_detections)
    monkeypatch.setattr(mrcnn_export, "_eager_runner", lambda wrapper: _no_detections)
    parser = argparse.ArgumentParser(prog="mrcnn")
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["export", "--model", str(checkpoint_file), "--out", str(tmp_path / "m.onnx"),
                              "--sample-images", str(photo_folder)])  # fmt: skip
    assert cmd_export(args) == 0
    assert "no detections on the sample images at score threshold 0.5" in capsys.readouterr().err


def _no_detections(image) -> dict[str, np.ndarray]:
    return {"boxes": np.zeros((0, 4), np.float32), "labels": np.zeros(0, np.int64), "scores": np.zeros(0, np.float32),
            "masks": np.zeros((0, 1, *image.shape[1:]), np.float32)}  # fmt: skip


def test_torch_is_not_imported_by_the_parser():
    import subprocess
    import sys

    code = "import sys, pipelines.export; assert 'torch' not in sys.modules and 'pyarrow' not in sys.modules"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode == 0, done.stderr
