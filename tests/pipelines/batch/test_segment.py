"""`mrcnn segment`: Ray Data batch segmentation over a real local Ray cluster on 127.0.0.1.

The reference is `mrcnn predict` (one process, the same Predictor): same detections for the same
images, up to float noise from other batching and thread counts. Bad files are rejected and listed,
the rest are segmented; an interrupted run (a test hook, and a SIGKILLed driver) resumed gives
exactly one result set per image.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
from PIL import Image

from mrcnn.data.masks import mask_to_rle, rle_to_mask
from pipelines.cli import main
from pipelines.preprocess import preprocess_coco
from mrcnn.records import row_to_records
from pipelines.batch.parts import PARTS_DIR, segment_schema
from pipelines.batch.segment import SegmentInterrupted, segment

THRESHOLD = 0.225  # the random small model's class scores lie in ~0.21..0.29: 0 to ~70 detections per image
BAD_FILES = {"truncated.png": "truncated", "text.jpg": "not_an_image", "empty.png": "empty"}
PROJECT_DIR = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def cluster():
    """A one-node Ray cluster with 2 CPUs, on 127.0.0.1; a subprocess driver can join it."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    ray.init(address=cluster.address, log_to_driver=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture(scope="module")
def image_folder(synth_dataset, tmp_path_factory) -> Path:
    """9 good images (RGB, grayscale JPEG, RGBA PNG; two in a subfolder), 3 bad ones, 1 non-image."""
    root = tmp_path_factory.mktemp("images")
    (root / "sub").mkdir()
    val = sorted((synth_dataset / "val" / "images").iterdir())
    train = sorted((synth_dataset / "train" / "images").iterdir())
    for path in val:
        shutil.copy(path, root / path.name)
    for path in train[:3]:
        shutil.copy(path, root / "sub" / f"train_{path.name}")
    Image.open(train[3]).convert("L").save(root / "gray.jpg", quality=95)
    Image.open(train[4]).convert("RGBA").save(root / "sub" / "rgba.png")
    png = val[0].read_bytes()
    (root / "truncated.png").write_bytes(png[: len(png) // 2])
    (root / "text.jpg").write_text("this is a text file, not a JPEG\n")
    (root / "empty.png").write_bytes(b"")
    (root / "notes.txt").write_text("not an image suffix: ignored\n")
    return root


def good_images(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*") if p.suffix in (".png", ".jpg") and p.name not in BAD_FILES
    )


def predict_reference(tmp_path: Path, checkpoint: Path, images: list[Path], *extra: str) -> list[dict]:
    """`mrcnn predict` on the same files, as a user runs it."""
    out = tmp_path / "predict.json"
    assert main(["predict", *map(str, images), "--weights", str(checkpoint),
                 "--score-threshold", str(THRESHOLD), "--out", str(out), *extra]) == 0  # fmt: skip
    return json.loads(out.read_text())


def by_image(records: list[dict], key, images) -> dict:
    """Records grouped per image (``key(record)``); every one of ``images`` present, maybe with none."""
    grouped: dict = {image: [] for image in images}
    for record in records:
        grouped[key(record)].append(record)
    return grouped


def assert_same_detections(got: dict, expected: dict) -> None:
    """Per image: the same detections (category, score, box, mask), matched one to one.

    Float noise (other batch composition and thread count) moves scores by ~1e-7; a detection that
    close to the score threshold may be on one side only and is not required.
    """
    assert set(got) == set(expected)

    def clear(records):
        return [r for r in records if abs(r["score"] - THRESHOLD) >= 1e-4]

    for image, expected_records in expected.items():
        want, have = clear(expected_records), clear(got[image])
        assert len(have) == len(want), image
        for record in want:
            matches = [
                r for r in have
                if r["category_id"] == record["category_id"] and abs(r["score"] - record["score"]) <= 2e-5
                and np.allclose(r["bbox"], record["bbox"], atol=0.02)
            ]  # fmt: skip
            assert matches, f"{image}: no match for {record['category_id']} {record['score']} {record['bbox']}"
            match = matches[0]
            have.remove(match)
            a, b = rle_to_mask(match["segmentation"]), rle_to_mask(record["segmentation"])
            assert (a != b).sum() <= max(2, 0.02 * max(a.sum(), 1)), image


def read_parquet_rows(path: Path) -> list[dict]:
    table = pq.read_table(path)
    assert table.schema.remove_metadata() == segment_schema()
    return table.to_pylist()


def test_folder_with_bad_files_gives_every_good_image_and_matches_predict(cluster, image_folder, small_checkpoint, tmp_path):
    out = tmp_path / "out"
    summary = segment(model=small_checkpoint, input=image_folder, out=out, score_threshold=THRESHOLD,
                      part_size=3, workers=2, overlays=True, progress=False)  # fmt: skip
    good = good_images(image_folder)
    keys = {p.relative_to(image_folder).as_posix() for p in good}

    assert summary.num_inputs == len(good) + len(BAD_FILES)
    assert summary.num_ignored_files == 1
    assert summary.num_processed == summary.num_results == len(good)
    assert summary.rejects_by_reason == {reason: 1 for reason in BAD_FILES.values()}
    assert summary.duplicates_dropped == 0
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert {(r["file"], r["reason"]) for r in rejects} == set(BAD_FILES.items())
    assert all(r["file"] in r["message"] for r in rejects)
    assert json.loads((out / "_summary.json").read_text())["num_results"] == len(good)

    results = json.loads((out / "results.json").read_text())
    assert {r["file_name"] for r in results} <= keys
    assert sum(1 for _ in results) == summary.num_detections > 0
    rows = read_parquet_rows(out / "detections.parquet")
    assert sorted(r["key"] for r in rows) == sorted(keys)
    from_rows = [det for row in rows for det in row_to_records(row)]
    assert len(from_rows) == len(results)
    for row in rows:
        assert (row["height"], row["width"]) == Image.open(image_folder / row["key"]).size[::-1]
        overlay = out / "overlays" / Path(row["key"]).with_suffix(".png")
        assert Image.open(overlay).size == (row["width"], row["height"])

    expected = predict_reference(tmp_path, small_checkpoint, good)
    by_name = {p.name: p.relative_to(image_folder).as_posix() for p in good}
    assert_same_detections(
        by_image(results, lambda r: r["file_name"], keys), by_image(expected, lambda r: by_name[r["file_name"]], keys)
    )

    # The same command again has nothing to do: every image is done or permanently rejected.
    again = segment(model=small_checkpoint, input=image_folder, out=out, score_threshold=THRESHOLD,
                    part_size=3, overlays=True, progress=False)  # fmt: skip
    assert (again.num_already_done, again.num_processed, again.num_rejected_now) == (summary.num_inputs, 0, 0)
    assert json.loads((out / "results.json").read_text()) == results

    # Another model option over the same folder is refused, with one line naming it.
    code = main(["segment", "--model", str(small_checkpoint), "--input", str(image_folder), "--out", str(out),
                 "--score-threshold", "0.3"])  # fmt: skip
    assert code == 2
    (tmp_path / "thresholds.json").write_text(json.dumps({"1": 0.25}))  # per-class thresholds are such an option too
    assert main(["segment", "--model", str(small_checkpoint), "--input", str(image_folder), "--out", str(out),
                 "--class-thresholds", str(tmp_path / "thresholds.json")]) == 2  # fmt: skip
    assert json.loads((out / "results.json").read_text()) == results


def test_shard_input_resumes_and_matches_predict_with_image_ids(cluster, synth_dataset, small_checkpoint, tmp_path):
    """Shards in (2 workers on the 2 CPUs: nothing else may need one), stopped after one part, resumed."""
    val = synth_dataset / "val"
    preprocess_coco(annotations=val / "annotations.json", images=val / "images", out=tmp_path / "shards",
                    split="val", num_shards=2, progress=False)  # fmt: skip
    out = tmp_path / "out"
    options = {"model": f"file://{small_checkpoint}", "input": tmp_path / "shards" / "val", "out": out,
               "score_threshold": THRESHOLD, "part_size": 1, "workers": 2, "output_format": "coco", "progress": False}  # fmt: skip
    with pytest.raises(SegmentInterrupted):
        segment(**options, fail_after_parts=1)
    summary = segment(**options)
    ids = {image["id"]: image["file_name"] for image in json.loads((val / "annotations.json").read_text())["images"]}
    assert summary.input_kind == "shards"
    assert summary.num_already_done >= 1 and summary.num_already_done + summary.num_processed == len(ids)
    assert summary.num_results == len(ids) and summary.rejects_by_reason == {}
    assert not (out / "detections.parquet").exists()
    results = json.loads((out / "results.json").read_text())
    assert {(r["image_id"], r["file_name"]) for r in results} <= set(ids.items())

    expected = predict_reference(tmp_path, small_checkpoint, sorted((val / "images").iterdir()),
                                 "--annotations", str(val / "annotations.json"))  # fmt: skip
    assert_same_detections(
        by_image(results, lambda r: r["image_id"], ids), by_image(expected, lambda r: r["image_id"], ids)
    )


def assert_one_result_set_per_image(out: Path, keys: set[str], reference: list[dict]) -> None:
    rows = read_parquet_rows(out / "detections.parquet")
    assert sorted(r["key"] for r in rows) == sorted(keys)
    results = json.loads((out / "results.json").read_text())
    assert_same_detections(
        by_image(results, lambda r: r["file_name"], keys), by_image(reference, lambda r: r["file_name"], keys)
    )
    assert not [p for p in out.rglob(".*") if ".tmp-" in p.name]


@pytest.fixture(scope="module")
def reference_run(cluster, image_folder, small_checkpoint, tmp_path_factory) -> tuple[set[str], list[dict]]:
    """An uninterrupted run with the options of the resume tests: (keys with results, COCO records)."""
    out = tmp_path_factory.mktemp("reference")
    segment(model=small_checkpoint, input=image_folder, out=out, score_threshold=THRESHOLD, part_size=2,
            workers=1, progress=False)  # fmt: skip
    return {r["key"] for r in read_parquet_rows(out / "detections.parquet")}, json.loads((out / "results.json").read_text())


def test_interrupted_run_resumes_with_one_result_set_per_image(reference_run, image_folder, small_checkpoint, tmp_path):
    keys, reference = reference_run
    out = tmp_path / "out"
    options = {"model": small_checkpoint, "input": image_folder, "out": out, "score_threshold": THRESHOLD,
               "part_size": 1, "workers": 1, "progress": False}  # fmt: skip
    with pytest.raises(SegmentInterrupted):
        segment(**options, fail_after_parts=2)
    parts = list((out / PARTS_DIR).glob("part-*.parquet"))
    assert 2 <= len(parts) < 12, "stopped part-way (12 images, one per part)"
    done_before = {key for p in parts for key in pq.read_table(p, columns=["key"]).column("key").to_pylist()}
    assert not (out / "results.json").exists()

    summary = segment(**options)
    # >=: the stopped run's actor may still finish the image it was on before Ray removes it.
    assert summary.num_already_done >= len(done_before)
    assert summary.num_already_done + summary.num_processed + summary.num_rejected_now == summary.num_inputs
    assert summary.num_results == len(keys)
    assert_one_result_set_per_image(out, keys, reference)


def test_killed_driver_resumes_with_one_result_set_per_image(cluster, reference_run, image_folder, small_checkpoint, tmp_path):
    """SIGKILL the `mrcnn segment` process once part files appear; the next run completes the set."""
    keys, reference = reference_run
    out = tmp_path / "out"
    args = ["--model", str(small_checkpoint), "--input", str(image_folder), "--out", str(out),
            "--score-threshold", str(THRESHOLD), "--part-size", "1", "--workers", "1"]  # fmt: skip
    driver = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "segment", *args, "--address", cluster.address],
        cwd=PROJECT_DIR, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 240
        while not list((out / PARTS_DIR).glob("part-*.parquet")) and driver.poll() is None:
            assert time.monotonic() < deadline, "no part file written"
            time.sleep(0.1)
        os.kill(driver.pid, signal.SIGKILL)
    finally:
        driver.wait(timeout=30)
    assert driver.returncode == -signal.SIGKILL, "the driver finished before it could be killed"
    assert not (out / "results.json").exists()

    assert main(["segment", *args]) == 0
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["num_already_done"] >= 1
    assert summary["num_results"] == len(keys)
    assert_one_result_set_per_image(out, keys, reference)


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--model", "{tmp}/missing.ckpt", "--input", "{tmp}/in"], "no such file"),
        (["--model", "{tmp}/in/notes.txt", "--input", "{tmp}/in"], "notes.txt"),
        (["--model", "{ckpt}", "--input", "{tmp}/nowhere"], "input folder not found"),
        (["--model", "{ckpt}", "--input", "{tmp}/empty"], "no image files"),
        (["--model", "{ckpt}", "--input", "{tmp}/in", "--workers", "0"], "workers"),
        (["--model", "{ckpt}", "--input", "{tmp}/in", "--class-thresholds", "{tmp}/t.json"], "unknown category id 99"),
    ],
    ids=["missing-model", "not-a-checkpoint", "missing-input", "no-images", "zero-workers", "unknown-class"],
)
def test_bad_arguments_give_one_line_error(tmp_path, small_checkpoint, capsys, args, expected):
    """Checked on the driver before any Ray work: one `mrcnn: error:` line, exit code 2, nothing written."""
    (tmp_path / "in").mkdir()
    (tmp_path / "empty").mkdir()
    (tmp_path / "in" / "notes.txt").write_text("not a checkpoint\n")
    (tmp_path / "t.json").write_text('{"99": 0.5}')
    Image.new("RGB", (32, 24)).save(tmp_path / "in" / "black.png")
    argv = [a.format(tmp=tmp_path, ckpt=small_checkpoint) for a in args]
    assert main(["segment", *argv, "--out", str(tmp_path / "out")]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("mrcnn: error:")]
    assert len(errors) == 1 and expected in errors[0], errors
    assert not (tmp_path / "out" / "_parts").exists()


def test_stored_thresholds_reach_the_actors(small_checkpoint, image_folder, tmp_path, monkeypatch):
    """The driver finds the thresholds an MLflow Model stores beside its weights (or a checkpoint in its
    metadata), resolves what a run applies, and each actor's predictor applies them (no Ray pipeline here)."""
    from mrcnn.checkpoint import load_checkpoint, save_checkpoint
    from mrcnn.data.images import load_image
    from mrcnn.predictor import Predictor
    from pipelines.batch.model import load_model
    from pipelines.batch.segment import _thresholds_in_force
    from pipelines.batch.worker import SegmentWorker
    from pipelines.tracking.pyfunc import save_pyfunc_model

    monkeypatch.setenv("MRCNN_KEEP_FREED_MEMORY", "0")  # the test process keeps its malloc settings
    images = [load_image(p) for p in good_images(image_folder)[:1]]
    everything = Predictor.from_checkpoint(small_checkpoint, score_threshold=0.0).predict(images)[0]
    counts = {c: sum(r["category_id"] == c for r in everything) for c in {r["category_id"] for r in everything}}
    common = sorted(counts, key=lambda c: -counts[c])[:2]  # the two most frequent classes, cut at their medians
    stored = {c: float(np.median([r["score"] for r in everything if r["category_id"] == c])) for c in common}
    folder = save_pyfunc_model(small_checkpoint, tmp_path / "model", thresholds=stored)
    from_folder = load_model(str(folder))
    assert from_folder.class_thresholds == stored and load_model(small_checkpoint).class_thresholds == {}
    checkpoint = load_checkpoint(small_checkpoint)
    in_metadata = save_checkpoint(tmp_path / "m.ckpt", model=checkpoint.build_model(), config=checkpoint.config,
                                  categories=checkpoint.categories, metadata={"thresholds": stored})  # fmt: skip
    assert load_model(in_metadata).class_thresholds == stored
    assert _thresholds_in_force(from_folder, None, None) == (0.5, stored)
    assert _thresholds_in_force(from_folder, 0.3, None) == (0.3, {})
    assert _thresholds_in_force(from_folder, None, {}) == (0.5, {})
    assert _thresholds_in_force(from_folder, None, {"2": 0.2}) == (0.5, {2: 0.2})

    worker = SegmentWorker(checkpoint=from_folder.data, class_thresholds=stored, out=str(tmp_path / "out"))
    got = worker._predict(images)[0]
    expected = [r for r in everything if r["score"] >= stored.get(r["category_id"], 0.5)]
    assert 0 < len(got) < len(everything)
    assert [(r["category_id"], r["score"], r["segmentation"]) for r in got] == [
        (r["category_id"], r["score"], r["segmentation"]) for r in expected]  # fmt: skip


def test_assembly_keeps_one_row_per_image(tmp_path):
    """Part files that overlap (a killed run's last batch redone) give one row per image; a result wins."""
    from pipelines.batch.parts import PART_COLUMNS, _assemble
    from pipelines.common.storage import resolve_path

    square = np.zeros((4, 4), dtype=np.uint8)
    square[:2, :2] = 1
    counts = mask_to_rle(square)["counts"]

    def part_row(key, status, score=None):
        row = dict.fromkeys(PART_COLUMNS) | {"key": key, "file_name": key, "height": 4, "width": 4, "status": status}
        if status == "ok":
            row |= {"labels": [1], "category_ids": [7], "category_names": ["x"], "scores": [score],
                    "boxes": [[0.0, 0.0, 2.0, 2.0]], "masks_rle": [counts], "area": [4.0]}  # fmt: skip
        else:
            row["message"] = f"{key}: broken"
        return row

    fs, root = resolve_path(tmp_path)
    (tmp_path / PARTS_DIR).mkdir()
    parts = {
        "part-a.parquet": [part_row("a.png", "ok", 0.5), part_row("b.png", "truncated")],
        "part-b.parquet": [part_row("b.png", "ok", 0.25), part_row("c.png", "not_an_image")],
        "part-c.parquet": [part_row("a.png", "ok", 0.5), part_row("c.png", "not_an_image")],
    }
    for name, rows in parts.items():
        pq.write_table(pa.Table.from_pylist(rows, schema=segment_schema(PART_COLUMNS)), tmp_path / PARTS_DIR / name)
    assembled = _assemble(fs, root, str(tmp_path), "both")
    assert assembled["num_results"] == 2 and assembled["num_detections"] == 2
    assert assembled["duplicates_dropped"] == 1
    assert assembled["rejects_by_reason"] == {"not_an_image": 1}
    rows = read_parquet_rows(tmp_path / "detections.parquet")
    assert sorted((r["key"], r["scores"]) for r in rows) == [("a.png", [0.5]), ("b.png", [0.25])]
    results = json.loads((tmp_path / "results.json").read_text())
    assert sorted((r["file_name"], r["score"]) for r in results) == [("a.png", 0.5), ("b.png", 0.25)]
    assert rle_to_mask(results[0]["segmentation"]).tolist() == square.tolist()
    rejects = [json.loads(line) for line in (tmp_path / "rejects.jsonl").read_text().splitlines()]
    assert [(r["key"], r["reason"]) for r in rejects] == [("c.png", "not_an_image")]
