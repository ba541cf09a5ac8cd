#!/usr/bin/env bash
# Create .venv (if absent) and install mstdiff with its test tools.
# PyTorch's CPU build 2.13.0 is installed first, so that `torch>=2.4` in pyproject.toml is already
# satisfied and pip does not pull the multi-GB CUDA build. GPU users: see README ("GPU").
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -c "import torch" 2>/dev/null || python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[dev]"
