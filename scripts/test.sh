#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run every check: proto drift, lint, import contracts, types, the
# systemd unit, tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
echo "== proto drift";   scripts/check_protos.sh
echo "== ruff";          ruff check .
echo "== security lint"; python scripts/lint_security.py
echo "== import-linter"; lint-imports
echo "== mypy";          mypy
echo "== chromium";      bash scripts/chromium.sh >/dev/null   # and chromium-driver: the browser tests (report, console)
echo "== systemd unit";  bash scripts/check_unit.sh             # systemd-analyze verify
echo "== postgresql"     # a throwaway server on 127.0.0.1 for the PostgreSQL audit store tests
pg_env=$(bash scripts/postgres.sh start)   # two steps, so that a failed start stops the script
eval "$pg_env"
trap 'bash scripts/postgres.sh stop' EXIT
echo "== pytest";        pytest "$@"
