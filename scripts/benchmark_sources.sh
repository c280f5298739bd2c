#!/usr/bin/env bash
# Every scheme at its tuned defaults (tuned on MNIST) against back-propagation on another image
# source: natural-image patches by default (28 x 28 patches of the photographs in scikit-image's wheel,
# split by whole photographs), denoising with noise std 0.1 and 0.3, 5 epochs.
#   mlp: all 40,968 training patches, seeds 0 and 1;
#   conv_autoencoder: the first 10,000 training patches, seed 0 (its step is about 20x the mlp's on a CPU).
# Every run is tested on all 14,219 test patches (the four test photographs). One report per
# architecture: the pivot scheme x task.sigma and each group's PSNR difference and time ratio to
# back-propagation, measured in the same invocation on the same machine.
#
#   scripts/benchmark_sources.sh                              # natural patches (about 45 min on 2 cores with joblib)
#   SOURCE=fashion_mnist scripts/benchmark_sources.sh         # another source
#   scripts/benchmark_sources.sh --quick                      # 2,000 / 500 images, 1 epoch
#
# Extra arguments go to every `lifted train` (e.g. hydra/launcher=joblib hydra.launcher.n_jobs=2).
set -euo pipefail
source "$(dirname "$0")/common.sh"
SOURCE="${SOURCE:-natural_patches}"
if [ "$MODE" = quick ]; then
  MLP=(train_size=2000 test_size=500 epochs=1); CONV=(train_size=2000 test_size=500 epochs=1); SUFFIX=_quick
else
  MLP=(epochs=5); CONV=(train_size=10000 epochs=5); SUFFIX=
fi
OUT="results/benchmarks/sources_$SOURCE$SUFFIX"
RUNS="results/benchmark-runs/sources-$SOURCE-$MODE-$STAMP"
SCHEMES=scheme=backprop,bregman,mac,fenchel,contrastive
SECONDS=0
sweep train -m "source=$SOURCE" arch=mlp "$SCHEMES" task.sigma=0.1,0.3 seed=0,1 "${MLP[@]}" num_samples=4 progress=false \
  "$@" "hydra.sweep.dir=$RUNS/mlp"
sweep train -m "source=$SOURCE" arch=conv_autoencoder "$SCHEMES" task.sigma=0.1,0.3 seed=0 "${CONV[@]}" num_samples=4 \
  progress=false "$@" "hydra.sweep.dir=$RUNS/conv_autoencoder"
for arch in mlp conv_autoencoder; do
  report "$OUT/$arch" "$RUNS/$arch" --pivot scheme,task.sigma --baseline scheme=backprop
done
echo "benchmark_sources.sh ($MODE, source=$SOURCE): ${SECONDS} s wall time; reports in $OUT/{mlp,conv_autoencoder}" \
  | tee "$OUT/wall_time.txt"
