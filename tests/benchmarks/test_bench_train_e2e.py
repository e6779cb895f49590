"""The end-to-end GPU case's own arithmetic and its GPU sampler, which a CPU machine cannot run for real: the
figures from stamped steps, and utilisation read from an ``nvidia-smi`` stand-in."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_train_e2e


def test_summarize_times_the_steps_after_the_warmup():
    # 2 warm-up steps (slow), then 3 steps ending 0.5 s apart, 8 images each.
    stamps = [100.0, 103.0, 103.5, 104.0, 104.5]
    steps = [{"t": t, "step_s": 0.4, "data_wait_s": 0.1 if i >= 2 else 2.0, "images": 8} for i, t in enumerate(stamps)]

    sampler = bench_train_e2e.GpuSampler()  # not started: its samples set by hand
    sampler.samples = [(102.9, 0.0), (103.2, 90.0), (104.4, 60.0), (104.6, 0.0)]
    result = bench_train_e2e.summarize(steps, 2, sampler)
    assert result["images_per_s"] == pytest.approx(24 / 1.5)
    assert result["loop_s"] == pytest.approx((0.5, 0.5, 0.5))
    assert result["wait_fraction"] == pytest.approx(0.3 / 1.2)
    assert result["gpu_util"] == pytest.approx(75.0)  # only the samples inside the measured window
    assert result["steps"] == 3
    with pytest.raises(ValueError, match="warm-up"):
        bench_train_e2e.summarize(steps, 5, None)


def test_gpu_sampler_reads_nvidia_smi(tmp_path, monkeypatch):
    fake = tmp_path / "nvidia-smi"
    fake.write_text('#!/bin/sh\n[ "$1 $2" = "-i 0" ] && echo " 37"\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    monkeypatch.setitem(sys.modules, "pynvml", None)  # no pynvml: the nvidia-smi path
    with bench_train_e2e.GpuSampler(index=0, interval_ms=20) as sampler:
        start = time.time()
        time.sleep(0.5)
    assert sampler.source == "nvidia-smi"
    assert sampler.samples and {value for _, value in sampler.samples} == {37.0}
    assert sampler.mean_between(start, time.time()) == 37.0
    assert sampler.mean_between(0, 1) is None

    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with bench_train_e2e.GpuSampler() as none:
        pass
    assert none.source is None and none.samples == []
