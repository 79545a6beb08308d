#!/usr/bin/env node
'use strict';
/*
 * bench/latency.js: the driver of bench/latency.sh (which starts the
 * cluster, the double, the relay and the S3 server and passes them in the
 * environment: PGHOST, PGPORT, PGDATABASE, PGUSER; BENCH_DOUBLE, BENCH_N).
 *
 *  1. baseline: BASE_ROUNDS pg_notify round trips from a second session
 *     (SELECT pg_notify(...) sent -> notification received by the listener);
 *  2. N requests with two signers, created in one statement; waits until the
 *     worker submitted all of them (provider_id set);
 *  3. the first signer of each signs; waits until the worker has brought
 *     that in and its queue is empty;
 *  4. LISTEN qes_sign, then the N last signatures are POSTed at once to
 *     /_control/signature-requests/{sr}/signatures/{email}/sign; for each
 *     request: its signature time (signed_at in the double's answer, the
 *     moment the double recorded it; the double's clock is the real one),
 *     the arrival of its status_vollstaendig and status_archiviert NOTIFYs.
 * Prints the distribution of signature -> status_archiviert and the split.
 */
const fs = require('node:fs');
const http = require('node:http');
const path = require('node:path');
const { Client } = require(require.resolve('pg', { paths: [path.join(__dirname, '..', 'test')] }));

const DOUBLE = process.env.BENCH_DOUBLE;
const N = Number(process.env.BENCH_N || 100);
const BASE_ROUNDS = 200;
const SOLO = 3;          /* requests whose last signature comes alone: the unloaded latency */
const TIMEOUT_MS = Number(process.env.BENCH_TIMEOUT_MS || 300000);
const agent = new http.Agent({ keepAlive: true, maxSockets: Infinity });
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const now = () => performance.timeOrigin + performance.now();   /* ms since the epoch, sub-ms */

function post(p, body = {}) {
  return new Promise((resolve, reject) => {
    const data = JSON.stringify(body);
    const req = http.request(`${DOUBLE}/_control${p}`, {
      method: 'POST', agent,
      headers: { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(data) },
    }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (c) => { text += c; });
      res.on('end', () => (res.statusCode === 200 ? resolve(JSON.parse(text))
        : reject(new Error(`POST /_control${p}: HTTP ${res.statusCode} ${text}`))));
    });
    req.on('error', reject);
    req.end(data);
  });
}

async function until(what, fn) {
  const t0 = Date.now();
  for (;;) {
    if (await fn()) return Date.now() - t0;
    if (Date.now() - t0 > TIMEOUT_MS) throw new Error(`${what}: not within ${TIMEOUT_MS / 1000} s`);
    await sleep(50);
  }
}

/* pct: nearest-rank percentile of a sorted array */
const pct = (s, p) => s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))];
const ms = (v) => `${v.toFixed(1).padStart(7)} ms`;
function dist(label, values) {
  const s = [...values].sort((a, b) => a - b);
  return `${label.padEnd(44)} p50 ${ms(pct(s, 50))}  p95 ${ms(pct(s, 95))}  p99 ${ms(pct(s, 99))}  max ${ms(s[s.length - 1])}`;
}

/* cpu: CPU seconds so far of the processes that matter: the worker, the other PostgreSQL
 * processes (the relay's backends and the rest, live ones plus those that have exited), the
 * double, the relay, the S3 server, this driver; and the machine's idle time */
const TICK = 100;
function ticks(pid) {
  try {
    const f = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').replace(/^.*\) /, '').split(' ');
    return { own: (Number(f[11]) + Number(f[12])) / TICK, children: (Number(f[13]) + Number(f[14])) / TICK };
  } catch (e) { return { own: 0, children: 0 }; }
}
function cpu(workerPid) {
  const out = {};
  const pm = Number(fs.readFileSync(path.join(process.env.BENCH_PGDATA, 'postmaster.pid'), 'utf8').split('\n')[0]);
  let kids = [];
  try { kids = fs.readFileSync(`/proc/${pm}/task/${pm}/children`, 'utf8').trim().split(/\s+/).map(Number); } catch (e) { /* none */ }
  const p = ticks(pm);
  out['qes_sign worker'] = ticks(workerPid).own;
  out['other PostgreSQL processes'] = p.own + p.children + kids.filter((k) => k !== workerPid).reduce((a, k) => a + ticks(k).own, 0);
  for (const kv of (process.env.BENCH_PIDS || '').split(' ').filter(Boolean)) {
    const [name, pid] = kv.split('=');
    out[name] = ticks(pid).own;
  }
  const u = process.cpuUsage();
  out['this driver'] = (u.user + u.system) / 1e6;
  const st = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
  out.idle = (st[3] + st[4]) / TICK;
  return out;
}

/* sign: the last signature of request r at the double; records send, answer and signed_at */
let seen;
async function sign(r) {
  const e = seen.get(r.id);
  e.sent = now();
  const sr = await post(`/signature-requests/${r.provider_id}/signatures/letzte@example.org/sign`);
  e.answered = now();
  const sig = sr.signatures.find((s) => s.signer_identity_data.email_address === 'letzte@example.org');
  e.signed = Date.parse(sig.signed_at);
}

async function main() {
  const admin = new Client({ application_name: 'bench latency (admin)' });
  const sender = new Client({ application_name: 'bench latency (notify sender)' });
  const listener = new Client({ application_name: 'bench latency (LISTEN)' });
  for (const c of [admin, sender, listener]) await c.connect();

  /* 1. baseline: plain pg_notify round trip through a second session */
  const rtt = [];
  let waiting = null;
  listener.on('notification', (m) => {
    if (m.channel === 'bench_rtt' && waiting) { const w = waiting; waiting = null; w(now()); }
  });
  await listener.query('LISTEN bench_rtt');
  for (let i = 0; i < BASE_ROUNDS; i++) {
    const got = new Promise((r) => { waiting = r; });
    const t0 = now();
    await sender.query('SELECT pg_notify($1, $2)', ['bench_rtt', String(i)]);
    rtt.push((await got) - t0);
  }
  await listener.query('UNLISTEN bench_rtt');

  /* 2. N requests, two signers each */
  const { rows: created } = await admin.query(
    `SELECT qes_sign.create_request('hv-bench', 'Latenz ' || g, convert_to('%PDF-1.4 bench ' || g || ' %%EOF', 'UTF8'),
         '[{"first_name": "Erste", "last_name": "Partei", "email": "erste@example.org"},
           {"first_name": "Letzte", "last_name": "Partei", "email": "letzte@example.org"}]') AS id
       FROM generate_series(1, $1) g`, [N + SOLO]);
  const all = created.map((r) => r.id);
  const ids = all.slice(0, N);
  const soloIds = all.slice(N);
  const submitMs = await until('submitted', async () => (await admin.query(
    'SELECT count(*)::int AS c FROM qes_sign.signatur_anfragen WHERE id = ANY($1) AND provider_id IS NOT NULL',
    [all])).rows[0].c === N + SOLO);
  const { rows: allReqs } = await admin.query(
    'SELECT id, provider_id FROM qes_sign.signatur_anfragen WHERE id = ANY($1)', [all]);
  const reqs = allReqs.filter((r) => ids.includes(r.id));
  const soloReqs = allReqs.filter((r) => soloIds.includes(r.id));

  /* 3. the other signer of each signs first; then the queue must be quiet */
  for (let i = 0; i < allReqs.length; i += 50) {
    await Promise.all(allReqs.slice(i, i + 50).map((r) =>
      post(`/signature-requests/${r.provider_id}/signatures/erste@example.org/sign`)));
  }
  await until('first signatures recorded', async () => (await admin.query(
    `SELECT count(*)::int AS c FROM qes_sign.signers s WHERE s.request_id = ANY($1)
        AND s.email = 'erste@example.org' AND s.status = 'signed'`, [all])).rows[0].c === N + SOLO);
  await until('queue empty', async () => (await admin.query(
    `SELECT count(*)::int AS c FROM qes_sign.work_items WHERE state = 'pending'`)).rows[0].c === 0);
  await sleep(500);

  /* 4. LISTEN, then all last signatures at once */
  seen = new Map(all.map((id) => [id, {}]));
  let archived = 0;
  listener.on('notification', (m) => {
    if (m.channel !== 'qes_sign') return;
    const t = now();
    const p = JSON.parse(m.payload);
    const e = seen.get(p.id);
    if (!e) return;
    if (p.event === 'status_vollstaendig') e.vollstaendig = t;
    if (p.event === 'status_archiviert' && e.archiviert === undefined) { e.archiviert = t; archived++; }
  });
  await listener.query('LISTEN qes_sign');
  /* the unloaded latency: SOLO requests, one at a time */
  for (const r of soloReqs) {
    await sign(r);
    await until('solo archiviert', async () => seen.get(r.id).archiviert !== undefined);
    await sleep(200);
  }
  const { rows: [wk] } = await admin.query(`SELECT pid FROM pg_stat_activity WHERE backend_type = 'qes_sign worker'`);
  const cpu0 = cpu(wk.pid);
  const stats0 = await admin.query(`SELECT metric, value FROM qes_sign.operations WHERE metric = 'api_calls'`);
  const tFire = now();
  await Promise.all(reqs.map(sign));
  const fireMs = now() - tFire;
  await until('all archiviert', async () => archived === N + SOLO);
  const tAll = now() - tFire;
  const cpu1 = cpu(wk.pid);
  const stats1 = await admin.query(`SELECT metric, value FROM qes_sign.operations WHERE metric = 'api_calls'`);
  const calls = Number(stats1.rows[0].value) - Number(stats0.rows[0].value);

  const lat = (e) => e.archiviert - Math.max(e.signed, e.sent);
  const solo = soloIds.map((id) => lat(seen.get(id)));
  const e2e = [], toVoll = [], vollToArch = [], answer = [];
  for (const id of ids) {
    const e = seen.get(id);
    /* signed_at has ms resolution: take the later of it and the send time */
    const t0 = Math.max(e.signed, e.sent);
    e2e.push(e.archiviert - t0);
    toVoll.push(e.vollstaendig - t0);
    vollToArch.push(e.archiviert - e.vollstaendig);
    answer.push(e.answered - e.sent);
  }
  const p99 = pct([...e2e].sort((a, b) => a - b), 99);
  const phase = Math.max(...ids.map((id) => seen.get(id).archiviert)) - Math.min(...ids.map((id) => seen.get(id).vollstaendig));
  console.log(`setup: ${N} requests submitted ${submitMs} ms after create; ${N} last signatures fired within ${fireMs.toFixed(0)} ms; ` +
              `all archiviert ${tAll.toFixed(0)} ms after the first; ${calls} worker calls (S3 and Skribble) meanwhile`);
  const wall = tAll / 1000;
  console.log(`CPU during the burst (${wall.toFixed(2)} s wall x ${require('node:os').cpus().length} cores): ` +
    Object.keys(cpu1).map((k) => `${k} ${(cpu1[k] - cpu0[k]).toFixed(2)} s (${((cpu1[k] - cpu0[k]) / wall * 100).toFixed(0)}%)`).join(', '));
  console.log(dist('signature -> NOTIFY status_archiviert', e2e) + `   bar p99 < 1000 ms: ${p99 < 1000 ? 'met' : 'MISSED'}`);
  const p99v = pct([...toVoll].sort((a, b) => a - b), 99);
  console.log(dist('  of which signature -> status_vollstaendig', toVoll) + `   bar p99 < 300 ms: ${p99v < 300 ? 'met' : 'MISSED'}`);
  console.log(dist('  of which vollstaendig -> status_archiviert', vollToArch));
  console.log(dist(`baseline: pg_notify round trip (${BASE_ROUNDS}x)`, rtt));
  console.log(dist(`baseline: double's sign answer (${N} at once)`, answer));
  console.log(dist(`baseline: one request alone (${SOLO}x, same path)`, solo));
  console.log(`ratio: p99 with ${N} at once / p50 alone = ${(p99 / pct([...solo].sort((a, b) => a - b), 50)).toFixed(1)}x`);
  console.log(`archive phase of the ${N}: ${phase.toFixed(0)} ms from the first status_vollstaendig to the last status_archiviert`);
  for (const c of [admin, sender, listener]) await c.end();
  agent.destroy();
}

main().catch((e) => { console.error(`latency: ${e.stack}`); process.exit(1); });
