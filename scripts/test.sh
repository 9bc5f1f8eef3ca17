#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run every check: proto drift, lint, import contracts, types, tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
echo "== proto drift";   scripts/check_protos.sh
echo "== ruff";          ruff check .
echo "== import-linter"; lint-imports
echo "== mypy";          mypy
echo "== pytest";        pytest "$@"
