#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the demo: finance and health node scenarios on loopback, audit verification.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/bund demo "$@"
