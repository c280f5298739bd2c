#!/usr/bin/env bash
# The GPU checks of one session, sized for one command of at most 10 minutes on a lent GPU machine:
#   1. tests/test_cuda.py (every CUDA path: training, resume on the CPU, inversion, stacked,
#      persistent and red-black runs), at most TEST_S seconds;
#   2. the depth benchmark on the GPU (scripts/benchmark_depth.py --device cuda) with the rest of the
#      budget: 2 epochs of 10,000 images, back-propagation and the stacked methods first, the sweeps
#      stopped when --budget-s is spent (the finished runs are reported).
# Reports go to $OUT (or results/benchmarks/ when OUT is unset): test_cuda.txt and depth_cuda/ (8 files).
#
#   OUT=/tmp/out bash scripts/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-results/benchmarks}"
TEST_S="${TEST_S:-150}"
BUDGET_S="${BUDGET_S:-330}"
mkdir -p "$OUT"
[ -x .venv/bin/python ] || make install >/dev/null
[ -f data/MNIST/raw/train-images-idx3-ubyte ] || .venv/bin/lifted data >/dev/null
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/test_cuda.txt" 2>&1
timeout "$TEST_S" .venv/bin/python -m pytest -q -p no:cacheprovider tests/test_cuda.py >> "$OUT/test_cuda.txt" 2>&1
echo "pytest exit status: $?" >> "$OUT/test_cuda.txt"
tail -3 "$OUT/test_cuda.txt"
.venv/bin/python scripts/benchmark_depth.py --device cuda --budget-s "$BUDGET_S" --epochs 2 --train-size 10000 \
  --test-size 1000 --methods backprop,stacked_jacobi,stacked_red_black,loop --out "$OUT/depth_cuda" \
  --runs /tmp/depth-cuda-runs
