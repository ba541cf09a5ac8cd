#!/usr/bin/env bash
# One command: set up .venv and run the linters and the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
ruff check src tests benchmarks
python -m pytest -q "$@"
