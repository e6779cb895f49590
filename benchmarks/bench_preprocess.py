"""Preprocessing throughput: Ray Data (``preprocess_coco``) against a plain single-process loop.

Both do the same work on the same data: validate the json and turn polygons/RLE into canonical
compressed RLE (``load_coco``, check_files=False), read every image's bytes, decode it fully and
check its size (``decode_image``), and write the Parquet shard rows (``shard_schema()``), in
batches of 64 images. Ray runs on a local cluster started before timing; a warm-up call on a few
images first starts its worker processes, so the timed run measures throughput, not start-up.

Datasets: the synthetic shapes (PNG, 128 px) and coco_mini's 6 real COCO JPEGs repeated (each
image entry repeated under new ids, pointing at the same files).

Usage::

    python benchmarks/bench_preprocess.py [--synthetic 2000] [--coco-repeat 300] [--num-cpus 2] [--repeats 2]

Prints a markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from mrcnn.data.coco import load_coco
from mrcnn.data.images import ImageDecodeError, decode_image
from mrcnn.data.synthetic import make_synthetic_coco
from pipelines.shards import shard_schema

REPO = Path(__file__).resolve().parents[1]
COCO_MINI = REPO / "tests" / "data" / "coco_mini"
BATCH = 64


def baseline(annotations: Path, images: Path, out: Path) -> tuple[int, float]:
    """The same work in one process: returns (rows written, seconds)."""
    start = time.perf_counter()
    result = load_coco(annotations, image_dir=images, check_files=False)
    schema = shard_schema()
    out.mkdir(parents=True, exist_ok=True)
    rows = 0
    with pq.ParquetWriter(out / "part-00000-of-00001.parquet", schema) as writer:
        columns: dict[str, list] = {name: [] for name in schema.names}

        def flush() -> None:
            writer.write_table(pa.table({n: pa.array(v, type=schema.field(n).type) for n, v in columns.items()}))
            for values in columns.values():
                values.clear()

        for record in result.records:
            path = images / record.file_name
            try:
                data = path.read_bytes()
                pixels = decode_image(data, source=str(path))
            except (OSError, ImageDecodeError):
                continue
            if pixels.shape[:2] != (record.height, record.width):
                continue
            anns = record.annotations
            columns["image_id"].append(record.image_id)
            columns["file_name"].append(record.file_name)
            columns["height"].append(record.height)
            columns["width"].append(record.width)
            columns["image"].append(data)
            columns["boxes"].append([list(a.box) for a in anns])
            columns["labels"].append([a.label for a in anns])
            columns["category_ids"].append([a.category_id for a in anns])
            columns["masks_rle"].append([a.rle["counts"] for a in anns])
            columns["iscrowd"].append([a.iscrowd for a in anns])
            columns["area"].append([a.area for a in anns])
            columns["keypoints"].append([list(a.keypoints) for a in anns])  # [] per instance without keypoints
            rows += 1
            if len(columns["image_id"]) == BATCH:
                flush()
        if columns["image_id"]:
            flush()
    return rows, time.perf_counter() - start


def repeated_coco_mini(root: Path, repeat: int) -> tuple[Path, Path]:
    """coco_mini's json with every image (and its annotations) repeated ``repeat`` times."""
    data = json.loads((COCO_MINI / "annotations.json").read_text())
    images, annotations = [], []
    for copy in range(repeat):
        for image in data["images"]:
            images.append(image | {"id": copy * 10**7 + image["id"]})
        for ann in data["annotations"]:
            annotations.append(ann | {"id": copy * 10**8 + ann["id"], "image_id": copy * 10**7 + ann["image_id"]})
    root.mkdir(parents=True, exist_ok=True)
    path = root / "annotations.json"
    path.write_text(json.dumps(data | {"images": images, "annotations": annotations}))
    return path, COCO_MINI / "images"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--synthetic", type=int, default=2000, help="synthetic images (128 px)")
    parser.add_argument("--coco-repeat", type=int, default=300, help="times coco_mini's 6 images are repeated")
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each; the best is reported")
    args = parser.parse_args()

    from pipelines.common.session import ray_session
    from pipelines.preprocess import preprocess_coco

    work = Path(tempfile.mkdtemp(prefix="bench_preprocess_"))
    session = contextlib.ExitStack()
    try:
        t0 = time.perf_counter()
        info = make_synthetic_coco(work / "synth", num_train=args.synthetic, num_val=0, size=128, seed=0)
        print(f"generated {args.synthetic} synthetic images in {time.perf_counter() - t0:.1f} s")
        datasets = [
            (f"synthetic {args.synthetic} x 128 px PNG", info["train"]["annotations"], info["train"]["image_dir"]),
            (f"coco_mini x {args.coco_repeat} ({6 * args.coco_repeat} JPEGs)", *repeated_coco_mini(work / "coco", args.coco_repeat)),
        ]
        t0 = time.perf_counter()
        session.enter_context(ray_session(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False))
        startup = time.perf_counter() - t0
        t0 = time.perf_counter()
        preprocess_coco(  # warm-up: one task per CPU, so every worker process imports torch/pycocotools
            annotations=COCO_MINI / "annotations.json", images=COCO_MINI / "images", out=work / "warm",
            split="val", num_shards=args.num_cpus, batch_size=1, progress=False,
        )
        warmup = time.perf_counter() - t0
        load_before = os.getloadavg()[0]
        results = []
        for name, annotations, images in datasets:
            seconds_plain = seconds_ray = float("inf")
            for _ in range(args.repeats):  # alternate the two, keep the best of each (shared machine)
                rows_plain, seconds = baseline(Path(annotations), Path(images), work / "plain" / name[:5])
                seconds_plain = min(seconds_plain, seconds)
                summary = preprocess_coco(
                    annotations=annotations, images=images, out=work / "ray" / name[:5], split="train", progress=False
                )
                assert summary.num_rows == rows_plain, (summary.num_rows, rows_plain)
                seconds_ray = min(seconds_ray, summary.seconds)
            num_images = summary.num_images
            results.append((name, num_images, "plain loop, 1 process", seconds_plain, 1.0))
            results.append(
                (name, num_images, f"Ray Data, {args.num_cpus} CPUs, {len(summary.shard_paths)} shards",
                 seconds_ray, seconds_plain / seconds_ray)
            )
        print()
        print(f"Preprocessing throughput, best of {args.repeats} ({os.cpu_count()}-core machine, load average "
              f"{load_before:.1f} before / {os.getloadavg()[0]:.1f} after; ray.init {startup:.1f} s and "
              f"worker warm-up {warmup:.1f} s not included)")
        print()
        print("| dataset | images | method | seconds | images/s | speed-up |")
        print("|---|---:|---|---:|---:|---:|")
        for name, num_images, method, seconds, speedup in results:
            print(f"| {name} | {num_images} | {method} | {seconds:.2f} | {num_images / seconds:.0f} | {speedup:.2f}x |")
    finally:
        session.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
