#!/usr/bin/env bash
# Learning per step, ours vs the torchvision reference loop, at equal steps on a fast device:
#   bash benchmarks/learning_check.sh [DEVICE] [ITERS] [OVERRIDE_JSON...]
# Writes the demo's synthetic data (400 train / 100 val, 128 px), then one JSON line per run.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python3 -c "import pycocotools" 2>/dev/null && ls .whl/pycocotools-*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/pycocotools-*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1 PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}
device=${1:-cuda}; iters=${2:-262}; shift 2 || true
data=${DATA:-/tmp/learning_check_data}
[ -f "$data/val/annotations.json" ] || python3 -c "
from mrcnn.data.synthetic import make_synthetic_coco
make_synthetic_coco('$data', num_train=400, num_val=100, seed=0)"
python3 benchmarks/reference_torchvision.py --data "$data" --iters "$iters" --device "$device" 2>&1 | grep '^{' || true
for override in '{}' "$@"; do
  python3 benchmarks/reference_torchvision.py --data "$data" --iters "$iters" --device "$device" --ours --override "$override" 2>&1 | grep '^{' || true
done
