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
. "$(dirname "$0")/lib.sh"
bench_init latency
bench_stack

printf 'bench/latency.sh: %s requests, last signatures at once; %s cores, %s; fsync off, max_concurrency %s\n' \
    "$n" "$(nproc)" "$(q 'SHOW server_version' | sed 's/ .*//;s/^/PostgreSQL /')" "$(q 'SHOW qes_sign.max_concurrency')"

PGHOST=$work PGPORT=5432 PGDATABASE=postgres PGUSER=postgres BENCH_PGDATA=$work/data \
BENCH_PIDS="double=${pids[0]} relay=${pids[1]} s3-server=${pids[2]}" BENCH_DOUBLE="http://127.0.0.1:$double_port" BENCH_N=$n \
    node "$repo/bench/latency.js"
