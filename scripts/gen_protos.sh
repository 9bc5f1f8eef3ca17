#!/usr/bin/env bash
# Regenerate the Python modules and typed stubs of the wire contract (proto/bund/v1) in place.
# Usage: scripts/gen_protos.sh [OUT_DIR]   (default: proto, beside the sources)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-proto}"
py="${PYTHON:-.venv/bin/python}"
export PATH="$(dirname "$py"):$PATH"  # protoc-gen-mypy lives beside the interpreter
mkdir -p "$out"
"$py" -m grpc_tools.protoc -I proto \
  --python_out="$out" --grpc_python_out="$out" \
  --mypy_out="$out" --mypy_grpc_out="$out" \
  proto/bund/v1/*.proto
