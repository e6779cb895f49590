"""pipelines.preprocess.writer without Ray: the staging folder, publishing, the categories check."""

from __future__ import annotations

import json

import pyarrow.fs as pafs
import pytest

from mrcnn.data.categories import CategoryMap
from pipelines.preprocess.writer import categories_text, publish, staged_split, write_empty_shards

FS = pafs.LocalFileSystem()


def _files(root) -> dict:
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def test_publish_replaces_old_shards_and_keeps_other_files(tmp_path):
    out = tmp_path / "out"
    (out / "val").mkdir(parents=True)
    (out / "val" / "part-00000-of-00003.parquet").write_text("old")
    (out / "val" / "notes.txt").write_text("mine")
    with staged_split(FS, str(out), "val") as staging:
        assert staging.startswith(f"{out}/_staging-val-")
        for name, text in [("part-00000-of-00001.parquet", "new"), ("_summary.json", "{}"), ("rejects.jsonl", "")]:
            (tmp_path / staging / name).write_text(text)
        publish(FS, staging, str(out / "val"))
    assert _files(out) == {
        "val/_summary.json": "{}", "val/notes.txt": "mine", "val/part-00000-of-00001.parquet": "new",
        "val/rejects.jsonl": "",
    }  # fmt: skip

    with staged_split(FS, str(out), "train") as staging:
        publish(FS, staging, str(out / "train"))  # a new split: the staging folder is renamed
    assert sorted(p.name for p in out.iterdir()) == ["train", "val"]


def test_a_failure_leaves_out_as_it_was(tmp_path):
    fresh = tmp_path / "fresh"
    with pytest.raises(OSError, match="disk full"):
        with staged_split(FS, str(fresh), "val") as staging:
            write_empty_shards(FS, staging, 2, [{"shards": {0: {}}, "rejects": []}])
            assert sorted(p.name for p in (tmp_path / staging).iterdir()) == ["part-00001-of-00002.parquet"]
            raise OSError("disk full")
    assert not fresh.exists()

    existing = tmp_path / "existing"
    existing.mkdir()
    with pytest.raises(KeyboardInterrupt):
        with staged_split(FS, str(existing), "val"):
            raise KeyboardInterrupt
    assert list(existing.iterdir()) == []


def test_categories_text(tmp_path):
    categories = CategoryMap.from_names(["a", "b"])
    text = categories_text(categories, FS, str(tmp_path), "OUT/categories.json")
    categories.save_json(tmp_path / "saved.json")
    assert text == (tmp_path / "saved.json").read_text()
    (tmp_path / "categories.json").write_text(text)
    assert categories_text(categories, FS, str(tmp_path), "OUT/categories.json") is None
    with pytest.raises(ValueError, match="OUT/categories.json: exists with different categories"):
        categories_text(CategoryMap.from_names(["c"]), FS, str(tmp_path), "OUT/categories.json")
    assert json.loads(text)["categories"][0]["name"] == "a"
