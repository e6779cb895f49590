"""Test-side hooks for Ray Train workers (``train(run, extra_hooks=[...])`` or ``$MRCNN_TRAIN_HOOKS``).

They run inside the workers, which import them from this package (the repository root is on their path).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from mrcnn.engine import HookBase


def _rank() -> tuple[int, int]:
    import ray.train

    context = ray.train.get_context()
    return context.get_world_rank(), context.get_world_size()


def _write_node(out_dir: Path, rank: int) -> None:
    import ray

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"node_rank{rank}.txt").write_text(ray.get_runtime_context().get_node_id())


class DumpSeenImages(HookBase):
    """After every step, append the step's image ids to ``images_rank{R}.jsonl`` with its epoch (tests
    check: each image once per epoch), and write the rank's node to ``node_rank{R}.txt``."""

    def __init__(self, out_dir: str):
        self.out_dir = Path(out_dir)

    def after_step(self) -> None:
        rank, _ = _rank()
        _write_node(self.out_dir, rank)
        state = self.trainer.state
        image_ids = [int(t["image_id"]) for t in self.trainer.batch[1]]
        with open(self.out_dir / f"images_rank{rank}.jsonl", "a") as f:
            f.write(json.dumps({"epoch": state.epoch, "iteration": state.iteration, "image_ids": image_ids}) + "\n")


class DumpParameters(HookBase):
    """After every step, save the rank's parameters to ``params_rank{R}_iter{I}.pt`` (tests compare ranks:
    DDP must keep them equal), and write the rank's node to ``node_rank{R}.txt``."""

    def __init__(self, out_dir: str):
        self.out_dir = Path(out_dir)

    def after_step(self) -> None:
        import torch

        rank, _ = _rank()
        _write_node(self.out_dir, rank)
        model = self.trainer.model
        module = model.module if hasattr(model, "module") else model
        path = self.out_dir / f"params_rank{rank}_iter{self.trainer.state.iteration}.pt"
        torch.save({k: v.detach().cpu() for k, v in module.named_parameters()}, path)


class FailOnce(HookBase):
    """Fault injection: kill the last rank's worker process after step ``iteration``, the first time only
    (``marker`` records it), once Ray Train has registered every checkpoint reported so far (registration
    is asynchronous; a crash right after a report could otherwise restart from an older checkpoint)."""

    def __init__(self, iteration: int, marker: str):
        self.iteration = iteration
        self.marker = Path(marker)

    def after_step(self) -> None:
        import ray.train

        rank, world_size = _rank()
        if self.trainer.state.iteration != self.iteration or rank != world_size - 1 or self.marker.exists():
            return
        ray.train.get_all_reported_checkpoints(timeout_s=120)
        self.marker.parent.mkdir(parents=True, exist_ok=True)
        self.marker.write_text(str(time.time()))
        os._exit(1)
