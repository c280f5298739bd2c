#!/usr/bin/env bash
# Lifted Bregman inversion against the back-propagation baseline, as `lifted invert -m` sweeps over
# method x delta (x alpha), one report per part:
#   perceptron:       the random ReLU perceptron 4096 -> 512 on 64x64 images, TV, alpha 0.015; also the
#                     lifted output clamped to f_delta (the theorem's form);
#   autoencoder:      the encoder (layers 1..2, code 300) of `lifted train experiment=autoencoder`, trained
#                     here; back-propagation at alpha in {1.5e-4, 3e-4, 6e-4, 9e-3}, lifted at half of each
#                     (eliminating the free output z_L leaves lambda/(1+lambda) of back-propagation's data
#                     weight: half for lambda = 1); also lifted with data_weight=10 and with a clamped output;
#   conv_autoencoder: the code (layers 1..3) of `lifted train experiment=conv_autoencoder scheme=backprop`
#                     (trained here, or CONV_CHECKPOINT=<run>), back-propagation at alpha in
#                     {1e-3, 3e-3, 1e-2, 3e-2, 6e-2}, lifted at half.
# Each report holds, per setting, the PSNR/SSIM and relative error ||u - u_true|| / ||u_true|| of the
# recovered inputs (mean +- std over the images), their change from delta = 0 (the stability), PSNR
# tables alpha x delta and the best alpha per method and delta.
#
#   scripts/benchmark_invert.sh [--quick] [PARTS] [lifted overrides]   # PARTS: a comma list, default all
#   CONV_CHECKPOINT=<run> scripts/benchmark_invert.sh conv_autoencoder
#
# --quick: 2,000 training images for the autoencoders, 300 iterations.
set -euo pipefail
source "$(dirname "$0")/common.sh"
PARTS=perceptron,autoencoder,conv_autoencoder
if [ -n "${1:-}" ] && [[ "$1" != *=* ]]; then PARTS=$1; shift; fi
for p in ${PARTS//,/ }; do
  case "$p" in perceptron|autoencoder|conv_autoencoder) ;; *) echo "benchmark_invert.sh: unknown part '$p'; allowed: perceptron, autoencoder, conv_autoencoder" >&2; exit 2;; esac
done
if [ "$MODE" = quick ]; then SMALL=(train_size=2000 test_size=500); INV=(iterations=300); SUFFIX=_quick
else SMALL=(); INV=(); SUFFIX=; fi
RUNS="results/benchmark-runs/invert-$MODE-$STAMP"
DELTAS=delta=0,0.01,0.05,0.1
COMMON=(progress=false "${INV[@]}" "$@")
SECONDS=0
has() { [[ ",$PARTS," == *",$1,"* ]]; }

if has perceptron; then
  sweep invert -m experiment=perceptron_inversion method=lifted_bregman,backprop "$DELTAS" "${COMMON[@]}" \
    "hydra.sweep.dir=$RUNS/perceptron/free"
  sweep invert -m experiment=perceptron_inversion method=lifted_bregman output=clamped "$DELTAS" "${COMMON[@]}" \
    "hydra.sweep.dir=$RUNS/perceptron/clamped"
  report "results/benchmarks/inversion_perceptron$SUFFIX" "$RUNS/perceptron" --pivot method,delta --baseline delta=0
fi
if has autoencoder; then
  AE="$RUNS/autoencoder/network"
  "$LIFTED" train experiment=autoencoder progress=false "${SMALL[@]}" "$@" "hydra.run.dir=$AE"
  sweep invert -m experiment=autoencoder_inversion "checkpoint=$AE" method=backprop alpha=1.5e-4,3e-4,6e-4,9e-3 \
    "$DELTAS" "${COMMON[@]}" "hydra.sweep.dir=$RUNS/autoencoder/backprop"
  sweep invert -m experiment=autoencoder_inversion "checkpoint=$AE" method=lifted_bregman alpha=7.5e-5,1.5e-4,3e-4,4.5e-3 \
    "$DELTAS" "${COMMON[@]}" "hydra.sweep.dir=$RUNS/autoencoder/lifted"
  sweep invert -m experiment=autoencoder_inversion "checkpoint=$AE" method=lifted_bregman data_weight=10 alpha=2.7e-4 \
    "$DELTAS" "${COMMON[@]}" "hydra.sweep.dir=$RUNS/autoencoder/lifted_dw10"
  sweep invert -m experiment=autoencoder_inversion "checkpoint=$AE" method=lifted_bregman output=clamped alpha=1.5e-4 \
    "$DELTAS" "${COMMON[@]}" "hydra.sweep.dir=$RUNS/autoencoder/lifted_clamped"
  report "results/benchmarks/inversion_autoencoder$SUFFIX" "$RUNS/autoencoder/backprop" "$RUNS/autoencoder/lifted" \
    "$RUNS/autoencoder/lifted_dw10" "$RUNS/autoencoder/lifted_clamped" --pivot alpha,delta --best alpha --baseline delta=0
fi
if has conv_autoencoder; then
  CONV="${CONV_CHECKPOINT:-$RUNS/conv_autoencoder/network}"
  [ -n "${CONV_CHECKPOINT:-}" ] || "$LIFTED" train experiment=conv_autoencoder scheme=backprop progress=false \
    "${SMALL[@]}" "$@" "hydra.run.dir=$CONV"
  sweep invert -m experiment=autoencoder_inversion "checkpoint=$CONV" upto=layer3 method=backprop \
    alpha=1e-3,3e-3,1e-2,3e-2,6e-2 "$DELTAS" "${COMMON[@]}" "hydra.sweep.dir=$RUNS/conv_autoencoder/backprop"
  sweep invert -m experiment=autoencoder_inversion "checkpoint=$CONV" upto=layer3 method=lifted_bregman \
    alpha=5e-4,1.5e-3,5e-3,1.5e-2,3e-2 "$DELTAS" "${COMMON[@]}" "hydra.sweep.dir=$RUNS/conv_autoencoder/lifted"
  report "results/benchmarks/inversion_conv_autoencoder$SUFFIX" "$RUNS/conv_autoencoder/backprop" \
    "$RUNS/conv_autoencoder/lifted" --pivot alpha,delta --best alpha --baseline delta=0
fi
echo "benchmark_invert.sh ($MODE, $PARTS): ${SECONDS} s wall time"
