#!/usr/bin/env bash
# bench/create.sh [--tiny] [SECONDS] [CLIENTS]: create_request throughput
# with a 1 MB lease PDF and three signers.  pgbench, CLIENTS clients
# (default 8) for SECONDS (default 20) each run:
#
#   create:   SELECT qes_sign.create_request('bench', <title>, <1 MB PDF>, <3 signers>)
#   baseline: one statement inserting the same bytea (with its SHA-256 and
#             size) into bench_req, a copy of qes_sign.signatur_anfragen with
#             the same indexes and foreign keys, and three rows into
#             bench_signers, a copy of qes_sign.signers (same indexes, keys)
#
# The PDF is demo/make_lease_pdf.js padded to 1 MB, the padding replaced by
# random characters (a real PDF's streams are compressed: TOAST cannot
# shrink it).  Each client sends it as a bound parameter, in hex, with
# every call, as a portal would.  One temporary cluster; runs alternate
# baseline, create, baseline, create, each on emptied tables after a
# CHECKPOINT.  Besides tps, each run reports the server CPU per call (the
# figure that other load on the machine disturbs least) and the CPU ratio
# plain/create.  Then, to see where the time goes:
#   - both at 1 client (does create_request scale with clients like the
#     plain insert, or does the audit chain's row lock serialise it?)
#   - wait events of the create backends, sampled every 10 ms during a run
#   - after a restart with pg_stat_statements (track = all) and
#     track_functions = all: the statements and functions inside
#     create_request by time, as a share of create_request's own time.
# Measurements, not a test: exits 0 whether or not the bar is met.
# --tiny: 2 s, 2 clients (smoke run).  --external: store the document
# column uncompressed on both sides (ALTER ... SET STORAGE EXTERNAL), to
# preview that change; without it both use the schema's storage as is.
set -euo pipefail
tiny=0; external=0
while [ "${1:-}" = --tiny ] || [ "${1:-}" = --external ]; do
    case $1 in --tiny) tiny=1 ;; --external) external=1 ;; esac
    shift
done
secs=${1:-20}
clients=${2:-8}
if [ $tiny = 1 ]; then secs=2; clients=2; fi
bar=0.70
. "$(dirname "$0")/lib.sh"
bench_init create
bench_cluster "shared_buffers = '512MB'" "max_wal_size = '8GB'" \
    "qes_sign.callback_base_url = 'https://portal.example/qes/callback'" \
    "qes_sign.callback_secret = 'bench-callback-secret-0123456789abcdef'"

echo "bench/create.sh: $(nproc) cores, $(q 'SHOW server_version') (fsync off), $clients clients, ${secs} s per run"

# the 1 MB lease, its padding made incompressible
node "$repo/demo/make_lease_pdf.js" 1048576 > "$work/lease.pdf"
python3 - "$work/lease.pdf" <<'PY'
import random, re, string, sys
p = sys.argv[1]
pdf = open(p, 'rb').read()
m = re.search(rb'%(x{1000,})\n', pdf)
rng = random.Random(550)
alnum = (string.ascii_letters + string.digits).encode()
pad = bytes(rng.choice(alnum) for _ in range(len(m.group(1))))
open(p, 'wb').write(pdf[:m.start(1)] + pad + pdf[m.end(1):])
PY
chown postgres "$work/lease.pdf"

q "CREATE TABLE bench_doc (doc bytea NOT NULL);
   INSERT INTO bench_doc VALUES (pg_read_binary_file('$work/lease.pdf'));
   CREATE TABLE bench_req (LIKE qes_sign.signatur_anfragen INCLUDING ALL,
       FOREIGN KEY (vorgangstyp) REFERENCES qes_sign.vorgangstypen,
       FOREIGN KEY (restarted_from) REFERENCES bench_req);
   CREATE TABLE bench_signers (LIKE qes_sign.signers INCLUDING ALL,
       FOREIGN KEY (request_id) REFERENCES bench_req,
       FOREIGN KEY (replaced_by) REFERENCES bench_signers)" >/dev/null
if [ $external = 1 ]; then
    q "ALTER TABLE qes_sign.signatur_anfragen ALTER document SET STORAGE EXTERNAL;
       ALTER TABLE bench_req ALTER document SET STORAGE EXTERNAL" >/dev/null
fi
storage=$(q "SELECT CASE attstorage WHEN 'x' THEN 'extended (pglz)' WHEN 'e' THEN 'external (uncompressed)'
                                    WHEN 'm' THEN 'main' ELSE 'plain' END
               FROM pg_attribute WHERE attrelid = 'qes_sign.signatur_anfragen'::regclass AND attname = 'document'")
size=$(q "SELECT length(doc) FROM bench_doc")
echo "  the lease PDF has $size bytes (random padding); signatur_anfragen.document storage is $storage"
# check: create_request takes the document
q "SELECT qes_sign.create_request('bench', 'check', doc, '[{\"first_name\": \"A\", \"last_name\": \"B\", \"email\": \"a@example.org\"}]')
     FROM bench_doc" >/dev/null

signers='[{"first_name": "Anna", "last_name": "Becker", "email": "anna.becker@example.org", "language": "de"},
  {"first_name": "Jonas", "last_name": "Wolf", "email": "jonas.wolf@example.org", "language": "de"},
  {"first_name": "Petra", "last_name": "Hansen", "email": "petra.hansen@hv-eppendorf.example", "language": "de"}]'
signers=$(tr -d '\n' <<<"$signers")
# every client fetches the document once (\gset, as hex) and then sends it
# as a parameter ($1, -M prepared) with each call
load='\if :loaded = 0
SELECT '\''\x'\'' || encode(doc, '\''hex'\'') AS doc FROM bench_doc \gset
\set loaded 1
\endif'
cat > "$work/create.sql" <<SQL
$load
SELECT qes_sign.create_request('bench', 'Mietvertrag Eppendorfer Landstraße 42', :doc, '$signers');
SQL
cat > "$work/plain.sql" <<SQL
$load
WITH d AS (SELECT :doc::bytea AS doc),
r AS (INSERT INTO bench_req (id, verwaltung, vorgangstyp, title, document, document_sha256, document_size,
                             quality, legislation, created_by, expires_at)
      SELECT gen_random_uuid(), 'bench', 'mietvertrag', 'Mietvertrag Eppendorfer Landstraße 42', doc, sha256(doc),
             length(doc), 'QES', 'EIDAS', current_user, now() + interval '30 days' FROM d
      RETURNING id)
INSERT INTO bench_signers (request_id, position, email, first_name, last_name, language)
SELECT r.id, s.position, s.email, s.first_name, s.last_name, s.language
  FROM r, (VALUES (0, 'anna.becker@example.org', 'Anna', 'Becker', 'de'),
                  (1, 'jonas.wolf@example.org', 'Jonas', 'Wolf', 'de'),
                  (2, 'petra.hansen@hv-eppendorf.example', 'Petra', 'Hansen', 'de'))
       AS s (position, email, first_name, last_name, language);
SQL
chown postgres "$work"/*.sql

# reset: empty tables on both sides (the audit trail cannot be emptied; its
# entries are small), then a checkpoint, so no run pays for another's
reset() {
    q "TRUNCATE bench_signers, bench_req;
       TRUNCATE qes_sign.work_items, qes_sign.signers, qes_sign.callback_inbox, qes_sign.archive_staging,
                qes_sign.archive_objects, qes_sign.signatur_anfragen" >/dev/null
    q "CHECKPOINT" >/dev/null
}
# run SCRIPT [CLIENTS]: tps and server CPU per call (bench/lib.sh), each run
# on emptied tables unless noreset is set
run() {
    [ -n "${noreset:-}" ] || reset
    pgbench_run "$1" "${2:-$clients}" -M prepared -D loaded=0
}
ratio() { awk "BEGIN { printf \"%.2f\", $1 / $2 }"; }

plain_sum=0; create_sum=0; plain_cpu=0; create_cpu=0
for round in 1 2; do
    r=$(run plain); read -r p pc <<<"$r"; r=$(run create); read -r c cc <<<"$r"
    printf '  round %s: plain insert %6.1f tps %5.2f ms CPU/call   create_request %6.1f tps %5.2f ms CPU/call   (%s, CPU %s)\n' \
        "$round" "$p" "$(awk "BEGIN { print $pc / 1000 }")" "$c" "$(awk "BEGIN { print $cc / 1000 }")" \
        "$(ratio "$c" "$p")" "$(ratio "$pc" "$cc")"
    plain_sum=$(awk "BEGIN { print $plain_sum + $p }"); create_sum=$(awk "BEGIN { print $create_sum + $c }")
    plain_cpu=$(awk "BEGIN { print $plain_cpu + $pc }"); create_cpu=$(awk "BEGIN { print $create_cpu + $cc }")
done
[ "$(q "SELECT count(*) = 0 FROM qes_sign.signatur_anfragen WHERE document_size <> $size")" = t ]

# scaling: 1 client against CLIENTS
r=$(run plain 1); read -r p1 pc1 <<<"$r"; r=$(run create 1); read -r c1 cc1 <<<"$r"
printf '  1 client: plain insert %6.1f tps   create_request %6.1f tps   (%s, CPU %s); %s clients / 1 client: plain %sx, create %sx\n' \
    "$p1" "$c1" "$(ratio "$c1" "$p1")" "$(ratio "$pc1" "$cc1")" "$clients" "$(ratio "$((${plain_sum%.*} / 2))" "$p1")" \
    "$(ratio "$((${create_sum%.*} / 2))" "$c1")"

# wait events of the pgbench backends during a create run, every 10 ms
# (the sampler commits each sample and is cancelled after the run)
q "CREATE UNLOGGED TABLE bench_waits (sample int, what text)" >/dev/null
reset
pg env PGAPPNAME=bench_sampler "$bindir/psql" -X -q -h "$work" -U postgres -d postgres -c "
DO \$\$
BEGIN
    FOR k IN 1 .. 1000000 LOOP
        PERFORM pg_stat_clear_snapshot();
        INSERT INTO bench_waits
        SELECT k, coalesce(wait_event_type || ':' || wait_event, 'CPU (no wait event)')
          FROM pg_stat_activity
         WHERE application_name = 'pgbench' AND state = 'active';
        COMMIT;
        PERFORM pg_sleep(0.01);
    END LOOP;
END
\$\$" >/dev/null 2>&1 &
sampler_pid=$!
pids+=("$sampler_pid")   # killed on exit too
noreset=1 run create >/dev/null
q "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE application_name = 'bench_sampler'" >/dev/null
wait "$sampler_pid" 2>/dev/null || true; sampler_pid=
echo "  wait events of the create_request backends (share of samples):"
q "SELECT format('    %-38s %s %%', what, lpad(round(100.0 * count(*) / sum(count(*)) OVER (), 1)::text, 5))
     FROM bench_waits GROUP BY what ORDER BY count(*) DESC LIMIT 8"

# where the time goes inside create_request
cat >> "$work/data/postgresql.conf" <<CONF
shared_preload_libraries = 'qes_sign,pg_stat_statements'
pg_stat_statements.track = all
track_functions = all
CONF
pg "$bindir/pg_ctl" -D "$work/data" -l "$work/server.log" -w restart >/dev/null
q "CREATE EXTENSION pg_stat_statements" >/dev/null
reset
q "SELECT pg_stat_statements_reset(), pg_stat_reset()" >/dev/null
r=$(run create); read -r ct _ <<<"$r"
echo "  inside create_request ($ct tps with pg_stat_statements and track_functions; % of create_request's time):"
q "WITH top AS (SELECT total_exec_time AS t FROM pg_stat_statements
                 WHERE toplevel AND query LIKE '%create_request%' ORDER BY calls DESC LIMIT 1)
   SELECT format('    stmt %s %%  %s ms/call  %s', lpad(round((100 * s.total_exec_time / top.t)::numeric, 1)::text, 5),
                 lpad(round((s.total_exec_time / s.calls)::numeric, 3)::text, 7),
                 left(regexp_replace(s.query, '\s+', ' ', 'g'), 90))
     FROM pg_stat_statements s, top
    WHERE NOT s.toplevel AND s.calls > 0 AND 100 * s.total_exec_time / top.t >= 1
    ORDER BY s.total_exec_time DESC LIMIT 16"
q "WITH top AS (SELECT total_time AS t, calls FROM pg_stat_user_functions WHERE funcname = 'create_request')
   SELECT format('    func %s %% self  %s %% total  %s ms/call  %s (%s calls)',
                 lpad(round((100 * f.self_time / top.t)::numeric, 1)::text, 5),
                 lpad(round((100 * f.total_time / top.t)::numeric, 1)::text, 5),
                 lpad(round((f.total_time / f.calls)::numeric, 3)::text, 7),
                 f.schemaname || '.' || f.funcname, f.calls)
     FROM pg_stat_user_functions f, top
    WHERE 100 * f.total_time / top.t >= 0.5
    ORDER BY f.self_time DESC LIMIT 14"

awk -v c="$create_sum" -v p="$plain_sum" -v cc="$create_cpu" -v pc="$plain_cpu" -v bar="$bar" 'BEGIN {
    printf "create: %.1f tps vs plain %.1f tps = %.2f (bar %.2f)%s; server CPU/call %.2f vs %.2f ms = %.2f\n",
           c / 2, p / 2, c / p, bar, ((c / p >= bar) ? "" : "  BELOW BAR"), cc / 2000, pc / 2000, pc / cc }'
exit 0
