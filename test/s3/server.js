#!/usr/bin/env node
'use strict';
/*
 * test/s3/server.js: the S3 bucket of qes_sign's archive tests.
 *
 * A real S3 implementation, s3rver (npm @20minutes/s3rver 4.0.4, pinned in
 * test/package.json), that checks AWS Signature V4 against one credential,
 * behind a small capturing front in the same process.  The front listens on
 * 127.0.0.1:<port>; it reads each request, writes it to the JSONL log
 * (method, path, headers, body size and SHA-256, status), checks what s3rver
 * does not check but real S3 does (see below), and forwards the bytes
 * unchanged, Host header included, to s3rver on an internal port, so the
 * signature is verified over exactly what the client sent.
 *
 * usage: node server.js --port 0 --dir <dir> --bucket archive
 *            [--access-key K --secret-key S] [--log <jsonl file>] [--verbose]
 * Prints "LISTENING <port>" once the bucket exists and the port is bound;
 * SIGTERM/SIGINT close it.  The objects live in <dir> (s3rver's filesystem
 * store), so a restart with the same --port and --dir serves them again.
 * Default credential: access key "qes-test-access", secret "qes-test-secret";
 * s3rver's built-in S3RVER/S3RVER pair is revoked.
 *
 * What the front adds, as AWS S3 does:
 *   - a request without any signature (anonymous)   -> 403 AccessDenied
 *   - x-amz-content-sha256 (hex) != SHA-256 of body  -> 400 XAmzContentSHA256Mismatch
 *   - Content-MD5 != MD5 of the body                 -> 400 BadDigest (InvalidDigest if malformed)
 *   - x-amz-checksum-sha256 != SHA-256 of the body   -> 400 BadDigest
 *   - object lock headers: both or none, mode COMPLIANCE|GOVERNANCE, retain-until
 *     an ISO 8601 time in the future, and Content-MD5 or x-amz-checksum-* present
 *                                                    -> 400 InvalidArgument / InvalidRequest
 * s3rver then refuses a wrong secret or a bad signature with 403
 * SignatureDoesNotMatch and an unknown access key with 403 InvalidAccessKeyId.
 *
 * Control (not S3; "_control" cannot be a bucket name):
 *   POST /_control/faults {"status": 503, "count": 5, "methods": ["PUT"]}
 *        answers the next <count> matching requests (all if no count) with
 *        <status> instead of forwarding them; {} clears.
 *   GET  /_control/stats  requests by "METHOD status", faults injected.
 */

const http = require('node:http');
const fs = require('node:fs');
const crypto = require('node:crypto');
const S3rver = require('@20minutes/s3rver');
const AWSAccount = require('@20minutes/s3rver/lib/models/account');

const { parseArgs } = require('../lib/args');

const opt = parseArgs(process.argv.slice(2), {
  port: 0, dir: null, bucket: 'archive', 'access-key': 'qes-test-access',
  'secret-key': 'qes-test-secret', log: null,
});
if (!opt.dir) throw new Error('--dir is required');
opt.port = Number(opt.port);
const note = (...a) => console.error(new Date().toISOString(), 's3:', ...a);
const logFd = opt.log ? fs.openSync(opt.log, 'a') : null;
let faults = {};
const stats = { requests: {}, faults_injected: 0 };

function s3error(res, status, code, message, extra) {
  const fields = Object.entries(extra || {}).map(([k, v]) => `<${k}>${String(v).replace(/[<&>]/g, '')}</${k}>`).join('');
  const body = `<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>${code}</Code><Message>${message}</Message>` +
    `${fields}<RequestId>${crypto.randomBytes(8).toString('hex').toUpperCase()}</RequestId></Error>`;
  res.writeHead(status, { 'Content-Type': 'application/xml', 'Content-Length': Buffer.byteLength(body) });
  res.end(body);
  return code;
}

/* check(req, body): what real S3 refuses and s3rver lets pass; [status, code, message] or null. */
function check(req, body, url) {
  const h = req.headers;
  const signed = 'authorization' in h || url.searchParams.has('X-Amz-Algorithm') || url.searchParams.has('Signature');
  if (!signed) return [403, 'AccessDenied', 'Access Denied'];
  const sha = crypto.createHash('sha256').update(body).digest();
  const cs = h['x-amz-content-sha256'];
  if (cs && /^[0-9a-fA-F]{64}$/.test(cs) && cs.toLowerCase() !== sha.toString('hex')) {
    return [400, 'XAmzContentSHA256Mismatch', "The provided 'x-amz-content-sha256' header does not match what was computed."];
  }
  if ('content-md5' in h) {
    const given = Buffer.from(h['content-md5'], 'base64');
    if (given.length !== 16 || given.toString('base64') !== h['content-md5'].trim()) {
      return [400, 'InvalidDigest', 'The Content-MD5 you specified was invalid.'];
    }
    if (!given.equals(crypto.createHash('md5').update(body).digest())) {
      return [400, 'BadDigest', 'The Content-MD5 you specified did not match what we received.'];
    }
  }
  if ('x-amz-checksum-sha256' in h && h['x-amz-checksum-sha256'] !== sha.toString('base64')) {
    return [400, 'BadDigest', 'The SHA256 you specified did not match the calculated checksum.'];
  }
  const mode = h['x-amz-object-lock-mode'];
  const until = h['x-amz-object-lock-retain-until-date'];
  if (mode !== undefined || until !== undefined) {
    if (mode === undefined || until === undefined) {
      return [400, 'InvalidArgument', 'x-amz-object-lock-retain-until-date and x-amz-object-lock-mode must both be supplied'];
    }
    if (mode !== 'COMPLIANCE' && mode !== 'GOVERNANCE') {
      return [400, 'InvalidArgument', 'Unknown wormMode directive.'];
    }
    const t = Date.parse(until);
    if (!/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$/.test(until) || Number.isNaN(t)) {
      return [400, 'InvalidArgument', 'The retain until date must be provided in ISO 8601 format'];
    }
    if (t <= Date.now()) return [400, 'InvalidArgument', 'The retain until date must be in the future!'];
    if (!('content-md5' in h) && !Object.keys(h).some((k) => k.startsWith('x-amz-checksum-'))) {
      return [400, 'InvalidRequest', 'Content-MD5 OR x-amz-checksum- HTTP header is required for Put Object requests with Object Lock parameters'];
    }
  }
  return null;
}

function control(req, res, url, body) {
  const send = (obj) => {
    const b = JSON.stringify(obj);
    res.writeHead(200, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(b) });
    res.end(b);
  };
  if (url.pathname === '/_control/faults' && req.method === 'POST') {
    faults = body.length ? JSON.parse(body.toString('utf8')) : {};
    return send(faults);
  }
  if (url.pathname === '/_control/stats') return send(stats);
  res.writeHead(404);
  res.end();
}

async function main() {
  const s3 = new S3rver({
    address: '127.0.0.1', port: 0, directory: opt.dir, silent: !opt.verbose,
    vhostBuckets: false, allowMismatchedSignatures: false,
    configureBuckets: [{ name: opt.bucket }],
  });
  // only the configured credential signs; s3rver's built-in S3RVER/S3RVER is revoked
  AWSAccount.DUMMY_ACCOUNT.revokeAccessKey('S3RVER');
  AWSAccount.DUMMY_ACCOUNT.createKeyPair(opt['access-key'], opt['secret-key']);
  const inner = await s3.run();
  const agent = new http.Agent({ keepAlive: true, maxSockets: 64 });

  const front = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('error', (e) => note('request error:', e.message));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      const url = new URL(req.url, 'http://s3.local');
      if (url.pathname.startsWith('/_control/')) return control(req, res, url, body);
      const entry = {
        time: new Date().toISOString(), method: req.method, path: req.url, headers: req.headers,
        body_size: body.length, body_sha256: crypto.createHash('sha256').update(body).digest('hex'),
      };
      const done = (status, code) => {
        entry.status = status;
        if (code) entry.error = code;
        const k = `${req.method} ${status}`;
        stats.requests[k] = (stats.requests[k] || 0) + 1;
        if (logFd !== null) fs.writeSync(logFd, JSON.stringify(entry) + '\n');
        note(`${req.method} ${req.url} -> ${status}${code ? ' ' + code : ''}`);
      };
      const f = faults;
      if (f.status && (f.count === undefined || f.count > 0) && (!f.methods || f.methods.includes(req.method))) {
        if (f.count !== undefined) f.count--;
        stats.faults_injected++;
        return done(f.status, s3error(res, f.status, f.status === 503 ? 'SlowDown' : 'InternalError',
          'injected by the test server'));
      }
      const refused = check(req, body, url);
      if (refused) return done(refused[0], s3error(res, ...refused));
      const up = http.request({
        host: '127.0.0.1', port: inner.port, method: req.method, path: req.url, headers: req.headers, agent,
      }, (ures) => {
        res.writeHead(ures.statusCode, ures.headers);
        const errChunks = [];
        ures.on('data', (c) => { if (ures.statusCode >= 400) errChunks.push(c); });
        ures.pipe(res);
        ures.on('end', () => {
          const m = /<Code>([^<]+)<\/Code>/.exec(Buffer.concat(errChunks).toString('utf8'));
          done(ures.statusCode, m ? m[1] : undefined);
        });
      });
      up.on('error', (e) => { done(502); s3error(res, 502, 'BadGateway', e.message); });
      up.end(body);
    });
  });
  front.keepAliveTimeout = 5000;
  front.listen(opt.port, '127.0.0.1', () => {
    process.stdout.write(`LISTENING ${front.address().port}\n`);
    note(`bucket ${opt.bucket} in ${opt.dir}, s3rver on ${inner.port}, access key ${opt['access-key']}`);
  });
  const stop = () => {
    front.close();
    front.closeAllConnections();
    s3.close().finally(() => process.exit(0));
    setTimeout(() => process.exit(0), 1000).unref();
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main().catch((e) => { note(e.stack || e.message); process.exit(1); });
