"""``mrcnn demo``: the whole job end to end on the embedded default (synthetic data, CPU, one folder).

Steps: synthetic dataset -> train the small preset for a time budget -> COCO evaluation on the
held-out split -> checkpoint -> segment a few validation images with overlays -> JSON summary.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

NUM_OVERLAYS = 6


def _log(message: str) -> None:
    print(f"[demo] {message}", file=sys.stderr, flush=True)


def run_demo(
    *,
    workdir: str = "mrcnn-demo",
    minutes: float = 8.0,
    seed: int = 0,
    num_train: int = 400,
    num_val: int = 100,
    preset: str = "r18_fpn_small",
) -> dict[str, Any]:
    """Run the demo; returns the summary (also written to ``WORKDIR/summary.json``)."""
    import torch
    from PIL import Image

    from mrcnn.checkpoint import save_checkpoint
    from mrcnn.config import get_preset
    from mrcnn.data.dataset import CocoInstanceDataset, collate_detection
    from mrcnn.data.synthetic import make_synthetic_coco
    from mrcnn.data.transforms import RandomHorizontalFlip
    from mrcnn.engine import evaluate_model, fit
    from mrcnn.modeling import build_model
    from mrcnn.predictor import Predictor
    from mrcnn.solver import build_optimizer
    from mrcnn.visualize import draw_detections

    root = Path(workdir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)

    _log(f"1/5 synthetic dataset ({num_train} train, {num_val} val) -> {root / 'data'}")
    info = make_synthetic_coco(root / "data", num_train=num_train, num_val=num_val, seed=seed)
    train_set = CocoInstanceDataset.from_files(info["train"]["annotations"], info["train"]["image_dir"], transforms=RandomHorizontalFlip(0.5))
    val_set = CocoInstanceDataset.from_files(info["val"]["annotations"], info["val"]["image_dir"])

    cfg = get_preset(preset)
    model = build_model(cfg).to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg.solver)
    loader = torch.utils.data.DataLoader(
        train_set, batch_size=cfg.solver.batch_size, shuffle=True, collate_fn=collate_detection, drop_last=True
    )

    class Progress:
        def after_step(self, state, losses):
            if state.iteration % 25 == 0:
                rate = state.images_seen / max(state.elapsed_s, 1e-6)
                _log(f"  step {state.iteration}  loss {losses['loss']:.3f}  lr {state.lr:.2e}  {rate:.1f} img/s")

    _log(f"2/5 training {preset} for {minutes:g} min")
    state = fit(model, loader, optimizer, cfg.solver, max_seconds=minutes * 60, hooks=[Progress()])

    checkpoint = save_checkpoint(
        root / "checkpoints" / "final.ckpt",
        model=model,
        config=cfg,
        categories=train_set.categories,
        metadata={"iterations": state.iteration, "images_seen": state.images_seen, "train_seconds": state.elapsed_s},
    )

    _log("3/5 COCO evaluation on the validation split")
    t0 = time.perf_counter()
    val_loader = torch.utils.data.DataLoader(val_set, batch_size=8, collate_fn=collate_detection)
    metrics = evaluate_model(model, val_loader, info["val"]["annotations"], train_set.categories)
    _log(f"  segm AP {metrics['segm']['AP']:.1f}  bbox AP {metrics['bbox']['AP']:.1f}  ({time.perf_counter() - t0:.0f} s)")
    (root / "metrics.json").write_text(json.dumps(metrics, indent=1))

    _log(f"4/5 segmenting {NUM_OVERLAYS} validation images -> {root / 'overlays'}")
    predictor = Predictor.from_checkpoint(checkpoint)
    overlay_dir = root / "overlays"
    overlay_dir.mkdir(exist_ok=True)
    paths = [val_set.result.image_path(r) for r in val_set.records[:NUM_OVERLAYS]]
    for path, detections in zip(paths, predictor.predict_files(paths)):
        image = Image.open(path).convert("RGB")
        import numpy as np

        Image.fromarray(draw_detections(np.asarray(image), detections)).save(overlay_dir / f"{Path(path).stem}.png")

    summary = {
        "segm_AP": round(metrics["segm"]["AP"], 2),
        "bbox_AP": round(metrics["bbox"]["AP"], 2),
        "segm_AP50": round(metrics["segm"]["AP50"], 2),
        "segm_AP75": round(metrics["segm"]["AP75"], 2),
        "iterations": state.iteration,
        "train_images_per_s": round(state.images_seen / max(state.elapsed_s, 1e-6), 2),
        "model_uri": str(checkpoint),
        "tracking_uri": None,
        "overlays": str(overlay_dir),
        "workdir": str(root),
    }
    (root / "summary.json").write_text(json.dumps(summary, indent=1))
    _log(f"5/5 done: segm AP {summary['segm_AP']}, checkpoint {checkpoint}")
    return summary
