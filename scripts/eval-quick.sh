#!/usr/bin/env bash
# The `--quick` presets of `temperance eval`, as CI runs them (each under 5 minutes on this
# machine): exact scoring, generation, CALM, then the report. Usage: scripts/eval-quick.sh [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-artifacts/eval-quick}
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1
PY=${PYTHON:-python}
rm -rf "$OUT"
for cmd in score generate calm; do
  start=$(date +%s)
  "$PY" -m temperance eval "$cmd" --quick --out "$OUT" --no-report
  echo "eval-quick: $cmd took $(( $(date +%s) - start )) s"
done
"$PY" -m temperance eval report "$OUT"
test -s "$OUT/report.html" && test -s "$OUT/rows.jsonl"
