"""find_coco_splits: the three layouts, the order asked, and the errors."""

from __future__ import annotations

import pytest

from pipelines.preprocess import find_coco_splits


def _touch(root, annotation, image_dir):
    (root / annotation).parent.mkdir(parents=True, exist_ok=True)
    (root / annotation).write_text("{}")
    (root / image_dir).mkdir(parents=True, exist_ok=True)


def test_layouts_and_order(tmp_path):
    _touch(tmp_path, "train/annotations.json", "train/images")
    _touch(tmp_path, "annotations/instances_val2017.json", "val2017")
    _touch(tmp_path, "annotations/instances_test.json", "test")
    assert find_coco_splits(tmp_path) == {
        "train": (f"{tmp_path}/train/annotations.json", f"{tmp_path}/train/images"),
        "val": (f"{tmp_path}/annotations/instances_val2017.json", f"{tmp_path}/val2017"),
    }
    found = find_coco_splits(f"file://{tmp_path}/", ["test", "train"])
    assert list(found) == ["test", "train"]
    assert found["test"] == (f"file://{tmp_path}/annotations/instances_test.json", f"file://{tmp_path}/test")
    assert find_coco_splits(tmp_path, []) == {}


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset folder not found"):
        find_coco_splits(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no train or val split found"):
        find_coco_splits(tmp_path)
    (tmp_path / "val").mkdir()
    (tmp_path / "val" / "annotations.json").write_text("{}")  # no images/ beside it
    with pytest.raises(FileNotFoundError, match="split 'val' not found; expected SRC/<split>/annotations.json"):
        find_coco_splits(tmp_path, ["val"])
