"""The web page (``GET /``) in a real headless Chromium, driven by Playwright, against a real endpoint.

The browser is Debian's ``chromium`` (``apt-get install chromium``; ``make browser`` does it), or the
binary named by ``MRCNN_CHROMIUM``. Without a browser or the ``playwright`` package the test is
skipped, and says why.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from mrcnn.data.masks import rle_to_mask
from tests.conftest import PHOTO
from tests.pipelines.serve_endpoint import serve_endpoint

TOKEN = "web-test-token"
CHROMIUM_ARGS = [
    "--no-sandbox",  # the tests may run as root
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",  # no network here but loopback: no background connections
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
]


def _chromium() -> str | None:
    explicit = os.environ.get("MRCNN_CHROMIUM")
    if explicit:
        return explicit
    return next((path for name in ("chromium", "chromium-browser", "google-chrome") if (path := shutil.which(name))), None)


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed (pip install -e '.[test]')")
    executable = _chromium()
    if executable is None:
        pytest.skip("no Chromium found: install Debian's chromium (apt-get install chromium, or `make browser`) or set MRCNN_CHROMIUM")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def keypoint_checkpoint_with_thresholds(small_keypoint_checkpoint, tmp_path_factory):
    """The small keypoint checkpoint with a per-class score threshold in its metadata (house: 0.6)."""
    from mrcnn.checkpoint import load_checkpoint, save_checkpoint

    checkpoint = load_checkpoint(small_keypoint_checkpoint)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "keypoints_thresholds.ckpt", model=checkpoint.build_model(),
                           config=checkpoint.config, categories=checkpoint.categories, metadata={"thresholds": {"1": 0.6}})  # fmt: skip


@pytest.fixture(scope="module")
def endpoint(small_checkpoint, keypoint_checkpoint_with_thresholds):
    app = {"model": str(small_checkpoint), "replicas": 1, "max_batch_size": 4, "token": TOKEN}
    keypoint_app = {"model": str(keypoint_checkpoint_with_thresholds), "replicas": 1, "max_batch_size": 1}
    with serve_endpoint({"mrcnn": app, "keypoints": keypoint_app}) as ep:
        yield ep


def _canvas_pixels(page) -> np.ndarray:
    """The canvas as an [H, W, 4] uint8 array (read through getImageData)."""
    data = page.evaluate(
        """() => { const c = document.getElementById('view');
                   return {w: c.width, h: c.height, px: Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)}; }"""
    )
    return np.array(data["px"], dtype=np.uint8).reshape(data["h"], data["w"], 4)


def _set_threshold(page, value: float) -> None:
    page.evaluate(
        "(v) => { const s = document.getElementById('threshold'); s.value = v; s.dispatchEvent(new Event('input')); }",
        value,
    )


def test_upload_shows_masks_labels_and_scores(browser, endpoint, tmp_path):
    context = browser.new_context(http_credentials={"username": "browser", "password": TOKEN})
    page = context.new_page()
    console_errors = []
    page.on("pageerror", lambda exc: console_errors.append(str(exc)))
    try:
        page.goto(endpoint.url("mrcnn"))
        page.wait_for_function("document.getElementById('model').textContent.includes('circle')", timeout=60_000)
        assert page.input_value("#threshold") == "0.5"  # the model's default, from /v1/model
        # A model without per-class thresholds: one global threshold, and no per-class switch.
        assert page.inner_text("#thresholds-text") == "score threshold: 0.50 for every class"
        assert not page.is_visible("#per-class")

        page.set_input_files("#file", str(PHOTO))
        page.wait_for_function("window.mrcnnView.state === 'done'", timeout=180_000)
        # Lower the threshold below the one of the first request: the page asks the server again.
        _set_threshold(page, 0.0)
        page.wait_for_function("window.mrcnnView.state === 'done' && window.mrcnnView.requestThreshold === 0", timeout=180_000)
        view = page.evaluate("window.mrcnnView")
        instances = view["response"]["instances"]
        assert view["response"]["image"] == {"height": 640, "width": 427}
        assert len(instances) > 0 and view["drawn"] == len(instances)
        rows = page.locator("#instances tbody tr")
        assert rows.count() == len(instances)
        first = rows.nth(0).inner_text()
        assert instances[0]["category_name"] in first and f"{instances[0]['score']:.3f}" in first
        assert "instances above 0.00" in page.inner_text("#status")
        page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        with_overlay = _canvas_pixels(page)
        assert with_overlay.shape[:2] == (640, 427)

        # Raising the threshold above every score hides the instances without a new request.
        _set_threshold(page, 1.0)
        page.wait_for_function("window.mrcnnView.drawn === 0")
        assert page.evaluate("window.mrcnnView.requestThreshold") == 0
        assert page.locator("#instances tbody tr").count() == 0
        plain = _canvas_pixels(page)

        # The overlay is where the masks are: every mask pixel is tinted, and far from every mask and
        # box (labels sit above boxes) the picture is untouched.
        changed = np.abs(with_overlay[..., :3].astype(int) - plain[..., :3].astype(int)).sum(axis=2) > 0
        masks = np.zeros((640, 427), bool)
        for inst in instances:
            masks |= rle_to_mask(inst["segmentation"]).astype(bool)
        boxes = np.zeros_like(masks)
        for inst in instances:
            x1, y1, x2, y2 = inst["box_xyxy"]
            boxes[max(0, int(y1) - 24) : int(y2) + 4, max(0, int(x1) - 4) : int(x2) + 140] = True
        assert masks.any() and changed[masks].mean() > 0.9
        assert not changed[~(masks | boxes)].any()
        assert console_errors == []

        # An unreadable file: the page shows the server's error.
        bad = tmp_path / "notes.jpg"
        bad.write_text("not an image")
        page.set_input_files("#file", str(bad))
        page.wait_for_function("window.mrcnnView.state === 'error'", timeout=60_000)
        assert "400" in page.inner_text("#status") and "not a recognised image" in page.inner_text("#status")
    finally:
        context.close()


def test_page_needs_the_token(browser, endpoint):
    """Without the token the browser gets a Basic challenge it cannot answer; a wrong one gets 401."""
    from playwright.sync_api import Error

    context = browser.new_context()
    try:
        with pytest.raises(Error, match="ERR_INVALID_AUTH_CREDENTIALS"):
            context.new_page().goto(endpoint.url("mrcnn"))
    finally:
        context.close()
    context = browser.new_context(http_credentials={"username": "browser", "password": "wrong"})
    try:
        response = context.new_page().goto(endpoint.url("mrcnn"))
        assert response.status == 401 and response.headers["www-authenticate"].startswith("Basic")
    finally:
        context.close()


def test_keypoint_model_draws_keypoints_and_skeleton(browser, endpoint, tmp_path):
    from PIL import Image

    from mrcnn.data.synthetic_keypoints import render_keypoint_image

    houses = tmp_path / "houses.png"
    Image.fromarray(render_keypoint_image(np.random.default_rng(1), size=128)[0]).save(houses)
    context = browser.new_context()
    page = context.new_page()
    console_errors = []
    page.on("pageerror", lambda exc: console_errors.append(str(exc)))
    try:
        page.goto(endpoint.url("keypoints"))
        page.wait_for_function("document.getElementById('model').textContent.includes('house')", timeout=60_000)
        # The stored per-class threshold is shown and applied: the request gives no score_threshold.
        assert page.inner_text("#thresholds-text") == "per-class score thresholds: house 0.60; others 0.50"
        assert page.is_checked("#per-class")
        page.set_input_files("#file", str(houses))
        page.wait_for_function("window.mrcnnView.state === 'done'", timeout=180_000)
        stored = page.evaluate("window.mrcnnView")
        assert stored["requestThreshold"] is None and stored["response"]["class_thresholds"] == {"1": 0.6}
        assert all(inst["score"] >= 0.6 for inst in stored["response"]["instances"])
        assert "above the per-class thresholds" in page.inner_text("#status")
        # Moving the slider sets one global threshold instead.
        _set_threshold(page, 0.0)
        assert not page.is_checked("#per-class")
        page.wait_for_function("window.mrcnnView.state === 'done' && window.mrcnnView.requestThreshold === 0 "
                               "&& window.mrcnnView.drawn > 0", timeout=180_000)  # fmt: skip
        instances = page.evaluate("window.mrcnnView.response.instances")
        assert len(instances) > len(stored["response"]["instances"])
        assert all(len(inst["keypoints"]) == 15 for inst in instances)
        # A 128 px image is drawn 4x (whole pixels), so it is readable on the page.
        assert page.evaluate("window.mrcnnView.scale") == 4
        assert page.locator("#view").bounding_box()["width"] >= 480
        drawn = _canvas_pixels(page)
        page.evaluate("() => { window.mrcnnView.response.instances.forEach((i) => delete i.keypoints); draw(); }")
        without = _canvas_pixels(page)
        assert (drawn != without).any(), "keypoints and skeleton are drawn over the masks"
        assert console_errors == []
    finally:
        context.close()


PAGE_BLOCKS = ("h1", "#model", "#thresholds", "#drop", "#controls", "#layout")


def _overlap(a: dict, b: dict) -> bool:
    return a["x"] < b["x"] + b["width"] and b["x"] < a["x"] + a["width"] and a["y"] < b["y"] + b["height"] and b["y"] < a["y"] + a["height"]


@pytest.mark.parametrize("viewport", [(1200, 900), (800, 600)])
def test_page_blocks_do_not_overlap(browser, endpoint, tmp_path, viewport):
    """At common window sizes the title, model line, drop zone, controls and result never overlap."""
    width, height = viewport
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    try:
        page.goto(endpoint.url("keypoints"))
        page.wait_for_function("document.getElementById('model').textContent.includes('house')", timeout=60_000)
        boxes = {name: page.locator(name).bounding_box() for name in PAGE_BLOCKS}
        page.screenshot(path=str(tmp_path / f"page_{width}x{height}.png"), full_page=True)
        assert all(box is not None and box["height"] > 0 for box in boxes.values()), boxes
        for i, first in enumerate(PAGE_BLOCKS):
            for second in PAGE_BLOCKS[i + 1 :]:
                assert not _overlap(boxes[first], boxes[second]), (first, boxes[first], second, boxes[second])
        # The drop zone's dashed box is a block: it takes its own vertical space.
        assert boxes["#drop"]["height"] >= 40 and boxes["#drop"]["width"] > width / 2
    finally:
        context.close()
