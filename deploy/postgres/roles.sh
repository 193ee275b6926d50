#!/bin/sh
# Creates or updates the five services' database roles: runs roles.sql (beside this file) with
# psql. Idempotent; see roles.sql for what it does. Used by docker-compose.yml (service
# `db-roles`) and scripts/up, and by hand for any other PostgreSQL (see k8s/README.md).
#
# Connection: the usual libpq variables of a superuser, connected to Slipway's database
# (PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE).
# Passwords: SLIPWAY_DB_PASSWORD_GATEWAY, _BUILDER, _REGISTRY, _DEPLOYER, _MONITOR. They reach
# psql through its environment (\getenv), never a command line.
set -eu
for service in GATEWAY BUILDER REGISTRY DEPLOYER MONITOR; do
  eval "value=\${SLIPWAY_DB_PASSWORD_$service:-}"
  # shellcheck disable=SC2154 # set by the eval
  [ -n "$value" ] || { echo "roles.sh: SLIPWAY_DB_PASSWORD_$service is not set" >&2; exit 1; }
done
cd "$(dirname "$0")"
psql -X -q -v ON_ERROR_STOP=1 <<'SQL'
\getenv gateway SLIPWAY_DB_PASSWORD_GATEWAY
\getenv builder SLIPWAY_DB_PASSWORD_BUILDER
\getenv registry SLIPWAY_DB_PASSWORD_REGISTRY
\getenv deployer SLIPWAY_DB_PASSWORD_DEPLOYER
\getenv monitor SLIPWAY_DB_PASSWORD_MONITOR
SELECT set_config('slipway.password_gateway', :'gateway', false),
       set_config('slipway.password_builder', :'builder', false),
       set_config('slipway.password_registry', :'registry', false),
       set_config('slipway.password_deployer', :'deployer', false),
       set_config('slipway.password_monitor', :'monitor', false) \g /dev/null
\i roles.sql
SQL
echo "roles.sh: database roles gateway, builder, registry, deployer and monitor are up to date"
