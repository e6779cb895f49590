"""Learning per step of the keypoint demo's recipe: held-out OKS AP after fixed numbers of steps.

    python benchmarks/keypoint_recipe.py --steps 300 --eval-at 100,200,300 [--preset P] [--override JSON]
        [--batch 8] [--size 128] [--train 400] [--threads 1] [--flip]

One plain process (no Ray): writes the synthetic houses (``mrcnn.data.synthetic_keypoints``, the
demo's generator) for training with seed 0 and a holdout with an unseen seed (``--holdout-seed``,
default 1000), trains ``--preset`` (default ``r18_fpn_small_keypoints``) with ``--override`` dotted
keys through :func:`mrcnn.engine.fit`, and after each step count in ``--eval-at`` scores OKS
keypoint AP (and bbox AP) on the holdout. ``--threads`` sets ``torch.set_num_threads`` (default 1:
the machine is shared, so compare steps, and time steps separately). ``cpu_s_per_step`` is the
process's CPU time per training step (data loading included, evaluation excluded): with one thread,
the wall time of a step on an idle core. Prints one JSON line per evaluation.
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

from mrcnn.engine import HookBase


class EvaluateAt(HookBase):
    """After the listed steps: evaluate on the holdout and print a JSON line; its time is not training time."""

    def __init__(self, steps: set[int], evaluate, base: dict) -> None:
        self.steps = steps
        self.evaluate = evaluate
        self.base = base
        self.eval_s = 0.0
        self.eval_cpu_s = 0.0

    def before_train(self) -> None:
        self.cpu_start = time.process_time()

    def after_step(self) -> None:
        state = self.trainer.state
        if state.iteration % 10 == 0:
            print(f"step {state.iteration} cpu {time.process_time() - self.cpu_start:.0f}s", file=sys.stderr, flush=True)
        if state.iteration not in self.steps:
            return
        started, started_cpu = time.perf_counter(), time.process_time()
        metrics = self.evaluate()
        self.trainer.model.train()
        self.eval_s += time.perf_counter() - started
        self.eval_cpu_s += time.process_time() - started_cpu
        train_cpu_s = time.process_time() - self.cpu_start - self.eval_cpu_s
        train_s = time.perf_counter() - self.trainer._start - self.eval_s
        recent = state.history[-20:]
        print(json.dumps({
            **self.base, "step": state.iteration, "train_s": round(train_s, 1),
            "s_per_step": round(sum(r["step_s"] for r in recent) / len(recent), 3),
            "cpu_s_per_step": round(train_cpu_s / state.iteration, 3),
            "loss_keypoint": round(sum(r["loss_keypoint"] for r in recent) / len(recent), 3),
            "keypoints_AP": round(metrics["keypoints"]["AP"], 1), "keypoints_AP50": round(metrics["keypoints"]["AP50"], 1),
            "bbox_AP": round(metrics["bbox"]["AP"], 1), "load_avg_1min": round(os.getloadavg()[0], 2),
        }), flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="r18_fpn_small_keypoints")
    parser.add_argument("--override", default="{}", help="JSON dotted-key overrides of the preset")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--eval-at", default="", help="comma-separated steps (default: the last)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=128, help="image side of the generated houses")
    parser.add_argument("--train", type=int, default=400, help="training images")
    parser.add_argument("--holdout", type=int, default=100, help="holdout images")
    parser.add_argument("--holdout-seed", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--flip", action="store_true", help="random horizontal flip (with the keypoint flip map)")
    parser.add_argument("--data", type=Path, default=None, help="cache the generated sets here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from mrcnn.config import get_preset
    from mrcnn.data.dataset import CocoInstanceDataset, collate_detection
    from mrcnn.data.keypoints import flip_indices
    from mrcnn.data.synthetic_keypoints import (
        HOUSE_KEYPOINTS,
        make_synthetic_keypoints_coco,
    )
    from mrcnn.data.transforms import RandomHorizontalFlip
    from mrcnn.engine import evaluate_model, fit
    from mrcnn.modeling import build_model
    from mrcnn.solver import build_optimizer

    data = args.data or Path(tempfile.mkdtemp(prefix="kp-recipe-"))
    train_dir, holdout_dir = data / f"train-s{args.size}-n{args.train}", data / f"holdout-s{args.size}-seed{args.holdout_seed}"
    if not (train_dir / "train" / "annotations.json").exists():
        make_synthetic_keypoints_coco(train_dir, num_train=args.train, num_val=0, size=args.size, seed=0)
    if not (holdout_dir / "val" / "annotations.json").exists():
        make_synthetic_keypoints_coco(holdout_dir, num_train=0, num_val=args.holdout, size=args.size, seed=args.holdout_seed)

    overrides = json.loads(args.override)
    cfg = get_preset(args.preset).replace(**{"solver.batch_size": args.batch, **overrides})
    flip = RandomHorizontalFlip(0.5, keypoint_flip_indices=flip_indices(HOUSE_KEYPOINTS)) if args.flip else None
    train = CocoInstanceDataset.from_files(train_dir / "train" / "annotations.json", train_dir / "train" / "images",
                                           transforms=flip)  # fmt: skip
    holdout = CocoInstanceDataset.from_files(holdout_dir / "val" / "annotations.json", holdout_dir / "val" / "images")
    torch.manual_seed(0)
    model = build_model(cfg).to(memory_format=torch.channels_last)
    loader = torch.utils.data.DataLoader(train, batch_size=args.batch, shuffle=True, collate_fn=collate_detection,
                                         drop_last=True)  # fmt: skip
    holdout_loader = torch.utils.data.DataLoader(holdout, batch_size=8, collate_fn=collate_detection)

    def evaluate():
        return evaluate_model(model, holdout_loader, holdout_dir / "val" / "annotations.json", holdout.categories,
                              iou_types=("bbox", "keypoints"))  # fmt: skip

    eval_at = {int(s) for s in args.eval_at.split(",") if s} or {args.steps}
    base = {"preset": args.preset, "override": overrides, "batch": args.batch, "size": args.size, "train": args.train,
            "flip": args.flip, "threads": args.threads}  # fmt: skip
    solver = cfg.solver
    fit(model, loader, build_optimizer(model, solver), solver, max_iters=args.steps,
        hooks=[EvaluateAt(eval_at, evaluate, base)])  # fmt: skip


if __name__ == "__main__":
    main()
