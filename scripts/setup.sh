#!/usr/bin/env bash
# Create .venv (if absent) and install mstdiff with its test tools.
#
# PyTorch's CPU build 2.13.0 is installed first, from PyTorch's CPU wheel index, so that
# `torch>=2.4` in pyproject.toml is already satisfied and pip does not pull the multi-GB CUDA build
# that plain `pip install torch` gives on Linux x86-64. Where that index is unreachable (offline
# machines with a local wheel or a package mirror), it falls back to pip's configured index and
# says so. It prints which build it installed. GPU users: see README ("GPU").
# Set MSTDIFF_TORCH_INDEX to use another wheel index (e.g. https://download.pytorch.org/whl/cu126).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
TORCH_VERSION="2.13.0"
TORCH_INDEX="${MSTDIFF_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}"
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install -q --upgrade pip
if python -c "import torch" 2>/dev/null; then
    echo "setup: PyTorch already installed in .venv; keeping it"
else
    # a quick probe first: an unreachable index would otherwise cost pip's retries and timeouts
    if python - "$TORCH_INDEX" <<'PYEOF' 2>/dev/null
import sys, urllib.request
urllib.request.urlopen(sys.argv[1].rstrip("/") + "/torch/", timeout=10)
PYEOF
    then
        echo "setup: installing torch==$TORCH_VERSION from $TORCH_INDEX"
        python -m pip install -q "torch==$TORCH_VERSION" --index-url "$TORCH_INDEX"
    else
        echo "setup: $TORCH_INDEX is unreachable; installing torch==$TORCH_VERSION from pip's configured index"
        python -m pip install -q "torch==$TORCH_VERSION"
    fi
fi
python -m pip install -q -e ".[dev]"
python - <<'PYEOF'
import torch
build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU"
print(f"setup: PyTorch {torch.__version__} ({build} build); CUDA available: {torch.cuda.is_available()}")
if torch.version.cuda and not torch.cuda.is_available():
    print("setup: note: this is a CUDA build on a machine without a usable GPU; see README (GPU)")
PYEOF
