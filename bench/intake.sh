#!/usr/bin/env bash
# bench/intake.sh [--tiny] [SECONDS] [CLIENTS]: callback intake throughput.
# pgbench, CLIENTS clients (default 8) for SECONDS (default 20) each run:
#
#   intake:   SELECT qes_sign.receive_callback(<valid signed URL>)
#             a random one of N pre-created requests, its placeholders
#             replaced by values unique to the call (never deduplicated)
#   baseline: a plain INSERT of an equally wide row into bench_plain, a copy
#             of qes_sign.callback_inbox with the same indexes
#
# Both statements take the URL (resp. the request id) from the same small
# lookup table, so both pay the same lookup.  Besides tps, each run reports
# the server CPU per call (the figure that other load on the machine
# disturbs least), and the CPU ratio plain/intake.  One temporary cluster
# (shared_preload_libraries = 'qes_sign', no qes_sign.database: no worker
# runs and the inbox is not drained); runs alternate baseline, intake,
# baseline, intake and the result is the ratio of the summed tps.
# Measurements, not a test: exits 0 whether or not the bar is met.
# --tiny: 2 s, 2 clients (smoke run).
set -euo pipefail
tiny=0
if [ "${1:-}" = --tiny ]; then tiny=1; shift; fi
secs=${1:-20}
clients=${2:-8}
if [ $tiny = 1 ]; then secs=2; clients=2; fi
nreq=1000
bar=0.80
. "$(dirname "$0")/lib.sh"
bench_init intake
bench_cluster "shared_buffers = '256MB'" "max_wal_size = '4GB'" \
    "qes_sign.callback_base_url = 'https://portal.example/qes/callback'" \
    "qes_sign.callback_secret = 'bench-callback-secret-0123456789abcdef'"

echo "bench/intake.sh: $(nproc) cores, $(q 'SHOW server_version') (fsync off), $clients clients, ${secs} s per run"

# N requests; bench_urls holds each one's signed update URL without its
# query (the statement appends one with unique ids, as Skribble fills in its
# placeholders), and its id for the baseline
q "SELECT count(qes_sign.create_request('bench', 'Bench ' || g, convert_to('%PDF-1.4 bench %%EOF', 'UTF8'),
     '[{\"first_name\": \"A\", \"last_name\": \"B\", \"email\": \"a@example.org\"}]'))
     FROM generate_series(1, $nreq) g" >/dev/null
q "CREATE TABLE bench_urls (i int PRIMARY KEY, id uuid NOT NULL, url text NOT NULL);
   INSERT INTO bench_urls
   SELECT row_number() OVER (ORDER BY id), id, split_part(qes_sign.callback_url(id, 'update'), '?', 1)
     FROM qes_sign.signatur_anfragen;
   CREATE TABLE bench_plain (LIKE qes_sign.callback_inbox INCLUDING ALL)" >/dev/null
q "VACUUM ANALYZE" >/dev/null
# the query as callback_urls() hands it to Skribble, placeholders filled in
# check: one such URL verifies and is not a duplicate
q "SELECT (qes_sign.receive_callback(url || '?signature_request=sr-0-1&document=doc-0-1&signature=sig-0-1')).duplicate
     FROM bench_urls WHERE i = 1" | grep -qx f

cat > "$work/intake.sql" <<SQL
\set i random(1, $nreq)
\set r random(1, 1000000000000)
SELECT qes_sign.receive_callback(url || '?signature_request=sr-:client_id-:r&document=doc-:client_id-:r&signature=sig-:client_id-:r') FROM bench_urls WHERE i = :i;
SQL
cat > "$work/plain.sql" <<SQL
\set i random(1, $nreq)
\set r random(1, 1000000000000)
INSERT INTO bench_plain (request_id, callback_type, source, signature_request_id, document_id, signature_id, dedupe_key)
SELECT id, 'update', 'callback', 'sr-:client_id-:r', 'doc-:client_id-:r', 'sig-:client_id-:r', id || '/update/sr-:client_id-:r/doc-:client_id-:r/sig-:client_id-:r' FROM bench_urls WHERE i = :i;
SQL
chown postgres "$work"/*.sql

# run SCRIPT: tps and server CPU per call (bench/lib.sh)
run() { pgbench_run "$1" "$clients"; }

plain_sum=0; intake_sum=0; plain_cpu=0; intake_cpu=0
for round in 1 2; do
    r=$(run plain); read -r p pc <<<"$r"; r=$(run intake); read -r i ic <<<"$r"
    printf '  round %s: plain insert %6.0f tps %5.0f us CPU/call   intake %6.0f tps %5.0f us CPU/call   (%.2f, CPU %.2f)\n' \
        "$round" "$p" "$pc" "$i" "$ic" "$(awk "BEGIN { print $i / $p }")" "$(awk "BEGIN { print $pc / $ic }")"
    plain_sum=$(awk "BEGIN { print $plain_sum + $p }"); intake_sum=$(awk "BEGIN { print $intake_sum + $i }")
    plain_cpu=$(awk "BEGIN { print $plain_cpu + $pc }"); intake_cpu=$(awk "BEGIN { print $intake_cpu + $ic }")
done
# every intake call stored a row (none deduplicated, none rejected)
stored=$(q "SELECT count(*) FROM qes_sign.callback_inbox")
accepted=$(q "SELECT value FROM qes_sign.counters() WHERE name = 'callbacks_accepted'")
[ "$stored" = "$accepted" ] || echo "  WARNING: $accepted callbacks accepted but $stored stored (duplicates)"
awk -v i="$intake_sum" -v p="$plain_sum" -v ic="$intake_cpu" -v pc="$plain_cpu" -v bar="$bar" 'BEGIN {
    printf "intake: %.0f tps vs plain %.0f tps = %.2f (bar %.2f)%s; server CPU/call %.0f vs %.0f us = %.2f\n",
           i / 2, p / 2, i / p, bar, ((i / p >= bar) ? "" : "  BELOW BAR"), ic / 2, pc / 2, pc / ic }'
exit 0
