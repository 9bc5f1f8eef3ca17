#!/usr/bin/env bash
# A throwaway PostgreSQL server on loopback for the audit-store and dataset-source tests.
#
#   eval "$(bash scripts/postgres.sh start)"   # prints the two export lines below, nothing else
#   pytest tests/parties/test_audit.py         # runs the PostgreSQL store tests
#   bash scripts/postgres.sh stop              # stops it and deletes its directory
#
# start installs Debian's PostgreSQL if no server binaries are found (as root: apt-get update once,
# then apt-get install postgresql, with no default cluster), creates a cluster in a new temporary
# directory owned by the server's user, listening on 127.0.0.1 on a free port and on a Unix
# socket in that directory only, and a role and database `bund_test` with a random password. The
# role may create roles (CREATEROLE), so that the dataset tests can make a SELECT-only reader role
# as a DBA would (docs/datasets.md). It prints
#   export BUND_TEST_POSTGRES_DSN=postgresql://bund_test:PASSWORD@127.0.0.1:PORT/bund_test
#   export BUND_TEST_POSTGRES_DIR=/tmp/bund-postgres.XXXXXX
# stop takes the directory as its argument or from BUND_TEST_POSTGRES_DIR; it does nothing when
# neither names one. Everything else goes to stderr, so that start's stdout can be eval'ed.
set -euo pipefail
exec 3>&1 1>&2

die() { echo "postgres.sh: $*" >&2; exit 1; }

bindir() {
  local dir
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -n "$dir" ] && [ -x "$dir/initdb" ]; then echo "$dir"; return; fi
  if command -v pg_config >/dev/null && [ -x "$(pg_config --bindir)/initdb" ]; then
    pg_config --bindir
  fi
}

# Run a server command as the cluster's owner: PostgreSQL refuses to run as root. fd 3 (start's
# stdout) is closed for it, or the server would hold it open and "$(postgres.sh start)" never end.
as_owner() {
  if [ "$(id -u)" = 0 ]; then (cd / && runuser -u postgres -- "$@" 3>&-); else "$@" 3>&-; fi
}

install_postgres() {
  [ "$(id -u)" = 0 ] || die "PostgreSQL is not installed: install it (Debian: apt-get install postgresql) or run as root"
  command -v apt-get >/dev/null || die "PostgreSQL is not installed and this is not a Debian system"
  # The package would otherwise create and start a cluster on port 5432 that nothing here uses.
  if [ ! -e /etc/postgresql-common/createcluster.conf ]; then
    mkdir -p /etc/postgresql-common
    echo "create_main_cluster = false" >/etc/postgresql-common/createcluster.conf
  fi
  echo "postgres.sh: installing PostgreSQL" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start() {
  local bin dir port password tries
  bin=$(bindir)
  if [ -z "$bin" ]; then install_postgres; bin=$(bindir); fi
  [ -n "$bin" ] || die "no PostgreSQL server binaries found after installing"
  if [ "$(id -u)" = 0 ]; then id postgres >/dev/null 2>&1 || die "no postgres user to run the server"; fi

  dir=$(mktemp -d "${TMPDIR:-/tmp}/bund-postgres.XXXXXX")
  chmod 700 "$dir"
  if [ "$(id -u)" = 0 ]; then chown postgres: "$dir"; fi
  # Superuser by trust on the socket (reachable only through the 0700 directory); passwords on TCP.
  as_owner "$bin/initdb" -D "$dir/data" -U postgres -E UTF8 --locale=C.UTF-8 \
    --auth-local=trust --auth-host=scram-sha-256 >"$dir/initdb.log" 2>&1 \
    || { cat "$dir/initdb.log"; die "initdb failed"; }

  for tries in 1 2 3; do
    port=$(free_port)
    if as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start \
      -o "-c listen_addresses=127.0.0.1 -c port=$port -k $dir -c shared_buffers=32MB" >/dev/null; then
      break
    fi
    [ "$tries" = 3 ] && { tail -n 20 "$dir/server.log"; die "the server did not start"; }
  done

  password=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
  as_owner "$bin/psql" -X -q -v ON_ERROR_STOP=1 -h "$dir" -p "$port" -U postgres -d postgres \
    -c "CREATE ROLE bund_test LOGIN CREATEROLE PASSWORD '$password'" \
    -c "CREATE DATABASE bund_test OWNER bund_test" >/dev/null
  echo "postgres.sh: $("$bin/postgres" --version) on 127.0.0.1:$port ($dir)" >&2
  echo "export BUND_TEST_POSTGRES_DSN=postgresql://bund_test:$password@127.0.0.1:$port/bund_test" >&3
  echo "export BUND_TEST_POSTGRES_DIR=$dir" >&3
}

stop() {
  local dir=${1:-${BUND_TEST_POSTGRES_DIR:-}} bin
  [ -n "$dir" ] || return 0
  case "$dir" in */bund-postgres.*) ;; *) die "$dir is not a directory made by postgres.sh start" ;; esac
  if [ -f "$dir/data/postmaster.pid" ]; then
    bin=$(bindir)
    as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
  fi
  rm -rf "$dir"
}

case "${1:-}" in
  start) start ;;
  stop) stop "${2:-}" ;;
  *) die "usage: postgres.sh start | stop [DIR]" ;;
esac
