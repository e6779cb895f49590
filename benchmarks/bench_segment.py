"""Batch segmentation throughput: ``mrcnn segment`` (Ray Data actor pool) against a plain single-process loop.

Both do the same work on the same image files with the same checkpoint: read and decode every
image, run the Predictor ``--batch-size`` images per forward pass, and write COCO results json.

- The plain loop is what ``mrcnn predict`` does: one process, the model loaded once, and its time
  includes loading the model. It runs twice: with torch's default threads, and with one thread
  (on a shared machine the one-thread loop can be faster).
- The Ray side is ``segment()`` on a local Ray started before timing, with one actor per CPU and
  one torch thread each. Its time is the whole call: listing, actor start-up and model loading in
  every actor, the pipeline, writing the part files, and assembling results.json. Its start-up is
  also measured alone (one image per actor), so the steady-state rate can be told apart.

Model: a randomly initialised checkpoint of ``--preset`` (default r18_fpn_small, 128 px inputs),
or ``--model`` (any URI ``mrcnn segment`` takes). A random model's class scores are ~0.2-0.3, so
the default ``--score-threshold 0.23`` keeps tens of detections per image and the mask head runs.

Datasets: the synthetic shapes (PNG, 128 px), and coco_mini's 6 real COCO JPEGs (~640x480) copied
``--coco-repeat`` times.

Usage::

    python benchmarks/bench_segment.py [--synthetic 96] [--coco-repeat 16] [--num-cpus 2] [--repeats 2]

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

REPO = Path(__file__).resolve().parents[1]
COCO_MINI_IMAGES = REPO / "tests" / "data" / "coco_mini" / "images"


def plain_loop(
    checkpoint: Path, images: list[Path], out: Path, *, batch_size: int, score_threshold: float, threads: int
) -> tuple[int, float]:
    """``mrcnn predict``'s work in this process with ``threads`` torch threads: returns (detections,
    seconds including the model load)."""
    import torch

    from mrcnn import runtime
    from mrcnn.data.images import load_image
    from mrcnn.predictor import Predictor
    from mrcnn.records import coco_result

    torch.set_num_threads(threads)
    start = time.perf_counter()
    winograd = runtime.keep_freed_memory()  # as `mrcnn predict` does
    predictor = Predictor.from_checkpoint(checkpoint, score_threshold=score_threshold, optimize={"winograd": winograd})
    results = []
    for first in range(0, len(images), batch_size):
        paths = images[first : first + batch_size]
        for path, detections in zip(paths, predictor.predict([load_image(p) for p in paths])):
            results.extend(coco_result(det, image_id=None, file_name=path.name) for det in detections)
    out.write_text(json.dumps(results))
    return len(results), time.perf_counter() - start


def make_datasets(work: Path, num_synthetic: int, coco_repeat: int) -> list[tuple[str, Path]]:
    from mrcnn.data.synthetic import make_synthetic_coco

    info = make_synthetic_coco(work / "synth", num_train=num_synthetic, num_val=0, size=128, seed=0)
    coco = work / "coco"
    coco.mkdir()
    for copy in range(coco_repeat):
        for path in sorted(COCO_MINI_IMAGES.iterdir()):
            shutil.copy(path, coco / f"{copy:03d}_{path.name}")
    return [
        (f"synthetic {num_synthetic} x 128 px PNG", Path(info["train"]["image_dir"])),
        (f"coco_mini x {coco_repeat} ({6 * coco_repeat} JPEGs, ~640x480)", coco),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--synthetic", type=int, default=96, help="synthetic images (128 px)")
    parser.add_argument("--coco-repeat", type=int, default=16, help="copies of coco_mini's 6 JPEGs")
    parser.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray (= actors)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each; the best is reported")
    parser.add_argument("--preset", default="r18_fpn_small", help="preset of the random checkpoint")
    parser.add_argument("--model", help="a model URI or checkpoint instead of a random one")
    parser.add_argument("--batch-size", type=int, default=2, help="images per forward pass (both sides)")
    parser.add_argument("--part-size", type=int, default=16, help="images per actor call (Ray side)")
    parser.add_argument("--score-threshold", type=float, default=0.23)
    args = parser.parse_args()

    import torch

    from pipelines.common.session import ray_session
    from pipelines.batch.segment import segment

    work = Path(tempfile.mkdtemp(prefix="bench_segment_"))
    session = contextlib.ExitStack()
    try:
        if args.model:
            checkpoint = Path(args.model)
        else:
            from mrcnn.checkpoint import save_checkpoint
            from mrcnn.config import get_preset
            from mrcnn.data.synthetic import synthetic_categories
            from mrcnn.modeling import build_model

            torch.manual_seed(0)
            cfg = get_preset(args.preset)
            checkpoint = save_checkpoint(work / "model.ckpt", model=build_model(cfg), config=cfg, categories=synthetic_categories())
        datasets = make_datasets(work, args.synthetic, args.coco_repeat)

        t0 = time.perf_counter()
        session.enter_context(ray_session(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False))
        ray_init = time.perf_counter() - t0
        options = {"model": str(checkpoint), "workers": args.num_cpus, "batch_size": args.batch_size,
                   "score_threshold": args.score_threshold, "output_format": "coco", "progress": False}  # fmt: skip
        few = work / "few"
        few.mkdir()
        for path in sorted(datasets[0][1].iterdir())[: args.num_cpus]:
            shutil.copy(path, few / path.name)
        startup = float("inf")  # one image per actor: what every run pays before its steady state
        for run in range(args.repeats):
            summary = segment(input=few, out=work / f"startup{run}", part_size=1, **options)
            startup = min(startup, summary.seconds)
        load_before = os.getloadavg()[0]
        rows = []
        default_threads = torch.get_num_threads()
        plain_threads = sorted({default_threads, 1}, reverse=True)
        for name, folder in datasets:
            images = sorted(folder.iterdir())
            best = {threads: float("inf") for threads in plain_threads} | {"ray": float("inf")}
            for run in range(args.repeats):  # alternate the sides, keep the best of each (shared machine)
                for threads in plain_threads:
                    num_plain, seconds = plain_loop(checkpoint, images, work / "plain.json", batch_size=args.batch_size,
                                                    score_threshold=args.score_threshold, threads=threads)  # fmt: skip
                    best[threads] = min(best[threads], seconds)
                torch.set_num_threads(default_threads)
                summary = segment(input=folder, out=work / f"ray-{name[:5]}-{run}", part_size=args.part_size, **options)
                assert summary.num_results == len(images), summary.format()
                best["ray"] = min(best["ray"], summary.seconds)
            for threads in plain_threads:
                rows.append((name, len(images), f"plain loop, 1 process, {threads} thread(s)", best[threads], num_plain))
            rows.append((name, len(images), f"mrcnn segment, {args.num_cpus} actors x 1 thread", best["ray"], summary.num_detections))
        session.close()

        print()
        print(f"Batch segmentation throughput, {args.preset if not args.model else args.model}, best of {args.repeats} "
              f"({os.cpu_count()}-core machine, load average {load_before:.1f} before / {os.getloadavg()[0]:.1f} after; "
              f"ray.init {ray_init:.1f} s not included; segment start-up with one image per actor: {startup:.1f} s)")  # fmt: skip
        print()
        print("| dataset | images | method | detections | seconds | images/s | ratio |")
        print("|---|---:|---|---:|---:|---:|---:|")
        per_dataset = len(plain_threads) + 1
        for index, (name, num_images, method, seconds, detections) in enumerate(rows):
            ratio = rows[index - index % per_dataset][3] / seconds  # against the first plain loop row
            print(f"| {name} | {num_images} | {method} | {detections} | {seconds:.1f} | {num_images / seconds:.2f} | {ratio:.2f}x |")
    finally:
        session.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
