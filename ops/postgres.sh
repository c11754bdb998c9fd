#!/usr/bin/env bash
# Makes sure a Postgres server answers on 127.0.0.1:5432 with trust auth for user postgres and a
# database `test` (what the tests use): starts the local cluster if it is stopped, installs Debian's
# package if there is none. Usage: ops/postgres.sh
set -euo pipefail

ready() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }

if ! ready; then
    if ! command -v pg_ctlcluster >/dev/null 2>&1; then
        echo "== installing PostgreSQL (Debian package)"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq postgresql >/dev/null
    fi
    version=$(ls /usr/lib/postgresql | sort -V | tail -1)
    if ! pg_lsclusters -h | grep -q "^$version main"; then
        pg_createcluster "$version" main >/dev/null
    fi
    conf=/etc/postgresql/$version/main
    # Trust on loopback, as the tests expect (a test machine only).
    if ! grep -q "holdfast tests" "$conf/pg_hba.conf"; then
        sed -i '1i host all all 127.0.0.1/32 trust # holdfast tests\nlocal all all trust # holdfast tests' "$conf/pg_hba.conf"
    fi
    pg_ctlcluster "$version" main start || pg_ctlcluster "$version" main restart
    for _ in $(seq 50); do ready && break; sleep 0.2; done
fi
ready || { echo "PostgreSQL does not answer on 127.0.0.1:5432" >&2; exit 1; }
if ! psql -h 127.0.0.1 -U postgres -d test -qAtc 'select 1' >/dev/null 2>&1; then
    psql -h 127.0.0.1 -U postgres -d postgres -qc 'CREATE DATABASE test'
fi
echo "== PostgreSQL ready on 127.0.0.1:5432 (database test)"
