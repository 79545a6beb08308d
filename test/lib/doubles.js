'use strict';
/*
 * test/lib/doubles.js: the code the HTTP test doubles of the signing APIs
 * (test/skribble_double/server.js, test/yousign_double/server.js) share:
 * option parsing, the seeded PRNG, body reading, routing, the scripted
 * answers and the common part of fault injection of /_control, the clock
 * control, a small PDF writer and reader, and the HTTP server with its
 * connection count and shutdown.  Each double keeps its own API, error
 * bodies and state; where the two differ the caller passes it in (the
 * error constructor of a bad control body, the clock, the limits).
 * Node 20, standard library only.
 */

const http = require('node:http');
const crypto = require('node:crypto');

/* ------------------------------------------------------------------ */
/* Options                                                             */
/* ------------------------------------------------------------------ */

const SWITCH_ON = ['on', 'true', 'yes', '1'];
const SWITCH_OFF = ['off', 'false', 'no', '0'];

/*
 * parseOptions reads <envPrefix><NAME> environment variables, then --name
 * value / --name=value flags, for the option specs `options` ({def, type:
 * int|str|bool|switch|enum, values, help}); --help prints them and exits.
 * fail(msg) reports a bad option (and exits).  emptyIntOk: an empty string
 * counts as 0 for an int option (else it is refused).
 */
function parseOptions(argv, env, options, { envPrefix, fail, emptyIntOk = false }) {
  const convert = (name, spec, raw) => convertOption(name, spec, raw, fail, emptyIntOk);
  const out = {};
  for (const [name, spec] of Object.entries(options)) {
    const ev = env[envPrefix + name.toUpperCase().replace(/-/g, '_')];
    out[name] = ev !== undefined ? convert(name, spec, ev) : spec.def;
  }
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '--help' || arg === '-h') {
      process.stdout.write('usage: node server.js [options]\n' + Object.entries(options).map(([n, s]) =>
        `  --${n}${s.type === 'bool' ? '' : s.type === 'switch' ? ' [on|off]' : s.type === 'enum' ? ` <${s.values.join('|')}>` : ' <' + s.type + '>'}  ${s.help} ` +
        `(default ${s.def === null ? 'as said' : s.type === 'switch' ? (s.def ? 'on' : 'off') : JSON.stringify(s.def)})`).join('\n') + '\n');
      process.exit(0);
    }
    const m = /^--([a-z0-9-]+)(?:=(.*))?$/.exec(arg);
    if (!m || !options[m[1]]) fail(`unknown option ${arg}`);
    const spec = options[m[1]];
    let val = m[2];
    if (val === undefined) {
      if (spec.type === 'bool') val = 'true';
      /* a switch takes on/off as its next argument; given alone it means on */
      else if (spec.type === 'switch') val = i + 1 < argv.length && SWITCH_ON.concat(SWITCH_OFF).includes(argv[i + 1].toLowerCase()) ? argv[++i] : 'on';
      else if (i + 1 < argv.length) val = argv[++i];
      else fail(`option --${m[1]} needs a value`);
    }
    out[m[1]] = convert(m[1], spec, val);
  }
  return out;
}

function convertOption(name, spec, raw, fail, emptyIntOk) {
  if (spec.type === 'int') {
    const n = Number(raw);
    if ((!emptyIntOk && String(raw).trim() === '') || !Number.isInteger(n) || n < 0) fail(`option --${name} needs a non-negative integer, got ${raw}`);
    return n;
  }
  if (spec.type === 'bool') return !['0', 'false', 'no', 'off', ''].includes(String(raw).toLowerCase());
  if (spec.type === 'switch') {
    const v = String(raw).toLowerCase();
    if (SWITCH_ON.includes(v)) return true;
    if (SWITCH_OFF.includes(v)) return false;
    fail(`option --${name} needs on or off, got ${raw}`);
  }
  if (spec.type === 'enum' && !spec.values.includes(String(raw))) fail(`option --${name} must be one of ${spec.values.join(', ')}, got ${raw}`);
  return String(raw);
}

/* switchValue reads a switch given through /_control/options: a boolean or on/off/true/false/yes/no/1/0; undefined if it is none. */
function switchValue(v) {
  if (typeof v === 'boolean') return v;
  if (typeof v === 'string' && SWITCH_ON.concat(SWITCH_OFF).includes(v.toLowerCase())) return SWITCH_ON.includes(v.toLowerCase());
  return undefined;
}

/* makeFail returns fail(msg): "<name>: msg" on stderr, exit 2. */
function makeFail(name) {
  return (msg) => {
    process.stderr.write(`${name}: ${msg}\n`);
    process.exit(2);
  };
}

/* parseIsoTime parses an ISO 8601 date-time with a zone (Z or +hh:mm) to epoch ms; null if it is not one. */
function parseIsoTime(v) {
  if (typeof v !== 'string' || !/^\d{4}-\d\d-\d\dT\d\d:\d\d(:\d\d(\.\d+)?)?(Z|[+-]\d\d:\d\d)$/.test(v)) return null;
  const ms = Date.parse(v);
  return Number.isNaN(ms) ? null : ms;
}

/* ------------------------------------------------------------------ */
/* Small helpers                                                       */
/* ------------------------------------------------------------------ */

/* mulberry32 is a tiny seedable PRNG, so fault injection is reproducible. */
function mulberry32(seed) {
  let a = seed >>> 0;
  return function next() {
    a = (a + 0x6D2B79F5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const sha256hex = (buf) => crypto.createHash('sha256').update(buf).digest('hex');
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/* safeEqual compares two strings in constant time (through their SHA-256). */
function safeEqual(a, b) {
  const x = crypto.createHash('sha256').update(String(a)).digest();
  const y = crypto.createHash('sha256').update(String(b)).digest();
  return crypto.timingSafeEqual(x, y);
}

/* ------------------------------------------------------------------ */
/* HTTP plumbing                                                       */
/* ------------------------------------------------------------------ */

/*
 * makeSend returns send(ctx, status, headers, body): nothing once the answer
 * is sent, the socket gone or the call dropped; the Date header from the
 * double's clock (clockNow), like every other time; ctx.rlHeaders (rate
 * limit headers), if any, are set too.
 */
function makeSend(clockNow) {
  return function send(ctx, status, headers, body) {
    const res = ctx.res;
    if (res.headersSent || res.destroyed || ctx.dropped) return;
    res.sendDate = false;
    res.setHeader('Date', new Date(clockNow()).toUTCString());
    if (ctx.rlHeaders) for (const [k, v] of Object.entries(ctx.rlHeaders)) res.setHeader(k, v);
    res.writeHead(status, headers);
    res.end(body);
  };
}

/* readBody collects the request body up to limit bytes; beyond that it drains and reports overflow: cb(buf or null, over). */
function readBody(req, limit, cb) {
  let chunks = [];
  let size = 0;
  let over = Number(req.headers['content-length'] || 0) > limit;
  let drained = 0;
  req.on('data', (c) => {
    if (over) {
      drained += c.length;
      if (drained > 4 * limit) req.destroy();
      return;
    }
    size += c.length;
    if (size > limit) {
      over = true;
      chunks = null;
      return;
    }
    chunks.push(c);
  });
  req.on('end', () => cb(over ? null : (chunks.length === 1 ? chunks[0] : Buffer.concat(chunks, size)), over));
  req.on('error', () => {});
}

/* runGuarded runs a (sync or async) handler; whatever it throws or rejects with goes to onErr. */
function runGuarded(fn, onErr) {
  try {
    const r = fn();
    if (r && typeof r.then === 'function') r.catch(onErr);
  } catch (e) {
    onErr(e);
  }
}

/* ------------------------------------------------------------------ */
/* Routing                                                             */
/* ------------------------------------------------------------------ */

/* compileRoutes turns [method, template, handler, opts] rows ({NAME} = a path parameter) into routes. */
function compileRoutes(rows) {
  return rows.map(([method, template, handler, opts]) => ({
    method, template, handler, opts: opts || {}, key: `${method} ${template}`,
    segs: template.split('/').slice(1).map((s) => (s[0] === '{' ? { param: s.slice(1, -1) } : s)),
  }));
}

/* matchRoute finds the first route of a path and method: {route, params}, or {pathKnown} (true when only the method is wrong). */
function matchRoute(routes, method, segs) {
  let pathKnown = false;
  for (const r of routes) {
    if (r.segs.length !== segs.length) continue;
    let params = {};
    for (let i = 0; i < segs.length; i++) {
      const s = r.segs[i];
      if (typeof s === 'string') {
        if (s !== segs[i]) { params = null; break; }
      } else {
        params[s.param] = segs[i];
      }
    }
    if (!params) continue;
    if (r.method === method) return { route: r, params };
    pathKnown = true;
  }
  return { pathKnown };
}

/* splitPath: the decoded segments of a path, without a trailing empty one. */
function splitPath(pathname) {
  const segs = pathname.split('/').slice(1);
  if (segs.length > 1 && segs[segs.length - 1] === '') segs.pop();
  try {
    return segs.map(decodeURIComponent);
  } catch {
    return segs;
  }
}

/* newCtx: the per-call context of a request (path, query; the rest filled in by the double). */
function newCtx(req, res, extra = {}) {
  const url = req.url;
  const qi = url.indexOf('?');
  const path = qi < 0 ? url : url.slice(0, qi);
  return Object.assign({
    req, res, method: req.method, path, query: new URLSearchParams(qi < 0 ? '' : url.slice(qi + 1)),
    params: {}, body: null, route: null, key: null, dropped: false,
  }, extra);
}

/* logRequests: with --verbose, one line per answered request on stderr. */
function logRequest(req, res) {
  const t0 = Date.now();
  res.on('close', () => process.stderr.write(`${req.method} ${req.url} ${res.statusCode} ${Date.now() - t0}ms\n`));
}

/* ------------------------------------------------------------------ */
/* Fault injection (the common part)                                   */
/* ------------------------------------------------------------------ */

/* faultReaders: rate(k) and int(k, dflt, min, max) read and check fields of a fault body b; err(msg) makes the error to throw. */
function faultReaders(b, err) {
  const rate = (k) => {
    const v = b[k] === undefined ? 0 : b[k];
    if (typeof v !== 'number' || !(v >= 0 && v <= 1)) throw err(`${k} must be a number between 0 and 1`);
    return v;
  };
  const int = (k, dflt, min, max) => {
    const v = b[k] === undefined ? dflt : b[k];
    if (!Number.isInteger(v) || v < min || v > max) throw err(`${k} must be an integer between ${min} and ${max}`);
    return v;
  };
  return { rate, int };
}

/* installFaults compiles f.paths, installs f as rt.faults and reseeds rt.rng with f.seed. */
function installFaults(rt, f, err) {
  try {
    f.pathsRe = f.paths === null ? null : new RegExp(f.paths);
  } catch (e) {
    throw err('paths is not a valid regular expression: ' + e.message);
  }
  rt.faults = f;
  rt.rng = mulberry32(f.seed);
  return f;
}

function faultsView(rt) {
  if (!rt.faults) return {};
  const { pathsRe, ...rest } = rt.faults;
  return rest;
}

/* pathsMatch: whether the faults' paths regular expression matches this call (its path, "METHOD path" or route key). */
const pathsMatch = (re, ctx) => re.test(ctx.path) || re.test(`${ctx.method} ${ctx.path}`) || re.test(ctx.key);

/* holdAnswer (a timeout fault) answers with onTimeout after ms without doing the work; the timer is in held until then. */
function holdAnswer(ctx, ms, held, onTimeout) {
  const t = setTimeout(() => {
    held.delete(t);
    onTimeout();
  }, ms);
  held.add(t);
  ctx.res.on('close', () => { clearTimeout(t); held.delete(t); });
}

/* ------------------------------------------------------------------ */
/* Scripted answers: exactly this status, these headers, this body     */
/* ------------------------------------------------------------------ */

/* setScript serves POST /_control/script for rt.scripts: the next `times` matching API calls get the given answer; {} clears every script. */
function setScript(rt, b, err) {
  if (Object.keys(b).length === 0) {
    rt.scripts = [];
    return scriptsView(rt);
  }
  const str = (k, dflt) => {
    const v = b[k] === undefined ? dflt : b[k];
    if (typeof v !== 'string') throw err(`${k} must be a string`);
    return v;
  };
  const times = b.times === undefined ? 1 : b.times;
  if (!Number.isInteger(times) || times < 1 || times > 1e9) throw err('times must be an integer between 1 and 1000000000');
  const status = b.status === undefined ? 200 : b.status;
  if (!Number.isInteger(status) || status < 200 || status > 599) throw err('status must be an integer between 200 and 599');
  const headers = b.headers === undefined ? {} : b.headers;
  if (!headers || typeof headers !== 'object' || Array.isArray(headers)) throw err('headers must be a JSON object');
  for (const [name, value] of Object.entries(headers)) {
    try {
      http.validateHeaderName(name);
      http.validateHeaderValue(name, String(value));
    } catch (e) {
      throw err(`header ${JSON.stringify(name)} is not valid: ${e.message}`);
    }
  }
  const sc = { method: b.method == null ? null : str('method').toUpperCase(), path: str('path', ''), status, headers,
    body: str('body', ''), times };
  try {
    sc.pathRe = new RegExp(sc.path);
  } catch (e) {
    throw err('path is not a valid regular expression: ' + e.message);
  }
  rt.scripts.push(sc);
  return scriptsView(rt);
}

function scriptsView(rt) {
  return rt.scripts.map(({ pathRe, body, ...rest }) => Object.assign(rest, { body_bytes: Buffer.byteLength(body) }));
}

/* takeScript returns the first script matching this call (method, and path with query), uses up one of its times and counts stats.scripted. */
function takeScript(rt, stats, ctx) {
  const target = ctx.req.url;
  const i = rt.scripts.findIndex((sc) => (sc.method === null || sc.method === ctx.method) && sc.pathRe.test(target));
  if (i < 0) return null;
  const sc = rt.scripts[i];
  if (--sc.times === 0) rt.scripts.splice(i, 1);
  stats.scripted++;
  return sc;
}

/* sendScripted answers exactly what the script says; Content-Length is added unless the script sets it. */
function sendScripted(send, ctx, sc) {
  const body = Buffer.from(sc.body, 'utf8');
  const headers = Object.assign({}, sc.headers);
  if (!Object.keys(headers).some((h) => h.toLowerCase() === 'content-length')) headers['Content-Length'] = body.length;
  send(ctx, sc.status, headers, body);
}

/* ------------------------------------------------------------------ */
/* Clock control                                                       */
/* ------------------------------------------------------------------ */

/* clockView: GET /_control/clock for the double's time now (ms). */
function clockView(now) {
  return { now: new Date(now).toISOString(), offset_ms: now - Date.now() };
}

/* clockOffset serves POST /_control/clock: {"advance_ms": N} moves the clock by N ms, {"set": ISO} sets it; returns the new offset from real time. */
function clockOffset(b, offsetMs, err) {
  const has = (k) => b[k] !== undefined;
  if (has('advance_ms') === has('set')) throw err('give exactly one of advance_ms and set');
  if (has('advance_ms')) {
    const v = b.advance_ms;
    if (!Number.isInteger(v) || Math.abs(v) > 864e5 * 366 * 100) throw err('advance_ms must be an integer number of milliseconds');
    return offsetMs + v;
  }
  const ms = parseIsoTime(b.set);
  if (ms === null) throw err('set must be an ISO 8601 date-time with a zone, like 2026-03-19T08:15:00Z');
  return ms - Date.now();
}

/* ------------------------------------------------------------------ */
/* PDF                                                                 */
/* ------------------------------------------------------------------ */

const isNameChar = (c) => (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a);

/* pdfScan returns the byte offsets of the /Type /Page objects and the size of the first /MediaBox (default A4: 595 x 842). */
function pdfScan(buf) {
  const offsets = [];
  let idx = 0;
  while ((idx = buf.indexOf('/Type', idx, 'latin1')) !== -1) {
    let j = idx + 5;
    while (j < buf.length && (buf[j] === 0x20 || buf[j] === 0x0a || buf[j] === 0x0d || buf[j] === 0x09)) j++;
    if (buf.toString('latin1', j, j + 5) === '/Page' && !isNameChar(buf[j + 5])) offsets.push(idx);
    idx = j;
  }
  let width = 595;
  let height = 842;
  const mb = buf.indexOf('/MediaBox', 0, 'latin1');
  if (mb !== -1) {
    const m = /^\s*\[\s*(-?[\d.]+)\s+(-?[\d.]+)\s+(-?[\d.]+)\s+(-?[\d.]+)\s*\]/.exec(buf.toString('latin1', mb + 9, mb + 120));
    if (m) {
      width = Math.round(Number(m[3]) - Number(m[1]));
      height = Math.round(Number(m[4]) - Number(m[2]));
    }
  }
  return { offsets, width, height };
}

/*
 * buildPdf writes a small valid PDF (Helvetica, 54 lines per A4 page) with a
 * correct xref table.  version: the header's PDF version; winAnsi: the font
 * has /Encoding /WinAnsiEncoding and Latin-1 letters are kept (else every
 * character outside printable ASCII becomes ?).
 */
function buildPdf(lines, { version, winAnsi }) {
  const bad = winAnsi ? /[^\x20-\x7e\xa0-\xff]/g : /[^\x20-\x7e]/g;
  const text = (s) => String(s).slice(0, 110).replace(bad, '?').replace(/[\\()]/g, (c) => '\\' + c);
  const pages = [];
  for (let i = 0; i < Math.max(lines.length, 1); i += 54) pages.push(lines.slice(i, i + 54));
  const objs = [
    '<< /Type /Catalog /Pages 2 0 R >>',
    `<< /Type /Pages /Kids [${pages.map((_, i) => `${4 + 2 * i} 0 R`).join(' ')}] /Count ${pages.length} >>`,
    `<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica${winAnsi ? ' /Encoding /WinAnsiEncoding' : ''} >>`,
  ];
  pages.forEach((pl, i) => {
    const stream = 'BT\n/F1 10 Tf\n14 TL\n50 800 Td\n' + pl.map((l) => `(${text(l)}) Tj T*`).join('\n') + '\nET\n';
    objs.push(`<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Resources << /Font << /F1 3 0 R >> >> /Contents ${5 + 2 * i} 0 R >>`);
    objs.push(`<< /Length ${stream.length} >>\nstream\n${stream}endstream`);
  });
  let out = `%PDF-${version}\n%\xe2\xe3\xcf\xd3\n`;
  const offsets = objs.map((o, i) => {
    const at = out.length;
    out += `${i + 1} 0 obj\n${o}\nendobj\n`;
    return at;
  });
  const xref = out.length;
  out += `xref\n0 ${objs.length + 1}\n0000000000 65535 f \n` + offsets.map((o) => `${String(o).padStart(10, '0')} 00000 n \n`).join('');
  out += `trailer\n<< /Size ${objs.length + 1} /Root 1 0 R >>\nstartxref\n${xref}\n%%EOF\n`;
  return Buffer.from(out, 'latin1');
}

/* ------------------------------------------------------------------ */
/* Server, connections, shutdown                                       */
/* ------------------------------------------------------------------ */

/*
 * createServer: the double's HTTP server (keep-alive, no request timeout,
 * a bare 400 for unparsable requests).  conns.open counts the open TCP
 * connections, mirrored into getStats().connections / max_connections.
 */
function createServer(onRequest, conns, getStats) {
  const server = http.createServer({ keepAlive: true }, onRequest);
  server.keepAliveTimeout = 65000;
  server.headersTimeout = 70000;
  server.requestTimeout = 0;
  server.on('connection', (socket) => {
    const stats = getStats();
    conns.open++;
    stats.connections = conns.open;
    if (conns.open > stats.max_connections) stats.max_connections = conns.open;
    socket.on('close', () => { conns.open--; getStats().connections = conns.open; });
  });
  server.on('clientError', (err, socket) => {
    if (socket.writable) socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
    else socket.destroy();
  });
  return server;
}

/* closeAndExit closes the server and every connection, exits 0 (after 2 s at the latest). */
function closeAndExit(server) {
  server.close(() => process.exit(0));
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 2000).unref();
}

/* onSignals: SIGTERM and SIGINT run shutdown; an uncaught exception is logged as "<name>: uncaught: ..." and survived. */
function onSignals(name, shutdown) {
  process.on('uncaughtException', (e) => process.stderr.write(`${name}: uncaught: ${e && e.stack}\n`));
  process.on('SIGTERM', shutdown);
  process.on('SIGINT', shutdown);
}

/* bindScripts binds the scripted-answer functions to a double's current runtime and stats (both are replaced on reset), send and control error. */
function bindScripts(getRt, getStats, send, err) {
  return {
    setScript: (b) => setScript(getRt(), b, err),
    scriptsView: () => scriptsView(getRt()),
    takeScript: (ctx) => takeScript(getRt(), getStats(), ctx),
    sendScripted: (ctx, sc) => sendScripted(send, ctx, sc),
  };
}

module.exports = {
  SWITCH_ON, SWITCH_OFF, parseOptions, switchValue, makeFail, parseIsoTime,
  mulberry32, sha256hex, sleep, safeEqual,
  makeSend, readBody, runGuarded,
  compileRoutes, matchRoute, splitPath, newCtx, logRequest,
  faultReaders, installFaults, faultsView, pathsMatch, holdAnswer,
  setScript, scriptsView, takeScript, sendScripted, bindScripts,
  clockView, clockOffset,
  pdfScan, buildPdf,
  createServer, closeAndExit, onSignals,
};
