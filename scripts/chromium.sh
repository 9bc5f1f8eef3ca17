#!/usr/bin/env bash
# Install Debian's `chromium` and its WebDriver `chromium-driver` if they are missing, for the
# browser tests: the regulator's HTML report (tests/integration/test_report.py) and `bund
# console` driven with Selenium (tests/integration/test_console_browser.py). Nothing else: no
# browser or driver is ever downloaded from anywhere but the apt sources.
#
#   bash scripts/chromium.sh      # prints the path of the chromium binary, nothing else
#
# As root on Debian: asks `apt-cache policy` first and runs `apt-get update` (once) only when no
# candidate is known, then `apt-get install -y chromium chromium-driver`. Everything but the path
# goes to stderr, so that `CHROMIUM=$(bash scripts/chromium.sh)` works.
set -euo pipefail
exec 3>&1 1>&2

die() { echo "chromium.sh: $*" >&2; exit 1; }

# Read the whole output first: `grep -q` closing the pipe early would fail under pipefail.
has_candidates() {
  local package policy
  for package in "$@"; do
    policy=$(apt-cache policy "$package" 2>/dev/null || true)
    grep -Eq 'Candidate: [0-9]' <<<"$policy" || return 1
  done
}

missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
if [ "${#missing[@]}" -gt 0 ]; then
  [ "$(id -u)" = 0 ] || die "${missing[*]} not installed: install (Debian: apt-get install ${missing[*]}) or run as root"
  command -v apt-get >/dev/null || die "${missing[*]} not installed and this is not a Debian system"
  if ! has_candidates "${missing[@]}"; then
    apt-get update -qq
  fi
  has_candidates "${missing[@]}" || die "no ${missing[*]} package in the configured apt sources"
  echo "chromium.sh: installing ${missing[*]}" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
command -v chromedriver >/dev/null || die "chromedriver is still not on PATH after installing"
command -v chromium >&3 || die "chromium is still not on PATH after installing"
