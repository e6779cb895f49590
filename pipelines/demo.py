"""``mrcnn demo``: the whole pipeline end to end on the embedded default, under one working folder.

1. synthetic COCO-format dataset (val: a holdout from an unseen seed), by default at difficulty ``easy`` (:data:`mrcnn.data.synthetic.DIFFICULTIES`:
   1-3 large, mostly unoccluded shapes in clear colours, which 2 CPU cores learn in the default 250 steps, about 9 minutes);  2. Ray Data preprocessing to Parquet shards;  3. Ray Train with
2 CPU workers (DDP over gloo) for a step (or time) budget, evaluating on the val shards;  4. MLflow tracking in
a local SQLite store, registering the best checkpoint as ``models:/mrcnn@best``;  5. segmenting a few
validation images with that model, writing overlays;  6. a summary (last line printed: JSON).
"""

from __future__ import annotations

import functools
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.common.progress import StageLog

NUM_OVERLAYS = 6
DEMO_DIFFICULTY = "easy"  # the synthetic set the demo trains on (the ablations use "default" and "hard")
HOLDOUT_SEED_OFFSET = 1000  # the val split's seed is seed + this: a holdout from a seed training never saw
# The demo's budget is a number of steps (batch 2 workers x 4), so its accuracy does not depend on the
# machine's speed or load. On the easy set, single process, batch 8, lr x0.1 at 80%: segm AP 43.5 after 200
# steps, 60.6 after 250, 64.7 after 300 on a 100-image holdout from an unseen seed (benchmarks/RESULTS.md,
# "mrcnn demo on the easy set"). 250 steps take about 9 minutes on 2 idle CPU cores.
DEMO_ITERS = 250
# The preset warms up over 100 steps, 40% of this budget; 30 steps is the keypoint recipe's and the one the
# figures above were measured with.
DEMO_OVERRIDES = {"solver.warmup_iters": 30}


_log = StageLog("demo")


def budget_text(iters: int | None, minutes: float | None) -> str:
    """``"250 steps"``, ``"8 min"`` or ``"250 steps or 8 min"`` for the log line."""
    return " or ".join(([f"{iters} steps"] if iters else []) + ([f"{minutes:g} min"] if minutes else []))


def prefixed(metrics: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The ``PREFIX_NAME`` entries of a training result's metrics as ``{NAME: value}``."""
    return {k[len(prefix) + 1:]: v for k, v in metrics.items() if k.startswith(prefix + "_")}


def write_overlays(predictor: Any, image_dir: Path, out_dir: Path, count: int = NUM_OVERLAYS) -> None:
    """Overlays of the predictor's detections (with its skeletons, if any) on the first ``count`` PNGs."""
    from mrcnn.data.images import load_image
    from mrcnn.visualize import save_overlay

    out_dir.mkdir(exist_ok=True)
    for path in sorted(image_dir.glob("*.png"))[:count]:
        image = load_image(path)
        save_overlay(out_dir / path.name, image, predictor.predict([image])[0],
                     skeletons=predictor.categories.skeletons)  # fmt: skip


def make_holdout_split(root: Path, *, num_train: int, num_val: int, seed: int, holdout_seed: int,
                       make: Callable[..., Any]) -> None:  # fmt: skip
    """Write ``root/{train,val}`` with ``make(out_dir, num_train=, num_val=, seed=)`` (a synthetic-COCO writer),
    the train split from ``seed`` and the val split from ``holdout_seed``: a holdout that shares no random
    stream with training. ``root`` is replaced."""
    staging = root.parent / f"{root.name}.holdout"
    shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(staging, ignore_errors=True)
    make(root, num_train=num_train, num_val=0, seed=seed)
    make(staging, num_train=0, num_val=num_val, seed=holdout_seed)
    shutil.rmtree(root / "val")
    shutil.move(str(staging / "val"), str(root / "val"))
    shutil.rmtree(staging)


def demo_run_config(root: Path, *, shards_dir: str, preset: str, name: str, model_name: str, iters: int | None,
                    minutes: float | None, workers: int, seed: int, tracking_uri: str,
                    overrides: dict[str, Any] | None = None):  # fmt: skip
    """A demo's :class:`pipelines.train.TrainRunConfig`: ``preset`` on ``root/shards_dir``, ``workers`` x 4
    images per step for ``iters`` steps or ``minutes`` (whichever ends first; None: no such limit), one
    evaluation at the end, checkpoints and Ray's results under ``root/ray_results/name``, the best checkpoint
    registered as ``model_name`` in the experiment ``mrcnn-demo``."""
    from pipelines.train import TrainRunConfig

    return TrainRunConfig(
        data=str(root / shards_dir),
        preset=preset,
        workers=workers,
        batch_size=4,
        minutes=minutes or 0.0,
        max_iters=iters or 100_000,
        overrides=dict(overrides or {}),
        checkpoint_every=100,
        eval_every=100_000,  # evaluate once, at the end (each evaluation costs training time)
        storage_path=str(root / "ray_results"),
        name=name,
        tracking_uri=tracking_uri,
        experiment="mrcnn-demo",
        model_name=model_name,
        seed=seed,
    ).validate()


@dataclass(frozen=True)
class DemoTask:
    """What one demo trains and reports; :func:`run_stages` runs the same six stages for every task.

    Attributes:
        data: the data in words, for the log and the summary (e.g. ``"synthetic shapes, difficulty easy"``).
        make: a synthetic-COCO writer ``make(out_dir, num_train=, num_val=, seed=)`` (:func:`make_holdout_split`).
        metric: the summary's main AP: the metric prefix of the training result (``segm`` or ``keypoints``).
        data_dir, shards_dir, overlays_dir, models_dir, summary_file: under the working folder.
    """

    data: str
    make: Callable[..., Any]
    metric: str
    data_dir: str = "data"
    shards_dir: str = "shards"
    overlays_dir: str = "overlays"
    models_dir: str = "models"
    summary_file: str = "summary.json"


def run_stages(task: DemoTask, root: Path, run_config: Callable[[str], Any], *, num_train: int, num_val: int, seed: int,
               iters: int | None, minutes: float | None, ray_address: str | None) -> dict[str, Any]:  # fmt: skip
    """The six stages of a demo under ``root`` (a resolved folder): data with an unseen-seed holdout,
    preprocessing, training for ``iters`` steps or ``minutes`` (``run_config(tracking_uri)`` gives its
    :class:`pipelines.train.TrainRunConfig`), overlays from the registered ``best`` model, and the summary,
    written to ``root/task.summary_file``.

    Raises:
        ValueError: neither a step budget nor a time budget, before anything is written.
    """
    if not iters and not minutes:
        raise ValueError("demo: give a step budget (iters) or a time budget (minutes)")
    from mrcnn.predictor import Predictor
    from pipelines.common import ray_session, write_atomic
    from pipelines.preprocess import preprocess_dataset
    from pipelines.tracking import (
        default_tracking_uri,
        describe_model,
        resolve_model_uri,
    )
    from pipelines.train import train

    root.mkdir(parents=True, exist_ok=True)
    tracking_uri = default_tracking_uri(root)
    holdout_seed = seed + HOLDOUT_SEED_OFFSET
    data_dir, overlay_dir = root / task.data_dir, root / task.overlays_dir
    label = "keypoint" if task.metric == "keypoints" else task.metric
    with ray_session(ray_address):
        _log(f"1/6 {task.data} ({num_train} train from seed {seed}, {num_val} holdout from seed {holdout_seed}) "
             f"-> {data_dir}")  # fmt: skip
        make_holdout_split(data_dir, num_train=num_train, num_val=num_val, seed=seed, holdout_seed=holdout_seed,
                           make=task.make)  # fmt: skip

        _log(f"2/6 Ray Data preprocessing -> {root / task.shards_dir}")
        preprocess_dataset(data_dir, root / task.shards_dir)

        run = run_config(tracking_uri)
        _log(f"3/6 Ray Train: {run.preset}, {run.workers} CPU workers, {budget_text(iters, minutes)}")
        result = train(run)
        main, bbox = prefixed(result.metrics, task.metric), prefixed(result.metrics, "bbox")
        _log(f"4/6 evaluated on the holdout: {label} AP {main.get('AP', float('nan')):.1f}, "
             f"bbox AP {bbox.get('AP', float('nan')):.1f}")  # fmt: skip

        model_uri = f"models:/{run.model_name}@best"
        _log(f"5/6 overlays of {min(NUM_OVERLAYS, num_val)} holdout images with {model_uri} -> {overlay_dir}")
        checkpoint = resolve_model_uri(model_uri, tracking_uri=tracking_uri, dst_dir=root / task.models_dir)
        write_overlays(Predictor.from_checkpoint(checkpoint), data_dir / "val" / "images", overlay_dir)

    summary = {
        "data": f"{task.data}, {num_train} train (seed {seed}) / {num_val} holdout (seed {holdout_seed})",
        "holdout_seed": holdout_seed,
        **{f"{task.metric}_{stat}": round(main.get(stat, -1.0), 2) for stat in ("AP", "AP50", "AP75")},
        "bbox_AP": round(bbox.get("AP", -1.0), 2),
        "preset": run.preset,
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
    write_atomic(root / task.summary_file, json.dumps(summary, indent=1))
    _log(
        f"6/6 done. {label} AP {summary[task.metric + '_AP']}, bbox AP {summary['bbox_AP']} (holdout). MLflow store: "
        f"{tracking_uri}\n       browse it with: mlflow ui --backend-store-uri {tracking_uri}"
    )
    return summary


def run_demo(
    *,
    workdir: str = "mrcnn-demo",
    iters: int | None = DEMO_ITERS,
    minutes: float | None = None,
    seed: int = 0,
    num_train: int = 400,
    num_val: int = 100,
    workers: int = 2,
    preset: str = "r18_fpn_small",
    difficulty: str = DEMO_DIFFICULTY,
    ray_address: str | None = None,
) -> dict[str, Any]:
    """Run the demo; returns the summary (also written to ``WORKDIR/summary.json``).

    ``iters`` training steps, or ``minutes`` of training, whichever ends first (None: no such limit; at
    least one must be given). ``difficulty`` is the synthetic set's (a key of
    :data:`mrcnn.data.synthetic.DIFFICULTIES`); the summary records it as ``data``. The val split, on which
    the summary's AP (``segm_AP``, ``_AP50``, ``_AP75``, ``bbox_AP``) is measured, is drawn from seed
    ``seed + HOLDOUT_SEED_OFFSET``.
    """
    from mrcnn.data.synthetic import make_synthetic_coco

    root = Path(workdir).resolve()
    task = DemoTask(data=f"synthetic shapes, difficulty {difficulty}", metric="segm",
                    make=functools.partial(make_synthetic_coco, difficulty=difficulty))  # fmt: skip

    def run_config(tracking_uri: str):
        return demo_run_config(root, shards_dir=task.shards_dir, preset=preset, name="demo", model_name="mrcnn-demo",
                               iters=iters, minutes=minutes, workers=workers, seed=seed, tracking_uri=tracking_uri,
                               overrides=DEMO_OVERRIDES)  # fmt: skip

    return run_stages(task, root, run_config, num_train=num_train, num_val=num_val, seed=seed, iters=iters,
                      minutes=minutes, ray_address=ray_address)  # fmt: skip
