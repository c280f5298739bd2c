#!/usr/bin/env bash
# Lifted Bregman (ISGM, its default momentum 0.8, and plain ISGM with momentum 0) against
# back-propagation (Adam) with the same MLP 784-512-512-784, seed and epochs, on the three tasks,
# and the sparse denoising autoencoder on 1,000 and 10,000 images. The report gives every run's
# difference in PSNR and its ratio of seconds per epoch to back-propagation, measured in the same
# invocation on the same machine.
#
#   scripts/benchmark_bregman.sh           # full MNIST, 5 epochs (about 15 minutes on a 2-core CPU)
#   scripts/benchmark_bregman.sh --quick   # 2,000 / 500 images, 2 epochs
#
# Extra arguments go to every `lifted train` (e.g. device=cuda).
set -euo pipefail
source "$(dirname "$0")/common.sh"
if [ "$MODE" = quick ]; then
  SIZES=(train_size=2000 test_size=500 epochs=2); DAE=(test_size=500 epochs=2); OUT=results/benchmarks/bregman_vs_backprop_quick
else
  SIZES=(epochs=5); DAE=(); OUT=results/benchmarks/bregman_vs_backprop
fi
RUNS="results/benchmark-runs/bregman-$MODE-$STAMP"
TASKS=task=denoise,deblur,inpaint
SECONDS=0
sweep train -m "$TASKS" scheme=backprop,bregman "${SIZES[@]}" progress=false "$@" "hydra.sweep.dir=$RUNS/tasks"
sweep train -m "$TASKS" scheme=bregman solver.momentum=0 "${SIZES[@]}" progress=false "$@" "hydra.sweep.dir=$RUNS/plain_isgm"
sweep train -m experiment=sparse_dae,sparse_dae_10k scheme=backprop,bregman "${DAE[@]}" progress=false "$@" \
  "hydra.sweep.dir=$RUNS/sparse_dae"
report "$OUT" "$RUNS" --baseline scheme=backprop
echo "benchmark_bregman.sh ($MODE): ${SECONDS} s wall time; report in $OUT/report.md" | tee "$OUT/wall_time.txt"
