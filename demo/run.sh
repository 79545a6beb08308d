#!/usr/bin/env bash
# demo/run.sh: the article's scenario on a fresh machine.  Installs and
# builds what is missing (test/setup.sh), starts a temporary PostgreSQL
# cluster with qes_sign preloaded, runs demo.sql, and removes everything.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bash "$here/../test/setup.sh"

work=$(mktemp -d /tmp/qes_sign_demo.XXXXXX)
chown postgres "$work"
pg() { runuser -u postgres -- "$@"; }
cleanup() {
    pg pg_ctl -D "$work/data" -m fast stop >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

pg initdb -D "$work/data" -U postgres -A trust -E UTF8 --locale=C.UTF-8 --no-sync >/dev/null
cat >> "$work/data/postgresql.conf" <<CONF
listen_addresses = ''
unix_socket_directories = '$work'
shared_preload_libraries = 'qes_sign'
qes_sign.callback_base_url = 'https://portal.hv-eppendorf.example/qes/callback'
qes_sign.callback_secret = '$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')'
CONF
pg pg_ctl -D "$work/data" -l "$work/server.log" -w start >/dev/null
node "$here/make_lease_pdf.js" > "$work/lease.pdf"

psql_demo() { psql -X -q -h "$work" -U postgres -d postgres "$@"; }
psql_demo -c "CREATE EXTENSION qes_sign" \
          -c "CREATE ROLE hv_portal LOGIN IN ROLE qes_sign_app"
cd "$here"
psql_demo -v pdf="$work/lease.pdf" -f demo.sql
