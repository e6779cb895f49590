"""The endpoint's configuration: :class:`ServeConfig` (builder args, ``mrcnn serve``'s flags) and the
Serve deployment options it gives (:func:`deployment_options`)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

TOKEN_ENV = "MRCNN_SERVE_TOKEN"


@dataclass(frozen=True)
class ServeConfig:
    """Everything a deployment of the endpoint needs; the builder's args and ``mrcnn serve``'s flags.

    Attributes:
        model: ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``runs:/RUN_ID/path`` or a checkpoint
            path (:func:`pipelines.tracking.resolve_model_uri`); each replica resolves it itself.
        tracking_uri: MLflow server or store for ``models:/`` and ``runs:/`` URIs (default:
            ``MLFLOW_TRACKING_URI``).
        gpu: one GPU per replica, model on ``cuda``.
        replicas: fixed number of replicas (ignored with ``autoscale``).
        autoscale: ``(min, max)`` replicas; Serve scales on ongoing requests per replica.
        target_ongoing_requests: the autoscaler's target per replica (default: ``max_batch_size``).
        cpus_per_replica: Ray CPUs reserved per replica; also its torch threads on the CPU.
        max_batch_size: at most this many images per forward pass (1 turns batching off).
        batch_wait_timeout_s: how long the first request of a batch waits for others.
        max_ongoing_requests: requests a replica holds at once (>= ``max_batch_size``).
        max_queued_requests: requests waiting for a replica, over all replicas of a caller; beyond
            that the endpoint answers 503 with ``Retry-After``. -1 means no bound.
        retry_after_s: the ``Retry-After`` of those 503s.
        token: bearer token every route but ``/healthz`` requires (default: ``MRCNN_SERVE_TOKEN``,
            read by :func:`pipelines.serve.build_app`); None leaves the endpoint open.
        max_body_bytes: larger request bodies get 413.
        max_pixels: images whose header declares more pixels get 422, before any decoding.
        min_side: images with a side shorter than this get 422.
        max_aspect_ratio: images longer than this times their width (or wider) get 422.
        score_threshold: None (default): requests that give no threshold get the per-class score thresholds
            stored with the model (0.5 for classes without one, and for a model without any); a number: one
            global class-score threshold instead (the stored ones off). A request may override either.
    """

    model: str
    tracking_uri: str | None = None
    gpu: bool = False
    replicas: int = 1
    autoscale: tuple[int, int] | None = None
    target_ongoing_requests: float | None = None
    cpus_per_replica: float = 1.0
    max_batch_size: int = 8
    batch_wait_timeout_s: float = 0.05
    max_ongoing_requests: int = 16
    max_queued_requests: int = 64
    retry_after_s: float = 1.0
    token: str | None = None
    max_body_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 25_000_000
    min_side: int = 16
    max_aspect_ratio: float = 20.0
    score_threshold: float | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> ServeConfig:
        """Raises ValueError naming the first bad field."""
        if not self.model or not str(self.model).strip():
            raise ValueError("serve config model: expected a model URI or checkpoint path, got nothing")
        positive_ints = ("replicas", "max_batch_size", "max_ongoing_requests", "max_body_bytes", "max_pixels", "min_side")
        for name in positive_ints:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"serve config {name}: expected a positive integer, got {value!r}")
        if self.max_queued_requests != -1 and self.max_queued_requests < 1:
            raise ValueError(f"serve config max_queued_requests: expected -1 or a positive integer, got {self.max_queued_requests!r}")
        if self.max_ongoing_requests < self.max_batch_size:
            raise ValueError(
                f"serve config max_ongoing_requests ({self.max_ongoing_requests}) must be >= max_batch_size "
                f"({self.max_batch_size}), or batches can never fill"
            )
        for name in ("batch_wait_timeout_s", "retry_after_s", "cpus_per_replica"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"serve config {name}: expected a non-negative number, got {value!r}")
        if not (math.isfinite(self.max_aspect_ratio) and self.max_aspect_ratio >= 1):
            raise ValueError(f"serve config max_aspect_ratio: expected a number >= 1, got {self.max_aspect_ratio!r}")
        if self.score_threshold is not None and not 0.0 <= self.score_threshold <= 1.0:
            raise ValueError(f"serve config score_threshold: expected a value in [0, 1], got {self.score_threshold!r}")
        if self.autoscale is not None:
            low, high = self.autoscale
            if not (isinstance(low, int) and isinstance(high, int) and 0 <= low <= high and high >= 1):
                raise ValueError(f"serve config autoscale: expected MIN:MAX with 0 <= MIN <= MAX, MAX >= 1, got {self.autoscale!r}")
        if self.target_ongoing_requests is not None and not self.target_ongoing_requests > 0:
            raise ValueError(f"serve config target_ongoing_requests: expected a positive number, got {self.target_ongoing_requests!r}")
        return self

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["autoscale"] = list(self.autoscale) if self.autoscale is not None else None
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ServeConfig:
        """From builder args: a YAML ``args:`` mapping or ``serve run ... key=value`` strings.

        Strings are converted to each field's type; ``autoscale`` takes ``"MIN:MAX"`` or ``[MIN, MAX]``.

        Raises:
            ValueError: an unknown key (naming the known ones) or a value of the wrong type.
        """
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ValueError(f"serve config: unknown key(s) {unknown}; known keys: {sorted(fields)}")
        values = {name: _convert_field(name, fields[name].type, value) for name, value in data.items()}
        return cls(**values)


def _convert_field(name: str, type_name: str, value: Any) -> Any:
    """A builder arg as its field's type (``type_name`` is the annotation as a string)."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null")):
        if "None" in type_name:
            return None
        raise ValueError(f"serve config {name}: a value is required")
    base = "autoscale" if name == "autoscale" else type_name.split("|")[0].strip()
    try:
        return _CONVERTERS.get(base, str)(value)
    except (TypeError, ValueError):
        raise ValueError(f"serve config {name}: expected {type_name}, got {value!r}") from None


def _to_min_max(value: Any) -> tuple[int, int]:
    parts = value.split(":") if isinstance(value, str) else list(value)
    if len(parts) != 2:
        raise ValueError
    return (int(parts[0]), int(parts[1]))


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text not in ("true", "false", "1", "0", "yes", "no"):
        raise ValueError
    return text in ("true", "1", "yes")


def _to_int(value: Any) -> int:
    if isinstance(value, float) and not value.is_integer():
        raise ValueError
    return int(value)


# A field's base type (or "autoscale") -> its converter; raises TypeError/ValueError on a bad value.
_CONVERTERS = {"autoscale": _to_min_max, "bool": _to_bool, "int": _to_int, "float": float, "str": str}


def deployment_options(config: ServeConfig) -> dict[str, Any]:
    """The Serve deployment options (replicas or autoscaling, queue bounds, resources) of a config."""
    options: dict[str, Any] = {
        "max_ongoing_requests": config.max_ongoing_requests,
        "max_queued_requests": config.max_queued_requests,
        "backpressure_config": {"status_code": 503, "retry_after_s": config.retry_after_s},
        "ray_actor_options": {"num_cpus": config.cpus_per_replica, "num_gpus": 1 if config.gpu else 0},
        "health_check_period_s": 10.0,
        "graceful_shutdown_timeout_s": 10.0,
    }
    if config.autoscale is not None:
        low, high = config.autoscale
        options["autoscaling_config"] = {
            "min_replicas": low,
            "initial_replicas": max(low, 1),
            "max_replicas": high,
            # Enough work in flight per replica to fill a batch before adding another replica.
            "target_ongoing_requests": config.target_ongoing_requests or float(config.max_batch_size),
            "upscale_delay_s": 5.0,
            "downscale_delay_s": 60.0,
        }
    else:
        options["num_replicas"] = config.replicas
    return options
