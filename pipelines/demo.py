"""``mrcnn demo``: the whole pipeline end to end on the embedded default, under one working folder.

1. synthetic COCO-format dataset, by default at difficulty ``easy`` (:data:`mrcnn.data.synthetic.DIFFICULTIES`:
   1-3 large, mostly unoccluded shapes in clear colours, which 2 CPU cores learn in the default 8 minutes);  2. Ray Data preprocessing to Parquet shards;  3. Ray Train with
2 CPU workers (DDP over gloo) for a time budget, evaluating on the val shards;  4. MLflow tracking in
a local SQLite store, registering the best checkpoint as ``models:/mrcnn@best``;  5. segmenting a few
validation images with that model, writing overlays;  6. a summary (last line printed: JSON).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipelines.common.progress import StageLog

NUM_OVERLAYS = 6
DEMO_DIFFICULTY = "easy"  # the synthetic set the demo trains on (the ablations use "default" and "hard")


_log = StageLog("demo")


def run_demo(
    *,
    workdir: str = "mrcnn-demo",
    minutes: float = 8.0,
    seed: int = 0,
    num_train: int = 400,
    num_val: int = 100,
    workers: int = 2,
    preset: str = "r18_fpn_small",
    difficulty: str = DEMO_DIFFICULTY,
    ray_address: str | None = None,
) -> dict[str, Any]:
    """Run the demo; returns the summary (also written to ``WORKDIR/summary.json``).

    ``difficulty`` is the synthetic set's (a key of :data:`mrcnn.data.synthetic.DIFFICULTIES`); the
    summary records it as ``data``.
    """

    from mrcnn.data.images import load_image
    from mrcnn.data.synthetic import make_synthetic_coco
    from mrcnn.predictor import Predictor
    from mrcnn.visualize import save_overlay
    from pipelines.common import ray_session, write_atomic
    from pipelines.preprocess import preprocess_dataset
    from pipelines.tracking import (
        default_tracking_uri,
        describe_model,
        resolve_model_uri,
    )
    from pipelines.train import TrainRunConfig, train

    root = Path(workdir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    tracking_uri = default_tracking_uri(root)
    with ray_session(ray_address):
        _log(f"1/6 synthetic dataset, difficulty {difficulty} ({num_train} train, {num_val} val) -> {root / 'data'}")
        make_synthetic_coco(root / "data", num_train=num_train, num_val=num_val, seed=seed, difficulty=difficulty)

        _log(f"2/6 Ray Data preprocessing -> {root / 'shards'}")
        preprocess_dataset(root / "data", root / "shards")

        _log(f"3/6 Ray Train: {preset}, {workers} CPU workers, {minutes:g} min")
        run = TrainRunConfig(
            data=str(root / "shards"),
            preset=preset,
            workers=workers,
            batch_size=4,
            minutes=minutes,
            max_iters=100_000,
            checkpoint_every=100,
            eval_every=100_000,  # evaluate once, at the end (each evaluation costs training time)
            storage_path=str(root / "ray_results"),
            name="demo",
            tracking_uri=tracking_uri,
            experiment="mrcnn-demo",
            model_name="mrcnn-demo",
            seed=seed,
        )
        result = train(run)
        segm = {k[len("segm_"):]: v for k, v in result.metrics.items() if k.startswith("segm_")}
        bbox = {k[len("bbox_"):]: v for k, v in result.metrics.items() if k.startswith("bbox_")}
        _log(f"4/6 evaluated: segm AP {segm.get('AP', float('nan')):.1f}, bbox AP {bbox.get('AP', float('nan')):.1f}")

        model_uri = f"models:/{run.model_name}@best"
        _log(f"5/6 segmenting {NUM_OVERLAYS} validation images with {model_uri} -> {root / 'overlays'}")
        checkpoint = resolve_model_uri(model_uri, tracking_uri=tracking_uri, dst_dir=root / "models")
        predictor = Predictor.from_checkpoint(checkpoint)
        overlay_dir = root / "overlays"
        overlay_dir.mkdir(exist_ok=True)
        paths = sorted((root / "data" / "val" / "images").glob("*.png"))[:NUM_OVERLAYS]
        for path in paths:
            image = load_image(path)
            detections = predictor.predict([image])[0]
            save_overlay(overlay_dir / path.name, image, detections)

    summary = {
        "data": f"synthetic shapes, difficulty {difficulty}, {num_train} train / {num_val} val",
        "segm_AP": round(segm.get("AP", -1.0), 2),
        "bbox_AP": round(bbox.get("AP", -1.0), 2),
        "segm_AP50": round(segm.get("AP50", -1.0), 2),
        "segm_AP75": round(segm.get("AP75", -1.0), 2),
        "iterations": result.iteration,
        "images_seen": int(result.metrics.get("images_seen", 0)),
        "model_uri": model_uri,
        "model_version": describe_model(model_uri, tracking_uri=tracking_uri).get("version"),
        "checkpoint": str(checkpoint),
        "mlflow_run_id": result.mlflow_run_id,
        "tracking_uri": tracking_uri,
        "overlays": str(overlay_dir),
        "workdir": str(root),
    }
    write_atomic(root / "summary.json", json.dumps(summary, indent=1))
    _log(
        f"6/6 done. segm AP {summary['segm_AP']}, bbox AP {summary['bbox_AP']}. MLflow store: {tracking_uri}\n"
        f"       browse it with: mlflow ui --backend-store-uri {tracking_uri}"
    )
    return summary
