"""The training input pipeline: images per second per CPU core, and how long a step waits for its batch.

    python benchmarks/bench_input_pipeline.py [--repeat 20] [--batch 8] [--threads 0 1 2] [--step-ms 133]
                                              [--augmentation none|flip|multiscale|lsj] [--ray]

The data are COCO-size JPEGs with their official masks (tests/data/coco_mini, 6 val2017 images, 2 to 23
instances each), repeated ``--repeat`` times, as shard rows: encoded JPEG bytes and compressed RLE masks,
exactly what ``mrcnn train`` reads from the Parquet shards. The work measured is what ``mrcnn train`` does
for every batch (``pipelines.train.data.TrainCollate``): decode the JPEGs and the RLE masks into tensors and
build the targets (``pipelines.shards.collate_shard_batch``), then the per-image augmentation with the
batch's own generator.

``--ray`` adds the alternative: Ray Data's ``iter_torch_batches(collate_fn=..., prefetch_batches=N)`` over the
same rows (``ray.data.from_items``), whose collate runs in a pool of ``prefetch_batches`` threads (rows
``ray N``); the loop's wait is timed around ``next()``.

Two tables:

1. **Throughput.** The images per second the pipeline delivers when the loop takes no time, with the work
   in the loop's thread (threads 0) or in N background threads (``mrcnn.data.prefetch.Prefetcher``), and
   that figure per CPU core the work can use (min(N, cores); 1 for the inline path).
2. **Wait fraction.** A loop whose step takes ``--step-ms`` (simulated with ``time.sleep``, which releases
   the GIL as a GPU step does) and that waits for each batch: waiting / (waiting + stepping). The goal of
   issue 14: at most 5% at 60 images/s per worker, i.e. a step of ``batch / 60`` s (133 ms at batch 8).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

COCO_MINI = ROOT / "tests" / "data" / "coco_mini"


def shard_rows(repeat: int) -> list[dict]:
    """coco_mini as shard rows (the columns of ``mrcnn.records.SHARD_COLUMNS``), ``repeat`` times over."""
    from mrcnn.data.coco import load_coco

    result = load_coco(COCO_MINI / "annotations.json", image_dir=COCO_MINI / "images", check_files=False)
    rows = []
    for copy in range(repeat):
        for record in result.records:
            anns = record.annotations
            rows.append({
                "image_id": copy * 10**7 + record.image_id, "file_name": record.file_name,
                "height": record.height, "width": record.width,
                "image": (COCO_MINI / "images" / record.file_name).read_bytes(),
                "boxes": [np.asarray(a.box, dtype=np.float32) for a in anns],
                "labels": np.asarray([a.label for a in anns], dtype=np.int32),
                "category_ids": np.asarray([a.category_id for a in anns], dtype=np.int64),
                "masks_rle": [a.rle["counts"] for a in anns],
                "iscrowd": np.asarray([a.iscrowd for a in anns], dtype=np.int8),
                "area": np.asarray([a.area for a in anns], dtype=np.float32),
                "keypoints": [[] for _ in anns],
            })  # fmt: skip
    return rows


def batches(rows: list[dict], batch_size: int):
    """Numpy column batches, as ``iter_batches(batch_format="numpy")`` gives them (object arrays for lists)."""
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        batch = {}
        for name in chunk[0]:
            column = np.empty(len(chunk), dtype=object)
            column[:] = [row[name] for row in chunk]
            batch[name] = column
        yield batch


def make_collate(augmentation: str, seed: int = 0):
    """``mrcnn train``'s collate (decode + targets + augmentation, each batch's randomness from its generator)."""
    from pipelines.train.data import TrainCollate

    return TrainCollate({"kind": augmentation}, seed=seed)


def run(rows, *, batch_size: int, threads: int, step_s: float, augmentation: str) -> dict:
    """Prefetcher over numpy batches, as ``pipelines.train.data.ShardEpochs`` runs it."""
    from mrcnn.data.prefetch import Prefetcher

    collate = make_collate(augmentation)
    prefetcher = Prefetcher(enumerate(batches(rows, batch_size)), lambda item: collate(item[1], epoch=0, index=item[0]),
                            num_threads=threads, depth=2 * threads)  # fmt: skip
    return _loop(prefetcher, len(rows), batch_size, step_s, lambda: prefetcher.total_wait_s)


def run_ray(dataset, *, num_rows: int, batch_size: int, threads: int, step_s: float, augmentation: str) -> dict:
    """Ray Data's ``iter_torch_batches`` with the same collate in its ``prefetch_batches`` threads."""
    collate = make_collate(augmentation)

    def collate_fn(batch):  # no batch index here: seeded by the batch's first image id
        return collate(batch, epoch=0, index=int(batch["image_id"][0]))

    iterator = iter(dataset.iter_torch_batches(batch_size=batch_size, collate_fn=collate_fn, prefetch_batches=threads,
                                               device="cpu"))  # fmt: skip
    waited = [0.0]

    def timed():
        while True:
            start = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                return
            waited[0] += time.perf_counter() - start
            yield batch

    return _loop(timed(), num_rows, batch_size, step_s, lambda: waited[0])


def _loop(source, num_rows: int, batch_size: int, step_s: float, total_wait) -> dict:
    images = 0
    start = time.perf_counter()
    for batch_images, _ in source:
        images += len(batch_images)
        if step_s:
            time.sleep(step_s)
    seconds = time.perf_counter() - start
    stepping = step_s * -(-num_rows // batch_size)
    wait_s = total_wait()
    return {"images": images, "seconds": seconds, "wait_s": wait_s,
            "wait_fraction": wait_s / max(wait_s + stepping, 1e-9)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20, help="times coco_mini's 6 images are repeated")
    parser.add_argument("--batch", type=int, default=8, help="images per step")
    parser.add_argument("--threads", type=int, nargs="+", default=[0, 1, 2], help="background threads (0: inline)")
    parser.add_argument("--step-ms", type=float, default=133.0, help="simulated step (default: 8 images at 60 images/s)")
    parser.add_argument("--augmentation", default="none", choices=["none", "flip", "multiscale", "lsj"])
    parser.add_argument("--torch-threads", type=int, default=1, help="torch intra-op threads (resize, masks)")
    parser.add_argument("--ray", action="store_true", help="also Ray Data's iter_torch_batches(prefetch_batches=N)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.torch_threads)
    rows = shard_rows(args.repeat)
    cores = os.cpu_count() or 1
    run(rows[: args.batch * 2], batch_size=args.batch, threads=0, step_s=0.0, augmentation=args.augmentation)  # warm-up
    variants = [(str(t), t, lambda t=t, **kw: run(rows, threads=t, **kw)) for t in args.threads]
    if args.ray:
        import ray

        ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
        dataset = ray.data.from_items(rows).materialize()
        variants += [(f"ray {t}", t, lambda t=t, **kw: run_ray(dataset, num_rows=len(rows), threads=t, **kw))
                     for t in args.threads]  # fmt: skip
    throughput, waits = [], []
    for name, threads, measure in variants:
        result = measure(batch_size=args.batch, step_s=0.0, augmentation=args.augmentation)
        used = 1 if threads == 0 else min(threads, cores)
        throughput.append((name if args.ray else threads, result["images"] / result["seconds"], used))
    for name, threads, measure in variants:
        waits.append((name if args.ray else threads,
                      measure(batch_size=args.batch, step_s=args.step_ms / 1000, augmentation=args.augmentation)))  # fmt: skip

    print(f"\nInput pipeline on {len(rows)} COCO val2017 JPEGs with masks (coco_mini x {args.repeat}), batch {args.batch}, "
          f"augmentation {args.augmentation}, {cores} cores, load average {os.getloadavg()[0]:.1f}\n")  # fmt: skip
    print("| threads | images/s | cores used | images/s per core |")
    print("|---:|---:|---:|---:|")
    for threads, rate, used in throughput:
        print(f"| {threads} | {rate:.1f} | {used} | {rate / used:.1f} |")
    rate = args.batch / (args.step_ms / 1000)
    print(f"\nWith a simulated step of {args.step_ms:g} ms ({rate:.0f} images/s when the loop never waits):\n")
    print("| threads | wait per step ms | wait fraction | images/s |")
    print("|---:|---:|---:|---:|")
    for threads, result in waits:
        steps = -(-result["images"] // args.batch)
        print(f"| {threads} | {1000 * result['wait_s'] / steps:.1f} | {100 * result['wait_fraction']:.1f}% | "
              f"{result['images'] / result['seconds']:.1f} |")  # fmt: skip
    print(json.dumps({"throughput": throughput, "wait_fraction": {t: r["wait_fraction"] for t, r in waits}}))


if __name__ == "__main__":
    main()
