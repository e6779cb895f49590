"""Online serving: the Serve endpoint under concurrent load, against the Predictor called directly.

Side by side in one run, on the same images and model:

- ``direct, 1 image/call``: one process decodes each image and calls ``Predictor.predict`` on it
  alone, one after the other (torch uses every core). The floor any server adds overhead to.
- ``direct, 8 images/call``: the same, 8 images per call: what batching can gain inside the model.
- ``endpoint, batching``: ``pipelines.serve`` with ``@serve.batch`` (up to ``--max-batch-size``
  images per forward pass), ``--clients`` concurrent HTTP clients each sending images one by one.
- ``endpoint, no batching``: the same endpoint with ``max_batch_size=1``.

Both endpoints run one replica with every core (``cpus_per_replica`` = the machine's cores), on a
local Ray on 127.0.0.1, and are warmed up before timing. Latency is per request as the client sees it
(for the direct rows: per image, decode to records). The clients run on the same machine and use
some of its CPU: the endpoint rows are a lower bound.

Images: the real photos of ``../shared/data/extra_photos`` (``tests/data`` photos when absent),
cycled. The model: ``--model`` (a checkpoint or any URI ``mrcnn serve`` takes), default a randomly
initialised ``r18_fpn_small``; its random scores are near 0.2-0.3, so ``--score-threshold 0.25``
keeps a few instances per image (masks and all), as a trained model would.

Usage::

    python benchmarks/bench_serve.py [--requests 96] [--clients 16] [--max-batch-size 8] [--score-threshold 0.25]

Prints a markdown table.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mrcnn import runtime
from mrcnn.data.images import decode_image
from mrcnn.predictor import Predictor

PHOTO_DIRS = (REPO.parent / "shared" / "data" / "extra_photos" / "images", REPO / "tests" / "data" / "photos",
              REPO / "tests" / "data" / "coco_mini" / "images")  # fmt: skip


def load_images(limit: int) -> list[bytes]:
    for folder in PHOTO_DIRS:
        files = sorted(folder.glob("*.jpg"))[:limit]
        if files:
            return [f.read_bytes() for f in files]
    raise SystemExit(f"no photos in any of {[str(d) for d in PHOTO_DIRS]}")


def random_checkpoint(folder: Path) -> Path:
    import torch

    from mrcnn.checkpoint import save_checkpoint
    from mrcnn.config import get_preset
    from mrcnn.data.synthetic import synthetic_categories
    from mrcnn.modeling import build_model

    torch.manual_seed(0)
    cfg = get_preset("r18_fpn_small")
    return save_checkpoint(folder / "random-r18.ckpt", model=build_model(cfg), config=cfg, categories=synthetic_categories())


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def direct(predictor: Predictor, images: list[bytes], requests: int, batch: int, threshold: float) -> dict:
    """Decode + predict in this process, ``batch`` images per call; latency per image = its call's time."""
    latencies, instances = [], 0
    start = time.perf_counter()
    for first in range(0, requests, batch):
        call_start = time.perf_counter()
        chunk = [decode_image(images[i % len(images)]) for i in range(first, min(requests, first + batch))]
        results = predictor.predict(chunk, score_threshold=threshold)
        instances += sum(len(r) for r in results)
        latencies += [time.perf_counter() - call_start] * len(chunk)
    elapsed = time.perf_counter() - start
    return {"seconds": elapsed, "latencies": latencies, "instances": instances, "batch": float(batch)}


def post(url: str, data: bytes) -> tuple[int, float, int]:
    """(status, seconds, server batch size)."""
    start = time.perf_counter()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "image/jpeg"})
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            response.read()
            return response.status, time.perf_counter() - start, int(response.headers.get("X-Batch-Size", "0"))
    except urllib.error.HTTPError as exc:
        return exc.code, time.perf_counter() - start, 0


def endpoint(url: str, images: list[bytes], requests: int, clients: int) -> dict:
    """``requests`` POSTs from ``clients`` concurrent threads; every one must succeed."""
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda i: post(url, images[i % len(images)]), range(requests)))
    elapsed = time.perf_counter() - start
    failed = [status for status, _, _ in results if status != 200]
    if failed:
        raise SystemExit(f"{url}: {len(failed)} of {requests} requests failed: statuses {sorted(set(failed))}")
    return {"seconds": elapsed, "latencies": [r[1] for r in results], "instances": None,
            "batch": statistics.mean(r[2] for r in results)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="checkpoint or model URI (default: a random r18_fpn_small)")
    parser.add_argument("--requests", type=int, default=96, help="images per measured row")
    parser.add_argument("--clients", type=int, default=16, help="concurrent HTTP clients")
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--batch-wait-ms", type=float, default=20.0)
    parser.add_argument("--score-threshold", type=float, default=0.25)
    parser.add_argument("--images", type=int, default=17, help="distinct photos, cycled")
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 2, help="torch threads (direct) and replica CPUs")
    args = parser.parse_args()

    import torch
    from ray import serve

    from pipelines.common.session import ray_session
    from pipelines.serve import build_app
    from tests.pipelines.mlflow_server import free_port

    images = load_images(args.images)
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or str(random_checkpoint(Path(tmp)))
        torch.set_num_threads(args.cpus)
        winograd = runtime.keep_freed_memory()  # as the Serve replicas do
        predictor = Predictor.from_checkpoint(model if Path(model).exists() else _resolve(model), optimize={"winograd": winograd})
        direct(predictor, images, 4, 1, args.score_threshold)  # warm-up
        rows = {
            "direct, 1 image/call": direct(predictor, images, args.requests, 1, args.score_threshold),
            f"direct, {args.max_batch_size} images/call": direct(predictor, images, args.requests, args.max_batch_size, args.score_threshold),
        }  # fmt: skip
        del predictor

        with ray_session(num_cpus=2 * args.cpus, include_dashboard=False, log_to_driver=False):
            try:
                port = free_port()
                serve.start(http_options={"host": "127.0.0.1", "port": port})
                common = {"model": model, "replicas": 1, "cpus_per_replica": args.cpus, "score_threshold": args.score_threshold,
                          "max_ongoing_requests": max(args.clients, args.max_batch_size), "max_queued_requests": -1,
                          "batch_wait_timeout_s": args.batch_wait_ms / 1000}  # fmt: skip
                apps = {"batching": args.max_batch_size, "unbatched": 1}
                for name, batch in apps.items():
                    serve.run(build_app({**common, "max_batch_size": batch}), name=name, route_prefix=f"/{name}")
                for name in apps:  # warm-up: every replica has run the model
                    endpoint(f"http://127.0.0.1:{port}/{name}/v1/segment", images, 8, 4)
                for label, name in ((f"endpoint, batching (<= {args.max_batch_size})", "batching"), ("endpoint, no batching", "unbatched")):
                    rows[label] = endpoint(f"http://127.0.0.1:{port}/{name}/v1/segment", images, args.requests, args.clients)
            finally:
                serve.shutdown()

    load = os.getloadavg()
    print(f"\n{args.requests} images per row ({len(images)} distinct photos), {args.clients} concurrent clients for the endpoint, "
          f"score threshold {args.score_threshold}, {args.cpus} CPU threads; load average at the end {load[0]:.1f}\n")  # fmt: skip
    print("| method | images/s | p50 latency ms | p99 latency ms | mean batch | speed-up |")
    print("|---|---:|---:|---:|---:|---:|")
    base = args.requests / rows["direct, 1 image/call"]["seconds"]
    for label, row in rows.items():
        throughput = args.requests / row["seconds"]
        print(f"| {label} | {throughput:.2f} | {percentile(row['latencies'], 50) * 1000:.0f} | "
              f"{percentile(row['latencies'], 99) * 1000:.0f} | {row['batch']:.1f} | {throughput / base:.2f}x |")  # fmt: skip


def _resolve(uri: str) -> Path:
    from pipelines.tracking import resolve_model_uri

    return resolve_model_uri(uri)


if __name__ == "__main__":
    main()
