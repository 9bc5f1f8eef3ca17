#!/usr/bin/env bash
# Install Debian's `chromium` if it is missing, for the test that opens `bund audit report`'s HTML
# in a headless browser (tests/integration/test_report.py). Nothing else.
#
#   bash scripts/chromium.sh      # prints the path of the chromium binary, nothing else
#
# As root on Debian: asks `apt-cache policy chromium` first and runs `apt-get update` (once) only
# when no candidate is known, then `apt-get install -y chromium`. Everything but the path goes to
# stderr, so that `CHROMIUM=$(bash scripts/chromium.sh)` works.
set -euo pipefail
exec 3>&1 1>&2

die() { echo "chromium.sh: $*" >&2; exit 1; }

# Read the whole output first: `grep -q` closing the pipe early would fail under pipefail.
has_candidate() {
  local policy
  policy=$(apt-cache policy chromium 2>/dev/null || true)
  grep -Eq 'Candidate: [0-9]' <<<"$policy"
}

if ! command -v chromium >/dev/null; then
  [ "$(id -u)" = 0 ] || die "chromium is not installed: install it (Debian: apt-get install chromium) or run as root"
  command -v apt-get >/dev/null || die "chromium is not installed and this is not a Debian system"
  if ! has_candidate; then
    apt-get update -qq
  fi
  has_candidate || die "no chromium package in the configured apt sources"
  echo "chromium.sh: installing chromium" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
command -v chromium >&3 || die "chromium is still not on PATH after installing"
