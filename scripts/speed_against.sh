#!/usr/bin/env bash
# Step times of the working tree against a git revision, side by side in one process and one thread
# (scripts/compare_steps.py --against): lifted Bregman ISGM on mlp and resnet of width 256 at depths
# L = 2, 8, 32, blocks stepped alone (Gauss-Seidel, the default order, and Jacobi) and grouped into
# stacks (Jacobi, solver.stacked=auto: an mlp of depth 2 has nothing to group). Every variant of both
# versions alternates on the same batches, so their medians are measured under the same load.
#   scripts/speed_against.sh REV [OUT] [STEPS]     (default OUT results/benchmarks/one_core_speed.md, 30 steps)
set -euo pipefail
cd "$(dirname "$0")/.."
REV=${1:?usage: scripts/speed_against.sh REV [OUT] [STEPS]}
OUT=${2:-results/benchmarks/one_core_speed.md}
STEPS=${3:-30}
PY=${PY:-.venv/bin/python}
TMP=$(mktemp)
trap 'rm -f "$TMP"' EXIT
START=$(date +%s)
for arch in mlp resnet; do
  for L in 2 8 32; do
    OMP_NUM_THREADS=1 "$PY" scripts/compare_steps.py --against "$REV" --markdown --steps "$STEPS" \
      "arch=$arch arch.depth=$L arch.width=256 ~tuned" \
      "solver.stacked=false" "solver.layer_order=jacobi solver.stacked=false" \
      "solver.layer_order=jacobi solver.stacked=auto" >> "$TMP"
  done
done
{
  echo "# Step times: $(git rev-parse --short HEAD) (working tree) against $REV"
  echo
  echo "Command: \`scripts/speed_against.sh $REV $OUT $STEPS\` ($(date +%Y-%m-%d), $(( $(date +%s) - START )) s)."
  echo "Machine: $("$PY" -c 'from lifted_cli.benchmarks import machine; print(machine("cpu"))'); one thread."
  echo "Lifted Bregman ISGM (\`~tuned\`: the solver's own defaults), batch 128 of MNIST-sized random images, the"
  echo "first 2 of $STEPS steps of each variant not counted; median ms per step (first and third quartile),"
  echo "both versions' steps alternating in one process. Ratio: working tree / $REV."
  echo
  echo "| configuration | variant | $REV ms | working tree ms | ratio |"
  echo "|---|---|---|---|---|"
  cat "$TMP"
} > "$OUT"
echo "$OUT"
