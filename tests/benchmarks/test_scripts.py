"""The benchmark scripts run (tiny sizes, CPU) and print their tables; no timing is asserted.

The GPU check in particular has to work the day a GPU is lent, so it is run here on the CPU.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(script: str, *args: str, timeout: int = 600) -> str:
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], cwd=ROOT, capture_output=True,
                            text=True, timeout=timeout, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def _table_rows(output: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in output.splitlines()
            if line.startswith("|") and not line.startswith("|---")]


def test_gpu_check_runs_on_cpu():
    # Inference rows are the same code as bench_inference.py (tested below): only the training rows here.
    output = _run("gpu_check.py", "--device", "cpu", "--size", "64", "--repeats", "1", "--warmup", "0", "--batches", "1",
                  "--only", "train")
    benches = [row[0] for row in _table_rows(output)[1:]]
    assert benches == ["train step r50_fpn 64px vs torchvision", "train step r18_fpn_small 128px"]


E2E_SMOKE = ("--device", "cpu", "--only", "e2e", "--size", "64", "--e2e-preset", "r18_fpn_small", "--e2e-images", "8",
             "--e2e-batch", "2", "--e2e-steps", "3", "--e2e-warmup", "1")


def _e2e_rows(output: str) -> list[list[str]]:
    header, *rows = _table_rows(output)
    assert header[-2:] == ["data wait / step", "GPU util %"]
    assert [row[0].split("): ", 1)[1].split(" (")[0] for row in rows] == ["the bare step inside the run",
                                                                          "through the pipeline"]  # fmt: skip
    assert all(row[1:3] == ["fp32", "2"] and float(row[6]) > 0 for row in rows)
    assert rows[0][7:] == ["-", "-"] and 0 <= float(rows[1][7].rstrip("%")) <= 100 and rows[1][8] == "-"  # no GPU here
    return rows


@pytest.mark.slow  # a local Ray, preprocessing and a Ray Train run: tens of seconds
def test_gpu_check_e2e_trains_from_shards_through_ray_train_on_cpu():
    """The end-to-end case as a lent GPU machine with Ray and MLflow runs it: preprocess, then `mrcnn train`'s
    Ray Train run with MLflow, 3 steps (1 left out as warm-up)."""
    rows = _e2e_rows(_run("gpu_check.py", *E2E_SMOKE))
    assert all("2 steps after 1 (Ray Train + MLflow, loader_threads 1)" in row[0] for row in rows)


def test_gpu_check_e2e_falls_back_to_the_plain_loop_without_ray():
    """A machine without Ray runs the same loop in-process (and says so); nothing crashes."""
    code = ("import runpy, sys; sys.modules['ray'] = None; sys.argv = ['gpu_check.py', *sys.argv[1:]]; "
            "runpy.run_path('benchmarks/gpu_check.py', run_name='__main__')")  # fmt: skip
    result = subprocess.run([sys.executable, "-c", code, *E2E_SMOKE], cwd=ROOT, capture_output=True, text=True,
                            timeout=600, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rows = _e2e_rows(result.stdout)
    assert all("(plain loop, no Ray (Ray does not import: " in row[0] for row in rows)


def test_gpu_check_postprocess_rows_run_on_cpu():
    output = _run("gpu_check.py", "--device", "cpu", "--size", "64", "--repeats", "1", "--warmup", "0", "--photos", "1",
                  "--only", "postprocess")
    benches = [row[0] for row in _table_rows(output)[1:]]
    assert len(benches) == 3 and "records identical: True" in benches[0]
    assert [b.split(" (")[0] for b in benches[1:]] == ["Predictor.predict per photo, score > 0.5",
                                                       "Predictor.predict per photo, score > 0.0"]


def test_bench_postprocess_checks_identical_records():
    output = _run("bench_postprocess.py", "--size", "48", "--detections", "20", "--images", "2", "--repeats", "1",
                  "--warmup", "0")
    assert "records identical (full-size masks vs box crops, 2 images): True" in output
    assert [row[0] for row in _table_rows(output)[1:]] == ["full-size masks", "box crops"]


def test_bench_inference_reports_agreement_and_speed():
    output = _run("bench_inference.py", "--size", "64", "--images", "1", "--repeats", "1", "--variants", "torchvision", "predictor",
                  "predictor_plain", "--stages")
    assert "'same_labels': True" in output
    rows = {row[0]: row for row in _table_rows(output)}
    assert {"torchvision", "predictor", "predictor_plain", "backbone+FPN", "total"} <= set(rows)


@pytest.mark.parametrize("iou_types", [("bbox", "segm", "keypoints")])
def test_bench_eval_backends_agree(iou_types):
    output = _run("bench_eval.py", "--images", "20", "--repeats", "1")
    rows = _table_rows(output)[1:]
    assert [row[1] for row in rows] == list(iou_types)
    assert all(float(row[-1]) <= 1e-2 for row in rows)  # AP points: 1e-2 = 1e-4 of AP


def test_bench_preprocess_compares_plain_loop_and_ray_data():
    output = _run("bench_preprocess.py", "--synthetic", "8", "--coco-repeat", "1", "--repeats", "1", "--num-cpus", "1")
    methods = [row[2] for row in _table_rows(output)[1:]]
    assert methods == ["plain loop, 1 process", "Ray Data, 1 CPUs, 1 shards"] * 2


def test_bench_preprocess_memory_reports_each_scale():
    output = _run("bench_preprocess_memory.py", "--base", "6", "--scales", "1")
    rows = _table_rows(output)[1:]
    assert [row[0] for row in rows] == ["1x"] and int(rows[0][1]) == 6


def test_bench_segment_runs_both_sides():
    output = _run("bench_segment.py", "--synthetic", "4", "--coco-repeat", "1", "--repeats", "1", "--num-cpus", "1",
                  "--part-size", "4")
    methods = [row[2] for row in _table_rows(output)[1:]]
    assert any(m.startswith("plain loop") for m in methods) and any(m.startswith("mrcnn segment") for m in methods)


def test_bench_serve_measures_direct_calls_and_the_endpoint():
    output = _run("bench_serve.py", "--requests", "4", "--clients", "2", "--max-batch-size", "2", "--images", "2", "--cpus", "1")
    labels = [row[0] for row in _table_rows(output)[1:]]
    assert labels == ["direct, 1 image/call", "direct, 2 images/call", "endpoint, batching (<= 2)", "endpoint, no batching"]


def test_bench_train_compares_ray_train_with_a_plain_loop():
    output = _run("bench_train.py", "--iters", "2", "--images", "16", "--batch", "2")
    assert len(_table_rows(output)) >= 3


def test_bench_train_step_runs_every_variant_on_cpu():
    output = _run("bench_train_step.py", "--size", "64", "--iters", "1", "--warmup", "0", "--batch", "1")
    assert len(_table_rows(output)) >= 3


def test_reference_torchvision_trains_and_evaluates(tmp_path):
    from mrcnn.data.synthetic import make_synthetic_coco

    make_synthetic_coco(tmp_path, num_train=4, num_val=2, size=64, seed=0)
    output = _run("reference_torchvision.py", "--data", str(tmp_path), "--iters", "2", "--batch", "2", "--size", "64")
    result = json.loads(output.strip().splitlines()[-1])
    assert "segm" in json.dumps(result)


def test_bench_input_pipeline_reports_throughput_and_wait_fraction():
    output = _run("bench_input_pipeline.py", "--repeat", "1", "--passes", "2", "--batch", "2", "--threads", "0", "2",
                  "--step-ms", "5", "--busy", "0.5", "--augmentation", "flip", "--dtypes")  # fmt: skip
    result = json.loads(output.strip().splitlines()[-1])
    assert [row[0] for row in result["throughput"]] == [0, 2]
    assert set(result["wait_fraction"]) == {"0", "2"} and all(0 <= f <= 1 for f in result["wait_fraction"].values())
    assert all(seconds > 0 for seconds in result["first_wait_s"].values())
    assert result["steps"] == {"0": 6, "2": 6}  # 2 passes of 3 batches each
    assert set(result["dtypes_ms_per_image"]) == {"uint8 (mrcnn train)", "float32"}


def test_bench_mask_areas_compares_both_counts():
    rows = _table_rows(_run("bench_mask_areas.py", "--repeats", "1", "--scale", "0.1"))
    assert len(rows) == 5 and all(row[-1] == "True" for row in rows[1:])


def test_keypoint_recipe_scores_the_holdout_at_each_step_asked(tmp_path):
    output = _run("keypoint_recipe.py", "--size", "64", "--steps", "2", "--eval-at", "1,2", "--batch", "2", "--train", "2",
                  "--holdout", "2", "--flip", "--data", str(tmp_path))  # fmt: skip
    rows = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert [row["step"] for row in rows] == [1, 2]
    assert all(0 <= row["keypoints_AP"] <= 100 and row["cpu_s_per_step"] > 0 for row in rows)
    assert (rows[0]["preset"], rows[0]["size"], rows[0]["flip"]) == ("r18_fpn_small_keypoints", 64, True)
    assert (tmp_path / "holdout-s64-seed1000" / "val" / "annotations.json").is_file()


def test_demo_recipe_scores_the_holdout_at_each_step_asked(tmp_path):
    output = _run("demo_recipe.py", "--data", str(tmp_path), "--size", "64", "--steps", "2", "--eval-at", "1,2",
                  "--batch", "2", "--train", "2", "--holdout", "2", "--override", '{"solver.warmup_iters": 1}')  # fmt: skip
    rows = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert [row["step"] for row in rows] == [1, 2]
    assert all(0 <= row["segm_AP"] <= 100 and row["cpu_s_per_step"] > 0 for row in rows)
    assert (rows[0]["size"], rows[0]["override"]) == (64, {"solver.warmup_iters": 1})
    holdout = json.loads((tmp_path / "easy-s64-n2-h2-seed12345" / "val" / "annotations.json").read_text())
    assert (holdout["info"]["seed"], holdout["info"]["difficulty"], len(holdout["images"])) == (12345, "easy", 2)
