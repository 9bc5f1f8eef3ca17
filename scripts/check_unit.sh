#!/usr/bin/env bash
# Check deploy/bund-node.service with `systemd-analyze verify` (installing systemd if need be).
#
# verify also checks that ExecStart's program exists, so the unit is checked as installed on this
# checkout: the same file with /opt/bund replaced by this repository (whose .venv scripts/setup.sh
# made). Everything else (keys, values, hardening options) is checked as written.
set -euo pipefail
cd "$(dirname "$0")/.."
analyze=$(bash scripts/systemd.sh)
[ -x .venv/bin/bund ] || { echo "check_unit.sh: run scripts/setup.sh first (.venv/bin/bund)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
sed "s|/opt/bund/|$PWD/|g" deploy/bund-node.service > "$tmp/bund-node.service"
# verify exits non-zero on an error, and only warns about a value it ignores (a misspelt option):
# any finding that names the unit fails the check; findings about the host's own units do not.
out=$("$analyze" verify "$tmp/bund-node.service" 2>&1) || { echo "$out" >&2; exit 1; }
if grep -q "bund-node.service" <<<"$out"; then
  echo "$out" >&2
  echo "check_unit.sh: systemd-analyze verify has findings on deploy/bund-node.service" >&2
  exit 1
fi
[ -z "$out" ] || echo "$out" >&2
echo "systemd unit: deploy/bund-node.service verifies"
