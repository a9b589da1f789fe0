#!/usr/bin/env bash
# The CUDA check, ready for the day a GPU is lent (benchmarks/gpu_check.py says what it runs):
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]          # on a GPU machine: about 5 minutes; writes benchmarks/RESULTS-cuda.md
#   bash benchmarks/gpu_check.sh --dry [OUT_DIR]    # every step on the CPU, tiny (the test suite runs this)
#
# OUT_DIR (default: a new temporary folder) holds the generated data, the archives and gpu-check.json.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
DRY=()
if [ "${1:-}" = "--dry" ]; then
  DRY=(--dry)
  shift
fi
OUT=${1:-$(mktemp -d -t d3codec-gpu-check.XXXXXX)}
"${PYTHON:-python}" "$HERE/gpu_check.py" "$OUT" "${DRY[@]}"
if [ ${#DRY[@]} -eq 0 ]; then
  cp "$OUT/RESULTS-cuda.md" "$HERE/RESULTS-cuda.md"
  echo "wrote $HERE/RESULTS-cuda.md" >&2
fi
