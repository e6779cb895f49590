"""``mrcnn demo --task keypoints``: the keypoint task end to end on the embedded default, under one folder.

1. the synthetic houses (:mod:`mrcnn.data.synthetic_keypoints`: 1-3 houses per image whose five corners are
   keypoints) at :data:`IMAGE_SIZE` px: a train split from ``seed`` and a val split from an unseen seed
   (``seed + HOLDOUT_SEED_OFFSET``), so the reported AP is on a holdout that shares no random stream with
   training;  2. Ray Data preprocessing to Parquet shards;  3. Ray Train with 2 CPU workers for a time
   budget, training the :data:`PRESET` preset (boxes + keypoints, no mask head) and evaluating OKS keypoint
   AP on the holdout at the end;  4. MLflow tracking in a local SQLite store, registering the best
   checkpoint as ``models:/mrcnn-demo-keypoints@best``;  5. overlays of a few holdout images with each
   house's keypoints joined by the skeleton;  6. a summary (last line printed: JSON).

The instance demo is :mod:`pipelines.demo`. Both can share one working folder (the default ``mrcnn-demo``):
this one writes ``houses/``, ``houses-shards/``, ``houses-overlays/`` and ``summary-keypoints.json`` beside
the instance demo's ``data/``, ``shards/``, ``overlays/`` and ``summary.json``, and both track into the same
MLflow store (a shard folder holds one category map, so the two datasets cannot share one).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from pipelines.common.progress import StageLog

PRESET = "r18_fpn_small_keypoints"  # mrcnn/presets.py: the recipe and where its numbers come from
IMAGE_SIZE = 96  # the houses' side in px; the preset's input size (model.input.min_size) matches it
HOLDOUT_SEED_OFFSET = 1000  # the val split's seed is seed + this: a holdout from a seed training never saw
MODEL_NAME = "mrcnn-demo-keypoints"
# A step budget, so the figure does not depend on the machine's load: the recipe reached OKS AP 52.9 on the
# holdout after 180 single-process steps of 8 images (benchmarks/RESULTS.md, "Keypoint demo").
DEMO_ITERS = 200
DATA_DIR, SHARDS_DIR, OVERLAYS_DIR = "houses", "houses-shards", "houses-overlays"  # under the working folder
SUMMARY_FILE = "summary-keypoints.json"
NUM_OVERLAYS = 6

_log = StageLog("demo")


def make_houses(root: Path, *, num_train: int, num_val: int, seed: int) -> dict[str, int]:
    """Write ``root/{train,val}`` (COCO person-keypoint json + PNGs): train from ``seed``, val from
    ``seed + HOLDOUT_SEED_OFFSET``. Returns ``{"train_seed", "holdout_seed"}``."""
    from mrcnn.data.synthetic_keypoints import make_synthetic_keypoints_coco
    from pipelines.demo import make_holdout_split

    holdout_seed = seed + HOLDOUT_SEED_OFFSET
    make_holdout_split(root, num_train=num_train, num_val=num_val, seed=seed, holdout_seed=holdout_seed,
                       make=functools.partial(make_synthetic_keypoints_coco, size=IMAGE_SIZE))  # fmt: skip
    return {"train_seed": seed, "holdout_seed": holdout_seed}


def train_run_config(root: Path, *, iters: int | None = DEMO_ITERS, minutes: float | None = None, workers: int,
                     seed: int, tracking_uri: str):  # fmt: skip
    """The demo's :class:`pipelines.train.TrainRunConfig`: :data:`PRESET` on ``root/houses-shards``,
    ``workers`` x 4 images per step for ``iters`` steps or ``minutes`` (whichever ends first; None: no such
    limit), one evaluation at the end, the best checkpoint registered as :data:`MODEL_NAME`."""
    from pipelines.train import TrainRunConfig

    return TrainRunConfig(
        data=str(root / SHARDS_DIR),
        preset=PRESET,
        workers=workers,
        batch_size=4,
        minutes=minutes or 0.0,
        max_iters=iters or 100_000,
        checkpoint_every=100,
        eval_every=100_000,  # evaluate once, at the end (each evaluation costs training time)
        storage_path=str(root / "ray_results"),
        name="demo-keypoints",
        tracking_uri=tracking_uri,
        experiment="mrcnn-demo",
        model_name=MODEL_NAME,
        seed=seed,
    ).validate()


def run_keypoint_demo(
    *,
    workdir: str = "mrcnn-demo",
    iters: int | None = DEMO_ITERS,
    minutes: float | None = None,
    seed: int = 0,
    num_train: int = 400,
    num_val: int = 100,
    workers: int = 2,
    ray_address: str | None = None,
) -> dict[str, Any]:
    """Run the keypoint demo; returns the summary (also written to ``WORKDIR/summary-keypoints.json``).

    The summary's ``keypoints_AP`` (``_AP50``, ``_AP75``) is OKS keypoint AP in percent and ``bbox_AP`` box
    AP, both on the ``num_val`` holdout images drawn from seed ``holdout_seed``.
    """
    from mrcnn.predictor import Predictor
    from pipelines.common import ray_session, write_atomic
    from pipelines.demo import budget_text, prefixed, write_overlays
    from pipelines.preprocess import preprocess_dataset
    from pipelines.tracking import (
        default_tracking_uri,
        describe_model,
        resolve_model_uri,
    )
    from pipelines.train import train

    root = Path(workdir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    tracking_uri = default_tracking_uri(root)
    with ray_session(ray_address):
        _log(f"1/6 synthetic houses, {IMAGE_SIZE} px ({num_train} train from seed {seed}, {num_val} holdout from seed "
             f"{seed + HOLDOUT_SEED_OFFSET}) -> {root / DATA_DIR}")  # fmt: skip
        seeds = make_houses(root / DATA_DIR, num_train=num_train, num_val=num_val, seed=seed)

        _log(f"2/6 Ray Data preprocessing -> {root / SHARDS_DIR}")
        preprocess_dataset(root / DATA_DIR, root / SHARDS_DIR)

        _log(f"3/6 Ray Train: {PRESET}, {workers} CPU workers, {budget_text(iters, minutes)}")
        run = train_run_config(root, iters=iters, minutes=minutes, workers=workers, seed=seed,
                               tracking_uri=tracking_uri)  # fmt: skip
        result = train(run)
        keypoints, bbox = prefixed(result.metrics, "keypoints"), prefixed(result.metrics, "bbox")
        _log(f"4/6 evaluated on the holdout: keypoint AP {keypoints.get('AP', float('nan')):.1f}, "
             f"bbox AP {bbox.get('AP', float('nan')):.1f}")  # fmt: skip

        model_uri = f"models:/{MODEL_NAME}@best"
        overlay_dir = root / OVERLAYS_DIR
        _log(f"5/6 keypoints of {NUM_OVERLAYS} holdout images with {model_uri} -> {overlay_dir}")
        checkpoint = resolve_model_uri(model_uri, tracking_uri=tracking_uri, dst_dir=root / "models" / MODEL_NAME)
        write_overlays(Predictor.from_checkpoint(checkpoint), root / DATA_DIR / "val" / "images", overlay_dir,
                       NUM_OVERLAYS)  # fmt: skip

    summary = {
        "data": f"synthetic houses (5 keypoints), {IMAGE_SIZE} px, {num_train} train (seed {seeds['train_seed']}) / "
                f"{num_val} holdout (seed {seeds['holdout_seed']})",
        "keypoints_AP": round(keypoints.get("AP", -1.0), 2),
        "keypoints_AP50": round(keypoints.get("AP50", -1.0), 2),
        "keypoints_AP75": round(keypoints.get("AP75", -1.0), 2),
        "bbox_AP": round(bbox.get("AP", -1.0), 2),
        "holdout_seed": seeds["holdout_seed"],
        "preset": PRESET,
        "iterations": result.iteration,
        "images_seen": int(result.metrics.get("images_seen", 0)),
        "model_uri": model_uri,
        "model_version": describe_model(model_uri, tracking_uri=tracking_uri).get("version"),
        "checkpoint": str(checkpoint),
        "mlflow_run_id": result.mlflow_run_id,
        "tracking_uri": tracking_uri,
        "overlays": str(overlay_dir),
        "workdir": str(root),
    }  # fmt: skip
    write_atomic(root / SUMMARY_FILE, json.dumps(summary, indent=1))
    _log(
        f"6/6 done. keypoint AP {summary['keypoints_AP']}, bbox AP {summary['bbox_AP']} (holdout). MLflow store: "
        f"{tracking_uri}\n       browse it with: mlflow ui --backend-store-uri {tracking_uri}"
    )
    return summary
