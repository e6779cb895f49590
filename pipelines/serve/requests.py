"""HTTP parsing and limits of the endpoint: query, content type, body size, multipart, the image, the token.

Everything here answers a bad request with :class:`ApiError` (status, stable code, message); the
routes (:mod:`pipelines.serve.api`) turn it into ``{"error": {...}}``. The functions but the two
body readers are pure and tested without Serve.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    from starlette.requests import Request

    from pipelines.serve.config import ServeConfig

MASK_FORMATS = ("rle", "polygon")
# Content types sent as the raw body. Others (besides multipart) get 415.
RAW_IMAGE_TYPES = ("image/", "application/octet-stream")
MULTIPART_FIELDS = ("image", "file")
QUERY_KEYS = ("score_threshold", "class_thresholds", "max_detections", "mask_format", "overlay")
MAX_DETECTIONS_LIMIT = 10_000
# ImageDecodeError.reason -> HTTP status: the body is not a usable image (400) or is one we refuse (422).
DECODE_ERROR_STATUS = {"too_many_pixels": 422, "zero_size": 422, "unsupported_mode": 422}


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
    """The query options of ``POST /v1/segment``.

    ``score_threshold``: one global threshold for this request (the class thresholds off), or None;
    ``class_thresholds``: ``{category_id: score}`` replacing the model's for this request (``{}``: none), or
    None. Neither: the thresholds the model is served with (``mrcnn.Predictor``'s semantics).
    """

    score_threshold: float | None
    max_detections: int | None = None
    mask_format: str = "rle"
    overlay: bool = False
    class_thresholds: dict[int, float] | None = None


def parse_segment_query(
    params: Mapping[str, str] | list[tuple[str, str]],
    *,
    default_threshold: float | None = None,
    category_ids: Sequence[int] | None = None,
) -> SegmentQuery:
    """Validate ``/v1/segment``'s query; ``ApiError(422)`` naming the parameter on anything bad.

    Args:
        params: ``(key, value)`` pairs (repeated keys are refused) or a mapping. ``class_thresholds`` is a JSON
            object ``{"category_id": score}`` (``{}``: none); it cannot be given with ``score_threshold``.
        default_threshold: the score threshold when neither ``score_threshold`` nor ``class_thresholds`` is given.
        category_ids: the model's category ids, which ``class_thresholds`` may name (None: any).
    """
    seen = _query_values(params)
    if "score_threshold" in seen and "class_thresholds" in seen:
        raise _bad_query("class_thresholds: give either score_threshold (one global threshold) or class_thresholds, not both")
    class_thresholds = None if "class_thresholds" not in seen else _class_thresholds(seen["class_thresholds"], category_ids)
    threshold = default_threshold if class_thresholds is None else None
    if "score_threshold" in seen:
        threshold = _score_threshold(seen["score_threshold"])
    max_detections = None if "max_detections" not in seen else _max_detections(seen["max_detections"])
    mask_format = seen.get("mask_format", "rle")
    if mask_format not in MASK_FORMATS:
        raise _bad_query(f"mask_format: expected one of {', '.join(MASK_FORMATS)}, got {mask_format!r}")
    overlay = False if "overlay" not in seen else _overlay(seen["overlay"])
    return SegmentQuery(score_threshold=threshold, max_detections=max_detections, mask_format=mask_format, overlay=overlay,
                        class_thresholds=class_thresholds)  # fmt: skip


def _bad_query(message: str) -> ApiError:
    return ApiError(422, "bad_query", message)


def _query_values(params: Mapping[str, str] | list[tuple[str, str]]) -> dict[str, str]:
    """The query as key -> value, refusing unknown and repeated keys."""
    items = list(params.items()) if isinstance(params, Mapping) else list(params)
    seen: dict[str, str] = {}
    for key, value in items:
        if key not in QUERY_KEYS:
            raise _bad_query(f"unknown query parameter {key!r}; known: {', '.join(QUERY_KEYS)}")
        if key in seen:
            raise _bad_query(f"query parameter {key!r} given more than once")
        seen[key] = value
    return seen


def _score_threshold(raw: str) -> float:
    try:
        threshold = float(raw)
    except ValueError:
        threshold = math.nan
    if not (math.isfinite(threshold) and 0.0 <= threshold <= 1.0):
        raise _bad_query(f"score_threshold: expected a number in [0, 1], got {raw!r}")
    return threshold


def _class_thresholds(raw: str, category_ids: Sequence[int] | None) -> dict[int, float]:
    """``{"category_id": score, ...}`` as ``{category_id: score}``; ids must be the model's, scores in [0, 1]."""
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise _bad_query(f"class_thresholds: expected a JSON object of category id -> score, e.g. {{\"1\": 0.7}}, got {raw[:200]!r}")
    thresholds: dict[int, float] = {}
    for key, value in data.items():
        if not key.strip().lstrip("-").isdigit():
            raise _bad_query(f"class_thresholds: category id {key!r} is not an integer")
        category_id = int(key)
        if category_ids is not None and category_id not in category_ids:
            raise _bad_query(f"class_thresholds: unknown category id {category_id}; the model's ids: {list(category_ids)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise _bad_query(f"class_thresholds: the threshold of category {category_id} must be a number in [0, 1], got {value!r}")
        thresholds[category_id] = float(value)
    return thresholds


def _max_detections(raw: str) -> int:
    if not raw.strip().isdigit() or int(raw) > MAX_DETECTIONS_LIMIT:
        raise _bad_query(f"max_detections: expected an integer in [0, {MAX_DETECTIONS_LIMIT}], got {raw!r}")
    return int(raw)


def _overlay(raw: str) -> bool:
    text = raw.strip().lower()
    if text not in ("true", "false", "1", "0"):
        raise _bad_query(f"overlay: expected true or false, got {raw!r}")
    return text in ("true", "1")


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

    Args:
        data: the encoded image (JPEG, PNG, ... as ``mrcnn.data.images.decode_image`` reads).
        config: its ``max_pixels``, ``min_side`` and ``max_aspect_ratio`` are the limits.

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
    """Detection records as the response's ``instances``: ``segmentation`` as RLE or polygons.

    Args:
        records: ``mrcnn.predictor.detections_to_records`` dicts (``segmentation`` as COCO RLE, or None).
        mask_format: ``"rle"`` (the records as they are) or ``"polygon"`` (lists of x, y, ... per part).
    """
    if mask_format == "rle":
        return records
    from mrcnn.data.masks import mask_to_polygons, rle_to_mask

    return [
        {**record, "segmentation": mask_to_polygons(rle_to_mask(record["segmentation"])) if record["segmentation"] else None}
        for record in records
    ]


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it (or its declared length) passes ``limit`` bytes."""
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


async def multipart_file(request: Request, body: bytes) -> bytes:
    """The uploaded file of a multipart body: the field ``image`` (or ``file``), else its only file; 400 otherwise."""
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
