"""The MLflow Model of a trained Mask R-CNN: a pyfunc flavor wrapping :class:`mrcnn.Predictor`.

A model folder (what :func:`save_pyfunc_model` writes, and what a registered model version holds)::

    MLmodel, python_model.pkl, requirements.txt, input_example.json, ...
    artifacts/model.ckpt        weights only: an mrcnn checkpoint without training state (config, category
                                map and metadata inside; read with mrcnn.checkpoint.load_checkpoint)
    artifacts/config.json       the config (Config.to_dict()), for readers without torch
    artifacts/categories.json   the category map (CategoryMap.to_list())
    artifacts/thresholds.json   optional: per-class score thresholds {category_id: score}

``mlflow.pyfunc.load_model(uri).predict(image)`` takes one HxWx3 uint8 RGB array and returns that image's
detection records (``mrcnn.records.DETECTION_FIELDS``: ``category_id``, ``bbox`` XYWH, ``score``,
``segmentation`` compressed RLE, ..., keypoints for a keypoint model), or a list of such arrays and returns a
list of record lists. ``params={"score_threshold": s, "max_detections": n}`` override the predictor's for one
call.

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

from pipelines.tracking.model_uri import MLMODEL_FILENAME

if TYPE_CHECKING:
    from mrcnn.checkpoint import Checkpoint

WEIGHTS_ARTIFACT = "weights"
CONFIG_ARTIFACT = "config"
CATEGORIES_ARTIFACT = "categories"
THRESHOLDS_ARTIFACT = "thresholds"
WEIGHTS_FILENAME = "model.ckpt"
THRESHOLDS_FILENAME = "thresholds.json"
INPUT_EXAMPLE_SHAPE = (32, 32, 3)  # H, W, 3: a black image; the model runs on it when the example is checked
# Distributions the model needs where it is loaded; pinned to the versions installed here.
REQUIREMENT_DISTRIBUTIONS = ("mrcnn-ray", "torch", "torchvision", "numpy", "pycocotools", "pillow", "mlflow")


class MaskRCNNPyfunc(mlflow.pyfunc.PythonModel):
    """``mlflow.pyfunc.PythonModel`` around :class:`mrcnn.Predictor`.

    Model config (``mlflow.pyfunc.load_model(uri, model_config={...})``): ``device`` (default ``cuda`` when
    available, else ``cpu``), ``score_threshold`` and ``mask_threshold`` (the Predictor's defaults, 0.5).
    """

    def load_context(self, context) -> None:
        """Build the Predictor from the ``weights`` artifact; read ``thresholds`` when the model has one.

        Raises:
            mrcnn.checkpoint.CheckpointError: the weights file is missing or does not fit its config.
        """
        import torch

        from mrcnn.predictor import Predictor

        config = dict(context.model_config or {})
        device = config.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
        kwargs = {key: float(config[key]) for key in ("score_threshold", "mask_threshold") if config.get(key) is not None}
        self.predictor = Predictor.from_checkpoint(context.artifacts[WEIGHTS_ARTIFACT], device=device, **kwargs)
        # Per-class thresholds {category_id: score}: stored with the model, kept here for callers to read.
        self.thresholds = read_thresholds(context.artifacts.get(THRESHOLDS_ARTIFACT))

    def predict(self, context, model_input, params: dict[str, Any] | None = None):
        """Detection records for one image (a list of records) or for a list of images (a list of lists).

        Args:
            model_input: an HxWx3 uint8 RGB array, or a list of them (any sizes); integer arrays with values
                in 0..255 are taken as uint8.
            params: optional ``score_threshold`` (float) and ``max_detections`` (int) for this call.

        Raises:
            ValueError: an input that is not an HxWx3 uint8 array (or a list of them), naming the bad one.
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
            max_detections=None if params.get("max_detections") is None else int(params["max_detections"]),
        )
        return records[0] if single else records


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


def signature():
    """The model signature: no input schema (see the module docstring), params ``score_threshold`` and
    ``max_detections`` (None: the predictor's own)."""
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ParamSchema, ParamSpec

    return ModelSignature(
        inputs=None,
        outputs=None,
        params=ParamSchema([ParamSpec("score_threshold", "double", None), ParamSpec("max_detections", "long", None)]),
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
    import yaml

    path = Path(path)
    try:
        flavor = yaml.safe_load((path / MLMODEL_FILENAME).read_text())["flavors"]["python_function"]
        relative = flavor["artifacts"][WEIGHTS_ARTIFACT]["path"]
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        raise ValueError(f"MLflow model {path}: no python_function flavor with a '{WEIGHTS_ARTIFACT}' artifact") from None
    weights = path / relative
    if not weights.is_file():
        raise ValueError(f"MLflow model {path}: its '{WEIGHTS_ARTIFACT}' artifact {relative} is missing")
    return weights
