"""The model a training worker trains: built from the config, with ImageNet backbone weights, laid out for its device."""

from __future__ import annotations

from typing import Any


def build_worker_model(run: Any, cfg: Any, *, world_size: int, resuming: bool):
    """The model of one Ray Train worker (before ``prepare_model`` wraps it in DDP).

    Args:
        run: the TrainRunConfig; cfg: the model Config.
        resuming: a checkpoint will load every weight (the backbone weights are then not loaded).

    GPU workers of a multi-worker run get SyncBatchNorm. CPU workers get NHWC convolutions (1.13x the
    training step on the 2-core CPU, benchmarks/bench_train_step.py) and glibc malloc keeping freed
    feature maps for reuse instead of page-faulting them in again every step (the worker process is the
    application's: ``mrcnn.runtime.keep_freed_memory``; bench_train_step.py --keep-freed-memory).
    """
    import torch

    from mrcnn import runtime
    from mrcnn.modeling import build_model

    model = build_model(cfg)
    if run.backbone_weights and not resuming:
        load_backbone_weights(model, run.backbone_weights)
    if run.use_gpu and world_size > 1:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    elif not run.use_gpu:
        model = model.to(memory_format=torch.channels_last)
        model.channels_last = True
        runtime.keep_freed_memory()
    return model


def load_backbone_weights(model, path: str) -> None:
    """Load an ImageNet ResNet state dict (torchvision's layout; ``fc.*`` ignored) into ``model.backbone.body``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a state dict of this ResNet (names the missing or extra keys).
    """
    import io
    import pickle

    import torch

    from pipelines.shards import read_uri

    try:
        data = read_uri(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"backbone_weights {path}: no such file") from None
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        raise ValueError(f"backbone_weights {path}: not a torch state dict ({type(exc).__name__}: {exc})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"backbone_weights {path}: expected a state dict, got {type(state).__name__}")  # noqa: TRY004 (a bad file, not a bad argument)
    state = {k.removeprefix("module."): v for k, v in state.items() if not k.removeprefix("module.").startswith("fc.")}
    body = model.backbone.body
    missing, unexpected = body.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    unexpected = [k for k in unexpected if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(f"backbone_weights {path}: not a state dict of this ResNet ({len(missing)} missing keys, e.g. "
                         f"{missing[:3]}; {len(unexpected)} unexpected, e.g. {unexpected[:3]})")  # fmt: skip
