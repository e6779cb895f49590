"""The registered model is an MLflow Model: ``mlflow.pyfunc.load_model("models:/NAME@best")`` predicts the
same records as ``mrcnn.Predictor`` on the same weights, for a model registered by a short real training run
(through a real ``mlflow server``) and for a keypoint model; the registered weights carry no optimizer state."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mrcnn.checkpoint import load_checkpoint
from mrcnn.predictor import Predictor
from mrcnn.thresholds import apply_thresholds, stored_class_thresholds
from pipelines.tracking import Tracker, model_thresholds, register_checkpoint, resolve_model_uri
from tests.pipelines.tracking.readback import fresh_client

LIGHT = {"model.backbone.out_channels": 64, "model.box_head.representation_size": 128, "model.mask_head.conv_dim": 64,
         "model.box_head.batch_size_per_image": 32}  # fmt: skip
CPU = {"device": "cpu"}  # the reference Predictor runs on the CPU; so does the pyfunc model, on any machine


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (96, 96, 3), dtype=np.uint8), rng.integers(0, 256, (72, 120, 3), dtype=np.uint8)]


def _assert_same_records(got: list[dict], expected: list[dict]) -> None:
    assert len(got) == len(expected) > 0
    assert json.dumps(got, sort_keys=True) == json.dumps(expected, sort_keys=True)


def _assert_thresholded(got: list[list[dict]], all_records: list[list[dict]], thresholds: dict[int, float], default: float) -> None:
    """``got`` holds exactly the records of ``all_records`` (at threshold 0) with score >= their class's threshold."""
    expected = [apply_thresholds(records, thresholds, default) for records in all_records]
    assert json.dumps(got, sort_keys=True) == json.dumps(expected, sort_keys=True)


@pytest.fixture(scope="module")
def trained(server, tmp_path_factory):
    """A 2-iteration training run on synthetic shards that registers its model in the package's server."""
    import ray

    from mrcnn.data.synthetic import make_synthetic_coco
    from pipelines.preprocess import preprocess_dataset
    from pipelines.train import TrainRunConfig, train

    root = tmp_path_factory.mktemp("pyfunc_train")
    make_synthetic_coco(root / "synth", num_train=4, num_val=2, size=96, seed=0)
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    try:
        preprocess_dataset(root / "synth", root / "shards")
        run = TrainRunConfig(data=str(root / "shards"), preset="r18_fpn_small", overrides=LIGHT, workers=1,
                             batch_size=2, max_iters=2, checkpoint_every=2, eval_every=2,
                             storage_path=str(root / "ray_results"), name="pyfunc", experiment="tests-pyfunc",
                             model_name="pyfunc-model", tracking_uri=server.tracking_uri)  # fmt: skip
        result = train(run)
    finally:
        ray.shutdown()
    return result


def test_pyfunc_model_of_a_training_run_predicts_what_the_predictor_predicts(server, trained, tmp_path):
    import mlflow.pyfunc

    uri = server.tracking_uri
    client = fresh_client(uri)
    version = client.get_model_version_by_alias("pyfunc-model", "best")
    assert version.run_id == trained.mlflow_run_id and version.source.startswith("models:/m-")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        model = mlflow.pyfunc.load_model("models:/pyfunc-model@best", model_config=CPU)
    # The reference: the Predictor on the training checkpoint (the same weights, with the optimizer state).
    predictor = Predictor.from_checkpoint(trained.checkpoint_path)
    images = _images()
    expected = predictor.predict(images, score_threshold=0.0)  # one batch, as the pyfunc model runs a list
    single = predictor.predict(images[:1], score_threshold=0.0)[0]  # alone: no padding to the batch's size
    _assert_same_records(model.predict(images[0], params={"score_threshold": 0.0}), single)
    both = model.predict(images, params={"score_threshold": 0.0})
    assert isinstance(both, list) and len(both) == 2
    for got, want in zip(both, expected):
        _assert_same_records(got, want)
    assert {"category_id", "bbox", "score", "segmentation"} <= set(both[0][0])
    capped = model.predict(images, params={"score_threshold": 0.0, "max_detections": 3})
    assert [len(r) for r in capped] == [3, 3] and capped[1] == expected[1][:3]
    with pytest.raises(Exception, match=r"expected an HxWx3 uint8 array, got float32 array of shape \(8, 8, 3\)"):
        model.predict([images[0], np.zeros((8, 8, 3), np.float32)])
    # Without params the model applies the thresholds calibrated at the final evaluation (thresholds.json, the
    # same as the training checkpoint's metadata); a params object replaces them, {} turns them off.
    stored = model.unwrap_python_model().thresholds
    assert stored and stored == stored_class_thresholds(load_checkpoint(trained.checkpoint_path).metadata)
    _assert_thresholded(model.predict(images), expected, stored, 0.5)
    scores = sorted(r["score"] for r in expected[0])
    middle = {c: scores[len(scores) // 2] for c in stored}
    asked = model.predict(images, params={"class_thresholds": json.dumps({str(c): t for c, t in middle.items()})})
    assert 0 < len(asked[0]) < len(expected[0])
    _assert_thresholded(asked, expected, middle, 0.5)
    _assert_thresholded(model.predict(images, params={"class_thresholds": "{}"}), expected, {}, 0.5)

    # The registered artifact is the weights only: no optimizer state, much smaller than the training checkpoint.
    weights = resolve_model_uri("models:/pyfunc-model@best", tracking_uri=uri, dst_dir=tmp_path / "best")
    assert weights.name == "model.ckpt" and (weights.parent.parent / "MLmodel").is_file()
    training = load_checkpoint(trained.checkpoint_path)
    assert training.training_state and training.training_state.get("optimizer")
    registered = load_checkpoint(weights)
    assert registered.training_state is None and registered.config == training.config
    assert registered.model_state.keys() == training.model_state.keys()
    assert weights.stat().st_size < 0.7 * Path(trained.checkpoint_path).stat().st_size
    # ...and the verbs' loader gives the same records from it.
    _assert_same_records(Predictor.from_checkpoint(weights).predict(images[:1], score_threshold=0.0)[0], single)


def test_pyfunc_keypoint_model_and_stored_thresholds(server, small_keypoint_checkpoint, tmp_path):
    import mlflow.pyfunc

    uri = server.tracking_uri
    tracker = Tracker.start(uri, "tracking-pyfunc", "keypoint-run")
    result = register_checkpoint(tracker, small_keypoint_checkpoint, model_name="pyfunc-keypoints", segm_ap=12.5,
                                 ap_tag="keypoints_AP", thresholds={1: 0.25})  # fmt: skip
    tracker.end()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        model = mlflow.pyfunc.load_model(f"models:/pyfunc-keypoints/{result.version}", model_config=CPU)
    assert model.unwrap_python_model().thresholds == {1: 0.25}
    images = _images()
    expected = Predictor.from_checkpoint(small_keypoint_checkpoint).predict(images, score_threshold=0.0)
    for got, want in zip(model.predict(images, params={"score_threshold": 0.0}), expected):
        _assert_same_records(got, want)
        assert "keypoints" in got[0]
    # The stored threshold applies unless params override it; the verbs' loader finds it beside the weights.
    _assert_thresholded(model.predict(images), expected, {1: 0.25}, 0.5)
    scores = sorted(r["score"] for r in expected[0])
    middle = (scores[len(scores) // 2 - 1] + scores[len(scores) // 2]) / 2
    asked = model.predict(images, params={"class_thresholds": json.dumps({"1": middle})})
    assert 0 < len(asked[0]) < len(expected[0])
    _assert_thresholded(asked, expected, {1: middle}, 0.5)
    with pytest.raises(Exception, match="unknown category id 9"):
        model.predict(images[0], params={"class_thresholds": '{"9": 0.5}'})
    weights = resolve_model_uri(f"models:/pyfunc-keypoints/{result.version}", tracking_uri=uri, dst_dir=tmp_path / "kp")
    assert model_thresholds(weights) == {1: 0.25} and model_thresholds(small_keypoint_checkpoint) is None
    as_json = images[1].astype(np.int64)  # what a JSON request to `mlflow models serve` becomes
    _assert_same_records(model.predict(as_json, params={"score_threshold": 0.0}),
                         Predictor.from_checkpoint(small_keypoint_checkpoint).predict(images[1:], score_threshold=0.0)[0])
    with pytest.raises(Exception, match=r"model input: expected an HxWx3 uint8 array, got int64 array of shape \(8, 8\)"):
        model.predict(np.full((8, 8), 300))
    assert model.metadata.signature.inputs is None and model.metadata.get_params_schema() is not None
