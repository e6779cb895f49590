"""Fixtures of the tracking tests: a real ``mlflow server`` and the embedded SQLite default, shared by the
package's test modules (one server for all of them), and three small real checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest

from mrcnn.checkpoint import save_checkpoint
from mrcnn.config import get_preset
from pipelines.tracking import default_tracking_uri
from tests.pipelines.mlflow_server import mlflow_server


@pytest.fixture(scope="package", autouse=True)
def _mlflow_env():
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.delenv("MLFLOW_REGISTRY_URI", raising=False)
        mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        yield


@pytest.fixture(scope="package")
def server(tmp_path_factory):
    with mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as srv:
        yield srv


@pytest.fixture(scope="package", params=["server", "embedded"])
def tracking_uri(request, tmp_path_factory) -> str:
    if request.param == "server":
        return request.getfixturevalue("server").tracking_uri
    return default_tracking_uri(tmp_path_factory.mktemp("workdir"))


@pytest.fixture(scope="package")
def checkpoints(tmp_path_factory) -> dict[float, Path]:
    """Three real r18_fpn_small checkpoints (narrow heads to keep them small) for segm AP 30, 20 and 40."""
    import torch

    from mrcnn.data.synthetic import synthetic_categories
    from mrcnn.modeling import build_model

    torch.manual_seed(0)
    cfg = get_preset("r18_fpn_small").replace(
        **{"model.backbone.out_channels": 64, "model.box_head.representation_size": 128, "model.mask_head.conv_dim": 64}
    )
    model = build_model(cfg)
    root = tmp_path_factory.mktemp("ckpts")
    return {
        ap: save_checkpoint(root / f"ap{int(ap)}" / "best.ckpt", model=model, config=cfg,
                            categories=synthetic_categories(), metadata={"segm_AP": ap})  # fmt: skip
        for ap in (30.0, 20.0, 40.0)
    }
