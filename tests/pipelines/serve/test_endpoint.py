"""The online endpoint (``pipelines.serve``) against a real Ray Serve HTTP endpoint on 127.0.0.1.

The module's endpoint serves the small checkpoint through the MLflow registry (``models:/...@best``
in a SQLite store, with per-class score thresholds stored in the model) with 2 replicas, batching and a
bearer token; a second application ("tiny": one
replica, one request at a time, a queue of one) shows the 503 + Retry-After answer to overload, and
serves a keypoint model (masks + keypoints of the synthetic houses).
The replica-kill test runs last: it disturbs the endpoint.
"""

from __future__ import annotations

import base64
import concurrent.futures
import io
import json
import struct
import time
import urllib.parse
import zlib

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as coco_mask

from mrcnn.data.images import decode_image
from mrcnn.data.masks import rle_to_mask, segmentation_to_rle
from tests.conftest import PHOTO
from tests.pipelines.serve_endpoint import Reply, request, serve_endpoint

TOKEN = "test-token-7f3a"
MODEL_NAME = "serve-test"
SEGM_AP = 12.5
MAX_BODY_BYTES = 2_000_000
STORED_THRESHOLDS = {1: 0.0, 3: 0.2}  # registered with the model (thresholds.json); other classes: 0.5


# ---------------------------------------------------------------- inputs


def _png(image: Image.Image, **save_args) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **save_args)
    return buffer.getvalue()


def _jpeg(image: Image.Image, **save_args) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90, **save_args)
    return buffer.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares ``width`` x ``height`` (valid CRC) with one tiny IDAT: a bomb's header."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def _multipart(fields: dict[str, tuple[str | None, bytes, str]]) -> tuple[bytes, str]:
    """A multipart/form-data body: name -> (file name or None for a plain field, bytes, content type)."""
    boundary = "----mrcnn-test-boundary"
    parts = []
    for name, (filename, data, content_type) in fields.items():
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        parts.append(f"--{boundary}\r\nContent-Disposition: {disposition}\r\nContent-Type: {content_type}\r\n\r\n".encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


@pytest.fixture(scope="module")
def photo() -> bytes:
    return PHOTO.read_bytes()


@pytest.fixture(scope="module")
def small_rgb() -> Image.Image:
    """The photo at 64x96 (W x H): fast to segment."""
    return Image.open(PHOTO).convert("RGB").resize((64, 96))


# ---------------------------------------------------------------- the endpoint


@pytest.fixture(scope="module")
def registered_model(small_checkpoint, tmp_path_factory) -> tuple[str, str]:
    """The small checkpoint as version 1 of a registered model, alias best: (models:/ URI, tracking URI)."""
    from pipelines.tracking import Tracker, default_tracking_uri, register_checkpoint

    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        tracking_uri = default_tracking_uri(tmp_path_factory.mktemp("serve-mlflow"))
    with Tracker.start(tracking_uri, "serve-test", "serve-run") as tracker:
        register_checkpoint(tracker, small_checkpoint, model_name=MODEL_NAME, segm_ap=SEGM_AP, thresholds=STORED_THRESHOLDS)
    return f"models:/{MODEL_NAME}@best", tracking_uri


@pytest.fixture(scope="module")
def endpoint(registered_model, small_keypoint_checkpoint):
    model_uri, tracking_uri = registered_model
    apps = {
        "mrcnn": {
            "model": model_uri, "tracking_uri": tracking_uri, "replicas": 2, "max_batch_size": 8,
            "batch_wait_timeout_s": 0.2, "max_ongoing_requests": 16, "token": TOKEN, "max_body_bytes": MAX_BODY_BYTES,
        },
        "tiny": {
            "model": str(small_keypoint_checkpoint), "replicas": 1, "max_batch_size": 1, "max_ongoing_requests": 1,
            "max_queued_requests": 1, "retry_after_s": 3,
        },
    }  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        mp.delenv("MRCNN_SERVE_TOKEN", raising=False)
        with serve_endpoint(apps) as ep:
            yield ep


def _segment(endpoint, data: bytes, content_type: str = "image/png", query: str = "", token: str | None = TOKEN, app: str = "mrcnn") -> Reply:
    return request(endpoint.url(app, f"v1/segment{query}"), data=data, content_type=content_type, token=token)


def _ok(reply: Reply) -> dict:
    assert reply.status == 200, (reply.status, reply.body[:500])
    return reply.json()


# ---------------------------------------------------------------- the endpoint


def test_token_required_everywhere_but_healthz(endpoint, photo):
    assert request(endpoint.url("mrcnn", "healthz")).json() == {"status": "ok"}
    for path, data in [("", None), ("v1/model", None), ("v1/stats", None), ("v1/segment", photo), ("no/such/route", None)]:
        for token in (None, "wrong-token"):
            reply = request(endpoint.url("mrcnn", path), data=data, content_type="image/jpeg" if data else None, token=token)
            assert reply.status == 401, (path, token, reply.status)
            assert reply.error_code == "unauthorized" and "www-authenticate" in reply.headers
    assert request(endpoint.url("mrcnn"), token=TOKEN).status == 200
    basic = base64.b64encode(f"browser:{TOKEN}".encode()).decode()
    page = request(endpoint.url("mrcnn"), headers={"Authorization": f"Basic {basic}"})
    assert page.status == 200 and b"<canvas" in page.body and page.headers["content-type"].startswith("text/html")


def test_model_info(endpoint, registered_model):
    model_uri, _ = registered_model
    info = _ok(request(endpoint.url("mrcnn", "v1/model"), token=TOKEN))
    assert info["uri"] == model_uri
    assert (info["name"], info["version"], info["alias"]) == (MODEL_NAME, "1", "best")
    assert info["segm_AP"] == SEGM_AP
    assert info["preset"] == "r18_fpn_small"
    assert [(c["id"], c["name"], c["label"]) for c in info["categories"]] == [
        (1, "circle", 1), (2, "square", 2), (3, "triangle", 3), (4, "star", 4), (5, "ring", 5)]  # fmt: skip
    assert info["batching"]["max_batch_size"] == 8 and info["limits"]["max_body_bytes"] == MAX_BODY_BYTES
    assert info["class_thresholds"] == {"1": 0.0, "3": 0.2} and info["default_score_threshold"] == 0.5


def test_keypoint_model_answers_keypoints_and_draws_the_skeleton(endpoint, small_rgb, small_keypoint_checkpoint):
    from mrcnn.data.synthetic_keypoints import HOUSE_KEYPOINTS, HOUSE_SKELETON
    from mrcnn.predictor import Predictor
    from mrcnn.visualize import draw_detections

    info = _ok(request(endpoint.url("tiny", "v1/model")))
    assert info["task"] == "keypoints"
    assert info["categories"] == [{"id": 1, "name": "house", "supercategory": "shape", "label": 1,
                                   "keypoints": list(HOUSE_KEYPOINTS), "skeleton": [list(p) for p in HOUSE_SKELETON]}]  # fmt: skip
    data = _png(small_rgb)
    result = _ok(_segment(endpoint, data, query="?score_threshold=0&max_detections=2", token=None, app="tiny"))
    assert result["num_instances"] == 2
    local = Predictor.from_checkpoint(small_keypoint_checkpoint, score_threshold=0.0).predict([np.asarray(small_rgb)], max_detections=2)[0]
    for got, expected in zip(result["instances"], local):  # the same keypoints as the library's predictor
        assert len(got["keypoints"]) == 15 and len(got["keypoint_scores"]) == 5
        assert got["keypoints"] == pytest.approx(expected["keypoints"], abs=0.05)
    overlay = _segment(endpoint, data, query="?score_threshold=0&max_detections=2&overlay=true", token=None, app="tiny")
    assert overlay.status == 200 and overlay.headers["content-type"] == "image/png"
    drawn = np.asarray(Image.open(io.BytesIO(overlay.body)).convert("RGB"))
    image = np.asarray(small_rgb)
    skeletons = {1: HOUSE_SKELETON}
    assert (drawn == draw_detections(image, result["instances"], skeletons=skeletons)).all()
    without = [{k: v for k, v in inst.items() if k != "keypoints"} for inst in result["instances"]]
    assert (drawn != draw_detections(image, without, skeletons=skeletons)).any()  # the skeleton and points are drawn


def _check_instances(result: dict, height: int, width: int) -> None:
    scores = [inst["score"] for inst in result["instances"]]
    assert scores == sorted(scores, reverse=True)
    assert all(score > result["score_threshold"] for score in scores)
    assert result["num_instances"] == len(result["instances"])
    for inst in result["instances"]:
        assert inst["category_name"] == ["circle", "square", "triangle", "star", "ring"][inst["category_id"] - 1]
        x1, y1, x2, y2 = inst["box_xyxy"]
        assert 0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height
        assert inst["bbox"] == pytest.approx([x1, y1, x2 - x1, y2 - y1])
        assert inst["segmentation"]["size"] == [height, width] and isinstance(inst["segmentation"]["counts"], str)
        assert inst["area"] == float(rle_to_mask(inst["segmentation"]).sum())


def test_photo_gives_detection_json(endpoint, photo, registered_model):
    result = _ok(_segment(endpoint, photo, "image/jpeg", "?score_threshold=0&max_detections=5"))
    assert result["image"] == {"height": 640, "width": 427}
    assert result["model"] == {"uri": registered_model[0], "name": MODEL_NAME, "version": "1"}
    assert result["mask_format"] == "rle" and result["num_instances"] == 5
    _check_instances(result, 640, 427)


def test_same_detections_as_mrcnn_predict(endpoint, photo, small_checkpoint, tmp_path):
    """One request (multipart upload) against `mrcnn predict` on the same file with the same model."""
    from pipelines.cli import main

    body, content_type = _multipart({"image": ("photo.jpg", photo, "image/jpeg")})
    served = _ok(_segment(endpoint, body, content_type, "?score_threshold=0"))
    assert main(["predict", str(PHOTO), "--weights", str(small_checkpoint), "--score-threshold", "0",
                 "--out", str(tmp_path / "pred.json")]) == 0  # fmt: skip
    predicted = json.loads((tmp_path / "pred.json").read_text())
    assert len(predicted) == len(served["instances"]) > 0
    for expected, got in zip(predicted, served["instances"]):
        assert got["category_id"] == expected["category_id"]
        assert got["score"] == pytest.approx(expected["score"], abs=1e-4)
        assert got["bbox"] == pytest.approx(expected["bbox"], abs=0.02)
        iou = coco_mask.iou([got["segmentation"]], [expected["segmentation"]], [0])[0][0]
        assert iou > 0.99


def test_mask_formats_and_overlay(endpoint, small_rgb):
    data = _png(small_rgb)
    as_rle = _ok(_segment(endpoint, data, query="?score_threshold=0&max_detections=3"))
    as_polygons = _ok(_segment(endpoint, data, query="?score_threshold=0&max_detections=3&mask_format=polygon"))
    assert as_polygons["mask_format"] == "polygon" and len(as_polygons["instances"]) == len(as_rle["instances"]) == 3
    for rle_inst, poly_inst in zip(as_rle["instances"], as_polygons["instances"]):
        assert {k: v for k, v in rle_inst.items() if k != "segmentation"} == {k: v for k, v in poly_inst.items() if k != "segmentation"}
        mask = rle_to_mask(rle_inst["segmentation"]).astype(bool)
        if not mask.any():
            assert poly_inst["segmentation"] == []
            continue
        polygons = poly_inst["segmentation"]
        assert all(isinstance(p, list) and len(p) >= 8 for p in polygons)
        back = rle_to_mask(segmentation_to_rle(polygons, height=96, width=64)).astype(bool)
        assert (back & mask).sum() == mask.sum()  # every mask pixel is covered (holes are filled)

    overlay = _segment(endpoint, data, query="?score_threshold=0&max_detections=3&overlay=true")
    assert overlay.status == 200 and overlay.headers["content-type"] == "image/png"
    assert overlay.headers["x-instances"] == "3"
    drawn = np.asarray(Image.open(io.BytesIO(overlay.body)).convert("RGB"))
    assert drawn.shape == (96, 64, 3)
    assert np.abs(drawn.astype(int) - np.asarray(small_rgb).astype(int)).sum() > 0


def _image_variants(rgb: Image.Image) -> dict[str, tuple[bytes, tuple[int, int]]]:
    """Encoded inputs of every mode the endpoint must handle: name -> (bytes, displayed (H, W))."""
    grey = rgb.convert("L")
    rgba = rgb.convert("RGBA")
    rgba.putalpha(Image.fromarray(np.tile(np.linspace(0, 255, rgb.width, dtype=np.uint8), (rgb.height, 1))))
    palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=32)
    sixteen = Image.fromarray(np.asarray(grey).astype(np.uint16) * 257)  # mode I;16
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 64 wide x 96 high, displayed rotated 90 degrees: 96 wide x 64 high
    H, W = rgb.height, rgb.width
    return {
        "grayscale": (_png(grey), (H, W)),
        "rgba": (_png(rgba), (H, W)),
        "palette": (_png(palette, transparency=0), (H, W)),
        "16-bit": (_png(sixteen), (H, W)),
        "grayscale-jpeg": (_jpeg(grey), (H, W)),
        "exif-rotated-jpeg": (_jpeg(rgb, exif=exif.tobytes()), (W, H)),
    }


def test_image_modes_and_exif_orientation(endpoint, small_rgb):
    """Each mode decodes as mrcnn.data.images does: the same detections as its decoded pixels sent as RGB PNG."""
    for name, (data, (height, width)) in _image_variants(small_rgb).items():
        result = _ok(_segment(endpoint, data, "application/octet-stream", "?score_threshold=0&max_detections=3"))
        assert result["image"] == {"height": height, "width": width}, name
        pixels = decode_image(data)
        assert pixels.shape[:2] == (height, width)
        reference = _ok(_segment(endpoint, _png(Image.fromarray(pixels)), query="?score_threshold=0&max_detections=3"))
        assert result["instances"] == reference["instances"], name


def _bad_inputs(photo: bytes, small_rgb: Image.Image) -> list[tuple[str, bytes, str, str, int]]:
    """(what, body, content type, query, expected status)."""
    tiny = _png(Image.new("RGB", (1, 1), (255, 0, 0)))
    good = _png(small_rgb)
    text_multipart, text_multipart_type = _multipart({"note": (None, b"hello", "text/plain")})
    return [
        ("truncated JPEG", photo[: len(photo) // 2], "image/jpeg", "", 400),
        ("JPEG header only", photo[:600], "image/jpeg", "", 400),
        ("text file as image/jpeg", b"just some text\n" * 20, "image/jpeg", "", 400),
        ("text file as octet-stream", b"just some text\n" * 20, "application/octet-stream", "", 400),
        ("empty body", b"", "image/png", "", 400),
        ("1x1 image", tiny, "image/png", "", 422),
        ("16x2000 image", _png(Image.new("RGB", (2000, 16))), "image/png", "", 422),
        ("huge declared dimensions (bomb)", _png_header_only(100_000, 100_000), "image/png", "", 422),
        ("declared 6000x6000 > max_pixels", _png_header_only(6000, 6000), "image/png", "", 422),
        ("zero width", _png_header_only(0, 10), "image/png", "", 400),
        ("text/plain", good, "text/plain", "", 415),
        ("application/json", b'{"image": "x"}', "application/json", "", 415),
        ("body over the limit", b"\x00" * (MAX_BODY_BYTES + 1), "image/png", "", 413),
        ("multipart without a file", text_multipart, text_multipart_type, "", 400),
        ("multipart without boundary", b"--x\r\n", "multipart/form-data", "", 400),
        ("score_threshold=2", good, "image/png", "?score_threshold=2", 422),
        ("score_threshold=abc", good, "image/png", "?score_threshold=abc", 422),
        ("score_threshold=nan", good, "image/png", "?score_threshold=nan", 422),
        ("class_thresholds not json", good, "image/png", "?class_thresholds=abc", 422),
        ("class_thresholds unknown id", good, "image/png", "?" + urllib.parse.urlencode({"class_thresholds": '{"99": 0.5}'}), 422),
        ("max_detections=-1", good, "image/png", "?max_detections=-1", 422),
        ("mask_format=png", good, "image/png", "?mask_format=png", 422),
        ("overlay=maybe", good, "image/png", "?overlay=maybe", 422),
        ("unknown parameter", good, "image/png", "?threshold=0.3", 422),
    ]


def test_bad_inputs_give_4xx_json_and_the_endpoint_keeps_serving(endpoint, photo, small_rgb):
    good = _png(small_rgb)
    for _ in range(2):  # every time, not just the first
        for what, body, content_type, query, status in _bad_inputs(photo, small_rgb):
            reply = _segment(endpoint, body, content_type, query)
            assert reply.status == status, (what, reply.status, reply.body[:300])
            error = reply.json()["error"]
            assert error["status"] == status and error["code"] and error["message"], what
        assert _segment(endpoint, good).status == 200
    chunked = request(endpoint.url("mrcnn", "v1/segment"), data=iter([b"\x00" * 1_000_000] * 3), content_type="image/png",
                      token=TOKEN, headers={"Transfer-Encoding": "chunked"})  # fmt: skip
    assert chunked.status == 413 and chunked.error_code == "body_too_large"
    assert request(endpoint.url("mrcnn", "v1/segment"), token=TOKEN, method="GET").status == 405
    stats = _ok(request(endpoint.url("mrcnn", "v1/stats"), token=TOKEN))
    assert "internal_error" not in stats["errors"]
    _ok(_segment(endpoint, photo, "image/jpeg"))


def _thresholds_query(**params) -> str:
    return "?" + urllib.parse.urlencode({k: json.dumps(v) if isinstance(v, dict) else v for k, v in params.items()})


def test_stored_thresholds_apply_unless_the_request_overrides(endpoint, small_rgb):
    data = _png(small_rgb)
    everything = _ok(_segment(endpoint, data, query="?score_threshold=0"))
    assert (everything["score_threshold"], everything["class_thresholds"]) == (0.0, {})

    def kept(thresholds: dict[int, float], default: float) -> list[tuple[int, float]]:
        return [(i["category_id"], i["score"]) for i in everything["instances"] if i["score"] >= thresholds.get(i["category_id"], default)]

    def got(result: dict) -> list[tuple[int, float]]:
        return [(i["category_id"], i["score"]) for i in result["instances"]]

    def same(a: list[tuple[int, float]], b: list[tuple[int, float]]) -> bool:
        return [c for c, _ in a] == [c for c, _ in b] and [s for _, s in a] == pytest.approx([s for _, s in b], abs=1e-6)

    stored = _ok(_segment(endpoint, data))  # no threshold in the request: the model's per-class thresholds
    assert (stored["score_threshold"], stored["class_thresholds"]) == (0.5, {"1": 0.0, "3": 0.2})
    assert 0 < len(stored["instances"]) < len(everything["instances"])
    assert same(got(stored), kept(STORED_THRESHOLDS, 0.5))
    asked = _ok(_segment(endpoint, data, query=_thresholds_query(class_thresholds={"2": 0.1})))
    assert asked["class_thresholds"] == {"2": 0.1} and same(got(asked), kept({2: 0.1}, 0.5))
    none = _ok(_segment(endpoint, data, query=_thresholds_query(class_thresholds={})))  # {} = none: the global 0.5
    assert none["class_thresholds"] == {} and got(none) == got(_ok(_segment(endpoint, data, query="?score_threshold=0.5")))
    for query in (_thresholds_query(class_thresholds={"1": 2}), _thresholds_query(class_thresholds="[1]"),
                  _thresholds_query(class_thresholds={"1": 0.3}, score_threshold=0.3)):  # fmt: skip
        reply = _segment(endpoint, data, query=query)
        assert reply.status == 422 and "class_thresholds" in reply.json()["error"]["message"], (query, reply.body[:300])
    assert _segment(endpoint, data).status == 200


def test_32_concurrent_requests_are_batched(endpoint, small_rgb):
    data = _png(small_rgb)
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        replies = list(pool.map(lambda _: _segment(endpoint, data, query="?score_threshold=0.5"), range(32)))
    assert [r.status for r in replies] == [200] * 32, [r.body[:200] for r in replies if r.status != 200]
    batch_sizes = [int(r.headers["x-batch-size"]) for r in replies]
    assert max(batch_sizes) > 1, batch_sizes
    assert all(r.json()["batch_size"] == size for r, size in zip(replies, batch_sizes))
    seen = {}
    for _ in range(20):  # the stats of each replica (requests land on either)
        stats = _ok(request(endpoint.url("mrcnn", "v1/stats"), token=TOKEN))
        seen[stats["replica"]["id"]] = stats
    assert max(s["max_batch_size"] for s in seen.values()) > 1


def test_overload_answers_503_with_retry_after(endpoint, photo, small_rgb):
    """"tiny" holds one request and queues one: of 12 at once, some are turned away at once."""
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        replies = list(pool.map(lambda _: _segment(endpoint, photo, "image/jpeg", token=None, app="tiny"), range(12)))
    statuses = sorted(r.status for r in replies)
    assert set(statuses) <= {200, 503} and 503 in statuses and 200 in statuses, statuses
    assert all(r.headers.get("retry-after") == "3" for r in replies if r.status == 503)
    assert _segment(endpoint, _png(small_rgb), token=None, app="tiny").status == 200


def test_killing_a_replica_leaves_the_endpoint_answering(endpoint, small_rgb):
    import ray
    from ray import serve

    actors = {}
    for _ in range(40):
        replica = _ok(request(endpoint.url("mrcnn", "v1/stats"), token=TOKEN))["replica"]
        actors[replica["id"]] = replica["actor"]
        if len(actors) == 2:
            break
    assert len(actors) == 2, actors
    victim_id = min(actors)
    ray.kill(ray.get_actor(actors[victim_id], namespace="serve"), no_restart=True)
    data = _png(small_rgb)
    replies = [_segment(endpoint, data) for _ in range(8)]
    assert [r.status for r in replies] == [200] * 8
    assert {r.headers["x-replica"] for r in replies} != {victim_id}
    deadline = time.monotonic() + 120  # Serve replaces the dead replica
    while time.monotonic() < deadline:
        state = serve.status().applications["mrcnn"].deployments["SegmentationService"]
        if state.replica_states.get("RUNNING") == 2:
            break
        time.sleep(1)
    assert state.replica_states.get("RUNNING") == 2, state.replica_states
    assert _segment(endpoint, data).status == 200


def test_mrcnn_serve_cli_passes_its_flags(small_checkpoint, monkeypatch):
    """`mrcnn serve`'s flags reach the server's config (the token that closes the routes, the batching). The
    command in its own process, answering and stopping on Ctrl-C, runs as the README writes it in
    tests/docs/test_documented_commands.py."""
    import pipelines.serve
    from pipelines.cli import main

    started = []
    monkeypatch.setattr(pipelines.serve, "run_server", lambda config, **kw: started.append((config, kw)))
    assert main(["serve", "--model", str(small_checkpoint), "--port", "8123", "--token", TOKEN, "--max-batch-size", "4"]) == 0
    [(config, options)] = started
    assert (config.model, config.token, config.max_batch_size, config.max_ongoing_requests) == (str(small_checkpoint), TOKEN, 4, 16)
    assert (options["host"], options["port"], options["detach"]) == ("127.0.0.1", 8123, False)
