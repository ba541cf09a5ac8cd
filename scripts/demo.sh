#!/usr/bin/env bash
# One command: set up .venv and run the offline demo end to end on the synthetic city.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
OUT="${1:-runs/demo}"
mstdiff run configs/demo.yaml --out "$OUT" --overwrite  # prints the metrics table once
echo
echo "Run directory: $OUT (plots under $OUT/evaluate/plots)"
# the generated set must pass its own sanity checks (possible values, realistic moves)
mstdiff sanity "$OUT/evaluate" > /dev/null && echo "Sanity checks: passed." \
    || { echo "Sanity checks failed: see the table above."; exit 1; }
