#!/usr/bin/env bash
# The GPU checks of one session, sized for one command of at most 10 minutes on a lent GPU machine:
#   1. tests/test_cuda.py (every CUDA path: training, resume on the CPU, inversion, stacked,
#      persistent and red-black runs), at most TEST_S seconds;
#   2. the depth benchmark on the GPU (scripts/benchmark_depth.py --device cuda) with the rest of the
#      budget: 2 epochs of 10,000 images, L = 4..64, back-propagation and lifted Bregman (stacked, forward
#      and persistent warm starts; default and kaiming init, chosen on validation), the sweeps
#      stopped when --budget-s is spent (the finished runs are reported).
# Reports go to $OUT (or results/benchmarks/ when OUT is unset): test_cuda.txt and depth_cuda/ (7 files).
# STEP=parallel runs instead (a second command, about 8 minutes) the parallel benchmark on the
# machine's CPUs up to P = 8 (2,000 images) and P = 1 on the GPU: $OUT/parallel_cpu16/, $OUT/parallel_cuda/.
#
# With a venv (`make install`) it uses it. On the lent machine (its python3 has torch, no network) it
# runs the source tree: prepare here, once,
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       -d .whl hydra-core==1.3.2 omegaconf==2.3.0
#   python3 -m pip wheel --no-deps -w .whl antlr4-python3-runtime==4.9.3   # published as source only
#   LIFTED_DATA=$PWD/data .venv/bin/lifted data            # MNIST in data/ (53 MB), carried to the device
# and call the device with carry [".whl", "data"] and `OUT=$OUT bash scripts/gpu_check.sh`.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-results/benchmarks}"
TEST_S="${TEST_S:-150}"
BUDGET_S="${BUDGET_S:-330}"
mkdir -p "$OUT"
if [ -x .venv/bin/python ]; then
  PY=.venv/bin/python
else
  PY=python3
  if [ -d .whl ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/site:$PWD"
  else
    export PYTHONPATH="$PWD"
  fi
  [ -e lifted_cli/configs ] || ln -s ../configs lifted_cli/configs  # what the wheel's package-dir does
fi
export PYTHONUNBUFFERED=1
export LIFTED_DATA="${LIFTED_DATA:-$PWD/data}"  # the device has no user cache: MNIST travels in data/
[ -f "$LIFTED_DATA/MNIST/raw/train-images-idx3-ubyte" ] || $PY -m lifted_cli data > /dev/null || exit 1
if [ "${STEP:-}" = parallel ]; then
  timeout 300 $PY scripts/benchmark_parallel.py --nproc 1,2,4,8 --train-size 2000 --out "$OUT/parallel_cpu16" \
    --runs /tmp/parallel-cpu-runs | tail -1
  timeout 150 $PY scripts/benchmark_parallel.py --device cuda --nproc 1 --train-size 5000 --groups data_strong,layer \
    --out "$OUT/parallel_cuda" --runs /tmp/parallel-cuda-runs | tail -1
  exit 0
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/test_cuda.txt" 2>&1
timeout "$TEST_S" $PY -m pytest -q -p no:cacheprovider tests/test_cuda.py >> "$OUT/test_cuda.txt" 2>&1
echo "pytest exit status: $?" >> "$OUT/test_cuda.txt"
tail -3 "$OUT/test_cuda.txt"
$PY scripts/benchmark_depth.py --device cuda --budget-s "$BUDGET_S" --epochs 2 --train-size 10000 \
  --test-size 1000 --depths 4,8,16,32,64 --methods backprop,lifted_forward,lifted_persistent --out "$OUT/depth_cuda" \
  --runs /tmp/depth-cuda-runs
