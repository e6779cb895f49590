"""`mrcnn.runtime.keep_freed_memory`: freed memory is reused instead of page-faulted in again.

Each case runs in a fresh process: the setting is process-wide and cannot be undone.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc malloc only")

# Page faults of allocating, touching and freeing a 64 MiB tensor 10 times, before and after the statement
# under test (``CALL``, which sets ``result``).
SCRIPT = r"""
import json, resource, sys
import torch
sys.path.insert(0, sys.argv[1])

def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        x = torch.empty(16 * 1024 * 1024)
        x.fill_(1.0)
        del x
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

from mrcnn import runtime
before = faults()
CALL
faults()  # the heap grows to hold the block once
after = faults()
print(json.dumps({"result": result, "kept": runtime.freed_memory_kept(), "before": before, "after": after}))
"""

PREDICTOR = """
from mrcnn.config import get_preset
from mrcnn.data.categories import CategoryMap
from mrcnn.modeling import build_model
from mrcnn.predictor import Predictor
cfg = get_preset("r18_fpn_small")
Predictor(build_model(cfg), config=cfg, categories=CategoryMap.from_names(["a", "b", "c"]){kwargs})
result = None
"""


def _run(call: str, **env: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT.replace("CALL", call), str(ROOT)],
        capture_output=True, text=True, timeout=300, check=False, env={**os.environ, **env},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_keep_freed_memory_stops_the_page_faults():
    out = _run("result = runtime.keep_freed_memory()")
    assert out["result"] is True and out["kept"] is True
    # 10 x 64 MiB touched = about 164k faults of 4 KiB pages with glibc's default (a fresh mmap each time);
    # afterwards the block stays in the heap and is reused (0 faults measured here).
    assert out["before"] > 100_000
    assert out["after"] < out["before"] / 10


def test_environment_variable_turns_it_off():
    out = _run("result = runtime.keep_freed_memory()", MRCNN_KEEP_FREED_MEMORY="0")
    assert out["result"] is False and out["kept"] is False
    assert out["after"] > out["before"] / 2


def test_the_cpu_predictor_applies_it_unless_told_not_to():
    assert _run(PREDICTOR.format(kwargs=""))["kept"] is True
    assert _run(PREDICTOR.format(kwargs=", keep_freed_memory=False"))["kept"] is False
