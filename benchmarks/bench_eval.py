"""COCO evaluation time: pycocotools against faster-coco-eval on the same files, and whether they agree.

    python benchmarks/bench_eval.py                 # 2000 synthetic images, bbox + segm + keypoints
    python benchmarks/bench_eval.py --images 200 --repeats 1

Ground truth: the synthetic shapes set (`mrcnn.data.synthetic`, 128 px, 1-4 instances per image) and the
synthetic keypoint set (`mrcnn.data.synthetic_keypoints`). Results: each ground-truth instance as a
detection with a jittered box, a dilated or eroded mask, jittered keypoints and a random score, some
given the wrong class, plus random false positives: a realistic mix of hits and misses at every IoU.
Both backends go through `mrcnn.evaluation.evaluate_coco(backend=...)` (same records, same
parameters); the timed runs alternate between them. The table gives the median seconds of the whole
evaluation (evaluate + accumulate + summarize) and the largest difference over the 12 (10 for
keypoints) standard numbers and the per-category APs, in AP points (percent); 1e-2 points = 1e-4.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mrcnn.data.masks import masks_to_rles, rle_to_mask
from mrcnn.data.synthetic import make_synthetic_coco
from mrcnn.data.synthetic_keypoints import make_synthetic_keypoints_coco
from mrcnn.evaluation import evaluate_coco


def fake_results(gt: dict, *, seed: int = 0) -> list[dict]:
    """Detections near the ground truth: jittered boxes/keypoints, dilated/eroded masks, some wrong classes."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    category_ids = [c["id"] for c in gt["categories"]]
    images = {img["id"]: img for img in gt["images"]}
    results = []
    for ann in gt["annotations"]:
        if rng.random() < 0.1:
            continue  # a miss
        x, y, w, h = ann["bbox"]
        jitter = rng.normal(0, 0.08, 4) * [w, h, w, h]
        box = [x + jitter[0], y + jitter[1], max(1.0, w + jitter[2]), max(1.0, h + jitter[3])]
        mask = rle_to_mask(ann["segmentation"]) if isinstance(ann["segmentation"], dict) else None
        record = {
            "image_id": ann["image_id"],
            "category_id": ann["category_id"] if rng.random() > 0.1 else int(rng.choice(category_ids)),
            "score": float(rng.random()),
            "bbox": [float(v) for v in box],
        }
        if mask is not None:
            op = ndimage.binary_dilation if rng.random() < 0.5 else ndimage.binary_erosion
            mask = op(mask, iterations=int(rng.integers(1, 3)))
            record["segmentation"] = masks_to_rles(mask[None].astype(np.uint8))[0]
        if "keypoints" in ann:
            points = np.asarray(ann["keypoints"], dtype=float).reshape(-1, 3)
            points[:, :2] += rng.normal(0, 2.0, (len(points), 2))
            points[:, 2] = 1
            record["keypoints"] = points.reshape(-1).tolist()
        results.append(record)
    for image_id, img in images.items():  # false positives
        for _ in range(int(rng.integers(0, 3))):
            W, H = img["width"], img["height"]
            x, y = rng.random() * W * 0.8, rng.random() * H * 0.8
            w, h = 4 + rng.random() * W * 0.3, 4 + rng.random() * H * 0.3
            mask = np.zeros((H, W), np.uint8)
            mask[int(y) : int(y + h), int(x) : int(x + w)] = 1
            record = {"image_id": image_id, "category_id": int(rng.choice(category_ids)), "score": float(rng.random() * 0.5),
                      "bbox": [x, y, w, h], "segmentation": masks_to_rles(mask[None])[0]}
            kp_categories = [c for c in gt["categories"] if c.get("keypoints")]
            if kp_categories:
                K = len(kp_categories[0]["keypoints"])
                record["category_id"] = kp_categories[0]["id"]
                record["keypoints"] = np.stack([x + rng.random(K) * w, y + rng.random(K) * h, np.ones(K)], 1).reshape(-1).tolist()
            results.append(record)
    return results


def largest_difference(a: dict, b: dict) -> float:
    diffs = [abs(a[k] - b[k]) for k in a if k != "per_category"]
    diffs += [abs(a["per_category"][k] - b["per_category"][k]) for k in a["per_category"]]
    return max(diffs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        shapes = make_synthetic_coco(Path(tmp) / "shapes", num_train=0, num_val=args.images, size=128, seed=0)
        houses = make_synthetic_keypoints_coco(Path(tmp) / "houses", num_train=0, num_val=args.images, size=128, seed=0)
        sets = [("shapes", json.loads(Path(shapes["val"]["annotations"]).read_text()), ("bbox", "segm")),
                ("keypoints", json.loads(Path(houses["val"]["annotations"]).read_text()), ("keypoints",))]
        print(f"{args.images} images per set, {args.repeats} timed runs per backend\n")
        print("| set | iou type | results | pycocotools s | faster-coco-eval s | speed-up | largest difference (AP points) |")
        print("|---|---|---:|---:|---:|---:|---:|")
        for name, gt, iou_types in sets:
            results = fake_results(gt)
            for iou_type in iou_types:
                times: dict[str, list[float]] = {"pycocotools": [], "faster-coco-eval": []}
                metrics = {}
                for _ in range(args.repeats):
                    for backend, seconds in times.items():
                        t0 = time.perf_counter()
                        metrics[backend] = evaluate_coco(gt, results, iou_types=[iou_type], backend=backend)[iou_type]
                        seconds.append(time.perf_counter() - t0)
                slow, fast = (statistics.median(times[b]) for b in times)
                diff = largest_difference(metrics["pycocotools"], metrics["faster-coco-eval"])
                print(f"| {name} | {iou_type} | {len(results)} | {slow:.2f} | {fast:.2f} | {slow / fast:.2f}x | {diff:.2e} |", flush=True)


if __name__ == "__main__":
    main()
