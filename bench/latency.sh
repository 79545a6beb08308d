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
# Where the S3 server is the limit, the archive phase of the burst (first
# vollstaendig to last archiviert) is set against boto3 uploading the same
# objects to the same server (bar: within 1.3x of its time).
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
    node "$repo/bench/latency.js" | tee "$work/latency.out"

# the archive's share against the S3 server's own speed: boto3 uploads the
# same objects (N requests, the sizes archived) to the same server, as many
# in flight as the worker may have (bench/boto3_uploads.py)
phase=$(sed -n 's/^archive phase of the [0-9]*: \([0-9]*\) ms.*/\1/p' "$work/latency.out")
sizes=$(q "SELECT string_agg(s::text, ',') FROM (SELECT round(avg(size))::int AS s FROM qes_sign.archive_objects o
            JOIN qes_sign.signatur_anfragen a ON a.id = o.request_id WHERE a.title LIKE 'Latenz %' GROUP BY kind ORDER BY kind) x")
read -r b_secs b_bytes <<<"$(/usr/bin/python3 "$repo/bench/boto3_uploads.py" "http://127.0.0.1:$s3_port" "$n" "$sizes" \
                             "$(q 'SHOW qes_sign.max_concurrency')" boto3)"
awk -v p="$phase" -v b="$b_secs" -v n="$n" -v s="$sizes" 'BEGIN {
    printf "baseline: boto3 uploads the same %d x 4 objects (bytes %s), PUT + HEAD: %.0f ms\n", n, s, b * 1000
    printf "archive phase %.0f ms (fetch from Skribble included) = %.2f x boto3   bar <= 1.3x: %s\n", p, p / (b * 1000), (p / (b * 1000) <= 1.3 ? "met" : "MISSED")
}'
