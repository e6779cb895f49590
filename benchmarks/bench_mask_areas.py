"""Counting instance-mask pixels: ``mrcnn.data.augment.mask_areas`` (8 bytes at a time) against the plain
uint8 ``sum(dtype=torch.int32)`` it replaced, on one CPU thread, side by side in one process.

    python benchmarks/bench_mask_areas.py [--repeats 5]

The shapes are what the training augmentations leave: LSJ's 1024 x 1024 crops, multi-scale's 800 x 1066,
a COCO image's 427 x 640, and an odd width (the plain sum's fallback). Prints a markdown table (best of
``--repeats`` per side) and whether both give the same counts.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHAPES = [(20, 1024, 1024), (20, 800, 1066), (23, 427, 640), (8, 333, 501)]


def best_ms(fn, masks, repeats: int) -> float:
    fn(masks)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(masks)
        times.append(time.perf_counter() - start)
    return 1000 * min(times)


def main() -> None:
    from mrcnn.data.augment import mask_areas

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--scale", type=float, default=1.0, help="scale the shapes (smoke tests: 0.1)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)

    def plain(masks):
        return masks.flatten(1).sum(dim=1, dtype=torch.int32)

    print("| masks | plain uint8 sum ms | mask_areas ms | speed-up | same counts |")
    print("|---|---:|---:|---:|---|")
    for n, h, w in SHAPES:
        h, w = max(1, int(h * args.scale)), max(1, int(w * args.scale))
        masks = (torch.rand(n, h, w, generator=generator) > 0.6).to(torch.uint8)
        slow, fast = best_ms(plain, masks, args.repeats), best_ms(mask_areas, masks, args.repeats)
        same = torch.equal(plain(masks), mask_areas(masks))
        print(f"| {n} x {h} x {w} | {slow:.2f} | {fast:.2f} | {slow / max(fast, 1e-9):.1f}x | {same} |")


if __name__ == "__main__":
    main()
