'use strict';
/*
 * test/skribble_double/selftest.js
 *
 * Self-test of the Skribble API v2 test double: starts server.js as a child
 * process, drives every behaviour through its HTTP API and /_control, and
 * records callbacks with a small receiver.  Run: node --test test/skribble_double/selftest.js
 */

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const http = require('node:http');
const path = require('node:path');
const os = require('node:os');
const fs = require('node:fs');
const crypto = require('node:crypto');
const dt = require('../lib/double_test');

const SERVER = path.join(__dirname, 'server.js');
const USER = 'api_demo_qes_sign';
const KEY = 'test-key';
const RETRY_MS = 200;
const MAX_ATTEMPTS = 3;
const ID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const ISO_MS_RE = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/;

/* A two-page PDF, so page_count and the MediaBox are checked too. */
const PDF = Buffer.from([
  '%PDF-1.4',
  '1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj',
  '2 0 obj << /Type /Pages /Kids [3 0 R 4 0 R] /Count 2 >> endobj',
  '3 0 obj << /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] >> endobj',
  '4 0 obj << /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] >> endobj',
  'trailer << /Root 1 0 R >>',
  '%%EOF',
  '',
].join('\n'), 'latin1');
const PDF_B64 = PDF.toString('base64');

/* ------------------------------------------------------------------ */
/* helpers                                                             */
/* ------------------------------------------------------------------ */

const agent = new http.Agent({ keepAlive: true, maxSockets: 64 });
let srv;          /* {proc, port} of the double under test */
let token;        /* a valid token for the default credentials */

const startServer = (args, env) => dt.startServer(SERVER, args, env);
const { stopServer } = dt;

/* call sends one HTTP request; resolves {status, headers, buf, text, json}. */
async function call(method, p, opts = {}) {
  const s = opts.server || srv;
  const headers = Object.assign({}, opts.headers || {});
  let body = opts.raw;
  if (opts.body !== undefined) {
    body = typeof opts.body === 'string' ? opts.body : JSON.stringify(opts.body);
    headers['Content-Type'] = headers['Content-Type'] || 'application/json';
  }
  if (opts.token !== undefined ? opts.token : p.startsWith('/v2/') && p !== '/v2/access/login') {
    headers.Authorization = `Bearer ${opts.token !== undefined ? opts.token : token}`;
  }
  if (opts.token === null) delete headers.Authorization;
  if (body !== undefined) headers['Content-Length'] = Buffer.byteLength(body);
  return dt.request({ port: s.port, method, path: p, headers, body, agent, timeout: opts.timeout });
}

const ctl = (method, p, body) => call(method, '/_control' + p, body === undefined ? {} : { body });

async function login(s = srv) {
  const r = await call('POST', '/v2/access/login', { server: s, body: { username: USER, 'api-key': KEY } });
  assert.equal(r.status, 200, r.text);
  return r.text;
}

function createBody(extra = {}) {
  return Object.assign({
    title: 'Mietvertrag Musterstrasse 1',
    message: 'Bitte unterschreiben',
    content: PDF_B64,
    content_type: 'application/pdf',
    quality: 'QES',
    legislation: 'EIDAS',
    signatures: [
      { signer_identity_data: { email_address: 'mieter.a@example.de', first_name: 'Anna', last_name: 'Alt' } },
      { signer_identity_data: { email_address: 'mieter.b@example.de', first_name: 'Bernd', last_name: 'Berg' } },
    ],
  }, extra);
}

async function create(extra) {
  const r = await call('POST', '/v2/signature-requests', { body: createBody(extra) });
  assert.equal(r.status, 200, r.text);
  return r.json;
}

function assertProblem(r, status, kind, { key, message } = {}) {
  assert.equal(r.status, status, r.text);
  assert.equal(r.headers['content-type'], 'application/problem+json');
  const p = r.json;
  assert.equal(p.type, 'https://api.skribble.com/problem/' + kind);
  assert.equal(p.status, status);
  assert.equal(typeof p.method, 'string');
  assert.ok(p.path.startsWith('/'), p.path);
  assert.equal(typeof p.message, 'string');
  if (key !== undefined) assert.equal(p.key, key);
  if (message) assert.match(p.message, message);
  return p;
}

const { sleep } = dt;
const waitFor = (fn, ms, what) => dt.waitFor(fn, ms, what, 20);

const decodeJwtPart = (p) => JSON.parse(Buffer.from(p, 'base64url').toString('utf8'));

/* The callback receiver answers by path: /fail/N fails the first N calls, /retry-after/S answers 503 + Retry-After once. */
const received = [];
const hits = new Map();
let receiver;
let cbBase;

function startReceiver() {
  return new Promise((resolve) => {
    receiver = http.createServer((req, res) => {
      let body = '';
      req.on('data', (c) => { body += c; });
      req.on('end', () => {
        received.push({ method: req.method, url: req.url, body, at: Date.now(), contentType: req.headers['content-type'] });
        const n = (hits.get(req.url) || 0) + 1;
        hits.set(req.url, n);
        let m;
        if (req.url.startsWith('/always-fail')) {
          res.writeHead(500);
          return res.end('nope');
        }
        if ((m = /^\/fail\/(\d+)\//.exec(req.url)) && n <= Number(m[1])) {
          res.writeHead(404);
          return res.end('token not found');
        }
        if ((m = /^\/retry-after\/(\d+)\//.exec(req.url)) && n === 1) {
          res.writeHead(503, { 'Retry-After': m[1] });
          return res.end('busy');
        }
        res.writeHead(200);
        res.end('ok');
      });
    });
    receiver.listen(0, '127.0.0.1', () => {
      cbBase = `http://127.0.0.1:${receiver.address().port}`;
      resolve();
    });
  });
}

const receivedFor = (prefix) => received.filter((r) => r.url.startsWith(prefix));

/* checkPdfStructure verifies the xref offsets of a generated PDF point at their objects. */
function checkPdfStructure(buf) {
  const s = buf.toString('latin1');
  assert.ok(s.startsWith('%PDF-'));
  assert.ok(s.endsWith('%%EOF\n'));
  const sx = Number(/startxref\n(\d+)\n%%EOF\n$/.exec(s)[1]);
  assert.ok(s.startsWith('xref', sx), 'startxref points at xref');
  const lines = s.slice(sx).split('\n');
  const count = Number(lines[1].split(' ')[1]);
  for (let i = 1; i < count; i++) {
    const off = Number(lines[2 + i].slice(0, 10));
    assert.ok(s.startsWith(`${i} 0 obj`, off), `object ${i} at ${off}`);
  }
}

/* ------------------------------------------------------------------ */
/* setup                                                               */
/* ------------------------------------------------------------------ */

before(async () => {
  await startReceiver();
  srv = await startServer(['--callback-retry-interval', String(RETRY_MS), '--callback-max-attempts', String(MAX_ATTEMPTS),
    '--remind-window-ms', '1500']);
  token = await login();
});

after(async () => {
  agent.destroy();
  if (srv) await stopServer(srv);
  if (receiver) receiver.close();
});

async function fresh() {
  const r = await ctl('POST', '/reset');
  assert.equal(r.status, 200);
  received.length = 0;
  hits.clear();
}

/* ------------------------------------------------------------------ */
/* login and tokens                                                    */
/* ------------------------------------------------------------------ */

test('login answers a bare HS256 JWT as text/plain; wrong credentials get 401 problem JSON', async () => {
  await fresh();
  const before = Math.floor(Date.now() / 1000);
  const r = await call('POST', '/v2/access/login', { body: { username: USER, 'api-key': KEY } });
  assert.equal(r.status, 200);
  assert.match(r.headers['content-type'], /^text\/plain/);
  const parts = r.text.split('.');
  assert.equal(parts.length, 3);
  assert.deepEqual(decodeJwtPart(parts[0]), { alg: 'HS256', typ: 'JWT' });
  const p = decodeJwtPart(parts[1]);
  assert.equal(p.sub, USER);
  assert.ok(p.iat >= before && p.iat <= before + 2);
  assert.equal(p.exp - p.iat, 1200);
  assert.match(parts[2], /^[A-Za-z0-9_-]{43}$/);

  const form = await call('POST', '/v2/access/login', {
    raw: `username=${USER}&api-key=${KEY}`, headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
  });
  assert.equal(form.status, 200);

  const bad = await call('POST', '/v2/access/login', { body: { username: USER, 'api-key': 'wrong' } });
  const prob = assertProblem(bad, 401, 'problem-with-message');
  assert.equal(prob.method, 'POST');
  assert.equal(prob.path, '/v2/access/login');
  const noKey = await call('POST', '/v2/access/login', { body: { username: USER, api_key: KEY } });
  assertProblem(noKey, 400, 'constraint-violation');

  const st = (await ctl('GET', '/stats')).json;
  assert.equal(st.logins, 2);
  assert.equal(st.login_failures, 1);
});

test('missing or garbled tokens get 401, bad signatures 403 token_invalid, expired ones 403 token_expired', async () => {
  await fresh();
  const p = '/v2/signature-requests';
  assertProblem(await call('GET', p, { token: null }), 401, 'problem-with-message');
  assertProblem(await call('GET', p, { token: 'garbage' }), 401, 'problem-with-message');
  assertProblem(await call('GET', p, { token: 'a.b' }), 401, 'problem-with-message');

  const [h, , sig] = token.split('.');
  const forgedPayload = Buffer.from(JSON.stringify({ sub: 'evil', iat: 1, exp: 4102444800 })).toString('base64url');
  assertProblem(await call('GET', p, { token: `${h}.${forgedPayload}.${sig}` }), 403, 'problem-with-message', { key: 'error.auth.token_invalid' });
  const foreignSig = crypto.createHmac('sha256', 'other-secret').update(`${h}.${forgedPayload}`).digest('base64url');
  assertProblem(await call('GET', p, { token: `${h}.${forgedPayload}.${foreignSig}` }), 403, 'problem-with-message', { key: 'error.auth.token_invalid' });

  const t1 = await login();
  assert.equal((await call('GET', p, { token: t1 })).status, 200);
  assert.equal((await ctl('POST', '/expire-tokens')).status, 200);
  assertProblem(await call('GET', p, { token: t1 }), 403, 'problem-with-message', { key: 'error.auth.token_expired' });
  token = await login();
  assert.equal((await call('GET', p)).status, 200);

  assert.equal((await ctl('POST', '/token-ttl', { seconds: 1 })).status, 200);
  const short = await login();
  const { exp } = decodeJwtPart(short.split('.')[1]);
  assert.equal((await call('GET', p, { token: short })).status, 200);
  await sleep(Math.max(0, exp * 1000 - Date.now()) + 20);
  assertProblem(await call('GET', p, { token: short }), 403, 'problem-with-message', { key: 'error.auth.token_expired' });
  await ctl('POST', '/token-ttl', { seconds: 1200 });
});

/* ------------------------------------------------------------------ */
/* creating signature requests                                         */
/* ------------------------------------------------------------------ */

test('create validates like Skribble: 400 for bad fields, 406 for a corrupt or encrypted PDF', async () => {
  await fresh();
  const sig = [{ signer_identity_data: { email_address: 'x@example.de' } }];
  const cases = [
    [{ title: undefined }, 400, 'constraint-violation', /title/],
    [{ title: '  ' }, 400, 'constraint-violation', /title/],
    [{ content: undefined, content_type: undefined }, 400, 'problem-with-message', /Exactly one of/],
    [{ file_url: 'https://example.com/a.pdf' }, 400, 'problem-with-message', /Exactly one of/],
    [{ document_id: 'abc' }, 400, 'problem-with-message', /Exactly one of/],
    [{ content_type: 'image/png' }, 400, 'problem-with-message', /application\/pdf/],
    [{ content: Buffer.from('Hello world!').toString('base64') }, 406, 'problem-with-message', /corrupt or encrypted/],
    [{ content: Buffer.from('%PDF-1.4\ntrailer << /Encrypt 5 0 R >>\n%%EOF\n').toString('base64') }, 406, 'problem-with-message', /corrupt or encrypted/],
    [{ content: '%%%% not base64 %%%%' }, 400, 'constraint-violation', /Base64/],
    [{ quality: 'GOLD' }, 400, 'constraint-violation', /quality/],
    [{ legislation: 'US' }, 400, 'constraint-violation', /legislation/],
    [{ quality: 'QES', legislation: undefined }, 400, 'problem-with-message', /legislation/],
    [{ quality: 'AES_MINIMAL', legislation: undefined }, 400, 'problem-with-message', /legislation/],
    [{ signatures: [{ signer_identity_data: { first_name: 'No' } }] }, 400, 'constraint-violation', /email/],
    [{ signatures: [{ account_email: 'not-an-email' }] }, 400, 'constraint-violation', /account_email/],
    [{ signatures: [{ ...sig[0], sequence: 0 }] }, 400, 'constraint-violation', /sequence/],
    [{ signatures: [{ ...sig[0], sequence: -2 }] }, 400, 'constraint-violation', /sequence/],
    [{ signatures: [{ ...sig[0], sequence: 1.5 }] }, 400, 'constraint-violation', /sequence/],
    [{ signatures: [{ ...sig[0], sequence: '1' }] }, 400, 'constraint-violation', /sequence/],
    [{ signatures: 'everyone' }, 400, 'constraint-violation', /signatures/],
    [{ custom: 'x'.repeat(10001) }, 400, 'constraint-violation', /custom/],
    [{ attach_on_success: ['EVERYTHING'] }, 400, 'constraint-violation', /attach_on_success/],
    [{ callback_success_url: 'not a url' }, 400, 'constraint-violation', /callback_success_url/],
    [{ expires_at: '2030-01-01T00:00:00Z' }, 403, 'feature-not-enabled', /expires_at/],
  ];
  for (const [extra, status, kind, message] of cases) {
    const r = await call('POST', '/v2/signature-requests', { body: createBody(extra) });
    const p = assertProblem(r, status, kind, { message });
    assert.equal(p.path, '/v2/signature-requests');
    assert.equal(p.method, 'POST');
  }
  assertProblem(await call('POST', '/v2/signature-requests', { raw: '{"title":', headers: { 'Content-Type': 'application/json' } }), 400, 'problem-with-message');
  assertProblem(await call('POST', '/v2/signature-requests', { body: createBody({ document_id: 'no-such-doc', content: undefined }) }), 404, 'entity-not-found');
  /* the boundaries are accepted */
  assert.equal((await call('POST', '/v2/signature-requests', { body: createBody({ custom: 'x'.repeat(10000) }) })).status, 200);
  assert.equal((await call('POST', '/v2/signature-requests', { body: createBody({ quality: 'SES', legislation: undefined }) })).status, 200);
  assert.equal((await call('POST', '/v2/signature-requests', { body: createBody({ quality: undefined, legislation: undefined }) })).status, 200);
  assert.equal((await ctl('GET', '/requests')).json.length, 3);
});

test('a request body over 60 MB is rejected with 413 and nothing is stored', async () => {
  await fresh();
  const big = JSON.stringify(createBody({ content: 'A'.repeat(61 * 1024 * 1024) }));
  const r = await call('POST', '/v2/signature-requests', { raw: big, headers: { 'Content-Type': 'application/json' } });
  assertProblem(r, 413, 'limit-exceeded');
  assert.equal((await ctl('GET', '/requests')).json.length, 0);
});

test('create answers the full SignatureRequest; account holders keep their e-mail, others get an opaque id', async () => {
  await fresh();
  await ctl('POST', '/known-accounts', { emails: ['Verwalter@Example.de'] });
  const t0 = Date.now();
  const sr = await create({
    custom: 'qes-uuid-1',
    attach_on_success: ['SIGNED_DOCUMENT', 'SIGNATURE_PROTOCOL'],
    cc_email_addresses: ['archiv@example.de'],
    callback_success_url: `${cbBase}/ok/SKRIBBLE_SIGNATURE_REQUEST_ID/success`,
    signatures: [
      { signer_identity_data: { email_address: 'mieter.a@example.de', first_name: 'Anna', last_name: 'Alt', language: 'de' },
        visual_signature: { position: { x: 100, y: 600, width: 160, height: 60, page: 0 } } },
      { account_email: 'verwalter@example.de', signer_identity_data: { email_address: 'verwalter@example.de' }, notify: false },
    ],
  });
  assert.match(sr.id, ID_RE);
  assert.match(sr.document_id, ID_RE);
  assert.equal(sr.title, 'Mietvertrag Musterstrasse 1');
  assert.equal(sr.message, 'Bitte unterschreiben');
  assert.equal(sr.legislation, 'EIDAS');
  assert.equal(sr.quality, 'DEMO', 'demo keys (api_demo_...) get quality DEMO');
  assert.equal(sr.signing_url, `https://my.skribble.com/view/${sr.id}`);
  assert.equal(sr.status_overall, 'OPEN');
  assert.match(sr.business, /^biz-[0-9a-f]{32}$/);
  assert.deepEqual(sr.cc_email_addresses, ['archiv@example.de']);
  assert.deepEqual(sr.attachments, []);
  assert.deepEqual(sr.attach_on_success, ['SIGNED_DOCUMENT', 'SIGNATURE_PROTOCOL']);
  assert.equal(sr.custom, 'qes-uuid-1');
  assert.equal(sr.owner, USER);
  assert.deepEqual(sr.write_access, [USER]);
  assert.match(sr.created_at, ISO_MS_RE);
  assert.equal(sr.updated_at, sr.created_at);
  assert.ok(Math.abs(Date.parse(sr.created_at) - t0) < 5000);
  assert.match(sr.expiration_date, /^\d{4}-\d\d-\d\d$/);
  assert.equal(sr.callback_success_url, `${cbBase}/ok/SKRIBBLE_SIGNATURE_REQUEST_ID/success`);

  const [a, v] = sr.signatures;
  assert.match(a.sid, ID_RE);
  assert.match(a.account_email, /^[0-9a-f]{32}$/, 'no-account signer gets an opaque id');
  assert.equal(a.signer_identity_data.email_address, 'mieter.a@example.de');
  assert.equal(a.sequence, -1);
  assert.equal(a.status_code, 'OPEN');
  assert.equal(a.notify, true);
  assert.equal(a.signing_url, `https://my.skribble.com/view/${sr.id}/${a.account_email}`);
  assert.deepEqual(a.visual_signature.position, { x: 100, y: 600, width: 160, height: 60, page: '0', rotation: 0, invisible: false });
  assert.deepEqual(a.visual_signature.positions, [a.visual_signature.position]);
  assert.equal(v.account_email, 'verwalter@example.de', 'known account keeps its e-mail');
  assert.equal(v.notify, false);
  assert.equal(v.signing_url, undefined);
  assert.notEqual(a.sid, v.sid);
  assert.deepEqual(sr.read_access.sort(), [USER, a.account_email, 'verwalter@example.de', 'archiv@example.de'].sort());

  const ctlSr = (await ctl('GET', `/signature-requests/${sr.id}`)).json;
  assert.equal(ctlSr._double.requested_quality, 'QES');
  assert.equal(ctlSr._double.requested_legislation, 'EIDAS');
  const st = (await ctl('GET', '/stats')).json;
  assert.deepEqual(st.creates_by_custom, { 'qes-uuid-1': 1 });
  assert.equal(st.calls['POST /v2/signature-requests'], 1);

  /* the document it created */
  const doc = await call('GET', `/v2/documents/${sr.document_id}`);
  assert.equal(doc.status, 200);
  const d = doc.json;
  assert.equal(d.id, sr.document_id);
  assert.equal(d.parent_id, undefined);
  assert.equal(d.title, sr.title);
  assert.equal(d.content_type, 'application/pdf');
  assert.equal(d.size, PDF.length);
  assert.equal(d.page_count, 2);
  assert.equal(d.page_width, 612);
  assert.equal(d.page_height, 792);
  assert.equal(d.owner, USER);
  assert.ok(d.read_access.includes(USER));
  assert.match(d.created_at, ISO_MS_RE);
});

test('a signature request can also be created from file_url or an uploaded document_id', async () => {
  await fresh();
  const files = http.createServer((req, res) => {
    if (req.url === '/doc.pdf') { res.writeHead(200, { 'Content-Type': 'application/pdf' }); return res.end(PDF); }
    res.writeHead(404); res.end();
  });
  await new Promise((r) => files.listen(0, '127.0.0.1', r));
  try {
    const base = `http://127.0.0.1:${files.address().port}`;
    const viaUrl = await create({ content: undefined, content_type: undefined, file_url: `${base}/doc.pdf` });
    const content = await call('GET', `/v2/documents/${viaUrl.document_id}/content`, { headers: { Accept: 'application/pdf' } });
    assert.deepEqual(content.buf, PDF);
    assertProblem(await call('POST', '/v2/signature-requests', { body: createBody({ content: undefined, file_url: `${base}/missing.pdf` }) }),
      400, 'problem-with-message', { message: /file_url/ });
    const up = await call('POST', '/v2/documents', { body: { title: 'Upload', content: PDF_B64, content_type: 'application/pdf' } });
    assert.equal(up.status, 200);
    const viaDoc = await create({ content: undefined, content_type: undefined, document_id: up.json.id });
    assert.equal(viaDoc.document_id, up.json.id);
  } finally {
    files.close();
  }
});

test('GET by id, 404 entity-not-found, and the list with search, filters and paging', async () => {
  await fresh();
  const made = [];
  for (let i = 0; i < 5; i++) made.push(await create({ title: `Vertrag ${i} ${i % 2 ? 'Garage' : 'Wohnung'}` }));
  const one = await call('GET', `/v2/signature-requests/${made[2].id}`);
  assert.equal(one.status, 200);
  assert.deepEqual(one.json, made[2]);
  const nf = assertProblem(await call('GET', '/v2/signature-requests/00000000-0000-0000-0000-000000000000'), 404, 'entity-not-found');
  assert.equal(nf.message, 'SignatureRequest not found');
  assert.equal(nf.method, 'GET');
  assert.equal(nf.path, '/v2/signature-requests/00000000-0000-0000-0000-000000000000');

  const all = (await call('GET', '/v2/signature-requests')).json;
  assert.ok(Array.isArray(all));
  assert.deepEqual(all.map((s) => s.id), made.map((s) => s.id).reverse(), 'newest first');
  const garage = (await call('GET', '/v2/signature-requests?search=garage')).json;
  assert.deepEqual(garage.map((s) => s.title).sort(), ['Vertrag 1 Garage', 'Vertrag 3 Garage']);
  await call('POST', `/v2/signature-requests/${made[0].id}/withdraw`);
  const withdrawn = (await call('GET', '/v2/signature-requests?status_overall=WITHDRAWN')).json;
  assert.deepEqual(withdrawn.map((s) => s.id), [made[0].id]);
  const byAccount = (await call('GET', `/v2/signature-requests?account_email=${made[3].signatures[0].account_email}`)).json;
  assert.deepEqual(byAccount.map((s) => s.id), [made[3].id]);
  const p1 = (await call('GET', '/v2/signature-requests?page_size=2&page_number=1')).json;
  const p2 = (await call('GET', '/v2/signature-requests?page_size=2&page_number=2')).json;
  const p3 = (await call('GET', '/v2/signature-requests?page_size=2&page_number=3')).json;
  assert.deepEqual([...p1, ...p2, ...p3].map((s) => s.id), made.map((s) => s.id).reverse());
  assert.deepEqual([p1.length, p2.length, p3.length], [2, 2, 1]);
  assertProblem(await call('GET', '/v2/signature-requests?page_size=-1&page_number=1'), 400, 'constraint-violation', { message: /page_size/ });
  assertProblem(await call('GET', '/v2/signature-requests?page_size=two'), 400, 'parameterized', { message: /page_size/ });
});

/* ------------------------------------------------------------------ */
/* signing, documents, callbacks                                       */
/* ------------------------------------------------------------------ */

test('ordered signing: later sequences WAIT, a WAITING signer cannot sign, the next level opens', async () => {
  await fresh();
  const sr = await create({
    signatures: [
      { signer_identity_data: { email_address: 'one@example.de' }, sequence: 1 },
      { signer_identity_data: { email_address: 'two-a@example.de' }, sequence: 2 },
      { signer_identity_data: { email_address: 'two-b@example.de' }, sequence: 2 },
      { signer_identity_data: { email_address: 'three@example.de' }, sequence: 3 },
    ],
  });
  assert.deepEqual(sr.signatures.map((s) => s.status_code), ['OPEN', 'WAITING', 'WAITING', 'WAITING']);
  const refused = await ctl('POST', `/signature-requests/${sr.id}/signatures/two-a@example.de/sign`);
  assertProblem(refused, 409, 'problem-with-message', { message: /WAITING/ });
  let r = (await ctl('POST', `/signature-requests/${sr.id}/signatures/${sr.signatures[0].sid}/sign`)).json;
  assert.deepEqual(r.signatures.map((s) => s.status_code), ['SIGNED', 'OPEN', 'OPEN', 'WAITING']);
  r = (await ctl('POST', `/signature-requests/${sr.id}/signatures/two-b@example.de/sign`)).json;
  assert.deepEqual(r.signatures.map((s) => s.status_code), ['SIGNED', 'OPEN', 'SIGNED', 'WAITING']);
  r = (await ctl('POST', `/signature-requests/${sr.id}/signatures/two-a@example.de/sign`)).json;
  assert.deepEqual(r.signatures.map((s) => s.status_code), ['SIGNED', 'SIGNED', 'SIGNED', 'OPEN']);
  assert.equal(r.status_overall, 'OPEN');
  r = (await ctl('POST', `/signature-requests/${sr.id}/signatures/three@example.de/sign`)).json;
  assert.equal(r.status_overall, 'SIGNED');
});

test('signing makes new document versions; view/sign send UPDATE and SUCCESS callbacks with placeholders replaced', async () => {
  await fresh();
  const tmpl = (kind) => `${cbBase}/ok/${kind}/SKRIBBLE_SIGNATURE_REQUEST_ID?doc=SKRIBBLE_DOCUMENT_ID&sid=SKRIBBLE_SIGNATURE_ID&again=SKRIBBLE_SIGNATURE_REQUEST_ID`;
  const sr = await create({ callback_success_url: tmpl('success'), callback_update_url: tmpl('update'), callback_error_url: tmpl('error') });
  const [a, b] = sr.signatures;
  const doc0 = sr.document_id;

  let r = (await ctl('POST', `/signature-requests/${sr.id}/signatures/mieter.a@example.de/view`)).json;
  assert.match(r.signatures[0].last_viewed_at, ISO_MS_RE);
  assert.equal(r.document_id, doc0, 'viewing does not change the document');
  r = (await ctl('POST', `/signature-requests/${sr.id}/signatures/${a.sid}/sign`)).json;
  const doc1 = r.document_id;
  assert.notEqual(doc1, doc0);
  assert.equal(r.signatures[0].status_code, 'SIGNED');
  assert.match(r.signatures[0].signed_at, ISO_MS_RE);
  assert.equal(r.signatures[0].signed_quality, 'DEMO');
  assert.equal(r.signatures[0].signed_legislation, 'EIDAS');
  assert.equal(r.status_overall, 'OPEN');
  assert.ok(Date.parse(r.updated_at) >= Date.parse(sr.updated_at));
  assertProblem(await ctl('POST', `/signature-requests/${sr.id}/signatures/${a.sid}/sign`), 409, 'problem-with-message');
  r = (await ctl('POST', `/signature-requests/${sr.id}/signatures/mieter.b@example.de/sign`)).json;
  const doc2 = r.document_id;
  assert.equal(r.status_overall, 'SIGNED');
  assert.equal((await call('GET', `/v2/signature-requests/${sr.id}`)).json.document_id, doc2);

  /* document versions chain through parent_id and all stay retrievable */
  const m2 = (await call('GET', `/v2/documents/${doc2}`)).json;
  const m1 = (await call('GET', `/v2/documents/${doc1}`)).json;
  assert.equal(m2.parent_id, doc1);
  assert.equal(m1.parent_id, doc0);
  assert.equal(m2.page_count, 2);
  const raw0 = await call('GET', `/v2/documents/${doc0}/content`, { headers: { Accept: 'application/pdf' } });
  assert.equal(raw0.headers['content-type'], 'application/pdf');
  assert.deepEqual(raw0.buf, PDF);
  const raw2 = await call('GET', `/v2/documents/${doc2}/content`, { headers: { Accept: 'application/pdf' } });
  const text2 = raw2.buf.toString('latin1');
  assert.ok(text2.startsWith(PDF.toString('latin1')), 'the signed version extends the original bytes');
  assert.ok(text2.endsWith('%%EOF\n'));
  assert.match(text2, /%signed-by mieter\.a@example\.de \S+Z\n%%EOF\n%signed-by mieter\.b@example\.de \S+Z\n%%EOF\n$/);
  assert.equal(m2.size, raw2.buf.length);
  const asJson = await call('GET', `/v2/documents/${doc2}/content`, { headers: { Accept: 'application/json' } });
  assert.equal(asJson.headers['content-type'], 'application/json');
  assert.deepEqual(Object.keys(asJson.json).sort(), ['content', 'content_size', 'content_type']);
  assert.equal(asJson.json.content_type, 'application/pdf');
  assert.equal(asJson.json.content_size, raw2.buf.length);
  assert.deepEqual(Buffer.from(asJson.json.content, 'base64'), raw2.buf);
  assertProblem(await call('GET', '/v2/documents/nope'), 404, 'entity-not-found');

  /* callbacks: UPDATE(view a), UPDATE(sign a), UPDATE(sign b), SUCCESS, in this order */
  await waitFor(() => receivedFor('/ok/').length >= 4, 3000, 'four callbacks');
  await sleep(100);
  const got = receivedFor('/ok/');
  assert.equal(got.length, 4);
  assert.ok(got.every((c) => c.method === 'POST' && c.contentType === 'application/json'));
  assert.deepEqual(got.map((c) => c.url), [
    `/ok/update/${sr.id}?doc=${doc0}&sid=${a.sid}&again=${sr.id}`,
    `/ok/update/${sr.id}?doc=${doc1}&sid=${a.sid}&again=${sr.id}`,
    `/ok/update/${sr.id}?doc=${doc2}&sid=${b.sid}&again=${sr.id}`,
    `/ok/success/${sr.id}?doc=${doc2}&sid=SKRIBBLE_SIGNATURE_ID&again=${sr.id}`,
  ]);
  assert.equal(JSON.parse(got[3].body).signature_request_id, sr.id);

  const cbs = (await call('GET', `/v2/signature-requests/${sr.id}/callbacks`)).json;
  assert.deepEqual(cbs.map((c) => [c.type, c.state, c.attempts]), [
    ['UPDATE', 'COMPLETED', 1], ['UPDATE', 'COMPLETED', 1], ['UPDATE', 'COMPLETED', 1], ['SUCCESS', 'COMPLETED', 1]]);
  assert.equal(cbs[3].url, cbBase + got[3].url);
  assert.equal(cbs[0].signature_request_id, sr.id);
  assert.deepEqual(cbs[0].messages, []);
  assert.match(cbs[0].created_at, ISO_MS_RE);
  const viaPost = (await call('POST', `/v2/signature-requests/${sr.id}/callbacks`)).json;
  assert.equal(viaPost.length, 4);
  const st = (await ctl('GET', '/stats')).json;
  assert.equal(st.callbacks.sent, 4);
  assert.equal(st.callbacks.completed, 4);
  assert.equal(st.callbacks.failed, 0);
});

test('decline: DECLINED with decline_message, UPDATE then ERROR callback, no more signing', async () => {
  await fresh();
  const sr = await create({ callback_update_url: `${cbBase}/ok/u/SKRIBBLE_SIGNATURE_ID`, callback_error_url: `${cbBase}/ok/e/SKRIBBLE_SIGNATURE_REQUEST_ID` });
  const r = (await ctl('POST', `/signature-requests/${sr.id}/signatures/mieter.b@example.de/decline`, { message: 'Falsche Miete' })).json;
  assert.equal(r.status_overall, 'DECLINED');
  assert.equal(r.signatures[1].status_code, 'DECLINED');
  assert.equal(r.signatures[1].decline_message, 'Falsche Miete');
  assert.equal(r.signatures[0].status_code, 'OPEN');
  await waitFor(() => receivedFor('/ok/').length >= 2, 3000, 'two callbacks');
  assert.deepEqual(receivedFor('/ok/').map((c) => c.url), [`/ok/u/${sr.signatures[1].sid}`, `/ok/e/${sr.id}`]);
  assertProblem(await ctl('POST', `/signature-requests/${sr.id}/signatures/mieter.a@example.de/sign`), 409, 'problem-with-message');
  assertProblem(await call('POST', `/v2/signature-requests/${sr.id}/withdraw`), 400, 'problem-with-message');
});

test('withdraw and DELETE: WITHDRAWN with every unsigned signature WITHDRAWN, ERROR callback, only while OPEN', async () => {
  await fresh();
  const sr = await create({ callback_error_url: `${cbBase}/ok/err/SKRIBBLE_SIGNATURE_REQUEST_ID` });
  await ctl('POST', `/signature-requests/${sr.id}/signatures/mieter.a@example.de/sign`);
  assertProblem(await call('POST', `/v2/signature-requests/${sr.id}/withdraw`, { body: { message: 'x'.repeat(2049) } }), 400, 'constraint-violation');
  const w = await call('POST', `/v2/signature-requests/${sr.id}/withdraw`, { body: { message: 'Wohnung vergeben' } });
  assert.equal(w.status, 200);
  assert.equal(w.json.status_overall, 'WITHDRAWN');
  assert.deepEqual(w.json.signatures.map((s) => s.status_code), ['SIGNED', 'WITHDRAWN']);
  assert.deepEqual(w.json.read_access, [USER]);
  assertProblem(await call('POST', `/v2/signature-requests/${sr.id}/withdraw`), 400, 'problem-with-message', { message: /WITHDRAWN/ });
  await waitFor(() => receivedFor('/ok/err/').length === 1, 3000, 'error callback');
  assert.equal(receivedFor('/ok/err/')[0].url, `/ok/err/${sr.id}`);
  assertProblem(await call('POST', '/v2/signature-requests/nope/withdraw'), 404, 'entity-not-found');

  const sr2 = await create();
  const d = await call('DELETE', `/v2/signature-requests/${sr2.id}`);
  assert.equal(d.status, 200);
  assert.equal(d.buf.length, 0);
  const after1 = (await call('GET', `/v2/signature-requests/${sr2.id}`)).json;
  assert.equal(after1.status_overall, 'WITHDRAWN');
  assert.deepEqual(after1.signatures.map((s) => s.status_code), ['WITHDRAWN', 'WITHDRAWN']);
  /* deleting a withdrawn request removes it and its documents */
  assert.equal((await call('DELETE', `/v2/signature-requests/${sr2.id}`)).status, 200);
  assertProblem(await call('GET', `/v2/signature-requests/${sr2.id}`), 404, 'entity-not-found');
  assertProblem(await call('GET', `/v2/documents/${sr2.document_id}`), 404, 'entity-not-found');
  /* a signed request cannot be deleted */
  const sr3 = await create({ signatures: [{ signer_identity_data: { email_address: 'solo@example.de' } }] });
  await ctl('POST', `/signature-requests/${sr3.id}/signatures/solo@example.de/sign`);
  assertProblem(await call('DELETE', `/v2/signature-requests/${sr3.id}`), 400, 'problem-with-message');
});

test('add and remove signers while nobody has signed; once anyone has signed, both answer 400', async () => {
  await fresh();
  const sr = await create({ callback_success_url: `${cbBase}/ok/done/SKRIBBLE_SIGNATURE_REQUEST_ID` });
  const add = await call('POST', `/v2/signature-requests/${sr.id}/signatures`, {
    body: { signer_identity_data: { email_address: 'neu@example.de', first_name: 'Nora', last_name: 'Neu' } },
  });
  assert.equal(add.status, 200);
  assert.equal(add.json.signatures.length, 3);
  const added = add.json.signatures[2];
  assert.equal(added.signer_identity_data.email_address, 'neu@example.de');
  assert.equal(added.status_code, 'OPEN');
  assertProblem(await call('POST', `/v2/signature-requests/${sr.id}/signatures`, { body: { sequence: 1 } }), 400, 'constraint-violation');
  /* nobody has signed yet: removing works */
  const del = await call('DELETE', `/v2/signature-requests/${sr.id}/signatures/${sr.signatures[1].sid}`);
  assert.equal(del.status, 200);
  assert.equal(del.buf.length, 0);
  assertProblem(await call('DELETE', `/v2/signature-requests/${sr.id}/signatures/no-such-sid`), 404, 'entity-not-found');
  let now = (await call('GET', `/v2/signature-requests/${sr.id}`)).json;
  assert.deepEqual(now.signatures.map((s) => s.signer_identity_data.email_address), ['mieter.a@example.de', 'neu@example.de']);

  /* Anna signs: from now on no signer may be added or removed, signed or not */
  await ctl('POST', `/signature-requests/${sr.id}/signatures/mieter.a@example.de/sign`);
  const refused = /cannot be changed because a signer has already signed/;
  assertProblem(await call('DELETE', `/v2/signature-requests/${sr.id}/signatures/${added.sid}`), 400, 'problem-with-message', { message: refused });
  assertProblem(await call('DELETE', `/v2/signature-requests/${sr.id}/signatures/${sr.signatures[0].sid}`), 400, 'problem-with-message', { message: refused });
  assertProblem(await call('POST', `/v2/signature-requests/${sr.id}/signatures`,
    { body: { signer_identity_data: { email_address: 'spaet@example.de' } } }), 400, 'problem-with-message', { message: refused });
  assertProblem(await call('DELETE', `/v2/signature-requests/${sr.id}/signatures/no-such-sid`), 404, 'entity-not-found');
  now = (await call('GET', `/v2/signature-requests/${sr.id}`)).json;
  assert.deepEqual(now.signatures.map((s) => s.signer_identity_data.email_address), ['mieter.a@example.de', 'neu@example.de'], 'nothing changed');
  await ctl('POST', `/signature-requests/${sr.id}/signatures/${added.sid}/sign`);
  assert.equal((await call('GET', `/v2/signature-requests/${sr.id}`)).json.status_overall, 'SIGNED');
  await waitFor(() => receivedFor('/ok/done/').length === 1, 3000, 'success callback');
});

test('remind: 200 empty, a second one within the window gets 429 error.rate_limit.reminder with Retry-After', async () => {
  await fresh();
  const sr = await create();
  const r1 = await call('POST', `/v2/signature-requests/${sr.id}/remind`);
  assert.equal(r1.status, 200);
  assert.equal(r1.buf.length, 0);
  const r2 = await call('POST', `/v2/signature-requests/${sr.id}/remind`);
  assertProblem(r2, 429, 'limit-exceeded', { key: 'error.rate_limit.reminder' });
  assert.ok(Number(r2.headers['retry-after']) >= 1 && Number(r2.headers['retry-after']) <= 2, r2.headers['retry-after']);
  const other = await create();
  assert.equal((await call('POST', `/v2/signature-requests/${other.id}/remind`)).status, 200, 'the limit is per request');
  await sleep(1600);
  assert.equal((await call('POST', `/v2/signature-requests/${sr.id}/remind`)).status, 200, 'allowed again after the window');
  assert.equal((await ctl('GET', `/signature-requests/${sr.id}`)).json._double.reminders, 2);
});

test('report: PDF (default), JSON in the SignatureReport shape, HTML', async () => {
  await fresh();
  const sr = await create();
  await ctl('POST', `/signature-requests/${sr.id}/signatures/mieter.a@example.de/sign`);
  const pdf = await call('GET', `/v2/signature-requests/${sr.id}/report`);
  assert.equal(pdf.status, 200);
  assert.equal(pdf.headers['content-type'], 'application/pdf');
  checkPdfStructure(pdf.buf);
  const ptext = pdf.buf.toString('latin1');
  assert.ok(ptext.includes(sr.id));
  assert.ok(ptext.includes('Mietvertrag Musterstrasse 1'));
  assert.ok(ptext.includes('mieter.a@example.de') && ptext.includes('mieter.b@example.de'));

  const js = await call('GET', `/v2/signature-requests/${sr.id}/report?type=JSON`);
  assert.equal(js.status, 200);
  const rep = js.json;
  assert.equal(rep.header.signatureRequestID, sr.id);
  assert.equal(rep.header.title, sr.title);
  assert.equal(rep.header.status, 'OPEN');
  assert.equal(rep.header.signatureCount, 2);
  assert.equal(rep.header.signatureCountSigned, 1);
  assert.equal(rep.error, null);
  const owner = rep.userList[0];
  assert.equal(owner.id, USER);
  const created = owner.userActions.find((x) => x.name === 'CREATED');
  assert.equal(created.documents[0].documentId, sr.document_id);
  assert.equal(created.documents[0].documentSha256, crypto.createHash('sha256').update(PDF).digest('hex'));
  const anna = rep.userList.find((u) => u.email === 'mieter.a@example.de');
  const signed = anna.userActions.find((x) => x.name === 'SIGNED');
  assert.equal(signed.signatureId, sr.signatures[0].sid);
  assert.equal(signed.quality, 'DEMO');
  assert.equal(signed.legislation, 'EIDAS');
  assert.match(signed.time, /^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d GMT$/);
  const current = (await call('GET', `/v2/signature-requests/${sr.id}`)).json;
  assert.equal(signed.documentId, current.document_id);
  assert.equal(rep.userList.find((u) => u.email === 'mieter.b@example.de').userActions.length, 0);

  const html = await call('GET', `/v2/signature-requests/${sr.id}/report?type=HTML`);
  assert.match(html.headers['content-type'], /^text\/html/);
  assert.ok(html.text.includes(sr.id) && html.text.includes('mieter.a@example.de'));
  assertProblem(await call('GET', `/v2/signature-requests/${sr.id}/report?type=DOCX`), 400, 'parameterized');
});

test('callback retries: non-2xx is retried, Retry-After pauses, RESIGNATED after max attempts, order kept per request', async () => {
  await fresh();
  /* fails twice with 404, succeeds on the third attempt */
  const a = await create({ callback_update_url: `${cbBase}/fail/2/SKRIBBLE_SIGNATURE_REQUEST_ID` });
  const t0 = Date.now();
  await ctl('POST', `/signature-requests/${a.id}/signatures/mieter.a@example.de/view`);
  await waitFor(async () => (await call('GET', `/v2/signature-requests/${a.id}/callbacks`)).json[0].state === 'COMPLETED', 4000, 'completion');
  const ca = (await call('GET', `/v2/signature-requests/${a.id}/callbacks`)).json[0];
  assert.equal(ca.attempts, 3);
  assert.equal(ca.messages.length, 2);
  assert.match(ca.messages[0], /^Failed: 404 - 404 Not Found: token not found$/);
  const times = receivedFor(`/fail/2/${a.id}`).map((c) => c.at);
  assert.equal(times.length, 3);
  assert.ok(times[1] - times[0] >= RETRY_MS - 20 && times[2] - times[1] >= RETRY_MS - 20, JSON.stringify(times));
  assert.ok(Date.now() - t0 < 3000);

  /* always failing: RESIGNATED after MAX_ATTEMPTS; the later SUCCESS callback is not blocked */
  const b = await create({
    signatures: [{ signer_identity_data: { email_address: 'solo@example.de' } }],
    callback_update_url: `${cbBase}/always-fail/SKRIBBLE_SIGNATURE_REQUEST_ID`,
    callback_success_url: `${cbBase}/ok/b/SKRIBBLE_SIGNATURE_REQUEST_ID`,
  });
  await ctl('POST', `/signature-requests/${b.id}/signatures/solo@example.de/sign`);
  await waitFor(() => receivedFor('/ok/b/').length === 1, 3000, 'success callback');
  assert.equal(receivedFor(`/always-fail/${b.id}`).length, 1, 'the first UPDATE attempt went out before SUCCESS');
  assert.ok(receivedFor(`/always-fail/${b.id}`)[0].at <= receivedFor('/ok/b/')[0].at);
  await waitFor(async () => (await call('GET', `/v2/signature-requests/${b.id}/callbacks`)).json[0].state === 'RESIGNATED', 4000, 'resignation');
  await sleep(RETRY_MS * 2);
  const cb = (await call('GET', `/v2/signature-requests/${b.id}/callbacks`)).json;
  assert.deepEqual(cb.map((c) => [c.type, c.state, c.attempts]), [['UPDATE', 'RESIGNATED', MAX_ATTEMPTS], ['SUCCESS', 'COMPLETED', 1]]);
  assert.equal(receivedFor(`/always-fail/${b.id}`).length, MAX_ATTEMPTS, 'no attempts after resignation');

  /* Retry-After: 1 second pause instead of the 200 ms interval */
  const c = await create({ callback_update_url: `${cbBase}/retry-after/1/SKRIBBLE_SIGNATURE_REQUEST_ID` });
  await ctl('POST', `/signature-requests/${c.id}/signatures/mieter.a@example.de/view`);
  await waitFor(() => receivedFor(`/retry-after/1/${c.id}`).length === 2, 4000, 'retry after pause');
  const [r1, r2] = receivedFor(`/retry-after/1/${c.id}`).map((x) => x.at);
  assert.ok(r2 - r1 >= 950, `paused ${r2 - r1} ms`);

  /* a connection error counts as a failed attempt */
  const d = await create({ callback_update_url: 'http://127.0.0.1:1/nobody/SKRIBBLE_SIGNATURE_REQUEST_ID' });
  await ctl('POST', `/signature-requests/${d.id}/signatures/mieter.a@example.de/view`);
  await waitFor(async () => (await call('GET', `/v2/signature-requests/${d.id}/callbacks`)).json[0].state === 'RESIGNATED', 4000, 'resignation');
  assert.match((await call('GET', `/v2/signature-requests/${d.id}/callbacks`)).json[0].messages[0], /^Failed: ECONNREFUSED/);
  const st = (await ctl('GET', '/stats')).json;
  assert.equal(st.callbacks.resignated, 2);
  assert.equal(st.callbacks.pending, 0);
});

test('pause-callbacks holds callbacks; resume-callbacks delivers them in order', async () => {
  await fresh();
  assert.equal((await ctl('POST', '/pause-callbacks')).status, 200);
  const sr = await create({ callback_update_url: `${cbBase}/ok/p/SKRIBBLE_SIGNATURE_ID`, callback_success_url: `${cbBase}/ok/p/success` });
  for (const s of sr.signatures) await ctl('POST', `/signature-requests/${sr.id}/signatures/${s.sid}/sign`);
  await sleep(300);
  assert.equal(receivedFor('/ok/p/').length, 0);
  const st = (await ctl('GET', '/stats')).json;
  assert.equal(st.callbacks.pending, 3);
  assert.equal(st.callbacks.paused, true);
  await ctl('POST', '/resume-callbacks');
  await waitFor(() => receivedFor('/ok/p/').length === 3, 3000, 'held callbacks');
  assert.deepEqual(receivedFor('/ok/p/').map((c) => c.url), [`/ok/p/${sr.signatures[0].sid}`, `/ok/p/${sr.signatures[1].sid}`, '/ok/p/success']);
});

test('expire: EXPIRED, unsigned signatures keep their codes, ERROR callback', async () => {
  await fresh();
  const sr = await create({ callback_error_url: `${cbBase}/ok/exp/SKRIBBLE_SIGNATURE_REQUEST_ID` });
  await ctl('POST', `/signature-requests/${sr.id}/signatures/mieter.a@example.de/sign`);
  const r = await ctl('POST', `/signature-requests/${sr.id}/expire`);
  assert.equal(r.status, 200);
  assert.equal(r.json.status_overall, 'EXPIRED');
  assert.deepEqual(r.json.signatures.map((s) => s.status_code), ['SIGNED', 'OPEN']);
  await waitFor(() => receivedFor('/ok/exp/').length === 1, 3000, 'error callback');
  assertProblem(await ctl('POST', `/signature-requests/${sr.id}/expire`), 409, 'problem-with-message');
});

/* ------------------------------------------------------------------ */
/* faults, latency, statistics                                         */
/* ------------------------------------------------------------------ */

test('faults: 5xx, 429 with Retry-After, held timeouts, dropped creates; never on login or /_control', async () => {
  await fresh();
  const sr = await create();
  const get = () => call('GET', `/v2/signature-requests/${sr.id}`);

  await ctl('POST', '/faults', { error_rate: 1, error_status: 503 });
  assertProblem(await get(), 503, 'problem-with-message');
  assert.equal((await call('POST', '/v2/access/login', { body: { username: USER, 'api-key': KEY } })).status, 200, 'login is exempt');
  assert.equal((await ctl('GET', '/stats')).status, 200, '/_control is exempt');
  const before = (await ctl('GET', '/requests')).json.length;
  assertProblem(await call('POST', '/v2/signature-requests', { body: createBody() }), 503, 'problem-with-message');
  assert.equal((await ctl('GET', '/requests')).json.length, before, 'an injected error does no work');

  await ctl('POST', '/faults', { rate_limit_rate: 1, retry_after: 7 });
  const rl = await get();
  assertProblem(rl, 429, 'limit-exceeded', { key: 'error.rate_limit.exceeded' });
  assert.equal(rl.headers['retry-after'], '7');

  await ctl('POST', '/faults', { error_rate: 1, paths: '/documents/' });
  assert.equal((await get()).status, 200, 'paths limits the faults');
  assertProblem(await call('GET', `/v2/documents/${sr.document_id}`), 500, 'problem-with-message');
  await ctl('POST', '/faults', { error_rate: 1, paths: 'access/login' });
  assertProblem(await call('POST', '/v2/access/login', { body: { username: USER, 'api-key': KEY } }), 500, 'problem-with-message');

  await ctl('POST', '/faults', { timeout_rate: 1, timeout_ms: 1500 });
  const t0 = Date.now();
  await assert.rejects(call('POST', '/v2/signature-requests', { body: createBody({ custom: 'held' }), timeout: 300 }), /client timeout/);
  assert.ok(Date.now() - t0 < 1000);
  await ctl('POST', '/faults', {});
  assert.equal((await ctl('GET', '/requests?custom=held')).json.length, 0, 'a held call does no work');

  await ctl('POST', '/faults', { drop_after_create_count: 1 });
  await assert.rejects(call('POST', '/v2/signature-requests', { body: createBody({ custom: 'dup' }) }), /socket hang up|ECONNRESET/);
  assert.equal((await ctl('GET', '/requests?custom=dup')).json.length, 1, 'the dropped create was stored');
  const again = await call('POST', '/v2/signature-requests', { body: createBody({ custom: 'dup' }) });
  assert.equal(again.status, 200, 'the count is used up');
  const st = (await ctl('GET', '/stats')).json;
  assert.equal(st.creates_by_custom.dup, 2);
  assert.equal(st.creates_by_custom.held, undefined);
  assert.deepEqual(st.faults_injected, { error: 4, rate_limit: 1, timeout: 1, drop_after_create: 1 });
  assert.deepEqual((await ctl('GET', '/faults')).json, { error_rate: 0, error_status: 500, rate_limit_rate: 0, retry_after: 1,
    timeout_rate: 0, timeout_ms: 60000, drop_after_create_rate: 0, drop_after_create_count: 0, paths: null, seed: 1 });
  await ctl('POST', '/faults', {});
  assert.deepEqual((await ctl('GET', '/faults')).json, {});
  assertProblem(await ctl('POST', '/faults', { error_rate: 2 }), 400, 'problem-with-message');
  assertProblem(await ctl('POST', '/faults', { paths: '(' }), 400, 'problem-with-message');
});

test('script: the next N matching calls, login included, get exactly the scripted answer; {} clears', async () => {
  await fresh();
  const sr = await create();
  const get = (q = '') => call('GET', `/v2/signature-requests/${sr.id}${q}`);
  const deep = '['.repeat(100000) + ']'.repeat(100000);

  const r = await ctl('POST', '/script', { method: 'get', path: `^/v2/signature-requests/${sr.id}$`, status: 403,
    headers: { 'Content-Type': 'application/problem+json', 'X-Scripted': 'yes' }, body: deep, times: 2 });
  assert.equal(r.status, 200, r.text);
  assert.deepEqual(r.json, [{ method: 'GET', path: `^/v2/signature-requests/${sr.id}$`, status: 403,
    headers: { 'Content-Type': 'application/problem+json', 'X-Scripted': 'yes' }, times: 2, body_bytes: 200000 }]);
  for (let i = 0; i < 2; i++) {
    const a = await get();
    assert.equal(a.status, 403);
    assert.equal(a.headers['content-type'], 'application/problem+json');
    assert.equal(a.headers['x-scripted'], 'yes');
    assert.equal(a.headers['content-length'], '200000');
    assert.equal(a.text, deep);
  }
  assert.equal((await get()).status, 200, 'the script is used up');
  assert.deepEqual((await ctl('GET', '/script')).json, []);

  /* the path regex sees the query; the method must match; no token is needed */
  await ctl('POST', '/script', { method: 'GET', path: '\\?type=JSON$', body: 'not json', times: 1 });
  assert.equal((await call('POST', `/v2/signature-requests/${sr.id}/remind`)).status, 200, 'another method');
  assert.equal((await call('GET', `/v2/signature-requests/${sr.id}/report?type=PDF`)).status, 200, 'another query');
  const raw = await call('GET', `/v2/signature-requests/${sr.id}/report?type=JSON`, { token: null });
  assert.equal(raw.status, 200);
  assert.equal(raw.text, 'not json');
  assert.equal(raw.headers['content-type'], undefined, 'no header but those scripted');

  /* login: a JWT with absurd claims instead of a real one; scripts match in order */
  const jwt = 'eyJhbGciOiJIUzI1NiJ9.' + Buffer.from('{"iat":-1e400,"exp":1e400}').toString('base64url') + '.x';
  await ctl('POST', '/script', { method: 'POST', path: '^/v2/access/login$', headers: { 'Content-Type': 'text/plain' }, body: jwt, times: 1 });
  await ctl('POST', '/script', { path: '^/v2/access/login$', status: 500, body: 'second', times: 5 });
  const logins = (await ctl('GET', '/stats')).json.logins;
  assert.equal((await call('POST', '/v2/access/login', { body: { username: USER, 'api-key': KEY } })).text, jwt);
  const second = await call('POST', '/v2/access/login', { body: { username: USER, 'api-key': KEY } });
  assert.equal(second.status, 500);
  assert.equal(second.text, 'second');
  assert.equal((await ctl('GET', '/script')).json[0].times, 4);
  assert.deepEqual((await ctl('POST', '/script', {})).json, [], '{} clears every script');
  assert.equal((await call('POST', '/v2/access/login', { body: { username: USER, 'api-key': KEY } })).status, 200);

  const st = (await ctl('GET', '/stats')).json;
  assert.equal(st.scripted, 5);
  assert.equal(st.logins, logins + 1, 'scripted logins are no logins');
  assert.equal(st.calls['POST /v2/access/login'], 3);
  assert.equal(st.calls['GET /v2/signature-requests/{SR_ID}'], 3);
  assert.equal(st.calls['GET /v2/signature-requests/{SR_ID}/report'], 2);

  assertProblem(await ctl('POST', '/script', { path: '(' }), 400, 'problem-with-message');
  assertProblem(await ctl('POST', '/script', { status: 99 }), 400, 'problem-with-message');
  assertProblem(await ctl('POST', '/script', { times: 0 }), 400, 'problem-with-message');
  assertProblem(await ctl('POST', '/script', { body: 42 }), 400, 'problem-with-message');
  assertProblem(await ctl('POST', '/script', { headers: { 'Bad Name': 'x' } }), 400, 'problem-with-message');
  assertProblem(await ctl('POST', '/script', { headers: { 'X-Ok': 'line\nbreak' } }), 400, 'problem-with-message');
  assert.deepEqual((await ctl('GET', '/script')).json, [], 'refused scripts are not kept');
  await ctl('POST', '/script', { path: 'x' });
  await ctl('POST', '/reset');
  assert.deepEqual((await ctl('GET', '/script')).json, [], 'reset clears the scripts');
});

test('faults are reproducible with a seed', async () => {
  await fresh();
  const sr = await create();
  const run = async () => {
    await ctl('POST', '/faults', { error_rate: 0.3, rate_limit_rate: 0.2, seed: 42 });
    const out = [];
    for (let i = 0; i < 40; i++) out.push((await call('GET', `/v2/signature-requests/${sr.id}`)).status);
    return out;
  };
  const first = await run();
  const second = await run();
  await ctl('POST', '/faults', {});
  assert.deepEqual(second, first);
  const count = (s) => first.filter((x) => x === s).length;
  assert.ok(count(500) >= 4 && count(500) <= 22, `500s: ${count(500)}`);
  assert.ok(count(429) >= 2 && count(429) <= 16, `429s: ${count(429)}`);
  assert.ok(count(200) >= 10, `200s: ${count(200)}`);
});

test('latency delays answers; stats count calls and calls in flight', async () => {
  await fresh();
  const sr = await create();
  await ctl('POST', '/latency', { ms: 150 });
  const t0 = Date.now();
  await Promise.all(Array.from({ length: 12 }, () => call('GET', `/v2/signature-requests/${sr.id}`)));
  const took = Date.now() - t0;
  await ctl('POST', '/latency', { ms: 0 });
  assert.ok(took >= 145, `took ${took} ms`);
  assert.ok(took < 1500, `12 parallel calls took ${took} ms, so they overlapped`);
  const t1 = Date.now();
  await call('GET', `/v2/signature-requests/${sr.id}`);
  assert.ok(Date.now() - t1 < 140);
  const st = (await ctl('GET', '/stats')).json;
  assert.equal(st.calls['GET /v2/signature-requests/{SR_ID}'], 13);
  assert.equal(st.calls['POST /v2/signature-requests'], 1);
  assert.equal(st.total_calls, 14);
  assert.ok(st.max_in_flight >= 12, `max_in_flight ${st.max_in_flight}`);
  assert.equal(st.in_flight, 0);
});

test('throughput: 4000 calls with 64 in flight', async () => {
  await fresh();
  const sr = await create();
  const total = 4000;
  let next = 0;
  let bad = 0;
  const t0 = process.hrtime.bigint();
  await Promise.all(Array.from({ length: 64 }, async () => {
    while (next < total) {
      next++;
      const r = await call('GET', `/v2/signature-requests/${sr.id}`);
      if (r.status !== 200) bad++;
    }
  }));
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  const rate = Math.round(total / secs);
  console.log(`# throughput: ${total} GETs with 64 in flight in ${secs.toFixed(2)} s = ${rate} calls/s`);
  assert.equal(bad, 0);
  assert.ok(rate >= 1000, `only ${rate} calls/s`);
  const st = (await ctl('GET', '/stats')).json;
  assert.ok(st.max_connections >= 32 && st.max_connections <= 64, `max_connections ${st.max_connections}`);
});

test('reset clears requests, documents, stats, faults and known accounts', async () => {
  await fresh();
  await ctl('POST', '/known-accounts', { emails: ['a@example.de'] });
  await ctl('POST', '/faults', { error_rate: 0.5 });
  const sr = await create();
  await ctl('POST', '/reset');
  assert.equal((await ctl('GET', '/requests')).json.length, 0);
  assertProblem(await call('GET', `/v2/documents/${sr.document_id}`), 404, 'entity-not-found');
  assert.deepEqual((await ctl('GET', '/faults')).json, {});
  assert.deepEqual((await ctl('GET', '/known-accounts')).json.emails, []);
  const st = (await ctl('GET', '/stats')).json;
  assert.equal(st.total_calls, 1);
  assert.deepEqual(st.creates_by_custom, {});
  assertProblem(await ctl('POST', '/no-such-thing'), 404, 'problem-with-message');
});

test('state file: state and tokens survive a restart; SIGTERM exits 0', async () => {
  const file = path.join(os.tmpdir(), `skribble-double-${process.pid}-${Date.now()}.json`);
  try {
    let s = await startServer(['--state-file', file]);
    const tok = await login(s);
    const r = await call('POST', '/v2/signature-requests', { server: s, token: tok, body: createBody({ custom: 'persist' }) });
    assert.equal(r.status, 200);
    const sr = r.json;
    assert.equal(await stopServer(s), 0);
    assert.ok(fs.existsSync(file));
    s = await startServer(['--state-file', file]);
    try {
      const g = await call('GET', `/v2/signature-requests/${sr.id}`, { server: s, token: tok });
      assert.equal(g.status, 200);
      assert.deepEqual(g.json, sr);
      const c = await call('GET', `/v2/documents/${sr.document_id}/content`, { server: s, token: tok, headers: { Accept: 'application/pdf' } });
      assert.deepEqual(c.buf, PDF);
    } finally {
      assert.equal(await stopServer(s), 0);
    }
  } finally {
    fs.rmSync(file, { force: true });
  }
});

/* ------------------------------------------------------------------ */
/* the controllable clock                                              */
/* ------------------------------------------------------------------ */

/* near asserts an ISO (or HTTP-date) time lies within `slack` ms after `expectMs`. */
function near(value, expectMs, what, slack = 3000) {
  const t = typeof value === 'number' ? value : Date.parse(value);
  assert.ok(t >= expectMs - 1000 && t <= expectMs + slack,
    `${what}: ${typeof value === 'number' ? new Date(value).toISOString() : value} is not near ${new Date(expectMs).toISOString()}`);
}

test('clock: --clock starts the clock there; every time the double produces comes from it', async () => {
  const START = Date.parse('2026-03-19T08:15:00Z');
  const s = await startServer(['--clock', '2026-03-19T08:15:00Z', '--callback-retry-interval', '100']);
  const c = (method, p, body) => call(method, '/_control' + p, { server: s, ...(body === undefined ? {} : { body }) });
  try {
    const g = (await c('GET', '/clock')).json;
    near(g.now, START, 'GET /_control/clock');
    assert.match(g.now, ISO_MS_RE);
    near(Date.now() + g.offset_ms, START, 'offset_ms');
    const tok = await login(s);
    const claims = decodeJwtPart(tok.split('.')[1]);
    near(claims.iat * 1000, START, 'JWT iat');
    assert.equal(claims.exp - claims.iat, 1200);
    const api = (method, p, o = {}) => call(method, p, { server: s, token: tok, ...o });

    const res = await api('POST', '/v2/signature-requests', { body: createBody({
      callback_update_url: `${cbBase}/clock/update/SKRIBBLE_SIGNATURE_REQUEST_ID`,
      callback_success_url: `${cbBase}/clock/success/SKRIBBLE_SIGNATURE_REQUEST_ID` }) });
    assert.equal(res.status, 200, res.text);
    const sr = res.json;
    near(Date.parse(res.headers.date), START, 'Date header', 4000);
    near(sr.created_at, START, 'created_at');
    assert.equal(sr.updated_at, sr.created_at);
    assert.equal(sr.expiration_date, '2026-03-24');
    near((await api('GET', `/v2/documents/${sr.document_id}`)).json.created_at, START, 'document created_at');

    /* 16 min 10 s later Anna views, 3 min 17 s after that she signs */
    const adv = (await c('POST', '/clock', { advance_ms: 970000 })).json;
    near(adv.now, START + 970000, 'advanced clock');
    let r = (await c('POST', `/signature-requests/${sr.id}/signatures/mieter.a@example.de/view`)).json;
    near(r.signatures[0].last_viewed_at, START + 970000, 'last_viewed_at');
    near(r.updated_at, START + 970000, 'updated_at after the view');
    await c('POST', '/clock', { advance_ms: 197000 });
    r = (await c('POST', `/signature-requests/${sr.id}/signatures/mieter.a@example.de/sign`)).json;
    near(r.signatures[0].signed_at, START + 1167000, 'signed_at');

    /* past the 20-minute lifetime the token has expired on the double's clock; a new one is issued on it */
    await c('POST', '/clock', { set: '2026-03-19T08:52:44Z' });
    const SIGN_B = Date.parse('2026-03-19T08:52:44Z');
    assertProblem(await api('GET', `/v2/signature-requests/${sr.id}`), 403, 'problem-with-message', { key: 'error.auth.token_expired' });
    const tok2 = await login(s);
    near(decodeJwtPart(tok2.split('.')[1]).iat * 1000, SIGN_B, 'iat of the new token');
    r = (await c('POST', `/signature-requests/${sr.id}/signatures/mieter.b@example.de/sign`)).json;
    assert.equal(r.status_overall, 'SIGNED');
    near(r.signatures[1].signed_at, SIGN_B, 'second signed_at');
    const got = await call('GET', `/v2/signature-requests/${sr.id}`, { server: s, token: tok2 });
    assert.equal(got.status, 200);
    near(got.json.updated_at, SIGN_B, 'updated_at at completion');
    const d2 = (await call('GET', `/v2/documents/${got.json.document_id}`, { server: s, token: tok2 })).json;
    near(d2.created_at, SIGN_B, 'signed document version created_at');
    const content = (await call('GET', `/v2/documents/${got.json.document_id}/content`,
      { server: s, token: tok2, headers: { Accept: 'application/pdf' } })).buf.toString('latin1');
    assert.match(content, /%signed-by mieter\.b@example\.de 2026-03-19T08:52:4\d\.\d{3}Z\n%%EOF\n$/);

    /* the report's action times */
    const rep = (await call('GET', `/v2/signature-requests/${sr.id}/report?type=JSON`, { server: s, token: tok2 })).json;
    const at = (email, name) => rep.userList.find((u) => u.email === email).userActions.find((x) => x.name === name).time;
    assert.match(at('mieter.a@example.de', 'VIEWED'), /^2026-03-19 08:31:1\d GMT$/);
    assert.match(at('mieter.a@example.de', 'SIGNED'), /^2026-03-19 08:34:2\d GMT$/);
    assert.match(at('mieter.b@example.de', 'SIGNED'), /^2026-03-19 08:52:4\d GMT$/);
    assert.match(rep.userList[0].userActions.find((x) => x.name === 'CREATED').time, /^2026-03-19 08:15:0\d GMT$/);
    assert.match(rep.userList[0].userActions.find((x) => x.name === 'REPORT_CREATED').time, /^2026-03-19 08:52:4\d GMT$/);

    /* callbacks carry the double's times; their delivery is paced in real time */
    const cbs = await waitFor(async () => {
      const l = (await call('GET', `/v2/signature-requests/${sr.id}/callbacks`, { server: s, token: tok2 })).json;
      return l.length === 4 && l.every((x) => x.state === 'COMPLETED') && l;
    }, 3000, 'four delivered callbacks');
    near(cbs[0].created_at, START + 970000, 'callback created_at (view)');
    near(cbs[3].created_at, SIGN_B, 'callback created_at (success)');
    near(cbs[3].updated_at, SIGN_B, 'callback updated_at (success)');
  } finally {
    assert.equal(await stopServer(s), 0);
  }
});

test('clock: set and advance validate their input; the reminder window runs on the clock; reset restores the start', async () => {
  const s = await startServer(['--clock', '2030-01-01T00:00:00+01:00', '--remind-window-ms', '3600000']);
  const c = (method, p, body) => call(method, '/_control' + p, { server: s, ...(body === undefined ? {} : { body }) });
  const START = Date.parse('2029-12-31T23:00:00Z');
  try {
    near((await c('GET', '/clock')).json.now, START, 'start with an offset zone');
    for (const bad of [{}, { advance_ms: 1, set: '2030-01-01T00:00:00Z' }, { advance_ms: 'soon' }, { advance_ms: 1.5 },
      { set: '2030-01-01' }, { set: 'March 19, 2026' }, { set: '2030-13-45T99:00:00Z' }, { set: 5 }]) {
      assertProblem(await c('POST', '/clock', bad), 400, 'problem-with-message');
    }
    near((await c('GET', '/clock')).json.now, START, 'bad input leaves the clock alone');

    const tok = await login(s);
    const api = (method, p, o = {}) => call(method, p, { server: s, token: tok, ...o });
    const sr = (await api('POST', '/v2/signature-requests', { body: createBody() })).json;
    assert.equal((await api('POST', `/v2/signature-requests/${sr.id}/remind`)).status, 200);
    const again = await api('POST', `/v2/signature-requests/${sr.id}/remind`);
    assertProblem(again, 429, 'limit-exceeded', { key: 'error.rate_limit.reminder' });
    assert.ok(Number(again.headers['retry-after']) > 3500, again.headers['retry-after']);
    await c('POST', '/clock', { advance_ms: 3600000 });
    /* the token (20 minutes) has expired by now, the window (one hour) has passed */
    assertProblem(await api('POST', `/v2/signature-requests/${sr.id}/remind`), 403, 'problem-with-message', { key: 'error.auth.token_expired' });
    const tok2 = await login(s);
    assert.equal((await call('POST', `/v2/signature-requests/${sr.id}/remind`, { server: s, token: tok2 })).status, 200);

    /* backwards works too; a token issued "later" stays valid until its exp */
    const back = (await c('POST', '/clock', { advance_ms: -7200000 })).json;
    near(back.now, START - 3600000, 'moved back');
    assert.equal((await call('GET', `/v2/signature-requests/${sr.id}`, { server: s, token: tok2 })).status, 200);

    await c('POST', '/reset');
    near((await c('GET', '/clock')).json.now, START, 'reset restores the --clock start');
  } finally {
    assert.equal(await stopServer(s), 0);
  }
});

test('clock: without --clock it is the real time; a bad --clock is refused; the state file keeps the clock', async () => {
  const r = await ctl('GET', '/clock');
  near(r.json.now, Date.now() - 1000, 'real time');
  assert.ok(Math.abs(r.json.offset_ms) < 1000, String(r.json.offset_ms));
  near(Date.parse(r.headers.date), Date.now() - 1000, 'Date header in real time');

  await assert.rejects(startServer(['--clock', 'tomorrow']), /exited early with 2.*--clock/s);

  const file = path.join(os.tmpdir(), `skribble-double-clock-${process.pid}-${Date.now()}.json`);
  try {
    let s = await startServer(['--state-file', file, '--clock', '2026-03-19T08:15:00Z']);
    await call('POST', '/_control/clock', { server: s, body: { advance_ms: 600000 } });
    const tok = await login(s);
    assert.equal(await stopServer(s), 0);
    s = await startServer(['--state-file', file]);
    try {
      near((await call('GET', '/_control/clock', { server: s })).json.now, Date.parse('2026-03-19T08:25:00Z'), 'clock after restart');
      assert.equal((await call('GET', '/v2/signature-requests', { server: s, token: tok })).status, 200, 'the token is still valid on the clock');
      await call('POST', '/_control/reset', { server: s });
      near((await call('GET', '/_control/clock', { server: s })).json.now, Date.parse('2026-03-19T08:25:00Z'), 'reset keeps the loaded clock');
    } finally {
      assert.equal(await stopServer(s), 0);
    }
  } finally {
    fs.rmSync(file, { force: true });
  }
});

/* ------------------------------------------------------------------ */
/* documented ambiguities: switches (--flags, /_control/options)       */
/* ------------------------------------------------------------------ */

const DEFAULT_OPTIONS = {
  page_base: 1, unpaged_limit: 0, deletion_days: 5, delete_expired: true,
  strict_accept: true, strict_content_type: true, allow_mixed_sequences: false,
};

test('options: GET /_control/options shows the switches; POST sets some, checks all first; reset restores them', async () => {
  await fresh();
  assert.deepEqual((await ctl('GET', '/options')).json, DEFAULT_OPTIONS);
  const r = await ctl('POST', '/options', { page_base: 0, strict_accept: false, delete_expired: 'off' });
  assert.equal(r.status, 200, r.text);
  assert.deepEqual(r.json, { ...DEFAULT_OPTIONS, page_base: 0, strict_accept: false, delete_expired: false });
  for (const bad of [{ page_base: 2 }, { page_base: '0' }, { unpaged_limit: -1 }, { deletion_days: 1.5 }, { strict_accept: 'maybe' },
    { strict_content_type: 1 }, { no_such_option: true }, { page_base: 1, unpaged_limit: -1 }]) {
    assertProblem(await ctl('POST', '/options', bad), 400, 'problem-with-message');
  }
  assert.equal((await ctl('GET', '/options')).json.page_base, 0, 'a refused POST changes nothing');
  await ctl('POST', '/reset');
  assert.deepEqual((await ctl('GET', '/options')).json, DEFAULT_OPTIONS);
});

test('options: flags and SKRIBBLE_DOUBLE_* variables set the switches; bad values are refused at start', async () => {
  const s = await startServer(['--page-base', '0', '--unpaged-limit=7', '--strict-content-type', 'off', '--allow-mixed-sequences',
    '--deletion-days', '2', '--clock', '2026-03-19T08:15:00Z'],
  { SKRIBBLE_DOUBLE_STRICT_ACCEPT: 'off', SKRIBBLE_DOUBLE_DELETE_EXPIRED: 'no', SKRIBBLE_DOUBLE_PAGE_BASE: '1' });
  try {
    assert.deepEqual((await call('GET', '/_control/options', { server: s })).json, {
      page_base: 0, unpaged_limit: 7, deletion_days: 2, delete_expired: false,
      strict_accept: false, strict_content_type: false, allow_mixed_sequences: true,
    }, 'flags win over the environment');
    const tok = (await call('POST', '/v2/access/login', { server: s, headers: { Accept: 'application/json' },
      body: { username: USER, 'api-key': KEY } })).text;
    const sr = (await call('POST', '/v2/signature-requests', { server: s, token: tok, body: createBody() })).json;
    assert.equal(sr.expiration_date, '2026-03-21', '--deletion-days 2');
  } finally {
    assert.equal(await stopServer(s), 0);
  }
  await assert.rejects(startServer(['--page-base', '2']), /exited early with 2.*--page-base/s);
  await assert.rejects(startServer(['--delete-expired', 'maybe']), /exited early with 2/s);
  await assert.rejects(startServer([], { SKRIBBLE_DOUBLE_STRICT_ACCEPT: 'perhaps' }), /exited early with 2.*strict-accept/s);
});

test('paging: unpaged answers everything (or --unpaged-limit), page_size defaults to 50, pages start at --page-base', async () => {
  await fresh();
  const ids = [];
  for (let i = 0; i < 53; i++) {
    const r = await call('POST', '/v2/signature-requests', { body: createBody({ title: `Vertrag ${i}${i % 10 === 0 ? ' Garage' : ''}` }) });
    assert.equal(r.status, 200, r.text);
    ids.unshift(r.json.id);   /* newest first */
  }
  const list = async (q) => {
    const r = await call('GET', `/v2/signature-requests${q}`);
    assert.equal(r.status, 200, `${q}: ${r.text.slice(0, 300)}`);
    return r.json.map((x) => x.id);
  };
  const nameField = (r, field) => {
    const p = assertProblem(r, 400, 'constraint-violation', { message: new RegExp(field) });
    assert.equal(p.violations[0].field, field);
  };

  /* base 1 (the default) */
  assert.deepEqual(await list(''), ids, 'pagination is disabled by default: everything');
  assert.deepEqual(await list('?page_number=1&page_size=2'), ids.slice(0, 2));
  assert.deepEqual(await list('?page_number=2&page_size=2'), ids.slice(2, 4));
  assert.deepEqual(await list('?page_size=3'), ids.slice(0, 3), 'page_size alone: page_number is the base');
  assert.deepEqual(await list('?page_number=1'), ids.slice(0, 50), 'page_number alone: page_size 50');
  assert.deepEqual(await list('?page_number=2'), ids.slice(50));
  assert.deepEqual(await list('?page_number=3'), []);
  assert.deepEqual(await list('?page_size=0'), []);
  const garage = ids.filter((_, j) => (52 - j) % 10 === 0);   /* titles 50, 40, ..., 0 carry "Garage" */
  assert.equal(garage.length, 6);
  assert.deepEqual(await list('?search=garage&page_size=2&page_number=2'), garage.slice(2, 4), 'filters apply before paging');
  nameField(await call('GET', '/v2/signature-requests?page_number=0'), 'page_number');
  nameField(await call('GET', '/v2/signature-requests?page_number=-1&page_size=10'), 'page_number');
  nameField(await call('GET', '/v2/signature-requests?page_size=-5'), 'page_size');
  assertProblem(await call('GET', '/v2/signature-requests?page_number=x'), 400, 'parameterized');

  /* --unpaged-limit: a default page size applies even without paging parameters */
  await ctl('POST', '/options', { unpaged_limit: 10 });
  assert.deepEqual(await list(''), ids.slice(0, 10));
  assert.deepEqual(await list('?page_number=1'), ids.slice(0, 50), 'explicit paging is not limited');
  await ctl('POST', '/options', { unpaged_limit: 0 });

  /* base 0: page 0 is the first */
  assert.equal((await ctl('POST', '/options', { page_base: 0 })).json.page_base, 0);
  assert.deepEqual(await list('?page_number=0&page_size=2'), ids.slice(0, 2));
  assert.deepEqual(await list('?page_number=1&page_size=2'), ids.slice(2, 4));
  assert.deepEqual(await list('?page_size=3'), ids.slice(0, 3));
  assert.deepEqual(await list('?page_number=0'), ids.slice(0, 50));
  assert.deepEqual(await list('?page_number=1'), ids.slice(50));
  assert.deepEqual(await list(''), ids);
  nameField(await call('GET', '/v2/signature-requests?page_number=-1'), 'page_number');
  /* a client that pages from 1 until a short page misses the first page under base 0: it must start at 0 or search unpaged */
  assert.notDeepEqual(await list('?page_number=1&page_size=100'), ids);
});

test('sequences: create and add-signer need "a real number sequence starting with 1"; -1 mixed in only with allow_mixed_sequences', async () => {
  await fresh();
  const signers = (...seqs) => seqs.map((q, i) => Object.assign({ signer_identity_data: { email_address: `s${i}@example.de` } },
    q === undefined ? {} : { sequence: q }));
  const seqMsg = /ALL signers must be in a real number sequence starting with 1/;
  const createSeq = (...seqs) => call('POST', '/v2/signature-requests', { body: createBody({ signatures: signers(...seqs) }) });
  for (const ok of [[1], [1, 2, 3], [1, 1, 2], [2, 1, 2, 3, 3], [-1, -1], [undefined, undefined], [undefined, -1]]) {
    assert.equal((await createSeq(...ok)).status, 200, JSON.stringify(ok));
  }
  for (const bad of [[2], [2, 2], [1, 3], [1, 2, 4], [0 + 3, 1, 1], [1, -1], [-1, 2, 1], [1, undefined]]) {
    const p = assertProblem(await createSeq(...bad), 400, 'constraint-violation', { message: seqMsg });
    assert.equal(p.violations[0].field, 'signatures');
  }
  const count = (await ctl('GET', '/requests')).json.length;

  /* add-signer: the request's sequences with the new one */
  const ordered = (await createSeq(1, 2)).json;
  const addSeq = (sr, q, email) => call('POST', `/v2/signature-requests/${sr.id}/signatures`,
    { body: Object.assign({ signer_identity_data: { email_address: email } }, q === undefined ? {} : { sequence: q }) });
  assertProblem(await addSeq(ordered, 4, 'four@example.de'), 400, 'constraint-violation', { message: seqMsg });
  assertProblem(await addSeq(ordered, -1, 'any@example.de'), 400, 'constraint-violation', { message: seqMsg });
  assertProblem(await addSeq(ordered, undefined, 'any@example.de'), 400, 'constraint-violation', { message: seqMsg });
  let r = await addSeq(ordered, 3, 'three@example.de');
  assert.equal(r.status, 200, r.text);
  assert.deepEqual(r.json.signatures.map((s) => [s.sequence, s.status_code]), [[1, 'OPEN'], [2, 'WAITING'], [3, 'WAITING']]);
  r = await addSeq(ordered, 2, 'two-b@example.de');
  assert.equal(r.status, 200, 'a group shares a number');
  /* the client replaces a signer by DELETE then POST: removing the only 2 leaves a gap the re-added 2 fills */
  const one = (await createSeq(1, 2, 3)).json;
  assert.equal((await call('DELETE', `/v2/signature-requests/${one.id}/signatures/${one.signatures[1].sid}`)).status, 200);
  assertProblem(await addSeq(one, 4, 'new@example.de'), 400, 'constraint-violation', { message: seqMsg });
  assert.equal((await addSeq(one, 2, 'new@example.de')).status, 200);
  const unordered = (await createSeq(undefined, undefined)).json;
  assertProblem(await addSeq(unordered, 1, 'first@example.de'), 400, 'constraint-violation', { message: seqMsg });
  assert.equal((await addSeq(unordered, -1, 'any@example.de')).status, 200);
  assert.equal((await ctl('GET', '/requests')).json.length, count + 3, 'refused creates store nothing');

  /* the other reading: -1 signers sign at any time next to numbered ones */
  await ctl('POST', '/options', { allow_mixed_sequences: true });
  r = await createSeq(1, 2, -1);
  assert.equal(r.status, 200, r.text);
  assert.deepEqual(r.json.signatures.map((s) => s.status_code), ['OPEN', 'WAITING', 'OPEN']);
  assert.equal((await addSeq(r.json, undefined, 'late@example.de')).status, 200);
  assertProblem(await createSeq(1, 3, -1), 400, 'constraint-violation', { message: seqMsg });   /* gaps stay refused */
  await ctl('POST', '/options', { allow_mixed_sequences: false });
});

test('deletion: expiration_date = created + deletion_days; after that date the request and its documents are gone', async () => {
  const s = await startServer(['--clock', '2026-03-19T08:15:00Z']);
  const c = (method, p, body) => call(method, '/_control' + p, { server: s, ...(body === undefined ? {} : { body }) });
  const at = async (iso) => {
    await c('POST', '/clock', { set: iso });
    return login(s);   /* a jump of days expires every token */
  };
  try {
    let tok = await login(s);
    const api = (method, p, o = {}) => call(method, p, { server: s, token: tok, ...o });
    const a = (await api('POST', '/v2/signature-requests', { body: createBody({ title: 'Alt' }) })).json;
    assert.equal(a.expiration_date, '2026-03-24');
    const up = (await api('POST', '/v2/documents', { body: { title: 'Upload', content: PDF_B64 } })).json;
    tok = await at('2026-03-20T10:00:00Z');
    const b = (await api('POST', '/v2/signature-requests', { body: createBody({ title: 'Neu', content: undefined, document_id: up.id }) })).json;
    assert.equal(b.expiration_date, '2026-03-25');
    const signed = (await c('POST', `/signature-requests/${a.id}/signatures/mieter.a@example.de/sign`)).json;
    const aDocs = [a.document_id, signed.document_id];

    /* the whole expiration_date is still there */
    tok = await at('2026-03-24T23:59:59Z');
    assert.equal((await api('GET', `/v2/signature-requests/${a.id}`)).status, 200);
    /* the day after it is gone */
    tok = await at('2026-03-25T00:00:01Z');
    assertProblem(await api('GET', `/v2/signature-requests/${a.id}`), 404, 'entity-not-found', { message: /SignatureRequest not found/ });
    assert.deepEqual((await api('GET', '/v2/signature-requests')).json.map((x) => x.id), [b.id]);
    assert.deepEqual((await api('GET', '/v2/signature-requests?search=Alt')).json, []);
    assertProblem(await api('GET', `/v2/signature-requests/${a.id}/report`), 404, 'entity-not-found');
    assertProblem(await api('GET', `/v2/signature-requests/${a.id}/report?type=JSON`), 404, 'entity-not-found');
    for (const d of aDocs) {
      assertProblem(await api('GET', `/v2/documents/${d}`), 404, 'entity-not-found');
      assertProblem(await api('GET', `/v2/documents/${d}/content`, { headers: { Accept: 'application/pdf' } }), 404, 'entity-not-found');
    }
    assertProblem(await c('GET', `/signature-requests/${a.id}`), 404, 'entity-not-found');
    assert.equal((await api('GET', `/v2/signature-requests/${b.id}`)).status, 200);
    assert.equal((await api('GET', `/v2/documents/${up.id}/content`)).status, 200);
    assert.equal((await c('GET', '/stats')).json.expired_deleted, 1);

    /* deletion_days 0: deleted the day after its creation */
    await c('POST', '/options', { deletion_days: 0 });
    const z = (await api('POST', '/v2/signature-requests', { body: createBody({ title: 'Kurz' }) })).json;
    assert.equal(z.expiration_date, '2026-03-25');
    /* delete_expired off: kept past its date, gone once it is on again */
    await c('POST', '/options', { delete_expired: false, deletion_days: 5 });
    tok = await at('2026-04-30T12:00:00Z');
    assert.deepEqual((await api('GET', '/v2/signature-requests')).json.map((x) => x.id), [z.id, b.id]);
    assert.equal((await api('GET', `/v2/documents/${up.id}`)).status, 200);
    await c('POST', '/options', { delete_expired: true });
    assert.deepEqual((await api('GET', '/v2/signature-requests')).json, []);
    assertProblem(await api('GET', `/v2/documents/${up.id}`), 404, 'entity-not-found');   /* a document used by a request goes with it */
    assert.equal((await c('GET', '/stats')).json.expired_deleted, 3);
    assert.deepEqual((await c('GET', '/requests')).json, []);
  } finally {
    assert.equal(await stopServer(s), 0);
  }
});

test('login Accept: text/plain, text/*, */*, lists with one of them or no Accept are fine; anything else gets 406 (strict_accept)', async () => {
  await fresh();
  const loginWith = (accept, body = { username: USER, 'api-key': KEY }) => call('POST', '/v2/access/login',
    { body, headers: accept === undefined ? {} : { Accept: accept } });
  for (const ok of [undefined, '', 'text/plain', 'text/*', '*/*', 'TEXT/PLAIN', 'text/plain;charset=UTF-8',
    'application/json, text/plain', 'application/json;q=0.9, */*;q=0.1', 'application/json, text/*;q=0.5']) {
    const r = await loginWith(ok);
    assert.equal(r.status, 200, `Accept ${JSON.stringify(ok)}: ${r.text}`);
    assert.match(r.headers['content-type'], /^text\/plain/);
  }
  for (const bad of ['application/json', 'application/problem+json', 'text/html', 'application/json, application/xml',
    'text/plain;q=0', '*/*, text/plain;q=0', 'text/*;q=0, application/json']) {
    const r = await loginWith(bad);
    const p = assertProblem(r, 406, 'problem-with-message', { message: /text\/plain/ });
    assert.equal(p.path, '/v2/access/login');
  }
  /* the media type is checked before the credentials */
  assertProblem(await loginWith('application/json', { username: USER, 'api-key': 'wrong' }), 406, 'problem-with-message');
  const form = await call('POST', '/v2/access/login', { raw: `username=${USER}&api-key=${KEY}`,
    headers: { 'Content-Type': 'application/x-www-form-urlencoded', Accept: 'application/json' } });
  assertProblem(form, 406, 'problem-with-message');
  let st = (await ctl('GET', '/stats')).json;
  assert.equal(st.not_acceptable, 9);
  assert.equal(st.logins, 10);
  assert.equal(st.login_failures, 0);
  /* other calls do not care about Accept */
  assert.equal((await call('GET', '/v2/signature-requests', { headers: { Accept: 'application/json' } })).status, 200);

  await ctl('POST', '/options', { strict_accept: false });
  const lenient = await loginWith('application/json');
  assert.equal(lenient.status, 200);
  assert.match(lenient.headers['content-type'], /^text\/plain/, 'still text/plain: the double never answers the login as JSON');
  st = (await ctl('GET', '/stats')).json;
  assert.equal(st.not_acceptable, 9);
});

test('body-less POST/DELETE with Content-Type application/x-www-form-urlencoded get 415 (strict_content_type); login is exempt', async () => {
  await fresh();
  const sr = await create();
  const FORM = { 'Content-Type': 'application/x-www-form-urlencoded' };
  const is415 = (r) => assertProblem(r, 415, 'problem-with-message', { message: /x-www-form-urlencoded/ });
  is415(await call('POST', `/v2/signature-requests/${sr.id}/remind`, { raw: '', headers: FORM }));
  is415(await call('POST', `/v2/signature-requests/${sr.id}/remind`, { raw: '', headers: { 'Content-Type': 'application/x-www-form-urlencoded; charset=UTF-8' } }));
  is415(await call('DELETE', `/v2/signature-requests/${sr.id}/signatures/${sr.signatures[1].sid}`, { raw: '', headers: FORM }));
  is415(await call('DELETE', `/v2/signature-requests/${sr.id}`, { raw: '', headers: FORM }));
  is415(await call('POST', `/v2/signature-requests/${sr.id}/withdraw`, { raw: '{"message":"x"}', headers: FORM }));
  is415(await call('POST', '/v2/signature-requests', { raw: JSON.stringify(createBody({ custom: 'form' })), headers: FORM }));
  /* none of them did anything */
  const now = (await ctl('GET', `/signature-requests/${sr.id}`)).json;
  assert.equal(now.status_overall, 'OPEN');
  assert.equal(now.signatures.length, 2);
  assert.equal(now._double.reminders, 0);
  assert.deepEqual((await ctl('GET', '/requests?custom=form')).json, []);
  /* authentication comes first, as in a Spring filter chain; GET and the login do not care */
  assertProblem(await call('POST', `/v2/signature-requests/${sr.id}/remind`, { raw: '', headers: FORM, token: null }), 401, 'problem-with-message');
  assert.equal((await call('GET', `/v2/signature-requests/${sr.id}`, { headers: FORM })).status, 200);
  assert.equal((await call('POST', '/v2/access/login', { raw: `username=${USER}&api-key=${KEY}`, headers: FORM })).status, 200);
  /* what a careful client sends: no body and no Content-Type, or JSON */
  assert.equal((await call('POST', `/v2/signature-requests/${sr.id}/remind`, { raw: '' })).status, 200);
  assert.equal((await call('DELETE', `/v2/signature-requests/${sr.id}/signatures/${sr.signatures[1].sid}`, { raw: '' })).status, 200);
  assert.equal((await call('POST', `/v2/signature-requests/${sr.id}/withdraw`, { body: { message: 'x' } })).status, 200);
  assert.equal((await ctl('GET', '/stats')).json.unsupported_media_type, 6);

  await ctl('POST', '/options', { strict_content_type: false });
  const other = await create();
  assert.equal((await call('POST', `/v2/signature-requests/${other.id}/remind`, { raw: '', headers: FORM })).status, 200);
  assert.equal((await call('DELETE', `/v2/signature-requests/${other.id}`, { raw: '', headers: FORM })).status, 200);
  assert.equal((await ctl('GET', '/stats')).json.unsupported_media_type, 6);
});

test('409 Conflict and 423 Locked ("retry later"): injected by faults and by scripts, with a matching problem body', async () => {
  await fresh();
  const sr = await create();
  await ctl('POST', '/faults', { error_rate: 1, error_status: 423 });
  const locked = assertProblem(await call('GET', `/v2/signature-requests/${sr.id}`), 423, 'problem-with-message',
    { message: /being processed, retry later/ });
  assert.equal(locked.status, 423);
  assertProblem(await call('POST', '/v2/signature-requests', { body: createBody({ custom: 'locked' }) }), 423, 'problem-with-message');
  assertProblem(await call('POST', `/v2/signature-requests/${sr.id}/remind`), 423, 'problem-with-message');
  await ctl('POST', '/faults', { error_rate: 1, error_status: 409, paths: 'remind' });
  assertProblem(await call('POST', `/v2/signature-requests/${sr.id}/remind`), 409, 'problem-with-message', { message: /retry later/ });
  assert.equal((await call('GET', `/v2/signature-requests/${sr.id}`)).status, 200);
  assert.deepEqual((await ctl('GET', '/faults')).json.error_status, 409);
  await ctl('POST', '/faults', {});
  assert.deepEqual((await ctl('GET', '/requests?custom=locked')).json, [], 'an injected 423 does no work');
  assert.equal((await ctl('GET', `/signature-requests/${sr.id}`)).json._double.reminders, 0);

  /* scripts: exactly this answer, the next N times */
  const problem = (status, message) => JSON.stringify({ type: 'https://api.skribble.com/problem/problem-with-message',
    method: 'POST', path: '/v2/signature-requests', status, message });
  await ctl('POST', '/script', { method: 'POST', path: '^/v2/signature-requests$', status: 423,
    headers: { 'Content-Type': 'application/problem+json', 'Retry-After': '2' },
    body: problem(423, 'The resource is being processed, retry later'), times: 2 });
  await ctl('POST', '/script', { method: 'POST', path: '^/v2/signature-requests$', status: 409,
    headers: { 'Content-Type': 'application/problem+json' }, body: problem(409, 'Conflict'), times: 1 });
  for (let i = 0; i < 2; i++) {
    const r = await call('POST', '/v2/signature-requests', { body: createBody({ custom: 'scripted' }) });
    assertProblem(r, 423, 'problem-with-message', { message: /retry later/ });
    assert.equal(r.headers['retry-after'], '2');
  }
  assertProblem(await call('POST', '/v2/signature-requests', { body: createBody({ custom: 'scripted' }) }), 409, 'problem-with-message');
  assert.equal((await call('POST', '/v2/signature-requests', { body: createBody({ custom: 'scripted' }) })).status, 200);
  assert.equal((await ctl('GET', '/requests?custom=scripted')).json.length, 1, 'only the unscripted create was stored');
});
