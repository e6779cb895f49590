"""Shared test fixtures: paths of the bundled data and small trained-or-random checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
DATA_DIR = TESTS_DIR / "data"
COCO_MINI_JSON = DATA_DIR / "coco_mini" / "annotations.json"
COCO_MINI_IMAGES = DATA_DIR / "coco_mini" / "images"
PHOTO = DATA_DIR / "photos" / "000000000072.jpg"


@pytest.fixture(scope="session")
def small_checkpoint(tmp_path_factory) -> Path:
    """A randomly initialised r18_fpn_small checkpoint over the 5 synthetic shape classes."""
    import torch

    from mrcnn.checkpoint import save_checkpoint
    from mrcnn.config import get_preset
    from mrcnn.data.synthetic import synthetic_categories
    from mrcnn.modeling import build_model

    torch.manual_seed(0)
    cfg = get_preset("r18_fpn_small")
    path = tmp_path_factory.mktemp("ckpt") / "small.ckpt"
    return save_checkpoint(path, model=build_model(cfg), config=cfg, categories=synthetic_categories())


@pytest.fixture(scope="session")
def small_keypoint_checkpoint(tmp_path_factory) -> Path:
    """A randomly initialised r18_fpn_small keypoint checkpoint (masks + keypoints) over the synthetic houses."""
    import torch

    from mrcnn.checkpoint import save_checkpoint
    from mrcnn.config import get_preset
    from mrcnn.data.synthetic_keypoints import synthetic_keypoint_categories
    from mrcnn.modeling import build_model

    torch.manual_seed(0)
    cfg = get_preset("r18_fpn_small").replace(**{"model.task": "keypoints", "model.num_classes": 1})
    path = tmp_path_factory.mktemp("ckpt") / "small_keypoints.ckpt"
    return save_checkpoint(path, model=build_model(cfg), config=cfg, categories=synthetic_keypoint_categories())


@pytest.fixture(scope="session")
def synth_dataset(tmp_path_factory) -> Path:
    """A tiny synthetic dataset (8 train, 4 val images of 128 px)."""
    from mrcnn.data.synthetic import make_synthetic_coco

    root = tmp_path_factory.mktemp("synth")
    make_synthetic_coco(root, num_train=8, num_val=4, size=128, seed=0)
    return root


def pytest_collection_modifyitems(config, items):
    """`needs_cuda` tests run only where a CUDA device exists (the lent GPU machine), never in CPU CI."""
    import torch

    if torch.cuda.is_available():
        return
    no_cuda = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "needs_cuda" in item.keywords:
            item.add_marker(no_cuda)
