"""Ray Data preprocessing: COCO json + images -> Parquet shards, rejects, summary, CLI.

Runs a real local Ray (2 CPUs). References: pycocotools' ``COCO.annToMask`` for masks, the raw
json for boxes/categories, ``load_coco(check_decode=True)`` for the reject counts.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import ray
from pycocotools.coco import COCO

from mrcnn.data.categories import CategoryMap
from mrcnn.data.coco import load_coco
from mrcnn.data.masks import rle_to_mask
from mrcnn.data.synthetic import make_synthetic_coco
from pipelines.preprocess import find_coco_splits, preprocess_coco, preprocess_dataset
from pipelines.shards import list_shards, shard_schema
from tests.conftest import COCO_MINI_IMAGES, COCO_MINI_JSON

SHARED_MINI = Path(__file__).resolve().parents[3].parent / "shared/data/coco_val2017_mini"
REAL_DATASETS = [
    pytest.param(json_path, json_path.parent / "images", id=json_path.parent.name)
    for json_path in (COCO_MINI_JSON, SHARED_MINI / "annotations.json")
    if json_path.is_file()
]


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def read_rows(split_dir: Path) -> list[dict]:
    """Every row of every shard, in shard order, with pyarrow alone (no Ray)."""
    rows = []
    for path in list_shards(split_dir):
        table = pq.read_table(path)
        assert table.schema.remove_metadata() == shard_schema()
        rows.extend(table.to_pylist())
    return rows


def read_rejects(split_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (split_dir / "rejects.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("annotations, images", REAL_DATASETS)
def test_real_coco_rows_match_pycocotools(tmp_path, annotations, images):
    """One row per image; masks equal annToMask exactly (crowd too); boxes, labels, ids, categories right."""
    summary = preprocess_coco(annotations=annotations, images=images, out=tmp_path, split="val", progress=False)
    coco = COCO(str(annotations))
    categories = CategoryMap.from_coco(coco.dataset)
    rows = read_rows(tmp_path / "val")

    assert sorted(r["image_id"] for r in rows) == sorted(coco.getImgIds())
    assert summary.num_rows == len(rows) == len(coco.dataset["images"])
    assert summary.num_annotations == len(coco.dataset["annotations"])
    assert summary.num_crowd == sum(a["iscrowd"] for a in coco.dataset["annotations"])
    assert summary.rejects_by_reason == {} and read_rejects(tmp_path / "val") == []
    for row in rows:
        image = coco.imgs[row["image_id"]]
        assert (row["file_name"], row["height"], row["width"]) == (image["file_name"], image["height"], image["width"])
        assert row["image"] == (images / image["file_name"]).read_bytes()
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[row["image_id"]], iscrowd=None))
        assert len(row["masks_rle"]) == len(anns) > 0
        assert row["category_ids"] == [a["category_id"] for a in anns]
        assert row["labels"] == [categories.label_of(a["category_id"]) for a in anns]
        assert row["iscrowd"] == [a["iscrowd"] for a in anns]
        for ann, counts, box, area in zip(anns, row["masks_rle"], row["boxes"], row["area"]):
            expected = coco.annToMask(ann)
            mask = rle_to_mask({"size": [row["height"], row["width"]], "counts": counts})
            np.testing.assert_array_equal(mask, expected, err_msg=f"annotation {ann['id']}")
            assert area == expected.sum()
            x, y, w, h = ann["bbox"]
            xyxy = [max(x, 0), max(y, 0), min(x + w, row["width"]), min(y + h, row["height"])]
            np.testing.assert_allclose(box, xyxy, atol=1e-3)
    written = json.loads((tmp_path / "categories.json").read_text())
    assert written == {"categories": categories.to_list()}
    assert len(written["categories"]) == 80
    assert json.loads((tmp_path / "val" / "_summary.json").read_text())["rows"] == len(rows)


def make_broken_copy(root: Path) -> tuple[Path, Path, dict]:
    """coco_mini with 4 bad images and 2 bad annotations; returns (json, images, expectations)."""
    images = root / "images"
    shutil.copytree(COCO_MINI_IMAGES, images)
    data = json.loads(COCO_MINI_JSON.read_text())
    by_id = {image["id"]: image for image in data["images"]}
    truncated, text, resized, missing = 165518, 551780, 434204, 460229
    jpeg = (images / by_id[truncated]["file_name"]).read_bytes()
    (images / by_id[truncated]["file_name"]).write_bytes(jpeg[: len(jpeg) // 2])
    (images / by_id[text]["file_name"]).write_text("this is a text file, not a JPEG\n")
    by_id[resized]["width"], by_id[resized]["height"] = 600, 400  # really 500x333
    (images / by_id[missing]["file_name"]).unlink()
    anns_255165 = [a for a in data["annotations"] if a["image_id"] == 255165 and not a["iscrowd"]]
    anns_553664 = [a for a in data["annotations"] if a["image_id"] == 553664 and not a["iscrowd"]]
    two_points, unknown = anns_255165[0], anns_553664[0]
    two_points["segmentation"] = [[10.0, 10.0, 50.0, 60.0]]
    unknown["category_id"] = 9999
    path = root / "annotations.json"
    path.write_text(json.dumps(data))
    expect = {
        "rejects": {
            (truncated, None, "unreadable_image"),
            (text, None, "unreadable_image"),
            (resized, None, "image_size_mismatch"),
            (missing, None, "missing_image_file"),
            (255165, two_points["id"], "polygon_too_few_points"),
            (553664, unknown["id"], "unknown_category"),
        },
        "kept_annotation_ids": {
            image_id: [a["id"] for a in data["annotations"] if a["image_id"] == image_id and a["id"] not in (two_points["id"], unknown["id"])]
            for image_id in (255165, 553664)
        },
        "files": {image_id: image["file_name"] for image_id, image in by_id.items()},
    }
    return path, images, expect


def test_bad_records_are_rejected_and_good_ones_kept(tmp_path):
    annotations, images, expect = make_broken_copy(tmp_path / "src")
    summary = preprocess_coco(
        annotations=annotations, images=images, out=tmp_path / "out", split="val", num_shards=4, progress=False
    )
    split_dir = tmp_path / "out" / "val"

    expected_counts = {
        "image_size_mismatch": 1,
        "missing_image_file": 1,
        "polygon_too_few_points": 1,
        "unknown_category": 1,
        "unreadable_image": 2,
    }
    assert summary.rejects_by_reason == expected_counts
    assert load_coco(annotations, image_dir=images, check_decode=True).reject_counts() == expected_counts
    assert json.loads((split_dir / "_summary.json").read_text())["rejects"] == expected_counts

    rejects = read_rejects(split_dir)
    assert {(r["image_id"], r["annotation_id"], r["reason"]) for r in rejects} == expect["rejects"]
    assert len(rejects) == 6
    for reject in rejects:
        assert reject["file"] == expect["files"][reject["image_id"]]
        if reject["annotation_id"] is None:
            assert f"image {reject['image_id']} ({reject['file']})" in reject["message"]
        else:
            assert f"annotation {reject['annotation_id']} in {annotations}" in reject["message"]
    messages = {r["reason"]: r["message"] for r in rejects}
    assert "truncated" in " ".join(r["message"] for r in rejects if r["image_id"] == 165518)
    assert "not_an_image" in " ".join(r["message"] for r in rejects if r["image_id"] == 551780)
    assert "600x400" in messages["image_size_mismatch"]
    assert "2 points" in messages["polygon_too_few_points"]

    # Every good row and annotation survives; 4 files even though two shards hold only rejects.
    assert len(list(split_dir.glob("*.parquet"))) == 4
    rows = read_rows(split_dir)
    assert sorted(r["image_id"] for r in rows) == [255165, 553664]
    coco = COCO(str(COCO_MINI_JSON))
    for row in rows:
        kept = expect["kept_annotation_ids"][row["image_id"]]
        assert len(row["masks_rle"]) == len(kept) == len(coco.getAnnIds(imgIds=[row["image_id"]])) - 1
        for ann_id, counts, category_id in zip(kept, row["masks_rle"], row["category_ids"]):
            ann = coco.anns[ann_id]
            assert category_id == ann["category_id"]
            mask = rle_to_mask({"size": [row["height"], row["width"]], "counts": counts})
            np.testing.assert_array_equal(mask, coco.annToMask(ann))
        assert sum(row["iscrowd"]) == 1
    assert (summary.num_rows, summary.num_annotations, summary.num_crowd) == (2, 23 + 18 - 2, 2)
    # Ray Data reads the split folder (empty shards included), skipping rejects.jsonl and _summary.json.
    assert ray.data.read_parquet(str(split_dir)).count() == 2


def test_synthetic_and_coco_layouts(tmp_path):
    """Both splits of the synthetic layout; num_shards gives that many files; the COCO 2017 layout too."""
    info = make_synthetic_coco(tmp_path / "synth", num_train=8, num_val=4, size=64, seed=0)
    summaries = preprocess_dataset(tmp_path / "synth", tmp_path / "out", num_shards=3, progress=False)
    assert list(summaries) == ["train", "val"]
    for split in ("train", "val"):
        split_dir = tmp_path / "out" / split
        assert sorted(p.name for p in split_dir.glob("*.parquet")) == [f"part-0000{i}-of-00003.parquet" for i in range(3)]
        rows = read_rows(split_dir)
        assert len(rows) == summaries[split].num_rows == info[split]["num_images"]
        assert sum(len(r["masks_rle"]) for r in rows) == info[split]["num_annotations"]
    categories = json.loads((tmp_path / "out" / "categories.json").read_text())["categories"]
    assert [c["name"] for c in categories] == ["circle", "square", "triangle", "star", "ring"]

    coco_root = tmp_path / "coco"
    (coco_root / "annotations").mkdir(parents=True)
    shutil.copy(info["val"]["annotations"], coco_root / "annotations" / "instances_val2017.json")
    shutil.copytree(info["val"]["image_dir"], coco_root / "val2017")
    assert find_coco_splits(coco_root) == {
        "val": (f"{coco_root}/annotations/instances_val2017.json", f"{coco_root}/val2017")
    }
    summaries = preprocess_dataset(coco_root, tmp_path / "out_coco", rows_per_shard=3, progress=False)
    assert list(summaries) == ["val"]
    assert len(list_shards(tmp_path / "out_coco" / "val")) == 2  # ceil(4 / 3)
    assert read_rows(tmp_path / "out_coco" / "val") == read_rows(tmp_path / "out" / "val")

    # Filesystem URIs (pyarrow.fs) work for every input and output; file:// stands in for s3://.
    summary = preprocess_coco(
        annotations=f"file://{info['val']['annotations']}", images=f"file://{info['val']['image_dir']}",
        out=f"file://{tmp_path / 'out_uri'}", split="val", num_shards=3, progress=False,
    )
    assert summary.num_rows == 4 and len(summary.shard_paths) == 3
    assert read_rows(tmp_path / "out_uri" / "val") == read_rows(tmp_path / "out" / "val")
    assert list_shards(f"file://{tmp_path / 'out_uri' / 'val'}") == list_shards(tmp_path / "out_uri" / "val")


def test_bad_input_raises_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset folder not found"):
        preprocess_dataset(tmp_path / "nope", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no train or val split"):
        preprocess_dataset(tmp_path / "empty", tmp_path / "out")
    with pytest.raises(ValueError, match="not both"):
        preprocess_coco(
            annotations=COCO_MINI_JSON, images=COCO_MINI_IMAGES, out=tmp_path, split="val", num_shards=2, rows_per_shard=3
        )
    with pytest.raises(ValueError, match="num_shards: expected a positive int"):
        preprocess_coco(annotations=COCO_MINI_JSON, images=COCO_MINI_IMAGES, out=tmp_path, split="val", num_shards=0)
    not_coco = tmp_path / "list.json"
    not_coco.write_text("[1, 2]")
    with pytest.raises(ValueError, match="expected a COCO json object"):
        preprocess_coco(annotations=not_coco, images=COCO_MINI_IMAGES, out=tmp_path, split="val")
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        preprocess_coco(annotations=COCO_MINI_JSON, images=tmp_path / "missing", out=tmp_path, split="val")
    # A second dataset with other categories may not share an output folder with the first.
    make_synthetic_coco(tmp_path / "synth", num_train=0, num_val=1, size=32)
    preprocess_dataset(tmp_path / "synth", tmp_path / "shared_out", progress=False)
    with pytest.raises(ValueError, match="different categories"):
        preprocess_coco(
            annotations=COCO_MINI_JSON, images=COCO_MINI_IMAGES, out=tmp_path / "shared_out", split="coco", progress=False
        )


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})  # fmt: skip


def test_cli_preprocess(tmp_path):
    """The verb in a subprocess, connected to this test's Ray with --address; bad input is one line. Its console
    holds our lines and no line of Ray's own: those are in the log file that the console names."""
    address = ray.get_runtime_context().gcs_address
    result = run_cli(
        "preprocess", str(tmp_path / "out"), "--annotations", str(COCO_MINI_JSON), "--images", str(COCO_MINI_IMAGES),
        "--split", "val", "--num-shards", "2", "--address", address, env={"MRCNN_LOG_DIR": str(tmp_path / "logs")},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "val: 6 rows (58 instances, 2 crowd) from 6 images in 2 shard(s), 0 rejects" in result.stdout
    assert f"categories: {tmp_path / 'out' / 'categories.json'}" in result.stdout
    assert len(list_shards(tmp_path / "out" / "val")) == 2

    console = result.stderr + result.stdout
    assert "val: wrote 6 rows in 2 shard(s)" in result.stderr, "our progress lines stay on the console"
    for ray_word in ("streaming_executor", "logging_progress", "dataset.py", "Data sink", "INFO", "WARNING"):
        assert ray_word not in console, f"Ray's {ray_word!r} on the console:\n{console}"
    named = [line for line in result.stderr.splitlines() if line.startswith("[ray] ")]
    assert len(named) == 1 and f"connecting to Ray at {address}; Ray's own messages go to " in named[0], result.stderr
    log_file = Path(named[0].rsplit(" ", 1)[-1])
    assert log_file.parent == tmp_path / "logs" and log_file.is_file()
    assert "streaming_executor" in log_file.read_text(), "Ray's lines are in the file"

    for bad in (
        ["preprocess", str(tmp_path / "missing"), str(tmp_path / "out")],
        ["preprocess", str(tmp_path / "out"), "--annotations", str(COCO_MINI_JSON), "--images", str(COCO_MINI_IMAGES)],
        ["preprocess", str(tmp_path / "src"), str(tmp_path / "out"), "--num-shards", "0"],
    ):
        result = run_cli(*bad)
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("mrcnn: error:"), result.stderr


# ---------------------------------------------------------------- field cases (issue 16, part A)
def _field_dataset(root: Path) -> tuple[Path, Path]:
    """Two 64x64 images, categories 1 and 3000000000 (beyond int32), one annotation each; the second one's
    polygon has a broken first part (2 points) before a valid one."""
    from PIL import Image

    images = root / "images"
    images.mkdir(parents=True)
    for name in ("a.png", "b.png"):
        Image.fromarray(np.full((64, 64, 3), 128, dtype=np.uint8)).save(images / name)
    square = [10.0, 10.0, 30.0, 10.0, 30.0, 30.0, 10.0, 30.0]
    data = {
        "images": [{"id": 1, "file_name": "a.png", "height": 64, "width": 64},
                   {"id": 5000000000, "file_name": "b.png", "height": 64, "width": 64}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": [square], "iscrowd": 0},
                        {"id": 6000000000, "image_id": 5000000000, "category_id": 3000000000,
                         "segmentation": [[1.0, 1.0, 2.0, 2.0], square], "iscrowd": 0}],
        "categories": [{"id": 1, "name": "small"}, {"id": 3000000000, "name": "big"}],
    }  # fmt: skip
    annotations = root / "annotations.json"
    annotations.write_text(json.dumps(data))
    return annotations, images


def test_int64_ids_keep_every_image_and_a_broken_polygon_part_is_counted(tmp_path):
    from pipelines.shards import shards_to_coco_gt

    annotations, images = _field_dataset(tmp_path / "src")
    out = tmp_path / "out"
    summary = preprocess_coco(annotations=annotations, images=images, out=out, split="val", num_shards=1, progress=False)
    assert summary.num_rows == 2 and summary.num_annotations == 2
    assert summary.rejects_by_reason == {"polygon_part_dropped": 1}
    rows = read_rows(out / "val")
    assert [(r["image_id"], r["category_ids"]) for r in rows] == [(1, [1]), (5000000000, [3000000000])]
    assert rows[1]["area"] == [400.0]  # the valid part alone
    assert pq.read_schema(list_shards(out / "val")[0]).field("category_ids").type.value_type == "int64"
    gt = shards_to_coco_gt(out / "val")
    assert [a["category_id"] for a in gt["annotations"]] == [1, 3000000000]
    assert sorted(p.name for p in out.iterdir()) == ["categories.json", "val"]  # no staging folder left


def test_failed_preprocess_leaves_the_output_untouched(tmp_path, monkeypatch):
    """A failure mid-way neither leaves a half-written split nor a categories.json in an otherwise empty folder,
    and an earlier complete split stays as it was."""
    import pipelines.preprocess.driver

    annotations, images = _field_dataset(tmp_path / "src")
    real_input_table = pipelines.preprocess.driver.shard_input_table

    def failing(records, shard):
        if shard == 1:
            raise OverflowError("simulated failure while building shard 1")
        return real_input_table(records, shard)

    monkeypatch.setattr(pipelines.preprocess.driver, "shard_input_table", failing)
    fresh = tmp_path / "fresh"
    with pytest.raises(OverflowError):
        preprocess_coco(annotations=annotations, images=images, out=fresh, split="val", num_shards=2, progress=False)
    assert not fresh.exists()

    existing = tmp_path / "existing"
    preprocess_coco(annotations=annotations, images=images, out=existing, split="val", num_shards=1, progress=False)
    before = {p.relative_to(existing): p.read_bytes() for p in existing.rglob("*") if p.is_file()}
    with pytest.raises(OverflowError):
        preprocess_coco(annotations=annotations, images=images, out=existing, split="val", num_shards=2, progress=False)
    with pytest.raises(OverflowError):
        preprocess_coco(annotations=annotations, images=images, out=existing, split="train", num_shards=2, progress=False)
    after = {p.relative_to(existing): p.read_bytes() for p in existing.rglob("*") if p.is_file()}
    assert after == before


def test_progress_flag_and_block_cap_are_set_before_the_dataset_is_made(tmp_path, monkeypatch):
    """A Dataset keeps a copy of Ray Data's context when it is made: progress=False turns its progress bars
    (tqdm, or log lines when stdout is not a terminal) off, and its output blocks stay at 16 MiB; afterwards the
    context is as it was."""
    from pipelines.preprocess.driver import PREPROCESS_BLOCK_BYTES

    annotations, images = _field_dataset(tmp_path / "src")
    context = ray.data.DataContext.get_current()
    before = (context.enable_progress_bars, context.target_max_block_size)
    seen = []
    real_from_arrow_refs = ray.data.from_arrow_refs

    def spy(refs):
        current = ray.data.DataContext.get_current()
        seen.append((current.enable_progress_bars, current.target_max_block_size))
        return real_from_arrow_refs(refs)

    monkeypatch.setattr(ray.data, "from_arrow_refs", spy)
    for progress in (False, True):
        preprocess_coco(annotations=annotations, images=images, out=tmp_path / f"out{progress}", split="val",
                        num_shards=1, progress=progress)  # fmt: skip
    assert PREPROCESS_BLOCK_BYTES == 16 * 2**20
    assert seen == [(False, PREPROCESS_BLOCK_BYTES), (before[0], min(before[1], PREPROCESS_BLOCK_BYTES))]
    assert before[0] is True  # Ray Data's default: the bars show with progress=True
    assert (context.enable_progress_bars, context.target_max_block_size) == before
