#!/usr/bin/env node
'use strict';
/*
 * test/yousign_double/server.js
 *
 * An in-memory test double of the Yousign API v3 for qes_sign's tests: a
 * static Bearer API key, signature requests built step by step (create a
 * draft, upload documents as multipart/form-data, add signers with signature
 * fields or Smart Anchors, activate), signed webhooks with retries, rate
 * limits, and, under /_control, signer actions, faults, scripts, a clock and
 * statistics.  Node 20, standard library only.  See README.md beside it.
 *
 * Sources are cited with the tags of /work/shared/reference/yousign-v3/README.md:
 * [OAS] = Yousign's OpenAPI file, D/x = developers.yousign.com/docs/x,
 * R/x = developers.yousign.com/reference/x.  Where that summary marks a
 * point as conflicting or unconfirmed, the double has a switch (OPTIONS,
 * "switches"), settable at start and through POST /_control/options.
 */

const http = require('node:http');
const https = require('node:https');
const crypto = require('node:crypto');
const zlib = require('node:zlib');
const doubles = require('../lib/doubles');

/* ------------------------------------------------------------------ */
/* Configuration                                                       */
/* ------------------------------------------------------------------ */

/*
 * OPTIONS: every option, as --name value, --name=value or the environment
 * variable YOUSIGN_DOUBLE_<NAME>.  Options with `runtime: true` are the
 * switches: they can also be read and changed through /_control/options
 * (JSON name: the option name with _ for -).
 */
const OPTIONS = {
  'port': { def: 0, type: 'int', help: 'TCP port on 127.0.0.1; 0 picks a free one' },
  'api-key': { def: 'test-key', type: 'str', help: 'the accepted API key (Authorization: Bearer <key>)' },
  'sandbox': { def: false, type: 'switch', help: 'sandbox environment: rate limits 30/min + 200/h unless given, webhooks carry sandbox: true' },
  'rate-per-minute': { def: null, type: 'int', runtime: true, help: 'requests per minute (default 60, sandbox 30; 0 = no limit)' },
  'rate-per-hour': { def: null, type: 'int', runtime: true, help: 'requests per hour (default 1200, sandbox 200; 0 = no limit)' },
  'rate-per-second': { def: 0, type: 'int', runtime: true, help: 'requests per second (0 = no limit; no figure is documented)' },
  'rate-limit-message': { def: 'API rate limit exceeded', type: 'str', runtime: true, help: 'message of the 429 body' },
  'latency-ms': { def: 0, type: 'int', runtime: true, help: 'delay added to every /v3 answer' },
  'max-body-bytes': { def: 60 * 1024 * 1024, type: 'int', help: 'largest request body read (the file limit is 50 MB)' },
  'seed': { def: 1, type: 'int', help: 'default seed of the fault-injection PRNGs' },
  'clock': { def: '', type: 'str', help: 'ISO 8601 time where the double\'s clock starts (default: the real time)' },
  'signing-base-url': { def: 'https://yousign.app', type: 'str', help: 'base of signature_link values' },
  'link-ttl-hours': { def: 48, type: 'int', runtime: true, help: 'signature_link lifetime in hours (1-72)' },
  'processing-ms': { def: 0, type: 'int', runtime: true, help: 'real ms a signer stays `processing` before `signed`' },
  'workspace-id': { def: '', type: 'str', help: 'the default workspace id (default: a random UUID)' },
  'webhook-url': { def: '', type: 'str', help: 'webhook endpoint; empty: no webhooks' },
  'webhook-secret': { def: '', type: 'str', help: 'webhook secret_key (empty: 32 random characters, see GET /_control/webhook)' },
  'webhook-events': { def: '*', type: 'str', help: 'subscribed events, comma separated, or *' },
  'webhook-description': { def: 'qes_sign test double', type: 'str', help: 'subscription_description of the events' },
  'webhook-auto-retry': { def: true, type: 'switch', runtime: true, help: 'retry failed deliveries on the retry schedule' },
  'webhook-retry-schedule-ms': { def: '120000,360000,1800000,3600000,18000000,64800000,86400000,172800000', type: 'str', runtime: true, help: 'delays before retries 1..n in ms (Yousign: 2 min ... 2 days)' },
  'webhook-first-timeout-ms': { def: 1000, type: 'int', runtime: true, help: 'time allowed for the first delivery attempt' },
  'webhook-retry-timeout-ms': { def: 10000, type: 'int', runtime: true, help: 'time allowed for a retry' },
  /* switches for what the documentation leaves open (README: "Switches") */
  'pdf-min-version': { def: '1.6', type: 'enum', values: ['any', '1.0', '1.1', '1.2', '1.3', '1.4', '1.5', '1.6', '1.7', '2.0'], runtime: true, help: 'lowest PDF version accepted (any: every version)' },
  'qes-order-check': { def: 'signer', type: 'enum', values: ['signer', 'activate'], runtime: true, help: 'where ordered_signers: true and "all signers QES" are checked' },
  'qes-phone': { def: 'required', type: 'enum', values: ['required', 'optional'], runtime: true, help: 'whether a QES signer needs info.phone_number' },
  'qes-enabled': { def: true, type: 'switch', runtime: true, help: 'the QES add-on is enabled (off: a QES signer gets 403)' },
  'ordered-link': { def: 'null', type: 'enum', values: ['null', 'present'], runtime: true, help: 'signature_link of signers not yet notified in an ordered flow' },
  'ended-signer-status': { def: 'aborted', type: 'enum', values: ['aborted', 'unchanged'], runtime: true, help: 'status of unsigned signers once the request ended' },
  'qes-audit-trail': { def: 'available', type: 'enum', values: ['available', 'never'], runtime: true, help: 'whether QES requests ever have an audit trail' },
  'audit-trail-delay-ms': { def: 3000, type: 'int', runtime: true, help: 'audit trails are audit_trail.not_ready_for_download until this long (double\'s clock) after done / signed' },
  'list-order': { def: 'newest', type: 'enum', values: ['newest', 'oldest'], runtime: true, help: 'order of GET /signature_requests' },
  'wrong-status-type': { def: 'about:blank', type: 'str', runtime: true, help: 'error type of a 400 for an action the status does not allow' },
  'validation-type': { def: 'split', type: 'enum', values: ['split', 'validation.error', 'parameters_not_valid'], runtime: true, help: 'type of 400s with invalid_params (split: bodies validation.error, query parameters_not_valid)' },
  'time-format': { def: 'offset', type: 'enum', values: ['offset', 'z'], runtime: true, help: 'date-times as 2025-01-10T16:59:20+00:00 (offset) or ...Z (z)' },
  'webhook-body': { def: 'flat', type: 'enum', values: ['flat', 'metadata'], runtime: true, help: 'event fields at the top (flat) or under metadata' },
  'webhook-retry-header': { def: 'retry', type: 'enum', values: ['retry', 'retry-count', 'both'], runtime: true, help: 'X-Yousign-Retry, X-Yousign-Retry-Count or both' },
  'webhook-issued-at': { def: 'unix', type: 'enum', values: ['unix', 'iso', 'off'], runtime: true, help: 'format of X-Yousign-Issued-At' },
  'webhook-order': { def: 'serial', type: 'enum', values: ['serial', 'shuffle'], runtime: true, help: 'serial: one delivery at a time in event order; shuffle: concurrent, random delays' },
  'webhook-shuffle-ms': { def: 200, type: 'int', runtime: true, help: 'largest random delay of a first attempt with webhook-order shuffle' },
  'webhook-redirects': { def: 'follow', type: 'enum', values: ['follow', 'success'], runtime: true, help: 'follow up to 2 redirects, or take a 3xx as delivered' },
  'reminder-min-interval-ms': { def: 0, type: 'int', runtime: true, help: 'send_reminder again for a signer within this time gets 429 (0: no cap)' },
  'verbose': { def: false, type: 'bool', help: 'log every request to stderr' },
};

/* parseOptions reads YOUSIGN_DOUBLE_<NAME> environment variables, then --name value / --name=value flags. */
function parseOptions(argv, env) {
  const out = doubles.parseOptions(argv, env, OPTIONS, { envPrefix: 'YOUSIGN_DOUBLE_', fail });
  /* [D/limits-new] production 60/min + 1200/h, sandbox 30/min + 200/h */
  if (out['rate-per-minute'] === null) out['rate-per-minute'] = out.sandbox ? 30 : 60;
  if (out['rate-per-hour'] === null) out['rate-per-hour'] = out.sandbox ? 200 : 1200;
  if (out.clock !== '' && parseIsoTime(out.clock) === null) fail(`--clock needs an ISO 8601 time like 2026-03-19T08:15:00Z, got ${out.clock}`);
  const bad = checkRuntimeValue('link_ttl_hours', out['link-ttl-hours']) || checkRuntimeValue('webhook_retry_schedule_ms', out['webhook-retry-schedule-ms']);
  if (bad) fail(bad);
  return out;
}

/* checkRuntimeValue returns an error text for a bad value of the few options with extra rules, else null. */
function checkRuntimeValue(jsonName, v) {
  if (jsonName === 'link_ttl_hours' && (v < 1 || v > 72)) return `link_ttl_hours must be between 1 and 72, got ${v}`;
  if (jsonName === 'webhook_retry_schedule_ms' && parseSchedule(v) === null) return `webhook_retry_schedule_ms must be a comma-separated list of non-negative integers, got ${v}`;
  return null;
}

function parseSchedule(s) {
  if (String(s).trim() === '') return [];
  const parts = String(s).split(',').map((x) => x.trim());
  if (!parts.every((x) => /^\d+$/.test(x))) return null;
  return parts.map(Number);
}

const { parseIsoTime } = doubles;
const fail = doubles.makeFail('yousign_double');

const cfg = parseOptions(process.argv.slice(2), process.env);
const jsonName = (n) => n.replace(/-/g, '_');
const RUNTIME = Object.fromEntries(Object.entries(OPTIONS).filter(([, s]) => s.runtime).map(([n, s]) => [jsonName(n), { name: n, spec: s }]));

/* ------------------------------------------------------------------ */
/* Constants from the documentation                                    */
/* ------------------------------------------------------------------ */

const BASE = '/v3';                                   /* [OAS servers] .../v3 */
const SR_STATUSES = ['draft', 'approval', 'rejected', 'ongoing', 'done', 'declined', 'expired', 'canceled', 'deleted', 'paused'];  /* [OAS, D/signature-request-2] */
const DELIVERY_MODES = ['email', 'none'];             /* [OAS] create */
const LOCALES = ['en', 'fr', 'de', 'it', 'nl', 'es', 'pl'];   /* [OAS] signer info.locale */
const SIGNATURE_LEVELS = ['electronic_signature', 'advanced_electronic_signature', 'qualified_electronic_signature'];  /* [OAS] */
const QES = 'qualified_electronic_signature';
const AUTH_MODES = ['otp_email', 'otp_sms', 'no_otp'];  /* [OAS] signature_authentication_mode, or null */
const NATURES = ['signable_document', 'attachment'];  /* [D/document-1] */
const CANCEL_REASONS = ['contractualization_aborted', 'errors_in_document', 'other'];  /* [OAS] cancel */
const REMINDER_INTERVALS = [1, 2, 7, 14];             /* [OAS] reminder_settings.interval_in_days */
const EXTERNAL_ID_RE = /^[\w\-@.%+]+$/;               /* [OAS] external_id pattern */
const E164_RE = /^\+[1-9]\d{1,14}$/;                  /* [OAS] phone_number "E.164 format" */
const EMAIL_RE = /^[^\s@]+@[^\s@]+\.[^\s@]+$/;
const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
/*
 * [OAS HumanName]: Latin letters with accents, digits, space and - ' ` ( ),
 * no space at either end; "Dr. Müller" is refused for its dot.  The letter
 * ranges are Latin-1 (À-ÿ without × and ÷) and Latin Extended-A.
 */
const HUMAN_NAME_RE = /^[A-Za-z0-9\u00C0-\u00D6\u00D8-\u00F6\u00F8-\u017F \-'`()]+$/;
const FILE_MAX = 50 * 1024 * 1024;                    /* [D/document-1] 50 MB */
const DOCS_MAX = 50;                                  /* [D/document-1] 50 documents */
const WEBHOOK_EVENTS = [                              /* [OAS WebhookSubscribedEvents], the ones the double sends */
  'signature_request.activated', 'signature_request.done', 'signature_request.declined', 'signature_request.canceled',
  'signature_request.expired', 'signature_request.deleted', 'signature_request.permanently_deleted',
  'signature_request.reactivated', 'signature_request.reminder_executed',
  'signer.notified', 'signer.link_opened', 'signer.done', 'signer.declined', 'signer.error',
  'signer.identification_succeeded', 'signer.identification_failed', 'signer.identification_blocked',
];
const QES_SIGN_WINDOW_MS = 30 * 60 * 1000;           /* [D/specificities-of-the-qes-level] 30 min to sign after identification */

/* ------------------------------------------------------------------ */
/* Errors                                                              */
/* ------------------------------------------------------------------ */

/* ApiError carries a status, a JSON body and extra headers to the dispatcher. */
class ApiError extends Error {
  constructor(status, body, headers = {}) {
    super(body.detail || body.message || String(status));
    this.status = status;
    this.body = body;
    this.headers = headers;
  }
}
/* [R/errors-1, R/list-of-errors, OAS]: 4xx bodies are {"type", "detail"} */
const problem = (status, type, detail, extra = {}) => new ApiError(status, Object.assign({ type, detail }, extra));
const notFound = (what) => problem(404, 'resource.not_found', `${what} not found.`);   /* [R/list-of-errors] */
/* The type of a 400 for an action the status does not allow is unconfirmed: --wrong-status-type (default about:blank). */
const wrongStatus = (detail) => problem(400, rt.o.wrong_status_type, detail);
const conflict = (detail) => new ApiError(409, { type: 'double.conflict', detail });   /* control endpoints only */
const badControl = (detail) => new ApiError(400, { type: 'double.bad_request', detail });

/*
 * validationError: [R/errors-1, OAS] 400 with invalid_params [{name, reason}]
 * for validation.error / parameters_not_valid.  Which of the two a body or
 * a query parameter gets is not documented: --validation-type split
 * (default) gives bodies validation.error and query parameters
 * parameters_not_valid; the other values use one type for both.
 */
function validationError(where, params) {
  const vt = rt.o.validation_type;
  const type = vt !== 'split' ? vt : where === 'query' ? 'parameters_not_valid' : 'validation.error';
  return problem(400, type, 'Some parameters are not valid.', { invalid_params: params });
}

/* Issues collects invalid parameters of one request and throws them together. */
class Issues {
  constructor(where) {
    this.where = where;
    this.list = [];
  }
  add(name, reason) {
    this.list.push({ name, reason });
    return false;
  }
  done() {
    if (this.list.length) throw validationError(this.where, this.list);
  }
}

/* ------------------------------------------------------------------ */
/* Clock, ids, small helpers                                           */
/* ------------------------------------------------------------------ */

/*
 * The double's clock: real time shifted by clockOffsetMs (--clock, POST
 * /_control/clock).  Every time in answers and webhooks, expiration,
 * reminders, audit-trail readiness and the rate-limit windows use it;
 * delivery pacing, latency and timeouts stay in real time.
 */
const startClockOffsetMs = cfg.clock === '' ? 0 : parseIsoTime(cfg.clock) - Date.now();
let clockOffsetMs = startClockOffsetMs;
const clockNow = () => Date.now() + clockOffsetMs;

/*
 * fmtTime renders a date-time.  D/create-your-first-signature-request shows
 * "2025-01-10T16:59:20+00:00", the [OAS] examples use Z: --time-format
 * offset (default) or z.  Seconds only, UTC.
 */
function fmtTime(ms) {
  if (ms === null || ms === undefined) return null;
  const s = new Date(ms).toISOString().slice(0, 19);
  return rt.o.time_format === 'z' ? s + 'Z' : s + '+00:00';
}

const uuid = () => crypto.randomUUID();
const { sha256hex, sleep } = doubles;
const isObj = (v) => v !== null && typeof v === 'object' && !Array.isArray(v);

const { mulberry32 } = doubles;   /* the seedable PRNG of fault injection */

/* Time zones: [OAS] timezone is a tz name (default Europe/Paris). */
const dtfCache = new Map();
function tzValid(tz) {
  try {
    new Intl.DateTimeFormat('en-US', { timeZone: tz });
    return true;
  } catch {
    return false;
  }
}
function tzParts(ms, tz) {
  let f = dtfCache.get(tz);
  if (!f) {
    f = new Intl.DateTimeFormat('en-US', { timeZone: tz, hourCycle: 'h23', year: 'numeric', month: '2-digit', day: '2-digit', hour: '2-digit', minute: '2-digit', second: '2-digit' });
    dtfCache.set(tz, f);
  }
  const p = {};
  for (const x of f.formatToParts(new Date(ms))) p[x.type] = x.value;
  return p;
}
/* tzOffsetMs: local time minus UTC at instant ms in zone tz. */
function tzOffsetMs(ms, tz) {
  const p = tzParts(ms, tz);
  return Date.UTC(+p.year, +p.month - 1, +p.day, +p.hour, +p.minute, +p.second) - Math.floor(ms / 1000) * 1000;
}
const localDate = (ms, tz) => {
  const p = tzParts(ms, tz);
  return `${p.year.padStart(4, '0')}-${p.month}-${p.day}`;
};
/* endOfDayMs: the instant of 23:59:59 local time on `day` in zone tz ([OAS] expiration_date "...T21:59:59+00:00" for Paris in summer). */
function endOfDayMs(day, tz) {
  const [y, m, d] = day.split('-').map(Number);
  const guess = Date.UTC(y, m - 1, d, 23, 59, 59);
  const t = guess - tzOffsetMs(guess, tz);
  return guess - tzOffsetMs(t, tz);
}
/* expiryMs: the end of a request's expiration day, cached per (day, zone). */
function expiryMs(sr) {
  const k = sr.expiration_day + '|' + sr.timezone;
  if (sr.expiry_key !== k) {
    sr.expiry_key = k;
    sr.expiry_ms = endOfDayMs(sr.expiration_day, sr.timezone);
  }
  return sr.expiry_ms;
}
function validDay(s) {
  if (typeof s !== 'string' || !/^\d{4}-\d\d-\d\d$/.test(s)) return false;
  const [y, m, d] = s.split('-').map(Number);
  const t = new Date(Date.UTC(y, m - 1, d));
  return t.getUTCFullYear() === y && t.getUTCMonth() === m - 1 && t.getUTCDate() === d;
}
/* addMonths adds n months to yyyy-mm-dd, clamping the day to the month's end. */
function addMonths(day, n) {
  const [y, m, d] = day.split('-').map(Number);
  const tm = m - 1 + n;
  const ty = y + Math.floor(tm / 12);
  const mm = ((tm % 12) + 12) % 12;
  const last = new Date(Date.UTC(ty, mm + 1, 0)).getUTCDate();
  return `${String(ty).padStart(4, '0')}-${String(mm + 1).padStart(2, '0')}-${String(Math.min(d, last)).padStart(2, '0')}`;
}

/* ------------------------------------------------------------------ */
/* State                                                               */
/* ------------------------------------------------------------------ */

let generation = 0;          /* bumped on reset; late timers of an older generation do nothing */
let srSeq = 0;
let state;
let rt;
let stats;
let wh;
const heldTimers = new Set();
let shuttingDown = false;
const conns = { open: 0 };   /* open TCP connections */
const defaultWorkspace = cfg['workspace-id'] || uuid();

function freshState() {
  return {
    srs: new Map(),          /* id -> signature request; permanently deleted ones are removed */
    emails: [],              /* e-mails Yousign would send (delivery_mode email) */
  };
}

function freshRuntime() {
  const o = {};
  for (const [jn, { name }] of Object.entries(RUNTIME)) o[jn] = cfg[name];
  return {
    o,                               /* the switches and runtime options, by JSON name */
    faults: null,
    rng: mulberry32(cfg.seed),
    scripts: [],
    rate: { second: { win: -1, n: 0 }, minute: { win: -1, n: 0 }, hour: { win: -1, n: 0 } },
  };
}

function freshStats() {
  return {
    requests_created: 0,
    requests_activated: 0,
    created_by_external_id: {},
    activated_by_external_id: {},
    documents_uploaded: 0,
    signers_added: 0,
    calls: {},
    calls_by_status: {},
    total_calls: 0,
    rate_limited: 0,
    unauthorized: 0,
    faults_injected: { error: 0, rate_limit: 0, timeout: 0, delay: 0, drop_after_create: 0, drop_after_upload: 0, drop_after_signer: 0, drop_after_activate: 0 },
    scripted: 0,
    reminders_sent: 0,
    webhooks: { events: 0, attempts: 0, failed_attempts: 0, delivered: 0, given_up: 0, dropped: 0, duplicated: 0, pending: 0 },
    in_flight: 0,
    max_in_flight: 0,
    connections: conns.open,
    max_connections: conns.open,
  };
}

/* freshWebhooks: the one webhook subscription of the double ([OAS] POST /webhooks, configured by options or /_control/webhook). */
function freshWebhooks() {
  return {
    url: cfg['webhook-url'],
    /* [R/webhook-1] secret_key: 32 characters, generated when not given */
    secret: cfg['webhook-secret'] || crypto.randomBytes(24).toString('base64url').slice(0, 32),
    events: cfg['webhook-events'],
    description: cfg['webhook-description'],
    subscription_id: uuid(),
    enabled: true,
    paused: false,
    deliveries: [],
    pending: [],
    inFlight: 0,
    timer: null,
    faults: null,
    rng: mulberry32(cfg.seed),
  };
}

state = freshState();
rt = freshRuntime();
stats = freshStats();
wh = freshWebhooks();

/* ------------------------------------------------------------------ */
/* HTTP plumbing                                                       */
/* ------------------------------------------------------------------ */

const send = doubles.makeSend(clockNow);   /* the Date header from the double's clock; the rate-limit headers of ctx.rlHeaders */

function sendJson(ctx, status, obj, headers = {}) {
  const s = JSON.stringify(obj);
  send(ctx, status, Object.assign({ 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(s) }, headers), s);
}

function sendEmpty(ctx, status) {
  send(ctx, status, { 'Content-Length': 0 }, '');
}

function sendFile(ctx, contentType, filename, buf) {
  send(ctx, 200, {
    'Content-Type': contentType, 'Content-Length': buf.length,
    'Content-Disposition': `attachment; filename="${filename.replace(/["\\\r\n]/g, '_')}"`,
  }, buf);
}

/* readBody collects the request body up to max-body-bytes; beyond that it drains and reports overflow. */
const readBody = (req, cb) => doubles.readBody(req, cfg['max-body-bytes'], cb);

/*
 * jsonBody parses a JSON body.  An empty body is {}.  A body with a
 * Content-Type other than JSON is a 415 ([R/errors-1] lists 415; its body
 * {"type","detail"}); a body that is no JSON object is a 400.
 */
function jsonBody(ctx) {
  if (!ctx.body || ctx.body.length === 0) return {};
  const ct = String(ctx.req.headers['content-type'] || '').split(';')[0].trim().toLowerCase();
  if (ct !== 'application/json' && !/^application\/[\w.+-]*\+json$/.test(ct)) {
    throw problem(415, 'about:blank', `Unsupported Media Type: the body must be application/json, got ${ct || 'none'}.`);
  }
  let b;
  try {
    b = JSON.parse(ctx.body.toString('utf8'));
  } catch (e) {
    throw problem(400, 'about:blank', `The body is not valid JSON: ${e.message}`);
  }
  if (!isObj(b)) throw problem(400, 'about:blank', 'The body must be a JSON object.');
  return b;
}

/* ------------------------------------------------------------------ */
/* Routing                                                             */
/* ------------------------------------------------------------------ */

const SR = '/v3/signature_requests/{signatureRequestId}';
const ROUTES = doubles.compileRoutes([
  ['GET', '/v3/signature_requests', hListSR],
  ['POST', '/v3/signature_requests', hCreateSR, { drop: 'create' }],
  ['GET', SR, hGetSR],
  ['PATCH', SR, hPatchSR],
  ['DELETE', SR, hDeleteSR],
  ['POST', SR + '/activate', hActivate, { drop: 'activate' }],
  ['POST', SR + '/cancel', hCancel],
  ['POST', SR + '/reactivate', hReactivate],
  ['GET', SR + '/documents', hListDocs],
  ['POST', SR + '/documents', hUpload, { drop: 'upload', multipart: true }],
  ['GET', SR + '/documents/download', hDownloadDocs],
  ['GET', SR + '/documents/{documentId}', hGetDoc],
  ['DELETE', SR + '/documents/{documentId}', hDeleteDoc],
  ['GET', SR + '/documents/{documentId}/download', hDownloadDoc],
  ['GET', SR + '/signers', hListSigners],
  ['POST', SR + '/signers', hAddSigner, { drop: 'signer' }],
  ['GET', SR + '/signers/{signerId}', hGetSigner],
  ['DELETE', SR + '/signers/{signerId}', hDeleteSigner],
  ['POST', SR + '/signers/{signerId}/send_reminder', hRemind],
  ['POST', SR + '/signers/{signerId}/unblock_identification', hUnblock],
  ['GET', SR + '/signers/{signerId}/audit_trails/download', hSignerAuditTrail],
  ['GET', SR + '/audit_trails/download', hAuditTrail],
]);

/* matchRoute finds the route of a path (literal segments before parameters); {route, params} or {pathKnown}. */
const matchRoute = (method, segs) => doubles.matchRoute(ROUTES, method, segs);
const { splitPath } = doubles;

function onRequest(req, res) {
  const ctx = doubles.newCtx(req, res, { rlHeaders: null });
  const path = ctx.path;
  if (cfg.verbose) doubles.logRequest(req, res);
  sweep();
  if (path === '/_control' || path.startsWith('/_control/')) {
    readBody(req, (body, over) => {
      if (over) return sendJson(ctx, 400, { type: 'double.bad_request', detail: 'body too large' });
      ctx.body = body;
      runHandler(ctx, () => handleControl(ctx, splitPath(path).slice(1)));
    });
    return;
  }
  handleApi(ctx);
}

/*
 * handleApi: count the call, read the body, latency, scripts, route (404 /
 * 405), the API key (401), the rate limits (429), faults, then the handler.
 */
function handleApi(ctx) {
  const { req, res } = ctx;
  const segs = splitPath(ctx.path);
  const m = matchRoute(req.method, segs);
  ctx.route = m.route || null;
  ctx.params = m.params || {};
  ctx.key = m.route ? m.route.key : `${req.method} (unmatched)`;
  const key = ctx.key;
  stats.total_calls++;
  stats.calls[key] = (stats.calls[key] || 0) + 1;
  stats.in_flight++;
  if (stats.in_flight > stats.max_in_flight) stats.max_in_flight = stats.in_flight;
  const gen = generation;
  let counted = false;
  const countStatus = (st) => {
    if (counted || gen !== generation) return;
    counted = true;
    stats.in_flight--;
    const by = stats.calls_by_status[key] || (stats.calls_by_status[key] = {});
    by[st] = (by[st] || 0) + 1;
  };
  res.on('finish', () => countStatus(String(res.statusCode)));
  res.on('close', () => countStatus('dropped'));

  readBody(req, (body, over) => runHandler(ctx, async () => {
    ctx.body = body;
    if (rt.o.latency_ms > 0) await sleep(rt.o.latency_ms);
    const script = takeScript(ctx);
    if (script) return sendScripted(ctx, script);
    if (!ctx.route) {
      /* [R/errors-1] 405 body {"message"} */
      if (m.pathKnown) throw new ApiError(405, { message: `Method ${req.method} not allowed.` });
      throw problem(404, 'about:blank', `No route matches ${req.method} ${ctx.path}.`);
    }
    authenticate(ctx);
    rateLimit(ctx);
    ctx.faultEligible = faultEligible(ctx);
    if (ctx.faultEligible) {
      const fault = drawFault();
      if (fault === 'delay') {
        stats.faults_injected.delay++;
        await sleep(rt.faults.delay_ms);
      } else if (fault) {
        return injectFault(ctx, fault);
      }
    }
    if (over) {
      if (ctx.route.opts.multipart) throw validationError('body', [{ name: 'file', reason: `The file must not exceed ${FILE_MAX} bytes.` }]);
      throw problem(400, 'about:blank', 'The request body is too large.');
    }
    return ctx.route.handler(ctx);
  }));
}

/* runHandler runs a (sync or async) handler and renders thrown ApiErrors. */
function runHandler(ctx, fn) {
  doubles.runGuarded(fn, (e) => {
    if (e instanceof ApiError) return sendJson(ctx, e.status, e.body, e.headers);
    process.stderr.write(`yousign_double: internal error on ${ctx.method} ${ctx.path}: ${e && e.stack}\n`);
    /* [R/errors-1] 500 {"type": "about:blank", "detail"} */
    sendJson(ctx, 500, { type: 'about:blank', detail: 'Internal Server Error' });
  });
}

/* authenticate: [OAS bearerAuth] a static API key as Authorization: Bearer <key>; no login, no expiry. Else 401 [R/errors-1]. */
function authenticate(ctx) {
  const h = ctx.req.headers.authorization;
  const m = h && /^Bearer\s+(\S+)\s*$/i.exec(h);
  if (!m || !safeEqual(m[1], cfg['api-key'])) {
    stats.unauthorized++;
    throw problem(401, 'about:blank', m ? 'The API key is not valid for this environment.' : 'An API key is required: Authorization: Bearer <key>.');
  }
}

const { safeEqual } = doubles;

/* ------------------------------------------------------------------ */
/* Rate limits                                                         */
/* ------------------------------------------------------------------ */

/*
 * rateLimit: [D/limits-new] per-minute and per-hour budgets on all
 * endpoints (60/min + 1200/h, sandbox 30 + 200; --rate-per-minute,
 * --rate-per-hour), headers x-ratelimit-{limit,remaining}-{minute,hour};
 * [OAS components/headers] RateLimit-Limit, RateLimit-Remaining,
 * RateLimit-Reset (seconds) and Retry-After (seconds) on 429, whose body is
 * {"message"} (text unconfirmed: --rate-limit-message).  Windows are fixed
 * and aligned on the double's clock (a minute starts at :00); RateLimit-*
 * describe the window closest to exhaustion; a refused call does not use
 * budget.  These details are not documented (they are what a Kong-style
 * gateway, whose header names these are, does).  A per-second limit is not
 * documented (unconfirmed): --rate-per-second, default 0 = none.
 */
function rateLimit(ctx) {
  const now = clockNow();
  const lims = [['second', rt.o.rate_per_second, 1000], ['minute', rt.o.rate_per_minute, 60000], ['hour', rt.o.rate_per_hour, 3600000]]
    .filter(([, lim]) => lim > 0);
  if (!lims.length) return;
  const h = {};
  let exceeded = null;
  let tightest = null;
  for (const [name, lim, len] of lims) {
    const w = rt.rate[name];
    const win = Math.floor(now / len);
    if (w.win !== win) { w.win = win; w.n = 0; }
    const resetS = Math.max(1, Math.ceil(((win + 1) * len - now) / 1000));
    if (w.n >= lim && (!exceeded || resetS > exceeded.resetS)) exceeded = { name, lim, resetS };
  }
  if (!exceeded) for (const [name] of lims) rt.rate[name].n++;
  for (const [name, lim, len] of lims) {
    const w = rt.rate[name];
    const cap = name[0].toUpperCase() + name.slice(1);
    const remaining = Math.max(0, lim - w.n);
    h[`X-RateLimit-Limit-${cap}`] = String(lim);
    h[`X-RateLimit-Remaining-${cap}`] = String(remaining);
    const resetS = Math.max(1, Math.ceil(((w.win + 1) * len - now) / 1000));
    if (!tightest || remaining < tightest.remaining) tightest = { lim, remaining, resetS };
  }
  h['RateLimit-Limit'] = String(tightest.lim);
  h['RateLimit-Remaining'] = String(tightest.remaining);
  h['RateLimit-Reset'] = String(exceeded ? exceeded.resetS : tightest.resetS);
  ctx.rlHeaders = h;
  if (exceeded) {
    stats.rate_limited++;
    throw new ApiError(429, { message: rt.o.rate_limit_message }, { 'Retry-After': String(exceeded.resetS) });
  }
}

/* ------------------------------------------------------------------ */
/* Fault injection                                                     */
/* ------------------------------------------------------------------ */

function faultEligible(ctx) {
  const f = rt.faults;
  if (!f) return false;
  if (f.pathsRe) return doubles.pathsMatch(f.pathsRe, ctx);
  return true;
}

function drawFault() {
  const f = rt.faults;
  const r = rt.rng();
  let acc = 0;
  for (const [k, rate] of [['error', f.error_rate], ['rate_limit', f.rate_limit_rate], ['timeout', f.timeout_rate], ['delay', f.delay_rate]]) {
    acc += rate;
    if (r < acc) return k;
  }
  return null;
}

/* injectFault answers an injected error (body as [R/errors-1] for 5xx), a 429, or holds the call (timeout); the work is not done. */
function injectFault(ctx, kind) {
  const f = rt.faults;
  stats.faults_injected[kind]++;
  if (kind === 'error') {
    const st = f.error_status;
    return sendJson(ctx, st, { type: 'about:blank', detail: http.STATUS_CODES[st] || 'Error' });
  }
  if (kind === 'rate_limit') {
    return sendJson(ctx, 429, { message: rt.o.rate_limit_message }, { 'Retry-After': String(f.retry_after) });
  }
  doubles.holdAnswer(ctx, f.timeout_ms, heldTimers, () => sendJson(ctx, 504, { type: 'about:blank', detail: 'Gateway Timeout' }));
}

/*
 * dropAfterApply: after a create, upload, add-signer or activate was
 * applied, decide whether to cut the connection instead of answering (the
 * client's lost-answer handling).  True when it dropped.
 */
function dropAfterApply(ctx) {
  const kind = ctx.route.opts.drop;
  const f = rt.faults;
  if (!kind || !f || !ctx.faultEligible) return false;
  let drop = false;
  if (f[`drop_after_${kind}_count`] > 0) {
    f[`drop_after_${kind}_count`]--;
    drop = true;
  } else if (f[`drop_after_${kind}_rate`] > 0 && rt.rng() < f[`drop_after_${kind}_rate`]) {
    drop = true;
  }
  if (!drop) return false;
  stats.faults_injected[`drop_after_${kind}`]++;
  ctx.dropped = true;
  ctx.req.socket.destroy();
  return true;
}

const DROP_KINDS = ['create', 'upload', 'signer', 'activate'];

/* setFaults validates and installs a fault configuration; {} clears it. */
function setFaults(b) {
  if (Object.keys(b).length === 0) {
    rt.faults = null;
    return null;
  }
  const known = ['error_rate', 'error_status', 'rate_limit_rate', 'retry_after', 'timeout_rate', 'timeout_ms', 'delay_rate', 'delay_ms', 'paths', 'seed']
    .concat(...DROP_KINDS.map((k) => [`drop_after_${k}_rate`, `drop_after_${k}_count`]));
  for (const k of Object.keys(b)) if (!known.includes(k)) throw badControl(`unknown fault ${k}; known: ${known.join(', ')}`);
  const { rate, int } = doubles.faultReaders(b, badControl);
  const f = {
    error_rate: rate('error_rate'),
    error_status: int('error_status', 500, 400, 599),
    rate_limit_rate: rate('rate_limit_rate'),
    retry_after: int('retry_after', 1, 0, 86400),
    timeout_rate: rate('timeout_rate'),
    timeout_ms: int('timeout_ms', 60000, 0, 3600000),
    delay_rate: rate('delay_rate'),
    delay_ms: int('delay_ms', 1000, 0, 3600000),
    paths: b.paths == null ? null : String(b.paths),
    seed: int('seed', cfg.seed, -2147483648, 4294967295),
  };
  for (const k of DROP_KINDS) {
    f[`drop_after_${k}_rate`] = rate(`drop_after_${k}_rate`);
    f[`drop_after_${k}_count`] = int(`drop_after_${k}_count`, 0, 0, 1e9);
  }
  if (f.error_rate + f.rate_limit_rate + f.timeout_rate + f.delay_rate > 1) throw badControl('error_rate + rate_limit_rate + timeout_rate + delay_rate must not exceed 1');
  return doubles.installFaults(rt, f, badControl);
}

const faultsView = () => doubles.faultsView(rt);

/* ------------------------------------------------------------------ */
/* Scripted answers                                                    */
/* ------------------------------------------------------------------ */

/* setScript serves POST /_control/script: the next `times` matching /v3 calls get exactly this answer; {} clears. */
const { setScript, scriptsView, takeScript, sendScripted } = doubles.bindScripts(() => rt, () => stats, send, badControl);

/* ------------------------------------------------------------------ */
/* Views                                                               */
/* ------------------------------------------------------------------ */

/* srView: [OAS SignatureRequest] id, status, name, delivery_mode, created_at, activated_at, completed_at, expiration_date, source, signers[{id,status}], documents[{id,nature}], external_id, decline_information, ... */
function srView(sr) {
  return {
    id: sr.id,
    status: sr.status,
    name: sr.name,
    delivery_mode: sr.delivery_mode,
    created_at: fmtTime(sr.created_at),
    ordered_signers: sr.ordered_signers,
    reminder_settings: sr.reminder_settings,
    timezone: sr.timezone,
    /* [OAS] expiration_date: end of that day in the request's zone, e.g. ...T21:59:59+00:00 */
    expiration_date: fmtTime(expiryMs(sr)),
    source: 'public_api',
    signers: sr.signers.map((s) => ({ id: s.id, status: s.status })),
    approvers: [],
    documents: sr.documents.map((d) => ({ id: d.id, nature: d.nature })),
    external_id: sr.external_id,
    workspace_id: sr.workspace_id,
    audit_trail_locale: sr.audit_trail_locale,
    signers_allowed_to_decline: sr.signers_allowed_to_decline,
    email_notification: sr.email_notification,
    activated_at: fmtTime(sr.activated_at),
    completed_at: fmtTime(sr.completed_at),
    decline_information: sr.decline_information ? {
      signer_id: sr.decline_information.signer_id, reason: sr.decline_information.reason,
      declined_at: fmtTime(sr.decline_information.declined_at),
    } : null,
  };
}

/* signerFields: the signer's own fields plus the Smart Anchors s<n> of every document, n = the signer's position ([D/document-1] parse_anchors). */
function signerFields(sr, s) {
  const n = sr.signers.indexOf(s) + 1;
  const out = s.fields.slice();
  for (const d of sr.documents) {
    for (const a of d.anchors) {
      if (a.signer === n && a.type === 'signature') {
        out.push({ id: a.field_id, document_id: d.id, type: 'signature', page: a.page, x: a.x, y: a.y, width: a.width, height: a.height });
      }
    }
  }
  return out;
}

/* signerView: [OAS Signer] id, info, status, fields, signature_level, signature_link, signature_link_expiration_date, signed_at, ... */
function signerView(sr, s) {
  return {
    id: s.id,
    info: Object.assign({}, s.info),
    status: s.status,
    fields: signerFields(sr, s),
    signature_level: s.signature_level,
    signature_authentication_mode: s.signature_authentication_mode,
    signature_link: s.link,
    signature_link_expiration_date: fmtTime(s.link_exp),
    signed_at: fmtTime(s.signed_at),
    delivery_mode: s.delivery_mode,
    redirect_urls: s.redirect_urls,
    custom_text: s.custom_text,
  };
}

/* docView: [D/document-1] id, filename, nature, content_type, sha256, total_pages, total_anchors, ... */
function docView(d) {
  return {
    id: d.id, filename: d.filename, nature: d.nature, content_type: d.content_type, sha256: d.sha256,
    total_pages: d.total_pages, total_anchors: d.anchors.length, created_at: fmtTime(d.created_at),
  };
}

/* activatedView: [OAS SignatureRequestActivated] the request, its signers carrying signature_link and its expiration. */
function activatedView(sr) {
  return Object.assign(srView(sr), {
    signers: sr.signers.map((s) => ({ id: s.id, status: s.status, signature_link: s.link, signature_link_expiration_date: fmtTime(s.link_exp) })),
  });
}

function getSr(id) {
  const sr = state.srs.get(id);
  if (!sr) throw notFound('Signature Request');   /* [R/list-of-errors] 404 resource.not_found */
  return sr;
}

function getSigner(sr, id) {
  const s = sr.signers.find((x) => x.id === id);
  if (!s) throw notFound('Signer');
  return s;
}

function getDoc(sr, id) {
  const d = sr.documents.find((x) => x.id === id);
  if (!d) throw notFound('Document');
  return d;
}

function addEvent(sr, name, extra = {}) {
  sr.events.push(Object.assign({ name, time: fmtTime(clockNow()) }, extra));
}

/* requireDraft: [D/document-1, D/signer-1] documents and signers change only while draft. */
function requireDraft(sr, what) {
  if (sr.status !== 'draft') throw wrongStatus(`${what} is only possible while the Signature Request is draft; it is ${sr.status}.`);
}

/* ------------------------------------------------------------------ */
/* Signature requests: create, read, list, update                     */
/* ------------------------------------------------------------------ */

const CREATE_KEYS = ['name', 'delivery_mode', 'ordered_signers', 'timezone', 'expiration_date', 'external_id', 'reminder_settings',
  'signers_allowed_to_decline', 'audit_trail_locale', 'email_notification', 'workspace_id'];

/*
 * checkExpiration: [OAS] expiration_date yyyy-mm-dd, not in the past, at
 * most one year ahead (both on the double's clock, in the request's zone).
 */
function checkExpiration(iss, v, tz, name = 'expiration_date') {
  if (!validDay(v)) return iss.add(name, 'This value must be a date in the format yyyy-mm-dd.');
  const today = localDate(clockNow(), tz);
  if (v < today) return iss.add(name, 'This value must not be in the past.');
  if (v > addMonths(today, 12)) return iss.add(name, 'This value must be at most one year from today.');
  return true;
}

/* checkRequestFields validates the fields shared by create and PATCH ([OAS] create / update Signature Request). */
function checkRequestFields(b, iss, isCreate) {
  const v = {};
  if (isCreate || b.name !== undefined) {
    /* [OAS] name required, 1-128 */
    if (typeof b.name !== 'string' || b.name.trim() === '') iss.add('name', 'This value should not be blank.');
    else if (b.name.length > 128) iss.add('name', 'This value is too long. It should have 128 characters or less.');
    else v.name = b.name;
  }
  if (isCreate || b.delivery_mode !== undefined) {
    /* [OAS] delivery_mode required: email | none */
    if (!DELIVERY_MODES.includes(b.delivery_mode)) iss.add('delivery_mode', `This value should be one of: ${DELIVERY_MODES.join(', ')}.`);
    else v.delivery_mode = b.delivery_mode;
  }
  if (b.ordered_signers !== undefined) {
    if (typeof b.ordered_signers !== 'boolean') iss.add('ordered_signers', 'This value should be of type boolean.');
    else v.ordered_signers = b.ordered_signers;
  }
  if (b.timezone !== undefined) {
    /* [OAS] timezone: a tz name, default Europe/Paris */
    if (typeof b.timezone !== 'string' || !tzValid(b.timezone)) iss.add('timezone', 'This value is not a valid timezone.');
    else v.timezone = b.timezone;
  }
  if (b.external_id !== undefined && b.external_id !== null) {
    /* [OAS] external_id <= 255, pattern ^[\w\-@.%+]+$ */
    if (typeof b.external_id !== 'string') iss.add('external_id', 'This value should be of type string.');
    else if (b.external_id.length > 255) iss.add('external_id', 'This value is too long. It should have 255 characters or less.');
    else if (!EXTERNAL_ID_RE.test(b.external_id)) iss.add('external_id', 'This value should match ^[\\w\\-@.%+]+$.');
    else v.external_id = b.external_id;
  } else if (b.external_id === null) {
    v.external_id = null;
  }
  if (b.reminder_settings !== undefined) {
    /* [OAS] reminder_settings: {interval_in_days in 1/2/7/14, max_occurrences 1-10} or null */
    const r = b.reminder_settings;
    if (r === null) v.reminder_settings = null;
    else if (!isObj(r)) iss.add('reminder_settings', 'This value should be an object or null.');
    else {
      let ok = true;
      for (const k of Object.keys(r)) if (k !== 'interval_in_days' && k !== 'max_occurrences') ok = iss.add(`reminder_settings.${k}`, 'This field was not expected.');
      if (!REMINDER_INTERVALS.includes(r.interval_in_days)) ok = iss.add('reminder_settings.interval_in_days', `This value should be one of: ${REMINDER_INTERVALS.join(', ')}.`);
      if (!Number.isInteger(r.max_occurrences) || r.max_occurrences < 1 || r.max_occurrences > 10) ok = iss.add('reminder_settings.max_occurrences', 'This value should be between 1 and 10.');
      if (ok) v.reminder_settings = { interval_in_days: r.interval_in_days, max_occurrences: r.max_occurrences };
    }
  }
  if (b.signers_allowed_to_decline !== undefined) {
    if (typeof b.signers_allowed_to_decline !== 'boolean') iss.add('signers_allowed_to_decline', 'This value should be of type boolean.');
    else v.signers_allowed_to_decline = b.signers_allowed_to_decline;
  }
  if (b.audit_trail_locale !== undefined && b.audit_trail_locale !== null) {
    if (!LOCALES.includes(b.audit_trail_locale)) iss.add('audit_trail_locale', `This value should be one of: ${LOCALES.join(', ')}.`);
    else v.audit_trail_locale = b.audit_trail_locale;
  }
  if (b.email_notification !== undefined) {
    if (b.email_notification !== null && !isObj(b.email_notification)) iss.add('email_notification', 'This value should be an object or null.');
    else v.email_notification = b.email_notification;
  }
  if (b.workspace_id !== undefined) {
    if (typeof b.workspace_id !== 'string' || !UUID_RE.test(b.workspace_id)) iss.add('workspace_id', 'This value is not a valid UUID.');
    else v.workspace_id = b.workspace_id;
  }
  return v;
}

function hCreateSR(ctx) {
  const b = jsonBody(ctx);
  const iss = new Issues('body');
  /* [OAS] unknown keys rejected (additionalProperties: false) */
  for (const k of Object.keys(b)) if (!CREATE_KEYS.includes(k)) iss.add(k, 'This field was not expected.');
  const v = checkRequestFields(b, iss, true);
  const tz = v.timezone || 'Europe/Paris';
  let day = null;
  if (b.expiration_date !== undefined && b.expiration_date !== null) {
    if (checkExpiration(iss, b.expiration_date, tz)) day = b.expiration_date;
  }
  iss.done();
  const now = clockNow();
  const sr = {
    id: uuid(), seq: ++srSeq, status: 'draft', name: v.name, delivery_mode: v.delivery_mode,
    ordered_signers: v.ordered_signers === undefined ? false : v.ordered_signers,
    timezone: tz,
    /* [OAS] expiration_date default: six months */
    expiration_day: day || addMonths(localDate(now, tz), 6),
    external_id: v.external_id === undefined ? null : v.external_id,
    reminder_settings: v.reminder_settings === undefined ? null : v.reminder_settings,
    signers_allowed_to_decline: v.signers_allowed_to_decline === undefined ? false : v.signers_allowed_to_decline,
    audit_trail_locale: v.audit_trail_locale || null,
    email_notification: v.email_notification === undefined ? null : v.email_notification,
    workspace_id: v.workspace_id || defaultWorkspace,
    created_at: now, activated_at: null, completed_at: null, decline_information: null,
    cancel: null, documents: [], signers: [], events: [], webhooks: 0,
  };
  addEvent(sr, 'created');
  state.srs.set(sr.id, sr);
  stats.requests_created++;
  if (sr.external_id !== null) stats.created_by_external_id[sr.external_id] = (stats.created_by_external_id[sr.external_id] || 0) + 1;
  if (dropAfterApply(ctx)) return;
  sendJson(ctx, 201, srView(sr));
}

function hGetSR(ctx) {
  sendJson(ctx, 200, srView(getSr(ctx.params.signatureRequestId)));
}

/*
 * hPatchSR: [OAS] PATCH /signature_requests/{id} -> 200 (name,
 * expiration_date, external_id, reminders, ...).  The double allows it in
 * draft and ongoing (the summary names no status rule).
 */
function hPatchSR(ctx) {
  const sr = getSr(ctx.params.signatureRequestId);
  const b = jsonBody(ctx);
  const iss = new Issues('body');
  for (const k of Object.keys(b)) if (!CREATE_KEYS.includes(k)) iss.add(k, 'This field was not expected.');
  const v = checkRequestFields(b, iss, false);
  const tz = v.timezone || sr.timezone;
  if (b.expiration_date !== undefined) checkExpiration(iss, b.expiration_date, tz);
  if (v.ordered_signers === false && sr.signers.some((s) => s.signature_level === QES)) {
    iss.add('ordered_signers', 'ordered_signers must be true when signers use qualified_electronic_signature.');
  }
  iss.done();
  if (sr.status !== 'draft' && sr.status !== 'ongoing') throw wrongStatus(`A Signature Request that is ${sr.status} cannot be updated.`);
  if (sr.status === 'ongoing' && Object.keys(v).some((k) => ['delivery_mode', 'ordered_signers', 'timezone'].includes(k))) {
    throw wrongStatus('delivery_mode, ordered_signers and timezone can only be changed while draft.');
  }
  Object.assign(sr, v);
  if (b.expiration_date !== undefined) sr.expiration_day = b.expiration_date;
  addEvent(sr, 'updated', { keys: Object.keys(b) });
  sendJson(ctx, 200, srView(sr));
}

/* parseCursor decodes an `after` cursor: the seq of the last item of the previous page. */
function cursorOf(sr) {
  return Buffer.from(JSON.stringify({ s: sr.seq })).toString('base64url');
}
function parseCursor(s) {
  try {
    const o = JSON.parse(Buffer.from(s, 'base64url').toString('utf8'));
    return Number.isInteger(o.s) ? o.s : null;
  } catch {
    return null;
  }
}

/*
 * hListSR: [OAS] GET /signature_requests -> {"meta": {"next_cursor"}, "data"}:
 * limit 1-100 (100), after (cursor), deepObject filters external_id[eq],
 * status[eq|in], created_at|activated_at|completed_at|declined_at
 * [eq|between|before|after] (yyyy-mm-dd, UTC; between "a,b" inclusive),
 * workspace_id[eq], source[eq|in] (default public_api only; every request
 * of the double is public_api), q (name contains, case-insensitive),
 * label.name[eq|in] (no labels are emulated, so it matches nothing).  A
 * parameter the double does not know is a 400 parameters_not_valid: a typo
 * such as external_id=x must not quietly list everything.  The order is
 * unconfirmed: --list-order newest (default) or oldest.
 */
function hListSR(ctx) {
  const iss = new Issues('query');
  let limit = 100;
  let after = null;
  const filters = [];
  const DATE_FIELDS = { created_at: 'created_at', activated_at: 'activated_at', completed_at: 'completed_at', declined_at: 'declined_at' };
  const grouped = new Map();
  for (const [k, v] of ctx.query) {
    const kk = k.replace(/\[\]$/, '');
    if (!grouped.has(kk)) grouped.set(kk, []);
    grouped.get(kk).push(v);
  }
  const listOf = (vals) => vals.flatMap((x) => x.split(',')).map((x) => x.trim()).filter(Boolean);
  for (const [k, vals] of grouped) {
    const v = vals[vals.length - 1];
    if (k === 'limit') {
      const n = Number(v);
      if (!/^\d+$/.test(v) || n < 1 || n > 100) iss.add('limit', 'This value should be between 1 and 100.');
      else limit = n;
      continue;
    }
    if (k === 'after') {
      after = parseCursor(v);
      if (after === null) iss.add('after', 'This value is not a valid cursor.');
      continue;
    }
    if (k === 'q') {
      const s = v.toLowerCase();
      filters.push((sr) => sr.name.toLowerCase().includes(s));
      continue;
    }
    const m = /^([a-z_.]+)\[([a-z]+)\]$/.exec(k);
    if (!m) { iss.add(k, 'This parameter is not supported.'); continue; }
    const [, field, op] = m;
    if (field === 'external_id' && op === 'eq') {
      filters.push((sr) => sr.external_id === v);
    } else if (field === 'status' && (op === 'eq' || op === 'in')) {
      const set = op === 'eq' ? [v] : listOf(vals);
      const badSt = set.filter((x) => !SR_STATUSES.includes(x));
      if (badSt.length) iss.add(k, `This value should be one of: ${SR_STATUSES.join(', ')}.`);
      else filters.push((sr) => set.includes(sr.status));
    } else if (field === 'workspace_id' && op === 'eq') {
      filters.push((sr) => sr.workspace_id === v);
    } else if (field === 'source' && (op === 'eq' || op === 'in')) {
      const set = op === 'eq' ? [v] : listOf(vals);
      filters.push(() => set.includes('public_api'));
    } else if (field === 'label.name' && (op === 'eq' || op === 'in')) {
      filters.push(() => false);
    } else if (DATE_FIELDS[field] && ['eq', 'between', 'before', 'after'].includes(op)) {
      const days = op === 'between' ? v.split(',').map((x) => x.trim()) : [v];
      if ((op === 'between' && days.length !== 2) || !days.every(validDay)) {
        iss.add(k, op === 'between' ? 'This value should be two dates yyyy-mm-dd separated by a comma.' : 'This value should be a date yyyy-mm-dd.');
        continue;
      }
      const dayOf = (sr) => {
        const ms = field === 'declined_at' ? (sr.decline_information ? sr.decline_information.declined_at : null) : sr[DATE_FIELDS[field]];
        return ms === null || ms === undefined ? null : new Date(ms).toISOString().slice(0, 10);
      };
      filters.push((sr) => {
        const d = dayOf(sr);
        if (d === null) return false;
        if (op === 'eq') return d === days[0];
        if (op === 'before') return d < days[0];
        if (op === 'after') return d > days[0];
        return d >= days[0] && d <= days[1];
      });
    } else {
      iss.add(k, 'This parameter is not supported.');
    }
  }
  iss.done();
  const newest = rt.o.list_order === 'newest';
  const all = Array.from(state.srs.values());
  if (newest) all.reverse();
  const data = [];
  let more = false;
  for (const sr of all) {
    if (after !== null && (newest ? sr.seq >= after : sr.seq <= after)) continue;
    if (!filters.every((f) => f(sr))) continue;
    if (data.length === limit) { more = true; break; }
    data.push(sr);
  }
  sendJson(ctx, 200, { meta: { next_cursor: more ? cursorOf(data[data.length - 1]) : null }, data: data.map(srView) });
}

/* ------------------------------------------------------------------ */
/* Documents                                                           */
/* ------------------------------------------------------------------ */

/*
 * parseMultipart splits a multipart/form-data body (RFC 7578) into parts
 * {name, filename, contentType, data}; null when it is malformed.
 */
function parseMultipart(buf, contentType) {
  const m = /;\s*boundary=(?:"([^"]+)"|([^;\s]+))/i.exec(contentType);
  if (!m) return null;
  const delim = Buffer.from('--' + (m[1] || m[2]), 'latin1');
  const sep = Buffer.concat([Buffer.from('\r\n', 'latin1'), delim]);
  const parts = [];
  let pos = buf.indexOf(delim);
  if (pos < 0) return null;
  pos += delim.length;
  for (;;) {
    if (buf[pos] === 0x2d && buf[pos + 1] === 0x2d) break;          /* closing delimiter */
    if (buf[pos] !== 0x0d || buf[pos + 1] !== 0x0a) return null;
    pos += 2;
    const hEnd = buf.indexOf('\r\n\r\n', pos, 'latin1');
    if (hEnd < 0) return null;
    const headers = {};
    for (const line of buf.toString('utf8', pos, hEnd).split('\r\n')) {
      const i = line.indexOf(':');
      if (i > 0) headers[line.slice(0, i).trim().toLowerCase()] = line.slice(i + 1).trim();
    }
    const next = buf.indexOf(sep, hEnd + 4);
    if (next < 0) return null;
    const cd = headers['content-disposition'] || '';
    const nm = /(?:^|;)\s*name="([^"]*)"/i.exec(cd);
    const fm = /(?:^|;)\s*filename="([^"]*)"/i.exec(cd);
    if (!/^\s*form-data/i.test(cd) || !nm) return null;
    parts.push({ name: nm[1], filename: fm ? fm[1] : null, contentType: headers['content-type'] || null, data: buf.subarray(hEnd + 4, next) });
    pos = next + sep.length;
  }
  return parts;
}

/* pdfPages returns the byte offsets of the /Type /Page objects and the first MediaBox height. */
function pdfPages(buf) {
  const { offsets, height } = doubles.pdfScan(buf);
  return { offsets, total: Math.max(1, offsets.length), height };
}

/*
 * findAnchors: [D/document-1] with parse_anchors, Smart Anchors such as
 * {{s1|signature|180|60}} (signer 1, type, width, height) in the PDF become
 * fields.  The double finds them in the raw bytes (uncompressed content
 * streams): the page is the number of page objects before the anchor, the
 * position the last "x y Td" before it (y from the top).  Types other than
 * signature are counted in total_anchors but make no field.
 */
function findAnchors(buf, pages, iss) {
  const text = buf.toString('latin1');
  const re = /\{\{\s*s(\d+)\s*\|\s*([a-z_]+)\s*((?:\|[^|}]*)*)\}\}/g;
  const out = [];
  let m;
  while ((m = re.exec(text)) !== null) {
    const signer = Number(m[1]);
    const type = m[2];
    const args = m[3].split('|').slice(1).map((x) => x.trim());
    let page = 1;
    for (const off of pages.offsets) if (off < m.index) page = pages.offsets.indexOf(off) + 1;
    const before = text.slice(Math.max(0, m.index - 300), m.index);
    const tds = [...before.matchAll(/(-?[\d.]+)\s+(-?[\d.]+)\s+Td/g)];
    const td = tds.length ? tds[tds.length - 1] : null;
    const x = td ? Math.max(0, Math.round(Number(td[1]))) : 0;
    const y = td ? Math.max(0, pages.height - Math.round(Number(td[2]))) : 0;
    const a = { signer, type, page, x, y, width: null, height: null, field_id: uuid() };
    if (type === 'signature') {
      const w = Number(args[0]);
      const h = Number(args[1]);
      /* the bounds of a signature field ([OAS] width 85-2000, height 37-1000) */
      if (!(Number.isInteger(w) && w >= 85 && w <= 2000 && Number.isInteger(h) && h >= 37 && h <= 1000) || signer < 1) {
        iss.add('file', `The Smart Anchor ${m[0]} is not valid: signer >= 1, width 85-2000 and height 37-1000.`);
        continue;
      }
      a.width = w;
      a.height = h;
    }
    out.push(a);
  }
  return out;
}

/* hUpload: [D/document-1] POST .../documents, multipart/form-data: file, nature, parse_anchors, name, password. */
function hUpload(ctx) {
  const sr = getSr(ctx.params.signatureRequestId);
  const ct = String(ctx.req.headers['content-type'] || '');
  /* No base64: only multipart/form-data [D/document-1]; anything else is a 415 [R/errors-1]. */
  if (!/^multipart\/form-data\s*;/i.test(ct)) throw problem(415, 'about:blank', 'Unsupported Media Type: documents are uploaded as multipart/form-data.');
  const parts = parseMultipart(ctx.body || Buffer.alloc(0), ct);
  if (!parts) throw problem(400, 'about:blank', 'The multipart/form-data body is malformed.');
  const iss = new Issues('body');
  const by = {};
  for (const p of parts) {
    if (!['file', 'nature', 'parse_anchors', 'name', 'password'].includes(p.name)) { iss.add(p.name, 'This field was not expected.'); continue; }
    if (by[p.name]) { iss.add(p.name, 'This field was given more than once.'); continue; }
    by[p.name] = p;
  }
  const str = (k) => (by[k] ? by[k].data.toString('utf8') : undefined);
  const nature = str('nature');
  if (nature === undefined) iss.add('nature', 'This value should not be blank.');
  else if (!NATURES.includes(nature)) iss.add('nature', `This value should be one of: ${NATURES.join(', ')}.`);
  const parseAnchors = str('parse_anchors');
  if (parseAnchors !== undefined && parseAnchors !== 'true' && parseAnchors !== 'false') iss.add('parse_anchors', 'This value should be true or false.');
  const name = str('name');
  if (name !== undefined && (name.length < 1 || name.length > 128)) iss.add('name', 'This value should have between 1 and 128 characters.');
  const password = str('password');
  let kind = null;
  let content = null;
  const file = by.file;
  if (!file || file.filename === null) {
    iss.add('file', 'This value should not be blank (a file part with a filename).');
  } else if (file.data.length > FILE_MAX) {
    iss.add('file', `The file must not exceed ${FILE_MAX} bytes.`);
  } else {
    const d = file.data;
    const head = d.toString('latin1', 0, 8);
    if (head.startsWith('%PDF-')) kind = 'pdf';
    else if (head.startsWith('PK\x03\x04') && (/\.docx$/i.test(file.filename) || /wordprocessingml/.test(file.contentType || ''))) kind = 'docx';
    else if (d[0] === 0xff && d[1] === 0xd8 && d[2] === 0xff) kind = 'jpeg';
    else if (head === '\x89PNG\r\n\x1a\n') kind = 'png';
    if (!kind) {
      iss.add('file', 'The file must be a PDF or a DOCX (JPEG and PNG only as attachment).');
    } else if ((kind === 'jpeg' || kind === 'png') && nature === 'signable_document') {
      /* [D/document-1] JPEG/PNG only as attachment */
      iss.add('file', 'JPEG and PNG files can only be uploaded as attachment.');
    } else if (kind === 'pdf') {
      /*
       * PDF version: D/document-1 wants >= 1.6, D/limits-new accepts any
       * (conflicting): --pdf-min-version, default 1.6.
       */
      const vm = /^%PDF-(\d)\.(\d)/.exec(d.toString('latin1', 0, 16));
      const min = rt.o.pdf_min_version;
      if (!vm) iss.add('file', 'The PDF header is not valid.');
      else if (min !== 'any' && Number(`${vm[1]}.${vm[2]}`) < Number(min)) iss.add('file', `The PDF version ${vm[1]}.${vm[2]} is not supported: it must be ${min} or higher.`);
      /* [D/document-1] the PDF must be modifiable: an encrypted (edit-locked) one needs its password */
      else if (d.indexOf('/Encrypt', 0, 'latin1') !== -1 && !password) iss.add('file', 'The PDF is protected: give its password.');
      else content = d;
    } else {
      content = d;
    }
  }
  iss.done();
  requireDraft(sr, 'Adding a Document');
  if (sr.documents.length >= DOCS_MAX) throw validationError('body', [{ name: 'file', reason: `A Signature Request has at most ${DOCS_MAX} documents.` }]);
  let filename = file.filename;
  let contentType = { pdf: 'application/pdf', jpeg: 'image/jpeg', png: 'image/png', docx: 'application/pdf' }[kind];
  if (kind === 'docx') {
    /* [D/document-1] DOCX is converted to PDF */
    content = buildPdf([`Converted from ${file.filename}`, `${file.data.length} bytes`]);
    filename = file.filename.replace(/\.docx$/i, '') + '.pdf';
  }
  const pages = kind === 'pdf' || kind === 'docx' ? pdfPages(content) : { offsets: [], total: 1, height: 842 };
  const aIss = new Issues('body');
  const anchors = parseAnchors === 'true' && kind === 'pdf' ? findAnchors(content, pages, aIss) : [];
  aIss.done();
  const doc = {
    id: uuid(), filename: name || filename, nature, content_type: contentType, sha256: sha256hex(content),
    total_pages: pages.total, page_height: pages.height, original: content, content, created_at: clockNow(),
    anchors, protected: !!password,
  };
  sr.documents.push(doc);
  addEvent(sr, 'document_added', { document_id: doc.id });
  stats.documents_uploaded++;
  if (dropAfterApply(ctx)) return;
  sendJson(ctx, 201, docView(doc));
}

function hListDocs(ctx) {
  const sr = getSr(ctx.params.signatureRequestId);
  sendJson(ctx, 200, sr.documents.map(docView));
}

function hGetDoc(ctx) {
  const sr = getSr(ctx.params.signatureRequestId);
  sendJson(ctx, 200, docView(getDoc(sr, ctx.params.documentId)));
}

/* hDeleteDoc: only while draft [D/document-1]; the signature fields on it go with it. */
function hDeleteDoc(ctx) {
  const sr = getSr(ctx.params.signatureRequestId);
  const doc = getDoc(sr, ctx.params.documentId);
  requireDraft(sr, 'Deleting a Document');
  sr.documents.splice(sr.documents.indexOf(doc), 1);
  for (const s of sr.signers) s.fields = s.fields.filter((f) => f.document_id !== doc.id);
  addEvent(sr, 'document_deleted', { document_id: doc.id });
  sendEmpty(ctx, 204);
}

/* ------------------------------------------------------------------ */
/* Signers                                                             */
/* ------------------------------------------------------------------ */

const SIGNER_KEYS = ['info', 'signature_level', 'signature_authentication_mode', 'fields', 'delivery_mode', 'redirect_urls', 'custom_text'];
const INFO_KEYS = ['first_name', 'last_name', 'email', 'phone_number', 'locale'];
const FIELD_KEYS = ['document_id', 'type', 'page', 'x', 'y', 'width', 'height'];

/* checkHumanName: [OAS HumanName] (length 1-255 as [OAS CreateContact]). */
function checkHumanName(iss, name, v) {
  if (typeof v !== 'string' || v.length === 0) return iss.add(name, 'This value should not be blank.');
  if (v.length > 255) return iss.add(name, 'This value is too long. It should have 255 characters or less.');
  if (v !== v.trim()) return iss.add(name, 'This value must not start or end with a space.');
  if (!HUMAN_NAME_RE.test(v)) return iss.add(name, 'This value contains characters that are not allowed: only Latin letters (accents included), digits, spaces and - \' ` ( ).');
  return true;
}

const intIn = (v, min, max) => Number.isInteger(v) && v >= min && v <= max;

/* validateSigner checks a POST .../signers body against [OAS] and the QES rules [D/qes-capabilities-and-limitations, D/specificities-of-the-qes-level]. */
function validateSigner(sr, b) {
  const iss = new Issues('body');
  for (const k of Object.keys(b)) if (!SIGNER_KEYS.includes(k)) iss.add(k, 'This field was not expected.');
  const info = b.info;
  const v = { info: null, fields: [] };
  if (!isObj(info)) {
    iss.add('info', 'This value should not be blank.');
  } else {
    for (const k of Object.keys(info)) if (!INFO_KEYS.includes(k)) iss.add(`info.${k}`, 'This field was not expected.');
    checkHumanName(iss, 'info.first_name', info.first_name);
    checkHumanName(iss, 'info.last_name', info.last_name);
    /* [OAS] email <= 100 */
    if (typeof info.email !== 'string' || !EMAIL_RE.test(info.email)) iss.add('info.email', 'This value is not a valid email address.');
    else if (info.email.length > 100) iss.add('info.email', 'This value is too long. It should have 100 characters or less.');
    /* [OAS] phone_number E.164, optional */
    if (info.phone_number !== undefined && info.phone_number !== null && (typeof info.phone_number !== 'string' || !E164_RE.test(info.phone_number))) {
      iss.add('info.phone_number', 'This value is not a valid E.164 phone number.');
    }
    /* [OAS] locale: en fr de it nl es pl */
    if (!LOCALES.includes(info.locale)) iss.add('info.locale', `This value should be one of: ${LOCALES.join(', ')}.`);
    v.info = {
      first_name: info.first_name, last_name: info.last_name, email: info.email,
      phone_number: info.phone_number == null ? null : info.phone_number, locale: info.locale,
    };
  }
  /* [OAS] signature_level required */
  if (!SIGNATURE_LEVELS.includes(b.signature_level)) iss.add('signature_level', `This value should be one of: ${SIGNATURE_LEVELS.join(', ')}.`);
  const level = b.signature_level;
  const mode = b.signature_authentication_mode === undefined ? null : b.signature_authentication_mode;
  if (mode !== null && !AUTH_MODES.includes(mode)) iss.add('signature_authentication_mode', `This value should be one of: ${AUTH_MODES.join(', ')} or null.`);
  /* [OAS] a phone number is required with otp_sms */
  if (mode === 'otp_sms' && v.info && !v.info.phone_number) iss.add('info.phone_number', 'A phone number is required with signature_authentication_mode otp_sms.');
  if (level === QES) {
    /* QES: no OTP mode (omit or null) [D/qes-capabilities-and-limitations] */
    if (mode !== null) iss.add('signature_authentication_mode', 'A qualified_electronic_signature signer has no authentication mode: omit it or give null.');
    /* QES: give a phone number (help centre article 72059; not in [OAS]): --qes-phone, default required */
    if (rt.o.qes_phone === 'required' && v.info && !v.info.phone_number) iss.add('info.phone_number', 'A qualified_electronic_signature signer needs a phone number.');
  }
  if (b.delivery_mode !== undefined && b.delivery_mode !== null && !DELIVERY_MODES.includes(b.delivery_mode)) iss.add('delivery_mode', `This value should be one of: ${DELIVERY_MODES.join(', ')}.`);
  if (b.redirect_urls !== undefined && b.redirect_urls !== null) {
    if (!isObj(b.redirect_urls)) iss.add('redirect_urls', 'This value should be an object.');
    else {
      for (const [k, u] of Object.entries(b.redirect_urls)) {
        if (!['success', 'error', 'decline'].includes(k)) { iss.add(`redirect_urls.${k}`, 'This field was not expected.'); continue; }
        if (u === null) continue;
        let ok = typeof u === 'string';
        try { if (ok) ok = ['http:', 'https:'].includes(new URL(u).protocol); } catch { ok = false; }
        if (!ok) iss.add(`redirect_urls.${k}`, 'This value is not a valid URL.');
      }
    }
  }
  if (b.custom_text !== undefined && b.custom_text !== null && !isObj(b.custom_text)) iss.add('custom_text', 'This value should be an object.');
  /* fields: [OAS] signature fields document_id, type, page >= 1, x, y 0-32767, width 85-2000, height 37-1000 */
  if (b.fields !== undefined && b.fields !== null && !Array.isArray(b.fields)) iss.add('fields', 'This value should be an array.');
  const perDoc = new Map();
  (Array.isArray(b.fields) ? b.fields : []).forEach((f, i) => {
    const p = `fields[${i}]`;
    if (!isObj(f)) return iss.add(p, 'This value should be an object.');
    for (const k of Object.keys(f)) if (!FIELD_KEYS.includes(k)) iss.add(`${p}.${k}`, 'This field was not expected (the double emulates signature fields only).');
    if (f.type !== 'signature') iss.add(`${p}.type`, 'This value should be signature (the only field type the double emulates).');
    const doc = typeof f.document_id === 'string' ? sr.documents.find((d) => d.id === f.document_id) : null;
    if (!doc) iss.add(`${p}.document_id`, 'This value is not a Document of this Signature Request.');
    else if (doc.nature !== 'signable_document') iss.add(`${p}.document_id`, 'Signature fields can only be placed on a signable_document.');
    if (!Number.isInteger(f.page) || f.page < 1) iss.add(`${p}.page`, 'This value should be 1 or more.');
    else if (doc && f.page > doc.total_pages) iss.add(`${p}.page`, `This value should be at most ${doc.total_pages} (the document's pages).`);
    if (!intIn(f.x, 0, 32767)) iss.add(`${p}.x`, 'This value should be between 0 and 32767.');
    if (!intIn(f.y, 0, 32767)) iss.add(`${p}.y`, 'This value should be between 0 and 32767.');
    if (f.width !== undefined && !intIn(f.width, 85, 2000)) iss.add(`${p}.width`, 'This value should be between 85 and 2000.');
    if (f.height !== undefined && !intIn(f.height, 37, 1000)) iss.add(`${p}.height`, 'This value should be between 37 and 1000.');
    if (doc) perDoc.set(doc.id, (perDoc.get(doc.id) || 0) + 1);
    v.fields.push({ id: uuid(), document_id: f.document_id, type: 'signature', page: f.page, x: f.x, y: f.y, width: f.width === undefined ? 85 : f.width, height: f.height === undefined ? 37 : f.height });
  });
  if (level === QES) {
    /* QES: one signature field per signer and document [D/qes-capabilities-and-limitations] (explicit fields plus this signer's anchors) */
    const n = sr.signers.length + 1;
    for (const d of sr.documents) {
      const anchors = d.anchors.filter((a) => a.signer === n && a.type === 'signature').length;
      if ((perDoc.get(d.id) || 0) + anchors > 1) iss.add('fields', `A qualified_electronic_signature signer has one signature field per document; document ${d.id} would have ${(perDoc.get(d.id) || 0) + anchors}.`);
    }
  }
  iss.done();
  return Object.assign(v, { signature_level: level, signature_authentication_mode: mode, delivery_mode: b.delivery_mode == null ? null : b.delivery_mode,
    redirect_urls: b.redirect_urls == null ? null : b.redirect_urls, custom_text: b.custom_text == null ? null : b.custom_text });
}

/*
 * checkQesRules: [D/qes-capabilities-and-limitations, D/specificities-of-the-qes-level]
 * QES needs ordered_signers: true ("even with one signer") and all signers
 * QES.  Where Yousign checks this is not documented (the create body has no
 * signature level, so the earliest point is adding a signer):
 * --qes-order-check signer (default: a 400 on POST .../signers) or activate
 * (a 400 on activate).  `levels` are the signature levels of the request's
 * signers (with the new one).
 */
function checkQesRules(sr, levels, where) {
  if (!levels.includes(QES)) return;
  const name = where === 'signer' ? 'signature_level' : 'signers';
  const params = [];
  if (!sr.ordered_signers) params.push({ name, reason: 'qualified_electronic_signature requires ordered_signers: true on the Signature Request, even with one signer.' });
  if (levels.some((l) => l !== QES)) params.push({ name, reason: 'With qualified_electronic_signature, every signer of the Signature Request must be qualified_electronic_signature.' });
  if (params.length) throw validationError('body', params);
}

function hAddSigner(ctx) {
  const sr = getSr(ctx.params.signatureRequestId);
  const b = jsonBody(ctx);
  const v = validateSigner(sr, b);
  /* [D/signer-1] signers are added only while draft; no add after activation */
  requireDraft(sr, 'Adding a Signer');
  /* QES works only with the add-on enabled [D/qes-capabilities-and-limitations, D/environments-new]: --qes-enabled */
  if (v.signature_level === QES && !rt.o.qes_enabled) throw problem(403, 'about:blank', 'The qualified electronic signature add-on is not enabled for this organization.');
  if (rt.o.qes_order_check === 'signer') checkQesRules(sr, sr.signers.map((s) => s.signature_level).concat([v.signature_level]), 'signer');
  const s = {
    id: uuid(), info: v.info, status: 'initiated', signature_level: v.signature_level,
    signature_authentication_mode: v.signature_authentication_mode, delivery_mode: v.delivery_mode,
    redirect_urls: v.redirect_urls, custom_text: v.custom_text, fields: v.fields,
    link: null, link_exp: null, notified_at: null, verified_at: null, signed_at: null,
    blocked: false, failed_identifications: 0, last_reminder_at: null, reminders: 0, auto_reminders: 0,
  };
  sr.signers.push(s);
  addEvent(sr, 'signer_added', { signer_id: s.id });
  stats.signers_added++;
  if (dropAfterApply(ctx)) return;
  sendJson(ctx, 201, signerView(sr, s));
}

function hListSigners(ctx) {
  const sr = getSr(ctx.params.signatureRequestId);
  sendJson(ctx, 200, sr.signers.map((s) => signerView(sr, s)));
}

function hGetSigner(ctx) {
  const sr = getSr(ctx.params.signatureRequestId);
  sendJson(ctx, 200, signerView(sr, getSigner(sr, ctx.params.signerId)));
}

/* hDeleteSigner: only while draft [D/signer-1: no add/delete after activation]. */
function hDeleteSigner(ctx) {
  const sr = getSr(ctx.params.signatureRequestId);
  const s = getSigner(sr, ctx.params.signerId);
  requireDraft(sr, 'Deleting a Signer');
  sr.signers.splice(sr.signers.indexOf(s), 1);
  addEvent(sr, 'signer_deleted', { signer_id: s.id });
  sendEmpty(ctx, 204);
}

/* ------------------------------------------------------------------ */
/* Activation and the signing flow                                     */
/* ------------------------------------------------------------------ */

function makeLink(sr, s) {
  return `${cfg['signing-base-url'].replace(/\/$/, '')}/signatures/${sr.id}?s=${s.id}&t=${crypto.randomBytes(12).toString('hex')}`;
}

/* effectiveDelivery: a signer's delivery_mode overrides the request's [OAS]. */
const effectiveDelivery = (sr, s) => s.delivery_mode || sr.delivery_mode;

/*
 * notify makes a signer `notified` with a signature_link valid
 * --link-ttl-hours (48 h; 1-72 via support [D/limits-new]); with delivery
 * mode email Yousign mails the link (recorded in /_control/emails).
 */
function notify(sr, s, now = clockNow()) {
  s.status = 'notified';
  s.notified_at = now;
  if (!s.link) s.link = makeLink(sr, s);
  s.link_exp = now + rt.o.link_ttl_hours * 3600000;
  if (effectiveDelivery(sr, s) === 'email') state.emails.push({ kind: 'invitation', to: s.info.email, signer_id: s.id, signature_request_id: sr.id, link: s.link, time: fmtTime(now) });
  addEvent(sr, 'signer_notified', { signer_id: s.id });
  emit('signer.notified', sr, s);
}

/*
 * startSigning puts the signers of an ongoing request in their state: with
 * ordered_signers only the first unsigned signer is notified, the later
 * ones stay initiated [OAS SignatureRequestActivated; D/signer-1]; their
 * signature_link is null (unconfirmed: --ordered-link null, default, or
 * present).  Without order every unsigned signer is notified.
 */
function startSigning(sr, now = clockNow()) {
  const open = sr.signers.filter((s) => s.status !== 'signed');
  open.forEach((s, i) => {
    if (!sr.ordered_signers || i === 0) {
      notify(sr, s, now);
    } else {
      s.status = 'initiated';
      if (rt.o.ordered_link === 'present') {
        if (!s.link) s.link = makeLink(sr, s);
        s.link_exp = now + rt.o.link_ttl_hours * 3600000;
      } else {
        s.link = null;
        s.link_exp = null;
      }
    }
  });
}

/*
 * hActivate: [OAS] POST .../activate (optional body {sender_id}) -> 201
 * with status ongoing.  Only a draft; it needs at least one signable
 * document, signers, a signature field for each signer, and one on each
 * signable document [D/key-concepts-new].
 */
function hActivate(ctx) {
  const sr = getSr(ctx.params.signatureRequestId);
  const b = jsonBody(ctx);
  const iss = new Issues('body');
  for (const k of Object.keys(b)) if (k !== 'sender_id') iss.add(k, 'This field was not expected.');
  if (b.sender_id !== undefined && b.sender_id !== null && (typeof b.sender_id !== 'string' || !UUID_RE.test(b.sender_id))) iss.add('sender_id', 'This value is not a valid UUID.');
  iss.done();
  if (sr.status !== 'draft') throw wrongStatus(`Only a draft Signature Request can be activated; it is ${sr.status}.`);
  const signable = sr.documents.filter((d) => d.nature === 'signable_document');
  if (!signable.length) throw wrongStatus('The Signature Request needs at least one signable_document to be activated.');
  if (!sr.signers.length) throw wrongStatus('The Signature Request needs at least one Signer to be activated.');
  for (const s of sr.signers) {
    const fields = signerFields(sr, s);
    if (!fields.some((f) => f.type === 'signature')) throw wrongStatus(`Signer ${s.id} has no signature field.`);
    /* QES: one signature field per signer and document (anchors uploaded after the signer are counted here) */
    if (s.signature_level === QES) {
      for (const d of signable) {
        if (fields.filter((f) => f.document_id === d.id).length > 1) throw wrongStatus(`Signer ${s.id} (qualified_electronic_signature) has more than one signature field on document ${d.id}.`);
      }
    }
  }
  for (const d of signable) {
    if (!sr.signers.some((s) => signerFields(sr, s).some((f) => f.document_id === d.id))) {
      throw wrongStatus(`Document ${d.id} is a signable_document without a signature field.`);
    }
  }
  if (rt.o.qes_order_check === 'activate') checkQesRules(sr, sr.signers.map((s) => s.signature_level), 'activate');
  if (expiryMs(sr) < clockNow()) throw validationError('body', [{ name: 'expiration_date', reason: 'The expiration date of the Signature Request is in the past.' }]);
  sr.status = 'ongoing';
  sr.activated_at = clockNow();
  sr.sender_id = b.sender_id || null;
  addEvent(sr, 'activated');
  stats.requests_activated++;
  if (sr.external_id !== null) stats.activated_by_external_id[sr.external_id] = (stats.activated_by_external_id[sr.external_id] || 0) + 1;
  emit('signature_request.activated', sr, null);
  startSigning(sr, sr.activated_at);
  if (dropAfterApply(ctx)) return;
  sendJson(ctx, 201, activatedView(sr));
}

/*
 * endSigners: once a request ended (declined, canceled, expired) before
 * every signer signed, the unsigned signers become `aborted` (the meaning of
 * aborted is unconfirmed: --ended-signer-status aborted, default, or
 * unchanged).
 */
function endSigners(sr, except) {
  if (rt.o.ended_signer_status !== 'aborted') return;
  for (const s of sr.signers) {
    if (s !== except && !['signed', 'declined', 'error'].includes(s.status)) s.status = 'aborted';
  }
}

/*
 * hCancel: [OAS] POST .../cancel -> 201 SignatureRequest canceled; reason
 * (required: contractualization_aborted | errors_in_document | other),
 * custom_note <= 500; only from approval / ongoing; final.
 */
function hCancel(ctx) {
  const sr = getSr(ctx.params.signatureRequestId);
  const b = jsonBody(ctx);
  const iss = new Issues('body');
  for (const k of Object.keys(b)) if (k !== 'reason' && k !== 'custom_note') iss.add(k, 'This field was not expected.');
  if (!CANCEL_REASONS.includes(b.reason)) iss.add('reason', `This value should be one of: ${CANCEL_REASONS.join(', ')}.`);
  if (b.custom_note !== undefined && b.custom_note !== null) {
    if (typeof b.custom_note !== 'string') iss.add('custom_note', 'This value should be of type string.');
    else if (b.custom_note.length > 500) iss.add('custom_note', 'This value is too long. It should have 500 characters or less.');
  }
  iss.done();
  if (sr.status !== 'ongoing' && sr.status !== 'approval') throw wrongStatus(`Only an ongoing or approval Signature Request can be canceled; it is ${sr.status}.`);
  cancel(sr, b.reason, b.custom_note == null ? null : b.custom_note);
  sendJson(ctx, 201, srView(sr));
}

function cancel(sr, reason, note) {
  sr.status = 'canceled';
  sr.cancel = { reason, custom_note: note, canceled_at: fmtTime(clockNow()) };
  endSigners(sr, null);
  addEvent(sr, 'canceled', { reason });
  emit('signature_request.canceled', sr, null);
}

/*
 * hDeleteSR: [OAS] DELETE /signature_requests/{id}[?permanent_delete=true]
 * -> 204; refused in approval / ongoing; a soft delete leaves status
 * deleted (still readable), a permanent one makes it unreadable (404).
 */
function hDeleteSR(ctx) {
  const sr = getSr(ctx.params.signatureRequestId);
  const iss = new Issues('query');
  const pd = ctx.query.get('permanent_delete');
  for (const k of ctx.query.keys()) if (k !== 'permanent_delete') iss.add(k, 'This parameter is not supported.');
  if (pd !== null && pd !== 'true' && pd !== 'false') iss.add('permanent_delete', 'This value should be true or false.');
  iss.done();
  if (sr.status === 'ongoing' || sr.status === 'approval') throw wrongStatus(`A Signature Request that is ${sr.status} cannot be deleted; cancel it first.`);
  if (pd === 'true') {
    sr.status = 'deleted';
    addEvent(sr, 'permanently_deleted');
    emit('signature_request.permanently_deleted', sr, null);
    state.srs.delete(sr.id);
  } else {
    if (sr.status === 'deleted') throw wrongStatus('The Signature Request is already deleted.');
    sr.status = 'deleted';
    sr.deleted_at = clockNow();
    addEvent(sr, 'deleted');
    emit('signature_request.deleted', sr, null);
  }
  sendEmpty(ctx, 204);
}

/* hReactivate: [OAS] POST .../reactivate {expiration_date} -> 201; only from expired. */
function hReactivate(ctx) {
  const sr = getSr(ctx.params.signatureRequestId);
  const b = jsonBody(ctx);
  const iss = new Issues('body');
  for (const k of Object.keys(b)) if (k !== 'expiration_date') iss.add(k, 'This field was not expected.');
  if (b.expiration_date === undefined) iss.add('expiration_date', 'This value should not be blank.');
  else checkExpiration(iss, b.expiration_date, sr.timezone);
  iss.done();
  if (sr.status !== 'expired') throw wrongStatus(`Only an expired Signature Request can be reactivated; it is ${sr.status}.`);
  sr.expiration_day = b.expiration_date;
  sr.status = 'ongoing';
  addEvent(sr, 'reactivated');
  emit('signature_request.reactivated', sr, null);
  startSigning(sr);
  sendJson(ctx, 201, srView(sr));
}

/*
 * hRemind: [OAS] POST .../signers/{sid}/send_reminder -> 201, empty; only
 * for an ongoing request and a notified signer.  A frequency cap is
 * unconfirmed: --reminder-min-interval-ms (default 0, none); within it a
 * 429 {"message"} with Retry-After.
 */
function hRemind(ctx) {
  const sr = getSr(ctx.params.signatureRequestId);
  const s = getSigner(sr, ctx.params.signerId);
  if (sr.status !== 'ongoing') throw wrongStatus(`Reminders are only sent for an ongoing Signature Request; it is ${sr.status}.`);
  if (s.status !== 'notified') throw wrongStatus(`Reminders are only sent to a notified Signer; this one is ${s.status}.`);
  const now = clockNow();
  const cap = rt.o.reminder_min_interval_ms;
  if (cap > 0 && s.last_reminder_at !== null && now - s.last_reminder_at < cap) {
    throw new ApiError(429, { message: 'A reminder was sent to this signer recently.' }, { 'Retry-After': String(Math.max(1, Math.ceil((cap - (now - s.last_reminder_at)) / 1000))) });
  }
  s.last_reminder_at = now;
  s.reminders++;
  stats.reminders_sent++;
  if (effectiveDelivery(sr, s) === 'email') state.emails.push({ kind: 'reminder', to: s.info.email, signer_id: s.id, signature_request_id: sr.id, link: s.link, time: fmtTime(now) });
  addEvent(sr, 'reminder_sent', { signer_id: s.id });
  sendEmpty(ctx, 201);
}

/*
 * hUnblock: [D/signer-name-parsing-rules-for-the-qes-level] after a name
 * mismatch the identification is blocked until POST
 * .../signers/{sid}/unblock_identification.  Its answer is not in the
 * summary: the double answers 201 with the Signer.
 */
function hUnblock(ctx) {
  const sr = getSr(ctx.params.signatureRequestId);
  const s = getSigner(sr, ctx.params.signerId);
  if (!s.blocked) throw wrongStatus('The identification of this Signer is not blocked.');
  s.blocked = false;
  addEvent(sr, 'identification_unblocked', { signer_id: s.id });
  sendJson(ctx, 201, signerView(sr, s));
}

/* ------------------------------------------------------------------ */
/* Signer actions (driven through /_control)                           */
/* ------------------------------------------------------------------ */

/* findSigner matches a signer id or an e-mail (the first unsigned one with that e-mail). */
function findSigner(sr, key) {
  const byId = sr.signers.find((s) => s.id === key);
  if (byId) return byId;
  const k = key.toLowerCase();
  const m = sr.signers.filter((s) => s.info.email.toLowerCase() === k);
  if (!m.length) throw notFound('Signer');
  return m.find((s) => s.status !== 'signed') || m[0];
}

const ACTING = ['notified', 'verified', 'consent_given'];

function requireActing(sr, s) {
  if (sr.status !== 'ongoing') throw conflict(`the Signature Request is ${sr.status}`);
  if (!ACTING.includes(s.status)) throw conflict(`the Signer is ${s.status}${s.status === 'initiated' ? ' (not its turn yet: ordered_signers)' : ''}`);
}

/*
 * QES name rules [D/signer-name-parsing-rules-for-the-qes-level,
 * changelog page 6]: the signer's names must match the ID document; case
 * and accents are ignored, a hyphen equals a space, apostrophes may become
 * a space or vanish, and any combination of the given names is accepted.
 */
function foldName(s) {
  return String(s).normalize('NFD').replace(/[\u0300-\u036f]/g, '').toLowerCase().replace(/-/g, ' ').replace(/`/g, "'").replace(/\s+/g, ' ').trim();
}
function nameVariants(s) {
  const f = foldName(s);
  return new Set([f, f.replace(/'/g, ' ').replace(/\s+/g, ' ').trim(), f.replace(/'/g, '')]);
}
function namesMatch(signer, id) {
  const lastOk = [...nameVariants(signer.last_name)].some((a) => nameVariants(id.last_name).has(a));
  if (!lastOk) return false;
  for (const a of nameVariants(signer.first_name)) {
    for (const b of nameVariants(id.first_name)) {
      const want = a.split(' ').filter(Boolean);
      const have = b.split(' ').filter(Boolean);
      if (want.length && want.every((t) => { const i = have.indexOf(t); if (i < 0) return false; have.splice(i, 1); return true; })) return true;
    }
  }
  return false;
}

function ctlOpen(sr, s) {
  requireActing(sr, s);
  addEvent(sr, 'link_opened', { signer_id: s.id });
  emit('signer.link_opened', sr, s);
}

/*
 * ctlIdentify: the identity check ([D/specificities-of-the-qes-level]: ID
 * document + video, or a saved identity; how the sandbox simulates it is
 * unconfirmed, so the test says what the ID document reads: {first_name,
 * last_name}, default the signer's own).  Success: `verified`
 * (signer.identification_succeeded for QES).  A QES name mismatch:
 * signer.identification_failed, then signer.identification_blocked, until
 * unblock_identification.  Returns false on a mismatch.
 */
function ctlIdentify(sr, s, b) {
  requireActing(sr, s);
  if (s.blocked) throw conflict('the identification is blocked; POST .../unblock_identification first');
  if (s.signature_level === QES) {
    const id = { first_name: b.first_name === undefined ? s.info.first_name : b.first_name, last_name: b.last_name === undefined ? s.info.last_name : b.last_name };
    if (typeof id.first_name !== 'string' || typeof id.last_name !== 'string') throw badControl('first_name and last_name must be strings');
    if (!namesMatch(s.info, id)) {
      s.failed_identifications++;
      s.blocked = true;
      addEvent(sr, 'identification_failed', { signer_id: s.id, id_document: id });
      emit('signer.identification_failed', sr, s);
      emit('signer.identification_blocked', sr, s);
      return false;
    }
  }
  if (s.status === 'notified') {
    s.status = 'verified';
    s.verified_at = clockNow();
    addEvent(sr, 'identified', { signer_id: s.id });
    if (s.signature_level === QES) emit('signer.identification_succeeded', sr, s);
  }
  return true;
}

/* ctlConsent: the signer gives consent after the identity check: consent_given [README 3]; identifies first if needed. */
function ctlConsent(sr, s, b) {
  requireActing(sr, s);
  if (s.status === 'notified' && !ctlIdentify(sr, s, b)) {
    throw conflict('the names do not match the ID document: identification failed and blocked');
  }
  if (s.status === 'verified') {
    s.status = 'consent_given';
    addEvent(sr, 'consent_given', { signer_id: s.id });
  }
}

/* applySignature appends one signature line to a document's bytes (the same document id keeps its versions [table of D/x]). */
function applySignature(sr, s, now) {
  for (const d of sr.documents) {
    if (d.nature !== 'signable_document') continue;
    const nl = d.content.length && d.content[d.content.length - 1] !== 0x0a ? '\n' : '';
    const line = `${nl}%signed-by ${s.info.email.replace(/[\r\n]/g, '')} ${s.signature_level} ${fmtTime(now)}\n%%EOF\n`;
    d.content = Buffer.concat([d.content, Buffer.from(line, 'utf8')]);
  }
}

/*
 * ctlSign: the signer signs.  Identification first if not done (QES: 30 min
 * to sign after it), then consent_given and processing, then (after
 * --processing-ms real ms) signed with signer.done; the next signer of an
 * ordered request is notified; when all signed the request is done with
 * signature_request.done.
 */
function ctlSign(sr, s, b) {
  requireActing(sr, s);
  const now = clockNow();
  if (s.signature_level === QES && s.status !== 'notified' && s.verified_at !== null && now - s.verified_at > QES_SIGN_WINDOW_MS) {
    s.status = 'notified';
    s.verified_at = null;
    throw conflict('the identification is older than 30 minutes: identify again');
  }
  if (s.status === 'notified' && !ctlIdentify(sr, s, b)) {
    throw conflict('the names do not match the ID document: identification failed and blocked');
  }
  if (s.status === 'verified') ctlConsent(sr, s, b);
  s.status = 'processing';
  addEvent(sr, 'processing', { signer_id: s.id });
  const gen = generation;
  const finish = () => {
    if (gen !== generation || sr.status !== 'ongoing' || s.status !== 'processing') return;
    const t = clockNow();
    applySignature(sr, s, t);
    s.status = 'signed';
    s.signed_at = t;
    addEvent(sr, 'signed', { signer_id: s.id });
    emit('signer.done', sr, s);
    advance(sr);
  };
  if (rt.o.processing_ms > 0) {
    const t = setTimeout(() => { heldTimers.delete(t); finish(); }, rt.o.processing_ms);
    heldTimers.add(t);
  } else {
    finish();
  }
}

/* advance notifies the next signer of an ordered request, or completes it. */
function advance(sr) {
  if (sr.signers.every((s) => s.status === 'signed')) {
    sr.status = 'done';
    sr.completed_at = clockNow();
    addEvent(sr, 'done');
    emit('signature_request.done', sr, null);
    return;
  }
  if (sr.ordered_signers) {
    const next = sr.signers.find((s) => s.status !== 'signed');
    if (next && next.status === 'initiated') notify(sr, next);
  }
}

/*
 * ctlDecline: a signer declines with a reason; only when
 * signers_allowed_to_decline (default false) [OAS].  Signer declined,
 * request declined with decline_information {signer_id, reason, declined_at}.
 */
function ctlDecline(sr, s, b) {
  requireActing(sr, s);
  if (!sr.signers_allowed_to_decline) throw conflict('signers_allowed_to_decline is false: the signer cannot decline');
  if (b.reason !== undefined && typeof b.reason !== 'string') throw badControl('reason must be a string');
  const now = clockNow();
  s.status = 'declined';
  sr.status = 'declined';
  sr.decline_information = { signer_id: s.id, reason: b.reason || '', declined_at: now };
  endSigners(sr, s);
  addEvent(sr, 'declined', { signer_id: s.id, reason: b.reason || '' });
  emit('signer.declined', sr, s);
  emit('signature_request.declined', sr, null);
}

/* ctlError: signing failed: signer error, and the request is canceled automatically (changelog "a new webhook event is available"). */
function ctlError(sr, s) {
  requireActing(sr, s);
  s.status = 'error';
  addEvent(sr, 'signer_error', { signer_id: s.id });
  emit('signer.error', sr, s);
  cancel(sr, 'other', 'canceled automatically after a signer error');
}

/* expire: an ongoing request passes its expiration_date: expired (reactivatable) with signature_request.expired. */
function expire(sr) {
  sr.status = 'expired';
  endSigners(sr, null);
  addEvent(sr, 'expired');
  emit('signature_request.expired', sr, null);
}

/*
 * sweep runs the time-driven behaviour on the double's clock: expiry at
 * the end of expiration_date, and automatic reminders ([OAS]
 * reminder_settings: every interval_in_days after notification, at most
 * max_occurrences, with signature_request.reminder_executed).
 */
function sweep() {
  const now = clockNow();
  for (const sr of state.srs.values()) {
    if (sr.status !== 'ongoing') continue;
    if (expiryMs(sr) < now) {
      expire(sr);
      continue;
    }
    const r = sr.reminder_settings;
    if (!r) continue;
    for (const s of sr.signers) {
      if (s.status !== 'notified' || s.notified_at === null) continue;
      while (s.auto_reminders < r.max_occurrences && now >= s.notified_at + (s.auto_reminders + 1) * r.interval_in_days * 86400000) {
        s.auto_reminders++;
        stats.reminders_sent++;
        if (effectiveDelivery(sr, s) === 'email') state.emails.push({ kind: 'reminder', to: s.info.email, signer_id: s.id, signature_request_id: sr.id, link: s.link, time: fmtTime(now) });
        addEvent(sr, 'reminder_executed', { signer_id: s.id });
        emit('signature_request.reminder_executed', sr, s);
      }
    }
  }
}

/* ------------------------------------------------------------------ */
/* Downloads                                                           */
/* ------------------------------------------------------------------ */

/* boolQuery reads a true/false query parameter (default false). */
function boolQuery(ctx, iss, name) {
  const v = ctx.query.get(name);
  if (v === null) return false;
  if (v !== 'true' && v !== 'false') iss.add(name, 'This value should be true or false.');
  return v === 'true';
}

function onlyParams(ctx, iss, allowed) {
  for (const k of ctx.query.keys()) if (!allowed.includes(k)) iss.add(k, 'This parameter is not supported.');
}

/*
 * hDownloadDocs: [OAS] GET .../documents/download?version=current|completed
 * &archive=true -> PDF (one document) or ZIP.  completed only when done,
 * else 400 document.unable_to_download_signature_request_not_in_done.  The
 * signed version keeps the document id [README table].
 */
function hDownloadDocs(ctx) {
  const sr = getSr(ctx.params.signatureRequestId);
  const iss = new Issues('query');
  onlyParams(ctx, iss, ['version', 'archive']);
  const version = ctx.query.get('version') || 'current';
  if (!['current', 'completed'].includes(version)) iss.add('version', 'This value should be one of: current, completed.');
  const archive = boolQuery(ctx, iss, 'archive');
  iss.done();
  if (version === 'completed' && sr.status !== 'done') {
    throw problem(400, 'document.unable_to_download_signature_request_not_in_done', 'The completed version can only be downloaded once the Signature Request is done.');
  }
  if (!sr.documents.length) throw notFound('Document');
  if (sr.documents.length === 1 && !archive) {
    const d = sr.documents[0];
    return sendFile(ctx, d.content_type, d.filename, d.content);
  }
  sendFile(ctx, 'application/zip', `${sr.name.replace(/[^\w.-]+/g, '_')}.zip`, buildZip(sr.documents.map((d, i) => ({ name: `${i + 1}_${d.filename}`, data: d.content }))));
}

/* hDownloadDoc: [OAS] GET .../documents/{doc}/download -> the PDF as it is now (signed once signed). */
function hDownloadDoc(ctx) {
  const sr = getSr(ctx.params.signatureRequestId);
  const d = getDoc(sr, ctx.params.documentId);
  sendFile(ctx, d.content_type, d.filename, d.content);
}

/*
 * Audit trails [OAS, D/x]: GET .../audit_trails/download?merge=true -> PDF
 * (ZIP of one PDF per signer without merge when there are several) once
 * done; GET .../signers/{sid}/audit_trails/download once that signer
 * signed; before that 400 audit_trail.not_ready_for_download ("retry
 * later").  Audit trails lag behind: --audit-trail-delay-ms on the double's
 * clock.  An older QES page says QES has no audit trail, the newer one is
 * silent (unconfirmed): --qes-audit-trail available (default) or never
 * (always not ready for a QES request).
 */
function auditReady(sr, since) {
  if (rt.o.qes_audit_trail === 'never' && sr.signers.some((s) => s.signature_level === QES)) return false;
  return since !== null && clockNow() >= since + rt.o.audit_trail_delay_ms;
}
const notReady = () => problem(400, 'audit_trail.not_ready_for_download', 'The audit trail is not ready for download yet, retry later.');

function auditLines(sr, s) {
  return [
    'Audit trail (Yousign test double)', '',
    `Signature request: ${sr.id}`, `Name: ${sr.name}`, `Status: ${sr.status}`, `Signer: ${s.id}`,
    `Signer name: ${s.info.first_name} ${s.info.last_name} <${s.info.email}>`, `Level: ${s.signature_level}`,
    `Notified: ${fmtTime(s.notified_at)}`, `Identified: ${fmtTime(s.verified_at)}`, `Signed: ${fmtTime(s.signed_at)}`,
    ...sr.documents.map((d) => `Document ${d.id} ${d.filename} sha256 ${d.sha256}`),
  ];
}

function hAuditTrail(ctx) {
  const sr = getSr(ctx.params.signatureRequestId);
  const iss = new Issues('query');
  onlyParams(ctx, iss, ['merge']);
  const merge = boolQuery(ctx, iss, 'merge');
  iss.done();
  if (sr.status !== 'done' || !auditReady(sr, sr.completed_at)) throw notReady();
  if (merge || sr.signers.length === 1) {
    return sendFile(ctx, 'application/pdf', `audit_trail_${sr.id}.pdf`, buildPdf(sr.signers.flatMap((s) => auditLines(sr, s).concat(['']))));
  }
  sendFile(ctx, 'application/zip', `audit_trails_${sr.id}.zip`, buildZip(sr.signers.map((s) => ({ name: `audit_trail_${s.id}.pdf`, data: buildPdf(auditLines(sr, s)) }))));
}

function hSignerAuditTrail(ctx) {
  const sr = getSr(ctx.params.signatureRequestId);
  const s = getSigner(sr, ctx.params.signerId);
  if (s.status !== 'signed' || !auditReady(sr, s.signed_at)) throw notReady();
  sendFile(ctx, 'application/pdf', `audit_trail_${s.id}.pdf`, buildPdf(auditLines(sr, s)));
}

/* buildPdf writes a small valid PDF (Helvetica, 54 lines per A4 page) with a correct xref table. */
const buildPdf = (lines) => doubles.buildPdf(lines, { version: '1.7', winAnsi: false });

let crcTable = null;
function crc32(buf) {
  if (typeof zlib.crc32 === 'function') return zlib.crc32(buf) >>> 0;
  if (!crcTable) {
    crcTable = new Int32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xEDB88320 ^ (c >>> 1) : c >>> 1;
      crcTable[n] = c;
    }
  }
  let c = -1;
  for (let i = 0; i < buf.length; i++) c = crcTable[(c ^ buf[i]) & 0xff] ^ (c >>> 8);
  return (c ^ -1) >>> 0;
}

/* buildZip writes a ZIP archive of stored (uncompressed) entries with UTF-8 names. */
function buildZip(files) {
  const chunks = [];
  const central = [];
  let offset = 0;
  for (const f of files) {
    const name = Buffer.from(f.name, 'utf8');
    const crc = crc32(f.data);
    const lh = Buffer.alloc(30);
    lh.writeUInt32LE(0x04034b50, 0);
    lh.writeUInt16LE(20, 4);
    lh.writeUInt16LE(0x0800, 6);
    lh.writeUInt16LE(0, 8);
    lh.writeUInt16LE(0, 10);
    lh.writeUInt16LE(0x21, 12);
    lh.writeUInt32LE(crc, 14);
    lh.writeUInt32LE(f.data.length, 18);
    lh.writeUInt32LE(f.data.length, 22);
    lh.writeUInt16LE(name.length, 26);
    lh.writeUInt16LE(0, 28);
    chunks.push(lh, name, f.data);
    const ch = Buffer.alloc(46);
    ch.writeUInt32LE(0x02014b50, 0);
    ch.writeUInt16LE(20, 4);
    ch.writeUInt16LE(20, 6);
    ch.writeUInt16LE(0x0800, 8);
    ch.writeUInt16LE(0, 10);
    ch.writeUInt16LE(0, 12);
    ch.writeUInt16LE(0x21, 14);
    ch.writeUInt32LE(crc, 16);
    ch.writeUInt32LE(f.data.length, 20);
    ch.writeUInt32LE(f.data.length, 24);
    ch.writeUInt16LE(name.length, 28);
    ch.writeUInt32LE(offset, 42);
    central.push(ch, name);
    offset += 30 + name.length + f.data.length;
  }
  const cd = Buffer.concat(central);
  const end = Buffer.alloc(22);
  end.writeUInt32LE(0x06054b50, 0);
  end.writeUInt16LE(files.length, 8);
  end.writeUInt16LE(files.length, 10);
  end.writeUInt32LE(cd.length, 12);
  end.writeUInt32LE(offset, 16);
  return Buffer.concat([...chunks, cd, end]);
}

/* ------------------------------------------------------------------ */
/* Webhooks                                                            */
/* ------------------------------------------------------------------ */

const whAgents = {
  'http:': new http.Agent({ keepAlive: true, maxSockets: 64 }),
  'https:': new https.Agent({ keepAlive: true, maxSockets: 64 }),
};

function subscribed(name) {
  const ev = String(wh.events).trim();
  if (ev === '*' || ev === '') return true;
  return ev.split(',').map((x) => x.trim()).includes(name);
}

/*
 * emit builds one event [D/use-webhooks-in-your-app]: {event_id,
 * event_name, event_time (Unix seconds as a string, fixed across retries),
 * subscription_id, subscription_description, sandbox, data:
 * {signature_request, signer (signer events)}}.  A third-party fixture set
 * nests the first six under metadata: --webhook-body flat (default) or
 * metadata.  /_control/webhook-faults can drop an event or deliver it twice
 * (duplicates happen [D/failure-and-retry-policy]).
 */
function emit(name, sr, signer) {
  if (!wh.url || !wh.enabled || !subscribed(name)) return;
  const meta = {
    event_id: uuid(), event_name: name, event_time: String(Math.floor(clockNow() / 1000)),
    subscription_id: wh.subscription_id, subscription_description: wh.description, sandbox: cfg.sandbox,
  };
  const data = { signature_request: srView(sr) };
  if (signer) data.signer = signerView(sr, signer);
  const body = JSON.stringify(rt.o.webhook_body === 'metadata' ? { metadata: meta, data } : Object.assign(meta, { data }));
  stats.webhooks.events++;
  sr.webhooks++;
  let copies = 1;
  const f = wh.faults;
  if (f && (!f.eventsRe || f.eventsRe.test(name))) {
    if (f.drop_count > 0) { f.drop_count--; copies = 0; } else if (f.drop_rate > 0 && wh.rng() < f.drop_rate) copies = 0;
    if (copies) {
      if (f.duplicate_count > 0) { f.duplicate_count--; copies = 2; } else if (f.duplicate_rate > 0 && wh.rng() < f.duplicate_rate) copies = 2;
    }
  }
  const base = { event_id: meta.event_id, event_name: name, signature_request_id: sr.id, signer_id: signer ? signer.id : null, body, created_at: fmtTime(clockNow()) };
  if (copies === 0) {
    stats.webhooks.dropped++;
    wh.deliveries.push(Object.assign({ id: uuid(), state: 'dropped', attempts: 0, log: [], duplicate: false }, base));
    return;
  }
  if (copies === 2) stats.webhooks.duplicated++;
  for (let i = 0; i < copies; i++) {
    const jitter = rt.o.webhook_order === 'shuffle' ? Math.floor(wh.rng() * (rt.o.webhook_shuffle_ms + 1)) : 0;
    const d = Object.assign({ id: uuid(), state: 'pending', attempts: 0, log: [], duplicate: i === 1, next_at: Date.now() + jitter, busy: false, timedOutFirst: false }, base);
    wh.deliveries.push(d);
    wh.pending.push(d);
    stats.webhooks.pending++;
  }
  if (wh.deliveries.length > 20000) wh.deliveries.splice(0, wh.deliveries.length - 20000);
  pumpWebhooks();
}

/*
 * pumpWebhooks starts due deliveries.  Ordering is not documented
 * (unconfirmed): --webhook-order serial (default) sends one at a time, the
 * oldest due first (a delivery waiting for its retry does not hold back
 * later ones); shuffle sends every due delivery at once after a random
 * first delay.
 */
function pumpWebhooks() {
  if (wh.timer) { clearTimeout(wh.timer); wh.timer = null; }
  if (wh.paused || shuttingDown) return;
  const now = Date.now();
  const serial = rt.o.webhook_order === 'serial';
  let nextAt = Infinity;
  for (const d of wh.pending) {
    if (d.busy) continue;
    if (serial && wh.inFlight > 0) break;
    if (d.next_at <= now) attempt(d);
    else if (d.next_at < nextAt) nextAt = d.next_at;
  }
  if (nextAt < Infinity && !(serial && wh.inFlight > 0)) wh.timer = setTimeout(() => { wh.timer = null; pumpWebhooks(); }, nextAt - now);
}

/*
 * attempt sends one delivery [D/use-webhooks-in-your-app, D/security]:
 * POST JSON, User-Agent: Yousign Webhook Bot, X-Yousign-Signature-256:
 * sha256=<hex HMAC-SHA256 of the raw body keyed with the secret>,
 * X-Yousign-Retry: n (0 first; an older page says X-Yousign-Retry-Count:
 * --webhook-retry-header), X-Yousign-Issued-At (format unconfirmed:
 * --webhook-issued-at unix, iso or off).
 * [D/failure-and-retry-policy]: success is a 2xx/3xx answer in time (1 s
 * for the first try, 10 s for retries); more than 2 redirects fail
 * (--webhook-redirects follow: up to 2 redirects are followed; success: a
 * 3xx counts as delivered).  With auto_retry, 8 retries after 2 min,
 * 6 min, 30 min, 1 h, 5 h, 18 h, 1 d, 2 d (--webhook-retry-schedule-ms);
 * a first try that timed out is retried once even without auto_retry.
 */
function attempt(d) {
  d.busy = true;
  wh.inFlight++;
  const n = d.attempts;
  d.attempts++;
  stats.webhooks.attempts++;
  const gen = generation;
  const sig = 'sha256=' + crypto.createHmac('sha256', wh.secret).update(d.body).digest('hex');
  const headers = {
    'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(d.body),
    'User-Agent': 'Yousign Webhook Bot', 'X-Yousign-Signature-256': sig,
  };
  const rh = rt.o.webhook_retry_header;
  if (rh === 'retry' || rh === 'both') headers['X-Yousign-Retry'] = String(n);
  if (rh === 'retry-count' || rh === 'both') headers['X-Yousign-Retry-Count'] = String(n);
  if (rt.o.webhook_issued_at === 'unix') headers['X-Yousign-Issued-At'] = String(Math.floor(clockNow() / 1000));
  else if (rt.o.webhook_issued_at === 'iso') headers['X-Yousign-Issued-At'] = fmtTime(clockNow());
  const timeout = n === 0 ? rt.o.webhook_first_timeout_ms : rt.o.webhook_retry_timeout_ms;
  const t0 = Date.now();
  const deadline = t0 + timeout;
  const follow = rt.o.webhook_redirects === 'follow';
  let url = wh.url;
  let redirects = 0;
  const go = () => postOnce(url, d.body, headers, Math.max(1, deadline - Date.now()), (err, status, rh2) => {
    if (!err && status >= 300 && status < 400 && follow) {
      if (redirects >= 2 || !rh2.location) return done(false, status, redirects >= 2 ? 'more than 2 redirects' : 'redirect without Location');
      redirects++;
      try {
        url = new URL(rh2.location, url).toString();
      } catch {
        return done(false, status, 'bad Location');
      }
      return go();
    }
    if (err) return done(false, null, err.code === 'TIMEOUT' ? 'timeout' : (err.code || err.message));
    done(status >= 200 && status < 400, status, null);
  });
  const done = (ok, status, error) => {
    if (gen !== generation) return;
    d.busy = false;
    wh.inFlight--;
    d.log.push({ attempt: n, status, error, ms: Date.now() - t0, url });
    if (ok) {
      d.state = 'delivered';
      stats.webhooks.delivered++;
    } else {
      stats.webhooks.failed_attempts++;
      if (n === 0 && error === 'timeout') d.timedOutFirst = true;
      const sched = parseSchedule(rt.o.webhook_retry_schedule_ms) || [];
      const retriesDone = n;
      let delay = null;
      if (rt.o.webhook_auto_retry && retriesDone < sched.length) delay = sched[retriesDone];
      else if (!rt.o.webhook_auto_retry && n === 0 && d.timedOutFirst) delay = sched.length ? sched[0] : 0;
      if (delay === null) {
        d.state = 'failed';
        stats.webhooks.given_up++;
      } else {
        d.next_at = Date.now() + delay;
      }
    }
    if (d.state !== 'pending') {
      wh.pending.splice(wh.pending.indexOf(d), 1);
      stats.webhooks.pending--;
    }
    pumpWebhooks();
  };
  go();
}

/* postOnce POSTs a body; cb(err, status, headers). */
function postOnce(url, body, headers, timeoutMs, cb) {
  let finished = false;
  const finish = (...a) => { if (!finished) { finished = true; cb(...a); } };
  let u;
  try {
    u = new URL(url);
    if (!whAgents[u.protocol]) throw new Error('unsupported protocol');
  } catch (e) {
    return setImmediate(() => finish(Object.assign(new Error(e.message), { code: 'INVALID_URL' })));
  }
  const req = (u.protocol === 'https:' ? https : http).request(u, { method: 'POST', agent: whAgents[u.protocol], headers }, (res) => {
    res.resume();
    res.on('end', () => finish(null, res.statusCode, res.headers));
    res.on('error', (e) => finish(e));
  });
  req.setTimeout(timeoutMs, () => req.destroy(Object.assign(new Error('timeout'), { code: 'TIMEOUT' })));
  const hard = setTimeout(() => req.destroy(Object.assign(new Error('timeout'), { code: 'TIMEOUT' })), timeoutMs);
  req.on('close', () => clearTimeout(hard));
  req.on('error', (e) => finish(e));
  req.end(body);
}

function webhookView() {
  return {
    url: wh.url, secret: wh.secret, events: wh.events, description: wh.description, subscription_id: wh.subscription_id,
    enabled: wh.enabled, paused: wh.paused, sandbox: cfg.sandbox,
    auto_retry: rt.o.webhook_auto_retry, retry_schedule_ms: rt.o.webhook_retry_schedule_ms,
    first_timeout_ms: rt.o.webhook_first_timeout_ms, retry_timeout_ms: rt.o.webhook_retry_timeout_ms,
  };
}

function deliveryView(d) {
  const { body, busy, next_at, timedOutFirst, ...rest } = d;
  return Object.assign(rest, { event: JSON.parse(body) });
}

/* setWebhook serves POST /_control/webhook: {url, secret, events, description, enabled}. */
function setWebhook(b) {
  for (const k of Object.keys(b)) if (!['url', 'secret', 'events', 'description', 'enabled'].includes(k)) throw badControl(`unknown webhook setting ${k}`);
  if (b.url !== undefined) {
    if (typeof b.url !== 'string') throw badControl('url must be a string');
    if (b.url !== '') {
      try { new URL(b.url); } catch { throw badControl('url is not a URL'); }
    }
    wh.url = b.url;
  }
  if (b.secret !== undefined) {
    if (typeof b.secret !== 'string' || b.secret === '') throw badControl('secret must be a non-empty string');
    wh.secret = b.secret;
  }
  if (b.events !== undefined) {
    const list = Array.isArray(b.events) ? b.events : String(b.events).split(',').map((x) => x.trim());
    const bad = list.filter((x) => x !== '*' && !WEBHOOK_EVENTS.includes(x));
    if (bad.length) throw badControl(`unknown events ${bad.join(', ')}`);
    wh.events = list.join(',');
  }
  if (b.description !== undefined) wh.description = String(b.description);
  if (b.enabled !== undefined) wh.enabled = !!b.enabled;
  return webhookView();
}

/* setWebhookFaults serves POST /_control/webhook-faults: drop or duplicate events; {} clears. */
function setWebhookFaults(b) {
  if (Object.keys(b).length === 0) {
    wh.faults = null;
    return {};
  }
  for (const k of Object.keys(b)) if (!['drop_count', 'drop_rate', 'duplicate_count', 'duplicate_rate', 'events', 'seed'].includes(k)) throw badControl(`unknown webhook fault ${k}`);
  const { rate } = doubles.faultReaders(b, badControl);
  const int = (k) => {
    const v = b[k] === undefined ? 0 : b[k];
    if (!Number.isInteger(v) || v < 0) throw badControl(`${k} must be a non-negative integer`);
    return v;
  };
  const f = { drop_count: int('drop_count'), drop_rate: rate('drop_rate'), duplicate_count: int('duplicate_count'), duplicate_rate: rate('duplicate_rate'), events: b.events == null ? null : String(b.events) };
  try {
    f.eventsRe = f.events === null ? null : new RegExp(f.events);
  } catch (e) {
    throw badControl('events is not a valid regular expression: ' + e.message);
  }
  wh.faults = f;
  wh.rng = mulberry32(b.seed === undefined ? cfg.seed : int('seed'));
  return webhookFaultsView();
}

function webhookFaultsView() {
  if (!wh.faults) return {};
  const { eventsRe, ...rest } = wh.faults;
  return rest;
}

/* ------------------------------------------------------------------ */
/* Control interface                                                   */
/* ------------------------------------------------------------------ */

function controlSrView(sr) {
  return Object.assign(srView(sr), {
    _double: {
      signers: sr.signers.map((s) => Object.assign(signerView(sr, s), {
        identification_blocked: s.blocked, failed_identifications: s.failed_identifications,
        reminders: s.reminders, automatic_reminders: s.auto_reminders,
      })),
      documents: sr.documents.map((d) => Object.assign(docView(d), { anchors: d.anchors, size: d.content.length })),
      cancel: sr.cancel, sender_id: sr.sender_id || null, webhooks: sr.webhooks, events: sr.events,
    },
  });
}

function clockView() {
  return doubles.clockView(clockNow());
}

function setClock(b) {
  clockOffsetMs = doubles.clockOffset(b, clockOffsetMs, badControl);
  sweep();
  return clockView();
}

function optionsView() {
  return Object.assign({}, rt.o);
}

/* setOptions serves POST /_control/options: checks every given value first, then sets them all. */
function setOptions(b) {
  const next = {};
  for (const [name, v] of Object.entries(b)) {
    const r = RUNTIME[name];
    if (!r) throw badControl(`unknown option ${name}; known: ${Object.keys(RUNTIME).join(', ')}`);
    const spec = r.spec;
    let val;
    if (spec.type === 'int') {
      if (!Number.isInteger(v) || v < 0) throw badControl(`${name} must be a non-negative integer`);
      val = v;
    } else if (spec.type === 'switch') {
      val = doubles.switchValue(v);
      if (val === undefined) throw badControl(`${name} must be true or false (or "on" or "off")`);
    } else if (spec.type === 'enum') {
      if (!spec.values.includes(v)) throw badControl(`${name} must be one of ${spec.values.join(', ')}`);
      val = v;
    } else {
      if (typeof v !== 'string') throw badControl(`${name} must be a string`);
      val = v;
    }
    const bad = checkRuntimeValue(name, val);
    if (bad) throw badControl(bad);
    next[name] = val;
  }
  Object.assign(rt.o, next);
  pumpWebhooks();
  return optionsView();
}

function reset() {
  for (const t of heldTimers) clearTimeout(t);
  heldTimers.clear();
  if (wh.timer) clearTimeout(wh.timer);
  generation++;
  state = freshState();
  rt = freshRuntime();
  stats = freshStats();
  wh = freshWebhooks();
  clockOffsetMs = startClockOffsetMs;
  srSeq = 0;
}

/* handleControl serves /_control/...: signer actions, faults, scripts, clock, options, webhooks, stats, reset. */
function handleControl(ctx, segs) {
  const m = ctx.method;
  const p = segs.join('/');
  const ok = (o = { ok: true }) => sendJson(ctx, 200, o);
  const body = () => {
    if (!ctx.body || ctx.body.length === 0) return {};
    let b;
    try {
      b = JSON.parse(ctx.body.toString('utf8'));
    } catch (e) {
      throw badControl('body is not JSON: ' + e.message);
    }
    if (!isObj(b)) throw badControl('body must be a JSON object');
    return b;
  };

  if (m === 'GET' && (p === '' || p === 'health')) return ok({ ok: true, port: server.address().port });
  if (m === 'POST' && p === 'reset') { reset(); return ok(); }
  if (m === 'GET' && p === 'clock') return ok(clockView());
  if (m === 'POST' && p === 'clock') return ok(setClock(body()));
  if (m === 'GET' && p === 'stats') return ok(Object.assign({}, stats, { webhooks: Object.assign({}, stats.webhooks, { paused: wh.paused }) }));
  if (m === 'GET' && p === 'requests') {
    const ext = ctx.query.get('external_id');
    const list = [];
    for (const sr of state.srs.values()) if (ext === null || sr.external_id === ext) list.push(controlSrView(sr));
    return ok(list);
  }
  if (m === 'GET' && p === 'emails') return ok(state.emails);
  if (m === 'GET' && p === 'options') return ok(optionsView());
  if (m === 'POST' && p === 'options') return ok(setOptions(body()));
  if (m === 'GET' && p === 'faults') return ok(faultsView());
  if (m === 'POST' && p === 'faults') { setFaults(body()); return ok(faultsView()); }
  if (m === 'GET' && p === 'script') return ok(scriptsView());
  if (m === 'POST' && p === 'script') return ok(setScript(body()));
  if (m === 'GET' && p === 'webhook') return ok(webhookView());
  if (m === 'POST' && p === 'webhook') return ok(setWebhook(body()));
  if (m === 'GET' && p === 'webhook-faults') return ok(webhookFaultsView());
  if (m === 'POST' && p === 'webhook-faults') return ok(setWebhookFaults(body()));
  if (m === 'GET' && p === 'webhooks') {
    const ev = ctx.query.get('event_name');
    const sr = ctx.query.get('signature_request_id');
    return ok(wh.deliveries.filter((d) => (ev === null || d.event_name === ev) && (sr === null || d.signature_request_id === sr)).map(deliveryView));
  }
  if (m === 'POST' && p === 'pause-webhooks') { wh.paused = true; pumpWebhooks(); return ok({ paused: true }); }
  if (m === 'POST' && p === 'resume-webhooks') { wh.paused = false; pumpWebhooks(); return ok({ paused: false }); }

  if (segs[0] === 'signature_requests' && segs.length >= 2) {
    const sr = getSr(segs[1]);
    if (segs.length === 2 && m === 'GET') return ok(controlSrView(sr));
    if (segs.length === 3 && m === 'POST' && segs[2] === 'expire') {
      if (sr.status !== 'ongoing') throw conflict(`the Signature Request is ${sr.status}`);
      expire(sr);
      return ok(srView(sr));
    }
    if (segs.length === 3 && m === 'POST' && segs[2] === 'status') {
      /* force any status string, e.g. paused (enum only) or an unknown one: clients must tolerate unknown values [README 3] */
      const b = body();
      if (typeof b.status !== 'string' || b.status === '') throw badControl('status must be a non-empty string');
      sr.status = b.status;
      addEvent(sr, 'status_forced', { status: b.status });
      return ok(srView(sr));
    }
    if (segs.length === 5 && segs[2] === 'signers' && m === 'POST') {
      const s = findSigner(sr, segs[3]);
      const b = body();
      const act = segs[4];
      if (act === 'open') ctlOpen(sr, s);
      else if (act === 'identify') {
        if (!ctlIdentify(sr, s, b)) throw conflict('the names do not match the ID document: identification failed and blocked');
      } else if (act === 'consent') ctlConsent(sr, s, b);
      else if (act === 'sign') ctlSign(sr, s, b);
      else if (act === 'decline') ctlDecline(sr, s, b);
      else if (act === 'error') ctlError(sr, s);
      else throw new ApiError(404, { type: 'double.not_found', detail: `unknown signer action ${act}` });
      return ok(Object.assign(srView(sr), { signer: signerView(sr, s) }));
    }
  }
  throw new ApiError(404, { type: 'double.not_found', detail: `No control endpoint ${m} /_control/${p}` });
}

/* ------------------------------------------------------------------ */
/* Start and stop                                                      */
/* ------------------------------------------------------------------ */

const server = doubles.createServer(onRequest, conns, () => stats);

/* the time-driven behaviour (expiry, reminders) also runs without calls */
const sweepTimer = setInterval(sweep, 250);
sweepTimer.unref();

server.listen(cfg.port, '127.0.0.1', () => {
  process.stdout.write(`LISTENING ${server.address().port}\n`);
});
server.on('error', (e) => fail(`cannot listen: ${e.message}`));

/* shutdown closes every connection and exits 0. */
function shutdown() {
  if (shuttingDown) return;
  shuttingDown = true;
  clearInterval(sweepTimer);
  for (const t of heldTimers) clearTimeout(t);
  if (wh.timer) clearTimeout(wh.timer);
  whAgents['http:'].destroy();
  whAgents['https:'].destroy();
  doubles.closeAndExit(server);
}
doubles.onSignals('yousign_double', shutdown);
