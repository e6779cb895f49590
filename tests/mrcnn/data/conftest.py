"""Shared paths and fixtures for the data-layer tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

TEST_DATA_DIR = Path(__file__).resolve().parents[2] / "data"
COCO_MINI_DIR = TEST_DATA_DIR / "coco_mini"
COCO_MINI_JSON = COCO_MINI_DIR / "annotations.json"
PHOTO_PATH = TEST_DATA_DIR / "photos" / "000000000072.jpg"  # 427x640 (WxH), CC BY 2.0

# The larger shared copy (79 images, 624 annotations); used only where it exists.
SHARED_COCO_VAL2017_MINI_DIR = Path(
    os.environ.get("MRCNN_COCO_VAL2017_MINI", Path(__file__).resolve().parents[3].parent / "shared" / "data" / "coco_val2017_mini")
)
COCO_DIRS_PRESENT = [d for d in (COCO_MINI_DIR, SHARED_COCO_VAL2017_MINI_DIR) if (d / "annotations.json").is_file()]

CROWD_IMAGE_IDS = (255165, 553664)  # each holds one iscrowd=1 uncompressed-RLE region


def pytest_collection_modifyitems(config, items):
    # pycocotools 2.0.x calls np.array(copy=False) on its own buffer type; numpy 2 warns on every decode.
    here = Path(__file__).resolve().parent
    for item in items:
        if here in Path(str(item.fspath)).resolve().parents:
            item.add_marker(
                pytest.mark.filterwarnings(
                    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
                )
            )


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> dict:
    """A small synthetic dataset shared by several tests (10 train, 50 val, 96 px)."""
    from mrcnn.data.synthetic import make_synthetic_coco

    return make_synthetic_coco(tmp_path_factory.mktemp("synthetic"), num_train=10, num_val=50, size=96, seed=0)
