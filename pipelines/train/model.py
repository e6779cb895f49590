"""The model a training worker trains: built from the config, with ImageNet backbone weights or initialised
from a trained model (``init_from``), laid out for its device."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class InitSource:
    """A model to initialise from, read and checked by the driver (it travels to the workers through Ray).

    state: the source's tensors by torchvision's names; categories: its label space (``CategoryMap.to_list()``);
    description: one line naming the file (or URI) and what it holds.
    """

    state: dict[str, Any]
    categories: list[dict[str, Any]]
    description: str


def read_init_source(uri: str, *, tracking_uri: str | None = None) -> InitSource:
    """Resolve ``init_from`` (a file, s3://, ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``runs:/...``) to
    a local file and read it with :func:`mrcnn.pretrained.load_init_source`.

    Raises:
        ValueError: one line naming the URI (or file) and why: unknown model, alias, version or run, no such
            file, or (``CheckpointError``) not a Mask R-CNN state dict or checkpoint.
    """
    import tempfile

    from mrcnn.checkpoint import CheckpointError
    from mrcnn.pretrained import load_init_source
    from pipelines.tracking import resolve_model_uri

    with tempfile.TemporaryDirectory(prefix="mrcnn-init-from-") as downloads:  # a model URI's download, read at once
        try:
            path = resolve_model_uri(uri, tracking_uri=tracking_uri or None, dst_dir=downloads)
        except ValueError as exc:
            raise ValueError(f"init_from: {exc}") from None
        try:
            state, categories, description = load_init_source(path)
        except CheckpointError as exc:
            raise CheckpointError(f"init_from: {exc}") from None
    if str(path) != uri:
        description = f"{uri}: {description}"
    return InitSource(state=state, categories=categories.to_list(), description=description)


def init_model_from(model, source: InitSource, categories):
    """:func:`mrcnn.pretrained.init_from` the source into ``model`` for ``categories``; its InitReport.

    Raises:
        mrcnn.checkpoint.CheckpointError: another architecture, or nothing of the source fits (one line).
    """
    from mrcnn.data.categories import CategoryMap
    from mrcnn.pretrained import init_from

    return init_from(model, source.state, categories=categories, source_categories=CategoryMap.from_list(source.categories),
                     source_name=source.description)  # fmt: skip


def build_worker_model(run: Any, cfg: Any, *, world_size: int, resuming: bool, init_source: InitSource | None = None,
                       categories: Any = None):  # fmt: skip
    """The model of one Ray Train worker (before ``prepare_model`` wraps it in DDP), and the InitReport of
    ``init_source`` (None when there is none or when resuming).

    Args:
        run: the TrainRunConfig; cfg: the model Config.
        resuming: a checkpoint will load every weight (the backbone weights and ``init_source`` are then not loaded).
        init_source: the ``init_from`` model (:func:`read_init_source`); categories: the dataset's CategoryMap.

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
    report = init_model_from(model, init_source, categories) if init_source is not None and not resuming else None
    if run.use_gpu and world_size > 1:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    elif not run.use_gpu:
        model = model.to(memory_format=torch.channels_last)
        model.channels_last = True
        runtime.keep_freed_memory()
    return model, report


def load_backbone_weights(model, path: str) -> None:
    """Load an ImageNet ResNet state dict (torchvision's layout; ``fc.*`` ignored) into ``model.backbone.body``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a state dict of this ResNet (names the missing or extra keys).
    """
    import io
    import pickle

    import torch

    from pipelines.common.storage import read_uri

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
