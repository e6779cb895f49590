"""pipelines.preprocess.tasks without Ray: the UDF on a hand-made batch, the shard plan, the shard options."""

from __future__ import annotations

import io

import numpy as np
import pyarrow.fs as pafs
import pytest
from PIL import Image

from mrcnn.data.coco import load_coco
from pipelines.preprocess.tasks import (
    check_shard_options,
    choose_num_shards,
    read_and_check_images,
    shard_bounds,
    shard_input_table,
)
from pipelines.shards import shard_schema

SQUARE = [[2.0, 2.0, 10.0, 2.0, 10.0, 10.0, 2.0, 10.0]]


def _png(height: int, width: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((height, width, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_read_and_check_images_keeps_good_rows_and_names_each_reject(tmp_path):
    names = ["good.png", "missing.png", "text.png", "small.png"]
    (tmp_path / "good.png").write_bytes(_png(16, 16))
    (tmp_path / "text.png").write_text("not an image")
    (tmp_path / "small.png").write_bytes(_png(8, 8))
    data = {
        "images": [{"id": i + 1, "file_name": name, "height": 16, "width": 16} for i, name in enumerate(names)],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": SQUARE},
                        {"id": 2, "image_id": 2, "category_id": 1, "segmentation": SQUARE}],
        "categories": [{"id": 1, "name": "thing"}],
    }  # fmt: skip
    records = load_coco(data, check_files=False).records
    batch = shard_input_table(records, shard=3)
    assert batch.column("_shard").to_pylist() == [3, 3, 3, 3]
    assert batch.schema.names[:-1] == [name for name in shard_schema().names if name != "image"]

    out = read_and_check_images(
        batch, fs=pafs.LocalFileSystem(), image_root=str(tmp_path), image_root_display="IMAGES/", source="a.json"
    )
    assert out.column("image").to_pylist()[0] == (tmp_path / "good.png").read_bytes()
    assert out.column("image").to_pylist()[1:] == [None, None, None]
    assert out.column("_reject_reason").to_pylist() == [
        None, "missing_image_file", "unreadable_image", "image_size_mismatch"
    ]  # fmt: skip
    messages = out.column("_reject_message").to_pylist()
    assert messages[0] is None
    assert messages[1] == (
        "image 2 (missing.png) in a.json: file not found: IMAGES/missing.png; its 1 annotation(s) are dropped with it"
    )
    assert messages[2].startswith("image 3 (text.png) in a.json: cannot decode (not_an_image): ")
    assert messages[3] == (
        "image 4 (small.png) in a.json: decoded size 8x8 (after EXIF orientation) differs from the json's 16x16; "
        "its 0 annotation(s) are dropped with it"
    )


def test_shard_bounds_are_contiguous_and_balanced():
    assert shard_bounds(7, 3) == [(0, 3), (3, 5), (5, 7)]
    assert shard_bounds(2, 4) == [(0, 1), (1, 2), (2, 2), (2, 2)]
    assert shard_bounds(0, 1) == [(0, 0)]


def test_shard_options():
    assert choose_num_shards(10, 4, None, 64) == 4
    assert choose_num_shards(10, None, 3, 64) == 4
    assert choose_num_shards(0, None, 3, 64) == 1
    for kwargs, match in [
        ({"num_shards": 0}, "num_shards: expected a positive int, got 0"),
        ({"rows_per_shard": True}, "rows_per_shard: expected a positive int, got True"),
        ({"batch_size": 1.5}, "batch_size: expected a positive int, got 1.5"),
        ({"num_shards": 2, "rows_per_shard": 3}, "not both"),
    ]:
        options = {"num_shards": None, "rows_per_shard": None, "batch_size": 64} | kwargs
        with pytest.raises(ValueError, match=match):
            check_shard_options(**options)
