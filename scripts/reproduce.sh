#!/usr/bin/env bash
# Reproduce the comparisons of the chapter with `lifted train -m`, `lifted invert -m` and `lifted report`.
#
#   scripts/reproduce.sh --quick   # subsets sized to a 2-core CPU (under 30 minutes); report in
#                                  # results/benchmarks/reproduce_quick/
#   scripts/reproduce.sh           # full MNIST, literature epochs, for a GPU (device=auto); report in
#                                  # results/benchmarks/reproduce/
#
# Extra arguments after the mode are passed to every `lifted train` / `lifted invert` call
# (e.g. device=cuda:1, or hydra/launcher=joblib to run the jobs of each sweep in parallel).
set -euo pipefail
cd "$(dirname "$0")/.."
LIFTED="${LIFTED:-.venv/bin/lifted}"
[ -x "$LIFTED" ] || LIFTED=lifted

MODE=full
if [ "${1:-}" = "--quick" ]; then MODE=quick; shift; fi
EXTRA=("$@")
STAMP=$(date +%Y-%m-%d_%H-%M-%S)
RUNS="results/reproduce-runs/$MODE-$STAMP"
if [ "$MODE" = quick ]; then
  OUT=results/benchmarks/reproduce_quick
  TRAIN=(train_size=10000 test_size=1000 epochs=3 progress=false)
  DAE1=(epochs=10 test_size=1000 progress=false)
  DAE10=(epochs=3 test_size=1000 progress=false)
  AE=(train_size=10000 test_size=1000 epochs=3 progress=false)
  INV=(iterations=300 progress=false)
else
  OUT=results/benchmarks/reproduce
  TRAIN=(epochs=20 progress=false)
  DAE1=(progress=false)
  DAE10=(progress=false)
  AE=(epochs=20 progress=false)
  INV=(progress=false)
fi
SECONDS=0
echo "== lifted Bregman vs back-propagation, proximal activations, three tasks, seeds 0 and 1"
"$LIFTED" train -m experiment=prox_mlp scheme=backprop,bregman task=denoise,deblur,inpaint \
  seed=0,1 "${TRAIN[@]}" "${EXTRA[@]}" "hydra.sweep.dir=$RUNS/compare"
echo "== sparse denoising autoencoder, 1,000 and 10,000 images"
"$LIFTED" train -m experiment=sparse_dae scheme=backprop,bregman "${DAE1[@]}" "${EXTRA[@]}" "hydra.sweep.dir=$RUNS/sparse_dae"
"$LIFTED" train -m experiment=sparse_dae_10k scheme=backprop,bregman "${DAE10[@]}" "${EXTRA[@]}" "hydra.sweep.dir=$RUNS/sparse_dae_10k"
echo "== perceptron inversion"
"$LIFTED" invert -m experiment=perceptron_inversion method=lifted_bregman,backprop delta=0,0.01,0.05,0.1 \
  "${INV[@]}" "${EXTRA[@]}" "hydra.sweep.dir=$RUNS/perceptron_inversion"
echo "== autoencoder, then the inversion of its code"
"$LIFTED" train experiment=autoencoder "${AE[@]}" "${EXTRA[@]}" "hydra.run.dir=$RUNS/autoencoder"
# lifted (free output, data_weight 1) weighs the data half as much as back-propagation: alpha/2 pairs with alpha
"$LIFTED" invert -m experiment=autoencoder_inversion "checkpoint=$RUNS/autoencoder" alpha=9e-3,6e-4,3e-4 \
  method=backprop delta=0,0.01,0.05,0.1 "${INV[@]}" "${EXTRA[@]}" "hydra.sweep.dir=$RUNS/autoencoder_inversion_backprop"
"$LIFTED" invert -m experiment=autoencoder_inversion "checkpoint=$RUNS/autoencoder" alpha=4.5e-3,3e-4,1.5e-4 \
  method=lifted_bregman delta=0,0.01,0.05,0.1 "${INV[@]}" "${EXTRA[@]}" "hydra.sweep.dir=$RUNS/autoencoder_inversion_lifted"
echo "== report"
rm -rf "$OUT"
"$LIFTED" report "$RUNS/compare" "$RUNS/sparse_dae" "$RUNS/sparse_dae_10k" "$RUNS/perceptron_inversion" \
  "$RUNS/autoencoder_inversion_backprop" "$RUNS/autoencoder_inversion_lifted" --out "$OUT"
echo "reproduce.sh ($MODE): ${SECONDS} s wall time; report in $OUT/report.md" | tee "$OUT/wall_time.txt"
