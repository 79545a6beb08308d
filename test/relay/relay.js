#!/usr/bin/env node
'use strict';
/*
 * test/relay/relay.js: the portal's part in qes_sign's tests.
 *
 * An HTTP server that receives Skribble's (or the test double's) callback
 * POSTs and hands each one, verbatim, to PostgreSQL over a real connection:
 *     SELECT * FROM qes_sign.receive_callback(<path and query>, <raw body>)
 * and signed webhooks (Yousign's X-Yousign-Signature-256, Standard Webhooks)
 * with their headers:
 *     SELECT * FROM qes_sign.receive_webhook(<headers as JSON>, <raw body>)
 * It answers 200 with the receipt as JSON, 403 when the callback does not
 * verify (SQLSTATE 28000), and 503 on any other error, so the sender retries.
 *
 * usage: node relay.js [--port 0] [--db <conninfo or postgres:// URL>] [--pool 8] [--verbose]
 * Without --db the libpq variables PGHOST, PGPORT, PGDATABASE, PGUSER apply.
 * Prints "LISTENING <port>" once bound to 127.0.0.1; SIGTERM/SIGINT close it.
 * The database is connected lazily, at the first callback.
 */

const http = require('node:http');
const { Pool } = require('pg');
const { parseArgs } = require('../lib/args');

/* poolConfig: a postgres:// URL as is; a libpq "key=value ..." string mapped to pg's options. */
function poolConfig(db) {
  if (!db) return {};
  if (/^postgres(ql)?:\/\//.test(db)) return { connectionString: db };
  const names = { host: 'host', port: 'port', dbname: 'database', user: 'user', password: 'password' };
  const cfg = {};
  for (const m of db.matchAll(/(\w+)\s*=\s*(?:'((?:[^'\\]|\\.)*)'|(\S+))/g)) {
    if (!names[m[1]]) throw new Error(`--db: unsupported keyword ${m[1]}`);
    cfg[names[m[1]]] = m[2] !== undefined ? m[2].replace(/\\(.)/g, '$1') : m[3];
  }
  return cfg;
}

const opt = parseArgs(process.argv.slice(2), { port: 0, db: null, pool: 8 });
opt.port = Number(opt.port);
opt.pool = Number(opt.pool);
const log = opt.verbose ? (...a) => console.error(new Date().toISOString(), 'relay:', ...a) : () => {};
const pool = new Pool(Object.assign(
  { max: opt.pool, application_name: 'qes_sign relay', idleTimeoutMillis: 10000 }, poolConfig(opt.db)));
// an idle connection that the server ended (restart, crash) must not kill the relay
pool.on('error', (err) => log('idle connection lost:', err.message));

function reply(res, status, obj) {
  const body = JSON.stringify(obj);
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) });
  res.end(body);
}

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', async () => {
    const body = Buffer.concat(chunks);
    try {
      // a signed webhook (Yousign's X-Yousign-Signature-256, Standard
      // Webhooks): every header goes along; otherwise a signed callback URL
      const signed = req.headers['x-yousign-signature-256'] !== undefined || req.headers['webhook-signature'] !== undefined;
      const { rows } = signed
        ? await pool.query('SELECT * FROM qes_sign.receive_webhook($1, $2)', [JSON.stringify(req.headers), body])
        : await pool.query('SELECT * FROM qes_sign.receive_callback($1, $2)', [req.url, body]);
      log(req.method, req.url, '-> 200', JSON.stringify(rows[0]));
      reply(res, 200, rows[0]);
    } catch (err) {
      const status = err.code === '28000' ? 403 : 503;
      log(req.method, req.url, `-> ${status}`, err.code || '', err.message);
      reply(res, status, { error: err.message, sqlstate: err.code || null });
    }
  });
});

function shutdown(signal) {
  log('got', signal, '- closing');
  server.close();
  server.closeAllConnections();
  pool.end().finally(() => process.exit(0));
  setTimeout(() => process.exit(0), 3000).unref();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);

server.listen(opt.port, '127.0.0.1', () => {
  process.stdout.write(`LISTENING ${server.address().port}\n`);
});
