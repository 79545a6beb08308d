'use strict';
/*
 * test/yousign_double/selftest.js
 *
 * Self-test of the Yousign API v3 test double: starts server.js as a child
 * process, drives the QES flow, every validation and documented error,
 * webhooks (HMAC checked on the raw bytes), rate limits, faults and every
 * switch through its HTTP API and /_control.
 * Run: node --test test/yousign_double/selftest.js
 */

const { test, before, after, beforeEach } = require('node:test');
const assert = require('node:assert/strict');
const { spawn } = require('node:child_process');
const http = require('node:http');
const path = require('node:path');
const crypto = require('node:crypto');
const dt = require('../lib/double_test');

const SERVER = path.join(__dirname, 'server.js');
const KEY = 'test-key';
const SECRET = 'whsec-0123456789abcdef0123456789ab';
const START = '2025-07-01T10:00:00Z';
const QES = 'qualified_electronic_signature';
const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;
const TIME_RE = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00$/;

/* ------------------------------------------------------------------ */
/* helpers                                                             */
/* ------------------------------------------------------------------ */

const agent = new http.Agent({ keepAlive: true, maxSockets: 32 });
let srv;

const startServer = (args, env) => dt.startServer(SERVER, args, env);

/* runServer runs the server to its end (for bad options and --help): {code, out, err}. */
function runServer(args, env = {}) {
  return new Promise((resolve) => {
    const proc = spawn(process.execPath, [SERVER, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: Object.assign({}, process.env, env) });
    let out = '';
    let err = '';
    proc.stdout.on('data', (c) => { out += c; });
    proc.stderr.on('data', (c) => { err += c; });
    proc.on('exit', (code) => resolve({ code, out, err }));
  });
}

const { stopServer } = dt;

/* call sends one request; resolves {status, headers, buf, text, json}. opts: body (JSON), raw + contentType, headers, key (null: none), server. */
async function call(method, p, opts = {}) {
  const s = opts.server || srv;
  const headers = Object.assign({}, opts.headers || {});
  let body;
  if (opts.body !== undefined) {
    body = Buffer.from(typeof opts.body === 'string' ? opts.body : JSON.stringify(opts.body));
    headers['Content-Type'] = headers['Content-Type'] || 'application/json';
  } else if (opts.raw !== undefined) {
    body = opts.raw;
    if (opts.contentType) headers['Content-Type'] = opts.contentType;
  }
  const key = opts.key === undefined ? (p.startsWith('/v3') ? KEY : null) : opts.key;
  if (key !== null) headers.Authorization = `Bearer ${key}`;
  if (body !== undefined) headers['Content-Length'] = body.length;
  return dt.request({ port: s.port, method, path: p, headers, body, agent: opts.agent === false ? false : agent, timeout: opts.timeout });
}

const ctl = (method, p, body, s) => call(method, '/_control' + p, Object.assign(body === undefined ? {} : { body }, s ? { server: s } : {}));
const setOptions = async (o, s) => {
  const r = await ctl('POST', '/options', o, s);
  assert.equal(r.status, 200, r.text);
  return r.json;
};
const advance = async (ms, s) => assert.equal((await ctl('POST', '/clock', { advance_ms: ms }, s)).status, 200);
const { sleep } = dt;
const waitFor = (fn, ms, what) => dt.waitFor(fn, ms, what, 15);

/* makePdf builds a small PDF with `pages` page objects; texts[i] is put in a content stream after page i. */
function makePdf({ version = '1.7', pages = 2, texts = [], encrypt = false } = {}) {
  const lines = [`%PDF-${version}`, '1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj', `2 0 obj << /Type /Pages /Count ${pages} >> endobj`];
  for (let i = 0; i < pages; i++) {
    lines.push(`${3 + i} 0 obj << /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] >> endobj`);
    if (texts[i]) lines.push(`stream\nBT\n72 700 Td\n(${texts[i]}) Tj\nET\nendstream`);
  }
  lines.push(encrypt ? 'trailer << /Root 1 0 R /Encrypt 9 0 R >>' : 'trailer << /Root 1 0 R >>', '%%EOF', '');
  return Buffer.from(lines.join('\n'), 'latin1');
}

/* multipart builds a multipart/form-data body: parts are {name, value} or {name, filename, contentType, data}. */
function multipart(parts) {
  const boundary = '----ydtest' + crypto.randomBytes(8).toString('hex');
  const chunks = [];
  for (const f of parts) {
    let h = `--${boundary}\r\nContent-Disposition: form-data; name="${f.name}"`;
    if (f.filename !== undefined) h += `; filename="${f.filename}"\r\nContent-Type: ${f.contentType || 'application/pdf'}`;
    h += '\r\n\r\n';
    chunks.push(Buffer.from(h, 'utf8'), Buffer.isBuffer(f.data) ? f.data : Buffer.from(String(f.value), 'utf8'), Buffer.from('\r\n'));
  }
  chunks.push(Buffer.from(`--${boundary}--\r\n`));
  return { raw: Buffer.concat(chunks), contentType: `multipart/form-data; boundary=${boundary}` };
}

const FIRST = ['Anna', 'Bernd', 'Clara'];
const LAST = ['Müller', "O'Brien", 'Lüdenscheidt-Meier'];

async function createSr(extra = {}, s) {
  const r = await call('POST', '/v3/signature_requests', { body: Object.assign({ name: 'Mietvertrag', delivery_mode: 'email', ordered_signers: true }, extra), server: s });
  assert.equal(r.status, 201, r.text);
  return r.json;
}

function uploadRaw(srId, parts, s) {
  const mp = multipart(parts);
  return call('POST', `/v3/signature_requests/${srId}/documents`, { raw: mp.raw, contentType: mp.contentType, server: s });
}

async function upload(srId, { pdf = makePdf(), nature = 'signable_document', extra = [], filename = 'contract.pdf' } = {}, s) {
  const r = await uploadRaw(srId, [{ name: 'file', filename, data: pdf }, { name: 'nature', value: nature }, ...extra], s);
  assert.equal(r.status, 201, r.text);
  return r.json;
}

function signerBody(i, docIds, level = QES, over = {}) {
  return Object.assign({
    info: { first_name: FIRST[i], last_name: LAST[i], email: `signer${i + 1}@example.com`, phone_number: `+4179123456${i}`, locale: 'de' },
    signature_level: level,
    fields: docIds.map((d) => ({ document_id: d, type: 'signature', page: 1, x: 100, y: 600 + i * 70, width: 180, height: 60 })),
  }, over);
}

function addSignerRaw(srId, body, s) {
  return call('POST', `/v3/signature_requests/${srId}/signers`, { body, server: s });
}

async function addSigner(srId, body, s) {
  const r = await addSignerRaw(srId, body, s);
  assert.equal(r.status, 201, r.text);
  return r.json;
}

/* readyRequest: a draft with documents and signers that have signature fields. */
async function readyRequest({ signers = 1, level = QES, ordered = true, extra = {}, docs = 1 } = {}, s) {
  const sr = await createSr(Object.assign({ ordered_signers: ordered }, extra), s);
  const docIds = [];
  for (let i = 0; i < docs; i++) docIds.push((await upload(sr.id, {}, s)).id);
  const ss = [];
  for (let i = 0; i < signers; i++) ss.push(await addSigner(sr.id, signerBody(i, docIds, level), s));
  return { sr, docIds, signers: ss };
}

async function activate(srId, s) {
  const r = await call('POST', `/v3/signature_requests/${srId}/activate`, { server: s });
  assert.equal(r.status, 201, r.text);
  return r.json;
}

async function getSr(srId, s) {
  const r = await call('GET', `/v3/signature_requests/${srId}`, { server: s });
  assert.equal(r.status, 200, r.text);
  return r.json;
}

const act = (srId, signer, action, body = {}, s) => ctl('POST', `/signature_requests/${srId}/signers/${encodeURIComponent(signer)}/${action}`, body, s);

/* assertInvalid checks a 400 with invalid_params naming exactly `names` (any order) and the given type. */
function assertInvalid(r, names, type = 'validation.error') {
  assert.equal(r.status, 400, r.text);
  const b = r.json;
  assert.equal(b.type, type, r.text);
  assert.equal(typeof b.detail, 'string');
  assert.ok(Array.isArray(b.invalid_params), r.text);
  for (const p of b.invalid_params) {
    assert.equal(typeof p.name, 'string');
    assert.equal(typeof p.reason, 'string');
  }
  assert.deepEqual(b.invalid_params.map((p) => p.name).sort(), names.slice().sort(), r.text);
  return b;
}

function assertProblem(r, status, type) {
  assert.equal(r.status, status, r.text);
  assert.match(r.headers['content-type'], /^application\/json/);
  const b = r.json;
  assert.equal(b.type, type, r.text);
  assert.equal(typeof b.detail, 'string');
  return b;
}

/* zipNames lists the entry names of a ZIP from its central directory. */
function zipNames(buf) {
  const end = buf.lastIndexOf(Buffer.from([0x50, 0x4b, 0x05, 0x06]));
  assert.ok(end >= 0, 'no end of central directory');
  const n = buf.readUInt16LE(end + 10);
  let p = buf.readUInt32LE(end + 16);
  const names = [];
  for (let i = 0; i < n; i++) {
    assert.equal(buf.readUInt32LE(p), 0x02014b50);
    const len = buf.readUInt16LE(p + 28);
    const extra = buf.readUInt16LE(p + 30);
    const comment = buf.readUInt16LE(p + 32);
    names.push(buf.toString('utf8', p + 46, p + 46 + len));
    p += 46 + len + extra + comment;
  }
  return names;
}

/* ------------------------------------------------------------------ */
/* webhook receiver                                                    */
/* ------------------------------------------------------------------ */

/*
 * The receiver answers by path: /hook 200; /fail/N/tag 500 for the first N
 * hits; /slow/MS/tag holds the first hit MS ms; /redirect/N/tag/k redirects
 * until k = N; /status/CODE/tag always CODE.  Every request is recorded
 * with its raw body and whether its HMAC matches SECRET.
 */
const received = [];
const hits = new Map();
let receiver;
let hookBase;

function startReceiver() {
  return new Promise((resolve) => {
    receiver = http.createServer((req, res) => {
      const chunks = [];
      req.on('data', (c) => chunks.push(c));
      req.on('end', () => {
        const raw = Buffer.concat(chunks);
        const expected = 'sha256=' + crypto.createHmac('sha256', SECRET).update(raw).digest('hex');
        let json = null;
        try { json = JSON.parse(raw.toString('utf8')); } catch { /* recorded as null */ }
        const rec = { path: req.url, method: req.method, headers: req.headers, raw, json, sigOk: req.headers['x-yousign-signature-256'] === expected, at: Date.now() };
        received.push(rec);
        const n = (hits.get(req.url) || 0) + 1;
        hits.set(req.url, n);
        let m;
        if ((m = /^\/fail\/(\d+)\//.exec(req.url)) && n <= Number(m[1])) { res.writeHead(500); return res.end('nope'); }
        if ((m = /^\/status\/(\d+)\//.exec(req.url))) { res.writeHead(Number(m[1])); return res.end(); }
        if ((m = /^\/redirect\/(\d+)\/([^/]+)\/(\d+)$/.exec(req.url)) && Number(m[3]) < Number(m[1])) {
          res.writeHead(307, { Location: `/redirect/${m[1]}/${m[2]}/${Number(m[3]) + 1}` });
          return res.end();
        }
        if ((m = /^\/slowall\/(\d+)\//.exec(req.url))) {
          setTimeout(() => { if (!res.destroyed) { res.writeHead(200); res.end('late'); } }, Number(m[1]));
          return;
        }
        if ((m = /^\/slow\/(\d+)\//.exec(req.url)) && n === 1) {
          setTimeout(() => { if (!res.destroyed) { res.writeHead(200); res.end('late'); } }, Number(m[1]));
          return;
        }
        res.writeHead(200);
        res.end('ok');
      });
    });
    receiver.listen(0, '127.0.0.1', () => {
      hookBase = `http://127.0.0.1:${receiver.address().port}`;
      resolve();
    });
  });
}

const hooksFor = (srId) => received.filter((r) => r.json && ((r.json.data && r.json.data.signature_request && r.json.data.signature_request.id === srId)));
const eventName = (r) => (r.json.metadata ? r.json.metadata.event_name : r.json.event_name);

before(async () => {
  await startReceiver();
  srv = await startServer(['--rate-per-minute', '0', '--rate-per-hour', '0', '--clock', START,
    '--webhook-url', `${hookBase}/hook`, '--webhook-secret', SECRET, '--webhook-retry-schedule-ms', '50,50,50',
    '--audit-trail-delay-ms', '1000']);
});

after(async () => {
  if (srv) assert.equal(await stopServer(srv), 0);
  agent.destroy();
  receiver.closeAllConnections();
  await new Promise((r) => receiver.close(r));
  /* every webhook the double ever sent carried a valid signature of its raw body */
  assert.ok(received.length > 0);
  const bad = received.filter((r) => !r.sigOk);
  assert.deepEqual(bad.map((r) => r.path), []);
});

beforeEach(async () => {
  const r = await ctl('POST', '/reset');
  assert.equal(r.status, 200, r.text);
});

/* ------------------------------------------------------------------ */
/* start, options, auth, routing                                       */
/* ------------------------------------------------------------------ */

test('start: LISTENING on 127.0.0.1; --help; bad options exit 2; flags and YOUSIGN_DOUBLE_* variables set options', async () => {
  const h = await ctl('GET', '/health');
  assert.deepEqual(h.json, { ok: true, port: srv.port });
  const help = await runServer(['--help']);
  assert.equal(help.code, 0);
  assert.match(help.out, /--pdf-min-version/);
  for (const args of [['--nope'], ['--list-order', 'sideways'], ['--rate-per-minute', '-1'], ['--clock', 'yesterday'], ['--link-ttl-hours', '73'], ['--webhook-retry-schedule-ms', '1,x']]) {
    const r = await runServer(args);
    assert.equal(r.code, 2, `${args}: ${r.err}`);
    assert.match(r.err, /^yousign_double: /);
  }
  const s = await startServer(['--list-order', 'oldest', '--sandbox'], { YOUSIGN_DOUBLE_PDF_MIN_VERSION: 'any', YOUSIGN_DOUBLE_LIST_ORDER: 'newest' });
  try {
    const o = (await ctl('GET', '/options', undefined, s)).json;
    assert.equal(o.list_order, 'oldest', 'flags win over the environment');
    assert.equal(o.pdf_min_version, 'any');
    /* [D/limits-new] sandbox: 30/min + 200/h */
    assert.equal(o.rate_per_minute, 30);
    assert.equal(o.rate_per_hour, 200);
    const r = await call('GET', '/v3/signature_requests', { server: s });
    assert.equal(r.headers['x-ratelimit-limit-minute'], '30');
    assert.equal(r.headers['x-ratelimit-limit-hour'], '200');
    /* no webhook secret given: one of 32 characters is generated [R/webhook-1] */
    assert.equal((await ctl('GET', '/webhook', undefined, s)).json.secret.length, 32);
  } finally {
    assert.equal(await stopServer(s), 0, 'SIGTERM exits 0');
  }
});

test('start-only options: --api-key, --signing-base-url, --workspace-id, --webhook-events/-description, --latency-ms, --max-body-bytes, --verbose', async () => {
  const ws = crypto.randomUUID();
  const s = await startServer(['--api-key', 'live-key', '--signing-base-url', 'https://sign.example/', '--workspace-id', ws,
    '--webhook-url', `${hookBase}/hook/startopts`, '--webhook-secret', SECRET, '--webhook-events', 'signer.notified',
    '--webhook-description', 'prod hook', '--latency-ms', '120', '--max-body-bytes', '2000', '--rate-per-minute', '0', '--verbose']);
  try {
    assert.equal((await call('GET', '/v3/signature_requests', { server: s })).status, 401, 'the default key is not accepted');
    const k = (o = {}) => Object.assign({ server: s, key: 'live-key' }, o);
    const t0 = Date.now();
    let r = await call('POST', '/v3/signature_requests', k({ body: { name: 'S', delivery_mode: 'none', ordered_signers: true } }));
    assert.equal(r.status, 201, r.text);
    assert.ok(Date.now() - t0 >= 110, '--latency-ms');
    const sr = r.json;
    assert.equal(sr.workspace_id, ws);
    const mp = multipart([{ name: 'file', filename: 'a.pdf', data: makePdf() }, { name: 'nature', value: 'signable_document' }]);
    r = await call('POST', `/v3/signature_requests/${sr.id}/documents`, k({ raw: mp.raw, contentType: mp.contentType }));
    assert.equal(r.status, 201, r.text);
    const big = multipart([{ name: 'file', filename: 'a.pdf', data: Buffer.concat([makePdf(), Buffer.alloc(2000, 0x20)]) }, { name: 'nature', value: 'signable_document' }]);
    assertInvalid(await call('POST', `/v3/signature_requests/${sr.id}/documents`, k({ raw: big.raw, contentType: big.contentType })), ['file']);
    r = await call('POST', `/v3/signature_requests/${sr.id}/signers`, k({ body: signerBody(0, [(await call('GET', `/v3/signature_requests/${sr.id}/documents`, k())).json[0].id]) }));
    assert.equal(r.status, 201, r.text);
    r = await call('POST', `/v3/signature_requests/${sr.id}/activate`, k());
    assert.match(r.json.signers[0].signature_link, /^https:\/\/sign\.example\/signatures\//);
    await waitFor(() => received.some((x) => x.path === '/hook/startopts'), 3000, 'webhook');
    await sleep(100);
    const got = received.filter((x) => x.path === '/hook/startopts');
    assert.deepEqual(got.map(eventName), ['signer.notified']);
    assert.equal(got[0].json.subscription_description, 'prod hook');
    assert.match(s.stderr(), /POST \/v3\/signature_requests 201 \d+ms/);
  } finally {
    await stopServer(s);
  }
});

test('auth: Bearer API key; 401 {type, detail} without it or with another key; no login; 404 and 405 {"message"}', async () => {
  for (const key of [null, 'other-key']) {
    const r = await call('GET', '/v3/signature_requests', { key });
    assertProblem(r, 401, 'about:blank');
  }
  const basic = await call('GET', '/v3/signature_requests', { key: null, headers: { Authorization: 'Basic dGVzdC1rZXk6' } });
  assert.equal(basic.status, 401);
  assert.equal((await call('GET', '/v3/signature_requests')).status, 200);
  assertProblem(await call('POST', '/v3/auth/login', { body: {} }), 404, 'about:blank');
  const r405 = await call('PUT', '/v3/signature_requests');
  assert.equal(r405.status, 405);
  assert.deepEqual(Object.keys(r405.json), ['message']);
  const st = (await ctl('GET', '/stats')).json;
  assert.equal(st.unauthorized, 3);
  assert.equal(st.calls_by_status['GET /v3/signature_requests']['401'], 3);
});

/* ------------------------------------------------------------------ */
/* create                                                              */
/* ------------------------------------------------------------------ */

test('create validates name, delivery_mode, ordered_signers, timezone, expiration_date, external_id, reminders, unknown keys', async () => {
  const base = { name: 'X', delivery_mode: 'none' };
  const cases = [
    [{}, ['name', 'delivery_mode']],
    [{ name: '' }, ['name']],
    [{ name: 'a'.repeat(129) }, ['name']],
    [{ delivery_mode: 'sms' }, ['delivery_mode']],
    [{ ordered_signers: 'yes' }, ['ordered_signers']],
    [{ timezone: 'Mars/Olympus' }, ['timezone']],
    [{ expiration_date: '2025/12/01' }, ['expiration_date']],
    [{ expiration_date: '2025-02-30' }, ['expiration_date']],
    [{ expiration_date: '2025-06-30' }, ['expiration_date']],     /* in the past (the clock starts 2025-07-01) */
    [{ expiration_date: '2026-07-02' }, ['expiration_date']],     /* more than a year ahead */
    [{ external_id: 'a'.repeat(256) }, ['external_id']],
    [{ external_id: 'has space' }, ['external_id']],
    [{ external_id: 'Müller' }, ['external_id']],
    [{ external_id: 42 }, ['external_id']],
    [{ reminder_settings: { interval_in_days: 3, max_occurrences: 1 } }, ['reminder_settings.interval_in_days']],
    [{ reminder_settings: { interval_in_days: 7, max_occurrences: 11 } }, ['reminder_settings.max_occurrences']],
    [{ reminder_settings: { interval_in_days: 7, max_occurrences: 2, every: 1 } }, ['reminder_settings.every']],
    [{ reminder_settings: 'weekly' }, ['reminder_settings']],
    [{ signers_allowed_to_decline: 'no' }, ['signers_allowed_to_decline']],
    [{ audit_trail_locale: 'ru' }, ['audit_trail_locale']],
    [{ workspace_id: 'ws-1' }, ['workspace_id']],
    [{ title: 'X', custom: 'y' }, ['title', 'custom']],
  ];
  for (const [extra, names] of cases) {
    const body = Object.keys(extra).length === 0 ? {} : Object.assign({}, base, extra);
    assertInvalid(await call('POST', '/v3/signature_requests', { body }), names);
  }
  for (const ok of [{ expiration_date: '2025-07-01' }, { expiration_date: '2026-07-01' }, { external_id: 'Az09_-@.%+'.repeat(25) + 'abcde' },
    { reminder_settings: null }, { reminder_settings: { interval_in_days: 14, max_occurrences: 10 } }, { external_id: null }]) {
    const r = await call('POST', '/v3/signature_requests', { body: Object.assign({}, base, ok) });
    assert.equal(r.status, 201, JSON.stringify(ok) + r.text);
  }
  assertProblem(await call('POST', '/v3/signature_requests', { raw: Buffer.from('name=X'), contentType: 'text/plain' }), 415, 'about:blank');
  assertProblem(await call('POST', '/v3/signature_requests', { body: '{"name":' }), 400, 'about:blank');
  assertProblem(await call('POST', '/v3/signature_requests', { body: '[1]' }), 400, 'about:blank');
  assert.equal((await ctl('GET', '/stats')).json.requests_created, 6);
});

test('create answers a draft SignatureRequest; defaults; expiration_date is the end of the day in its zone; time formats', async () => {
  const sr = await createSr({ name: 'Kaufvertrag', delivery_mode: 'none', external_id: 'qes-42' });
  assert.match(sr.id, UUID_RE);
  assert.equal(sr.status, 'draft');
  assert.equal(sr.name, 'Kaufvertrag');
  assert.equal(sr.delivery_mode, 'none');
  assert.equal(sr.source, 'public_api');
  assert.equal(sr.external_id, 'qes-42');
  assert.equal(sr.timezone, 'Europe/Paris');
  assert.equal(sr.signers_allowed_to_decline, false);
  assert.deepEqual(sr.signers, []);
  assert.deepEqual(sr.documents, []);
  assert.equal(sr.activated_at, null);
  assert.equal(sr.completed_at, null);
  assert.equal(sr.decline_information, null);
  assert.match(sr.created_at, TIME_RE);
  assert.ok(sr.created_at.startsWith('2025-07-01T10:00'), sr.created_at);
  /* default: six months ahead; Paris is UTC+1 in January */
  assert.equal(sr.expiration_date, '2026-01-01T22:59:59+00:00');
  const summer = await createSr({ expiration_date: '2025-08-15' });
  assert.equal(summer.expiration_date, '2025-08-15T21:59:59+00:00');
  const utc = await createSr({ expiration_date: '2025-08-15', timezone: 'UTC' });
  assert.equal(utc.expiration_date, '2025-08-15T23:59:59+00:00');
  await setOptions({ time_format: 'z' });
  const z = await getSr(summer.id);
  assert.equal(z.expiration_date, '2025-08-15T21:59:59Z');
  assert.match(z.created_at, /Z$/);
  const st = (await ctl('GET', '/stats')).json;
  assert.equal(st.requests_created, 3);
  assert.deepEqual(st.created_by_external_id, { 'qes-42': 1 });
});

/* ------------------------------------------------------------------ */
/* read and list                                                       */
/* ------------------------------------------------------------------ */

test('GET by id, 404 resource.not_found; the list: external_id[eq], status filters, q, dates, source, cursor paging, order', async () => {
  const a = await createSr({ external_id: 'ext-a', name: 'Alpha lease' });
  const b = await createSr({ external_id: 'ext-b', name: 'Beta lease' });
  const c = await createSr({ external_id: 'ext-a', name: 'Gamma' });
  assert.equal((await getSr(a.id)).id, a.id);
  assertProblem(await call('GET', `/v3/signature_requests/${crypto.randomUUID()}`), 404, 'resource.not_found');
  assertProblem(await call('GET', '/v3/signature_requests/not-a-uuid'), 404, 'resource.not_found');
  const list = async (q) => {
    const r = await call('GET', '/v3/signature_requests' + q);
    assert.equal(r.status, 200, r.text);
    assert.deepEqual(Object.keys(r.json), ['meta', 'data']);
    return r.json;
  };
  /* the lookup a client makes after a lost answer */
  let l = await list('?external_id[eq]=ext-a');
  assert.deepEqual(l.data.map((x) => x.id), [c.id, a.id]);
  assert.equal(l.meta.next_cursor, null);
  l = await list('?external_id%5Beq%5D=ext-b');
  assert.deepEqual(l.data.map((x) => x.id), [b.id]);
  assert.deepEqual((await list('?external_id[eq]=nope')).data, []);
  await ctl('POST', `/signature_requests/${b.id}/status`, { status: 'done' });
  assert.deepEqual((await list('?status[eq]=done')).data.map((x) => x.id), [b.id]);
  assert.deepEqual((await list('?status[in]=draft,done')).data.length, 3);
  assert.deepEqual((await list('?status[in][]=done&status[in][]=canceled')).data.map((x) => x.id), [b.id]);
  assert.deepEqual((await list('?q=LEASE')).data.map((x) => x.id), [b.id, a.id]);
  assert.equal((await list('?created_at[eq]=2025-07-01')).data.length, 3);
  assert.equal((await list('?created_at[before]=2025-07-01')).data.length, 0);
  assert.equal((await list('?created_at[between]=2025-06-01,2025-07-31')).data.length, 3);
  assert.equal((await list('?source[eq]=public_api')).data.length, 3);
  assert.equal((await list('?source[eq]=app')).data.length, 0);
  assert.equal((await list('?label.name[eq]=x')).data.length, 0);
  /* paging: newest first (--list-order newest), limit, after */
  const p1 = await list('?limit=2');
  assert.deepEqual(p1.data.map((x) => x.id), [c.id, b.id]);
  assert.equal(typeof p1.meta.next_cursor, 'string');
  const p2 = await list(`?limit=2&after=${p1.meta.next_cursor}`);
  assert.deepEqual(p2.data.map((x) => x.id), [a.id]);
  assert.equal(p2.meta.next_cursor, null);
  await setOptions({ list_order: 'oldest' });
  assert.deepEqual((await list('')).data.map((x) => x.id), [a.id, b.id, c.id]);
  /* bad parameters: 400 parameters_not_valid with invalid_params */
  assertInvalid(await call('GET', '/v3/signature_requests?limit=0'), ['limit'], 'parameters_not_valid');
  assertInvalid(await call('GET', '/v3/signature_requests?limit=101'), ['limit'], 'parameters_not_valid');
  assertInvalid(await call('GET', '/v3/signature_requests?after=garbage'), ['after'], 'parameters_not_valid');
  assertInvalid(await call('GET', '/v3/signature_requests?status[eq]=finished'), ['status[eq]'], 'parameters_not_valid');
  assertInvalid(await call('GET', '/v3/signature_requests?created_at[eq]=01.07.2025'), ['created_at[eq]'], 'parameters_not_valid');
  /* a typo must not list everything */
  assertInvalid(await call('GET', '/v3/signature_requests?external_id=ext-a'), ['external_id'], 'parameters_not_valid');
  await setOptions({ validation_type: 'validation.error' });
  assertInvalid(await call('GET', '/v3/signature_requests?limit=0'), ['limit'], 'validation.error');
  await setOptions({ validation_type: 'parameters_not_valid' });
  assertInvalid(await call('POST', '/v3/signature_requests', { body: {} }), ['name', 'delivery_mode'], 'parameters_not_valid');
});

test('PATCH changes a draft or ongoing request; QES keeps ordered_signers; final statuses refuse', async () => {
  const { sr } = await readyRequest();
  let r = await call('PATCH', `/v3/signature_requests/${sr.id}`, { body: { name: 'Renamed', external_id: 'ext-new', expiration_date: '2025-09-30' } });
  assert.equal(r.status, 200, r.text);
  assert.equal(r.json.name, 'Renamed');
  assert.equal(r.json.external_id, 'ext-new');
  assert.equal(r.json.expiration_date, '2025-09-30T21:59:59+00:00');
  assertInvalid(await call('PATCH', `/v3/signature_requests/${sr.id}`, { body: { ordered_signers: false } }), ['ordered_signers']);
  assertInvalid(await call('PATCH', `/v3/signature_requests/${sr.id}`, { body: { colour: 'red' } }), ['colour']);
  await activate(sr.id);
  r = await call('PATCH', `/v3/signature_requests/${sr.id}`, { body: { delivery_mode: 'none' } });
  assertProblem(r, 400, 'about:blank');
  await ctl('POST', `/signature_requests/${sr.id}/expire`);
  assertProblem(await call('PATCH', `/v3/signature_requests/${sr.id}`, { body: { name: 'Late' } }), 400, 'about:blank');
});

/* ------------------------------------------------------------------ */
/* documents                                                           */
/* ------------------------------------------------------------------ */

test('upload: multipart file + nature (+ name, parse_anchors, password); Document answer; each validation', async () => {
  const sr = await createSr();
  const pdf = makePdf({ pages: 3 });
  const doc = await upload(sr.id, { pdf, extra: [{ name: 'name', value: 'Mietvertrag.pdf' }] });
  assert.match(doc.id, UUID_RE);
  assert.equal(doc.filename, 'Mietvertrag.pdf');
  assert.equal(doc.nature, 'signable_document');
  assert.equal(doc.content_type, 'application/pdf');
  assert.equal(doc.sha256, crypto.createHash('sha256').update(pdf).digest('hex'));
  assert.equal(doc.total_pages, 3);
  assert.equal(doc.total_anchors, 0);
  assert.deepEqual((await getSr(sr.id)).documents, [{ id: doc.id, nature: 'signable_document' }]);
  const file = { name: 'file', filename: 'a.pdf', data: makePdf() };
  const nat = { name: 'nature', value: 'signable_document' };
  const cases = [
    [[file], ['nature']],
    [[file, { name: 'nature', value: 'contract' }], ['nature']],
    [[file, nat, { name: 'name', value: 'n'.repeat(129) }], ['name']],
    [[file, nat, { name: 'parse_anchors', value: 'yes' }], ['parse_anchors']],
    [[file, nat, { name: 'colour', value: 'red' }], ['colour']],
    [[nat], ['file']],
    [[{ name: 'file', value: 'no filename' }, nat], ['file']],
    [[file, file, nat], ['file']],
    [[{ name: 'file', filename: 'a.txt', data: Buffer.from('hello'), contentType: 'text/plain' }, nat], ['file']],
    /* [D/document-1] PDF >= 1.6 (--pdf-min-version 1.6, the default) */
    [[{ name: 'file', filename: 'old.pdf', data: makePdf({ version: '1.4' }) }, nat], ['file']],
    [[{ name: 'file', filename: 'locked.pdf', data: makePdf({ encrypt: true }) }, nat], ['file']],
    [[{ name: 'file', filename: 'p.jpg', data: Buffer.from([0xff, 0xd8, 0xff, 0xe0, 1, 2]), contentType: 'image/jpeg' }, nat], ['file']],
  ];
  for (const [parts, names] of cases) assertInvalid(await uploadRaw(sr.id, parts), names);
  /* an edit-locked PDF is accepted with its password; JPEG/PNG as attachment; DOCX is converted to PDF */
  await upload(sr.id, { pdf: makePdf({ encrypt: true }), extra: [{ name: 'password', value: 'secret' }] });
  const jpg = await upload(sr.id, { pdf: Buffer.from([0xff, 0xd8, 0xff, 0xe0, 1, 2]), nature: 'attachment', filename: 'id.jpg' });
  assert.equal(jpg.content_type, 'image/jpeg');
  const png = await upload(sr.id, { pdf: Buffer.from('\x89PNG\r\n\x1a\n....', 'latin1'), nature: 'attachment', filename: 'id.png' });
  assert.equal(png.content_type, 'image/png');
  const docx = await upload(sr.id, { pdf: Buffer.from('PK\x03\x04 fake docx', 'latin1'), filename: 'Vertrag.docx' });
  assert.equal(docx.content_type, 'application/pdf');
  assert.equal(docx.filename, 'Vertrag.pdf');
  await setOptions({ pdf_min_version: 'any' });
  await upload(sr.id, { pdf: makePdf({ version: '1.3' }) });
  /* not multipart: 415; a broken multipart body: 400 */
  assertProblem(await call('POST', `/v3/signature_requests/${sr.id}/documents`, { body: { file: 'JVBERi0=', nature: 'signable_document' } }), 415, 'about:blank');
  assertProblem(await call('POST', `/v3/signature_requests/${sr.id}/documents`, { raw: Buffer.from('garbage'), contentType: 'multipart/form-data; boundary=xyz' }), 400, 'about:blank');
  const docs = (await call('GET', `/v3/signature_requests/${sr.id}/documents`)).json;
  assert.equal(docs.length, 6);
  assert.equal((await call('GET', `/v3/signature_requests/${sr.id}/documents/${doc.id}`)).json.id, doc.id);
  assertProblem(await call('GET', `/v3/signature_requests/${sr.id}/documents/${crypto.randomUUID()}`), 404, 'resource.not_found');
  assert.equal((await call('DELETE', `/v3/signature_requests/${sr.id}/documents/${png.id}`)).status, 204);
  assert.equal((await getSr(sr.id)).documents.length, 5);
  assert.equal((await ctl('GET', '/stats')).json.documents_uploaded, 6);
});

test('upload limits: a file over 50 MB, a 51st document, and any upload once the request is no longer a draft', async () => {
  const sr = await createSr();
  const big = Buffer.alloc(50 * 1024 * 1024 + 1, 0x20);
  big.write('%PDF-1.7\n', 0, 'latin1');
  assertInvalid(await uploadRaw(sr.id, [{ name: 'file', filename: 'big.pdf', data: big }, { name: 'nature', value: 'attachment' }]), ['file']);
  for (let i = 0; i < 50; i++) await upload(sr.id, { nature: 'attachment', pdf: makePdf({ pages: 1 }) });
  assertInvalid(await uploadRaw(sr.id, [{ name: 'file', filename: 'x.pdf', data: makePdf() }, { name: 'nature', value: 'attachment' }]), ['file']);
  const { sr: sr2 } = await readyRequest();
  await activate(sr2.id);
  assertProblem(await uploadRaw(sr2.id, [{ name: 'file', filename: 'x.pdf', data: makePdf() }, { name: 'nature', value: 'signable_document' }]), 400, 'about:blank');
});

test('Smart Anchors: {{s1|signature|180|60}} with parse_anchors=true become signature fields of the n-th signer', async () => {
  const sr = await createSr();
  const pdf = makePdf({ pages: 2, texts: ['Mieter {{s1|signature|180|60}}', 'Vermieter {{ s2 | signature | 200 | 80 }} {{s1|mention|Lu et approuve}}'] });
  const doc = await upload(sr.id, { pdf, extra: [{ name: 'parse_anchors', value: 'true' }] });
  assert.equal(doc.total_anchors, 3);
  const plain = await upload(sr.id, { pdf, extra: [{ name: 'parse_anchors', value: 'false' }] });
  assert.equal(plain.total_anchors, 0);
  /* signers without explicit fields on the anchored document; signer 1 still needs a field on the plain one */
  const s1 = await addSigner(sr.id, signerBody(0, [plain.id]));
  const s2 = await addSigner(sr.id, signerBody(1, [plain.id]));
  const f1 = s1.fields.find((f) => f.document_id === doc.id);
  assert.deepEqual({ page: f1.page, x: f1.x, y: f1.y, width: f1.width, height: f1.height, type: f1.type }, { page: 1, x: 72, y: 142, width: 180, height: 60, type: 'signature' });
  const f2 = s2.fields.find((f) => f.document_id === doc.id);
  assert.deepEqual({ page: f2.page, width: f2.width, height: f2.height }, { page: 2, width: 200, height: 80 });
  /* QES: one signature field per signer and document, anchors included */
  const s3body = signerBody(0, [doc.id]);
  const sr3 = await createSr();
  const d3 = await upload(sr3.id, { pdf, extra: [{ name: 'parse_anchors', value: 'true' }] });
  assertInvalid(await addSignerRaw(sr3.id, Object.assign(s3body, { fields: [{ document_id: d3.id, type: 'signature', page: 1, x: 1, y: 1 }] })), ['fields']);
  await activate(sr.id);
  /* anchors out of bounds are refused */
  const bad = makePdf({ texts: ['{{s1|signature|50|60}}'] });
  assertInvalid(await uploadRaw(sr3.id, [{ name: 'file', filename: 'b.pdf', data: bad }, { name: 'nature', value: 'signable_document' }, { name: 'parse_anchors', value: 'true' }]), ['file']);
});

/* ------------------------------------------------------------------ */
/* signers                                                             */
/* ------------------------------------------------------------------ */

test('signers: HumanName rule ("Dr. Müller" is refused), e-mail, E.164 phone, locale, level, OTP, fields bounds', async () => {
  const sr = await createSr();
  const doc = await upload(sr.id);
  const att = await upload(sr.id, { nature: 'attachment' });
  const ok = (over = {}, info = {}) => {
    const b = signerBody(0, [doc.id], QES, over);
    if (b.info) b.info = Object.assign(b.info, info);
    return b;
  };
  const field = (f) => ok({ fields: [Object.assign({ document_id: doc.id, type: 'signature', page: 1, x: 10, y: 10, width: 100, height: 40 }, f)] });
  const cases = [
    [ok({}, { last_name: 'Dr. Müller' }), ['info.last_name']],
    [ok({}, { first_name: ' Anna' }), ['info.first_name']],
    [ok({}, { first_name: 'Anna ' }), ['info.first_name']],
    [ok({}, { first_name: '' }), ['info.first_name']],
    [ok({}, { last_name: 'Иванов' }), ['info.last_name']],
    [ok({}, { last_name: 'Smith, Jr' }), ['info.last_name']],
    [ok({}, { email: 'not-an-email' }), ['info.email']],
    [ok({}, { email: 'a'.repeat(89) + '@example.com' }), ['info.email']],   /* 101 characters */
    [ok({}, { phone_number: '0791234567' }), ['info.phone_number']],
    [ok({}, { phone_number: '+41 79 123 45 67' }), ['info.phone_number']],
    [ok({}, { locale: 'ru' }), ['info.locale']],
    [ok({}, { nickname: 'A' }), ['info.nickname']],
    [ok({ signature_level: 'simple' }), ['signature_level']],
    [ok({ signature_level: undefined }), ['signature_level']],
    [ok({ signature_authentication_mode: 'otp_email' }), ['signature_authentication_mode']],   /* QES: no OTP */
    [ok({ signature_authentication_mode: 'otp_fax', signature_level: 'electronic_signature' }), ['signature_authentication_mode']],
    [ok({ signature_authentication_mode: 'otp_sms', signature_level: 'advanced_electronic_signature' }, { phone_number: undefined }), ['info.phone_number']],
    [ok({}, { phone_number: undefined }), ['info.phone_number']],   /* QES needs a phone (--qes-phone required) */
    [ok({ colour: 'red' }), ['colour']],
    [ok({ info: undefined }), ['info']],
    [ok({ redirect_urls: { success: 'ftp://x' } }), ['redirect_urls.success']],
    [ok({ delivery_mode: 'sms' }), ['delivery_mode']],
    [field({ page: 0 }), ['fields[0].page']],
    [field({ page: 3 }), ['fields[0].page']],           /* the document has 2 pages */
    [field({ x: -1 }), ['fields[0].x']],
    [field({ x: 32768 }), ['fields[0].x']],
    [field({ y: 32768 }), ['fields[0].y']],
    [field({ width: 84 }), ['fields[0].width']],
    [field({ width: 2001 }), ['fields[0].width']],
    [field({ height: 36 }), ['fields[0].height']],
    [field({ height: 1001 }), ['fields[0].height']],
    [field({ type: 'text' }), ['fields[0].type']],
    [field({ document_id: crypto.randomUUID() }), ['fields[0].document_id']],
    [field({ document_id: att.id }), ['fields[0].document_id']],
    [field({ font: 'Arial' }), ['fields[0].font']],
    [ok({ fields: [{ document_id: doc.id, type: 'signature', page: 1, x: 1, y: 1 }, { document_id: doc.id, type: 'signature', page: 2, x: 1, y: 1 }] }), ['fields']],
  ];
  for (const [body, names] of cases) assertInvalid(await addSignerRaw(sr.id, JSON.parse(JSON.stringify(body))), names);
  for (const [i, info] of [{ last_name: 'Müller-Lüdenscheidt' }, { last_name: "O'Brien" }, { first_name: 'Anne (Nancy)' }, { first_name: 'José María' },
    { last_name: 'Łukasiewicz' }, { first_name: 'Jean`Luc' }, { last_name: 'Smith 3' }].entries()) {
    const r = await addSignerRaw(sr.id, ok({}, Object.assign({ email: `ok${i}@example.com` }, info)));
    assert.equal(r.status, 201, JSON.stringify(info) + r.text);
  }
  const bounds = await addSignerRaw(sr.id, ok({ fields: [{ document_id: doc.id, type: 'signature', page: 2, x: 32767, y: 0, width: 2000, height: 1000 }] }, { email: 'edge@example.com' }));
  assert.equal(bounds.status, 201, bounds.text);
  const min = await addSignerRaw(sr.id, ok({ fields: [{ document_id: doc.id, type: 'signature', page: 1, x: 0, y: 32767, width: 85, height: 37 }] }, { email: 'min@example.com' }));
  assert.equal(min.status, 201, min.text);
  const s = bounds.json;
  assert.match(s.id, UUID_RE);
  assert.equal(s.status, 'initiated');
  assert.equal(s.signature_level, QES);
  assert.equal(s.signature_link, null);
  assert.deepEqual(s.info, { first_name: 'Anna', last_name: 'Müller', email: 'edge@example.com', phone_number: '+41791234560', locale: 'de' });
  const list = (await call('GET', `/v3/signature_requests/${sr.id}/signers`)).json;
  assert.equal(list.length, 9);
  assert.equal((await call('GET', `/v3/signature_requests/${sr.id}/signers/${s.id}`)).json.id, s.id);
  assert.equal((await call('DELETE', `/v3/signature_requests/${sr.id}/signers/${s.id}`)).status, 204);
  assertProblem(await call('GET', `/v3/signature_requests/${sr.id}/signers/${s.id}`), 404, 'resource.not_found');
  /* --qes-phone optional */
  await setOptions({ qes_phone: 'optional' });
  assert.equal((await addSignerRaw(sr.id, ok({}, { phone_number: undefined, email: 'nophone@example.com' }))).status, 201);
  assert.equal((await ctl('GET', '/stats')).json.signers_added, 10);
});

test('QES rules: ordered_signers and all-QES checked on add-signer (default) or on activate; add-on switch; draft only', async () => {
  let sr = await createSr({ ordered_signers: false });
  let doc = await upload(sr.id);
  const r = assertInvalid(await addSignerRaw(sr.id, signerBody(0, [doc.id])), ['signature_level']);
  assert.match(r.invalid_params[0].reason, /ordered_signers/);
  sr = await createSr();
  doc = await upload(sr.id);
  await addSigner(sr.id, signerBody(0, [doc.id]));
  assertInvalid(await addSignerRaw(sr.id, signerBody(1, [doc.id], 'advanced_electronic_signature')), ['signature_level']);
  /* --qes-order-check activate: accepted on add, refused on activate */
  await setOptions({ qes_order_check: 'activate' });
  sr = await createSr({ ordered_signers: false });
  doc = await upload(sr.id);
  await addSigner(sr.id, signerBody(0, [doc.id]));
  await addSigner(sr.id, signerBody(1, [doc.id], 'electronic_signature'));
  const a = assertInvalid(await call('POST', `/v3/signature_requests/${sr.id}/activate`), ['signers', 'signers']);
  assert.equal(a.invalid_params.length, 2);
  assert.equal((await getSr(sr.id)).status, 'draft');
  /* --qes-enabled off: 403 */
  await setOptions({ qes_enabled: false, qes_order_check: 'signer' });
  sr = await createSr();
  doc = await upload(sr.id);
  assertProblem(await addSignerRaw(sr.id, signerBody(0, [doc.id])), 403, 'about:blank');
  assert.equal((await addSignerRaw(sr.id, signerBody(0, [doc.id], 'advanced_electronic_signature'))).status, 201);
  /* no signer added or removed once activated [D/signer-1]; the type of that 400 is --wrong-status-type */
  await setOptions({ qes_enabled: true });
  const ready = await readyRequest();
  await activate(ready.sr.id);
  assertProblem(await addSignerRaw(ready.sr.id, signerBody(1, ready.docIds)), 400, 'about:blank');
  await setOptions({ wrong_status_type: 'signature_request.not_in_draft' });
  assertProblem(await addSignerRaw(ready.sr.id, signerBody(1, ready.docIds)), 400, 'signature_request.not_in_draft');
  assertProblem(await call('DELETE', `/v3/signature_requests/${ready.sr.id}/signers/${ready.signers[0].id}`), 400, 'signature_request.not_in_draft');
});

/* ------------------------------------------------------------------ */
/* activate                                                            */
/* ------------------------------------------------------------------ */

test('activate: only a draft with a signable document and signers that each have a signature field; links; ordering', async () => {
  const sr = await createSr();
  const actR = () => call('POST', `/v3/signature_requests/${sr.id}/activate`);
  assertProblem(await actR(), 400, 'about:blank');                           /* no document */
  await upload(sr.id, { nature: 'attachment' });
  assertProblem(await actR(), 400, 'about:blank');                           /* no signable document */
  const d1 = await upload(sr.id);
  assertProblem(await actR(), 400, 'about:blank');                           /* no signer */
  await addSigner(sr.id, signerBody(0, [], 'electronic_signature', { fields: [] }));
  assertProblem(await actR(), 400, 'about:blank');                           /* a signer without field */
  const sr2 = await createSr();
  const a = await upload(sr2.id);
  await upload(sr2.id);
  await addSigner(sr2.id, signerBody(0, [a.id]));
  const r2 = assertProblem(await call('POST', `/v3/signature_requests/${sr2.id}/activate`), 400, 'about:blank');
  assert.match(r2.detail, /signable_document without a signature field/);
  assertInvalid(await call('POST', `/v3/signature_requests/${sr2.id}/activate`, { body: { sender: 'x' } }), ['sender']);
  assert.ok(d1.id);

  const ready = await readyRequest({ signers: 3, extra: { external_id: 'act-1' } });
  const r = await call('POST', `/v3/signature_requests/${ready.sr.id}/activate`, { body: { sender_id: crypto.randomUUID() } });
  assert.equal(r.status, 201, r.text);
  const sa = r.json;
  assert.equal(sa.status, 'ongoing');
  assert.match(sa.activated_at, TIME_RE);
  assert.deepEqual(sa.signers.map((s) => s.status), ['notified', 'initiated', 'initiated']);
  assert.match(sa.signers[0].signature_link, /^https:\/\/yousign\.app\/signatures\//);
  /* 48 h link [D/limits-new] */
  assert.equal(Date.parse(sa.signers[0].signature_link_expiration_date) - Date.parse(sa.activated_at), 48 * 3600000);
  /* later signers of an ordered flow: link null (--ordered-link null) */
  assert.equal(sa.signers[1].signature_link, null);
  assert.equal(sa.signers[1].signature_link_expiration_date, null);
  assertProblem(await call('POST', `/v3/signature_requests/${ready.sr.id}/activate`), 400, 'about:blank');
  /* --ordered-link present; unordered requests notify everyone */
  await setOptions({ ordered_link: 'present', link_ttl_hours: 72 });
  const r3 = await readyRequest({ signers: 2 });
  const a3 = await activate(r3.sr.id);
  assert.equal(typeof a3.signers[1].signature_link, 'string');
  assert.equal(a3.signers[1].status, 'initiated');
  assert.equal(Date.parse(a3.signers[0].signature_link_expiration_date) - Date.parse(a3.activated_at), 72 * 3600000);
  const r4 = await readyRequest({ signers: 2, level: 'advanced_electronic_signature', ordered: false });
  assert.deepEqual((await activate(r4.sr.id)).signers.map((s) => s.status), ['notified', 'notified']);
  const st = (await ctl('GET', '/stats')).json;
  assert.equal(st.requests_activated, 3);
  assert.deepEqual(st.activated_by_external_id, { 'act-1': 1 });
  /* delivery_mode email: Yousign mails the links */
  const mails = (await ctl('GET', '/emails')).json.filter((m) => m.signature_request_id === r4.sr.id);
  assert.deepEqual(mails.map((m) => [m.kind, m.to]), [['invitation', 'signer1@example.com'], ['invitation', 'signer2@example.com']]);
});

/* ------------------------------------------------------------------ */
/* the whole flow, webhooks, downloads                                 */
/* ------------------------------------------------------------------ */

test('QES flow end to end: ordered signing, signed webhooks, completed download, audit trails after the delay', async () => {
  const { sr, docIds, signers } = await readyRequest({ signers: 2, docs: 2, extra: { external_id: 'flow-1' } });
  const [s1, s2] = signers;
  await activate(sr.id);
  /* completed only when done */
  assertProblem(await call('GET', `/v3/signature_requests/${sr.id}/documents/download?version=completed`), 400, 'document.unable_to_download_signature_request_not_in_done');
  assertProblem(await call('GET', `/v3/signature_requests/${sr.id}/audit_trails/download`), 400, 'audit_trail.not_ready_for_download');
  /* the second signer cannot act before the first */
  assert.equal((await act(sr.id, s2.id, 'sign')).status, 409);
  assert.equal((await act(sr.id, s1.id, 'open')).status, 200);
  let r = await act(sr.id, 'signer1@example.com', 'identify');
  assert.equal(r.status, 200, r.text);
  assert.equal(r.json.signer.status, 'verified');
  r = await act(sr.id, s1.id, 'consent');
  assert.equal(r.json.signer.status, 'consent_given');
  r = await act(sr.id, s1.id, 'sign');
  assert.equal(r.json.signer.status, 'signed');
  assert.match(r.json.signer.signed_at, TIME_RE);
  assert.deepEqual(r.json.signers.map((s) => s.status), ['signed', 'notified']);
  assertProblem(await call('GET', `/v3/signature_requests/${sr.id}/signers/${s2.id}/audit_trails/download`), 400, 'audit_trail.not_ready_for_download');
  /* --processing-ms: the signer is processing for a while */
  await setOptions({ processing_ms: 150 });
  r = await act(sr.id, s2.id, 'sign');
  assert.equal(r.json.signer.status, 'processing');
  const done = await waitFor(async () => { const g = await getSr(sr.id); return g.status === 'done' && g; }, 3000, 'done');
  assert.match(done.completed_at, TIME_RE);
  /* webhooks: names, order, body shape, headers */
  const names = ['signature_request.activated', 'signer.notified', 'signer.link_opened', 'signer.identification_succeeded', 'signer.done',
    'signer.notified', 'signer.identification_succeeded', 'signer.done', 'signature_request.done'];
  await waitFor(() => hooksFor(sr.id).length >= names.length, 3000, 'webhooks');
  const hooks = hooksFor(sr.id);
  assert.deepEqual(hooks.map(eventName), names);
  for (const h of hooks) {
    assert.ok(h.sigOk, 'X-Yousign-Signature-256 is sha256=<hex HMAC of the raw body>');
    assert.match(h.headers['x-yousign-signature-256'], /^sha256=[0-9a-f]{64}$/);
    assert.equal(h.headers['user-agent'], 'Yousign Webhook Bot');
    assert.equal(h.headers['content-type'], 'application/json');
    assert.equal(h.headers['x-yousign-retry'], '0');
    assert.match(h.headers['x-yousign-issued-at'], /^\d{10}$/);
    const e = h.json;
    assert.deepEqual(Object.keys(e), ['event_id', 'event_name', 'event_time', 'subscription_id', 'subscription_description', 'sandbox', 'data']);
    assert.match(e.event_id, UUID_RE);
    assert.match(e.event_time, /^\d{10}$/);
    assert.equal(e.sandbox, false);
    assert.equal(e.subscription_description, 'qes_sign test double');
    assert.equal(e.data.signature_request.id, sr.id);
    assert.equal(e.data.signature_request.external_id, 'flow-1');
    assert.equal('signer' in e.data, e.event_name.startsWith('signer.'));
  }
  assert.equal(hooks[1].json.data.signer.id, s1.id);
  assert.equal(hooks[5].json.data.signer.id, s2.id);
  assert.equal(hooks[8].json.data.signature_request.status, 'done');
  /* downloads: the same document ids, signed bytes */
  r = await call('GET', `/v3/signature_requests/${sr.id}/documents/download?version=completed&archive=true`);
  assert.equal(r.status, 200);
  assert.equal(r.headers['content-type'], 'application/zip');
  assert.deepEqual(zipNames(r.buf), ['1_contract.pdf', '2_contract.pdf']);
  r = await call('GET', `/v3/signature_requests/${sr.id}/documents/${docIds[0]}/download`);
  assert.equal(r.headers['content-type'], 'application/pdf');
  const text = r.buf.toString('latin1');
  assert.ok(text.startsWith('%PDF-1.7'));
  assert.equal((text.match(/%signed-by /g) || []).length, 2);
  assert.ok(text.includes('%signed-by signer1@example.com qualified_electronic_signature'));
  assertInvalid(await call('GET', `/v3/signature_requests/${sr.id}/documents/download?version=final`), ['version'], 'parameters_not_valid');
  /* audit trails: not ready until --audit-trail-delay-ms (1000 ms on the double's clock) after done */
  assertProblem(await call('GET', `/v3/signature_requests/${sr.id}/audit_trails/download?merge=true`), 400, 'audit_trail.not_ready_for_download');
  await advance(1000);
  r = await call('GET', `/v3/signature_requests/${sr.id}/audit_trails/download?merge=true`);
  assert.equal(r.status, 200, r.text);
  assert.equal(r.headers['content-type'], 'application/pdf');
  assert.ok(r.buf.toString('latin1').startsWith('%PDF-'));
  r = await call('GET', `/v3/signature_requests/${sr.id}/audit_trails/download`);
  assert.equal(r.headers['content-type'], 'application/zip');
  assert.equal(zipNames(r.buf).length, 2);
  r = await call('GET', `/v3/signature_requests/${sr.id}/signers/${s1.id}/audit_trails/download`);
  assert.equal(r.status, 200);
  assert.equal(r.headers['content-type'], 'application/pdf');
  /* --qes-audit-trail never: a QES request never has one */
  await setOptions({ qes_audit_trail: 'never', processing_ms: 0 });
  assertProblem(await call('GET', `/v3/signature_requests/${sr.id}/audit_trails/download`), 400, 'audit_trail.not_ready_for_download');
  /* one document without archive: the PDF itself */
  const one = await readyRequest({ level: 'electronic_signature' });
  await activate(one.sr.id);
  await act(one.sr.id, one.signers[0].id, 'sign');
  r = await call('GET', `/v3/signature_requests/${one.sr.id}/documents/download?version=completed`);
  assert.equal(r.headers['content-type'], 'application/pdf');
  assert.equal((await call('GET', `/v3/signature_requests/${one.sr.id}/audit_trails/download`)).status, 400);
  await advance(1000);
  assert.equal((await call('GET', `/v3/signature_requests/${one.sr.id}/audit_trails/download`)).headers['content-type'], 'application/pdf');
});

test('QES identification: names match the ID document (case, accents, hyphens, apostrophes, given names); mismatch blocks until unblocked; 30 min', async () => {
  const sr = await createSr();
  const doc = await upload(sr.id);
  const body = signerBody(0, [doc.id], QES, {});
  body.info = { first_name: 'Anna Lena', last_name: "Müller-D'Arc", email: 'al@example.com', phone_number: '+41791234567', locale: 'fr' };
  const s = await addSigner(sr.id, body);
  await activate(sr.id);
  const matches = [
    { first_name: 'ANNA LENA MARIA', last_name: 'muller d arc' },
    { first_name: 'Lena Anna', last_name: 'Müller-DArc' },
    { first_name: 'Anna-Lena', last_name: 'Müller Darc' },
  ];
  for (const id of matches) {
    /* identify is idempotent on a verified signer, so check the matcher on fresh requests */
    const sx = await createSr();
    const dx = await upload(sx.id);
    const bx = Object.assign({}, body, { fields: [{ document_id: dx.id, type: 'signature', page: 1, x: 1, y: 1 }] });
    const sg = await addSigner(sx.id, bx);
    await activate(sx.id);
    const r = await act(sx.id, sg.id, 'identify', id);
    assert.equal(r.status, 200, JSON.stringify(id) + r.text);
  }
  const mark = received.length;
  let r = await act(sr.id, s.id, 'identify', { first_name: 'Anna Sofia', last_name: 'Müller-DArc' });
  assert.equal(r.status, 409, r.text);
  await waitFor(() => received.slice(mark).filter((h) => h.json && h.json.data.signer && h.json.data.signer.id === s.id).length >= 2, 3000, 'identification webhooks');
  assert.deepEqual(received.slice(mark).filter((h) => h.json.data.signer && h.json.data.signer.id === s.id).map(eventName),
    ['signer.identification_failed', 'signer.identification_blocked']);
  assert.equal((await act(sr.id, s.id, 'sign')).status, 409, 'blocked');
  r = await call('POST', `/v3/signature_requests/${sr.id}/signers/${s.id}/unblock_identification`);
  assert.equal(r.status, 201, r.text);
  assertProblem(await call('POST', `/v3/signature_requests/${sr.id}/signers/${s.id}/unblock_identification`), 400, 'about:blank');
  r = await act(sr.id, s.id, 'identify', { first_name: 'Lena Anna', last_name: 'muller d arc' });
  assert.equal(r.json.signer.status, 'verified');
  /* [D/specificities-of-the-qes-level] 30 min to sign after identification */
  await advance(31 * 60 * 1000);
  r = await act(sr.id, s.id, 'sign');
  assert.equal(r.status, 409);
  assert.match(r.json.detail, /30 minutes/);
  r = await act(sr.id, s.id, 'sign');
  assert.equal(r.json.signer.status, 'signed');
});

test('decline: only with signers_allowed_to_decline; decline_information; the others aborted (or unchanged)', async () => {
  let ready = await readyRequest({ signers: 2 });
  await activate(ready.sr.id);
  let r = await act(ready.sr.id, ready.signers[0].id, 'decline', { reason: 'wrong rent' });
  assert.equal(r.status, 409);
  assert.match(r.json.detail, /signers_allowed_to_decline/);
  ready = await readyRequest({ signers: 2, extra: { signers_allowed_to_decline: true } });
  await activate(ready.sr.id);
  r = await act(ready.sr.id, ready.signers[0].id, 'decline', { reason: 'wrong rent' });
  assert.equal(r.status, 200, r.text);
  const g = await getSr(ready.sr.id);
  assert.equal(g.status, 'declined');
  assert.deepEqual(g.signers.map((s) => s.status), ['declined', 'aborted']);
  assert.equal(g.decline_information.signer_id, ready.signers[0].id);
  assert.equal(g.decline_information.reason, 'wrong rent');
  assert.match(g.decline_information.declined_at, TIME_RE);
  await waitFor(() => hooksFor(ready.sr.id).some((h) => eventName(h) === 'signature_request.declined'), 3000, 'declined webhook');
  assert.deepEqual(hooksFor(ready.sr.id).map(eventName).slice(-2), ['signer.declined', 'signature_request.declined']);
  assert.equal((await act(ready.sr.id, ready.signers[1].id, 'sign')).status, 409);
  await setOptions({ ended_signer_status: 'unchanged' });
  ready = await readyRequest({ signers: 2, extra: { signers_allowed_to_decline: true } });
  await activate(ready.sr.id);
  await act(ready.sr.id, ready.signers[0].id, 'decline', {});
  assert.deepEqual((await getSr(ready.sr.id)).signers.map((s) => s.status), ['declined', 'initiated']);
});

test('cancel: reason enum, custom_note <= 500, only ongoing; a signer error cancels automatically', async () => {
  const ready = await readyRequest({ signers: 2 });
  const c = (body) => call('POST', `/v3/signature_requests/${ready.sr.id}/cancel`, { body });
  assertProblem(await c({ reason: 'other' }), 400, 'about:blank');          /* still a draft */
  await activate(ready.sr.id);
  assertInvalid(await c({}), ['reason']);
  assertInvalid(await c({ reason: 'changed_mind' }), ['reason']);
  assertInvalid(await c({ reason: 'other', custom_note: 'x'.repeat(501) }), ['custom_note']);
  assertInvalid(await c({ reason: 'other', note: 'x' }), ['note']);
  const r = await c({ reason: 'other', custom_note: 'x'.repeat(500) });
  assert.equal(r.status, 201, r.text);
  assert.equal(r.json.status, 'canceled');
  assert.deepEqual(r.json.signers.map((s) => s.status), ['aborted', 'aborted']);
  assertProblem(await c({ reason: 'errors_in_document' }), 400, 'about:blank');   /* final */
  await waitFor(() => hooksFor(ready.sr.id).some((h) => eventName(h) === 'signature_request.canceled'), 3000, 'canceled webhook');
  const ctlv = (await ctl('GET', `/signature_requests/${ready.sr.id}`)).json;
  assert.equal(ctlv._double.cancel.reason, 'other');
  const e = await readyRequest({ signers: 2 });
  await activate(e.sr.id);
  assert.equal((await act(e.sr.id, e.signers[0].id, 'error')).status, 200);
  const g = await getSr(e.sr.id);
  assert.equal(g.status, 'canceled');
  assert.deepEqual(g.signers.map((s) => s.status), ['error', 'aborted']);
  await waitFor(() => hooksFor(e.sr.id).some((h) => eventName(h) === 'signature_request.canceled'), 3000, 'auto cancel webhook');
  assert.deepEqual(hooksFor(e.sr.id).map(eventName).slice(-2), ['signer.error', 'signature_request.canceled']);
});

test('send_reminder: 201 empty for a notified signer of an ongoing request; 400 otherwise; optional cap gives 429', async () => {
  const ready = await readyRequest({ signers: 2 });
  const rem = (sid) => call('POST', `/v3/signature_requests/${ready.sr.id}/signers/${sid}/send_reminder`);
  assertProblem(await rem(ready.signers[0].id), 400, 'about:blank');        /* draft */
  await activate(ready.sr.id);
  assertProblem(await rem(ready.signers[1].id), 400, 'about:blank');        /* initiated */
  let r = await rem(ready.signers[0].id);
  assert.equal(r.status, 201);
  assert.equal(r.buf.length, 0);
  assert.equal((await rem(ready.signers[0].id)).status, 201, 'no cap by default');
  await setOptions({ reminder_min_interval_ms: 60000 });
  r = await rem(ready.signers[0].id);
  assert.equal(r.status, 429);
  assert.deepEqual(Object.keys(r.json), ['message']);
  assert.ok(Number(r.headers['retry-after']) >= 1);
  await advance(60000);
  assert.equal((await rem(ready.signers[0].id)).status, 201);
  assert.equal((await ctl('GET', '/emails')).json.filter((m) => m.kind === 'reminder').length, 3);
  assertProblem(await rem(crypto.randomUUID()), 404, 'resource.not_found');
});

test('DELETE: soft delete leaves status deleted; permanent_delete makes it unreadable; refused while ongoing', async () => {
  const d = await createSr();
  assert.equal((await call('DELETE', `/v3/signature_requests/${d.id}`)).status, 204);
  assert.equal((await getSr(d.id)).status, 'deleted');
  assertProblem(await call('DELETE', `/v3/signature_requests/${d.id}`), 400, 'about:blank');
  assert.equal((await call('DELETE', `/v3/signature_requests/${d.id}?permanent_delete=true`)).status, 204);
  assertProblem(await call('GET', `/v3/signature_requests/${d.id}`), 404, 'resource.not_found');
  const d2 = await createSr();
  assertInvalid(await call('DELETE', `/v3/signature_requests/${d2.id}?permanent_delete=yes`), ['permanent_delete'], 'parameters_not_valid');
  const ready = await readyRequest({ level: 'electronic_signature' });
  await activate(ready.sr.id);
  assertProblem(await call('DELETE', `/v3/signature_requests/${ready.sr.id}`), 400, 'about:blank');
  await act(ready.sr.id, ready.signers[0].id, 'sign');
  assert.equal((await call('DELETE', `/v3/signature_requests/${ready.sr.id}`)).status, 204);
  await waitFor(() => hooksFor(ready.sr.id).some((h) => eventName(h) === 'signature_request.deleted'), 3000, 'deleted webhook');
  assert.deepEqual((await call('GET', '/v3/signature_requests?status[eq]=deleted')).json.data.map((x) => x.id), [ready.sr.id]);
});

test('clock: automatic reminders, expiry at the end of expiration_date, reactivate; a forced unknown status is served', async () => {
  const ready = await readyRequest({ extra: { expiration_date: '2025-07-04', reminder_settings: { interval_in_days: 1, max_occurrences: 2 } } });
  await activate(ready.sr.id);
  await advance(86400000 + 1000);
  await advance(86400000);
  let g = await ctl('GET', `/signature_requests/${ready.sr.id}`);
  assert.equal(g.json._double.signers[0].automatic_reminders, 2);
  await advance(86400000);    /* 2025-07-04 noon: still ongoing, no third reminder */
  g = await ctl('GET', `/signature_requests/${ready.sr.id}`);
  assert.equal(g.json.status, 'ongoing');
  assert.equal(g.json._double.signers[0].automatic_reminders, 2);
  await advance(86400000);    /* 2025-07-05: expired */
  const sr = await getSr(ready.sr.id);
  assert.equal(sr.status, 'expired');
  assert.deepEqual(sr.signers.map((s) => s.status), ['aborted']);
  await waitFor(() => hooksFor(ready.sr.id).some((h) => eventName(h) === 'signature_request.expired'), 3000, 'expired webhook');
  assert.deepEqual(hooksFor(ready.sr.id).map(eventName).filter((n) => n.startsWith('signature_request.')),
    ['signature_request.activated', 'signature_request.reminder_executed', 'signature_request.reminder_executed', 'signature_request.expired']);
  const re = (body) => call('POST', `/v3/signature_requests/${ready.sr.id}/reactivate`, { body });
  assertInvalid(await re({}), ['expiration_date']);
  assertInvalid(await re({ expiration_date: '2025-07-01' }), ['expiration_date']);
  const r = await re({ expiration_date: '2025-08-01' });
  assert.equal(r.status, 201, r.text);
  assert.equal(r.json.status, 'ongoing');
  assert.deepEqual(r.json.signers.map((s) => s.status), ['notified']);
  assertProblem(await re({ expiration_date: '2025-08-02' }), 400, 'about:blank');
  /* control expire, and a status value the client does not know (tolerate unknown values) */
  assert.equal((await ctl('POST', `/signature_requests/${ready.sr.id}/expire`)).json.status, 'expired');
  await ctl('POST', `/signature_requests/${ready.sr.id}/status`, { status: 'paused' });
  assert.equal((await getSr(ready.sr.id)).status, 'paused');
  await ctl('POST', `/signature_requests/${ready.sr.id}/status`, { status: 'archived_somewhere' });
  assert.equal((await getSr(ready.sr.id)).status, 'archived_somewhere');
  const c = await ctl('POST', '/clock', { set: 'nonsense' });
  assert.equal(c.status, 400);
});

/* ------------------------------------------------------------------ */
/* webhooks                                                            */
/* ------------------------------------------------------------------ */

/* oneEvent activates a fresh request and returns its id (one signature_request.activated + one signer.notified). */
async function oneEvent() {
  const ready = await readyRequest({ level: 'electronic_signature' });
  await activate(ready.sr.id);
  return ready.sr.id;
}

test('webhook retries: non-2xx retried on the schedule with X-Yousign-Retry n, same body and event_time; auto_retry off; give up', async () => {
  await ctl('POST', '/webhook', { url: `${hookBase}/fail/2/retry`, events: 'signature_request.activated' });
  const id = await oneEvent();
  await waitFor(() => hits.get('/fail/2/retry') === 3, 3000, 'three attempts');
  const got = received.filter((r) => r.path === '/fail/2/retry');
  assert.deepEqual(got.map((r) => r.headers['x-yousign-retry']), ['0', '1', '2']);
  assert.ok(got.every((r) => r.raw.equals(got[0].raw)), 'identical bytes: event_id and event_time fixed across retries');
  assert.equal(got[0].json.data.signature_request.id, id);
  await waitFor(async () => (await ctl('GET', '/stats')).json.webhooks.delivered === 1, 2000, 'delivered');
  const d = (await ctl('GET', `/webhooks?signature_request_id=${id}`)).json;
  assert.equal(d.length, 1);
  assert.equal(d[0].state, 'delivered');
  assert.deepEqual(d[0].log.map((l) => l.status), [500, 500, 200]);
  /* more failures than retries: given up */
  await ctl('POST', '/webhook', { url: `${hookBase}/status/503/giveup` });
  await oneEvent();
  await waitFor(async () => (await ctl('GET', '/stats')).json.webhooks.given_up === 1, 3000, 'given up');
  assert.equal(hits.get('/status/503/giveup'), 4, 'first try + 3 retries of the schedule');
  /* auto_retry off: a failure is final */
  await setOptions({ webhook_auto_retry: false });
  await ctl('POST', '/webhook', { url: `${hookBase}/status/500/noretry` });
  await oneEvent();
  await waitFor(async () => (await ctl('GET', '/stats')).json.webhooks.given_up === 2, 3000, 'given up without retry');
  await sleep(150);
  assert.equal(hits.get('/status/500/noretry'), 1);
  /* a first try that times out (1 s; here 150 ms) is retried once even without auto_retry */
  await setOptions({ webhook_first_timeout_ms: 150 });
  await ctl('POST', '/webhook', { url: `${hookBase}/slow/600/timeout` });
  await oneEvent();
  await waitFor(() => hits.get('/slow/600/timeout') === 2, 3000, 'retry after a timeout');
  await waitFor(async () => (await ctl('GET', '/stats')).json.webhooks.delivered === 2, 3000, 'delivered after timeout');
  const t = (await ctl('GET', '/webhooks')).json.find((x) => x.log.length && x.log[0].error === 'timeout');
  assert.deepEqual(t.log.map((l) => l.attempt), [0, 1]);
  /* retries get --webhook-retry-timeout-ms (10 s; here 500 ms) instead of the first try's 1 s (here 150 ms) */
  await setOptions({ webhook_auto_retry: true, webhook_retry_timeout_ms: 500 });
  await ctl('POST', '/webhook', { url: `${hookBase}/slowall/300/retrytimeout` });
  await oneEvent();
  await waitFor(async () => (await ctl('GET', '/stats')).json.webhooks.delivered === 3, 3000, 'delivered within the retry timeout');
  assert.equal(hits.get('/slowall/300/retrytimeout'), 2);
  /* a 3xx: up to 2 redirects are followed; a third fails (--webhook-redirects follow); success takes the 3xx */
  await setOptions({ webhook_auto_retry: true, webhook_first_timeout_ms: 1000, webhook_retry_schedule_ms: '' });
  await ctl('POST', '/webhook', { url: `${hookBase}/redirect/2/two/0` });
  await oneEvent();
  await waitFor(() => hits.get('/redirect/2/two/2') === 1, 3000, 'two redirects');
  await ctl('POST', '/webhook', { url: `${hookBase}/redirect/3/three/0` });
  await oneEvent();
  await waitFor(async () => (await ctl('GET', '/stats')).json.webhooks.given_up === 3, 3000, 'three redirects fail');
  assert.equal(hits.get('/redirect/3/three/3'), undefined);
  await setOptions({ webhook_redirects: 'success' });
  await ctl('POST', '/webhook', { url: `${hookBase}/redirect/3/succ/0` });
  await oneEvent();
  await waitFor(async () => (await ctl('GET', '/stats')).json.webhooks.delivered === 5, 3000, '3xx as success');
  assert.equal(hits.get('/redirect/3/succ/1'), undefined);
});

test('webhook switches: body under metadata, retry header names, issued-at formats, subscribed events, sandbox flag', async () => {
  await setOptions({ webhook_body: 'metadata', webhook_retry_header: 'both', webhook_issued_at: 'iso' });
  await ctl('POST', '/webhook', { url: `${hookBase}/hook/meta` });
  let id = await oneEvent();
  await waitFor(() => received.some((r) => r.path === '/hook/meta'), 3000, 'metadata webhook');
  let h = received.find((r) => r.path === '/hook/meta');
  assert.deepEqual(Object.keys(h.json), ['metadata', 'data']);
  assert.deepEqual(Object.keys(h.json.metadata), ['event_id', 'event_name', 'event_time', 'subscription_id', 'subscription_description', 'sandbox']);
  assert.equal(h.json.data.signature_request.id, id);
  assert.equal(h.headers['x-yousign-retry'], '0');
  assert.equal(h.headers['x-yousign-retry-count'], '0');
  assert.match(h.headers['x-yousign-issued-at'], TIME_RE);
  await setOptions({ webhook_retry_header: 'retry-count', webhook_issued_at: 'off', webhook_body: 'flat' });
  await ctl('POST', '/webhook', { url: `${hookBase}/hook/count`, events: ['signer.notified'] });
  id = await oneEvent();
  await waitFor(() => received.some((r) => r.path === '/hook/count'), 3000, 'count webhook');
  await sleep(100);
  const got = received.filter((r) => r.path === '/hook/count');
  assert.deepEqual(got.map(eventName), ['signer.notified'], 'only the subscribed event');
  h = got[0];
  assert.equal(h.headers['x-yousign-retry'], undefined);
  assert.equal(h.headers['x-yousign-retry-count'], '0');
  assert.equal(h.headers['x-yousign-issued-at'], undefined);
  assert.equal((await ctl('POST', '/webhook', { events: ['signer.nonsense'] })).status, 400);
  /* a webhook signed with another secret does not verify */
  await ctl('POST', '/webhook', { url: `${hookBase}/hook/othersecret`, secret: 'another-secret-of-32-characters!', events: '*' });
  await oneEvent();
  await waitFor(() => received.filter((r) => r.path === '/hook/othersecret').length === 2, 3000, 'other secret');
  const o = received.filter((r) => r.path === '/hook/othersecret');
  assert.ok(o.every((r) => !r.sigOk));
  const expected = 'sha256=' + crypto.createHmac('sha256', 'another-secret-of-32-characters!').update(o[0].raw).digest('hex');
  assert.equal(o[0].headers['x-yousign-signature-256'], expected);
  o.forEach((r) => { r.sigOk = true; });   /* verified with its own secret above */
  await ctl('POST', '/webhook', { secret: SECRET });
  /* sandbox: the flag in every event */
  const s = await startServer(['--sandbox', '--webhook-url', `${hookBase}/hook/sandbox`, '--webhook-secret', SECRET]);
  try {
    const ready = await readyRequest({ level: 'electronic_signature' }, s);
    await activate(ready.sr.id, s);
    await waitFor(() => received.some((r) => r.path === '/hook/sandbox'), 3000, 'sandbox webhook');
    assert.equal(received.find((r) => r.path === '/hook/sandbox').json.sandbox, true);
  } finally {
    await stopServer(s);
  }
});

test('webhook faults: drop and duplicate deliveries; pause and resume; shuffle order delivers everything', async () => {
  await ctl('POST', '/webhook', { url: `${hookBase}/hook/faults`, events: 'signature_request.activated' });
  const f = await ctl('POST', '/webhook-faults', { drop_count: 1, duplicate_count: 1 });
  assert.equal(f.status, 200, f.text);
  const a = await oneEvent();
  const b = await oneEvent();
  await waitFor(() => received.filter((r) => r.path === '/hook/faults').length === 2, 3000, 'duplicate');
  await sleep(100);
  const got = received.filter((r) => r.path === '/hook/faults');
  assert.equal(got.length, 2);
  assert.ok(got.every((r) => r.json.data.signature_request.id === b), 'the first event was dropped, the second came twice');
  assert.equal(got[0].json.event_id, got[1].json.event_id);
  const st = (await ctl('GET', '/stats')).json.webhooks;
  assert.equal(st.dropped, 1);
  assert.equal(st.duplicated, 1);
  assert.equal((await ctl('GET', `/webhooks?signature_request_id=${a}`)).json[0].state, 'dropped');
  assert.equal((await ctl('POST', '/webhook-faults', { drop_rate: 2 })).status, 400);
  await ctl('POST', '/webhook-faults', {});
  /* pause holds deliveries; resume sends them in order */
  await ctl('POST', '/pause-webhooks');
  await ctl('POST', '/webhook', { url: `${hookBase}/hook/paused` });
  const ids = [await oneEvent(), await oneEvent(), await oneEvent()];
  await sleep(100);
  assert.equal(received.filter((r) => r.path === '/hook/paused').length, 0);
  assert.equal((await ctl('GET', '/stats')).json.webhooks.pending, 3);
  await ctl('POST', '/resume-webhooks');
  await waitFor(() => received.filter((r) => r.path === '/hook/paused').length === 3, 3000, 'resumed');
  assert.deepEqual(received.filter((r) => r.path === '/hook/paused').map((r) => r.json.data.signature_request.id), ids);
  /* --webhook-order shuffle: concurrent deliveries after random delays, all delivered */
  await setOptions({ webhook_order: 'shuffle', webhook_shuffle_ms: 80 });
  await ctl('POST', '/webhook', { url: `${hookBase}/hook/shuffle` });
  const sids = [];
  for (let i = 0; i < 6; i++) sids.push(await oneEvent());
  await waitFor(() => received.filter((r) => r.path === '/hook/shuffle').length === 6, 3000, 'shuffled');
  assert.deepEqual(received.filter((r) => r.path === '/hook/shuffle').map((r) => r.json.data.signature_request.id).sort(), sids.slice().sort());
});

/* ------------------------------------------------------------------ */
/* rate limits                                                         */
/* ------------------------------------------------------------------ */

test('rate limits: per-minute and per-hour budgets, x-ratelimit-* and RateLimit-* headers, 429 {"message"} with Retry-After', async () => {
  const s = await startServer(['--rate-per-minute', '3', '--rate-per-hour', '5', '--clock', '2025-07-01T10:00:00Z']);
  try {
    await ctl('POST', '/clock', { set: '2025-07-01T10:00:00.000Z' }, s);
    const get = () => call('GET', '/v3/signature_requests', { server: s });
    assertProblem(await call('GET', '/v3/signature_requests', { server: s, key: 'wrong' }), 401, 'about:blank');   /* not counted */
    for (let i = 1; i <= 3; i++) {
      const r = await get();
      assert.equal(r.status, 200);
      assert.equal(r.headers['x-ratelimit-limit-minute'], '3');
      assert.equal(r.headers['x-ratelimit-remaining-minute'], String(3 - i));
      assert.equal(r.headers['x-ratelimit-limit-hour'], '5');
      assert.equal(r.headers['x-ratelimit-remaining-hour'], String(5 - i));
      assert.equal(r.headers['ratelimit-limit'], '3');
      assert.equal(r.headers['ratelimit-remaining'], String(3 - i));
      assert.ok(Number(r.headers['ratelimit-reset']) >= 59 && Number(r.headers['ratelimit-reset']) <= 60, r.headers['ratelimit-reset']);
    }
    let r = await get();
    assert.equal(r.status, 429);
    assert.deepEqual(r.json, { message: 'API rate limit exceeded' });
    assert.ok(Number(r.headers['retry-after']) >= 59 && Number(r.headers['retry-after']) <= 60, r.headers['retry-after']);
    assert.equal(r.headers['x-ratelimit-remaining-minute'], '0');
    /* the next minute: two more, then the hour is used up */
    await advance(60000, s);
    assert.equal((await get()).status, 200);
    r = await get();
    assert.equal(r.status, 200);
    assert.equal(r.headers['x-ratelimit-remaining-hour'], '0');
    assert.equal(r.headers['ratelimit-limit'], '5', 'RateLimit-* follow the window closest to exhaustion');
    r = await get();
    assert.equal(r.status, 429);
    assert.ok(Number(r.headers['retry-after']) > 3000, r.headers['retry-after']);
    assert.equal((await ctl('GET', '/health', undefined, s)).status, 200, '/_control is never limited');
    await advance(3600000, s);
    /* a per-second limit (not documented; off by default) */
    await setOptions({ rate_per_second: 1, rate_limit_message: 'slow down' }, s);
    await ctl('POST', '/clock', { set: '2025-07-01T12:00:00.000Z' }, s);
    r = await get();
    assert.equal(r.status, 200);
    assert.equal(r.headers['x-ratelimit-limit-second'], '1');
    r = await get();
    assert.equal(r.status, 429);
    assert.deepEqual(r.json, { message: 'slow down' });
    assert.equal(r.headers['retry-after'], '1');
    const st = (await ctl('GET', '/stats', undefined, s)).json;
    assert.equal(st.rate_limited, 3);
    assert.equal(st.calls_by_status['GET /v3/signature_requests']['429'], 3);
    /* 0 switches a budget off: no headers */
    await setOptions({ rate_per_second: 0, rate_per_minute: 0, rate_per_hour: 0 }, s);
    r = await get();
    assert.equal(r.status, 200);
    assert.equal(r.headers['x-ratelimit-limit-minute'], undefined);
  } finally {
    await stopServer(s);
  }
});

/* ------------------------------------------------------------------ */
/* faults, scripts, stats, options                                     */
/* ------------------------------------------------------------------ */

test('faults: 5xx, 429 with Retry-After, held timeouts, delays; never on /_control; paths; reproducible with a seed', async () => {
  await ctl('POST', '/faults', { error_rate: 1 });
  let r = await call('GET', '/v3/signature_requests');
  assertProblem(r, 500, 'about:blank');
  assert.equal((await ctl('GET', '/health')).status, 200);
  await ctl('POST', '/faults', { error_rate: 1, error_status: 503 });
  assertProblem(await call('GET', '/v3/signature_requests'), 503, 'about:blank');
  await ctl('POST', '/faults', { rate_limit_rate: 1, retry_after: 7 });
  r = await call('GET', '/v3/signature_requests');
  assert.equal(r.status, 429);
  assert.equal(r.headers['retry-after'], '7');
  assert.deepEqual(Object.keys(r.json), ['message']);
  await ctl('POST', '/faults', { timeout_rate: 1, timeout_ms: 200 });
  let t0 = Date.now();
  r = await call('POST', '/v3/signature_requests', { body: { name: 'T', delivery_mode: 'none' } });
  assert.equal(r.status, 504);
  assert.ok(Date.now() - t0 >= 190);
  await assert.rejects(call('POST', '/v3/signature_requests', { body: { name: 'T', delivery_mode: 'none' }, timeout: 50, agent: false }), /client timeout/);
  await ctl('POST', '/faults', { delay_rate: 1, delay_ms: 200 });
  t0 = Date.now();
  r = await call('POST', '/v3/signature_requests', { body: { name: 'T', delivery_mode: 'none' } });
  assert.equal(r.status, 201);
  assert.ok(Date.now() - t0 >= 190);
  await ctl('POST', '/faults', { error_rate: 1, paths: '/activate$' });
  assert.equal((await call('GET', '/v3/signature_requests')).status, 200);
  const ready = await readyRequest({ level: 'electronic_signature' });
  assertProblem(await call('POST', `/v3/signature_requests/${ready.sr.id}/activate`), 500, 'about:blank');
  assert.equal((await getSr(ready.sr.id)).status, 'draft', 'an injected error does no work');
  const st = (await ctl('GET', '/stats')).json;
  assert.equal(st.requests_created, 2, 'the timed-out creates did nothing');
  assert.equal(st.faults_injected.error, 3);
  assert.equal(st.faults_injected.timeout, 2);
  assert.equal(st.faults_injected.delay, 1);
  assert.equal((await ctl('POST', '/faults', { error_rate: 0.7, timeout_rate: 0.5 })).status, 400);
  assert.equal((await ctl('POST', '/faults', { explode: 1 })).status, 400);
  const seq = async () => {
    await ctl('POST', '/faults', { error_rate: 0.5, seed: 42 });
    const out = [];
    for (let i = 0; i < 16; i++) out.push((await call('GET', '/v3/signature_requests')).status);
    return out.join(',');
  };
  const s1 = await seq();
  assert.equal(await seq(), s1);
  assert.match(s1, /500/);
  assert.match(s1, /200/);
  await ctl('POST', '/faults', {});
  assert.deepEqual((await ctl('GET', '/faults')).json, {});
});

test('drop after apply: create, upload, add-signer and activate are applied, then the connection is cut; the client finds them', async () => {
  await ctl('POST', '/faults', { drop_after_create_count: 1, drop_after_upload_count: 1, drop_after_signer_count: 1, drop_after_activate_count: 1 });
  await assert.rejects(call('POST', '/v3/signature_requests', { body: { name: 'Lost', delivery_mode: 'none', ordered_signers: true, external_id: 'lost-1' }, agent: false }), /socket hang up|ECONNRESET/);
  /* the lookup after a lost answer */
  const l = (await call('GET', '/v3/signature_requests?external_id[eq]=lost-1')).json;
  assert.equal(l.data.length, 1);
  const id = l.data[0].id;
  const mp = multipart([{ name: 'file', filename: 'a.pdf', data: makePdf() }, { name: 'nature', value: 'signable_document' }]);
  await assert.rejects(call('POST', `/v3/signature_requests/${id}/documents`, { raw: mp.raw, contentType: mp.contentType, agent: false }), /socket hang up|ECONNRESET/);
  const docs = (await call('GET', `/v3/signature_requests/${id}/documents`)).json;
  assert.equal(docs.length, 1);
  await assert.rejects(call('POST', `/v3/signature_requests/${id}/signers`, { body: signerBody(0, [docs[0].id]), agent: false }), /socket hang up|ECONNRESET/);
  assert.equal((await call('GET', `/v3/signature_requests/${id}/signers`)).json.length, 1);
  await assert.rejects(call('POST', `/v3/signature_requests/${id}/activate`, { agent: false }), /socket hang up|ECONNRESET/);
  assert.equal((await getSr(id)).status, 'ongoing');
  assertProblem(await call('POST', `/v3/signature_requests/${id}/activate`), 400, 'about:blank');
  /* counts show exactly-once */
  await createSr({ external_id: 'lost-2' });
  const st = (await ctl('GET', '/stats')).json;
  assert.equal(st.requests_created, 2);
  assert.equal(st.requests_activated, 1);
  assert.deepEqual(st.created_by_external_id, { 'lost-1': 1, 'lost-2': 1 });
  assert.deepEqual(st.activated_by_external_id, { 'lost-1': 1 });
  assert.equal(st.faults_injected.drop_after_create, 1);
  assert.equal(st.faults_injected.drop_after_activate, 1);
  assert.equal(st.calls_by_status['POST /v3/signature_requests'].dropped, 1);
  assert.equal(st.calls_by_status['POST /v3/signature_requests/{signatureRequestId}/activate'].dropped, 1);
  assert.equal(st.calls_by_status['POST /v3/signature_requests/{signatureRequestId}/activate']['400'], 1);
  /* a rate: reproducible */
  await ctl('POST', '/faults', { drop_after_create_rate: 1, seed: 3 });
  await assert.rejects(call('POST', '/v3/signature_requests', { body: { name: 'Lost', delivery_mode: 'none' }, agent: false }));
  assert.equal((await ctl('GET', '/stats')).json.requests_created, 3);
});

test('script: the next N matching calls get exactly the scripted answer; stats by route and status; reset', async () => {
  let r = await ctl('POST', '/script', { method: 'GET', path: '^/v3/signature_requests/[^/?]+$', status: 200, headers: { 'Content-Type': 'application/json' }, body: '{"id": 42}', times: 2 });
  assert.equal(r.status, 200);
  const id = crypto.randomUUID();
  for (let i = 0; i < 2; i++) {
    r = await call('GET', `/v3/signature_requests/${id}`, { key: null });
    assert.equal(r.status, 200);
    assert.deepEqual(r.json, { id: 42 });
  }
  assertProblem(await call('GET', `/v3/signature_requests/${id}`), 404, 'resource.not_found');
  await ctl('POST', '/script', { status: 503, body: 'upstream down' });
  r = await call('POST', '/v3/signature_requests', { body: {} });
  assert.equal(r.status, 503);
  assert.equal(r.text, 'upstream down');
  assert.equal((await ctl('POST', '/script', { status: 99 })).status, 400);
  assert.equal((await ctl('POST', '/script', { headers: { 'Bad Header': 'x' } })).status, 400);
  await ctl('POST', '/script', { status: 500, times: 5 });
  assert.equal((await ctl('GET', '/script')).json[0].times, 5);
  await ctl('POST', '/script', {});
  assert.deepEqual((await ctl('GET', '/script')).json, []);
  const st = (await ctl('GET', '/stats')).json;
  assert.equal(st.scripted, 3);
  assert.deepEqual(st.calls_by_status['GET /v3/signature_requests/{signatureRequestId}'], { 200: 2, 404: 1 });
  assert.equal(st.calls['POST /v3/signature_requests'], 1);
  assert.equal(st.total_calls, 4);
  await ctl('POST', '/reset');
  const z = (await ctl('GET', '/stats')).json;
  assert.equal(z.total_calls, 0);
  assert.deepEqual(z.calls, {});
  assert.equal((await ctl('GET', '/requests')).json.length, 0);
  assert.equal((await ctl('GET', '/nonsense')).status, 404);
});

test('options: GET lists the switches with their defaults; POST checks all before setting any; reset restores them', async () => {
  const o = (await ctl('GET', '/options')).json;
  assert.deepEqual({
    pdf_min_version: o.pdf_min_version, qes_order_check: o.qes_order_check, qes_phone: o.qes_phone, qes_enabled: o.qes_enabled,
    ordered_link: o.ordered_link, ended_signer_status: o.ended_signer_status, qes_audit_trail: o.qes_audit_trail,
    list_order: o.list_order, wrong_status_type: o.wrong_status_type, validation_type: o.validation_type, time_format: o.time_format,
    webhook_body: o.webhook_body, webhook_retry_header: o.webhook_retry_header, webhook_issued_at: o.webhook_issued_at,
    webhook_order: o.webhook_order, webhook_redirects: o.webhook_redirects, reminder_min_interval_ms: o.reminder_min_interval_ms,
    rate_per_second: o.rate_per_second, link_ttl_hours: o.link_ttl_hours, webhook_auto_retry: o.webhook_auto_retry,
  }, {
    pdf_min_version: '1.6', qes_order_check: 'signer', qes_phone: 'required', qes_enabled: true, ordered_link: 'null',
    ended_signer_status: 'aborted', qes_audit_trail: 'available', list_order: 'newest', wrong_status_type: 'about:blank',
    validation_type: 'split', time_format: 'offset', webhook_body: 'flat', webhook_retry_header: 'retry', webhook_issued_at: 'unix',
    webhook_order: 'serial', webhook_redirects: 'follow', reminder_min_interval_ms: 0, rate_per_second: 0, link_ttl_hours: 48,
    webhook_auto_retry: true,
  });
  assert.equal(o.audit_trail_delay_ms, 1000, 'from the command line');
  for (const bad of [{ list_order: 'random' }, { time_format: 'z', qes_phone: 'maybe' }, { nonsense: 1 }, { link_ttl_hours: 0 }, { rate_per_minute: -1 }, { qes_enabled: 'perhaps' }, { webhook_retry_schedule_ms: '1,a' }]) {
    assert.equal((await ctl('POST', '/options', bad)).status, 400, JSON.stringify(bad));
  }
  assert.equal((await ctl('GET', '/options')).json.time_format, 'offset', 'nothing set by a refused POST');
  assert.equal((await setOptions({ qes_enabled: 'off', time_format: 'z' })).qes_enabled, false);
  await ctl('POST', '/reset');
  assert.deepEqual((await ctl('GET', '/options')).json, o);
});
