"""The option groups that several verbs share, declared once, and what turns their values into objects.

- cluster: ``--address`` (a Ray cluster; default ``RAY_ADDRESS``, else a local Ray);
- tracking: ``--tracking-uri`` (and ``--experiment`` where a verb logs runs);
- model: ``--model`` (one kind of reference everywhere, see :data:`MODEL_REFERENCE_HELP`), ``--arch``,
  ``--score-threshold``, ``--class-thresholds`` (:func:`class_thresholds_option`), ``--device``;
- actor pool: ``--workers``, ``--gpu``, ``--cpus-per-worker``, ``--batch-size`` (Ray Data actors);
- config overrides: ``--set KEY=VALUE`` and :func:`parse_overrides`.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import urllib.parse
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipelines.cli.errors import CLIError

MODEL_REFERENCE_HELP = (
    "a checkpoint file (this project's, or a torchvision state dict), models:/NAME@ALIAS, models:/NAME/VERSION "
    "or runs:/RUN_ID/path (from the MLflow store of --tracking-uri)"
)
CLUSTER_HELP = "Ray cluster address (default: RAY_ADDRESS, else a local Ray)"
CLASS_THRESHOLDS_CHOICES = ("stored", "none")
CLASS_THRESHOLDS_HELP = (
    "per-class score thresholds: 'stored' (default: those stored with the model, calibrated on validation; a "
    "class without one, and a model without any, uses the global threshold, 0.5), 'none' (the global threshold "
    "only), or FILE.json, a {category_id: score} object. --score-threshold sets one global threshold instead"
)


def add_cluster_options(parser: argparse.ArgumentParser) -> None:
    """``--address``: the Ray cluster a verb connects to."""
    parser.add_argument_group("cluster").add_argument("--address", metavar="ADDR", help=CLUSTER_HELP)


def add_tracking_options(
    parser: argparse.ArgumentParser, *, default_store: str | None = None, experiment: str | None | bool = False
) -> None:
    """``--tracking-uri`` and, where the verb logs runs, ``--experiment``.

    Args:
        default_store: the store a verb that logs runs falls back to (``./mlflow.db``); None for a verb that
            only reads model references from the store.
        experiment: False: no ``--experiment``; None or a name: the flag, with that default.
    """
    group = parser.add_argument_group("tracking (MLflow)")
    if default_store is None:
        uri_help = "MLflow store for models:/ and runs:/ references (default: MLFLOW_TRACKING_URI)"
    else:
        uri_help = f"MLflow tracking URI (default: MLFLOW_TRACKING_URI or {default_store})"
    group.add_argument("--tracking-uri", metavar="URI", help=uri_help)
    if experiment is not False:
        shown = f" (default {experiment})" if experiment else ""
        group.add_argument("--experiment", default=experiment, help=f"MLflow experiment{shown}")


def add_model_options(
    parser: argparse.ArgumentParser,
    *,
    required: bool = True,
    aliases: Sequence[str] = (),
    model_help: str | None = None,
    score_threshold: float | None = None,
    score_help: str | None = None,
    arch: bool = False,
    device: bool = False,
    class_thresholds: bool = False,
) -> None:
    """``--model`` (with older spellings as ``aliases``, e.g. ``--weights``; the value is ``args.model``),
    ``--score-threshold``, where the verb loads the model in this process ``--arch`` and ``--device``, and
    where it applies per-class score thresholds ``--class-thresholds`` (read with :func:`class_thresholds_option`)."""
    group = parser.add_argument_group("model")
    group.add_argument("--model", *aliases, dest="model", required=required, metavar="MODEL",
                       help=model_help or MODEL_REFERENCE_HELP)  # fmt: skip
    if arch:
        group.add_argument("--arch", help="preset of a bare torchvision state dict (r50_fpn, r50_fpn_v2, r101_fpn, ...)")
    group.add_argument("--score-threshold", type=float, default=score_threshold, metavar="T",
                       help=score_help or f"keep detections scoring at least T (default {score_threshold})")  # fmt: skip
    if class_thresholds:
        group.add_argument("--class-thresholds", metavar="stored|none|FILE.json", help=CLASS_THRESHOLDS_HELP)
    if device:
        group.add_argument("--device", default="cpu", help="torch device (default cpu)")


def add_actor_pool_options(parser: argparse.ArgumentParser) -> None:
    """The Ray Data actor pool of segment and evaluate: one model per actor."""
    group = parser.add_argument_group("actor pool (Ray Data)")
    group.add_argument("--workers", type=int, metavar="N", help="actors, one model each (default: one per GPU, or per CPU)")
    group.add_argument("--gpu", action="store_true", help="one GPU per actor")
    group.add_argument("--cpus-per-worker", type=float, metavar="C", help="CPUs (torch threads) per actor (default 1)")
    group.add_argument("--batch-size", type=int, default=2, metavar="B", help="images per forward pass (default 2)")


def add_overrides_option(parser: argparse.ArgumentParser, help_text: str) -> None:
    """``--set KEY=VALUE`` (repeatable); :func:`parse_overrides` reads the values."""
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help=help_text)


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """``key=value`` pairs; values are parsed as YAML (numbers as people write them, ``1e-4`` included,
    booleans, lists) by :func:`mrcnn.config.load_yaml`.

    Raises:
        CLIError: a pair without ``=`` or a key, or a value that is not YAML.
    """
    from mrcnn.config import ConfigError, load_yaml

    overrides: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise CLIError(f"--set {pair!r}: expected KEY=VALUE, e.g. model.box_head.pooler=roi_pool")
        try:
            overrides[key.strip()] = load_yaml(f"--set {key.strip()}", text=value)
        except ConfigError as exc:
            raise CLIError(str(exc)) from None
    return overrides


def class_thresholds_option(value: str | None, score_threshold: float | None) -> dict[int, float] | None:
    """What ``--class-thresholds`` asks for, given ``--score-threshold``.

    Returns:
        None: the thresholds stored with the model (``stored``, the default); ``{}``: none, one global threshold
        (``none``, or a ``--score-threshold`` given); ``{category_id: score}`` read from a json file (the ids
        and scores are checked against the model's category map where it is loaded).

    Raises:
        CLIError: a file that is missing or not a json object of category id -> number, or ``stored`` or a file
            together with ``--score-threshold`` (which sets one global threshold).
    """
    import json

    if score_threshold is not None:
        if value not in (None, "none"):
            raise CLIError(f"--class-thresholds {value}: --score-threshold sets one global threshold; give one of the two")
        return {}
    if value in (None, "stored"):
        return None
    if value == "none":
        return {}
    path = Path(value)
    if not path.is_file():
        raise CLIError(f"--class-thresholds {value}: no such file (expected stored, none or a {{category_id: score}} json)")
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise TypeError(f"got {type(data).__name__}")
        return {int(key): float(score) for key, score in data.items()}
    except (ValueError, TypeError) as exc:
        raise CLIError(f"--class-thresholds {value}: expected a json object of category id -> score ({exc})") from None


@contextmanager
def resolved_model(reference: str | os.PathLike, tracking_uri: str | None) -> Iterator[Path]:
    """The local checkpoint file of a model reference, for the length of the ``with`` block.

    Args:
        reference: a file (returned as it is), ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``,
            ``runs:/RUN_ID/path`` or an artifact URI (:func:`pipelines.tracking.resolve_model_uri`).
        tracking_uri: the MLflow store (default: ``MLFLOW_TRACKING_URI``).

    Raises:
        ValueError: one line naming the reference and why (unknown model, alias, version or run; no file).
    """
    from pipelines.tracking import resolve_model_uri

    with tempfile.TemporaryDirectory(prefix="mrcnn-model-") as tmp:
        yield resolve_model_uri(reference, tracking_uri=tracking_uri, dst_dir=tmp)


def check_model_reference(reference: str, tracking_uri: str | None) -> None:
    """Check, without downloading anything, that a model reference names something: a registered model's
    alias or version, a run, or an existing local file (other URIs are left to the download).

    Raises:
        ValueError: one line, as :func:`pipelines.tracking.resolve_model_uri` gives it.
    """
    scheme = urllib.parse.urlparse(reference).scheme
    if scheme in ("models", "runs"):
        from pipelines.tracking import describe_model

        describe_model(reference, tracking_uri=tracking_uri)
    elif scheme in ("", "file"):
        path = Path(urllib.parse.unquote(urllib.parse.urlparse(reference).path)) if scheme else Path(reference)
        if not path.exists():
            raise ValueError(f"model URI {reference!r}: no such file")
