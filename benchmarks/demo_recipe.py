"""Learning per step of the instance demo's recipe: holdout segm AP after each of the steps asked.

    python benchmarks/demo_recipe.py --data /tmp/demo_recipe [--steps 300] [--eval-at 100,150,200,250,300]
        [--size 128] [--override '{"solver.warmup_iters": 30}'] [--threads 1]

One process (no Ray), the `r18_fpn_small` preset with ``--override`` (JSON, dotted keys), batch
``--batch`` (default 8: the demo's 2 workers x 4), horizontal flips, lr x0.1 at 80% of ``--steps``. The
data is the demo's synthetic ``easy`` set written under ``--data`` if missing: ``--train`` images from seed 0
and a ``--holdout`` val split from ``--holdout-seed`` (default 12345: a seed the demo never trains on).
Prints one JSON line per evaluation: step, holdout segm/bbox AP (percent), training seconds so far
(evaluations excluded) and the process's CPU seconds per step. The figures in benchmarks/RESULTS.md
("The demo's data and recipe") come from this script.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_data(root: Path, *, size: int, num_train: int, num_holdout: int, holdout_seed: int) -> Path:
    """The easy set at ``size`` px under ``root/easy-s{size}-n{num_train}-h{num_holdout}-seed{holdout_seed}``
    (written once)."""
    from mrcnn.data.synthetic import make_synthetic_coco
    from pipelines.demo import make_holdout_split

    data = root / f"easy-s{size}-n{num_train}-h{num_holdout}-seed{holdout_seed}"
    if not (data / "val" / "annotations.json").is_file():
        make_holdout_split(
            data, num_train=num_train, num_val=num_holdout, seed=0, holdout_seed=holdout_seed,
            make=lambda out, **kw: make_synthetic_coco(out, size=size, difficulty="easy", **kw),
        )  # fmt: skip
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="folder for the generated data")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--eval-at", default="100,150,200,250,300", help="comma-separated steps")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=128, help="image side in px (data and model input)")
    parser.add_argument("--train", type=int, default=400)
    parser.add_argument("--holdout", type=int, default=100)
    parser.add_argument("--holdout-seed", type=int, default=12345)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: CPU seconds of one core)")
    parser.add_argument("--override", default="{}", help="JSON overrides of the preset, dotted keys")
    args = parser.parse_args()

    from mrcnn.config import get_preset
    from mrcnn.data.dataset import CocoInstanceDataset, collate_detection
    from mrcnn.data.transforms import RandomHorizontalFlip
    from mrcnn.engine import HookBase, evaluate_model, fit
    from mrcnn.modeling import build_model
    from mrcnn.solver import build_optimizer

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    data = make_data(args.data, size=args.size, num_train=args.train, num_holdout=args.holdout,
                     holdout_seed=args.holdout_seed)  # fmt: skip
    train = CocoInstanceDataset.from_files(data / "train" / "annotations.json", data / "train" / "images",
                                           transforms=RandomHorizontalFlip(0.5))  # fmt: skip
    val = CocoInstanceDataset.from_files(data / "val" / "annotations.json", data / "val" / "images")
    overrides = {"solver.batch_size": args.batch, "model.input.min_size": [args.size],
                 "model.input.max_size": max(args.size, 224), **json.loads(args.override)}  # fmt: skip
    cfg = get_preset("r18_fpn_small").replace(**overrides)
    model = build_model(cfg).to(memory_format=torch.channels_last)
    eval_at = {int(step) for step in args.eval_at.split(",")}

    class HoldoutEvaluation(HookBase):
        def __init__(self):
            self.eval_s, self.cpu0 = 0.0, time.process_time()

        def after_step(self):
            step = self.trainer.state.iteration
            if step not in eval_at:
                return
            start, cpu = time.perf_counter(), time.process_time()
            loader = torch.utils.data.DataLoader(val, batch_size=8, collate_fn=collate_detection)
            metrics = evaluate_model(model, loader, data / "val" / "annotations.json", val.categories)
            model.train()
            spent = time.perf_counter() - start
            self.eval_s += spent
            self.cpu0 += time.process_time() - cpu  # CPU time of evaluations is not training's
            print(json.dumps({
                "step": step, "segm_AP": round(metrics["segm"]["AP"], 1), "segm_AP50": round(metrics["segm"]["AP50"], 1),
                "bbox_AP": round(metrics["bbox"]["AP"], 1), "size": args.size, "override": json.loads(args.override),
                "train_s": round(self.trainer.state.elapsed_s - self.eval_s, 1), "eval_s": round(spent, 1),
                "cpu_s_per_step": round((time.process_time() - self.cpu0) / step, 3),
            }), flush=True)  # fmt: skip

    loader = torch.utils.data.DataLoader(train, batch_size=args.batch, shuffle=True, collate_fn=collate_detection,
                                         drop_last=True)  # fmt: skip
    fit(model, loader, build_optimizer(model, cfg.solver), cfg.solver, max_iters=args.steps, hooks=[HoldoutEvaluation()])


if __name__ == "__main__":
    main()
