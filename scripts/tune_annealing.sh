#!/usr/bin/env bash
# The per-epoch annealing of the weight steps (`solver.lr_decay`: lr * lr_decay^e in epoch e) for MAC,
# Fenchel (BCD with Adam W-steps) and contrastive (Adam) on mlp and resnet, ranked on validation at the
# full budget: 55,000 training / 5,000 validation images, 5 epochs, MNIST denoising. Every other
# setting is the pair's tuned default (configs/tuned). Back-propagation's own annealing was chosen the
# same way (results/benchmarks/tuning_findings.md, section 7). The report ranks the settings by
# validation PSNR (`--by val`) and names the best lr_decay per (arch, scheme) (`--best solver.lr_decay`).
#
#   scripts/tune_annealing.sh            # the full budget (64 minutes with two jobs on a 2-core CPU, beside other sweeps)
#   scripts/tune_annealing.sh --quick    # 2,500 training / 500 validation images, 2 epochs
#
# Extra arguments go to `lifted train` (e.g. hydra/launcher=joblib hydra.launcher.n_jobs=2, device=cuda).
set -euo pipefail
source "$(dirname "$0")/common.sh"
ARCHS="${ARCHS:-mlp,resnet}"
SCHEMES="${SCHEMES:-mac,fenchel,contrastive}"
DECAYS="${DECAYS:-1,0.7,0.5}"
if [ "$MODE" = quick ]; then SIZES=(train_size=2500 val_size=500 test_size=100 epochs=2); OUT="${OUT:-results/benchmarks/tuning_annealing_quick}"
else SIZES=(val_size=5000 epochs=5); OUT="${OUT:-results/benchmarks/tuning_annealing}"; fi
RUNS="results/benchmark-runs/annealing-$MODE-$STAMP"
SECONDS=0
sweep train -m "arch=$ARCHS" "scheme=$SCHEMES" "solver.lr_decay=$DECAYS" \
  "${SIZES[@]}" progress=false num_samples=0 "$@" "hydra.sweep.dir=$RUNS"
report "$OUT" "$RUNS" --by val --best solver.lr_decay
echo "tune_annealing.sh ($MODE): ${SECONDS} s wall time; report in $OUT/report.md" | tee "$OUT/wall_time.txt"
