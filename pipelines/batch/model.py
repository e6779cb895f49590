"""The model of a batch run, resolved and checked once on the driver.

A ``models:/``/``runs:/`` URI or a checkpoint file becomes :class:`BatchModel`: the checkpoint file's bytes
(sent to the actors through the object store, so workers on other nodes need no access to it), their
sha256 (the output folder's manifest), the checkpoint's config (evaluate reads its score threshold,
name and IoU types from it), its category map, and the per-class score thresholds stored with it (an MLflow
Model's ``thresholds.json``, else the checkpoint's metadata). The driver loads the checkpoint once, to check
it; each actor loads it once.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class BatchModel:
    """A checkpoint as the batch drivers pass it on.

    Attributes:
        uri (str): the model URI or path, as given.
        data (bytes): the checkpoint file.
        sha256 (str): hex digest of ``data``.
        config (mrcnn.config.Config): the checkpoint's config.
        thresholds (dict[int, float] | None): the per-class score thresholds calibrated in training
            (``{category_id: score}``, from the checkpoint's metadata), or None.
        categories (mrcnn.data.categories.CategoryMap | None): its category map.
        class_thresholds (dict[int, float]): the per-class score thresholds segment applies by default,
            ``{category_id: score}``: an MLflow Model's ``thresholds.json``, else the checkpoint's metadata
            ({} where the model stores none).
    """

    uri: str
    data: bytes = field(repr=False)
    sha256: str
    config: Any = field(repr=False)
    thresholds: dict[int, float] | None = field(default=None, repr=False)
    categories: Any = field(default=None, repr=False)
    class_thresholds: dict[int, float] = field(default_factory=dict)


def load_model(model: str | os.PathLike | BatchModel, tracking_uri: str | None = None) -> BatchModel:
    """Resolve ``model`` (anything :func:`pipelines.tracking.resolve_model_uri` takes), check it by loading it
    once here, so a bad file is one clear error instead of a failure in every actor, and read its bytes.
    A download goes to a temporary folder. A :class:`BatchModel` is returned as is.

    Raises:
        ValueError / FileNotFoundError: a bad URI or checkpoint (as ``resolve_model_uri`` and ``load_checkpoint``).
    """
    if isinstance(model, BatchModel):
        return model
    from mrcnn.checkpoint import load_checkpoint
    from mrcnn.thresholds import check_class_thresholds, stored_class_thresholds
    from pipelines.tracking import model_thresholds, resolve_model_uri

    with tempfile.TemporaryDirectory(prefix="mrcnn-batch-model-") as tmp:
        path = resolve_model_uri(model, tracking_uri=tracking_uri, dst_dir=tmp)
        checkpoint = load_checkpoint(path)
        stored = model_thresholds(path)
        if stored is None:
            stored = stored_class_thresholds(checkpoint.metadata)
        data = path.read_bytes()
    class_thresholds = check_class_thresholds(stored or {}, checkpoint.categories, source=f"thresholds of {model}")
    return BatchModel(uri=str(model), data=data, sha256=hashlib.sha256(data).hexdigest(), config=checkpoint.config,
                      thresholds=_thresholds(checkpoint.metadata), categories=checkpoint.categories,
                      class_thresholds=class_thresholds)  # fmt: skip


def _thresholds(metadata: dict[str, Any]) -> dict[int, float] | None:
    """``{category_id: score}`` from a checkpoint's ``thresholds`` metadata (``CalibratedThresholds.to_dict()``)."""
    from mrcnn.thresholds import CalibratedThresholds

    stored = metadata.get("thresholds")
    if not stored:
        return None
    try:
        return CalibratedThresholds.from_dict(stored).thresholds
    except (ValueError, TypeError, KeyError, AttributeError):
        return None  # an older or foreign metadata format: the report falls back to one threshold
