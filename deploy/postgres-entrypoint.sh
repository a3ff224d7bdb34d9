#!/bin/sh
# PostgreSQL for the compose stack, as uid 10001 on a read-only root: the cluster
# lives in the mounted volume $PGDATA; on first start it is initialised with the
# password from the mounted secret, and the seed scripts in /seed
# (CREATE TABLE + \copy of a CSV beside them) fill the holders' database.
set -eu
PG=/usr/lib/postgresql/15/bin
: "${PGDATA:=/var/lib/cleanroom-postgres/data}"
export PGDATA
SEEDED="$(dirname "$PGDATA")/seeded"
if [ ! -e "$SEEDED" ]; then
    # A first start cut short leaves a half-made cluster: make it again.
    rm -rf "$PGDATA"
    pwfile=/run/secrets/postgres_password
    "$PG/initdb" -D "$PGDATA" -U cleanroom --pwfile="$pwfile" \
        --auth-local=trust --auth-host=scram-sha-256 \
        --encoding=UTF8 --no-locale >/dev/null
    echo "listen_addresses = '*'" >> "$PGDATA/postgresql.conf"
    echo "unix_socket_directories = '/tmp'" >> "$PGDATA/postgresql.conf"
    echo "host all all 0.0.0.0/0 scram-sha-256" >> "$PGDATA/pg_hba.conf"
    "$PG/pg_ctl" -D "$PGDATA" -w -o "-c listen_addresses=''" start >/dev/null
    psql -h /tmp -U cleanroom -d postgres -q -c "CREATE DATABASE coordinator"
    psql -h /tmp -U cleanroom -d postgres -q -c "CREATE DATABASE holders"
    for script in /seed/*.sql; do
        [ -e "$script" ] || continue
        psql -h /tmp -U cleanroom -d holders -q -v ON_ERROR_STOP=1 -f "$script"
    done
    "$PG/pg_ctl" -D "$PGDATA" -w stop >/dev/null
    touch "$SEEDED"
fi
exec "$PG/postgres" -D "$PGDATA"
