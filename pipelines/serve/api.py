"""The HTTP layer of a replica: the FastAPI app that :func:`build_api` puts in front of its model.

Routes (see docs/serving.md for the reference):

- ``POST /v1/segment``: one image (raw body or multipart); JSON detections, or a PNG overlay.
- ``GET /v1/model``: which model is served (URI, registry version, segm AP, category map, score thresholds).
- ``GET /v1/stats``: this replica's request and batch-size counters.
- ``GET /healthz``: liveness; the only route open without the token.
- ``GET /``: a web page to try the model in a browser (``web/index.html``).

Every refusal is JSON ``{"error": {"status", "code", "message"}}`` and is counted in the stats.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request

from pipelines.serve.requests import ApiError, SegmentQuery, bearer_token_ok, check_content_type, decode_request_image
from pipelines.serve.requests import instances_json, multipart_file, parse_segment_query, read_body

if TYPE_CHECKING:
    from fastapi.responses import JSONResponse

    from pipelines.serve.deployment import SegmentationModel

WEB_PAGE = Path(__file__).resolve().parent / "web" / "index.html"

# (status, code, message, headers) -> the JSON error response, counted in the replica's stats.
ErrorResponse = Callable[[int, str, str, "dict[str, str] | None"], "JSONResponse"]


def build_api(service: SegmentationModel) -> FastAPI:
    """The replica's FastAPI app: routes, errors as JSON, and the token check.

    Args:
        service: the replica's model layer (its config, predictor, model info, stats, replica names).
    """
    from fastapi.responses import JSONResponse

    api = FastAPI(title="mrcnn", docs_url=None, redoc_url=None, openapi_url=None)

    def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        service.stats.errors[code] += 1
        return JSONResponse({"error": {"status": status, "code": code, "message": message}}, status_code=status, headers=headers)

    _add_error_handlers(api, error_response)
    _add_token_check(api, service.config.token, error_response)
    _add_info_routes(api, service)
    _add_segment_route(api, service)
    return api


def _add_error_handlers(api: FastAPI, error_response: ErrorResponse) -> None:
    """Refusals, unknown routes and methods, bad form data and bugs, all as JSON errors."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException

    @api.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @api.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail), getattr(exc, "headers", None))

    @api.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:  # a bug: still JSON, still logged
        logging.getLogger("ray.serve").exception("unexpected error in %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}")

    @api.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "bad_request", "; ".join(str(e.get("msg")) for e in exc.errors()))


def _add_token_check(api: FastAPI, token: str | None, error_response: ErrorResponse) -> None:
    """With a token, every route but ``/healthz`` answers 401 without it (Bearer, or Basic for the page)."""

    @api.middleware("http")
    async def _authorize(request: Request, call_next):
        if token and request.url.path != "/healthz" and not bearer_token_ok(request.headers.get("authorization"), token):
            # The page asks the browser for credentials (Basic, token as password); the API asks for a bearer token.
            challenge = 'Basic realm="mrcnn", charset="UTF-8"' if request.url.path == "/" else 'Bearer realm="mrcnn"'
            return error_response(401, "unauthorized", "missing or wrong token: send 'Authorization: Bearer <token>'",
                                  {"WWW-Authenticate": challenge})  # fmt: skip
        return await call_next(request)


def _add_info_routes(api: FastAPI, service: SegmentationModel) -> None:
    """``/healthz``, the web page at ``/``, ``/v1/model`` and ``/v1/stats``."""
    from fastapi.responses import HTMLResponse

    config = service.config
    page = WEB_PAGE.read_text(encoding="utf-8")

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
            # The global threshold: of every class where class_thresholds is empty, else of those it lacks.
            "default_score_threshold": service.predictor.score_threshold,
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


def _add_segment_route(api: FastAPI, service: SegmentationModel) -> None:
    """``POST /v1/segment``: check and decode the image, batch it, answer JSON instances or a PNG overlay."""
    from fastapi.responses import JSONResponse, Response

    from mrcnn.predictor import detections_to_records
    from mrcnn.visualize import overlay_png
    from pipelines.serve.deployment import Job

    config = service.config
    categories = service.predictor.categories

    @api.post("/v1/segment")
    async def segment(request: Request):
        started = time.perf_counter()
        service.stats.requests += 1
        query = parse_segment_query(request.query_params.multi_items(), category_ids=categories.category_ids)
        kind = check_content_type(request.headers.get("content-type"))
        body = await read_body(request, config.max_body_bytes)
        data = body if kind == "raw" else await multipart_file(request, body)
        image = await asyncio.to_thread(decode_request_image, data, config)
        job = Job(image=image, score_threshold=query.score_threshold, class_thresholds=query.class_thresholds)
        result, batch_size = await service.predict(job)
        if isinstance(result, Exception):
            raise ApiError(422, "inference_failed", f"the model could not process this image: {str(result).splitlines()[0][:300]}")
        records = detections_to_records(result, categories, max_detections=query.max_detections)
        headers = {"X-Batch-Size": str(batch_size), "X-Replica": str(service.replica["id"])}
        if query.overlay:
            png = await asyncio.to_thread(overlay_png, image, records, skeletons=categories.skeletons)
            return Response(png, media_type="image/png", headers={**headers, "X-Instances": str(len(records))})
        instances = await asyncio.to_thread(instances_json, records, query.mask_format)
        in_force = service.predictor.thresholds_in_force(**job.thresholds)
        payload = _segment_payload(service.model_info, image.shape[:2], query, in_force, instances, batch_size, started)
        return JSONResponse(payload, headers=headers)


def _segment_payload(model_info: dict[str, Any], image_size: tuple[int, int], query: SegmentQuery,
                     in_force: tuple[float, dict[int, float]], instances: list[dict[str, Any]], batch_size: int,
                     started: float) -> dict[str, Any]:  # fmt: skip
    """``POST /v1/segment``'s JSON answer (``image_size``: (H, W); ``in_force``: the request's (global threshold,
    ``{category_id: score}``) as ``Predictor.thresholds_in_force`` gives them; ``started``: ``time.perf_counter()``)."""
    H, W = image_size
    default, per_class = in_force
    return {
        "model": {key: model_info.get(key) for key in ("uri", "name", "version")},
        "image": {"height": H, "width": W},
        "score_threshold": default,
        "class_thresholds": {str(c): t for c, t in sorted(per_class.items())},
        "mask_format": query.mask_format,
        "num_instances": len(instances),
        "instances": instances,
        "batch_size": batch_size,
        "time_ms": round((time.perf_counter() - started) * 1000, 1),
    }
