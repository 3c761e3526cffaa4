#!/bin/sh
# The first start initialises PGDATA (superuser `postgres` with POSTGRES_PASSWORD, password
# authentication over TCP) and runs /docker-entrypoint-initdb.d/*.sh against it, as the official
# image does; every start then runs the server on all addresses.
set -eu
bin=/usr/lib/postgresql/15/bin
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  pw=$(mktemp)
  printf '%s\n' "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}" > "$pw"
  # UTF8 as the official image: without a locale initdb picks SQL_ASCII, whose strings
  # psycopg returns as bytes.
  "$bin/initdb" -D "$PGDATA" -U postgres --pwfile="$pw" --auth-local=trust \
    --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 >/dev/null
  rm -f "$pw"
  echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
  "$bin/pg_ctl" -D "$PGDATA" -w -o "-c listen_addresses='' -c unix_socket_directories=/tmp" \
    start >/dev/null
  for script in /docker-entrypoint-initdb.d/*.sh; do
    [ -e "$script" ] && POSTGRES_USER=postgres sh "$script"
  done
  "$bin/pg_ctl" -D "$PGDATA" -w -m fast stop >/dev/null
fi
exec "$bin/postgres" -D "$PGDATA" -c listen_addresses='*' -c unix_socket_directories=/tmp "$@"
