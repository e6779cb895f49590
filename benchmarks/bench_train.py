"""Training throughput: `mrcnn train` (Ray Train, 2 CPU workers, DDP over gloo) against a plain
single-process torch loop, on the same model (r18_fpn_small), data (synthetic 128 px) and total batch.

    python benchmarks/bench_train.py [--iters 40] [--images 200]

Both sides time the training loop only (Ray start-up and worker launch are reported apart). Prints a
markdown table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def plain_loop(data: Path, iters: int, batch: int) -> float:
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
    state = fit(model, loader, build_optimizer(model, cfg.solver), cfg.solver, max_iters=iters)
    return state.images_seen / state.elapsed_s


def ray_train(shards: Path, iters: int, batch: int, storage: Path) -> tuple[float, float]:
    from pipelines.train import TrainRunConfig, train

    t0 = time.perf_counter()
    result = train(TrainRunConfig(data=str(shards), workers=2, batch_size=batch // 2, max_iters=iters,
                                  checkpoint_every=10**6, storage_path=str(storage), name="bench"))
    return result.metrics["train_images_per_s"], time.perf_counter() - t0 - result.metrics["train_seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iters", type=int, default=40)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--batch", type=int, default=8, help="total images per step")
    args = parser.parse_args()

    from mrcnn.data.synthetic import make_synthetic_coco
    from pipelines.common.session import ray_session
    from pipelines.preprocess import preprocess_dataset

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_synthetic_coco(tmp / "synth", num_train=args.images, num_val=8, size=128, seed=0)
        plain = plain_loop(tmp / "synth", args.iters, args.batch)
        with ray_session(include_dashboard=False):
            preprocess_dataset(tmp / "synth", tmp / "shards")
            distributed, overhead = ray_train(tmp / "shards", args.iters, args.batch, tmp / "ray_results")
    print(f"\nTraining throughput, r18_fpn_small, synthetic 128 px, total batch {args.batch}, {args.iters} steps "
          f"({torch.get_num_threads()} torch threads in the plain loop)\n")
    print("| method | images/s | ratio |")
    print("|---|---:|---:|")
    print(f"| plain torch loop, 1 process | {plain:.2f} | 1.00x |")
    print(f"| mrcnn train, Ray Train 2 workers (DDP, gloo) | {distributed:.2f} | {distributed / plain:.2f}x |")
    print(f"\nRay start-up + worker launch + data set-up, not counted above: {overhead:.0f} s")


if __name__ == "__main__":
    main()
