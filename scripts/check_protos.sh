#!/usr/bin/env bash
# Fail when the committed generated code differs from what the .proto sources generate now.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
scripts/gen_protos.sh "$tmp"
if ! diff -ru --exclude='*.proto' --exclude='__init__.py' --exclude='__pycache__' "$tmp/bund/v1" bund/v1; then
  echo "Generated protobuf code is out of date: run scripts/gen_protos.sh and commit the result." >&2
  exit 1
fi
echo "protos: generated code matches the sources"
