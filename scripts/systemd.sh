#!/usr/bin/env bash
# Install Debian's `systemd` if `systemd-analyze` is missing, for the check of the node's systemd
# unit (scripts/check_unit.sh). Nothing else.
#
#   bash scripts/systemd.sh      # prints the path of systemd-analyze, nothing else
#
# As root on Debian: asks `apt-cache policy systemd` first and runs `apt-get update` (once) only
# when no candidate is known, then `apt-get install -y systemd`. Everything but the path goes to
# stderr, so that `ANALYZE=$(bash scripts/systemd.sh)` works.
set -euo pipefail
exec 3>&1 1>&2

die() { echo "systemd.sh: $*" >&2; exit 1; }

# Read the whole output first: `grep -q` closing the pipe early would fail under pipefail.
has_candidate() {
  local policy
  policy=$(apt-cache policy systemd 2>/dev/null || true)
  grep -Eq 'Candidate: [0-9]' <<<"$policy"
}

if ! command -v systemd-analyze >/dev/null; then
  [ "$(id -u)" = 0 ] || die "systemd-analyze is not installed: install it (Debian: apt-get install systemd) or run as root"
  command -v apt-get >/dev/null || die "systemd-analyze is not installed and this is not a Debian system"
  if ! has_candidate; then
    apt-get update -qq
  fi
  has_candidate || die "no systemd package in the configured apt sources"
  echo "systemd.sh: installing systemd" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd >/dev/null
fi
command -v systemd-analyze >&3 || die "systemd-analyze is still not on PATH after installing"
