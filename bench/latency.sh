#!/usr/bin/env bash
# bench/latency.sh [--tiny] [N]: end-to-end latency from a signer's last
# signature at Skribble to the portal's NOTIFY "status_archiviert", for N
# requests (default 100) whose last signatures all come at the same moment.
#
# One temporary cluster with the worker pointed at the Skribble double
# (callbacks at once), the callback relay (the portal's endpoint) and the
# local S3 server.  N requests with two signers are created and submitted;
# the first signer of each signs; then bench/latency.js (LISTEN qes_sign)
# fires the N last signatures in parallel at the double's /_control API and
# takes, per request, the time from the signature (the double's signed_at)
# to the arrival of its status_archiviert NOTIFY.  Prints p50/p95/p99/max
# (bar: p99 < 1 s), the split into signature -> vollstaendig -> archiviert,
# the CPU time each process used during the burst, and as baselines from
# the same run: the round trip of a plain pg_notify from a second session,
# the double's own answer time for a sign call, and the same path for a
# request whose last signature comes alone (3 of them, one at a time).
# --tiny: N = 10.  Exits 0 whether or not the bar is met.
set -euo pipefail
tiny=0
if [ "${1:-}" = --tiny ]; then tiny=1; shift; fi
n=${1:-100}
[ "$tiny" = 1 ] && n=10
repo=$(cd "$(dirname "$0")/.." && pwd)
flock /tmp/qes_build.lock bash "$repo/test/setup.sh" >/dev/null
bindir=$(pg_config --bindir)

work=$(mktemp -d /tmp/qes_bench_latency.XXXXXX)
chown postgres "$work"
pg() { runuser -u postgres -- "$@"; }
pids=()
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    pg "$bindir/pg_ctl" -D "$work/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$work"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start NAME CMD...: a Node service in the background; sets $port from its "LISTENING <port>" line
start() {
    local name=$1; shift
    : >"$work/$name.out"
    "$@" >"$work/$name.out" 2>"$work/$name.log" &
    local pid=$!
    pids+=("$pid")
    port=
    for _ in $(seq 100); do
        port=$(sed -n 's/^LISTENING \([0-9][0-9]*\)$/\1/p' "$work/$name.out")
        [ -n "$port" ] && return 0
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    echo "latency: $name did not start" >&2
    tail -n 20 "$work/$name.log" >&2
    exit 1
}

start double node "$repo/test/skribble_double/server.js" --port 0 --callback-retry-interval 200
double_port=$port
start relay node "$repo/test/relay/relay.js" --port 0 \
    --db "host=$work port=5432 dbname=postgres user=postgres"
relay_port=$port
mkdir "$work/s3"
start s3 node "$repo/test/s3/server.js" --port 0 --dir "$work/s3" --bucket archive
s3_port=$port

pg "$bindir/initdb" -D "$work/data" -U postgres -A trust -E UTF8 --locale=C.UTF-8 --no-sync >/dev/null
cat >> "$work/data/postgresql.conf" <<CONF
listen_addresses = ''
port = 5432
unix_socket_directories = '$work'
fsync = off
shared_preload_libraries = 'qes_sign'
qes_sign.database = 'postgres'
qes_sign.skribble_url = 'http://127.0.0.1:$double_port/v2'
qes_sign.skribble_username = 'api_demo_qes_sign'
qes_sign.skribble_api_key = 'test-key'
qes_sign.callback_base_url = 'http://127.0.0.1:$relay_port/qes/callback'
qes_sign.callback_secret = 'bench-latency-callback-secret-0123456789abcdef'
qes_sign.s3_endpoint = 'http://127.0.0.1:$s3_port'
qes_sign.s3_bucket = 'archive'
qes_sign.s3_access_key = 'qes-test-access'
qes_sign.s3_secret_key = 'qes-test-secret'
qes_sign.reconcile_interval = '1h'
CONF
pg "$bindir/pg_ctl" -D "$work/data" -l "$work/server.log" -w start >/dev/null
q() { psql -X -At -h "$work" -U postgres -d postgres -v ON_ERROR_STOP=1 -c "$1"; }
q "CREATE EXTENSION qes_sign" >/dev/null

printf 'bench/latency.sh: %s requests, last signatures at once; %s cores, %s; fsync off, max_concurrency %s\n' \
    "$n" "$(nproc)" "$(q 'SHOW server_version' | sed 's/ .*//;s/^/PostgreSQL /')" "$(q 'SHOW qes_sign.max_concurrency')"

PGHOST=$work PGPORT=5432 PGDATABASE=postgres PGUSER=postgres BENCH_PGDATA=$work/data \
BENCH_PIDS="double=${pids[0]} relay=${pids[1]} s3-server=${pids[2]}" BENCH_DOUBLE="http://127.0.0.1:$double_port" BENCH_N=$n \
    node "$repo/bench/latency.js"
