"""Training throughput: `mrcnn train` (Ray Train, 2 CPU workers, DDP over gloo) against a plain
single-process torch loop, on the same model (r18_fpn_small), data (synthetic 128 px) and total batch.

    python benchmarks/bench_train.py [--iters 40] [--images 200] [--warmup 3] [--loader-threads N]

Both sides time the training loop only (Ray start-up and worker launch are reported apart), two ways:
over the whole loop (``train_images_per_s``, what the run reports) and in the steady state, from the end of
step ``--warmup`` to the end of the last step (wall time between steps: data wait, step and hooks), which
leaves out what only the first steps pay (the Ray Data pipeline's start, DDP's first bucket set-up). Prints a
markdown table with the machine's load average, which a shared machine needs to read the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def step_clock(out: Path, warmup: int):
    """A hook that writes, on rank 0 after training, ``{"images_per_s", "torch_threads"}`` of the steps after
    ``warmup`` to ``out`` (a JSON file)."""
    from mrcnn.engine import HookBase

    class StepClock(HookBase):
        def __init__(self):
            self.marks: list[tuple[float, int]] = []

        def after_step(self):
            self.marks.append((time.perf_counter(), self.trainer.state.images_seen))

        def after_train(self):
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
                return
            (t0, seen0), (t1, seen1) = self.marks[min(warmup, len(self.marks) - 1) - 1 if warmup else 0], self.marks[-1]
            rate = (seen1 - seen0) / (t1 - t0) if t1 > t0 else float("nan")
            out.write_text(json.dumps({"images_per_s": rate, "torch_threads": torch.get_num_threads()}))

    return StepClock()


def plain_loop(data: Path, iters: int, batch: int, clock) -> float:
    from mrcnn.config import get_preset
    from mrcnn.data.dataset import CocoInstanceDataset, collate_detection
    from mrcnn.engine import fit
    from mrcnn.modeling import build_model
    from mrcnn.solver import build_optimizer

    torch.manual_seed(0)
    dataset = CocoInstanceDataset.from_files(data / "train" / "annotations.json", data / "train" / "images")
    cfg = get_preset("r18_fpn_small")
    model = build_model(cfg).to(memory_format=torch.channels_last)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, collate_fn=collate_detection, drop_last=True)
    fit(model, loader, build_optimizer(model, cfg.solver), cfg.solver, max_iters=3)  # warm-up
    state = fit(model, loader, build_optimizer(model, cfg.solver), cfg.solver, max_iters=iters, hooks=[clock])
    return state.images_seen / state.elapsed_s


def ray_train(shards: Path, iters: int, batch: int, storage: Path, clock, loader_threads: int) -> tuple[float, float]:
    from pipelines.train import TrainRunConfig, train

    t0 = time.perf_counter()
    result = train(TrainRunConfig(data=str(shards), workers=2, batch_size=batch // 2, max_iters=iters,
                                  checkpoint_every=10**6, storage_path=str(storage), name="bench",
                                  loader_threads=loader_threads), extra_hooks=[clock])  # fmt: skip
    return result.metrics["train_images_per_s"], time.perf_counter() - t0 - result.metrics["train_seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iters", type=int, default=40)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--batch", type=int, default=8, help="total images per step")
    parser.add_argument("--warmup", type=int, default=3, help="steps left out of the steady-state rate")
    parser.add_argument("--loader-threads", type=int, default=-1, help="mrcnn train's loader_threads (-1: its default)")
    args = parser.parse_args()

    from mrcnn.data.synthetic import make_synthetic_coco
    from pipelines.common.session import ray_session
    from pipelines.preprocess import preprocess_dataset

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_synthetic_coco(tmp / "synth", num_train=args.images, num_val=8, size=128, seed=0)
        load_before = os.getloadavg()[0]
        plain = plain_loop(tmp / "synth", args.iters, args.batch, step_clock(tmp / "plain.json", args.warmup))
        with ray_session(include_dashboard=False):
            preprocess_dataset(tmp / "synth", tmp / "shards")
            distributed, overhead = ray_train(tmp / "shards", args.iters, args.batch, tmp / "ray_results",
                                              step_clock(tmp / "ray.json", args.warmup), args.loader_threads)  # fmt: skip
        steady = {name: json.loads((tmp / f"{name}.json").read_text()) for name in ("plain", "ray")}
    print(f"\nTraining throughput, r18_fpn_small, synthetic 128 px, total batch {args.batch}, {args.iters} steps; "
          f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after ({os.cpu_count()} cores)\n")
    print(f"| method | torch threads | images/s, whole loop | ratio | images/s, after step {args.warmup} | ratio |")
    print("|---|---:|---:|---:|---:|---:|")
    print(f"| plain torch loop, 1 process | {steady['plain']['torch_threads']} | {plain:.2f} | 1.00x | "
          f"{steady['plain']['images_per_s']:.2f} | 1.00x |")
    print(f"| mrcnn train, Ray Train 2 workers (DDP, gloo) | {steady['ray']['torch_threads']} per worker | "
          f"{distributed:.2f} | {distributed / plain:.2f}x | {steady['ray']['images_per_s']:.2f} | "
          f"{steady['ray']['images_per_s'] / steady['plain']['images_per_s']:.2f}x |")
    print(f"\nRay start-up + worker launch + data set-up, not counted above: {overhead:.0f} s")


if __name__ == "__main__":
    main()
