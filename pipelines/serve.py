"""Online segmentation: a Ray Serve application with a FastAPI ingress (``mrcnn serve``).

One deployment, :class:`SegmentationService`. Each replica loads the model once (in its constructor,
never at import time), decodes and checks every request itself, and groups concurrent requests into
one forward pass with ``@serve.batch``. The same :class:`mrcnn.predictor.Predictor` as ``mrcnn
predict`` does the work, so a request gives the detections ``mrcnn predict`` gives for that file.

Routes (see docs/serving.md for the reference):

- ``POST /v1/segment``: one image (raw body or multipart); JSON detections, or a PNG overlay.
- ``GET /v1/model``: which model is served (URI, registry version, segm AP, category map).
- ``GET /v1/stats``: this replica's request and batch-size counters.
- ``GET /healthz``: liveness; the only route open without the token.
- ``GET /``: a web page to try the model in a browser.

Build the application with :func:`build_app` (also the ``import_path`` of ``serve_config.yaml`` and
of ``serve run pipelines.serve:build_app model=...``); :func:`run_server` is ``mrcnn serve``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import hmac
import math
import os
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from ray import serve

if TYPE_CHECKING:
    import numpy as np
    from ray.serve import Application

TOKEN_ENV = "MRCNN_SERVE_TOKEN"
WEB_PAGE = Path(__file__).resolve().parent / "web" / "index.html"
MASK_FORMATS = ("rle", "polygon")
# Content types sent as the raw body. Others (besides multipart) get 415.
RAW_IMAGE_TYPES = ("image/", "application/octet-stream")
MULTIPART_FIELDS = ("image", "file")
QUERY_KEYS = ("score_threshold", "max_detections", "mask_format", "overlay")
MAX_DETECTIONS_LIMIT = 10_000
# ImageDecodeError.reason -> HTTP status: the body is not a usable image (400) or is one we refuse (422).
DECODE_ERROR_STATUS = {"too_many_pixels": 422, "zero_size": 422, "unsupported_mode": 422}


# ----------------------------------------------------------------------------------------------
# Configuration


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
            read by :func:`build_app`); None leaves the endpoint open.
        max_body_bytes: larger request bodies get 413.
        max_pixels: images whose header declares more pixels get 422, before any decoding.
        min_side: images with a side shorter than this get 422.
        max_aspect_ratio: images longer than this times their width (or wider) get 422.
        score_threshold: default class-score threshold when the request gives none.
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
    score_threshold: float = 0.5

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
        if not 0.0 <= self.score_threshold <= 1.0:
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
    try:
        if name == "autoscale":
            parts = value.split(":") if isinstance(value, str) else list(value)
            if len(parts) != 2:
                raise ValueError
            return (int(parts[0]), int(parts[1]))
        base = type_name.split("|")[0].strip()
        if base == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return text in ("true", "1", "yes")
        if base == "int":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if base == "float":
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise ValueError(f"serve config {name}: expected {type_name}, got {value!r}") from None


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


# ----------------------------------------------------------------------------------------------
# Request handling (pure functions, tested without Serve)


class ApiError(Exception):
    """A request the endpoint refuses: answered as ``{"error": {"status", "code", "message"}}``.

    Attributes:
        status (int): the HTTP status (4xx).
        code (str): short stable reason, e.g. ``body_too_large``, ``not_an_image``.
    """

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


@dataclass(frozen=True)
class SegmentQuery:
    """The query options of ``POST /v1/segment``."""

    score_threshold: float
    max_detections: int | None = None
    mask_format: str = "rle"
    overlay: bool = False


def parse_segment_query(params: Mapping[str, str] | list[tuple[str, str]], *, default_threshold: float) -> SegmentQuery:
    """Validate ``/v1/segment``'s query; ``ApiError(422)`` naming the parameter on anything bad.

    Args:
        params: ``(key, value)`` pairs (repeated keys are refused) or a mapping.
        default_threshold: the score threshold when none is given.
    """
    items = list(params.items()) if isinstance(params, Mapping) else list(params)
    seen: dict[str, str] = {}
    for key, value in items:
        if key not in QUERY_KEYS:
            raise ApiError(422, "bad_query", f"unknown query parameter {key!r}; known: {', '.join(QUERY_KEYS)}")
        if key in seen:
            raise ApiError(422, "bad_query", f"query parameter {key!r} given more than once")
        seen[key] = value
    threshold = default_threshold
    if "score_threshold" in seen:
        raw = seen["score_threshold"]
        try:
            threshold = float(raw)
        except ValueError:
            threshold = math.nan
        if not (math.isfinite(threshold) and 0.0 <= threshold <= 1.0):
            raise ApiError(422, "bad_query", f"score_threshold: expected a number in [0, 1], got {raw!r}")
    max_detections = None
    if "max_detections" in seen:
        raw = seen["max_detections"]
        if not raw.strip().isdigit() or int(raw) > MAX_DETECTIONS_LIMIT:
            raise ApiError(422, "bad_query", f"max_detections: expected an integer in [0, {MAX_DETECTIONS_LIMIT}], got {raw!r}")
        max_detections = int(raw)
    mask_format = seen.get("mask_format", "rle")
    if mask_format not in MASK_FORMATS:
        raise ApiError(422, "bad_query", f"mask_format: expected one of {', '.join(MASK_FORMATS)}, got {mask_format!r}")
    overlay = False
    if "overlay" in seen:
        raw = seen["overlay"].strip().lower()
        if raw not in ("true", "false", "1", "0"):
            raise ApiError(422, "bad_query", f"overlay: expected true or false, got {seen['overlay']!r}")
        overlay = raw in ("true", "1")
    return SegmentQuery(score_threshold=threshold, max_detections=max_detections, mask_format=mask_format, overlay=overlay)


def check_content_type(content_type: str | None) -> str:
    """``"raw"`` or ``"multipart"`` for a request's Content-Type; ``ApiError(415)`` for anything else.

    A missing Content-Type is read as ``application/octet-stream`` (the bytes are sniffed).
    """
    media_type = (content_type or "application/octet-stream").split(";")[0].strip().lower()
    if media_type == "multipart/form-data":
        return "multipart"
    if media_type.startswith(RAW_IMAGE_TYPES):
        return "raw"
    raise ApiError(
        415,
        "unsupported_media_type",
        f"Content-Type {media_type!r} is not accepted: send the image as the raw body (image/* or "
        "application/octet-stream) or as multipart/form-data with a file field named 'image'",
    )


def decode_request_image(data: bytes, config: ServeConfig, *, source: str = "request body") -> np.ndarray:
    """Decode and check a request's image: ``ApiError`` 400 (not an image) or 422 (refused).

    Returns:
        np.ndarray[H, W, 3] uint8: RGB, EXIF orientation applied (``mrcnn.data.images.decode_image``).
    """
    from mrcnn.data.images import ImageDecodeError, decode_image

    try:
        image = decode_image(data, source=source, max_pixels=config.max_pixels)
    except ImageDecodeError as exc:
        raise ApiError(DECODE_ERROR_STATUS.get(exc.reason, 400), exc.reason, str(exc)) from None
    H, W = image.shape[:2]
    if min(H, W) < config.min_side:
        raise ApiError(422, "image_too_small", f"{source}: image is {W}x{H} pixels, each side must be at least {config.min_side}")
    if max(H, W) > config.max_aspect_ratio * min(H, W):
        raise ApiError(
            422, "aspect_ratio_too_large",
            f"{source}: image is {W}x{H} pixels, the long side may be at most {config.max_aspect_ratio:g}x the short side",
        )  # fmt: skip
    return image


def bearer_token_ok(authorization: str | None, token: str) -> bool:
    """Whether an Authorization header carries ``token``: ``Bearer <token>``, or ``Basic`` with the
    token as the password (what a browser sends after its login prompt, for the web page)."""
    if not authorization:
        return False
    scheme, _, credentials = authorization.strip().partition(" ")
    credentials = credentials.strip()
    if scheme.lower() == "bearer":
        offered = credentials
    elif scheme.lower() == "basic":
        try:
            offered = base64.b64decode(credentials, validate=True).decode("utf-8").partition(":")[2]
        except (binascii.Error, UnicodeDecodeError):
            return False
    else:
        return False
    return hmac.compare_digest(offered.encode("utf-8"), token.encode("utf-8"))


def instances_json(records: list[dict[str, Any]], mask_format: str) -> list[dict[str, Any]]:
    """Detection records as the response's ``instances``: ``segmentation`` as RLE or polygons."""
    if mask_format == "rle":
        return records
    from mrcnn.data.masks import mask_to_polygons, rle_to_mask

    return [
        {**record, "segmentation": mask_to_polygons(rle_to_mask(record["segmentation"])) if record["segmentation"] else None}
        for record in records
    ]


class BatchStats:
    """What one replica has served: requests, forward passes, and how many images each pass held."""

    def __init__(self) -> None:
        self.batch_sizes: Counter[int] = Counter()
        self.errors: Counter[str] = Counter()
        self.requests = 0
        self.started = time.time()

    def record_batch(self, size: int) -> None:
        self.batch_sizes[size] += 1

    def snapshot(self) -> dict[str, Any]:
        batches = sum(self.batch_sizes.values())
        images = sum(size * count for size, count in self.batch_sizes.items())
        return {
            "requests": self.requests,
            "batches": batches,
            "images": images,
            "mean_batch_size": images / batches if batches else None,
            "max_batch_size": max(self.batch_sizes, default=0),
            "batch_sizes": {str(size): count for size, count in sorted(self.batch_sizes.items())},
            "errors": dict(self.errors),
            "uptime_s": round(time.time() - self.started, 3),
        }


@dataclass
class _Job:
    """One image waiting for a forward pass."""

    image: np.ndarray
    score_threshold: float


# ----------------------------------------------------------------------------------------------
# The deployment


@serve.deployment
@serve.ingress()
class SegmentationService:
    """A replica: the model, the batch queue and the HTTP routes (built per replica, see module doc).

    Args:
        config: ``ServeConfig.to_dict()``.
    """

    def __init__(self, config: dict[str, Any]):
        import torch

        from mrcnn import runtime
        from mrcnn.predictor import Predictor
        from pipelines.tracking import describe_model, resolve_model_uri

        self.config = ServeConfig.from_dict(config)
        if not self.config.gpu:
            torch.set_num_threads(max(1, int(self.config.cpus_per_replica)))
        # The replica's process, the replica's choice (mrcnn.runtime): on a CPU malloc keeps freed memory,
        # which is also what makes the Winograd 3x3s pay off.
        winograd = not self.config.gpu and runtime.keep_freed_memory()
        checkpoint = resolve_model_uri(self.config.model, tracking_uri=self.config.tracking_uri)
        self.predictor = Predictor.from_checkpoint(
            checkpoint, device="cuda" if self.config.gpu else "cpu", score_threshold=self.config.score_threshold,
            optimize={"winograd": winograd},
        )
        self.model_info = self._describe(describe_model, checkpoint)
        self.stats = BatchStats()
        self._predict_batch.set_max_batch_size(self.config.max_batch_size)
        self._predict_batch.set_batch_wait_timeout_s(self.config.batch_wait_timeout_s)
        self.replica = self._replica_names()

    def _describe(self, describe_model, checkpoint: Path) -> dict[str, Any]:
        """URI, registry name/version/alias, run, segm AP (registry tag, else the checkpoint's metadata)."""
        try:
            info = describe_model(self.config.model, tracking_uri=self.config.tracking_uri)
        except Exception as exc:  # noqa: BLE001 - the model is loaded; a failed registry lookup must not stop serving
            info = {"uri": self.config.model, "describe_error": str(exc).splitlines()[0][:300]}
        if info.get("segm_AP") is None:
            info["segm_AP"] = self.predictor.metadata.get("segm_AP")
        categories = self.predictor.categories
        info.update(
            checkpoint=checkpoint.name,
            preset=self.predictor.config.name,
            task=self.predictor.config.model.task,
            num_classes=categories.num_classes,
            categories=categories.to_list(),  # keypoint categories also name their keypoints and skeleton
        )
        return info

    @staticmethod
    def _replica_names() -> dict[str, str | None]:
        import ray

        try:
            context = serve.get_replica_context()
            replica_id = context.replica_id.unique_id
        except Exception:  # noqa: BLE001 - not inside a Serve replica
            replica_id = None
        return {"id": replica_id, "actor": ray.get_runtime_context().get_actor_name()}

    # -- the model ---------------------------------------------------------------------------

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05)
    async def _predict_batch(self, jobs: list[_Job]) -> list[Any]:
        """Batched by Serve: one forward pass for every queued image (off the event loop)."""
        self.stats.record_batch(len(jobs))
        results = await asyncio.to_thread(self._predict_jobs, jobs)
        return [(result, len(jobs)) for result in results]

    def _predict_jobs(self, jobs: list[_Job]) -> list[Any]:
        """The model's detections per job (``predict_raw`` dicts), or the exception its image raised.

        The model runs at the batch's lowest threshold and each job keeps its own (``scores >
        threshold``, as the model's own filter), which gives the same detections as running it alone.
        If the batch fails, each image runs alone, so one bad image fails only its own request.
        """
        threshold = min(job.score_threshold for job in jobs)
        raw = self.predictor.predict_each([job.image for job in jobs], raw=True, score_threshold=threshold)
        return [
            detection if isinstance(detection, Exception) else _keep_above(detection, job.score_threshold)
            for detection, job in zip(raw, jobs)
        ]

    # -- HTTP -------------------------------------------------------------------------------

    def __serve_build_asgi_app__(self) -> FastAPI:
        return build_api(self)


def _keep_above(detection: dict[str, Any], threshold: float) -> dict[str, Any]:
    keep = detection["scores"] > threshold
    return {key: value[keep] for key, value in detection.items()}


def build_api(service: SegmentationService) -> FastAPI:
    """The replica's FastAPI app: routes, errors as JSON, and the token check."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from mrcnn.predictor import detections_to_records
    from mrcnn.visualize import overlay_png

    config = service.config
    api = FastAPI(title="mrcnn", docs_url=None, redoc_url=None, openapi_url=None)
    page = WEB_PAGE.read_text(encoding="utf-8")

    def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        service.stats.errors[code] += 1
        return JSONResponse({"error": {"status": status, "code": code, "message": message}}, status_code=status, headers=headers)

    @api.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @api.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail), getattr(exc, "headers", None))

    @api.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:  # a bug: still JSON, still logged
        import logging

        logging.getLogger("ray.serve").exception("unexpected error in %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}")

    @api.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "bad_request", "; ".join(str(e.get("msg")) for e in exc.errors()))

    @api.middleware("http")
    async def _authorize(request: Request, call_next):
        if config.token and request.url.path != "/healthz" and not bearer_token_ok(request.headers.get("authorization"), config.token):
            # The page asks the browser for credentials (Basic, token as password); the API asks for a bearer token.
            challenge = 'Basic realm="mrcnn", charset="UTF-8"' if request.url.path == "/" else 'Bearer realm="mrcnn"'
            return error_response(401, "unauthorized", "missing or wrong token: send 'Authorization: Bearer <token>'",
                                  {"WWW-Authenticate": challenge})  # fmt: skip
        return await call_next(request)

    @api.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @api.get("/", response_class=HTMLResponse)
    async def index():
        return HTMLResponse(page, headers={"Cache-Control": "no-cache"})

    @api.get("/v1/model")
    async def model():
        return {
            **service.model_info,
            "device": str(service.predictor.device),
            "default_score_threshold": config.score_threshold,
            "batching": {"max_batch_size": config.max_batch_size, "batch_wait_timeout_s": config.batch_wait_timeout_s},
            "limits": {
                "max_body_bytes": config.max_body_bytes,
                "max_pixels": config.max_pixels,
                "min_side": config.min_side,
                "max_aspect_ratio": config.max_aspect_ratio,
            },
            "replica": service.replica,
        }

    @api.get("/v1/stats")
    async def stats():
        return {"replica": service.replica, **service.stats.snapshot()}

    @api.post("/v1/segment")
    async def segment(request: Request):
        started = time.perf_counter()
        service.stats.requests += 1
        query = parse_segment_query(request.query_params.multi_items(), default_threshold=config.score_threshold)
        kind = check_content_type(request.headers.get("content-type"))
        body = await _read_body(request, config.max_body_bytes)
        data = body if kind == "raw" else await _multipart_file(request, body)
        image = await asyncio.to_thread(decode_request_image, data, config)
        result, batch_size = await service._predict_batch(_Job(image=image, score_threshold=query.score_threshold))
        if isinstance(result, Exception):
            raise ApiError(422, "inference_failed", f"the model could not process this image: {str(result).splitlines()[0][:300]}")
        records = detections_to_records(result, service.predictor.categories, max_detections=query.max_detections)
        headers = {"X-Batch-Size": str(batch_size), "X-Replica": str(service.replica["id"])}
        H, W = image.shape[:2]
        if query.overlay:
            png = await asyncio.to_thread(overlay_png, image, records, skeletons=service.predictor.categories.skeletons)
            return Response(png, media_type="image/png", headers={**headers, "X-Instances": str(len(records))})
        instances = await asyncio.to_thread(instances_json, records, query.mask_format)
        payload = {
            "model": {key: service.model_info.get(key) for key in ("uri", "name", "version")},
            "image": {"height": H, "width": W},
            "score_threshold": query.score_threshold,
            "mask_format": query.mask_format,
            "num_instances": len(instances),
            "instances": instances,
            "batch_size": batch_size,
            "time_ms": round((time.perf_counter() - started) * 1000, 1),
        }
        return JSONResponse(payload, headers=headers)

    return api


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it (or its declared length) passes ``limit``."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise ApiError(400, "bad_content_length", f"Content-Length {declared!r} is not a number")
        if int(declared) > limit:
            raise ApiError(413, "body_too_large", f"request body is {int(declared)} bytes, the limit is {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "body_too_large", f"request body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _multipart_file(request: Request, body: bytes) -> bytes:
    """The uploaded file of a multipart body: the field ``image`` (or ``file``), else its only file."""
    from starlette.datastructures import UploadFile
    from starlette.formparsers import MultiPartException, MultiPartParser

    async def stream():
        yield body

    try:
        form = await MultiPartParser(request.headers, stream(), max_files=4, max_fields=16).parse()
    except MultiPartException as exc:
        raise ApiError(400, "bad_multipart", f"cannot parse the multipart body: {exc.message}") from None
    files = {key: value for key, value in form.multi_items() if isinstance(value, UploadFile)}
    try:
        upload = next((files[name] for name in MULTIPART_FIELDS if name in files), None)
        if upload is None and len(files) == 1:
            upload = next(iter(files.values()))
        if upload is None:
            raise ApiError(400, "no_image_field",
                           f"multipart body has {len(files)} file field(s) {sorted(files)}; send one named 'image'")  # fmt: skip
        return await upload.read()
    finally:
        await form.close()


# ----------------------------------------------------------------------------------------------
# Builder and CLI


def build_app(args: dict[str, Any]) -> Application:
    """The Serve application: ``serve run pipelines.serve:build_app model=URI [key=value ...]``.

    Args:
        args: :class:`ServeConfig` fields (strings are converted); a ``ServeConfig`` also works. The
            token defaults to the ``MRCNN_SERVE_TOKEN`` environment variable where this runs.
    """
    config = args if isinstance(args, ServeConfig) else ServeConfig.from_dict(args)
    if config.token is None and os.environ.get(TOKEN_ENV):
        config = dataclasses.replace(config, token=os.environ[TOKEN_ENV])
    return SegmentationService.options(**deployment_options(config)).bind(config.to_dict())


def run_server(
    config: ServeConfig,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    app_name: str = "mrcnn",
    ray_address: str | None = None,
    detach: bool = False,
    wait_s: float | None = None,
) -> str:
    """``mrcnn serve``: deploy the application and serve until interrupted.

    Args:
        host, port: where Serve's HTTP proxy listens (127.0.0.1 unless told otherwise; used only when
            this call starts Serve on the cluster).
        ray_address: a running cluster (``auto``: the one ``ray start`` started here); default
            ``RAY_ADDRESS``, else a new local Ray that stops with this call.
        detach: return once deployed and leave the application running (on a cluster).
        wait_s: serve this long and stop (None: until Ctrl-C).

    Returns:
        The endpoint's URL.
    """
    from pipelines.common.session import ray_session, session_is_local

    local = session_is_local(ray_address)
    if detach and local:
        raise ValueError("serve --detach needs a running cluster (--address or RAY_ADDRESS): a local Ray ends with this process")
    url = f"http://{host}:{port}/"
    leave_running = False
    with ray_session(ray_address):
        try:
            serve.start(http_options={"host": host, "port": port})
            print(f"mrcnn serve: deploying {config.model} ({_scaling_text(config)}) ...", flush=True)
            serve.run(build_app(config), name=app_name, route_prefix="/")
            token_note = " (bearer token required)" if config.token or os.environ.get(TOKEN_ENV) else ""
            print(f"mrcnn serve: ready at {url} (web page), POST {url}v1/segment, GET {url}v1/model{token_note}", flush=True)
            if detach:
                leave_running = True
                return url
            deadline = None if wait_s is None else time.monotonic() + wait_s
            while deadline is None or time.monotonic() < deadline:
                time.sleep(0.5 if deadline is None else min(0.5, max(0.0, deadline - time.monotonic())))
        except KeyboardInterrupt:
            print("mrcnn serve: stopping", flush=True)
        finally:
            if not leave_running:
                if local:
                    serve.shutdown()
                else:
                    serve.delete(app_name)
    return url


def _scaling_text(config: ServeConfig) -> str:
    scaling = f"autoscale {config.autoscale[0]}-{config.autoscale[1]}" if config.autoscale else f"{config.replicas} replica(s)"
    return f"{scaling}, batches of up to {config.max_batch_size}, {'GPU' if config.gpu else 'CPU'}"
