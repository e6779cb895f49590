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

from pathlib import Path
from typing import Any

from pipelines.demo import HOLDOUT_SEED_OFFSET

PRESET = "r18_fpn_small_keypoints"  # mrcnn/presets.py: the recipe and where its numbers come from
IMAGE_SIZE = 96  # the houses' side in px; the preset's input size (model.input.min_size) matches it
MODEL_NAME = "mrcnn-demo-keypoints"
# A step budget, so the figure does not depend on the machine's load: the recipe reached OKS AP 52.9 on the
# holdout after 180 single-process steps of 8 images (benchmarks/RESULTS.md, "Keypoint demo").
DEMO_ITERS = 200
DATA_DIR, SHARDS_DIR, OVERLAYS_DIR = "houses", "houses-shards", "houses-overlays"  # under the working folder
SUMMARY_FILE = "summary-keypoints.json"

def _houses(out_dir: Path, **splits: int) -> Any:
    """:func:`mrcnn.data.synthetic_keypoints.make_synthetic_keypoints_coco` at :data:`IMAGE_SIZE` px."""
    from mrcnn.data.synthetic_keypoints import make_synthetic_keypoints_coco

    return make_synthetic_keypoints_coco(out_dir, size=IMAGE_SIZE, **splits)


def make_houses(root: Path, *, num_train: int, num_val: int, seed: int) -> dict[str, int]:
    """Write ``root/{train,val}`` (COCO person-keypoint json + PNGs): train from ``seed``, val from
    ``seed + HOLDOUT_SEED_OFFSET``. Returns ``{"train_seed", "holdout_seed"}``."""
    from pipelines.demo import make_holdout_split

    holdout_seed = seed + HOLDOUT_SEED_OFFSET
    make_holdout_split(root, num_train=num_train, num_val=num_val, seed=seed, holdout_seed=holdout_seed, make=_houses)
    return {"train_seed": seed, "holdout_seed": holdout_seed}


def train_run_config(root: Path, *, iters: int | None = DEMO_ITERS, minutes: float | None = None, workers: int,
                     seed: int, tracking_uri: str):  # fmt: skip
    """The demo's :class:`pipelines.train.TrainRunConfig`: :data:`PRESET` on ``root/houses-shards``,
    ``workers`` x 4 images per step for ``iters`` steps or ``minutes`` (whichever ends first; None: no such
    limit), one evaluation at the end, the best checkpoint registered as :data:`MODEL_NAME`."""
    from pipelines.demo import demo_run_config

    return demo_run_config(root, shards_dir=SHARDS_DIR, preset=PRESET, name="demo-keypoints", model_name=MODEL_NAME,
                           iters=iters, minutes=minutes, workers=workers, seed=seed, tracking_uri=tracking_uri)


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
    from pipelines.demo import DemoTask, run_stages

    root = Path(workdir).resolve()
    task = DemoTask(data=f"synthetic houses (5 keypoints), {IMAGE_SIZE} px", metric="keypoints",
                    make=_houses, data_dir=DATA_DIR,
                    shards_dir=SHARDS_DIR, overlays_dir=OVERLAYS_DIR, models_dir=f"models/{MODEL_NAME}",
                    summary_file=SUMMARY_FILE)  # fmt: skip
    return run_stages(task, root,
                      lambda tracking_uri: train_run_config(root, iters=iters, minutes=minutes, workers=workers, seed=seed,
                                                            tracking_uri=tracking_uri),
                      num_train=num_train, num_val=num_val, seed=seed, iters=iters, minutes=minutes,
                      ray_address=ray_address)  # fmt: skip
