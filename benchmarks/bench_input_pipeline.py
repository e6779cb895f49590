"""The training input pipeline: images per second per CPU core, and how long a step waits for its batch.

    python benchmarks/bench_input_pipeline.py [--repeat 4] [--passes 5] [--batch 8] [--threads 0 1 2]
                                              [--step-ms 133] [--busy 0.3]
                                              [--augmentation none|flip|multiscale|lsj] [--ray] [--dtypes]

The data are COCO-size JPEGs with their official masks (tests/data/coco_mini, 6 val2017 images, 2 to 23
instances each), repeated ``--repeat`` times, as shard rows: encoded JPEG bytes and compressed RLE masks,
exactly what ``mrcnn train`` reads from the Parquet shards. The code measured is ``mrcnn train``'s own data
path, ``pipelines.train.data.ShardEpochs`` over ``--passes`` passes (epochs), with its ``TrainCollate``
(decode the JPEGs and RLE masks into tensors, build the targets, augment with the batch's own generator)
in ``loader_threads`` background threads (``mrcnn.data.prefetch.Prefetcher``) or in the loop's thread (0).

``--ray`` adds the alternative: Ray Data's ``iter_torch_batches(collate_fn=..., prefetch_batches=N)`` over the
same rows (``ray.data.from_items``), whose collate runs in a pool of ``prefetch_batches`` threads (rows
``ray N``); the loop's wait is timed around ``next()``. ``--dtypes`` adds a third table: the collate's cost per
image with the augmentation moving uint8 pixels (what ``mrcnn train`` does) against float32 pixels.

Two tables:

1. **Throughput.** The images per second the pipeline delivers when the loop takes no time, and that
   figure per CPU core the work can use (min(N, cores); 1 for the inline path).
2. **Wait.** A loop whose step takes ``--step-ms``, of which the first ``--busy`` part holds the GIL (a
   pure-Python loop: the loop's thread launching a GPU step's kernels) and the rest sleeps (waiting for the
   GPU), and that waits for each batch. The run's first batch is reported apart (nothing can be prepared
   before the loop asks for it: a one-off per run); the wait fraction is waiting / (waiting + stepping)
   over every later step, pass boundaries included. The goal of issue 14: at most 5% at 60 images/s per
   worker, i.e. a step of ``batch / 60`` s (133 ms at batch 8).
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


class RowShard:
    """What ``ray.train.get_dataset_shard`` gives ``ShardEpochs``, over rows in memory: ``iter_batches`` only."""

    def __init__(self, rows: list[dict]):
        self.rows = rows

    def iter_batches(self, *, batch_size: int, **_):
        return batches(self.rows, batch_size)


def make_collate(augmentation: str, seed: int = 0):
    """``mrcnn train``'s collate (decode + targets + augmentation, each batch's randomness from its generator)."""
    from pipelines.train.data import TrainCollate

    return TrainCollate({"kind": augmentation}, seed=seed)


def float_collate(augmentation: str, seed: int = 0):
    """The same collate with the augmentation moving float32 pixels (decode to float in 0..1 first), as it did
    before ``mrcnn train`` moved uint8 pixels: the baseline of ``--dtypes``."""
    from mrcnn.data.augment import build_train_augmentation
    from pipelines.shards import collate_shard_batch
    from pipelines.train.data import batch_generator

    augment = build_train_augmentation({"kind": augmentation})

    def collate(batch, *, epoch: int, index: int):
        images, targets = collate_shard_batch(batch)
        generator = batch_generator(seed, 0, epoch, index)
        pairs = [augment(image, target, generator=generator) for image, target in zip(images, targets)]
        return [image for image, _ in pairs], [target for _, target in pairs]

    return collate


def compare_dtypes(rows: list[dict], batch_size: int, augmentation: str, rounds: int = 3) -> dict[str, float]:
    """Milliseconds per image of the collate with uint8 and with float32 pixels, in the loop's thread,
    interleaved round by round (the best round of each), so both see the same machine."""
    collates = {"uint8 (mrcnn train)": make_collate(augmentation), "float32": float_collate(augmentation)}
    best = dict.fromkeys(collates, float("inf"))
    for _ in range(rounds):
        for name, collate in collates.items():
            start = time.perf_counter()
            for index, batch in enumerate(batches(rows, batch_size)):
                collate(batch, epoch=0, index=index)
            best[name] = min(best[name], 1000 * (time.perf_counter() - start) / len(rows))
    return best


def make_step(step_s: float, busy: float):
    """A simulated training step of ``step_s`` seconds: the first ``busy`` part holds the GIL (a pure-Python loop, as
    the loop's thread does while it launches a GPU step's kernels), the rest sleeps (as it does while it waits
    for the GPU)."""

    def step() -> None:
        start = time.perf_counter()
        spin_until = start + busy * step_s
        while time.perf_counter() < spin_until:
            pass
        time.sleep(max(0.0, step_s - (time.perf_counter() - start)))

    return step


def run(rows, *, batch_size: int, threads: int, step_s: float, busy: float, augmentation: str, passes: int) -> dict:
    """``mrcnn train``'s data path (``pipelines.train.data.ShardEpochs`` and its ``Prefetcher``) for ``passes``
    passes over the rows, with a simulated step after every batch."""
    from pipelines.train.data import ShardEpochs

    epochs = ShardEpochs(RowShard(rows), batch_size, seed=0, collate=make_collate(augmentation), loader_threads=threads)
    step = make_step(step_s, busy) if step_s else None
    waits, images = [], 0
    start = time.perf_counter()
    try:
        for _ in range(passes):
            for batch_images, _targets in epochs:
                waits.append(epochs.prefetcher.last_wait_s)
                images += len(batch_images)
                if step:
                    step()
    finally:
        epochs.close()
    return _summary(waits, images, time.perf_counter() - start, step_s)


def run_ray(dataset, *, batch_size: int, threads: int, step_s: float, busy: float, augmentation: str, passes: int) -> dict:
    """Ray Data's ``iter_torch_batches`` with the same collate in its ``prefetch_batches`` threads."""
    collate = make_collate(augmentation)

    def collate_fn(batch):  # no batch index here: seeded by the batch's first image id
        return collate(batch, epoch=0, index=int(batch["image_id"][0]))

    step = make_step(step_s, busy) if step_s else None
    waits, images = [], 0
    start = time.perf_counter()
    for _ in range(passes):
        iterator = iter(dataset.iter_torch_batches(batch_size=batch_size, collate_fn=collate_fn, prefetch_batches=threads,
                                                   device="cpu"))  # fmt: skip
        while True:
            waited = time.perf_counter()
            try:
                batch_images, _targets = next(iterator)
            except StopIteration:
                break
            waits.append(time.perf_counter() - waited)
            images += len(batch_images)
            if step:
                step()
    return _summary(waits, images, time.perf_counter() - start, step_s)


def _summary(waits: list[float], images: int, seconds: float, step_s: float) -> dict:
    """The run's first wait (nothing can be ready before the loop starts) apart from the steady state's: the
    wait fraction is waiting / (waiting + stepping) over every step after the first."""
    steady = waits[1:]
    stepping = step_s * len(steady)
    return {"images": images, "seconds": seconds, "steps": len(waits), "first_wait_s": waits[0] if waits else 0.0,
            "wait_s": sum(steady), "max_wait_s": max(steady, default=0.0),
            "wait_fraction": sum(steady) / max(sum(steady) + stepping, 1e-9)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=4, help="times coco_mini's 6 images are repeated (one pass)")
    parser.add_argument("--passes", type=int, default=5, help="passes over the rows, as epochs of a run")
    parser.add_argument("--batch", type=int, default=8, help="images per step")
    parser.add_argument("--threads", type=int, nargs="+", default=[0, 1, 2], help="background threads (0: inline)")
    parser.add_argument("--step-ms", type=float, default=133.0, help="simulated step (default: 8 images at 60 images/s)")
    parser.add_argument("--busy", type=float, default=0.3, help="part of the step that holds the GIL (0..1)")
    parser.add_argument("--augmentation", default="none", choices=["none", "flip", "multiscale", "lsj"])
    parser.add_argument("--torch-threads", type=int, default=1, help="torch intra-op threads (resize, masks)")
    parser.add_argument("--ray", action="store_true", help="also Ray Data's iter_torch_batches(prefetch_batches=N)")
    parser.add_argument("--dtypes", action="store_true", help="also the augmentation on uint8 vs float32 pixels")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.torch_threads)
    rows = shard_rows(args.repeat)
    cores = os.cpu_count() or 1
    common = {"batch_size": args.batch, "augmentation": args.augmentation, "passes": args.passes, "busy": args.busy}
    run(rows[: args.batch * 2], threads=0, step_s=0.0, **{**common, "passes": 1})  # warm-up
    variants = [(t, t, lambda t=t, **kw: run(rows, threads=t, **kw)) for t in args.threads]
    if args.ray:
        import ray

        ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
        dataset = ray.data.from_items(rows).materialize()
        variants += [(f"ray {t}", t, lambda t=t, **kw: run_ray(dataset, threads=t, **kw)) for t in args.threads]
    throughput, waits = [], []
    for name, threads, measure in variants:
        result = measure(step_s=0.0, **common)
        used = 1 if threads == 0 else min(threads, cores)
        throughput.append((name, result["images"] / result["seconds"], used))
    for name, _, measure in variants:
        waits.append((name, measure(step_s=args.step_ms / 1000, **common)))

    print(f"\nInput pipeline on {len(rows)} COCO val2017 JPEGs with masks (coco_mini x {args.repeat}) x {args.passes} passes, "
          f"batch {args.batch}, augmentation {args.augmentation}, {cores} cores, load average {os.getloadavg()[0]:.1f}\n")  # fmt: skip
    print("| threads | images/s | cores used | images/s per core |")
    print("|---:|---:|---:|---:|")
    for threads, rate, used in throughput:
        print(f"| {threads} | {rate:.1f} | {used} | {rate / used:.1f} |")
    rate = args.batch / (args.step_ms / 1000)
    print(f"\nWith a simulated step of {args.step_ms:g} ms, {100 * args.busy:.0f}% of it holding the GIL ({rate:.0f} images/s "
          f"when the loop never waits); the run's first batch apart, then every later step:\n")  # fmt: skip
    print("| threads | first batch ms | steps | wait per step ms | longest wait ms | wait fraction | images/s |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for threads, r in waits:
        later = max(r["steps"] - 1, 1)
        print(f"| {threads} | {1000 * r['first_wait_s']:.0f} | {r['steps']} | {1000 * r['wait_s'] / later:.1f} | "
              f"{1000 * r['max_wait_s']:.1f} | {100 * r['wait_fraction']:.1f}% | {r['images'] / r['seconds']:.1f} |")  # fmt: skip
    dtypes = compare_dtypes(rows, args.batch, args.augmentation) if args.dtypes and args.augmentation != "none" else {}
    if dtypes:
        print("\nThe collate in the loop's thread, ms per image (best of 3 interleaved rounds):\n")
        print("| pixels the augmentation moves | ms per image | speed-up |")
        print("|---|---:|---:|")
        for name, ms in dtypes.items():
            print(f"| {name} | {ms:.1f} | {dtypes['float32'] / ms:.2f}x |")
    print(json.dumps({"throughput": throughput, "dtypes_ms_per_image": dtypes, "wait_fraction": {str(t): r["wait_fraction"] for t, r in waits},
                      "first_wait_s": {str(t): r["first_wait_s"] for t, r in waits},
                      "steps": {str(t): r["steps"] for t, r in waits}}))  # fmt: skip


if __name__ == "__main__":
    main()
