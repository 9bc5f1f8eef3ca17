#!/usr/bin/env bash
# Regenerate the Python modules and typed stubs of the wire contract (proto/bund/v1) into bund/v1.
# Usage: scripts/gen_protos.sh [OUT_DIR]   (default: ., which puts them in bund/v1)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-.}"
py="${PYTHON:-.venv/bin/python}"
export PATH="$(dirname "$py"):$PATH"  # protoc-gen-mypy lives beside the interpreter
mkdir -p "$out"
"$py" -m grpc_tools.protoc -I proto \
  --python_out="$out" --grpc_python_out="$out" \
  --mypy_out="$out" --mypy_grpc_out="$out" \
  proto/bund/v1/*.proto
