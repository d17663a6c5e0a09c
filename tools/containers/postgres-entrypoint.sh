#!/bin/sh
# PostgreSQL 15 configured like the official postgres image: POSTGRES_USER, POSTGRES_PASSWORD
# (or POSTGRES_PASSWORD_FILE), POSTGRES_DB; a command `postgres -c name=value ...` passes its
# settings to the server. Listens on every interface of the container (the host maps one port).
set -e
bin=/usr/lib/postgresql/15/bin
data=/var/lib/postgresql/data
user=${POSTGRES_USER:-postgres}
if [ "${1:-}" = postgres ]; then shift; fi  # the rest: the server's own arguments
if [ -n "${POSTGRES_PASSWORD_FILE:-}" ]; then
  POSTGRES_PASSWORD=$(head -n 1 "$POSTGRES_PASSWORD_FILE")
fi
if [ ! -s "$data/PG_VERSION" ]; then
  mkdir -p "$data" && chown postgres:postgres "$data"
  (umask 077 && printf '%s\n' "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD is required}" > /tmp/pwfile)
  chown postgres /tmp/pwfile
  su postgres -s /bin/sh -c "$bin/initdb -D $data -U $user --pwfile=/tmp/pwfile --auth-local=trust --auth-host=scram-sha-256"
  rm -f /tmp/pwfile
  echo "host all all 0.0.0.0/0 scram-sha-256" >> "$data/pg_hba.conf"
  su postgres -s /bin/sh -c "$bin/pg_ctl -D $data -w -o '-c listen_addresses=' start"
  if [ "${POSTGRES_DB:-$user}" != postgres ]; then
    su postgres -s /bin/sh -c "psql -h /var/run/postgresql -U $user -d postgres -c 'CREATE DATABASE \"${POSTGRES_DB:-$user}\"'"
  fi
  su postgres -s /bin/sh -c "$bin/pg_ctl -D $data -w stop"
fi
# postgres itself becomes PID 1 (as the official image's gosu does), so `docker stop` reaches it
# directly and a clean shutdown exits 0.
exec setpriv --reuid=postgres --regid=postgres --init-groups \
  "$bin/postgres" -D "$data" -c listen_addresses='*' -c unix_socket_directories=/var/run/postgresql "$@"
