#!/usr/bin/env bash
# One short GPU check for a lent H100/H200: AMP training steps and inference latency (see gpu_check.py).
# Usage: bash benchmarks/gpu_check.sh [extra gpu_check.py args]
# On the device machine, pycocotools may be missing: carry its wheel in .whl/ and it is installed first.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python3 -c "import pycocotools" 2>/dev/null && ls .whl/pycocotools-*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/pycocotools-*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
export PYTHONUNBUFFERED=1
exec python3 benchmarks/gpu_check.py "$@"
