"""``mrcnn train``: distributed Mask R-CNN training with Ray Train, tracked in MLflow.

- ``config``: :class:`TrainRunConfig`, the run config (YAML keys, CLI flags);
- ``driver``: :func:`train` launches or resumes a run and returns a :class:`TrainResult`;
- ``worker``: ``train_loop_per_worker``, what every Ray Train worker runs;
- ``hooks``: the Ray (checkpoint + report) and MLflow hooks around :class:`mrcnn.engine.Trainer`;
- ``data``: the worker's shard batches and the val set; ``model``: the worker's model and backbone weights.
"""

from pipelines.train.config import CHECKPOINT_FILE, TrainRunConfig
from pipelines.train.driver import HOOKS_ENV, TrainResult, auto_cpus_per_worker, run_key, train
from pipelines.train.model import load_backbone_weights

__all__ = [
    "CHECKPOINT_FILE",
    "HOOKS_ENV",
    "TrainResult",
    "TrainRunConfig",
    "auto_cpus_per_worker",
    "load_backbone_weights",
    "run_key",
    "train",
]
