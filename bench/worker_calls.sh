#!/usr/bin/env bash
# bench/worker_calls.sh [LATENCY_MS] [N]: Skribble API calls per second of
# the worker with 1, 16 and 64 calls in flight, against the local double
# answering after LATENCY_MS (default 20).  One temporary cluster, one
# double; each run refreshes N open requests (GET /signature-requests/{id}),
# so the three figures come from the same process and are printed as ratios
# to the one-at-a-time run.
set -euo pipefail
latency=${1:-20}
n=${2:-2000}
repo=$(cd "$(dirname "$0")/.." && pwd)
bash "$repo/test/setup.sh" >/dev/null
bindir=$(pg_config --bindir)

work=$(mktemp -d /tmp/qes_bench.XXXXXX)
chown postgres "$work"
pg() { runuser -u postgres -- "$@"; }
cleanup() {
    pg "$bindir/pg_ctl" -D "$work/data" -m immediate stop >/dev/null 2>&1 || true
    [ -n "${double_pid:-}" ] && kill "$double_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

node "$repo/test/skribble_double/server.js" --port 0 --latency-ms "$latency" \
    --callback-retry-interval 3600000 > "$work/double.out" 2>&1 &
double_pid=$!
for _ in $(seq 50); do grep -q LISTENING "$work/double.out" && break; sleep 0.1; done
port=$(awk '/LISTENING/ {print $2}' "$work/double.out")

pg "$bindir/initdb" -D "$work/data" -A trust --no-sync >/dev/null
cat >> "$work/data/postgresql.conf" <<CONF
listen_addresses = ''
unix_socket_directories = '$work'
fsync = off
shared_preload_libraries = 'qes_sign'
qes_sign.database = 'postgres'
qes_sign.skribble_url = 'http://127.0.0.1:$port/v2'
qes_sign.skribble_username = 'api_demo_qes_sign'
qes_sign.skribble_api_key = 'test-key'
qes_sign.reconcile_interval = '1h'
CONF
pg "$bindir/pg_ctl" -D "$work/data" -l "$work/server.log" -w start >/dev/null
q() { psql -X -At -h "$work" -U postgres -d postgres -c "$1"; }
q "CREATE EXTENSION qes_sign" >/dev/null

# N open requests at the double (no callbacks: nobody listens)
q "SELECT count(qes_sign.create_request('bench', 'Bench ' || g, convert_to('%PDF-1.4 bench %%EOF', 'UTF8'),
     '[{\"first_name\": \"A\", \"last_name\": \"B\", \"email\": \"a@example.org\"}]'))
     FROM generate_series(1, $n) g" >/dev/null
until [ "$(q "SELECT count(*) FROM qes_sign.work_items WHERE state = 'pending' AND kind = 'submit'")" = 0 ]; do
    sleep 0.2
done

# run CONCURRENCY COUNT: prints calls per second
run() {
    sed -i '/^qes_sign.max_concurrency/d; /^qes_sign.max_host_connections/d' "$work/data/postgresql.conf"
    printf 'qes_sign.max_concurrency = %s\nqes_sign.max_host_connections = %s\n' "$1" "$1" \
        >> "$work/data/postgresql.conf"
    pg "$bindir/pg_ctl" -D "$work/data" reload >/dev/null
    sleep 0.5
    local c0 t0 c1 t1
    c0=$(q "SELECT value FROM qes_sign.operations WHERE metric = 'api_calls'")
    t0=$(date +%s.%N)
    q "INSERT INTO qes_sign.work_items (request_id, kind)
       SELECT id, 'refresh' FROM qes_sign.signatur_anfragen ORDER BY id LIMIT $2;
       SELECT qes_sign.wake()" >/dev/null
    until [ "$(q "SELECT count(*) FROM qes_sign.work_items WHERE state = 'pending' AND kind = 'refresh'")" = 0 ]; do
        sleep 0.02
    done
    t1=$(date +%s.%N)
    c1=$(q "SELECT value FROM qes_sign.operations WHERE metric = 'api_calls'")
    awk "BEGIN { print ($c1 - $c0) / ($t1 - $t0) }"
}

one=$(run 1 $((n / 20 > 50 ? n / 20 : 50)))
r16=$(run 16 "$n")
r64=$(run 64 "$n")
printf 'double latency %s ms, %s requests\n' "$latency" "$n"
printf '  1 in flight: %7.0f calls/s\n' "$one"
printf ' 16 in flight: %7.0f calls/s  (%.1f x one at a time)\n' "$r16" "$(awk "BEGIN { print $r16 / $one }")"
printf ' 64 in flight: %7.0f calls/s  (%.1f x one at a time)\n' "$r64" "$(awk "BEGIN { print $r64 / $one }")"
