"""Winograd F(4x4, 3x3) against the direct convolution, both measured against float64."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mrcnn.inference.winograd import WinogradConv2d, winograd_eligible


def winograd_reference(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """The float64 convolution both paths are measured against."""
    bias = None if conv.bias is None else conv.bias.double()
    return F.conv2d(x.double(), conv.weight.double(), bias, padding=1)


@pytest.mark.parametrize("tile", [4, 2])
@pytest.mark.parametrize(
    ("shape", "out_channels", "channels_last", "bias"),
    [
        ((1, 32, 37, 50), 48, True, True),  # sides not multiples of 4
        ((3, 16, 14, 14), 16, True, False),  # a batch of RoIs, no bias
        ((1, 8, 1, 1), 8, False, True),  # one pixel, NCHW
        ((2, 24, 9, 4), 8, False, True),
    ],
)
def test_matches_the_direct_convolution(shape, out_channels, channels_last, bias, tile):
    torch.manual_seed(0)
    conv = nn.Conv2d(shape[1], out_channels, 3, padding=1, bias=bias).eval()
    x = torch.randn(shape)
    if channels_last:
        conv = conv.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    wino = WinogradConv2d(conv, tile=tile, min_tiles=0)
    with torch.inference_mode():
        out, direct = wino(x), conv(x)
    reference = winograd_reference(conv, x)
    scale = reference.abs().max()
    assert out.shape == direct.shape
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last or shape[2:] == (1, 1)
    # Rounding only: within 1e-5 of the output's range (the direct convolution: about 1e-6).
    error = ((out.double() - reference).abs().max() / scale).item()
    assert error < 1e-5
    assert not torch.equal(out, direct)  # the Winograd path ran (not the fallback)


def test_falls_back_to_the_convolution_with_gradients():
    conv = nn.Conv2d(4, 4, 3, padding=1)
    wino = WinogradConv2d(conv)
    x = torch.randn(1, 4, 6, 6, requires_grad=True)
    wino(x).sum().backward()  # the direct path: gradients flow
    assert x.grad is not None and conv.weight.grad is not None


def test_falls_back_under_autocast_and_on_small_inputs():
    conv = nn.Conv2d(4, 4, 3, padding=1).eval()
    x = torch.randn(1, 4, 8, 8)
    with torch.inference_mode():
        assert torch.equal(WinogradConv2d(conv, min_tiles=5)(x), conv(x))  # 4 tiles
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.equal(WinogradConv2d(conv, min_tiles=0)(x), conv(x))
    if torch.cuda.is_available():  # a GPU input: the direct convolution
        gpu = copy.deepcopy(conv).cuda()
        with torch.inference_mode():
            assert torch.equal(WinogradConv2d(gpu, min_tiles=0)(x.cuda()), gpu(x.cuda()))


def test_reads_no_process_state(monkeypatch):
    """The kernel is chosen by the module's own arguments: the same output whatever the malloc setting says."""
    from mrcnn import runtime

    conv = nn.Conv2d(8, 8, 3, padding=1).eval()
    x = torch.randn(1, 8, 12, 12)
    with torch.inference_mode():
        before = WinogradConv2d(conv, min_tiles=0)(x)
        monkeypatch.setattr(runtime, "_applied", not runtime.freed_memory_kept())
        after = WinogradConv2d(conv, min_tiles=0)(x)
    assert torch.equal(before, after) and not torch.equal(before, conv(x))


def test_eligibility():
    assert winograd_eligible(nn.Conv2d(4, 4, 3, padding=1))
    for conv in (
        nn.Conv2d(4, 4, 3, padding=1, stride=2),
        nn.Conv2d(4, 4, 1),
        nn.Conv2d(4, 4, 3, padding=2, dilation=2),
        nn.Conv2d(4, 4, 3, padding=1, groups=2),
        nn.Conv2d(4, 4, 3, padding=0),
    ):
        assert not winograd_eligible(conv)
        with pytest.raises(ValueError, match="3x3"):
            WinogradConv2d(conv)
