#!/usr/bin/env bash
# Learning per step, ours vs the torchvision reference loop, at equal steps on a fast device:
#   bash benchmarks/learning_check.sh [DEVICE] [ITERS] [OVERRIDE_JSON...]
# Writes a synthetic set (400 train from seed 0 / 100 val from seed HOLDOUT_SEED, 128 px, difficulty
# DIFFICULTY: default "default"; the demo's is "easy"), then one JSON line per run.
#   DIFFICULTY=easy HOLDOUT_SEED=12345 bash benchmarks/learning_check.sh cuda 210
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python3 -c "import pycocotools" 2>/dev/null && ls .whl/pycocotools-*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/pycocotools-*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1 PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}
device=${1:-cuda}; iters=${2:-262}; shift 2 || true
difficulty=${DIFFICULTY:-default}; holdout_seed=${HOLDOUT_SEED:-0}
data=${DATA:-/tmp/learning_check_data_${difficulty}_${holdout_seed}}
[ -f "$data/val/annotations.json" ] || python3 -c "
import shutil
from mrcnn.data.synthetic import make_synthetic_coco
make_synthetic_coco('$data', num_train=400, num_val=0, seed=0, difficulty='$difficulty')
make_synthetic_coco('$data.holdout', num_train=0, num_val=100, seed=$holdout_seed, difficulty='$difficulty')
shutil.rmtree('$data/val'); shutil.move('$data.holdout/val', '$data/val'); shutil.rmtree('$data.holdout')"
python3 benchmarks/reference_torchvision.py --data "$data" --iters "$iters" --device "$device" 2>&1 | grep '^{' || true
for override in '{}' "$@"; do
  python3 benchmarks/reference_torchvision.py --data "$data" --iters "$iters" --device "$device" --ours --override "$override" 2>&1 | grep '^{' || true
done
