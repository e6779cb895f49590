"""MultiScaleRoIPooler against hand-computed RoIAlign / RoIPool references and the FPN level rule."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mrcnn.modeling.poolers import MultiScaleRoIPooler

FRACTIONAL_ROI = (1.3, 0.7, 5.9, 4.2)  # XYXY, in input-image pixels


def _bilinear(feature: np.ndarray, y: float, x: float) -> float:
    """Caffe2 / torchvision RoIAlign bilinear sample of one [H, W] map (pixel centres at integers)."""
    H, W = feature.shape
    if y < -1.0 or y > H or x < -1.0 or x > W:
        return 0.0
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= H - 1:
        y_low = y_high = H - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= W - 1:
        x_low = x_high = W - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1.0 - ly, 1.0 - lx
    return (
        hy * hx * feature[y_low, x_low]
        + hy * lx * feature[y_low, x_high]
        + ly * hx * feature[y_high, x_low]
        + ly * lx * feature[y_high, x_high]
    )


def roi_align_reference(feature: np.ndarray, roi, *, output_size: int, scale: float, aligned: bool) -> np.ndarray:
    """RoIAlign of one RoI on a [C, H, W] map: 2x2 regular samples per bin, bilinear, averaged."""
    grid = 2
    offset = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (v * scale - offset for v in roi)
    roi_w, roi_h = x2 - x1, y2 - y1
    if not aligned:  # the legacy op forces RoIs to be at least 1x1
        roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
    bin_w, bin_h = roi_w / output_size, roi_h / output_size
    C = feature.shape[0]
    out = np.zeros((C, output_size, output_size))
    for c in range(C):
        for ph in range(output_size):
            for pw in range(output_size):
                total = 0.0
                for iy in range(grid):
                    y = y1 + ph * bin_h + (iy + 0.5) * bin_h / grid
                    for ix in range(grid):
                        x = x1 + pw * bin_w + (ix + 0.5) * bin_w / grid
                        total += _bilinear(feature[c], y, x)
                out[c, ph, pw] = total / (grid * grid)
    return out


def roi_pool_reference(feature: np.ndarray, roi, *, output_size: int, scale: float) -> np.ndarray:
    """Fast R-CNN RoIPool: RoI rounded to the grid (inclusive end), bins with floor/ceil edges, max."""
    C, H, W = feature.shape
    x1, y1, x2, y2 = (math.floor(v * scale + 0.5) for v in roi)  # C round(): half away from zero
    roi_w, roi_h = max(x2 - x1 + 1, 1), max(y2 - y1 + 1, 1)
    bin_w, bin_h = roi_w / output_size, roi_h / output_size
    out = np.zeros((C, output_size, output_size))
    for ph in range(output_size):
        h0 = min(max(math.floor(ph * bin_h) + y1, 0), H)
        h1 = min(max(math.ceil((ph + 1) * bin_h) + y1, 0), H)
        for pw in range(output_size):
            w0 = min(max(math.floor(pw * bin_w) + x1, 0), W)
            w1 = min(max(math.ceil((pw + 1) * bin_w) + x1, 0), W)
            if h1 <= h0 or w1 <= w0:
                out[:, ph, pw] = 0.0
            else:
                out[:, ph, pw] = feature[:, h0:h1, w0:w1].reshape(C, -1).max(axis=1)
    return out


@pytest.fixture
def feature_map() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(1, 3, 8, 10, generator=generator, dtype=torch.float64)  # [B, C, H, W]


def _pool_single_level(pooler: MultiScaleRoIPooler, feature: torch.Tensor, roi, image_shape) -> torch.Tensor:
    boxes = [torch.tensor([roi], dtype=feature.dtype)]
    return pooler({"0": feature}, boxes, [image_shape])[0]


@pytest.mark.parametrize("aligned", [False, True])
def test_roi_align_matches_hand_computed_bilinear_reference(feature_map, aligned):
    pooler = MultiScaleRoIPooler(featmap_names=["0"], output_size=3, mode="roi_align", sampling_ratio=2, aligned=aligned)
    pooled = _pool_single_level(pooler, feature_map, FRACTIONAL_ROI, (8, 10))
    expected = roi_align_reference(feature_map[0].numpy(), FRACTIONAL_ROI, output_size=3, scale=1.0, aligned=aligned)
    np.testing.assert_allclose(pooled.numpy(), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("aligned", [False, True])
def test_roi_align_with_spatial_scale_half(feature_map, aligned):
    # An input image of 16x20 over an 8x10 map: the pooler infers spatial_scale 0.5.
    roi = (3.1, 1.7, 13.3, 9.9)
    pooler = MultiScaleRoIPooler(featmap_names=["0"], output_size=3, mode="roi_align", sampling_ratio=2, aligned=aligned)
    pooled = _pool_single_level(pooler, feature_map, roi, (16, 20))
    expected = roi_align_reference(feature_map[0].numpy(), roi, output_size=3, scale=0.5, aligned=aligned)
    np.testing.assert_allclose(pooled.numpy(), expected, rtol=0, atol=1e-12)
    # The scale matters: pooling the same numbers as if they were feature-map pixels gives something else.
    wrong = roi_align_reference(feature_map[0].numpy(), roi, output_size=3, scale=1.0, aligned=aligned)
    assert not np.allclose(pooled.numpy(), wrong)


def test_aligned_changes_the_samples(feature_map):
    outputs = [
        _pool_single_level(
            MultiScaleRoIPooler(featmap_names=["0"], output_size=3, aligned=aligned), feature_map, FRACTIONAL_ROI, (8, 10)
        )
        for aligned in (False, True)
    ]
    assert not torch.allclose(outputs[0], outputs[1])


@pytest.mark.parametrize("scale_image_shape", [(1.0, (8, 10)), (0.5, (16, 20))])
def test_roi_pool_matches_quantised_max_pool_reference_and_differs_from_roi_align(feature_map, scale_image_shape):
    scale, image_shape = scale_image_shape
    roi = tuple(v / scale for v in FRACTIONAL_ROI)
    pool = MultiScaleRoIPooler(featmap_names=["0"], output_size=3, mode="roi_pool")
    align = MultiScaleRoIPooler(featmap_names=["0"], output_size=3, mode="roi_align")
    pooled = _pool_single_level(pool, feature_map, roi, image_shape)
    expected = roi_pool_reference(feature_map[0].numpy(), roi, output_size=3, scale=scale)
    np.testing.assert_allclose(pooled.numpy(), expected, rtol=0, atol=0)
    aligned = _pool_single_level(align, feature_map, roi, image_shape)
    assert not torch.allclose(pooled, aligned)


def test_unknown_mode_is_rejected():
    with pytest.raises(ValueError, match="roi_align or roi_pool"):
        MultiScaleRoIPooler(featmap_names=["0"], output_size=7, mode="bilinear")


@pytest.mark.parametrize("mode", ["roi_align", "roi_pool"])
def test_fpn_level_assignment(mode):
    # P2..P5 of a 512x512 input (strides 4, 8, 16, 32); level i holds the constant value 10 * (i + 1).
    image_shape = (512, 512)
    features = {
        str(i): torch.full((1, 2, 512 // stride, 512 // stride), 10.0 * (i + 1))
        for i, stride in enumerate((4, 8, 16, 32))
    }
    boxes = torch.tensor(
        [
            [10.0, 10.0, 234.0, 234.0],  # 224 x 224: k = k0 = 4 -> P4
            [50.0, 60.0, 162.0, 172.0],  # 112 x 112: k = 3 -> P3
            [0.0, 0.0, 20.0, 20.0],  # tiny: k < 2, clamped to P2
            [0.0, 0.0, 500.0, 500.0],  # 500 x 500: k = floor(4 + 1.16) = 5 -> P5
            [40.0, 40.0, 487.0, 487.0],  # 447 x 447, just under 2 x 224: still P4
        ]
    )
    pooler = MultiScaleRoIPooler(featmap_names=["0", "1", "2", "3"], output_size=7, mode=mode)
    pooled = pooler(features, [boxes], [image_shape])
    assert pooled.shape == (5, 2, 7, 7)
    expected_levels = [2, 1, 0, 3, 2]  # indices into P2..P5
    for row, level in enumerate(expected_levels):
        torch.testing.assert_close(pooled[row], torch.full((2, 7, 7), 10.0 * (level + 1)), rtol=0, atol=1e-5)


def test_multi_image_order_is_preserved():
    features = {
        str(i): torch.arange(2 * (64 // 2**i) ** 2, dtype=torch.float32).reshape(2, 1, 64 // 2**i, 64 // 2**i) * (i + 1)
        for i in range(4)
    }
    pooler = MultiScaleRoIPooler(featmap_names=["0", "1", "2", "3"], output_size=2)
    boxes = [torch.tensor([[4.0, 4.0, 20.0, 20.0]]), torch.tensor([[4.0, 4.0, 20.0, 20.0], [8.0, 8.0, 200.0, 200.0]])]
    pooled = pooler(features, boxes, [(256, 256), (256, 256)])
    single = [pooler({k: v[b : b + 1] for k, v in features.items()}, [bx], [(256, 256)]) for b, bx in enumerate(boxes)]
    torch.testing.assert_close(pooled, torch.cat(single))
    assert not torch.equal(pooled[0], pooled[1])  # same box, different image


@pytest.mark.parametrize("scale_image_shape", [(1.0, (8, 10)), (0.25, (32, 40))])
def test_roi_pool_is_blind_to_sub_cell_shifts_that_roi_align_sees(feature_map, scale_image_shape):
    """The misalignment the paper's RoIAlign removes: two fractional RoIs that round to the same feature cells
    get the same RoIPool features, while RoIAlign samples where each RoI really is (P2 of FPN: scale 1/4)."""
    scale, image_shape = scale_image_shape
    roi = tuple(v / scale for v in FRACTIONAL_ROI)  # (1.3, 0.7, 5.9, 4.2) feature cells
    shifted = tuple(v + 0.15 / scale for v in roi)  # still rounds to (1, 1, 6, 4)
    pool = MultiScaleRoIPooler(featmap_names=["0"], output_size=3, mode="roi_pool")
    align = MultiScaleRoIPooler(featmap_names=["0"], output_size=3, mode="roi_align", aligned=True)
    pooled = [_pool_single_level(pool, feature_map, r, image_shape) for r in (roi, shifted)]
    aligned = [_pool_single_level(align, feature_map, r, image_shape) for r in (roi, shifted)]
    assert torch.equal(pooled[0], pooled[1])
    assert not torch.allclose(aligned[0], aligned[1])
    for r, out in zip((roi, shifted), aligned):
        expected = roi_align_reference(feature_map[0].numpy(), r, output_size=3, scale=scale, aligned=True)
        np.testing.assert_allclose(out.numpy(), expected, rtol=0, atol=1e-12)
    assert not torch.allclose(pooled[0], aligned[0])  # and the two layers differ on a fractional RoI


def test_threaded_pooling_uses_the_poolers_own_threads():
    """At inference on the CPU the RoIs are split over threads that belong to the pooler (none at import,
    none shared, none copied), with the same numbers as the one-thread path."""
    import copy
    import pickle

    generator = torch.Generator().manual_seed(0)
    features = {str(i): torch.randn(1, 4, 64 // 2**i, 64 // 2**i, generator=generator) for i in range(4)}
    xy = torch.rand(200, 2, generator=generator) * 200
    boxes = [torch.cat([xy, xy + torch.rand(200, 2, generator=generator) * 150 + 1], dim=1)]
    pooler = MultiScaleRoIPooler(featmap_names=["0", "1", "2", "3"], output_size=7)
    other = MultiScaleRoIPooler(featmap_names=["0", "1", "2", "3"], output_size=7)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch.no_grad():
            threaded = pooler(features, boxes, [(256, 256)])
        sequential = pooler(features, boxes, [(256, 256)])  # gradients enabled: one thread
        assert pooler._threads is not None and other._threads is None
        for twin in (copy.deepcopy(pooler), pickle.loads(pickle.dumps(pooler))):
            assert twin._threads is None
            with torch.no_grad():
                torch.testing.assert_close(twin(features, boxes, [(256, 256)]), threaded, rtol=0, atol=0)
            assert twin._threads is not None and twin._threads is not pooler._threads
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(threaded, sequential, rtol=0, atol=0)
