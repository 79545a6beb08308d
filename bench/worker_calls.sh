#!/usr/bin/env bash
# bench/worker_calls.sh [--tiny] [N]: the worker's Skribble API calls per
# second, against the ceiling of the local double measured in the same run.
#   1. the double alone: wrk, 64 connections, the same GET the worker sends;
#   2. the worker refreshing N open requests (GET /signature-requests/{id})
#      with 1, 16 and 64 calls in flight, the double answering at once;
#   3. the same with the double answering after 50 ms, 1 and 64 in flight.
# Bars (SPEC section 11, issue 14): at 64 in flight >= 3,500 calls/s with
# 10,000 and 100,000 queued; 16 in flight no slower than one at a time; at
# 50 ms, 64 in flight >= 20 x one at a time.  Prints one result line per figure; exits 0 (a measurement).
set -euo pipefail
tiny=0
[ "${1:-}" = "--tiny" ] && { tiny=1; shift; }
n=${1:-2000}
[ $tiny = 1 ] && n=100
. "$(dirname "$0")/lib.sh"
bench_init worker_calls
start double node "$repo/test/skribble_double/server.js" --port 0 --callback-retry-interval 3600000
double=http://127.0.0.1:$port
bench_cluster "qes_sign.database = 'postgres'" "qes_sign.skribble_url = '$double/v2'" \
    "qes_sign.skribble_username = 'api_demo_qes_sign'" "qes_sign.skribble_api_key = 'test-key'" \
    "qes_sign.reconcile_interval = '1h'"

# N open requests at the double (no callbacks: nobody listens)
q "SELECT count(qes_sign.create_request('bench', 'Bench ' || g, convert_to('%PDF-1.4 bench %%EOF', 'UTF8'),
     '[{\"first_name\": \"A\", \"last_name\": \"B\", \"email\": \"a@example.org\"}]'))
     FROM generate_series(1, $n) g" >/dev/null
until [ "$(q "SELECT count(*) FROM qes_sign.work_items WHERE state = 'pending' AND kind = 'submit'")" = 0 ]; do
    sleep 0.2
done

# ceiling: what the double serves to a load generator in another process
ceiling() {
    local token sr
    token=$(curl -s -X POST "$double/v2/access/login" -H 'Content-Type: application/json' \
        -d '{"username": "api_demo_qes_sign", "api-key": "test-key"}')
    sr=$(q "SELECT provider_id FROM qes_sign.signatur_anfragen LIMIT 1")
    wrk -t2 -c64 -d"$1"s -H "Authorization: Bearer $token" -H 'Accept: application/json' \
        "$double/v2/signature-requests/$sr" | awk '/Requests\/sec/ {print $2}'
}

# run CONCURRENCY COUNT: the worker's calls per second refreshing COUNT requests
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
    # (an index probe every 50 ms: a count of the queue would compete with the worker)
    until [ "$(q "SELECT NOT EXISTS (SELECT FROM qes_sign.work_items WHERE state = 'pending' AND kind = 'refresh')")" = t ]; do
        sleep 0.05
    done
    t1=$(date +%s.%N)
    c1=$(q "SELECT value FROM qes_sign.operations WHERE metric = 'api_calls'")
    awk "BEGIN { print ($c1 - $c0) / ($t1 - $t0) }"
}
ratio() { awk "BEGIN { printf \"%.2f\", $1 / $2 }"; }
latency() { curl -s -X POST "$double/_control/latency" -H 'Content-Type: application/json' -d "{\"ms\": $1}" >/dev/null; }

small=$((n / 20 > 20 ? n / 20 : 20))
[ $tiny = 1 ] && small=10
ceil=$(ceiling $([ $tiny = 1 ] && echo 1 || echo 5))
one=$(run 1 "$small")
r16=$(run 16 "$n")
r64=$(run 64 "$n")
latency 50
slow_one=$(run 1 $([ $tiny = 1 ] && echo 5 || echo 40))
slow64=$(run 64 "$n")
latency 0

bar=3500   # issue 14: 64 in flight, at 10,000 and 100,000 queued
echo "worker calls: $(nproc) cores, PostgreSQL $(pg_config --version | awk '{print $2}'), $n requests"
d=$(printf '%6d queued' "$n")
printf 'worker calls, %s: double alone (wrk, 64 connections) %8.0f calls/s (the ceiling)\n' "$d" "$ceil"
printf 'worker calls, %s: 1 in flight                       %8.0f calls/s (the baseline)\n' "$d" "$one"
printf 'worker calls, %s: 16 in flight                      %8.0f calls/s = %s x one at a time (bar: >= 1)\n' \
    "$d" "$r16" "$(ratio "$r16" "$one")"
printf 'worker calls, %s: 64 in flight                      %8.0f calls/s = %s of the ceiling (bar: >= %.0f calls/s)\n' \
    "$d" "$r64" "$(ratio "$r64" "$ceil")" "$bar"
printf 'worker calls, %s: 50 ms latency, 1 in flight        %8.1f calls/s (the baseline)\n' "$d" "$slow_one"
printf 'worker calls, %s: 50 ms latency, 64 in flight       %8.0f calls/s = %s x one at a time (bar: >= 20)\n' \
    "$d" "$slow64" "$(ratio "$slow64" "$slow_one")"
