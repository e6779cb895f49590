"""The library never pulls in the application's stack: importing mrcnn leaves Ray and MLflow unloaded."""

from __future__ import annotations

import json
import subprocess
import sys

MODULES = (
    "mrcnn",
    "mrcnn.config",
    "mrcnn.modeling",
    "mrcnn.checkpoint",
    "mrcnn.inference",
    "mrcnn.predictor",
    "mrcnn.engine",
    "mrcnn.evaluation",
    "mrcnn.solver",
    "mrcnn.records",
    "mrcnn.visualize",
    "mrcnn.data",
)
FORBIDDEN = ("ray", "mlflow")

PROBE = f"""
import json, sys
import {", ".join(MODULES)}
loaded = sorted(m for m in sys.modules if m.split(".")[0] in {FORBIDDEN!r})
print(json.dumps({{"loaded": loaded, "mrcnn": sorted(m for m in sys.modules if m.startswith("mrcnn"))}}))
"""


def _run(code: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_importing_mrcnn_loads_neither_ray_nor_mlflow():
    report = _run(PROBE)
    assert report["loaded"] == []
    assert set(MODULES) <= set(report["mrcnn"])  # the probe really imported what it claims


def test_the_probe_would_notice_a_forbidden_import():
    # A stand-in 'mlflow.tracking' module registered by hand shows up in the same check.
    report = _run("import types, sys; sys.modules['mlflow.tracking'] = types.ModuleType('mlflow.tracking')\n" + PROBE)
    assert report["loaded"] == ["mlflow.tracking"]
