'use strict';
/*
 * test/lib/double_test.js: what the self-tests of the HTTP test doubles
 * (test/skribble_double/selftest.js, test/yousign_double/selftest.js) share:
 * start a double's server.js as a child process and wait for its
 * "LISTENING <port>" line, stop it, send one HTTP request and collect the
 * answer, poll for a condition.  Node 20, standard library only.
 */

const { spawn } = require('node:child_process');
const http = require('node:http');

/* startServer spawns `node script --port 0 args...`; resolves {proc, port, stderr()} once it listens. */
function startServer(script, args = [], env = {}) {
  return new Promise((resolve, reject) => {
    const proc = spawn(process.execPath, [script, '--port', '0', ...args],
      { stdio: ['ignore', 'pipe', 'pipe'], env: Object.assign({}, process.env, env) });
    let out = '';
    let err = '';
    const timer = setTimeout(() => reject(new Error('server did not start: ' + err)), 5000);
    proc.stderr.on('data', (c) => { err += c; });
    proc.stdout.on('data', (c) => {
      out += c;
      const m = /^LISTENING (\d+)$/m.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve({ proc, port: Number(m[1]), stderr: () => err });
      }
    });
    proc.on('exit', (code) => { clearTimeout(timer); reject(new Error(`server exited early with ${code}: ${err}`)); });
  });
}

/* stopServer sends SIGTERM; resolves the exit code (or the signal). */
function stopServer(s) {
  return new Promise((resolve) => {
    if (s.proc.exitCode !== null) return resolve(s.proc.exitCode);
    s.proc.removeAllListeners('exit');
    s.proc.on('exit', (code, signal) => resolve(code === null ? signal : code));
    s.proc.kill('SIGTERM');
  });
}

/* request sends one request to 127.0.0.1:port; resolves {status, headers, buf, text, json}. timeout: ms before the client gives up. */
function request({ port, method, path, headers, body, agent, timeout }) {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, method, path, headers, agent }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => {
        const buf = Buffer.concat(chunks);
        const text = buf.toString('utf8');
        resolve({ status: res.statusCode, headers: res.headers, buf, text, get json() { return JSON.parse(text); } });
      });
      res.on('error', reject);
    });
    if (timeout) req.setTimeout(timeout, () => req.destroy(new Error('client timeout')));
    req.on('error', reject);
    req.end(body);
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/* waitFor polls fn every step ms until it returns something truthy (that value), or throws after ms. */
async function waitFor(fn, ms = 5000, what = 'condition', step = 20) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(step);
  }
}

module.exports = { startServer, stopServer, request, sleep, waitFor };
