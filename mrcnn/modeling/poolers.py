"""Multi-scale RoI feature pooling: RoIAlign (the paper's) and RoIPool (its quantised baseline).

Both assign each RoI to an FPN level with the FPN paper's rule, k = floor(k0 + log2(sqrt(wh) / 224)),
k0 = 4, clamped to the available levels, exactly as torchvision's ``MultiScaleRoIAlign`` does.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor, nn
from torchvision.ops import roi_align, roi_pool
from torchvision.ops.poolers import _convert_to_roi_format, _filter_input, _onnx_merge_levels, _setup_scales

_MIN_ROIS_PER_THREAD = 32


class MultiScaleRoIPooler(nn.Module):
    """Pools a fixed-size feature map for every RoI from the FPN level its size maps to.

    Args:
        featmap_names: names of the feature maps to pool from, finest first ('0'..'3': P2..P5).
        output_size: side of the pooled map (7 for the box head, 14 for the mask head).
        mode: ``"roi_align"``: bilinear sampling at ``sampling_ratio`` x ``sampling_ratio`` regular points
            per bin, averaged, no rounding of RoI or bin edges. ``"roi_pool"``: RoI and bin edges
            rounded to the feature grid, max over each bin.
        sampling_ratio: points per bin side for RoIAlign (2 = 4 points per bin).
        aligned: RoIAlign's half-pixel offset (pixel centres at +0.5); False matches torchvision's model.
    """

    def __init__(
        self,
        *,
        featmap_names: list[str],
        output_size: int,
        mode: str = "roi_align",
        sampling_ratio: int = 2,
        aligned: bool = False,
        canonical_scale: int = 224,
        canonical_level: int = 4,
    ):
        super().__init__()
        if mode not in ("roi_align", "roi_pool"):
            raise ValueError(f"pooler mode: expected roi_align or roi_pool, got {mode!r}")
        self.featmap_names = list(featmap_names)
        self.output_size = (output_size, output_size)
        self.mode = mode
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned
        self.canonical_scale = canonical_scale
        self.canonical_level = canonical_level
        self._threads: ThreadPoolExecutor | None = None  # this pooler's own, created on first parallel use

    def __getstate__(self) -> dict:  # copies and pickles start without threads (they make their own)
        state = super().__getstate__()
        return {**state, "_threads": None}

    def _thread_pool(self) -> ThreadPoolExecutor:
        """The threads that pool RoI chunks in parallel at inference (created on first use). They end when
        the pooler is garbage-collected (the executor's workers exit once it is unreachable)."""
        if self._threads is None:
            self._threads = ThreadPoolExecutor(
                max_workers=max(2, os.cpu_count() or 2), thread_name_prefix="mrcnn-roi-pool"
            )
        return self._threads

    def _pool_level(self, features: Tensor, rois: Tensor, scale: float) -> Tensor:
        if self.mode == "roi_align":
            return roi_align(
                features,
                rois,
                output_size=self.output_size,
                spatial_scale=scale,
                sampling_ratio=self.sampling_ratio,
                aligned=self.aligned,
            )
        return roi_pool(features, rois, output_size=self.output_size, spatial_scale=scale)

    def forward(self, features: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        """
        Args:
            features: feature maps by name, each Tensor[B, C, H_l, W_l].
            boxes: per image, Tensor[N_i, 4] XYXY in the (resized) input image's pixels.
            image_shapes: per image, (height, width) of the resized input.

        Returns:
            Tensor[sum N_i, C, S, S]: pooled features, in the order of the concatenated boxes.
        """
        features_per_level = _filter_input(features, self.featmap_names)
        scales, mapper = _setup_scales(features_per_level, image_shapes, self.canonical_scale, self.canonical_level)
        rois = _convert_to_roi_format(boxes)  # [R, 5]: batch index, x1, y1, x2, y2
        if len(features_per_level) == 1:
            return self._pool_level(features_per_level[0], rois, scales[0])

        levels = mapper(boxes)
        N, C = rois.shape[0], features_per_level[0].shape[1]
        ref = features_per_level[0]
        result = torch.zeros((N, C) + self.output_size, dtype=ref.dtype, device=ref.device)
        jobs = []  # (indices of the RoIs, their level's features, scale)
        for level, (features_in_level, scale) in enumerate(zip(features_per_level, scales)):
            idx_in_level = torch.where(levels == level)[0]
            jobs.append((idx_in_level, features_in_level, scale))
        if torch.jit.is_tracing():
            # Export: assigning by index would trace with the example's RoI counts; torchvision's scatter does not.
            return _onnx_merge_levels(levels, [self._pool_level(f, rois[idx], s).to(ref.dtype) for idx, f, s in jobs])
        num_threads = torch.get_num_threads()
        if ref.device.type == "cpu" and num_threads > 1 and N >= _MIN_ROIS_PER_THREAD * 2 and not torch.is_grad_enabled():
            # torchvision's CPU kernels pool one RoI at a time on one core: split the RoIs over the
            # intra-op threads (the kernels release the GIL). Same kernel, same numbers.
            jobs = [
                (chunk, features_in_level, scale)
                for idx, features_in_level, scale in jobs
                for chunk in idx.tensor_split(max(1, min(num_threads, len(idx) // _MIN_ROIS_PER_THREAD)))
                if len(chunk)
            ]
            features_by_job = [features_in_level.contiguous() for _, features_in_level, _ in jobs]
            pooled_by_job = self._thread_pool().map(
                lambda job, feats: self._pool_level(feats, rois[job[0]], job[2]), jobs, features_by_job
            )
            for (idx, _, _), pooled in zip(jobs, pooled_by_job):
                result[idx] = pooled.to(result.dtype)
            return result
        for idx, features_in_level, scale in jobs:
            result[idx] = self._pool_level(features_in_level, rois[idx], scale).to(result.dtype)
        return result

    def extra_repr(self) -> str:
        return (
            f"mode={self.mode}, featmap_names={self.featmap_names}, output_size={self.output_size}, "
            f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}"
        )
