#!/usr/bin/env bash
# The chapter's Fashion-MNIST experiment: the sparse denoising autoencoder 784-784-784-784-784
# (soft-thresholded code, sparsity on it) trained by lifted Bregman (ISGM) and by back-propagation
# (Adam) on 1,000 images (20 epochs) and on 10,000 images (10 epochs), seeds 0 and 1, denoising with
# noise std 0.3, one sweep; the report gives each run's PSNR difference and time ratio to
# back-propagation, measured in the same invocation on the same machine.
#
#   scripts/benchmark_sparse_dae.sh                          # Fashion-MNIST (needs it in the data cache)
#   SOURCE=natural_patches scripts/benchmark_sparse_dae.sh   # the same on natural-image patches
#   scripts/benchmark_sparse_dae.sh --quick                  # 500 test images, 2 epochs
#
# Extra arguments go to every `lifted train` (e.g. device=cuda, hydra/launcher=joblib).
set -euo pipefail
source "$(dirname "$0")/common.sh"
SOURCE="${SOURCE:-fashion_mnist}"
if [ "$MODE" = quick ]; then EXTRA=(test_size=500 epochs=2); SUFFIX=_quick; else EXTRA=(); SUFFIX=; fi
OUT="results/benchmarks/sparse_dae_$SOURCE$SUFFIX"
RUNS="results/benchmark-runs/sparse-dae-$SOURCE-$MODE-$STAMP"
SECONDS=0
sweep train -m experiment=sparse_dae_fashion,sparse_dae_fashion_10k "source=$SOURCE" scheme=backprop,bregman seed=0,1 \
  "${EXTRA[@]}" progress=false "$@" "hydra.sweep.dir=$RUNS"
report "$OUT" "$RUNS" --baseline scheme=backprop
echo "benchmark_sparse_dae.sh ($MODE, source=$SOURCE): ${SECONDS} s wall time; report in $OUT/report.md" | tee "$OUT/wall_time.txt"
