#!/usr/bin/env node
'use strict';
/*
 * test/skribble_double/server.js
 *
 * An in-memory test double of the Skribble Sign API v2 for qes_sign's tests:
 * login with expiring HS256 JWTs, signature requests, immutable document
 * versions, callbacks with retries, and, under /_control, signer actions
 * (view, sign, decline), fault injection, scripted answers and statistics.
 * Node 20, standard library only.  See README.md beside this file.
 */

const http = require('node:http');
const https = require('node:https');
const crypto = require('node:crypto');
const fs = require('node:fs');
const doubles = require('../lib/doubles');

/* ------------------------------------------------------------------ */
/* Configuration                                                       */
/* ------------------------------------------------------------------ */

const OPTIONS = {
  'port': { def: 0, type: 'int', help: 'TCP port on 127.0.0.1; 0 picks a free one' },
  'token-ttl': { def: 1200, type: 'int', help: 'JWT lifetime in seconds' },
  'callback-retry-interval': { def: 600000, type: 'int', help: 'ms between callback attempts' },
  'callback-max-attempts': { def: 12, type: 'int', help: 'attempts before a callback is RESIGNATED' },
  'callback-timeout': { def: 10000, type: 'int', help: 'ms before one callback attempt counts as failed' },
  'latency-ms': { def: 0, type: 'int', help: 'delay added to every /v2 answer' },
  'api-username': { def: 'api_demo_qes_sign', type: 'str', help: 'accepted login username' },
  'api-key': { def: 'test-key', type: 'str', help: 'accepted login api-key' },
  'remind-window-ms': { def: 3600000, type: 'int', help: 'one reminder per request per window' },
  'max-body-bytes': { def: 60 * 1024 * 1024, type: 'int', help: 'largest accepted request body' },
  'demo-quality': { def: 'auto', type: 'str', help: 'auto|always|never: answer quality DEMO (auto: username starts with api_demo)' },
  'signing-base-url': { def: 'https://my.skribble.com', type: 'str', help: 'base of signing_url values' },
  'state-file': { def: '', type: 'str', help: 'load state from this file at start, save it on SIGTERM/SIGINT and POST /_control/save' },
  'seed': { def: 1, type: 'int', help: 'default seed of the fault-injection PRNG' },
  'clock': { def: '', type: 'str', help: 'ISO 8601 time the double\'s clock starts at (it runs on in real time; default: the real time)' },
  /* switches for what Skribble's documentation leaves open; each can be flipped at run time (POST /_control/options) */
  'page-base': { def: 1, type: 'int', help: '0|1: the first page_number of GET /v2/signature-requests (1: page_number < 1 is a 400)' },
  'unpaged-limit': { def: 0, type: 'int', help: 'without page_number and page_size the list answers everything (0) or only the first N' },
  'deletion-days': { def: 5, type: 'int', help: 'expiration_date = creation date + N days: the day Skribble deletes the request' },
  'delete-expired': { def: true, type: 'switch', help: 'once the clock\'s date is after expiration_date the request and its documents are gone' },
  'strict-accept': { def: true, type: 'switch', help: 'a login whose Accept does not admit text/plain gets 406' },
  'strict-content-type': { def: true, type: 'switch', help: 'a POST/DELETE (not login) with Content-Type application/x-www-form-urlencoded gets 415' },
  'allow-mixed-sequences': { def: false, type: 'switch', help: 'signers with sequence -1 may be mixed with numbered ones' },
  'verbose': { def: false, type: 'bool', help: 'log every request to stderr' },
};

const { parseIsoTime } = doubles;
const fail = doubles.makeFail('skribble_double');

/* parseOptions reads SKRIBBLE_DOUBLE_<NAME> environment variables, then --name value / --name=value flags. */
function parseOptions(argv, env) {
  const out = doubles.parseOptions(argv, env, OPTIONS, { envPrefix: 'SKRIBBLE_DOUBLE_', fail, emptyIntOk: true });
  if (!['auto', 'always', 'never'].includes(out['demo-quality'])) fail('--demo-quality must be auto, always or never');
  if (out.clock !== '' && parseIsoTime(out.clock) === null) fail(`--clock needs an ISO 8601 time like 2026-03-19T08:15:00Z, got ${out.clock}`);
  if (out['page-base'] !== 0 && out['page-base'] !== 1) fail(`--page-base must be 0 or 1, got ${out['page-base']}`);
  if (out['deletion-days'] > 36500) fail(`--deletion-days must be at most 36500, got ${out['deletion-days']}`);
  return out;
}

const cfg = parseOptions(process.argv.slice(2), process.env);

/* ------------------------------------------------------------------ */
/* Small helpers                                                       */
/* ------------------------------------------------------------------ */

const PROBLEM_BASE = 'https://api.skribble.com/problem/';
const QUALITIES = ['QES', 'AES', 'AES_MINIMAL', 'SES', 'DEMO'];
const LEGISLATIONS = ['ZERTES', 'EIDAS'];
const ATTACH_ON_SUCCESS = ['SIGNED_DOCUMENT', 'SIGNATURE_PROTOCOL'];
const REPORT_TYPES = ['PDF', 'JSON', 'HTML'];
const EMAIL_RE = /^[^\s@]+@[^\s@]+\.[^\s@]+$/;
const CUSTOM_MAX = 10000;
const WITHDRAW_MESSAGE_MAX = 2048;

/* ApiError carries an HTTP problem to the dispatcher, which renders it. */
class ApiError extends Error {
  constructor(status, kind, message, extra = {}) {
    super(message);
    this.status = status;
    this.kind = kind;
    this.extra = extra;
  }
}
const badRequest = (msg, extra) => new ApiError(400, 'problem-with-message', msg, extra);
const violation = (field, msg) => new ApiError(400, 'constraint-violation', `${field}: ${msg}`,
  { violations: [{ field, message: msg }] });
const notFound = (what) => new ApiError(404, 'entity-not-found', `${what} not found`);

let rndPool = Buffer.alloc(0);
let rndPos = 0;
/* rnd returns n random bytes from a pool refilled 4 KB at a time. */
function rnd(n) {
  if (rndPos + n > rndPool.length) {
    rndPool = crypto.randomBytes(4096);
    rndPos = 0;
  }
  const b = rndPool.subarray(rndPos, rndPos + n);
  rndPos += n;
  return b;
}
/* newId makes an id shaped like Skribble's: 8-4-4-4-12 hex without RFC 4122 version bits. */
function newId() {
  const h = rnd(16).toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}
const opaqueId = () => rnd(16).toString('hex');
/*
 * The double's clock: real time shifted by clockOffsetMs.  --clock sets the
 * start, /_control/clock advances or sets it.  Every time the double
 * produces (timestamps in answers, reports, callbacks, the Date header, JWT
 * iat/exp and their check, the reminder window) comes from clockNow(); the
 * pacing of callback retries, latency and timeouts stays in real time.
 */
let startClockOffsetMs = cfg.clock === '' ? 0 : parseIsoTime(cfg.clock) - Date.now();
let clockOffsetMs = startClockOffsetMs;
const clockNow = () => Date.now() + clockOffsetMs;
const isoNow = (ms = clockNow()) => new Date(ms).toISOString();
const { sha256hex, mulberry32 } = doubles;   /* mulberry32: the seedable PRNG of fault injection */

/* ------------------------------------------------------------------ */
/* State                                                               */
/* ------------------------------------------------------------------ */

let jwtSecret = crypto.randomBytes(32);
let tokenGen = 0;                 /* tokens with an older gen claim count as expired */
const tokenCache = new Map();     /* token -> verified payload */
let generation = 0;               /* bumped on reset; late callback answers are ignored */
let srSeq = 0;
let state;
let rt;
let stats;
const heldTimers = new Set();     /* timeout faults in progress */
let shuttingDown = false;
const conns = { open: 0 };       /* open TCP connections, API and control alike */
const business = 'biz-' + sha256hex(cfg['api-username']).slice(0, 32);

function freshState() {
  return {
    srs: new Map(),               /* id -> signature request (insertion order = creation order) */
    docs: new Map(),              /* id -> document version */
    knownAccounts: new Set(),     /* lower-cased e-mails of signers with a Skribble account */
    pendingCb: new Set(),         /* ids of requests with OPEN callbacks */
    features: { expires_at: false },
  };
}

function freshRuntime() {
  return {
    latencyMs: cfg['latency-ms'],
    tokenTtl: cfg['token-ttl'],
    cbRetryInterval: cfg['callback-retry-interval'],
    cbMaxAttempts: Math.max(1, cfg['callback-max-attempts']),
    remindWindowMs: cfg['remind-window-ms'],
    cbPaused: false,
    faults: null,
    scripts: [],                  /* scripted answers, first match wins (setScript) */
    rng: mulberry32(cfg.seed),
    /* the switches of POST /_control/options (optionsView lists them) */
    pageBase: cfg['page-base'],
    unpagedLimit: cfg['unpaged-limit'],
    deletionDays: cfg['deletion-days'],
    deleteExpired: cfg['delete-expired'],
    strictAccept: cfg['strict-accept'],
    strictContentType: cfg['strict-content-type'],
    allowMixedSequences: cfg['allow-mixed-sequences'],
  };
}

function freshStats() {
  return {
    creates: 0,
    creates_by_custom: {},
    calls: {},
    total_calls: 0,
    faults_injected: { error: 0, rate_limit: 0, timeout: 0, drop_after_create: 0 },
    scripted: 0,
    expired_deleted: 0,
    not_acceptable: 0,
    unsupported_media_type: 0,
    callbacks: { sent: 0, failed: 0, completed: 0, resignated: 0, pending: 0 },
    logins: 0,
    login_failures: 0,
    in_flight: 0,
    max_in_flight: 0,
    connections: conns.open,
    max_connections: conns.open,
  };
}

state = freshState();
rt = freshRuntime();
stats = freshStats();

/* ------------------------------------------------------------------ */
/* JWT                                                                 */
/* ------------------------------------------------------------------ */

const JWT_HEADER = Buffer.from(JSON.stringify({ alg: 'HS256', typ: 'JWT' })).toString('base64url');

function signJwt(payload) {
  const body = JWT_HEADER + '.' + Buffer.from(JSON.stringify(payload)).toString('base64url');
  return body + '.' + crypto.createHmac('sha256', jwtSecret).update(body).digest('base64url');
}

/* verifyJwt returns the payload, or throws 401 for a garbled token and 403 for a bad signature. */
function verifyJwt(token) {
  const parts = token.split('.');
  let header;
  let payload;
  try {
    if (parts.length !== 3 || !parts.every((p) => /^[A-Za-z0-9_-]+$/.test(p))) throw new Error('shape');
    header = JSON.parse(Buffer.from(parts[0], 'base64url').toString('utf8'));
    payload = JSON.parse(Buffer.from(parts[1], 'base64url').toString('utf8'));
    if (!header || typeof header !== 'object' || !payload || typeof payload !== 'object') throw new Error('shape');
  } catch {
    throw new ApiError(401, 'problem-with-message', 'Full authentication is required to access this resource');
  }
  const expect = crypto.createHmac('sha256', jwtSecret).update(parts[0] + '.' + parts[1]).digest();
  const got = Buffer.from(parts[2], 'base64url');
  if (header.alg !== 'HS256' || got.length !== expect.length || !crypto.timingSafeEqual(got, expect) ||
      typeof payload.exp !== 'number') {
    throw new ApiError(403, 'problem-with-message', 'The access token is invalid', { key: 'error.auth.token_invalid' });
  }
  return payload;
}

/* authenticate checks the Bearer token of an API call; throws the problem to answer. */
function authenticate(req) {
  const h = req.headers.authorization;
  const m = h && /^Bearer\s+(\S+)\s*$/i.exec(h);
  if (!m) throw new ApiError(401, 'problem-with-message', 'Full authentication is required to access this resource');
  const token = m[1];
  let payload = tokenCache.get(token);
  if (!payload) {
    payload = verifyJwt(token);
    if (tokenCache.size >= 10000) tokenCache.clear();
    tokenCache.set(token, payload);
  }
  if ((payload.gen | 0) < tokenGen || clockNow() >= payload.exp * 1000) {
    throw new ApiError(403, 'problem-with-message', 'The access token has expired', { key: 'error.auth.token_expired' });
  }
  return payload;
}

/* ------------------------------------------------------------------ */
/* HTTP plumbing                                                       */
/* ------------------------------------------------------------------ */

const send = doubles.makeSend(clockNow);   /* the Date header from the double's clock, like every other time */

function sendJson(ctx, status, str) {
  send(ctx, status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(str) }, str);
}

function sendEmpty(ctx, status = 200) {
  send(ctx, status, { 'Content-Length': 0 }, '');
}

/* sendProblem renders Skribble's problem JSON. */
function sendProblem(ctx, status, kind, message, extra = {}) {
  const o = { type: PROBLEM_BASE + kind, method: ctx.method, path: ctx.path, status, message };
  if (extra.key) o.key = extra.key;
  if (extra.violations) o.violations = extra.violations;
  const s = JSON.stringify(o);
  send(ctx, status, Object.assign({ 'Content-Type': 'application/problem+json', 'Content-Length': Buffer.byteLength(s) },
    extra.headers || {}), s);
}

/* readBody collects the request body up to max-body-bytes; beyond that it drains and reports overflow. */
const readBody = (req, cb) => doubles.readBody(req, cfg['max-body-bytes'], cb);

/* jsonBody parses the request body as JSON; an empty body gives `dflt` or a 400. */
function jsonBody(ctx, dflt) {
  if (!ctx.body || ctx.body.length === 0) {
    if (dflt !== undefined) return dflt;
    throw badRequest('Required request body is missing');
  }
  try {
    return JSON.parse(ctx.body.toString('utf8'));
  } catch (e) {
    throw badRequest('JSON parse error: ' + e.message);
  }
}

const { sleep } = doubles;

/* ------------------------------------------------------------------ */
/* Routing                                                             */
/* ------------------------------------------------------------------ */

const ROUTES = doubles.compileRoutes([
  ['POST', '/v2/access/login', hLogin, { noAuth: true, login: true }],
  ['GET', '/v2/management/health', hHealth, { noAuth: true }],
  ['GET', '/v2/signature-requests', hListSR],
  ['POST', '/v2/signature-requests', hCreateSR, { create: true }],
  ['GET', '/v2/signature-requests/{SR_ID}', hGetSR],
  ['DELETE', '/v2/signature-requests/{SR_ID}', hDeleteSR],
  ['POST', '/v2/signature-requests/{SR_ID}/withdraw', hWithdraw],
  ['POST', '/v2/signature-requests/{SR_ID}/remind', hRemind],
  ['GET', '/v2/signature-requests/{SR_ID}/report', hReport],
  ['GET', '/v2/signature-requests/{SR_ID}/callbacks', hCallbacks],
  ['POST', '/v2/signature-requests/{SR_ID}/callbacks', hCallbacks],
  ['POST', '/v2/signature-requests/{SR_ID}/signatures', hAddSigner],
  ['DELETE', '/v2/signature-requests/{SR_ID}/signatures/{SID}', hRemoveSigner],
  ['GET', '/v2/documents', hListDocs],
  ['POST', '/v2/documents', hUploadDoc],
  ['GET', '/v2/documents/{DOC_ID}', hGetDoc],
  ['DELETE', '/v2/documents/{DOC_ID}', hDeleteDoc],
  ['GET', '/v2/documents/{DOC_ID}/content', hDocContent],
]);

/* matchRoute finds the route for a path; {route, params} or {pathKnown} when only the method is wrong. */
const matchRoute = (method, segs) => doubles.matchRoute(ROUTES, method, segs);
const { splitPath } = doubles;

function onRequest(req, res) {
  const ctx = doubles.newCtx(req, res);
  const path = ctx.path;
  if (cfg.verbose) doubles.logRequest(req, res);
  sweepExpired();
  if (path === '/_control' || path.startsWith('/_control/')) {
    readBody(req, (body, over) => {
      if (over) return sendProblem(ctx, 413, 'limit-exceeded', 'Maximum upload size exceeded');
      ctx.body = body;
      runHandler(ctx, () => handleControl(ctx, splitPath(path).slice(1)));
    });
    return;
  }
  handleApi(ctx);
}

/* handleApi counts the call, reads the body, applies latency, scripts and faults, authenticates and dispatches. */
function handleApi(ctx) {
  const { req, res } = ctx;
  const segs = splitPath(ctx.path);
  const m = matchRoute(req.method, segs);
  ctx.route = m.route || null;
  ctx.params = m.params || {};
  ctx.key = m.route ? m.route.key : `${req.method} (unmatched)`;
  stats.total_calls++;
  stats.calls[ctx.key] = (stats.calls[ctx.key] || 0) + 1;
  stats.in_flight++;
  if (stats.in_flight > stats.max_in_flight) stats.max_in_flight = stats.in_flight;
  const gen = generation;
  res.on('close', () => { if (gen === generation) stats.in_flight--; });

  readBody(req, (body, over) => runHandler(ctx, async () => {
    ctx.body = body;
    if (rt.latencyMs > 0) await sleep(rt.latencyMs);
    const script = takeScript(ctx);
    if (script) return sendScripted(ctx, script);
    if (over) throw new ApiError(413, 'limit-exceeded', 'Maximum upload size exceeded');
    ctx.faultEligible = faultEligible(ctx);
    const fault = ctx.faultEligible ? drawFault() : null;
    if (fault) return injectFault(ctx, fault);
    if (!ctx.route) {
      if (m.pathKnown) throw new ApiError(405, 'problem-with-message', `Request method '${req.method}' not supported`);
      throw new ApiError(404, 'problem-with-message', `No endpoint ${req.method} ${ctx.path}`);
    }
    if (!ctx.route.opts.noAuth) authenticate(req);
    checkContentType(ctx);
    return ctx.route.handler(ctx);
  }));
}

/* ------------------------------------------------------------------ */
/* Media types: Accept of the login, Content-Type of body-less calls   */
/* ------------------------------------------------------------------ */

/*
 * acceptsTextPlain tells whether an Accept header admits text/plain.  The
 * login is documented as answering text/plain only (paths/access_login.yaml,
 * 200 content text/plain; skribble-legacy-postman.md /v2/access/login: 200
 * text/plain; api.docs.skribble.com/docs/authentication: "Response
 * (text/plain): the token is returned as a plain string, not wrapped in
 * JSON").  A Spring server whose handler produces text/plain answers 406 Not
 * Acceptable to an Accept it cannot satisfy, such as exactly
 * application/json.  As RFC 9110 12.5.1 says, the most specific range that
 * matches decides (text/plain over text/* over * / *), and q=0 means "not this
 * one"; no header, or an empty one, admits anything.
 */
function acceptsTextPlain(header) {
  if (header === undefined || String(header).trim() === '') return true;
  let best = -1;      /* specificity of the best matching range so far */
  let q = 0;
  for (const part of String(header).split(',')) {
    const [range, ...params] = part.split(';').map((x) => x.trim().toLowerCase());
    const spec = range === 'text/plain' ? 2 : range === 'text/*' ? 1 : range === '*/*' ? 0 : -1;
    if (spec < 0 || spec < best) continue;
    let rq = 1;
    for (const p of params) {
      const m = /^q=([0-9.]+)$/.exec(p);
      if (m) rq = Number(m[1]);
    }
    if (!Number.isFinite(rq)) rq = 0;
    if (spec > best) { best = spec; q = rq; } else q = Math.max(q, rq);
  }
  return best >= 0 && q > 0;
}

/*
 * checkContentType: with --strict-content-type (default on), a POST or
 * DELETE under /v2 other than the login that carries Content-Type
 * application/x-www-form-urlencoded (what libcurl adds by itself to a POST
 * whose postfields are empty) gets 415 Unsupported Media Type.  The Skribble
 * documentation lists 415 (components/responses/UnsupportedMediaType.yaml)
 * but says for no body-less call what it does with a form content type:
 * this is a strict reading, chosen so that a client that passes under it
 * is safe under every reading (it sends either JSON with
 * Content-Type: application/json, or no body and no Content-Type).  The
 * login takes JSON or form (paths/access_login.yaml requestBody), so it is
 * exempt.
 */
function checkContentType(ctx) {
  if (!rt.strictContentType || !ctx.route || ctx.route.opts.login) return;
  if (ctx.method !== 'POST' && ctx.method !== 'DELETE') return;
  const ct = ctx.req.headers['content-type'];
  if (ct === undefined) return;
  if (ct.split(';')[0].trim().toLowerCase() === 'application/x-www-form-urlencoded') {
    stats.unsupported_media_type++;
    throw new ApiError(415, 'problem-with-message', `Content-Type '${ct}' is not supported`);
  }
}

/* runHandler runs a (sync or async) handler and turns thrown ApiErrors into problem answers. */
function runHandler(ctx, fn) {
  doubles.runGuarded(fn, (e) => {
    if (e instanceof ApiError) return sendProblem(ctx, e.status, e.kind, e.message, e.extra);
    process.stderr.write(`skribble_double: internal error on ${ctx.method} ${ctx.path}: ${e && e.stack}\n`);
    sendProblem(ctx, 500, 'problem-with-message', 'Internal Server Error');
  });
}

/* ------------------------------------------------------------------ */
/* Fault injection                                                     */
/* ------------------------------------------------------------------ */

function faultEligible(ctx) {
  const f = rt.faults;
  if (!f) return false;
  if (f.pathsRe) return doubles.pathsMatch(f.pathsRe, ctx);
  return !(ctx.route && ctx.route.opts.login);
}

function drawFault() {
  const f = rt.faults;
  const r = rt.rng();
  if (r < f.error_rate) return 'error';
  if (r < f.error_rate + f.rate_limit_rate) return 'rate_limit';
  if (r < f.error_rate + f.rate_limit_rate + f.timeout_rate) return 'timeout';
  return null;
}

/*
 * Messages of injected errors.  Skribble's error-handling page
 * (api.docs.skribble.com/docs/error-handling, "HTTP Status Codes", Client
 * Error Codes) lists 409 Conflict "Resource state doesn't allow the
 * operation" and 423 Locked "Resource is being processed (retry later)"
 * besides 429 and the 5xx codes to retry (skribble-api.md, "Errors to
 * retry"; components/responses/Locked.yaml).  error_status takes any code
 * from 400 to 599, so faults can answer either; the problem's status
 * matches the answer's.
 */
const FAULT_MESSAGES = {
  409: 'The resource state does not allow the operation right now, retry later',
  423: 'The resource is being processed, retry later',
};

function injectFault(ctx, kind) {
  const f = rt.faults;
  stats.faults_injected[kind]++;
  if (kind === 'error') {
    const st = f.error_status;
    return sendProblem(ctx, st, 'problem-with-message', FAULT_MESSAGES[st] || http.STATUS_CODES[st] || 'Error');
  }
  if (kind === 'rate_limit') {
    return sendProblem(ctx, 429, 'limit-exceeded', 'Too many requests', {
      key: 'error.rate_limit.exceeded', headers: { 'Retry-After': String(f.retry_after) },
    });
  }
  /* timeout: hold the answer without doing the work */
  doubles.holdAnswer(ctx, f.timeout_ms, heldTimers, () => sendProblem(ctx, 504, 'problem-with-message', 'Gateway Timeout'));
}

/* shouldDropAfterCreate decides, after a create was stored, whether to cut the connection instead of answering. */
function shouldDropAfterCreate(ctx) {
  const f = rt.faults;
  if (!f || !ctx.faultEligible) return false;
  if (f.drop_after_create_count > 0) {
    f.drop_after_create_count--;
    return true;
  }
  return f.drop_after_create_rate > 0 && rt.rng() < f.drop_after_create_rate;
}

/* setFaults validates and installs a fault configuration; {} clears it. */
function setFaults(b) {
  if (!b || typeof b !== 'object' || Array.isArray(b)) throw badRequest('faults must be a JSON object');
  if (Object.keys(b).length === 0) {
    rt.faults = null;
    return null;
  }
  const { rate, int } = doubles.faultReaders(b, badRequest);
  const f = {
    error_rate: rate('error_rate'),
    error_status: int('error_status', 500, 400, 599),
    rate_limit_rate: rate('rate_limit_rate'),
    retry_after: int('retry_after', 1, 0, 86400),
    timeout_rate: rate('timeout_rate'),
    timeout_ms: int('timeout_ms', 60000, 0, 3600000),
    drop_after_create_rate: rate('drop_after_create_rate'),
    drop_after_create_count: int('drop_after_create_count', 0, 0, 1e9),
    paths: b.paths == null ? null : String(b.paths),
    seed: int('seed', cfg.seed, -2147483648, 4294967295),
  };
  if (f.error_rate + f.rate_limit_rate + f.timeout_rate > 1) throw badRequest('error_rate + rate_limit_rate + timeout_rate must not exceed 1');
  return doubles.installFaults(rt, f, badRequest);
}

const faultsView = () => doubles.faultsView(rt);

/* ------------------------------------------------------------------ */
/* Scripted answers: exactly this status, these headers, this body     */
/* ------------------------------------------------------------------ */

/*
 * setScript serves POST /_control/script: the next `times` matching /v2 calls
 * get the given answer; {} clears every script.  takeScript returns the
 * first script matching a call (method, and path with query) and uses up
 * one of its times; sendScripted answers exactly what the script says.
 */
const { setScript, scriptsView, takeScript, sendScripted } = doubles.bindScripts(() => rt, () => stats, send, badRequest);

/* ------------------------------------------------------------------ */
/* Documents                                                           */
/* ------------------------------------------------------------------ */

function pdfInfo(buf) {
  const { offsets, width, height } = doubles.pdfScan(buf);
  return { page_count: Math.max(1, offsets.length), page_width: width, page_height: height };
}

/* checkPdf answers 406 like Skribble for anything that is not a readable, unencrypted PDF. */
function checkPdf(buf) {
  if (buf.length < 5 || buf.toString('latin1', 0, 5) !== '%PDF-' || buf.indexOf('/Encrypt', 0, 'latin1') !== -1) {
    throw new ApiError(406, 'problem-with-message', 'The document is corrupt or encrypted');
  }
}

/* decodeBase64 decodes strictly enough to reject non-Base64 text (Node's decoder skips bad characters). */
function decodeBase64(str, field) {
  if (typeof str !== 'string') throw violation(field, 'must be a Base64 encoded string');
  const ok = (s, n) => n === Math.floor((s.length * 3) / 4) - (s.endsWith('==') ? 2 : s.endsWith('=') ? 1 : 0);
  let buf = Buffer.from(str, 'base64');
  if (!ok(str, buf.length)) {
    const s = str.replace(/\s+/g, '');
    buf = Buffer.from(s, 'base64');
    if (!ok(s, buf.length)) throw violation(field, 'is not valid Base64');
  }
  return buf;
}

/* fetchUrl downloads a document for file_url (http or https, 3 redirects, size and time bounds). */
function fetchUrl(url, redirects = 3) {
  return new Promise((resolve, reject) => {
    let u;
    try {
      u = new URL(url);
    } catch {
      return reject(new Error('invalid URL'));
    }
    if (u.protocol !== 'http:' && u.protocol !== 'https:') return reject(new Error('unsupported protocol'));
    const req = (u.protocol === 'https:' ? https : http).get(u, (res) => {
      if (res.statusCode >= 300 && res.statusCode < 400 && res.headers.location && redirects > 0) {
        res.resume();
        return resolve(fetchUrl(new URL(res.headers.location, u).toString(), redirects - 1));
      }
      if (res.statusCode < 200 || res.statusCode >= 300) {
        res.resume();
        return reject(new Error(`HTTP ${res.statusCode}`));
      }
      const chunks = [];
      let size = 0;
      res.on('data', (c) => {
        size += c.length;
        if (size > cfg['max-body-bytes']) req.destroy(new Error('too large'));
        else chunks.push(c);
      });
      res.on('end', () => resolve(Buffer.concat(chunks)));
      res.on('error', reject);
    });
    req.setTimeout(15000, () => req.destroy(new Error('timeout')));
    req.on('error', reject);
  });
}

function addDocument(content, title, parent, srId, now) {
  const info = parent ? { page_count: parent.page_count, page_width: parent.page_width, page_height: parent.page_height } : pdfInfo(content);
  const doc = {
    id: newId(), parent_id: parent ? parent.id : null, title, content_type: 'application/pdf', content,
    size: content.length, ...info, owner: cfg['api-username'], sr_id: srId || null, created_at: now, updated_at: now,
  };
  state.docs.set(doc.id, doc);
  return doc;
}

/* documentFromBody resolves the one document source of a create/upload body. */
async function documentFromBody(b, allowDocId) {
  const sources = ['content', 'file_url'].concat(allowDocId ? ['document_id'] : []).filter((k) => b[k] != null && b[k] !== '');
  if (sources.length !== 1) {
    throw badRequest(`Exactly one of ${allowDocId ? 'content, file_url or document_id' : 'content or file_url'} must be provided`);
  }
  if (sources[0] === 'document_id') {
    const doc = typeof b.document_id === 'string' && state.docs.get(b.document_id);
    if (!doc) throw notFound('Document');
    return { existing: doc };
  }
  if (sources[0] === 'content') {
    if (b.content_type != null && b.content_type !== 'application/pdf') {
      throw badRequest(`Content type '${b.content_type}' is not supported, only application/pdf`);
    }
    const buf = decodeBase64(b.content, 'content');
    checkPdf(buf);
    return { content: buf };
  }
  if (typeof b.file_url !== 'string') throw violation('file_url', 'must be a URL');
  let buf;
  try {
    buf = await fetchUrl(b.file_url);
  } catch (e) {
    throw badRequest(`The document could not be downloaded from file_url: ${e.message}`);
  }
  checkPdf(buf);
  return { content: buf };
}

function docView(doc) {
  const o = { id: doc.id };
  if (doc.parent_id) o.parent_id = doc.parent_id;
  o.title = doc.title;
  o.content_type = doc.content_type;
  o.size = doc.size;
  o.page_count = doc.page_count;
  o.page_width = doc.page_width;
  o.page_height = doc.page_height;
  o.owner = doc.owner;
  const sr = doc.sr_id && state.srs.get(doc.sr_id);
  o.read_access = sr ? readAccess(sr) : [doc.owner];
  o.write_access = sr ? writeAccess(sr) : [doc.owner];
  o.created_at = doc.created_at;
  o.updated_at = doc.updated_at;
  return o;
}

function getDocOr404(id) {
  const doc = state.docs.get(id);
  if (!doc) throw notFound('Document');
  return doc;
}

function hGetDoc(ctx) {
  sendJson(ctx, 200, JSON.stringify(docView(getDocOr404(ctx.params.DOC_ID))));
}

function hListDocs(ctx) {
  sendJson(ctx, 200, JSON.stringify(Array.from(state.docs.values(), docView)));
}

function hDeleteDoc(ctx) {
  getDocOr404(ctx.params.DOC_ID);
  state.docs.delete(ctx.params.DOC_ID);
  sendEmpty(ctx);
}

async function hUploadDoc(ctx) {
  const b = jsonBody(ctx);
  if (!b || typeof b !== 'object' || Array.isArray(b)) throw badRequest('Request body must be a JSON object');
  if (typeof b.title !== 'string' || b.title.trim() === '') throw violation('title', 'must not be blank');
  const src = await documentFromBody(b, false);
  sendJson(ctx, 200, JSON.stringify(docView(addDocument(src.content, b.title, null, null, isoNow()))));
}

/* hDocContent answers raw PDF bytes, or {content_type, content_size, content} for Accept: application/json. */
function hDocContent(ctx) {
  const doc = getDocOr404(ctx.params.DOC_ID);
  const accept = (ctx.req.headers.accept || '').toLowerCase();
  const ij = accept.indexOf('application/json');
  const ip = accept.indexOf('application/pdf');
  if (ij !== -1 && (ip === -1 || ij < ip)) {
    return sendJson(ctx, 200, JSON.stringify({
      content_type: doc.content_type, content_size: doc.size, content: doc.content.toString('base64'),
    }));
  }
  send(ctx, 200, { 'Content-Type': 'application/pdf', 'Content-Length': doc.size }, doc.content);
}

/* ------------------------------------------------------------------ */
/* Signature requests                                                  */
/* ------------------------------------------------------------------ */

function effectiveQuality(requested) {
  const demo = cfg['demo-quality'] === 'always' ||
    (cfg['demo-quality'] === 'auto' && cfg['api-username'].startsWith('api_demo'));
  return demo ? 'DEMO' : (requested || 'QES');
}

function optString(b, field, max) {
  const v = b[field];
  if (v == null) return undefined;
  if (typeof v !== 'string') throw violation(field, 'must be a string');
  if (max !== undefined && v.length > max) throw violation(field, `size must be between 0 and ${max}`);
  return v;
}

function optEmailList(b, field) {
  const v = b[field];
  if (v == null) return [];
  if (!Array.isArray(v)) throw violation(field, 'must be an array');
  v.forEach((e, i) => {
    if (typeof e !== 'string' || !EMAIL_RE.test(e)) throw violation(`${field}[${i}]`, 'must be a well-formed email address');
  });
  return v.map((e) => e.toLowerCase());
}

function optUrl(b, field) {
  const v = optString(b, field);
  if (v === undefined || v === '') return undefined;
  let u;
  try {
    u = new URL(v);
  } catch {
    throw violation(field, 'must be a valid URL');
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') throw violation(field, 'must be an http or https URL');
  return v;
}

/* normalizeVisual turns a request's visual_signature into the answer's {position, positions} shape. */
function normalizeVisual(vs, field) {
  if (vs == null) return undefined;
  if (typeof vs !== 'object' || Array.isArray(vs)) throw violation(field, 'must be an object');
  const num = (v, d) => (typeof v === 'number' ? v : d);
  const pos = (p) => ({
    x: num(p.x, 0), y: num(p.y, 0), width: num(p.width, 160), height: num(p.height, 60),
    page: String(p.page == null ? '0' : p.page), rotation: num(p.rotation, 0), invisible: !!p.invisible,
  });
  if (typeof vs.form_field === 'string') return { form_field: vs.form_field };
  if (vs.position && typeof vs.position === 'object') {
    const p = pos(vs.position);
    return { position: p, positions: [p] };
  }
  if (Array.isArray(vs.positions) && vs.positions.length > 0) {
    const ps = vs.positions.map((p) => pos(p || {}));
    return { position: ps[0], positions: ps };
  }
  return undefined;
}

/* validateSigner checks one signer object of a create or add-signer body. */
function validateSigner(s, field) {
  if (!s || typeof s !== 'object' || Array.isArray(s)) throw violation(field, 'must be an object');
  const sid = s.signer_identity_data;
  if (sid != null && (typeof sid !== 'object' || Array.isArray(sid))) throw violation(`${field}.signer_identity_data`, 'must be an object');
  if (s.account_email != null && (typeof s.account_email !== 'string' || !EMAIL_RE.test(s.account_email))) {
    throw violation(`${field}.account_email`, 'must be a well-formed email address');
  }
  if (sid && sid.email_address != null && (typeof sid.email_address !== 'string' || !EMAIL_RE.test(sid.email_address))) {
    throw violation(`${field}.signer_identity_data.email_address`, 'must be a well-formed email address');
  }
  const email = s.account_email || (sid && sid.email_address);
  if (!email) throw violation(field, 'account_email or signer_identity_data.email_address is required');
  let seq = s.sequence == null ? -1 : s.sequence;
  if (!Number.isInteger(seq) || (seq !== -1 && (seq < 1 || seq > 2147483647))) {
    throw violation(`${field}.sequence`, 'must be -1 or an integer >= 1');
  }
  if (s.notify != null && typeof s.notify !== 'boolean') throw violation(`${field}.notify`, 'must be a boolean');
  return {
    account_email: s.account_email || null,
    signer_identity_data: sid ? { ...sid } : null,
    email: email.toLowerCase(),
    sequence: seq,
    notify: s.notify == null ? true : s.notify,
    language: typeof s.language === 'string' ? s.language : undefined,
    visual_signature: normalizeVisual(s.visual_signature, `${field}.visual_signature`),
  };
}

/* makeSignature creates a signature; signers on the known-accounts list keep their e-mail, others get an opaque id. */
function makeSignature(sr, spec) {
  const hasAccount = state.knownAccounts.has(spec.email);
  const sig = {
    sid: newId(),
    account_email: hasAccount ? spec.email : opaqueId(),
    signer_identity_data: spec.signer_identity_data || (hasAccount ? null : { email_address: spec.email }),
    sequence: spec.sequence,
    status_code: 'OPEN',
    notify: spec.notify,
    has_account: hasAccount,
    email: spec.email,
  };
  if (!hasAccount) sig.signing_url = `${cfg['signing-base-url']}/view/${sr.id}/${sig.account_email}`;
  if (spec.visual_signature) sig.visual_signature = spec.visual_signature;
  if (spec.language !== undefined) sig.language = spec.language;
  return sig;
}

/* recomputeOrder sets WAITING for signers above the lowest unsigned sequence level, OPEN for the others. */
function recomputeOrder(sr) {
  let min = Infinity;
  for (const s of sr.signatures) {
    if (s.sequence >= 1 && (s.status_code === 'OPEN' || s.status_code === 'WAITING') && s.sequence < min) min = s.sequence;
  }
  for (const s of sr.signatures) {
    if (s.status_code === 'OPEN' || s.status_code === 'WAITING') s.status_code = s.sequence > min ? 'WAITING' : 'OPEN';
  }
}

function readAccess(sr) {
  const set = new Set([sr.owner]);
  if (sr.status_overall !== 'WITHDRAWN') {
    for (const s of sr.signatures) set.add(s.account_email);
    for (const e of sr.cc_email_addresses) set.add(e);
  }
  return Array.from(set);
}

const writeAccess = (sr) => Array.from(new Set([sr.owner, ...sr.write_access]));

function sigView(s) {
  const o = { sid: s.sid, account_email: s.account_email };
  if (s.signer_identity_data) o.signer_identity_data = s.signer_identity_data;
  o.sequence = s.sequence;
  o.status_code = s.status_code;
  o.notify = s.notify;
  if (s.signing_url) o.signing_url = s.signing_url;
  if (s.signed_at) o.signed_at = s.signed_at;
  if (s.signed_quality) o.signed_quality = s.signed_quality;
  if (s.signed_legislation) o.signed_legislation = s.signed_legislation;
  if (s.last_viewed_at) o.last_viewed_at = s.last_viewed_at;
  if (s.decline_message !== undefined) o.decline_message = s.decline_message;
  if (s.visual_signature) o.visual_signature = s.visual_signature;
  if (s.language !== undefined) o.language = s.language;
  return o;
}

function srView(sr) {
  const o = { id: sr.id, title: sr.title };
  if (sr.message !== undefined) o.message = sr.message;
  o.document_id = sr.document_id;
  o.legislation = sr.legislation;
  o.quality = sr.quality;
  o.signing_url = `${cfg['signing-base-url']}/view/${sr.id}`;
  o.status_overall = sr.status_overall;
  o.business = business;
  o.signatures = sr.signatures.map(sigView);
  o.cc_email_addresses = sr.cc_email_addresses;
  o.expiration_date = sr.expiration_date;
  o.attachments = [];
  if (sr.attach_on_success) o.attach_on_success = sr.attach_on_success;
  if (sr.custom !== undefined) o.custom = sr.custom;
  if (sr.expires_at !== undefined) o.expires_at = sr.expires_at;
  o.owner = sr.owner;
  o.read_access = readAccess(sr);
  o.write_access = writeAccess(sr);
  o.created_at = sr.created_at;
  o.updated_at = sr.updated_at;
  if (sr.callback_success_url) o.callback_success_url = sr.callback_success_url;
  if (sr.callback_error_url) o.callback_error_url = sr.callback_error_url;
  if (sr.callback_update_url) o.callback_update_url = sr.callback_update_url;
  return o;
}

/* srJson serialises a request once per change; the string is cached on the runtime part. */
function srJson(sr) {
  if (!sr.rt.json) sr.rt.json = JSON.stringify(srView(sr));
  return sr.rt.json;
}

function touch(sr, now = isoNow()) {
  sr.updated_at = now;
  sr.rt.json = null;
}

function addEvent(sr, name, actor, extra = {}) {
  sr.events.push({ name, actor, time: isoNow(), ...extra });
}

function getSrOr404(id) {
  const sr = state.srs.get(id);
  if (!sr) throw notFound('SignatureRequest');
  return sr;
}

function requireOpen(sr, what, status = 400) {
  if (sr.status_overall !== 'OPEN') {
    throw new ApiError(status, 'problem-with-message', `${what} is not possible: the SignatureRequest is ${sr.status_overall}, not OPEN`);
  }
}

/*
 * checkSequences: the sequences of all signers of a request (a create, or
 * the request with an added signer) must be "a real number sequence
 * starting with 1".  That is the documented 400 example "ALL signers must be
 * in a real number sequence starting with 1" (quoted in skribble-api.md,
 * "Rules and ambiguities": Sequences; the OpenAPI example
 * components/examples/CreateSignatureBasic.yaml#/Sequences numbers its
 * signers 1, 2, 3, 4; SignatureRecipient.yaml: sequence default -1).  So the
 * distinct positive values used must be exactly 1..k; signers sharing a
 * number sign in parallel (the demo capture get_signature-response.json has
 * two signers with sequence 1).  Every signer at -1 (or without a sequence)
 * means any order.
 * Mixing -1 with numbered signers: the v2 documentation does not say.  "ALL
 * signers must be ..." reads as "once sequences are used, every signer has
 * one", so the double refuses the mix by default; --allow-mixed-sequences on
 * accepts it (a -1 signer is then never WAITING), the reading Skribble's v3
 * migration guide suggests ("-1 (default): No specific order - can sign at
 * any time").  A client that never mixes is safe under both.
 */
function checkSequences(seqs, field) {
  const numbered = new Set(seqs.filter((q) => q >= 1));
  if (numbered.size === 0) return;
  const message = 'ALL signers must be in a real number sequence starting with 1';
  if (seqs.some((q) => q === -1) && !rt.allowMixedSequences) throw violation(field, message);
  let max = 0;
  for (const q of numbered) if (q > max) max = q;
  if (max !== numbered.size) throw violation(field, message);
}

/* validateCreate checks a create body like Skribble (title, quality/legislation, signers, sequences, sizes). */
function validateCreate(b) {
  if (!b || typeof b !== 'object' || Array.isArray(b)) throw badRequest('Request body must be a JSON object');
  if (typeof b.title !== 'string' || b.title.trim() === '') throw violation('title', 'must not be blank');
  const v = { title: b.title, message: optString(b, 'message') };
  if (b.quality != null && !QUALITIES.includes(b.quality)) throw violation('quality', `must be one of ${QUALITIES.join(', ')}`);
  if (b.legislation != null && !LEGISLATIONS.includes(b.legislation)) throw violation('legislation', `must be one of ${LEGISLATIONS.join(', ')}`);
  if ((b.quality === 'QES' || b.quality === 'AES_MINIMAL') && b.legislation == null) {
    throw badRequest(`A legislation (ZERTES or EIDAS) is required for quality ${b.quality}`);
  }
  v.quality = b.quality == null ? null : b.quality;
  v.legislation = b.legislation == null ? null : b.legislation;
  if (b.signatures != null && !Array.isArray(b.signatures)) throw violation('signatures', 'must be an array');
  v.signers = (b.signatures || []).map((s, i) => validateSigner(s, `signatures[${i}]`));
  checkSequences(v.signers.map((s) => s.sequence), 'signatures');
  v.cc = optEmailList(b, 'cc_email_addresses');
  v.callback_success_url = optUrl(b, 'callback_success_url');
  v.callback_update_url = optUrl(b, 'callback_update_url');
  v.callback_error_url = optUrl(b, 'callback_error_url');
  if (b.custom != null && typeof b.custom !== 'string') throw violation('custom', 'must be a string');
  if (typeof b.custom === 'string' && b.custom.length > CUSTOM_MAX) throw violation('custom', `size must be between 0 and ${CUSTOM_MAX}`);
  v.custom = b.custom == null ? undefined : b.custom;
  if (b.attach_on_success != null) {
    if (!Array.isArray(b.attach_on_success) || !b.attach_on_success.every((x) => ATTACH_ON_SUCCESS.includes(x))) {
      throw violation('attach_on_success', `must be an array of ${ATTACH_ON_SUCCESS.join(', ')}`);
    }
    v.attach_on_success = b.attach_on_success.slice();
  }
  if (b.write_access != null) {
    if (!Array.isArray(b.write_access) || !b.write_access.every((x) => typeof x === 'string')) throw violation('write_access', 'must be an array of strings');
  }
  v.write_access = (b.write_access || []).map((e) => e.toLowerCase());
  if (b.expires_at != null) {
    if (!state.features.expires_at) {
      throw new ApiError(403, 'feature-not-enabled', 'The feature expires_at is not enabled for this business');
    }
    if (typeof b.expires_at !== 'string' || Number.isNaN(Date.parse(b.expires_at))) throw violation('expires_at', 'must be an ISO 8601 date-time');
    v.expires_at = b.expires_at;
  }
  return v;
}

async function hCreateSR(ctx) {
  const b = jsonBody(ctx);
  const v = validateCreate(b);
  const src = await documentFromBody(b, true);
  const nowMs = clockNow();
  const now = isoNow(nowMs);
  const sr = {
    id: newId(), seq: ++srSeq, title: v.title, message: v.message, document_id: null,
    legislation: v.legislation || 'ZERTES', quality: effectiveQuality(v.quality),
    requested_quality: v.quality, requested_legislation: v.legislation,
    status_overall: 'OPEN', signatures: [], cc_email_addresses: v.cc,
    attach_on_success: v.attach_on_success, custom: v.custom, expires_at: v.expires_at,
    owner: cfg['api-username'], write_access: v.write_access,
    created_at: now, updated_at: now,
    expiration_date: expirationDate(nowMs),
    callback_success_url: v.callback_success_url, callback_update_url: v.callback_update_url,
    callback_error_url: v.callback_error_url,
    doc_ids: [], events: [], callbacks: [], reminders: 0, last_reminder_at: 0,
    rt: newRt(),
  };
  const doc = src.existing || addDocument(src.content, v.title, null, sr.id, now);
  if (!doc.sr_id) doc.sr_id = sr.id;
  sr.document_id = doc.id;
  sr.doc_ids.push(doc.id);
  sr.signatures = v.signers.map((spec) => makeSignature(sr, spec));
  recomputeOrder(sr);
  addEvent(sr, 'CREATED', sr.owner, { document_id: doc.id });
  state.srs.set(sr.id, sr);
  if (nextExpiry !== null && sr.expiration_date < nextExpiry) nextExpiry = sr.expiration_date;
  stats.creates++;
  if (sr.custom !== undefined) stats.creates_by_custom[sr.custom] = (stats.creates_by_custom[sr.custom] || 0) + 1;
  if (shouldDropAfterCreate(ctx)) {
    stats.faults_injected.drop_after_create++;
    ctx.dropped = true;
    ctx.req.socket.destroy();
    return;
  }
  sendJson(ctx, 200, srJson(sr));
}

function newRt() {
  return { json: null, cbBusy: false, cbTimer: null, cbOpen: 0 };
}

function hGetSR(ctx) {
  sendJson(ctx, 200, srJson(getSrOr404(ctx.params.SR_ID)));
}

/* queryInt reads an integer query parameter: null when absent, 400 parameterized when it is not an integer. */
function queryInt(ctx, name) {
  const raw = ctx.query.get(name);
  if (raw === null || raw === '') return null;
  const n = Number(raw);
  if (!Number.isInteger(n)) throw new ApiError(400, 'parameterized', `Parameter ${name} must be an integer`);
  return n;
}

/*
 * hListSR lists requests newest first, filtered by title substring, status
 * and account_email.
 *
 * Paging, as documented: "page_number: Page number for pagination. By
 * default pagination is disabled" (components/parameters/PageNumber.yaml);
 * page_size "default: 50, minimum: 0" (PageSize.yaml).  Where pages start is
 * not settled: PageNumber.yaml says minimum 1, the legacy documentation
 * (skribble-legacy-postman.md, GET /v2/signature-requests, Pagination) says
 * "Page number must be greater than or equal to 0", and the server-generated
 * spec shows 0 as its example.  So:
 *   --page-base 1 (default): page 1 is the first; page_number < 1 is a 400
 *     constraint-violation naming page_number;
 *   --page-base 0: page 0 is the first (page_number < 0 is the 400).
 * Whether "pagination is disabled" really means "everything" is the other
 * open point: --unpaged-limit 0 (default) answers everything when neither
 * parameter is given; N > 0 answers only the first N, as if a default page
 * size applied anyway.  Given only page_size, page_number is the base; given
 * only page_number, page_size is 50.  page_size 0 gives an empty page.
 */
function hListSR(ctx) {
  const q = ctx.query;
  const search = (q.get('search') || '').toLowerCase();
  const status = q.get('status_overall') || '';
  const sigStatus = q.get('signature_status') || '';
  const account = q.get('account_email') || '';
  const base = rt.pageBase;
  let page = queryInt(ctx, 'page_number');
  let size = queryInt(ctx, 'page_size');
  if (page !== null && page < base) throw violation('page_number', `must be greater than or equal to ${base}`);
  if (size !== null && size < 0) throw violation('page_size', 'must be greater than or equal to 0');
  let skip = 0;
  let take = Infinity;
  if (page === null && size === null) {
    if (rt.unpagedLimit > 0) take = rt.unpagedLimit;
  } else {
    if (page === null) page = base;
    if (size === null) size = 50;
    take = size;
    skip = (page - base) * size;
  }
  const out = [];
  if (take > 0) {
    const all = Array.from(state.srs.values());
    for (let i = all.length - 1; i >= 0; i--) {
      const sr = all[i];
      if (search && !sr.title.toLowerCase().includes(search)) continue;
      if (status && sr.status_overall !== status) continue;
      if (account && !sr.signatures.some((s) => s.account_email === account)) continue;
      if (sigStatus && !sr.signatures.some((s) => s.status_code === sigStatus)) continue;
      if (skip > 0) { skip--; continue; }
      out.push(srJson(sr));
      if (out.length >= take) break;
    }
  }
  sendJson(ctx, 200, '[' + out.join(',') + ']');
}

/* withdraw marks the request and its unsigned signatures WITHDRAWN and sends the ERROR callback. */
function withdraw(sr, message) {
  const now = isoNow();
  sr.status_overall = 'WITHDRAWN';
  for (const s of sr.signatures) if (s.status_code !== 'SIGNED') s.status_code = 'WITHDRAWN';
  sr.withdraw_message = message;
  addEvent(sr, 'WITHDRAWN', sr.owner, { message: message || '' });
  touch(sr, now);
  enqueueCallback(sr, 'ERROR', null);
}

function hWithdraw(ctx) {
  const sr = getSrOr404(ctx.params.SR_ID);
  const b = jsonBody(ctx, {});
  if (!b || typeof b !== 'object' || Array.isArray(b)) throw badRequest('Request body must be a JSON object');
  const message = optString(b, 'message', WITHDRAW_MESSAGE_MAX);
  requireOpen(sr, 'Withdrawing');
  withdraw(sr, message);
  sendJson(ctx, 200, srJson(sr));
}

/* hDeleteSR withdraws an OPEN request; a WITHDRAWN one is removed with its documents. */
function hDeleteSR(ctx) {
  const sr = getSrOr404(ctx.params.SR_ID);
  if (sr.status_overall === 'OPEN') {
    withdraw(sr, undefined);
  } else if (sr.status_overall === 'WITHDRAWN') {
    removeSr(sr);
  } else {
    requireOpen(sr, 'Deleting');
  }
  sendEmpty(ctx);
}

/*
 * Deletion.  Each SignatureRequest carries expiration_date
 * (components/schemas/SignatureResponse.yaml, a date such as 2025-11-21),
 * the day Skribble deletes it (skribble-api.md, "Deletion"); the demo
 * capture skribble-demo-responses/get_signature-response.json shows
 * created_at 2024-08-21T08:02:35.395Z with expiration_date 2024-08-26, five
 * days later (--deletion-days, default 5).  With --delete-expired on
 * (default), once the date on the double's clock (UTC) is after
 * expiration_date, the request and its documents are gone: GET answers 404
 * entity-not-found, lists leave it out, reports and document content answer
 * 404.  The date is fixed at creation; changing --deletion-days at run time
 * affects requests created from then on.
 */
function expirationDate(createdMs) {
  return isoNow(createdMs + rt.deletionDays * 86400000).slice(0, 10);
}

let nextExpiry = null;   /* the earliest expiration_date of a stored request; null: not known, scan */

/* sweepExpired removes every request whose expiration_date lies before today's date on the double's clock. */
function sweepExpired() {
  if (!rt.deleteExpired) return;
  const today = isoNow().slice(0, 10);
  if (nextExpiry !== null && today <= nextExpiry) return;
  let min = '9999-12-31';
  for (const sr of state.srs.values()) {
    if (typeof sr.expiration_date !== 'string') continue;
    if (sr.expiration_date < today) {
      removeSr(sr);
      stats.expired_deleted++;
    } else if (sr.expiration_date < min) {
      min = sr.expiration_date;
    }
  }
  nextExpiry = min;
}

function removeSr(sr) {
  if (sr.rt.cbTimer) clearTimeout(sr.rt.cbTimer);
  stats.callbacks.pending -= sr.rt.cbOpen;
  state.pendingCb.delete(sr.id);
  for (const id of sr.doc_ids) {
    const d = state.docs.get(id);
    if (d && d.sr_id === sr.id) state.docs.delete(id);
  }
  state.srs.delete(sr.id);
}

/*
 * Signer changes.  The description of the signature-request update says:
 * "Changes to the signatures can only be made as long as none of the
 * signers have already completed the signature" (paths/signature-requests.yaml,
 * put: Update a Signature Request; skribble-legacy-postman.md, "Add or
 * remove multiple signers simultaneously"; api.docs.skribble.com
 * sign-api-v2/update-signature-request, "Updating signers").  The same
 * holds for adding and removing one signer: as soon as any signature of the
 * request is SIGNED, both answer 400.
 */
function requireNobodySigned(sr) {
  if (sr.signatures.some((s) => s.status_code === 'SIGNED')) {
    throw badRequest('The signature request cannot be changed because a signer has already signed');
  }
}

function hAddSigner(ctx) {
  const sr = getSrOr404(ctx.params.SR_ID);
  const spec = validateSigner(jsonBody(ctx), 'signature');
  requireOpen(sr, 'Adding a signer');
  requireNobodySigned(sr);
  checkSequences(sr.signatures.map((s) => s.sequence).concat([spec.sequence]), 'sequence');
  const sig = makeSignature(sr, spec);
  sr.signatures.push(sig);
  recomputeOrder(sr);
  addEvent(sr, 'SIGNERS_ADDED', sr.owner, { sid: sig.sid });
  touch(sr);
  sendJson(ctx, 200, srJson(sr));
}

function hRemoveSigner(ctx) {
  const sr = getSrOr404(ctx.params.SR_ID);
  const idx = sr.signatures.findIndex((s) => s.sid === ctx.params.SID);
  if (idx < 0) throw notFound('Signature');
  requireOpen(sr, 'Removing a signer');
  requireNobodySigned(sr);
  const [sig] = sr.signatures.splice(idx, 1);
  recomputeOrder(sr);
  addEvent(sr, 'SIGNERS_REMOVED', sr.owner, { sid: sig.sid });
  touch(sr);
  completeIfAllSigned(sr);
  sendEmpty(ctx);
}

function hRemind(ctx) {
  const sr = getSrOr404(ctx.params.SR_ID);
  requireOpen(sr, 'Reminding');
  const now = clockNow();
  const since = now - sr.last_reminder_at;
  if (sr.last_reminder_at && since < rt.remindWindowMs) {
    const wait = Math.max(1, Math.ceil((rt.remindWindowMs - since) / 1000));
    throw new ApiError(429, 'limit-exceeded', 'The reminder limit for this signature request is reached, try again later',
      { key: 'error.rate_limit.reminder', headers: { 'Retry-After': String(wait) } });
  }
  sr.last_reminder_at = now;
  sr.reminders++;
  addEvent(sr, 'REMINDED', sr.owner);
  sendEmpty(ctx);
}

function hCallbacks(ctx) {
  const sr = getSrOr404(ctx.params.SR_ID);
  sendJson(ctx, 200, JSON.stringify(sr.callbacks.map(callbackView)));
}

function hHealth(ctx) {
  sendJson(ctx, 200, JSON.stringify({ status: 'UP' }));
}

/* ------------------------------------------------------------------ */
/* Login                                                               */
/* ------------------------------------------------------------------ */

const { safeEqual } = doubles;

function hLogin(ctx) {
  /* --strict-accept (default on): the login produces text/plain only; see acceptsTextPlain */
  if (rt.strictAccept && !acceptsTextPlain(ctx.req.headers.accept)) {
    stats.not_acceptable++;
    throw new ApiError(406, 'problem-with-message',
      `No acceptable representation: the login answers text/plain only, the request accepts ${ctx.req.headers.accept}`);
  }
  const ct = (ctx.req.headers['content-type'] || '').toLowerCase();
  let creds;
  if (ct.includes('application/x-www-form-urlencoded')) {
    const p = new URLSearchParams(ctx.body ? ctx.body.toString('utf8') : '');
    creds = { username: p.get('username'), 'api-key': p.get('api-key') };
  } else {
    creds = jsonBody(ctx);
  }
  if (!creds || typeof creds !== 'object' || typeof creds.username !== 'string' || typeof creds['api-key'] !== 'string') {
    throw violation('username', 'username and api-key are required');
  }
  if (!(safeEqual(creds.username, cfg['api-username']) & safeEqual(creds['api-key'], cfg['api-key']))) {
    stats.login_failures++;
    throw new ApiError(401, 'problem-with-message', 'Login failed: wrong username or api-key');
  }
  stats.logins++;
  const iat = Math.floor(clockNow() / 1000);
  const token = signJwt({ sub: creds.username, iat, exp: iat + rt.tokenTtl, jti: newId(), gen: tokenGen });
  send(ctx, 200, { 'Content-Type': 'text/plain;charset=UTF-8', 'Content-Length': Buffer.byteLength(token) }, token);
}

/* ------------------------------------------------------------------ */
/* Signer actions (driven through /_control)                           */
/* ------------------------------------------------------------------ */

/* findSignature matches a sid, or an e-mail (account_email or identity e-mail), preferring an unsigned one. */
function findSignature(sr, key) {
  const bySid = sr.signatures.find((s) => s.sid === key);
  if (bySid) return bySid;
  const k = key.toLowerCase();
  const matches = sr.signatures.filter((s) => s.email === k || s.account_email === k ||
    (s.signer_identity_data && String(s.signer_identity_data.email_address || '').toLowerCase() === k));
  const rank = { OPEN: 0, WAITING: 1 };
  matches.sort((a, b) => (rank[a.status_code] ?? 2) - (rank[b.status_code] ?? 2));
  if (!matches.length) throw notFound('Signature');
  return matches[0];
}

const conflict = (msg) => new ApiError(409, 'problem-with-message', msg);

function signerView(sr, sig, now) {
  if (sr.status_overall !== 'OPEN') throw conflict(`SignatureRequest is ${sr.status_overall}`);
  if (sig.status_code !== 'OPEN' && sig.status_code !== 'WAITING' && sig.status_code !== 'SIGNED') {
    throw conflict(`Signature is ${sig.status_code}`);
  }
  sig.last_viewed_at = now;
  addEvent(sr, 'VIEWED', sig.sid);
  touch(sr, now);
  enqueueCallback(sr, 'UPDATE', sig.sid);
}

function signedQuality(sr) {
  return sr.quality === 'AES_MINIMAL' ? 'QES' : sr.quality;
}

/* signerSign signs: new document version with a trailing comment, UPDATE and, when complete, SUCCESS. */
function signerSign(sr, sig, now, b) {
  if (sr.status_overall !== 'OPEN') throw conflict(`SignatureRequest is ${sr.status_overall}`);
  if (sig.status_code === 'WAITING') throw conflict('Signature is WAITING for an earlier signer in the sequence');
  if (sig.status_code !== 'OPEN') throw conflict(`Signature is ${sig.status_code}`);
  const prev = state.docs.get(sr.document_id);
  const nl = prev.content.length && prev.content[prev.content.length - 1] !== 0x0a ? '\n' : '';
  const line = `${nl}%signed-by ${sig.email.replace(/[\r\n]/g, '')} ${now}\n%%EOF\n`;
  const doc = addDocument(Buffer.concat([prev.content, Buffer.from(line, 'utf8')]), prev.title, prev, sr.id, now);
  sr.doc_ids.push(doc.id);
  sr.document_id = doc.id;
  sig.status_code = 'SIGNED';
  sig.signed_at = now;
  sig.signed_quality = typeof b.quality === 'string' ? b.quality : signedQuality(sr);
  sig.signed_legislation = typeof b.legislation === 'string' ? b.legislation : sr.legislation;
  sig.document_id = doc.id;
  addEvent(sr, 'SIGNED', sig.sid, { document_id: doc.id, quality: sig.signed_quality, legislation: sig.signed_legislation });
  recomputeOrder(sr);
  touch(sr, now);
  enqueueCallback(sr, 'UPDATE', sig.sid);
  completeIfAllSigned(sr);
}

function completeIfAllSigned(sr) {
  if (sr.status_overall === 'OPEN' && sr.signatures.length > 0 && sr.signatures.every((s) => s.status_code === 'SIGNED')) {
    sr.status_overall = 'SIGNED';
    addEvent(sr, 'COMPLETED', sr.owner, { document_id: sr.document_id });
    touch(sr);
    enqueueCallback(sr, 'SUCCESS', null);
  }
}

function signerDecline(sr, sig, now, b) {
  if (sr.status_overall !== 'OPEN') throw conflict(`SignatureRequest is ${sr.status_overall}`);
  if (sig.status_code !== 'OPEN' && sig.status_code !== 'WAITING') throw conflict(`Signature is ${sig.status_code}`);
  sig.status_code = 'DECLINED';
  sig.decline_message = typeof b.message === 'string' ? b.message : '';
  sr.status_overall = 'DECLINED';
  addEvent(sr, 'DECLINED', sig.sid, { message: sig.decline_message });
  touch(sr, now);
  enqueueCallback(sr, 'UPDATE', sig.sid);
  enqueueCallback(sr, 'ERROR', null);
}

/* ------------------------------------------------------------------ */
/* Callbacks                                                           */
/* ------------------------------------------------------------------ */

const cbAgents = {
  'http:': new http.Agent({ keepAlive: true, maxSockets: 128 }),
  'https:': new https.Agent({ keepAlive: true, maxSockets: 128 }),
};

/* enqueueCallback records a callback with its placeholders replaced and starts delivery. */
function enqueueCallback(sr, type, sid) {
  const tmpl = type === 'SUCCESS' ? sr.callback_success_url : type === 'UPDATE' ? sr.callback_update_url : sr.callback_error_url;
  if (!tmpl) return;
  let url = tmpl.split('SKRIBBLE_SIGNATURE_REQUEST_ID').join(sr.id).split('SKRIBBLE_DOCUMENT_ID').join(sr.document_id);
  if (type === 'UPDATE' && sid) url = url.split('SKRIBBLE_SIGNATURE_ID').join(sid);
  const now = isoNow();
  const body = { signature_request_id: sr.id, type, status_overall: sr.status_overall, document_id: sr.document_id };
  if (sid) body.signature_id = sid;
  sr.callbacks.push({
    signature_request_id: sr.id, type, state: 'OPEN', url, attempts: 0, messages: [],
    created_at: now, updated_at: now, body: JSON.stringify(body), next_at: Date.now(),   /* next_at: real time */
  });
  sr.rt.cbOpen++;
  stats.callbacks.pending++;
  state.pendingCb.add(sr.id);
  pumpCallbacks(sr);
}

function callbackView(c) {
  return {
    signature_request_id: c.signature_request_id, type: c.type, state: c.state, url: c.url,
    attempts: c.attempts, messages: c.messages, created_at: c.created_at, updated_at: c.updated_at,
  };
}

/* pumpCallbacks sends the oldest due callback of a request, one at a time, so first attempts keep their order. */
function pumpCallbacks(sr) {
  if (sr.rt.cbBusy || rt.cbPaused || shuttingDown || sr.rt.cbOpen === 0) return;
  const now = Date.now();
  let due = null;
  let nextAt = Infinity;
  for (const c of sr.callbacks) {
    if (c.state !== 'OPEN') continue;
    if (c.next_at <= now) { due = c; break; }
    if (c.next_at < nextAt) nextAt = c.next_at;
  }
  if (sr.rt.cbTimer) {
    clearTimeout(sr.rt.cbTimer);
    sr.rt.cbTimer = null;
  }
  if (!due) {
    if (nextAt < Infinity) {
      sr.rt.cbTimer = setTimeout(() => { sr.rt.cbTimer = null; pumpCallbacks(sr); }, nextAt - now);
    }
    return;
  }
  sr.rt.cbBusy = true;
  const gen = generation;
  due.attempts++;
  stats.callbacks.sent++;
  postCallback(due.url, due.body, (err, status, headers, text) => {
    if (gen !== generation || !state.srs.has(sr.id)) return;
    sr.rt.cbBusy = false;
    const t = Date.now();
    due.updated_at = isoNow();
    if (!err && status >= 200 && status < 300) {
      due.state = 'COMPLETED';
      stats.callbacks.completed++;
    } else {
      stats.callbacks.failed++;
      due.messages.push(err ? `Failed: ${err.code || err.message}`
        : `Failed: ${status} - ${status} ${http.STATUS_CODES[status] || ''}: ${text}`.trimEnd());
      if (due.attempts >= rt.cbMaxAttempts) {
        due.state = 'RESIGNATED';
        stats.callbacks.resignated++;
      } else {
        const ra = parseRetryAfter(headers && headers['retry-after'], t);
        due.next_at = t + Math.max(rt.cbRetryInterval, ra || 0);
      }
    }
    if (due.state !== 'OPEN') {
      sr.rt.cbOpen--;
      stats.callbacks.pending--;
      if (sr.rt.cbOpen === 0) state.pendingCb.delete(sr.id);
    }
    pumpCallbacks(sr);
  });
}

function parseRetryAfter(v, now) {
  if (!v) return null;
  if (/^\d+$/.test(v.trim())) return Number(v.trim()) * 1000;
  const d = Date.parse(v);
  return Number.isNaN(d) ? null : Math.max(0, d - now);
}

/* postCallback POSTs a small JSON body; cb(err, status, headers, first 200 chars of the answer). */
function postCallback(url, body, cb) {
  let done = false;
  const finish = (...a) => { if (!done) { done = true; cb(...a); } };
  let u;
  try {
    u = new URL(url);
    if (!cbAgents[u.protocol]) throw new Error('unsupported protocol');
  } catch (e) {
    return setImmediate(() => finish(Object.assign(new Error(e.message), { code: 'INVALID_URL' })));
  }
  const req = (u.protocol === 'https:' ? https : http).request(u, {
    method: 'POST', agent: cbAgents[u.protocol],
    headers: { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body), 'User-Agent': 'Skribble-Callback (test double)' },
  }, (res) => {
    let text = '';
    res.setEncoding('utf8');
    res.on('data', (c) => { if (text.length < 200) text += c; });
    res.on('end', () => finish(null, res.statusCode, res.headers, text.slice(0, 200)));
    res.on('error', (e) => finish(e));
  });
  req.setTimeout(cfg['callback-timeout'], () => req.destroy(Object.assign(new Error('timeout'), { code: 'TIMEOUT' })));
  req.on('error', (e) => finish(e));
  req.end(body);
}

function resumeCallbacks() {
  rt.cbPaused = false;
  for (const id of state.pendingCb) {
    const sr = state.srs.get(id);
    if (sr) pumpCallbacks(sr);
  }
}

/* ------------------------------------------------------------------ */
/* Reports                                                             */
/* ------------------------------------------------------------------ */

/* buildPdf writes a small valid PDF (Helvetica, 54 lines per A4 page) with a correct xref table. */
const buildPdf = (lines) => doubles.buildPdf(lines, { version: '1.4', winAnsi: true });

const reportTime = (iso) => iso.replace('T', ' ').replace(/\.\d+Z$/, ' GMT');

function docDigest(id) {
  const d = state.docs.get(id);
  if (!d) return { sha: '', pages: 0, size: 0 };
  if (!d.sha256) d.sha256 = sha256hex(d.content);
  return { sha: d.sha256, pages: d.page_count, size: d.size };
}

/* reportAction fills one userActions entry of the JSON report with the schema's defaults. */
function reportAction(ev, signatureId = '') {
  const a = {
    name: ev.name, ip: '127.0.0.1', time: reportTime(ev.time), quality: ev.quality || '', legislation: ev.legislation || '',
    documentId: '', documentSha256: '', documentPageCount: 0, documentSize: 0, documents: [], message: ev.message || '',
    signatureId, signersAdded: [], signersRemoved: [], observersAdded: [], observersRemoved: [], delegatees: [],
    delegatedSignatureId: null, newSignatureIds: [], certificateSubject: null, certificateSerial: null,
    certificateIssuer: null, signatureImage: null, signerGroupsAdded: [], signerGroupsRemoved: [],
    signerGroupName: null, mabEvidenceId: null,
  };
  if (ev.document_id) {
    const dg = docDigest(ev.document_id);
    if (ev.name === 'CREATED') {
      a.documents = [{ documentId: ev.document_id, documentSha256: dg.sha }];
    } else {
      a.documentId = ev.document_id;
      a.documentSha256 = dg.sha;
      a.documentPageCount = dg.pages;
      a.documentSize = dg.size;
    }
  }
  if (ev.name === 'SIGNERS_ADDED') a.signersAdded = [ev.sid];
  if (ev.name === 'SIGNERS_REMOVED') a.signersRemoved = [ev.sid];
  return a;
}

/* reportJson follows Skribble's SignatureReport schema: header, userList with userActions, error. */
function reportJson(sr) {
  const now = isoNow();
  const ownerEvents = sr.events.filter((e) => e.actor === sr.owner);
  const users = [{
    id: sr.owner, firstname: sr.owner, lastname: '', groupName: '', email: '', mobile: '', businessName: business,
    userActions: ownerEvents.map((e) => reportAction(e)).concat([reportAction({ name: 'REPORT_CREATED', time: now, actor: sr.owner })]),
  }];
  for (const s of sr.signatures) {
    const sid = s.signer_identity_data || {};
    users.push({
      id: s.account_email, firstname: sid.first_name || '', lastname: sid.last_name || '', groupName: '',
      email: sid.email_address || s.email, mobile: sid.mobile_number || '', businessName: '',
      userActions: sr.events.filter((e) => e.actor === s.sid).map((e) => reportAction(e, s.sid)),
    });
  }
  return {
    header: {
      signatureRequestID: sr.id, skribbleLogo: null, title: sr.title, status: sr.status_overall,
      signatureCount: sr.signatures.length,
      signatureCountSigned: sr.signatures.filter((s) => s.status_code === 'SIGNED').length,
      attachmentNames: '',
    },
    userList: users,
    error: null,
  };
}

function reportLines(sr) {
  const lines = [
    'Signature protocol (Skribble test double)', '',
    `Title: ${sr.title}`, `Signature request: ${sr.id}`, `Status: ${sr.status_overall}`,
    `Document: ${sr.document_id}`, `Quality: ${sr.quality}  Legislation: ${sr.legislation}`,
    `Created: ${sr.created_at}`, '', 'Signers:',
  ];
  for (const s of sr.signatures) {
    const sid = s.signer_identity_data || {};
    const name = [sid.first_name, sid.last_name].filter(Boolean).join(' ');
    lines.push(`- ${name ? name + ' ' : ''}<${sid.email_address || s.email}> sid ${s.sid}: ${s.status_code}` +
      (s.signed_at ? ` at ${s.signed_at} (${s.signed_quality}, ${s.signed_legislation})` : ''));
  }
  return lines;
}

const htmlEsc = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function hReport(ctx) {
  const sr = getSrOr404(ctx.params.SR_ID);
  const type = (ctx.query.get('type') || 'PDF').toUpperCase();
  if (!REPORT_TYPES.includes(type)) throw new ApiError(400, 'parameterized', `Parameter type must be one of ${REPORT_TYPES.join(', ')}`);
  if (type === 'JSON') return sendJson(ctx, 200, JSON.stringify(reportJson(sr)));
  if (type === 'HTML') {
    const rows = sr.signatures.map((s) => {
      const sid = s.signer_identity_data || {};
      return `<tr><td>${htmlEsc([sid.first_name, sid.last_name].filter(Boolean).join(' '))}</td><td>${htmlEsc(sid.email_address || s.email)}</td>` +
        `<td>${htmlEsc(s.sid)}</td><td>${s.status_code}</td><td>${htmlEsc(s.signed_at || '')}</td><td>${htmlEsc(s.signed_quality || '')}</td></tr>`;
    }).join('\n');
    const html = `<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>Signature protocol ${htmlEsc(sr.title)}</title></head><body>\n` +
      `<h1>Signature protocol</h1>\n<p>Title: ${htmlEsc(sr.title)}<br>Signature request: ${sr.id}<br>Status: ${sr.status_overall}<br>Document: ${sr.document_id}</p>\n` +
      `<table>\n<tr><th>Name</th><th>E-mail</th><th>Signature</th><th>Status</th><th>Signed at</th><th>Quality</th></tr>\n${rows}\n</table>\n</body></html>\n`;
    return send(ctx, 200, { 'Content-Type': 'text/html;charset=UTF-8', 'Content-Length': Buffer.byteLength(html) }, html);
  }
  const pdf = buildPdf(reportLines(sr));
  send(ctx, 200, {
    'Content-Type': 'application/pdf', 'Content-Length': pdf.length,
    'Content-Disposition': `attachment; filename="signature-report-${sr.id}.pdf"`,
  }, pdf);
}

/* ------------------------------------------------------------------ */
/* Control interface                                                   */
/* ------------------------------------------------------------------ */

function controlSrView(sr) {
  return Object.assign(srView(sr), {
    _double: {
      requested_quality: sr.requested_quality, requested_legislation: sr.requested_legislation,
      reminders: sr.reminders, withdraw_message: sr.withdraw_message === undefined ? null : sr.withdraw_message,
      document_ids: sr.doc_ids, events: sr.events,
    },
  });
}

function reset() {
  for (const sr of state.srs.values()) if (sr.rt.cbTimer) clearTimeout(sr.rt.cbTimer);
  for (const t of heldTimers) clearTimeout(t);
  heldTimers.clear();
  generation++;
  tokenCache.clear();
  state = freshState();
  rt = freshRuntime();
  stats = freshStats();
  clockOffsetMs = startClockOffsetMs;
  nextExpiry = null;
}

function clockView() {
  return doubles.clockView(clockNow());
}

/* setClock serves POST /_control/clock: {"advance_ms": N} moves the clock by N ms, {"set": ISO} sets it. */
function setClock(b) {
  clockOffsetMs = doubles.clockOffset(b, clockOffsetMs, badRequest);
  return clockView();
}

/* the switches of GET/POST /_control/options: JSON name -> [runtime field, kind, min, max] */
const RUNTIME_OPTIONS = {
  page_base: ['pageBase', 'int', 0, 1],
  unpaged_limit: ['unpagedLimit', 'int', 0, 1e9],
  deletion_days: ['deletionDays', 'int', 0, 36500],
  delete_expired: ['deleteExpired', 'switch'],
  strict_accept: ['strictAccept', 'switch'],
  strict_content_type: ['strictContentType', 'switch'],
  allow_mixed_sequences: ['allowMixedSequences', 'switch'],
};

function optionsView() {
  const o = {};
  for (const [name, [field]] of Object.entries(RUNTIME_OPTIONS)) o[name] = rt[field];
  return o;
}

/* setOptions serves POST /_control/options: checks every given switch first, then sets them all; unknown names are a 400. */
function setOptions(b) {
  const next = {};
  for (const [name, v] of Object.entries(b)) {
    const spec = RUNTIME_OPTIONS[name];
    if (!spec) throw badRequest(`unknown option ${name}; known: ${Object.keys(RUNTIME_OPTIONS).join(', ')}`);
    const [field, kind, min, max] = spec;
    if (kind === 'int') {
      if (!Number.isInteger(v) || v < min || v > max) throw badRequest(`${name} must be an integer from ${min} to ${max}`);
      next[field] = v;
    } else {
      next[field] = doubles.switchValue(v);
      if (next[field] === undefined) throw badRequest(`${name} must be true or false (or "on" or "off")`);
    }
  }
  Object.assign(rt, next);
  return optionsView();
}

function num(b, field, min, max) {
  const v = b[field];
  if (typeof v !== 'number' || !Number.isFinite(v) || v < min || v > max) throw badRequest(`${field} must be a number between ${min} and ${max}`);
  return v;
}

/* handleControl serves /_control/...: test-driven signer actions, faults, scripts, clocks, stats and reset. */
function handleControl(ctx, segs) {
  const m = ctx.method;
  const p = segs.join('/');
  const ok = (o = { ok: true }) => sendJson(ctx, 200, JSON.stringify(o));
  const body = () => {
    const b = jsonBody(ctx, {});
    if (!b || typeof b !== 'object' || Array.isArray(b)) throw badRequest('body must be a JSON object');
    return b;
  };

  if (m === 'GET' && (p === '' || p === 'health')) return ok({ ok: true, port: server.address().port });
  if (m === 'POST' && p === 'reset') { reset(); return ok(); }
  if (m === 'GET' && p === 'clock') return ok(clockView());
  if (m === 'POST' && p === 'clock') return ok(setClock(body()));
  if (m === 'GET' && p === 'stats') {
    return ok(Object.assign({}, stats, { callbacks: Object.assign({}, stats.callbacks, { paused: rt.cbPaused }) }));
  }
  if (m === 'GET' && p === 'requests') {
    const custom = ctx.query.get('custom');
    const list = [];
    for (const sr of state.srs.values()) if (custom === null || sr.custom === custom) list.push(controlSrView(sr));
    return ok(list);
  }
  if (m === 'GET' && p === 'callbacks') {
    const out = [];
    for (const sr of state.srs.values()) for (const c of sr.callbacks) out.push(callbackView(c));
    return ok(out);
  }
  if (m === 'GET' && p === 'options') return ok(optionsView());
  if (m === 'POST' && p === 'options') return ok(setOptions(body()));
  if (m === 'GET' && p === 'faults') return ok(faultsView());
  if (m === 'POST' && p === 'faults') { setFaults(body()); return ok(faultsView()); }
  if (m === 'GET' && p === 'script') return ok(scriptsView());
  if (m === 'POST' && p === 'script') return ok(setScript(body()));
  if (m === 'POST' && p === 'latency') { rt.latencyMs = num(body(), 'ms', 0, 3600000); return ok({ ms: rt.latencyMs }); }
  if (m === 'POST' && p === 'token-ttl') { rt.tokenTtl = Math.floor(num(body(), 'seconds', 1, 31536000)); return ok({ seconds: rt.tokenTtl }); }
  if (m === 'POST' && p === 'expire-tokens') { tokenGen++; tokenCache.clear(); return ok(); }
  if (m === 'POST' && p === 'remind-window') { rt.remindWindowMs = num(body(), 'ms', 0, 864e5 * 365); return ok({ ms: rt.remindWindowMs }); }
  if (m === 'POST' && p === 'callback-config') {
    const b = body();
    if (b.retry_interval_ms !== undefined) rt.cbRetryInterval = num(b, 'retry_interval_ms', 0, 864e5);
    if (b.max_attempts !== undefined) rt.cbMaxAttempts = Math.floor(num(b, 'max_attempts', 1, 1e6));
    return ok({ retry_interval_ms: rt.cbRetryInterval, max_attempts: rt.cbMaxAttempts });
  }
  if (p === 'known-accounts') {
    if (m === 'POST') {
      const b = body();
      if (!Array.isArray(b.emails) || !b.emails.every((e) => typeof e === 'string')) throw badRequest('emails must be an array of strings');
      if (!b.add) state.knownAccounts.clear();
      for (const e of b.emails) state.knownAccounts.add(e.toLowerCase());
    }
    if (m === 'POST' || m === 'GET') return ok({ emails: Array.from(state.knownAccounts) });
  }
  if (m === 'POST' && p === 'features') {
    const b = body();
    if (b.expires_at !== undefined) state.features.expires_at = !!b.expires_at;
    return ok(state.features);
  }
  if (m === 'POST' && p === 'pause-callbacks') { rt.cbPaused = true; return ok({ paused: true }); }
  if (m === 'POST' && p === 'resume-callbacks') { resumeCallbacks(); return ok({ paused: false }); }
  if (m === 'POST' && p === 'save') {
    if (!cfg['state-file']) throw badRequest('no --state-file configured');
    saveState();
    return ok({ saved: cfg['state-file'] });
  }

  if (segs[0] === 'signature-requests' && segs.length >= 2) {
    const sr = getSrOr404(segs[1]);
    if (segs.length === 2 && m === 'GET') return ok(controlSrView(sr));
    if (segs.length === 3 && m === 'POST' && (segs[2] === 'expire' || segs[2] === 'error')) {
      if (sr.status_overall !== 'OPEN') throw conflict(`SignatureRequest is ${sr.status_overall}`);
      sr.status_overall = segs[2] === 'expire' ? 'EXPIRED' : 'ERROR';
      addEvent(sr, sr.status_overall, sr.owner);
      touch(sr);
      enqueueCallback(sr, 'ERROR', null);
      return sendJson(ctx, 200, srJson(sr));
    }
    if (segs.length === 5 && segs[2] === 'signatures' && m === 'POST') {
      const sig = findSignature(sr, segs[3]);
      const b = body();
      const now = isoNow();
      if (segs[4] === 'view') signerView(sr, sig, now);
      else if (segs[4] === 'sign') signerSign(sr, sig, now, b);
      else if (segs[4] === 'decline') signerDecline(sr, sig, now, b);
      else throw new ApiError(404, 'problem-with-message', `unknown signer action ${segs[4]}`);
      return sendJson(ctx, 200, srJson(sr));
    }
  }
  throw new ApiError(404, 'problem-with-message', `No control endpoint ${m} /_control/${p}`);
}

/* ------------------------------------------------------------------ */
/* State file                                                          */
/* ------------------------------------------------------------------ */

function saveState() {
  const file = cfg['state-file'];
  if (!file) return;
  const data = {
    version: 1, jwt_secret: jwtSecret.toString('base64'), token_gen: tokenGen, sr_seq: srSeq, clock_offset_ms: clockOffsetMs,
    known_accounts: Array.from(state.knownAccounts), features: state.features,
    signature_requests: Array.from(state.srs.values(), (sr) => ({ ...sr, rt: undefined })),
    documents: Array.from(state.docs.values(), (d) => ({ ...d, content: d.content.toString('base64'), sha256: undefined })),
  };
  fs.writeFileSync(file + '.tmp', JSON.stringify(data));
  fs.renameSync(file + '.tmp', file);
}

function loadState() {
  const file = cfg['state-file'];
  if (!file || !fs.existsSync(file)) return;
  const data = JSON.parse(fs.readFileSync(file, 'utf8'));
  jwtSecret = Buffer.from(data.jwt_secret, 'base64');
  tokenGen = data.token_gen | 0;
  srSeq = data.sr_seq | 0;
  /* the clock ran on while the double was down; an explicit --clock wins */
  if (cfg.clock === '' && Number.isFinite(data.clock_offset_ms)) startClockOffsetMs = clockOffsetMs = data.clock_offset_ms;
  for (const e of data.known_accounts || []) state.knownAccounts.add(e);
  Object.assign(state.features, data.features || {});
  for (const d of data.documents || []) state.docs.set(d.id, { ...d, content: Buffer.from(d.content, 'base64') });
  for (const s of data.signature_requests || []) {
    const sr = { ...s, rt: newRt() };
    sr.rt.cbOpen = sr.callbacks.filter((c) => c.state === 'OPEN').length;
    stats.callbacks.pending += sr.rt.cbOpen;
    state.srs.set(sr.id, sr);
    if (sr.rt.cbOpen) state.pendingCb.add(sr.id);
  }
}

/* ------------------------------------------------------------------ */
/* Start and stop                                                      */
/* ------------------------------------------------------------------ */

try {
  loadState();
} catch (e) {
  fail(`cannot load state file ${cfg['state-file']}: ${e.message}`);
}

const server = doubles.createServer(onRequest, conns, () => stats);

server.listen(cfg.port, '127.0.0.1', () => {
  process.stdout.write(`LISTENING ${server.address().port}\n`);
  resumeCallbacks();
});
server.on('error', (e) => fail(`cannot listen: ${e.message}`));

/* shutdown saves the state (if asked), closes every connection and exits 0. */
function shutdown() {
  if (shuttingDown) return;
  shuttingDown = true;
  try {
    saveState();
  } catch (e) {
    process.stderr.write(`skribble_double: cannot save state: ${e.message}\n`);
  }
  for (const sr of state.srs.values()) if (sr.rt.cbTimer) clearTimeout(sr.rt.cbTimer);
  for (const t of heldTimers) clearTimeout(t);
  cbAgents['http:'].destroy();
  cbAgents['https:'].destroy();
  doubles.closeAndExit(server);
}
doubles.onSignals('skribble_double', shutdown);
