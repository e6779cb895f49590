"""The MLflow Model of a trained Mask R-CNN: a pyfunc flavor wrapping :class:`mrcnn.Predictor`.

A model folder (what :func:`save_pyfunc_model` writes, and what a registered model version holds)::

    MLmodel, python_model.pkl, requirements.txt, input_example.json, ...
    artifacts/model.ckpt        weights only: an mrcnn checkpoint without training state (config, category
                                map and metadata inside; read with mrcnn.checkpoint.load_checkpoint)
    artifacts/config.json       the config (Config.to_dict()), for readers without torch
    artifacts/categories.json   the category map (CategoryMap.to_list())
    artifacts/thresholds.json   optional: per-class score thresholds {category_id: score}, applied by default

``mlflow.pyfunc.load_model(uri).predict(image)`` takes one HxWx3 uint8 RGB array and returns that image's
detection records (``mrcnn.records.DETECTION_FIELDS``: ``category_id``, ``bbox`` XYWH, ``score``,
``segmentation`` compressed RLE, ..., keypoints for a keypoint model), or a list of such arrays and returns a
list of record lists.

Score thresholds: the model applies the per-class thresholds it stores (``thresholds.json``; a model without
one: those in its checkpoint's metadata, if any), as :class:`mrcnn.Predictor` does: a detection is kept when
its score is >= its class's threshold, a class without one uses the global ``score_threshold`` (0.5). Params
override them for one call: ``score_threshold`` (a number) sets one global threshold and ignores the class
thresholds; ``class_thresholds`` (a JSON object as a string, ``'{"3": 0.7}'``; ``'{}'``: none) replaces
them; ``max_detections`` caps the records per image.

The signature has no input schema: MLflow's tensor schema cannot say "one HxWx3 image, or a list of images
of different sizes" (a ``TensorSpec(uint8, (-1, -1, 3))`` rejects the list before ``predict`` sees it), so
``predict`` checks its input itself and raises ValueError naming what it got. The signature holds the
params schema; the records are not an MLflow output schema (lists of nested dicts), so there is none.
The input example is a small black image.

Importing this module imports mlflow (the model class derives from ``mlflow.pyfunc.PythonModel``).
"""

from __future__ import annotations

import json
import os
import tempfile
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow.pyfunc
import numpy as np

from pipelines.tracking.model_uri import (
    THRESHOLDS_ARTIFACT,
    WEIGHTS_ARTIFACT,
    pyfunc_artifacts,
    read_thresholds,
)

if TYPE_CHECKING:
    from mrcnn.checkpoint import Checkpoint

CONFIG_ARTIFACT = "config"
CATEGORIES_ARTIFACT = "categories"
WEIGHTS_FILENAME = "model.ckpt"
THRESHOLDS_FILENAME = "thresholds.json"
INPUT_EXAMPLE_SHAPE = (32, 32, 3)  # H, W, 3: a black image; the model runs on it when the example is checked
# Distributions the model needs where it is loaded; pinned to the versions installed here.
REQUIREMENT_DISTRIBUTIONS = ("mrcnn-ray", "torch", "torchvision", "numpy", "pycocotools", "pillow", "mlflow")


class MaskRCNNPyfunc(mlflow.pyfunc.PythonModel):
    """``mlflow.pyfunc.PythonModel`` around :class:`mrcnn.Predictor`.

    Model config (``mlflow.pyfunc.load_model(uri, model_config={...})``): ``device`` (default ``cuda`` when
    available, else ``cpu``), ``score_threshold`` and ``mask_threshold`` (the Predictor's defaults, 0.5).

    Attributes:
        thresholds (dict[int, float]): the stored per-class score thresholds in force, ``{category_id: score}``.
    """

    def load_context(self, context) -> None:
        """Build the Predictor from the ``weights`` artifact, with the ``thresholds`` artifact's per-class
        score thresholds where the model has one (else those of the checkpoint's metadata, if any).

        Raises:
            mrcnn.checkpoint.CheckpointError: the weights file is missing or does not fit its config.
            ValueError: the thresholds file is not a JSON object of category id -> score in the category map.
        """
        import torch

        from mrcnn.predictor import Predictor

        config = dict(context.model_config or {})
        device = config.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
        kwargs = {key: float(config[key]) for key in ("score_threshold", "mask_threshold") if config.get(key) is not None}
        stored = read_thresholds(context.artifacts.get(THRESHOLDS_ARTIFACT))  # None: the checkpoint's own, if any
        self.predictor = Predictor.from_checkpoint(context.artifacts[WEIGHTS_ARTIFACT], device=device,
                                                   class_thresholds=stored, **kwargs)  # fmt: skip
        self.thresholds = dict(self.predictor.class_thresholds)

    def predict(self, context, model_input, params: dict[str, Any] | None = None):
        """Detection records for one image (a list of records) or for a list of images (a list of lists).

        Args:
            model_input: an HxWx3 uint8 RGB array, or a list of them (any sizes); integer arrays with values
                in 0..255 are taken as uint8.
            params: optional, for this call: ``score_threshold`` (float: one global threshold, the class
                thresholds ignored), ``class_thresholds`` (str: a JSON object ``{category_id: score}`` replacing
                the stored ones; ``"{}"``: none) and ``max_detections`` (int).

        Raises:
            ValueError: an input that is not an HxWx3 uint8 array (or a list of them), naming the bad one; a
                ``class_thresholds`` that is not a JSON object of known category ids -> scores in [0, 1].
        """
        single = isinstance(model_input, np.ndarray)
        if not (single or isinstance(model_input, (list, tuple))):
            raise ValueError(f"model input: expected an HxWx3 uint8 array or a list of them, got {type(model_input).__name__}")
        images = [_checked_image(model_input, "model input")] if single else [
            _checked_image(image, f"model input [{index}]") for index, image in enumerate(model_input)
        ]  # fmt: skip
        params = params or {}
        records = self.predictor.predict(
            images,
            score_threshold=None if params.get("score_threshold") is None else float(params["score_threshold"]),
            class_thresholds=_class_thresholds_param(params.get("class_thresholds")),
            max_detections=None if params.get("max_detections") is None else int(params["max_detections"]),
        )
        return records[0] if single else records


def _class_thresholds_param(value: Any) -> dict | None:
    """The ``class_thresholds`` param (a JSON object as a string, or a mapping) as a dict; None when not given.
    The Predictor checks the ids and scores."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise ValueError(f"params class_thresholds: expected a JSON object of category id -> score ({exc})") from None
    if not isinstance(value, dict):
        raise ValueError(f"params class_thresholds: expected a JSON object of category id -> score, got {type(value).__name__}")
    return value


def _checked_image(image: Any, where: str) -> np.ndarray:
    """``image`` as HxWx3 uint8; an integer array with values in 0..255 (what a JSON request to
    ``mlflow models serve`` becomes) is cast. ValueError naming ``where`` and what it got otherwise."""
    if isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3:
        if image.dtype == np.uint8:
            return image
        if np.issubdtype(image.dtype, np.integer) and (image.size == 0 or (image.min() >= 0 and image.max() <= 255)):
            return image.astype(np.uint8)
    what = f"{image.dtype} array of shape {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
    raise ValueError(f"{where}: expected an HxWx3 uint8 array, got {what}")


def signature():
    """The model signature: no input schema (see the module docstring), params ``score_threshold``,
    ``class_thresholds`` (a JSON string) and ``max_detections`` (None: the model's own)."""
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ParamSchema, ParamSpec

    return ModelSignature(
        inputs=None,
        outputs=None,
        params=ParamSchema([ParamSpec("score_threshold", "double", None), ParamSpec("class_thresholds", "string", None),
                            ParamSpec("max_detections", "long", None)]),
    )


def pip_requirements() -> list[str]:
    """``dist==version`` for each of :data:`REQUIREMENT_DISTRIBUTIONS` installed here (the project itself,
    ``mrcnn-ray``, included: the model folder holds no code)."""
    found = []
    for dist in REQUIREMENT_DISTRIBUTIONS:
        try:
            found.append(f"{dist}=={importlib_metadata.version(dist)}")
        except importlib_metadata.PackageNotFoundError:
            continue
    return found


def write_weights_only(checkpoint: Checkpoint, path: str | os.PathLike) -> Path:
    """``checkpoint`` without its training state (optimizer, scheduler, loop counters), as an mrcnn
    checkpoint file at ``path``: the same config, category map, weights and metadata."""
    from mrcnn.checkpoint import save_checkpoint

    return save_checkpoint(path, model=checkpoint.build_model(), config=checkpoint.config,
                           categories=checkpoint.categories, metadata=checkpoint.metadata)  # fmt: skip


def save_pyfunc_model(
    checkpoint_path: str | os.PathLike,
    path: str | os.PathLike,
    *,
    thresholds: dict[int, float] | None = None,
    mlflow_model=None,
) -> Path:
    """Write the MLflow Model folder of a checkpoint (training state dropped) at ``path`` (must not exist).

    Args:
        checkpoint_path: an mrcnn checkpoint (or a bare torchvision state dict) file.
        thresholds: per-class score thresholds {category_id: score}, stored as ``thresholds.json``.
        mlflow_model: the ``mlflow.models.Model`` to fill (for a logged model: its id and artifact path).

    Raises:
        mrcnn.checkpoint.CheckpointError: the checkpoint is unreadable or does not fit its config.
    """
    from mrcnn.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(checkpoint_path)
    with tempfile.TemporaryDirectory(prefix="mrcnn-pyfunc-") as tmp:
        staged = Path(tmp)
        artifacts = {WEIGHTS_ARTIFACT: str(write_weights_only(checkpoint, staged / WEIGHTS_FILENAME))}
        (staged / "config.json").write_text(json.dumps(checkpoint.config.to_dict(), indent=1, sort_keys=True))
        (staged / "categories.json").write_text(json.dumps(checkpoint.categories.to_list(), indent=1))
        artifacts[CONFIG_ARTIFACT] = str(staged / "config.json")
        artifacts[CATEGORIES_ARTIFACT] = str(staged / "categories.json")
        if thresholds is not None:
            (staged / THRESHOLDS_FILENAME).write_text(json.dumps({str(int(k)): float(v) for k, v in thresholds.items()}))
            artifacts[THRESHOLDS_ARTIFACT] = str(staged / THRESHOLDS_FILENAME)
        mlflow.pyfunc.save_model(
            path=str(path),
            python_model=MaskRCNNPyfunc(),
            artifacts=artifacts,
            signature=signature(),
            input_example=np.zeros(INPUT_EXAMPLE_SHAPE, dtype=np.uint8),
            pip_requirements=pip_requirements(),
            mlflow_model=mlflow_model,
            metadata={"mrcnn_preset": checkpoint.config.name, "num_classes": checkpoint.categories.num_classes},
        )
    return Path(path)


def weights_in_model_dir(path: str | os.PathLike) -> Path:
    """The weights-only checkpoint file of an MLflow Model folder written by :func:`save_pyfunc_model`.

    Raises:
        ValueError: the folder's MLmodel has no python_function flavor with a ``weights`` artifact, or the
            file it names is missing.
    """
    path = Path(path)
    weights = pyfunc_artifacts(path).get(WEIGHTS_ARTIFACT)
    if weights is None:
        raise ValueError(f"MLflow model {path}: no python_function flavor with a '{WEIGHTS_ARTIFACT}' artifact")
    if not weights.is_file():
        raise ValueError(f"MLflow model {path}: its '{WEIGHTS_ARTIFACT}' artifact {weights.relative_to(path)} is missing")
    return weights
