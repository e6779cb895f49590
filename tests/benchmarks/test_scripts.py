"""The benchmark scripts run (tiny sizes, CPU) and print their tables; no timing is asserted.

The GPU check in particular has to work the day a GPU is lent, so it is run here on the CPU.
"""

from __future__ import annotations

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
