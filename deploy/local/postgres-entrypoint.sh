#!/bin/sh
# `postgres`: creates the cluster on the first start (superuser POSTGRES_USER with password
# POSTGRES_PASSWORD, database POSTGRES_DB, SCRAM authentication everywhere), then runs the
# server on all addresses. Any other command (db-roles' `sh roles.sh`) runs as it is.
set -eu
if [ "${1:-}" != postgres ]; then
  exec "$@"
fi
shift
: "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD is required}"
user="${POSTGRES_USER:-postgres}"
database="${POSTGRES_DB:-$user}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  pwfile="$(mktemp)"
  # The password reaches initdb through a file, never a command line.
  printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
  initdb -D "$PGDATA" -U "$user" --pwfile="$pwfile" --auth=scram-sha-256 \
    --encoding=UTF8 --no-locale >/dev/null
  rm -f "$pwfile"
  printf '%s\n' \
    "local all all scram-sha-256" \
    "host  all all 0.0.0.0/0 scram-sha-256" \
    "host  all all ::/0 scram-sha-256" >"$PGDATA/pg_hba.conf"
  if [ "$database" != postgres ]; then
    # Single-user mode: no server listens while the database is made.
    echo "CREATE DATABASE \"$database\"" | postgres --single -D "$PGDATA" postgres >/dev/null
  fi
fi
exec postgres -D "$PGDATA" -c listen_addresses='*' -c unix_socket_directories=/run/postgresql "$@"
