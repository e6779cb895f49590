"""Post-processing alone: mask head output -> detection records, full-size masks against box crops.

    python benchmarks/bench_postprocess.py                      # CPU, 100 detections, 800 x 1067 images
    python benchmarks/bench_postprocess.py --device cuda        # on a GPU

Both paths start from the same unpasted detections on ``--device`` (boxes, scores, labels and 28 x 28 mask
probabilities, as ``MaskRCNN(..., paste_masks=False)`` gives them) and end with the records:
  full-size: ``paste_masks_binary`` (thresholded full-image masks on the device), copy the masks and the
             rest to the host, ``detections_to_records`` (RLE of each full mask); what ``predict`` did before.
  crops:     ``mrcnn.postprocess.records_from_mask_probs`` (crops pasted and thresholded on the device, one copy
             of the values, one of the crops, RLE from the crops); what ``Predictor.predict`` does now.
The detections are synthetic: boxes of 10-60% of the image sides (some at its edges, one the whole image),
mask probabilities a soft blob plus noise. Prints the check that both give identical records, then a
markdown table of milliseconds per image (median of ``--repeats``, min-max).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mrcnn.data.categories import CategoryMap
from mrcnn.modeling.paste import paste_masks_binary
from mrcnn.postprocess import records_from_mask_probs
from mrcnn.predictor import detections_to_records

CATEGORIES = CategoryMap.from_names([f"c{i}" for i in range(1, 91)])


def synthetic_detection(seed: int, num: int, height: int, width: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Unpasted detections of one image: ``boxes`` [num, 4], ``scores``, ``labels``, ``mask_probs`` [num, 1, 28, 28]."""
    generator = torch.Generator().manual_seed(seed)
    sides = torch.tensor([width, height], dtype=torch.float32)
    wh = (torch.rand(num, 2, generator=generator) * 0.5 + 0.1) * sides
    xy = torch.rand(num, 2, generator=generator) * (sides - wh + 20) - 10
    boxes = torch.cat([xy, xy + wh], dim=1)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    boxes[0] = torch.tensor([0.0, 0.0, width, height])
    grid = torch.linspace(-1, 1, 28)
    radius = (grid[None, :] ** 2 + grid[:, None] ** 2).sqrt()  # [28, 28]
    blob = torch.sigmoid(8 * (0.3 + 0.5 * torch.rand(num, 1, 1, 1, generator=generator) - radius))
    probs = (blob + 0.1 * torch.randn(num, 1, 28, 28, generator=generator)).clamp(0, 1)
    detection = {
        "boxes": boxes,
        "scores": torch.rand(num, generator=generator).sort(descending=True).values,
        "labels": torch.randint(1, 91, (num,), generator=generator),
        "mask_probs": probs,
    }
    return {k: v.to(device) for k, v in detection.items()}


def full_size_records(detection: dict[str, torch.Tensor], size: tuple[int, int], threshold: float = 0.5) -> list[dict]:
    """The old path: full-size thresholded masks on the device, copied to the host, RLE of each."""
    full = {k: v for k, v in detection.items() if k != "mask_probs"}
    full["masks"] = paste_masks_binary(detection["mask_probs"], detection["boxes"], size, threshold=threshold)
    full = {k: v.float().cpu() if v.is_floating_point() else v.cpu() for k, v in full.items()}
    return detections_to_records(full, CATEGORIES, mask_threshold=threshold)


def crop_records(detection: dict[str, torch.Tensor], size: tuple[int, int], threshold: float = 0.5) -> list[dict]:
    """The new path (``Predictor.predict``'s)."""
    return records_from_mask_probs(detection, CATEGORIES, size, mask_threshold=threshold)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_paths(
    device: torch.device, *, size: tuple[int, int], detections: int, images: int, warmup: int, repeats: int
) -> tuple[dict[str, tuple[float, float, float]], bool]:
    """Seconds per image (median, min, max) of each path, and whether their records are identical."""
    inputs = [synthetic_detection(seed, detections, *size, device) for seed in range(images)]
    paths = {"full-size masks": full_size_records, "box crops": crop_records}
    with torch.inference_mode():
        identical = all(full_size_records(d, size) == crop_records(d, size) for d in inputs)
        results = {}
        for name, path in paths.items():
            for _ in range(warmup):
                path(inputs[0], size)
            times = []
            for _ in range(repeats):
                _sync(device)
                start = time.perf_counter()
                for detection in inputs:
                    path(detection, size)
                _sync(device)
                times.append((time.perf_counter() - start) / len(inputs))
            results[name] = (statistics.median(times), min(times), max(times))
    return results, identical


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=800, help="image height; width is 4/3 of it")
    parser.add_argument("--detections", type=int, default=100)
    parser.add_argument("--images", type=int, default=4, help="different synthetic images per timed pass")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_postprocess: no CUDA device here")
    size = (args.size, round(args.size * 4 / 3))
    results, identical = time_paths(device, size=size, detections=args.detections, images=args.images,
                                    warmup=args.warmup, repeats=args.repeats)
    print(f"records identical (full-size masks vs box crops, {args.images} images): {identical}")
    base = results["full-size masks"][0]
    print("\n| path | device | detections | image | ms per image | speed-up |")
    print("|---|---|---|---|---|---|")
    for name, (med, lo, hi) in results.items():
        print(f"| {name} | {device.type} | {args.detections} | {size[0]}x{size[1]} | {med * 1000:.1f} ({lo * 1000:.1f}-{hi * 1000:.1f}) "
              f"| {base / med:.2f}x |")
    if not identical:
        sys.exit("bench_postprocess: the two paths gave different records")


if __name__ == "__main__":
    main()
