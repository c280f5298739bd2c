# Shared by the benchmark scripts: the `lifted` to call, --quick, extra arguments, the runs folder.
#   LIFTED: the console script (default .venv/bin/lifted, else `lifted` on the PATH)
#   sweep ARGS...: `lifted ARGS` for a multirun; exit status 2 (some combinations were named invalid
#   and skipped, the others ran) is not a failure of the benchmark
cd "$(dirname "$0")/.."
LIFTED="${LIFTED:-.venv/bin/lifted}"
[ -x "$LIFTED" ] || LIFTED=lifted
MODE=full
if [ "${1:-}" = "--quick" ]; then MODE=quick; shift; fi
STAMP=$(date +%Y-%m-%d_%H-%M-%S)

sweep() {
  local status=0
  echo "\$ lifted $*"
  "$LIFTED" "$@" || status=$?
  [ "$status" -le 2 ] || { echo "lifted $1 failed with status $status" >&2; exit "$status"; }
}

# report OUT FOLDER... [OPTIONS]: a fresh `lifted report` of the run folders into OUT
report() {
  local out=$1
  shift
  rm -rf "$out"
  "$LIFTED" report "$@" --out "$out"
}
