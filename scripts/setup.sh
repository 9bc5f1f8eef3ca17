#!/usr/bin/env bash
# Create .venv and install Bund with its pinned dependencies (requirements.lock).
# torch is pinned to the 2.13.0 CPU build so that no multi-GB CUDA build is ever downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$py" -m venv .venv
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
.venv/bin/python -m pip install -q --upgrade "pip>=24" wheel "setuptools>=69"
# torch first, from the CPU build: a later resolve that sees torch==2.13.0 installed adds nothing.
.venv/bin/python -m pip install -q -c requirements.lock "torch==2.13.0"
.venv/bin/python -m pip install -q -c requirements.lock -e ".[dev,learn,parquet,postgres,ray,console]"
.venv/bin/python -c "import torch, sys; v = torch.__version__; sys.exit(0 if v.startswith('2.13.0') and '+cu' not in v else f'unexpected torch {v}')"
