"""Winograd F(4x4, 3x3) convolution for CPU inference.

A 3x3 convolution (stride 1, padding 1) computes each 4x4 block of its output from a 6x6 block of its
input. Winograd's minimal filtering (Lavin and Gray, CVPR 2016) does that with 36 multiplications per
input/output channel pair instead of 144: the input tiles and the filters are transformed, multiplied
element by element (36 matrix products over the channels, one per tile position), and transformed
back. The products are large GEMMs (oneDNN), the transforms are a few passes of memory traffic.

On the 2-core CPU the 3x3 convolutions of R50-FPN at 800 px (FPN outputs, RPN head, mask head) are
most of the inference time, and oneDNN's direct convolution already runs near the CPU's peak:
fewer multiplications is what is left (benchmarks/RESULTS.md).

Results differ from the direct convolution by float rounding only: about 5e-6 of the output's range
against 2e-6 for oneDNN's direct convolution (float64 as the reference). ``tests/mrcnn/modeling/test_winograd.py``
checks the error against a float64 convolution, and the predictor tests check the detections.

Its large temporaries pay off only where malloc reuses freed memory (``mrcnn.runtime.keep_freed_memory``,
the application's choice): with glibc's default every pass page-faults them in, and the predictor measured
4.07 s per photo against 3.11 s direct. So nothing here checks the process: whoever rewrites a model with
``use_winograd`` (``optimize_for_inference(winograd=True)``) decides that it pays.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

# F(4x4, 3x3): input transform B^T (6x6), filter transform G (6x3), output transform A^T (4x6), built by
# Toom-Cook on the points 0, 1, -1, 1/2, -2 and infinity. The usual points (0, +-1, +-2) give 3x the
# rounding error (1.5e-5 against 5e-6 of the output's range at 256 channels; 2e-6 for the direct
# convolution); this choice follows Barabasz et al., "Error analysis and improving the accuracy of
# Winograd convolution for deep neural networks" (2018).
_BT = torch.tensor(
    [[1, -3 / 2, -2, 3 / 2, 1, 0], [0, -1, 1 / 2, 5 / 2, 1, 0], [0, 1, -5 / 2, 1 / 2, 1, 0],
     [0, -2, -1, 2, 1, 0], [0, 1 / 2, -1, -1 / 2, 1, 0], [0, 1, -3 / 2, -2, 3 / 2, 1]], dtype=torch.float64,
)
_G = torch.tensor(
    [[1, 0, 0], [1 / 3, 1 / 3, 1 / 3], [-1 / 3, 1 / 3, -1 / 3],
     [-16 / 15, -8 / 15, -4 / 15], [1 / 15, -2 / 15, 4 / 15], [0, 0, 1]], dtype=torch.float64,
)
_AT = torch.tensor(
    [[1, 1, 1, 1, 1, 0], [0, 1, -1, 1 / 2, -2, 0], [0, 1, 1, 1 / 4, 4, 0], [0, 1, -1, 1 / 8, -8, 1]], dtype=torch.float64
)
# F(2x2, 3x3): fewer savings (16 products instead of 36 for 4x the pixels), smaller rounding error.
_BT2 = torch.tensor([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=torch.float64)
_G2 = torch.tensor([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], dtype=torch.float64)
_AT2 = torch.tensor([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=torch.float64)
_TRANSFORMS = {4: (_BT, _G, _AT), 2: (_BT2, _G2, _AT2)}  # output tile side -> (B^T, G, A^T)
# Below these the direct convolution was as fast or faster on the 2-core CPU, inside R50-FPN at 800 px
# (benchmarks/RESULTS.md): 64 and 128 channels, and 256 or 512 channels on 50x68 px or smaller maps
# (221 tiles and fewer). P2 (3350 tiles), P3 (850) and the mask head (100 RoIs x 16 tiles) gain.
MIN_CHANNELS = 256
MIN_TILES = 512


def winograd_eligible(conv: nn.Module) -> bool:
    """Whether ``conv`` is a plain 3x3, stride-1, padding-1, ungrouped, undilated 2-D convolution."""
    return (
        type(conv) is nn.Conv2d
        and conv.kernel_size == (3, 3)
        and conv.stride == (1, 1)
        and conv.padding == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
    )


@functools.cache
def _packed_gemm_available() -> bool:
    """Whether this torch build has oneDNN's packed GEMM (checked once per process)."""
    try:
        w = torch.ops.mkldnn._reorder_linear_weight(torch.zeros(8, 8), 8)
        torch.ops.mkldnn._linear_pointwise(torch.zeros(2, 8), w, None, "none", [], "")
        return True
    except (AttributeError, RuntimeError):
        return False


class WinogradConv2d(nn.Module):
    """Drop-in replacement for an eligible ``nn.Conv2d`` at inference (same output up to rounding).

    It computes on the CPU without autograd or autocast, for inputs of at least ``min_tiles`` output
    tiles; otherwise (a GPU, gradients needed, reduced precision, a small input) it runs the original
    convolution, whose weights it keeps. Input and output follow the input's memory format. It reads no
    process state: replacing a convolution by it is the decision to use it (see the module docstring).
    """

    def __init__(self, conv: nn.Conv2d, *, tile: int = 4, min_tiles: int = MIN_TILES):
        super().__init__()
        if not winograd_eligible(conv):
            raise ValueError(f"not a 3x3 stride-1 padding-1 convolution: {conv}")
        if tile not in _TRANSFORMS:
            raise ValueError(f"tile must be one of {sorted(_TRANSFORMS)}, not {tile}")
        self.conv = conv
        self.tile, self.alpha = tile, tile + 2  # output and input tile sides
        self.min_tiles = min_tiles  # fewer output tiles than this: the direct convolution
        bt, g, at = _TRANSFORMS[tile]
        weight = conv.weight.detach().to(torch.float64)  # [Co, Ci, 3, 3]
        out_channels, in_channels = weight.shape[:2]
        # U[a, b] = G g G^T per channel pair, computed in float64 and rounded once.
        u = torch.einsum("ak,oikl,bl->aboi", g, weight, g).reshape(self.alpha**2, out_channels, in_channels)
        self.register_buffer("u", u.to(conv.weight.dtype).contiguous(), persistent=False)
        self.register_buffer("bt", bt.to(conv.weight.dtype), persistent=False)
        self.register_buffer("at2", torch.einsum("pa,qb->pqab", at, at).reshape(tile * tile, -1).to(conv.weight.dtype),
                             persistent=False)
        self._packed: list[Tensor] | None = None

    def __getstate__(self):  # copies and pickles repack their weights on first use
        state = super().__getstate__()
        return {**state, "_packed": None}

    def extra_repr(self) -> str:
        return f"F({self.tile}x{self.tile},3x3), {self.conv.in_channels} -> {self.conv.out_channels}"

    def _products(self, v: Tensor) -> Tensor:
        """[36, P, Ci] x U -> [36, P, Co]: one GEMM per tile position (oneDNN's packed GEMM when available)."""
        if self._packed is None:
            self._packed = (
                [torch.ops.mkldnn._reorder_linear_weight(w, 4096) for w in self.u] if _packed_gemm_available() else []
            )
        if self._packed:
            out = v.new_empty(v.shape[0], v.shape[1], self.u.shape[1])
            for k, w in enumerate(self._packed):
                out[k] = torch.ops.mkldnn._linear_pointwise(v[k], w, None, "none", [], "")
            return out
        return torch.bmm(v, self.u.transpose(1, 2))

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        t, alpha = self.tile, self.alpha
        th, tw = -(-h // t), -(-w // t)
        if (
            x.device.type != "cpu"
            or torch.is_grad_enabled()
            or torch.is_autocast_enabled("cpu")
            or x.dtype != self.u.dtype
            or n * th * tw < self.min_tiles
        ):
            return self.conv(x)
        hp, wp = t * th + 2, t * tw + 2
        # Output layout as the convolution's: channels-last if the input or the weight is (PyTorch's rule).
        channels_last = x.is_contiguous(memory_format=torch.channels_last) or self.conv.weight.is_contiguous(
            memory_format=torch.channels_last
        )
        # Zero-padded NHWC input, [n, hp, wp, c]: one pixel of padding, then up to whole tiles.
        xp = x.new_zeros(n, hp, wp, c)
        xp[:, 1 : h + 1, 1 : w + 1] = x.permute(0, 2, 3, 1)
        # Input transform V = B^T d B, one axis at a time: stack the strided slices, multiply by B^T.
        cols = torch.stack([xp[:, :, k : k + t * tw : t] for k in range(alpha)])  # [alpha, n, hp, tw, c]
        cols = torch.mm(self.bt, cols.view(alpha, -1)).view(alpha, n, hp, tw, c)
        rows = torch.stack([cols[:, :, k : k + t * th : t] for k in range(alpha)])  # [alpha, alpha, n, th, tw, c]
        v = torch.mm(self.bt, rows.view(alpha, -1)).view(alpha * alpha, n * th * tw, c)
        del cols, rows
        m = self._products(v)  # [alpha^2, P, Co]
        del v
        co = m.shape[-1]
        # Output transform Y = A^T M A as one [t^2, alpha^2] matrix, then the t x t tiles into place.
        y = torch.mm(self.at2, m.view(alpha * alpha, -1)).view(t, t, n, th, tw, co)
        del m
        out = x.new_empty(n, t * th, t * tw, co)
        out.view(n, th, t, tw, t, co).copy_(y.permute(2, 3, 0, 4, 1, 5))
        out = out[:, :h, :w]
        out = out + self.conv.bias if self.conv.bias is not None else out.contiguous()
        out = out.permute(0, 3, 1, 2)  # NCHW view of NHWC memory
        return out if channels_last else out.contiguous()


def use_winograd(module: nn.Module, *, tile: int = 4, min_channels: int = MIN_CHANNELS) -> int:
    """Replace (in place) every eligible 3x3 convolution with at least ``min_channels`` input channels.

    Returns:
        how many were replaced.
    """
    replaced = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if winograd_eligible(child) and child.in_channels >= min_channels:
                setattr(parent, name, WinogradConv2d(child, tile=tile))
                replaced += 1
    return replaced

