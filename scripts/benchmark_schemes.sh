#!/usr/bin/env bash
# Every scheme on every architecture: MNIST denoising (sigma 0.3), each scheme with its default solver
# and every other setting at its default, as one `lifted train -m` sweep; the combinations the
# mathematics does not allow (fenchel on proxnet and unrolled_pnn) are named and skipped. The report:
# the test PSNR of each (arch, scheme) as a table, and each scheme's difference to back-propagation.
#
#   scripts/benchmark_schemes.sh           # full MNIST, 5 epochs (about 140 minutes on a 2-core CPU)
#   scripts/benchmark_schemes.sh --quick   # 2,000 / 500 images, 1 epoch (a few minutes)
#   ARCHS=mlp,resnet OUT=results/benchmarks/schemes_x_archs_mlp_resnet scripts/benchmark_schemes.sh
#                                          # some architectures only, into a report folder of their own
#   SCHEMES=backprop,bregman ARCHS=conv_autoencoder OUT=... scripts/benchmark_schemes.sh   # and some schemes
#
# Every pair runs with its defaults, the tuned ones (configs/tuned, scripts/tune.py) where they exist.
# Extra arguments go to `lifted train` (e.g. device=cuda, hydra/launcher=joblib hydra.launcher.n_jobs=4).
set -euo pipefail
source "$(dirname "$0")/common.sh"
ARCHS="${ARCHS:-mlp,resnet,proxnet,unrolled_pnn,conv_autoencoder}"
SCHEMES="${SCHEMES:-backprop,bregman,mac,fenchel,contrastive}"
if [ "$MODE" = quick ]; then SIZES=(train_size=2000 test_size=500 epochs=1); OUT="${OUT:-results/benchmarks/schemes_x_archs_quick}"
else SIZES=(epochs=5); OUT="${OUT:-results/benchmarks/schemes_x_archs}"; fi
RUNS="results/benchmark-runs/schemes-$MODE-$STAMP"
SECONDS=0
sweep train -m "scheme=$SCHEMES" "arch=$ARCHS" \
  "${SIZES[@]}" progress=false "$@" "hydra.sweep.dir=$RUNS"
# the pivot table needs two swept keys, the baseline a back-propagation run beside the others
EXTRA=()
if [[ "$ARCHS" == *,* && "$SCHEMES" == *,* ]]; then EXTRA+=(--pivot arch,scheme); fi
if [[ ",$SCHEMES," == *,backprop,* && "$SCHEMES" == *,* ]]; then EXTRA+=(--baseline scheme=backprop); fi
report "$OUT" "$RUNS" "${EXTRA[@]}"
echo "benchmark_schemes.sh ($MODE): ${SECONDS} s wall time; report in $OUT/report.md" | tee "$OUT/wall_time.txt"
