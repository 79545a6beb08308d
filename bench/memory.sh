#!/usr/bin/env bash
# bench/memory.sh [--tiny] [N1] [N2]: the worker's memory over many full
# lifecycles (create -> submit -> sign -> callback/refresh -> vollstaendig ->
# archive to S3 -> archiviert).  Defaults N1 = 1000, N2 = 10000.
#
# One temporary cluster with the worker pointed at the Skribble double, the
# callback relay and the local S3 server (max_concurrency 64, fsync off,
# reconcile interval 1h).  A Node driver (written to the temp dir) runs
# lifecycles in batches: create a batch (one signer each), wait until the
# worker submitted it, sign all at the double, wait until every request is
# archiviert.  After a warm-up, after N1 and after N2 lifecycles in all it
# reads the worker's /proc/<pid>/status (VmRSS, and RssAnon: private memory,
# without the shared buffers it touched) and has the worker log its memory
# contexts (pg_log_backend_memory_contexts), parsed from the server log.
# Prints RSS at each point, the growth N1 -> N2 (bar: RssAnon < 5 MB), and every
# memory context whose size or count changed after the warm-up.
# --tiny: warm-up 10, N1 = 25, N2 = 50.  Exits 0 whether or not the bar is met.
set -euo pipefail
tiny=0
if [ "${1:-}" = --tiny ]; then tiny=1; shift; fi
n1=${1:-1000}
n2=${2:-10000}
warm=$(( n1 / 5 > 10 ? n1 / 5 : 10 ))
batch=500
if [ "$tiny" = 1 ]; then warm=10; n1=25; n2=50; batch=25; fi
. "$(dirname "$0")/lib.sh"
bench_init memory
bench_stack \
    "log_line_prefix = '%m [%p] '" \
    "qes_sign.max_concurrency = 64" \
    "qes_sign.max_host_connections = 64"

printf 'bench/memory.sh: warm-up %s, N1 %s, N2 %s lifecycles in batches of %s; %s cores, %s; fsync off, max_concurrency 64\n' \
    "$warm" "$n1" "$n2" "$batch" "$(nproc)" "$(q 'SHOW server_version' | sed 's/ .*//;s/^/PostgreSQL /')"

cat > "$work/driver.js" <<'JS'
'use strict';
const fs = require('node:fs');
const http = require('node:http');
const { Client } = require(require.resolve('pg', { paths: [process.env.BENCH_TEST_DIR] }));
const [DOUBLE, LOG] = [process.env.BENCH_DOUBLE, process.env.BENCH_LOG];
const [WARM, N1, N2, BATCH] = ['BENCH_WARM', 'BENCH_N1', 'BENCH_N2', 'BENCH_BATCH'].map((k) => Number(process.env[k]));
const agent = new http.Agent({ keepAlive: true, maxSockets: 64 });
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const MB = (b) => (b / 1048576).toFixed(1);

function sign(sr) {
  return new Promise((resolve, reject) => {
    const req = http.request(`${DOUBLE}/_control/signature-requests/${sr}/signatures/mieter@example.org/sign`, {
      method: 'POST', agent, headers: { 'Content-Type': 'application/json', 'Content-Length': 2 },
    }, (res) => {
      res.resume();
      res.on('end', () => (res.statusCode === 200 ? resolve() : reject(new Error(`sign ${sr}: HTTP ${res.statusCode}`))));
    });
    req.on('error', reject);
    req.end('{}');
  });
}

async function until(db, what, sql, args, want, timeoutMs = 600000) {
  const t0 = Date.now();
  for (;;) {
    const { rows } = await db.query(sql, args);
    if (rows[0].c === want) return;
    if (Date.now() - t0 > timeoutMs) {
      const { rows: w } = await db.query(`SELECT kind, state, count(*)::int AS n, max(last_error) AS err
                                            FROM qes_sign.work_items GROUP BY 1, 2 ORDER BY 1, 2`);
      throw new Error(`${what}: ${rows[0].c} of ${want} after ${timeoutMs / 1000} s; work items ${JSON.stringify(w)}`);
    }
    await sleep(100);
  }
}

let done = 0;
/* lifecycles: k full lifecycles in batches */
async function lifecycles(db, k) {
  while (k > 0) {
    const b = Math.min(BATCH, k);
    const { rows } = await db.query(
      `SELECT qes_sign.create_request('hv-bench', 'Speicher ' || ($2::int + g),
              convert_to('%PDF-1.4 memory bench ' || g || ' %%EOF', 'UTF8'),
              '[{"first_name": "Mia", "last_name": "Mieter", "email": "mieter@example.org"}]') AS id
         FROM generate_series(1, $1) g`, [b, done]);
    const ids = rows.map((r) => r.id);
    await until(db, 'submitted', `SELECT count(*)::int AS c FROM qes_sign.signatur_anfragen
                                   WHERE id = ANY($1) AND provider_id IS NOT NULL`, [ids], b);
    const { rows: srs } = await db.query('SELECT provider_id FROM qes_sign.signatur_anfragen WHERE id = ANY($1)', [ids]);
    await Promise.all(srs.map((r) => sign(r.provider_id)));
    await until(db, 'archiviert', `SELECT count(*)::int AS c FROM qes_sign.signatur_anfragen
                                    WHERE id = ANY($1) AND status = 'archiviert'`, [ids], b);
    done += b;
    k -= b;
  }
}

function procStatus(pid) {
  const out = {};
  for (const l of fs.readFileSync(`/proc/${pid}/status`, 'utf8').split('\n')) {
    const m = /^(VmRSS|VmHWM|RssAnon|RssFile|RssShmem):\s+(\d+) kB/.exec(l);
    if (m) out[m[1]] = Number(m[2]) * 1024;
  }
  return out;
}

/* contexts: has the worker log its memory contexts; {grand, byName: {name: {n, total, used}}} */
async function contexts(db, pid) {
  const from = fs.statSync(LOG).size;
  await db.query('SELECT pg_log_backend_memory_contexts($1)', [pid]);
  const t0 = Date.now();
  let text = '';
  while (Date.now() - t0 < 10000) {
    await sleep(200);
    const fd = fs.openSync(LOG, 'r');
    const size = fs.fstatSync(fd).size;
    const buf = Buffer.alloc(size - from);
    fs.readSync(fd, buf, 0, buf.length, from);
    fs.closeSync(fd);
    text = buf.toString('utf8');
    if (new RegExp(`\\[${pid}\\] LOG:  Grand total`).test(text)) break;
  }
  const byName = {};
  let grand = null;
  for (const l of text.split('\n')) {
    if (!l.includes(`[${pid}] LOG:  `)) continue;
    let m = /level: (\d+); (.*?): (\d+) total in \d+ blocks; \d+ free \(\d+ chunks\); (\d+) used/.exec(l);
    if (!m) {
      const mm = /level: (\d+); (\d+) more child contexts containing (\d+) total in \d+ blocks; \d+ free \(\d+ chunks\); (\d+) used/.exec(l);
      if (mm) m = [null, mm[1], `(more child contexts at level ${mm[1]})`, mm[3], mm[4], Number(mm[2])];
    }
    if (m) {
      const e = byName[m[2]] || (byName[m[2]] = { n: 0, total: 0, used: 0 });
      e.n += m[5] || 1; e.total += Number(m[3]); e.used += Number(m[4]);
    }
    const g = /Grand total: (\d+) bytes in \d+ blocks; \d+ free \(\d+ chunks\); (\d+) used/.exec(l);
    if (g) grand = { total: Number(g[1]), used: Number(g[2]) };
  }
  return { grand, byName };
}

async function main() {
  const db = new Client({ application_name: 'bench memory' });
  await db.connect();
  const { rows: [w] } = await db.query(`SELECT pid FROM pg_stat_activity WHERE backend_type = 'qes_sign worker'`);
  const pid = w.pid;
  const points = [];
  const t0 = Date.now();
  for (const [label, target] of [['warm-up', WARM], ['N1', N1], ['N2', N2]]) {
    const ts = Date.now();
    await lifecycles(db, target - done);
    const secs = (Date.now() - ts) / 1000;
    await sleep(1500);     /* the worker idles: the last round's loop context is reset */
    points.push({ label, done, secs, status: procStatus(pid), ctx: await contexts(db, pid) });
    const p = points[points.length - 1];
    console.log(`after ${String(done).padStart(6)} lifecycles (${label.padEnd(7)}): VmRSS ${MB(p.status.VmRSS).padStart(6)} MB ` +
                `(RssAnon ${MB(p.status.RssAnon)}, RssShmem ${MB(p.status.RssShmem)}, RssFile ${MB(p.status.RssFile)}), ` +
                `memory contexts ${p.ctx.grand ? MB(p.ctx.grand.total) : '?'} MB; ` +
                `${(target - (points.length > 1 ? points[points.length - 2].done : 0)) / secs > 0 ? ((p.done - (points.length > 1 ? points[points.length - 2].done : 0)) / secs).toFixed(0) : '?'} lifecycles/s`);
  }
  const [pw, p1, p2] = points;
  const grow = p2.status.VmRSS - p1.status.VmRSS;
  const growAnon = p2.status.RssAnon - p1.status.RssAnon;
  console.log(`VmRSS growth N1 -> N2 (${p1.done} -> ${p2.done}): ${MB(grow)} MB (no bar: it counts the shared buffers the worker touched)`);
  console.log(`RssAnon growth N1 -> N2: ${MB(growAnon)} MB   bar < 5 MB: ${growAnon < 5 * 1048576 ? 'met' : 'MISSED'}   ` +
              `(the worker's private memory; the rest of VmRSS growth, RssShmem ${MB(p2.status.RssShmem - p1.status.RssShmem)} MB, ` +
              `is shared buffers it touched, bounded by shared_buffers)`);
  console.log(`VmRSS growth warm-up -> N1 (${pw.done} -> ${p1.done}): ${MB(p1.status.VmRSS - pw.status.VmRSS)} MB, RssAnon ${MB(p1.status.RssAnon - pw.status.RssAnon)} MB`);
  if (pw.ctx.grand && p2.ctx.grand) {
    console.log(`memory contexts (Grand total) warm-up ${pw.ctx.grand.total} -> N1 ${p1.ctx.grand.total} -> N2 ${p2.ctx.grand.total} bytes`);
  }
  const names = new Set([...Object.keys(pw.ctx.byName), ...Object.keys(p1.ctx.byName), ...Object.keys(p2.ctx.byName)]);
  const changed = [];
  for (const name of names) {
    const v = [pw, p1, p2].map((p) => p.ctx.byName[name] || { n: 0, total: 0 });
    if (v[0].total !== v[2].total || v[0].n !== v[2].n) changed.push([name, v]);
  }
  changed.sort((a, b) => (b[1][2].total - b[1][0].total) - (a[1][2].total - a[1][0].total));
  if (changed.length === 0) console.log('contexts: none changed in size or count after the warm-up');
  for (const [name, v] of changed) {
    console.log(`  context ${name.slice(0, 70).padEnd(70)} ${v.map((x) => `${x.n}x ${x.total}`).join(' -> ')} bytes`);
  }
  console.log(`total ${((Date.now() - t0) / 1000).toFixed(0)} s`);
  await db.end();
  agent.destroy();
}

main().catch((e) => { console.error(`memory: ${e.stack}`); process.exit(1); });
JS

BENCH_TEST_DIR="$repo/test" BENCH_LOG="$work/server.log" \
PGHOST=$work PGPORT=5432 PGDATABASE=postgres PGUSER=postgres \
BENCH_DOUBLE="http://127.0.0.1:$double_port" BENCH_WARM=$warm BENCH_N1=$n1 BENCH_N2=$n2 BENCH_BATCH=$batch \
    node "$work/driver.js"
