#!/usr/bin/env node
'use strict';
/*
 * demo/demo.js: the article's lease, signed by two tenants and the manager
 * in 38 minutes, through the real background worker, then archived to S3.
 * Started by demo/run.sh, which has a temporary cluster with qes_sign
 * preloaded, the trust service's test double (Skribble's or Yousign's, its
 * clock at Thursday, 19 March 2026, 09:15), the callback relay and the local
 * S3 server (bucket archive) running, and passes them in the environment:
 *   PGHOST, PGPORT, PGDATABASE   the cluster (as superuser postgres)
 *   DEMO_PROVIDER                skribble (default) or yousign
 *   DEMO_DOUBLE                  http://127.0.0.1:<port> of the double
 *   DEMO_RELAY                   http://127.0.0.1:<port> of the relay (Yousign's webhooks go there)
 *   DEMO_S3                      http://127.0.0.1:<port> of the S3 server
 *   DEMO_PDF                     the merged lease (demo/make_lease_pdf.js)
 *
 * The portal (role hv_portal, tenant hv-eppendorf) creates the request and
 * listens on channel qes_sign; this script plays the three signers through
 * the double's /_control API and prints, step by step, what the portal sees:
 * vollstaendig, then archiviert (four objects in the bucket, the retention
 * date), then a verified download of the signed PDF.  Exits 0 only at
 * archiviert with an intact audit chain and a verified download; exits 1
 * with the worker's queue when something does not happen in time.  What
 * differs between the trust services (preparing the double, the signers'
 * actions, looking the request up there) is in PROVIDERS, below the helpers.
 */

const crypto = require('node:crypto');
const fs = require('node:fs');
const http = require('node:http');
const path = require('node:path');
const { Client } = require(require.resolve('pg', { paths: [path.join(__dirname, '..', 'test')] }));

const DOUBLE = process.env.DEMO_DOUBLE;
const pdfVersion = fs.readFileSync(process.env.DEMO_PDF).subarray(5, 8).toString('latin1');   // %PDF-1.7
const RELAY = process.env.DEMO_RELAY;
const S3 = process.env.DEMO_S3;
const TIMEOUT_MS = Number(process.env.DEMO_TIMEOUT_MS || 20000);
const TENANT = 'hv-eppendorf';
/* mobile: Yousign needs one for QES (qes_sign stores '+49 151 12345601' as 4915112345601); Skribble gets none, as before */
const SIGNERS = [
  { first_name: 'Anna', last_name: 'Becker', email: 'anna.becker@example.org', language: 'de', mobile: '+49 151 12345601' },
  { first_name: 'Jonas', last_name: 'Wolf', email: 'jonas.wolf@example.org', language: 'de', mobile: '+49 151 12345602' },
  { first_name: 'Petra', last_name: 'Hansen', email: 'p.hansen@hv-eppendorf.example', language: 'de', mobile: '+49 160 98765403' },
];

/* ------------------------------------------------------------------ */
/* helpers                                                             */
/* ------------------------------------------------------------------ */

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const say = (s = '') => process.stdout.write(s + '\n');

/* berlin formats a time as the portal shows it: HH:MM:SS, Europe/Berlin. */
const berlin = (t) => (t ? new Date(t).toLocaleTimeString('de-DE', { timeZone: 'Europe/Berlin', hour12: false }) : '');

/* table prints rows like psql's aligned format. */
function table(rows, cols = rows.length ? Object.keys(rows[0]) : []) {
  const cell = (v) => (v === null || v === undefined ? '' : v instanceof Date ? v.toISOString() : String(v));
  const w = cols.map((c) => Math.max(c.length, ...rows.map((r) => cell(r[c]).length)));
  say((' ' + cols.map((c, i) => c.padEnd(w[i])).join(' | ')).trimEnd());
  say('-' + w.map((n) => '-'.repeat(n)).join('-+-') + '-');
  for (const r of rows) say(' ' + cols.map((c, i) => cell(r[c]).padEnd(w[i])).join(' | ').trimEnd());
}

/* control calls the double's /_control API; resolves the parsed JSON answer. */
function control(method, p, body, base = DOUBLE, name = `${P.name}-Double`) {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? '' : JSON.stringify(body);
    const req = http.request(`${base}/_control${p}`, {
      method, headers: { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(data) },
    }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (c) => { text += c; });
      res.on('end', () => (res.statusCode === 200 ? resolve(JSON.parse(text))
        : reject(new Error(`${name} ${method} /_control${p}: HTTP ${res.statusCode} ${text}`))));
    });
    req.on('error', reject);
    req.end(data);
  });
}

class DemoFailure extends Error {}

/* tally prints ['a', 'b', 'a'] as "2× a, b". */
const tally = (list) => Object.entries(list.reduce((m, k) => Object.assign(m, { [k]: (m[k] || 0) + 1 }), {}))
  .map(([k, n]) => (n > 1 ? `${n}× ${k}` : k)).join(', ');

/* ------------------------------------------------------------------ */
/* the trust services: what differs between Skribble and Yousign       */
/* ------------------------------------------------------------------ */

/*
 * One object per provider (DEMO_PROVIDER picks it):
 *   key, name             create_request's provider, and the name the narration uses
 *   start()               prepares the double for the scenario (Yousign: the webhook subscription)
 *   signers(list)         the signers as create_request gets them
 *   lookup()              the request at the double, as its /_control API shows it
 *   sent(sr)              prints what the worker created there
 *   act(signer, action)   a signer views ('view') or signs ('sign'); prints what the double did
 *   note(before, after)   what else the double saw meanwhile (its /_control/stats before and after)
 *   deliveries()          prints the callbacks or webhooks it delivered for the request
 *   fetched()             prints what the worker fetched from it for the archive
 *   signedAt()            when each signer signed, by e-mail, as the double has it
 */
const PROVIDERS = {
  skribble: {
    key: 'skribble',
    name: 'Skribble',
    async start() {},   // callbacks go to the signed URL the worker gives (qes_sign.callback_base_url)
    signers: (list) => list.map(({ mobile, ...s }) => s),
    lookup: () => control('GET', `/signature-requests/${providerId}`),
    async sent(sr) {
      say(`  Skribble: Anfrage ${sr.id}, ${sr.status_overall}, ${sr.quality}/${sr.legislation}, ` +
          `custom = ${sr.custom === requestId ? 'unsere id' : JSON.stringify(sr.custom)}, ` +
          `attach_on_success = ${JSON.stringify(sr.attach_on_success)}`);
      say('  Drei Einladungen gehen parallel raus:');
      for (const s of sr.signatures) {
        say(`    ${`${s.signer_identity_data.first_name} ${s.signer_identity_data.last_name}`.padEnd(13)} ` +
            `${s.signer_identity_data.email_address.padEnd(30)} ${s.status_code}`);
      }
      say(`  Callback-URL (signiert): ${sr.callback_update_url.replace(/\/[A-Za-z0-9_-]{43}\?/, '/<hmac>?')}`);
      if (sr.quality === 'DEMO') {
        say('  (quality DEMO: der API-Benutzer api_demo_... ist ein Demo-Zugang, Skribble signiert damit nur zur Probe;');
        say('   mit einem Produktivzugang steht hier QES)');
      }
    },
    async act(signer, action) {
      const sr = await control('POST', `/signature-requests/${providerId}/signatures/${signer.email}/${action}`);
      const sig = sr.signatures.find((s) => s.signer_identity_data.email_address === signer.email);
      say(`  Skribble: ${signer.first_name} ${signer.last_name} ${sig.status_code}` +
          (action === 'view' ? `, zuletzt angesehen ${berlin(sig.last_viewed_at)}` : `, signiert ${berlin(sig.signed_at)} (${sig.signed_quality}, ${sig.signed_legislation})`) +
          ` -> Callback "update" an das Portal (Relay -> receive_callback -> Worker holt den Stand)`);
    },
    note(before, after) {
      if (after.logins > before.logins) {
        say(`  Skribble: das Token des Workers war abgelaufen (20 Minuten nach dem Login, auf Skribbles Uhr); ` +
            `er hat sich neu angemeldet (${after.logins - before.logins} Login${after.logins - before.logins > 1 ? 's' : ''})`);
      }
    },
    async deliveries() {
      const cbs = (await control('GET', '/callbacks')).filter((c) => c.signature_request_id === providerId);
      say(`  Skribble: ${cbs.length} Callbacks (${cbs.map((c) => c.type.toLowerCase()).join(', ')}), ` +
          `alle ${cbs.every((c) => c.state === 'COMPLETED') ? 'zugestellt' : 'NICHT zugestellt'}`);
    },
    async fetched() {
      say('  Skribble: signiertes PDF, Signaturprotokoll (PDF und JSON) abgeholt; dazu record.json (Anfrage, Signierende, Audit)');
    },
    signedAt: async () => Object.fromEntries((await PROVIDERS.skribble.lookup()).signatures
      .map((s) => [s.signer_identity_data.email_address, s.signed_at])),
  },

  yousign: {
    key: 'yousign',
    name: 'Yousign',
    shown: 0,     // webhooks of the request printed so far
    /* the portal's webhook subscription (the double has one; its secret is the one run.sh gave it and qes_sign) */
    async start() {
      const wh = await control('POST', '/webhook', { url: `${RELAY}/qes/webhook/yousign`, events: '*' });
      say(`   Yousign-Webhooks (alle Ereignisse) -> ${wh.url}; Yousign signiert jeden mit HMAC-SHA256 ` +
          '(X-Yousign-Signature-256), das Secret des Abos steht in qes_sign.yousign_webhook_secrets');
    },
    signers: (list) => list,
    /* Yousign's id exists from the draft on; the double finds the request by ours (external_id) */
    lookup: async () => (await control('GET', `/requests?external_id=${requestId}`))[0],
    async sent(sr) {
      const { calls } = await control('GET', '/stats');
      const at = (name) => berlin((sr._double.events.find((e) => e.name === name) || {}).time);
      const doc = sr._double.documents[0];
      const signers = sr._double.signers;
      say('  Yousign (API v3) in vier Schritten, jeder auf die Antwort des vorigen; external_id = ' +
          `${sr.external_id === requestId ? 'unsere id' : JSON.stringify(sr.external_id)}`);
      say('  (Yousign kennt keinen Idempotenz-Schlüssel: nach einer verlorenen Antwort sucht der Worker die Anfrage damit)');
      say(`    ${at('created')} Entwurf      POST /v3/signature_requests -> ${sr.id}, draft, ` +
          `ordered_signers ${sr.ordered_signers} (QES verlangt die Reihenfolge), delivery_mode ${sr.delivery_mode}, ` +
          `Ablauf ${sr.expiration_date.slice(0, 10)}`);
      say(`    ${at('document_added')} Upload       POST .../documents (multipart/form-data) -> ${doc.nature}, ` +
          `${doc.filename}, PDF ${pdfVersion} (Yousign: ab 1.6), ${doc.total_pages} Seiten, ${doc.size} Bytes, ` +
          `${doc.total_anchors} Smart Anchors`);
      say(`    ${at('signer_added')} Signierende  ${signers.length}× POST .../signers, ${signers[0].signature_level}, ` +
          'Mobilnummer (E.164), je ein Signaturfeld (ohne Smart Anchors: die Vorgabe des Vorgangstyps, letzte Seite):');
      for (const s of signers) {
        const f = s.fields[0] || {};
        say(`      ${`${s.info.first_name} ${s.info.last_name}`.padEnd(13)} ${s.info.email.padEnd(30)} ` +
            `${s.info.phone_number.padEnd(14)} Feld Seite ${f.page}, x ${f.x}, y ${f.y}, ${f.width}×${f.height}`);
      }
      say(`    ${at('activated')} Aktivierung  POST .../activate -> ${sr.status}`);
      say(`  Aufrufe: ${Object.entries(calls).map(([k, n]) => (n > 1 ? `${n}× ` : '') +
        k.replace('/v3/signature_requests/{signatureRequestId}/', '...')).join(', ')}`);
      say('  Einladungen der Reihe nach (ordered_signers): eine E-Mail mit dem Link bekommt, wer an der Reihe ist:');
      for (const s of signers) {
        say(`    ${`${s.info.first_name} ${s.info.last_name}`.padEnd(13)} ${s.info.email.padEnd(30)} ${s.status}`);
      }
      await this.webhooks('  Webhooks');
    },
    /* webhooks prints the webhooks of the request the double queued since the last call */
    async webhooks(prefix) {
      const all = await control('GET', `/webhooks?signature_request_id=${providerId}`);
      const list = all.slice(this.shown);
      this.shown = all.length;
      if (list.length) {
        say(`${prefix} ${list.map((d) => d.event_name +
          (d.event.data.signer ? ` (${d.event.data.signer.info.first_name})` : '')).join(', ')}` +
          ' -> an das Portal (Relay -> receive_webhook -> Worker holt den Stand)');
      }
    },
    async act(signer, action) {
      const base = `/signature_requests/${providerId}/signers/${signer.email}`;
      if (action === 'view') {
        await control('POST', `${base}/open`);
        const r = await control('POST', `${base}/identify`);
        say(`  Yousign: ${signer.first_name} ${signer.last_name} öffnet den Link und weist sich für die QES aus ` +
            `(Ausweis, Name wie in der Anfrage): ${r.signer.status}`);
      } else {
        const r = await control('POST', `${base}/sign`);
        const next = r.signers.find((s) => s.status === 'notified');
        const who = next && (await this.lookup())._double.signers.find((s) => s.id === next.id).info;
        say(`  Yousign: ${signer.first_name} ${signer.last_name} ${r.signer.status}, signiert ${berlin(r.signer.signed_at)} ` +
            `(${r.signer.signature_level})` +
            (who ? `; jetzt ist ${who.first_name} ${who.last_name} an der Reihe` : `; die Anfrage ist ${r.status}`));
      }
      await this.webhooks('  Yousign: Webhooks');
    },
    note() {},
    async deliveries() {
      const all = await control('GET', `/webhooks?signature_request_id=${providerId}`);
      say(`  Yousign: ${all.length} Webhooks (${tally(all.map((d) => d.event_name))}), ` +
          `alle ${all.every((d) => d.state === 'delivered') ? 'zugestellt' : 'NICHT zugestellt'}`);
    },
    async fetched() {
      const { calls_by_status: calls } = await control('GET', '/stats');
      const trail = Object.keys(calls).find((k) => k.includes('/audit_trails/download'));
      const early = trail ? calls[trail]['400'] || 0 : 0;
      say('  Yousign: abgeholt das fertige Dokument (GET ...documents/download?version=completed), den Audit-Trail als ein PDF');
      say('  (GET ...audit_trails/download?merge=true) und die Signierenden (GET ...signers, mit der Anfrage als protocol.json);');
      say('  dazu record.json (Anfrage, Signierende, Audit)');
      if (early) {
        say(`  (den Audit-Trail gibt Yousign erst kurz nach done heraus: ${early}× 400 audit_trail.not_ready_for_download, ` +
            'der Worker hat es wieder versucht)');
      }
    },
    signedAt: async () => Object.fromEntries((await PROVIDERS.yousign.lookup())._double.signers
      .map((s) => [s.info.email, s.signed_at])),
  },
};
const P = PROVIDERS[process.env.DEMO_PROVIDER || 'skribble'];
if (!P) throw new Error(`DEMO_PROVIDER=${process.env.DEMO_PROVIDER}: skribble or yousign`);

/* until polls fn until it returns a truthy value; fails loudly after TIMEOUT_MS. */
async function until(what, fn) {
  const t0 = Date.now();
  for (;;) {
    const v = await fn();
    if (v) return { value: v, ms: Date.now() - t0 };
    if (Date.now() - t0 > TIMEOUT_MS) throw new DemoFailure(`${what}: nach ${TIMEOUT_MS / 1000} s nicht eingetreten`);
    await sleep(10);
  }
}

/* ------------------------------------------------------------------ */
/* the portal's sessions                                               */
/* ------------------------------------------------------------------ */

const admin = new Client({ user: 'postgres', application_name: 'demo (admin)' });
const portal = new Client({ user: 'hv_portal', application_name: 'demo (portal)' });
const listener = new Client({ user: 'hv_portal', application_name: 'demo (LISTEN qes_sign)' });
const notes = [];
let lastNoteAt = 0;
let requestId = null;
let providerId = null;

/* s3stats asks the S3 server what it answered: {"METHOD status": count}. */
const s3stats = async () => (await control('GET', '/stats', undefined, S3, 'S3-Server')).requests;

/* notifications prints the NOTIFY payloads received since the last call, once none came for 300 ms (at most 2 s);
 * with upTo only those up to and including the first of that event, the rest stay for the next call. */
async function notifications(upTo) {
  const t0 = Date.now();
  await sleep(150);
  while (Date.now() - lastNoteAt < 300 && Date.now() - t0 < 2000) await sleep(50);
  const i = upTo ? notes.findIndex((n) => JSON.parse(n).event === upTo) : -1;
  for (const n of notes.splice(0, i < 0 ? notes.length : i + 1)) say(`  NOTIFY qes_sign  ${n}`);
}

async function overview() {
  const { rows } = await portal.query(
    `SELECT status, signers_signed, signers_total, sent_at, completed_at, processing_time
       FROM qes_sign.overview WHERE id = $1`, [requestId]);
  return rows[0];
}

/* portalSees prints the request's line in the cockpit and, unless told not to, the NOTIFY payloads so far
 * (up to the event upTo, see notifications). */
async function portalSees(ms, withNotifications = true, upTo = undefined) {
  const o = await overview();
  say(`  Portal (qes_sign.overview): Status ${o.status}, ${o.signers_signed}/${o.signers_total} signiert` +
      (ms === undefined ? '' : `   [${ms} ms nach der Aktion bei ${P.name}]`));
  if (withNotifications) await notifications(upTo);
}

async function signerStatus(email) {
  const { rows } = await portal.query(
    `SELECT status FROM qes_sign.signers WHERE request_id = $1 AND email = $2 AND status <> 'replaced'`,
    [requestId, email]);
  return rows[0] && rows[0].status;
}

/* doubleAt sets the double's clock to an article time (UTC) and prints it as the portal would. */
async function doubleAt(iso) {
  const c = await control('POST', '/clock', { set: iso });
  return berlin(c.now);
}

/* act makes a signer view or sign at the trust service, then waits until the worker has brought it into the database. */
async function act(iso, signer, action, headline, done, upTo = undefined) {
  const at = await doubleAt(iso);
  const before = await control('GET', '/stats');
  say();
  say(`== ${at} ${headline}`);
  await P.act(signer, action);
  const r = await until(`${signer.first_name}: ${action}`, done);
  P.note(before, await control('GET', '/stats'));
  await portalSees(r.ms, true, upTo);
}


/* ------------------------------------------------------------------ */
/* the scenario                                                        */
/* ------------------------------------------------------------------ */

async function main() {
  await admin.connect();
  await portal.connect();
  await listener.connect();
  for (const c of [admin, portal, listener]) await c.query(`SET TimeZone = 'Europe/Berlin'`);
  await portal.query(`SET qes_sign.verwaltung = '${TENANT}'`);
  listener.on('notification', (n) => { notes.push(n.payload); lastNoteAt = Date.now(); });
  await listener.query('LISTEN qes_sign');

  const pdf = fs.readFileSync(process.env.DEMO_PDF);
  /* the double started at 09:15 already; setting up the cluster took a moment */
  const start = await control('POST', '/clock', { set: '2026-03-19T08:15:00Z' });
  say();
  say(`== Donnerstag, 19. März 2026, ${berlin(start.now)}: der Verwalter erstellt die Signaturanfrage`);
  say('   Mietvertrag, 7 Seiten + 3 Anlagen als ein PDF; zwei Mieter und die Verwalterin signieren (QES)');
  say(`   Portal: Rolle hv_portal, SET qes_sign.verwaltung = '${TENANT}', LISTEN qes_sign (eigene Sitzung)`);
  await P.start();
  const { rows: [created] } = await portal.query(
    `SELECT qes_sign.create_request(
         verwaltung  => $1,
         title       => 'Mietvertrag Eppendorfer Landstraße 42, 2. OG links',
         document    => $2,
         signers     => $3::jsonb,
         message     => 'Bitte prüfen und signieren Sie den Mietvertrag.',
         vorgangstyp => 'mietvertrag',
         provider    => $4) AS id`, [TENANT, pdf, JSON.stringify(P.signers(SIGNERS)), P.key]);
  requestId = created.id;
  say(`  qes_sign.create_request(..., provider => '${P.key}') = ${requestId}`);
  const { rows: [doc] } = await portal.query(
    `SELECT quality, legislation, document_size AS bytes, encode(document_sha256, 'hex') AS sha256
       FROM qes_sign.signatur_anfragen WHERE id = $1`, [requestId]);
  say(`  Dokument: ${doc.bytes} Bytes, SHA-256 ${doc.sha256}; verlangt ${doc.quality} nach ${doc.legislation}`);
  await portalSees(undefined, false);

  /* the worker sends it to the trust service as soon as create_request commits */
  const sent = await until(`Der Worker übergibt die Anfrage an ${P.name} (provider_id)`, async () => {
    const { rows } = await portal.query(
      'SELECT provider_id, sent_at FROM qes_sign.signatur_anfragen WHERE id = $1', [requestId]);
    return rows[0].provider_id && rows[0];
  });
  providerId = sent.value.provider_id;
  say();
  say(`== ${berlin(sent.value.sent_at)} der Worker hat die Anfrage an ${P.name} übergeben   [${sent.ms} ms nach dem COMMIT]`);
  await P.sent(await P.lookup());
  await portalSees();

  const [anna, jonas, petra] = SIGNERS;
  await act('2026-03-19T08:31:10.205Z', anna, 'view', 'Mieterin A öffnet den Link und prüft das PDF',
    async () => (await overview()).status === 'in_signatur');
  await act('2026-03-19T08:34:27.880Z', anna, 'sign', 'Mieterin A signiert (QES per TAN-SMS)',
    async () => (await signerStatus(anna.email)) === 'signed');
  await act('2026-03-19T08:44:03.512Z', jonas, 'view', 'Mieter B öffnet den Link',
    async () => (await signerStatus(jonas.email)) === 'viewed');
  await act('2026-03-19T08:48:51.093Z', jonas, 'sign', 'Mieter B signiert',
    async () => (await signerStatus(jonas.email)) === 'signed');
  await act('2026-03-19T08:51:58.310Z', petra, 'view', 'die Verwalterin öffnet den Vertrag',
    async () => (await signerStatus(petra.email)) === 'viewed');
  /* the worker starts archiving as soon as vollstaendig commits: archiviert may already be there */
  await act('2026-03-19T08:52:44.621Z', petra, 'sign', 'die Verwalterin signiert selbst: alle drei Signaturen liegen vor',
    async () => ['vollstaendig', 'archiviert'].includes((await overview()).status), 'status_vollstaendig');

  await P.deliveries();

  /* archiving: the worker fetches the signed PDF and the protocol from the service, writes the record,
     uploads all four to the bucket and verifies each with HEAD; then archiviert in one transaction */
  await until('Der Worker archiviert die Anfrage (Status archiviert)',
    async () => (await overview()).status === 'archiviert');
  const { rows: [arc] } = await admin.query(
    `SELECT round(extract(epoch FROM a.archived_at - v.at) * 1000)::int AS ms
       FROM qes_sign.signatur_anfragen a,
            LATERAL (SELECT at FROM qes_sign.timeline(a.id) WHERE event = 'status_vollstaendig') v
      WHERE a.id = $1`, [requestId]);
  const s3 = await s3stats();
  say();
  say(`== gleich danach: der Worker archiviert den Vertrag im S3-Bucket archive   [${arc.ms} ms nach vollstaendig]`);
  await P.fetched();
  say(`  S3: ${Object.entries(s3).sort().map(([k, n]) => `${n}× ${k}`).join(', ')} ` +
      '(SigV4, Content-MD5 und x-amz-checksum-sha256 je PUT, HEAD prüft Größe und x-amz-meta-sha256)');
  await portalSees();

  say();
  say('== Archiv (qes_sign.archive_objects)');
  const { rows: objs } = await portal.query(
    `SELECT kind, key, size, left(encode(sha256, 'hex'), 16) || '…' AS sha256,
            to_char(verified_at, 'HH24:MI:SS.MS') AS verified_at
       FROM qes_sign.archive_objects WHERE request_id = $1 ORDER BY kind`, [requestId]);
  table(objs);
  const { rows: [ret] } = await portal.query(
    `SELECT to_char(a.retention_until, 'YYYY-MM-DD') AS until, to_char(a.retention_until, 'DD.MM.YYYY') AS bis,
            to_char(a.completed_at, 'DD.MM.YYYY') AS completed, t.bezeichnung, t.retention_years, t.retention_basis
       FROM qes_sign.signatur_anfragen a JOIN qes_sign.vorgangstypen t USING (vorgangstyp)
      WHERE a.id = $1`, [requestId]);
  say(`  Aufbewahrung bis ${ret.bis} (retention_until ${ret.until}): ${ret.bezeichnung}, ${ret.retention_years} Jahre ` +
      `nach Ende des Jahres der letzten Signatur (${ret.completed})`);
  say(`  Rechtsgrundlage (qes_sign.vorgangstypen.retention_basis): ${ret.retention_basis}`);
  say('  qes_sign.purge(id) löscht erst danach, und nur ein Operator');

  say();
  say(`== das Portal lädt den signierten Vertrag herunter (Rolle hv_portal, qes_sign.verwaltung = '${TENANT}')`);
  const { rows: [dl] } = await portal.query('SELECT qes_sign.download($1) AS pdf', [requestId]);
  const pdfOut = dl.pdf;
  const dlSha = crypto.createHash('sha256').update(pdfOut).digest('hex');
  const recorded = objs.find((x) => x.kind === 'signed_pdf');
  const { rows: [rec] } = await portal.query(
    `SELECT encode(o.sha256, 'hex') AS sha256, o.size, encode(a.document_sha256, 'hex') AS original
       FROM qes_sign.archive_objects o JOIN qes_sign.signatur_anfragen a ON a.id = o.request_id
      WHERE o.request_id = $1 AND o.kind = 'signed_pdf'`, [requestId]);
  const isPdf = pdfOut.subarray(0, 5).toString('latin1') === '%PDF-';
  const downloadOk = dlSha === rec.sha256 && pdfOut.length === Number(rec.size) && isPdf;
  say(`  SELECT qes_sign.download(id): ${pdfOut.length} Bytes, SHA-256 ${dlSha}`);
  say(`  ${dlSha === rec.sha256 ? '=' : '≠'} archive_objects.sha256 (${recorded.key}); ` +
      `beginnt mit ${isPdf ? '%PDF-' : JSON.stringify(pdfOut.subarray(0, 5).toString('latin1'))}` +
      (rec.original !== dlSha ? `; das von ${P.name} signierte Dokument, nicht das hochgeladene Original` : ''));
  say('  (download liest das Objekt aus dem Bucket, vergleicht es mit dem SHA-256 des Archiv-Eintrags und protokolliert den Abruf)');
  await notifications();

  say();
  say('== Timeline (qes_sign.timeline, append-only, hash-verkettet)');
  say(`   erfasst: wann qes_sign den Eintrag schrieb (Uhr der Datenbank); bei_${P.key}: die Zeit, die ${P.name} meldet`);
  const { rows: tl } = await portal.query(
    `SELECT seq, to_char(at, 'HH24:MI:SS') AS erfasst,
            to_char((detail ->> 'at')::timestamptz, 'HH24:MI:SS') AS bei_${P.key}, event, actor,
            concat_ws(' → ', coalesce(detail ->> 'signer', detail ->> 'from', detail ->> 'skribble_id',
                                      detail ->> 'provider_id',
                                      detail ->> 'kind',
                                      CASE WHEN event = 'archived' THEN jsonb_array_length(detail -> 'objects')
                                           || ' Objekte, bis ' || (detail ->> 'retention_until') END),
                      detail ->> 'to') AS detail
       FROM qes_sign.timeline($1)`, [requestId]);
  table(tl);
  const { rows: chain } = await admin.query(
    'SELECT ok AS audit_chain_ok, entries, first_broken, problem FROM qes_sign.verify_audit_chain()');
  say();
  say('== qes_sign.verify_audit_chain()');
  table(chain);

  /* the signers' times as qes_sign keeps them (timeline, completed_at, retention) against the trust service's */
  const theirs = await P.signedAt();
  const { rows: ours } = await portal.query(
    `SELECT first_name || ' ' || last_name AS name, email, signed_at FROM qes_sign.signers
      WHERE request_id = $1 AND status = 'signed' ORDER BY position`, [requestId]);
  const off = ours.filter((s) => !theirs[s.email] || Math.abs(s.signed_at - new Date(theirs[s.email])) >= 1000);
  const o = await overview();
  const { rows: [m] } = await portal.query(
    `SELECT round(extract(epoch FROM processing_time) / 60)::int AS minutes FROM qes_sign.overview WHERE id = $1`,
    [requestId]);
  say();
  say('== Cockpit (qes_sign.overview)');
  say(`  signiert (qes_sign.signers.signed_at / bei ${P.name}): ` +
      ours.map((s) => `${s.name} ${berlin(s.signed_at)} / ${berlin(theirs[s.email])}`).join(', '));
  say(`  gesendet ${berlin(o.sent_at)}, letzte Signatur ${berlin(o.completed_at)}, ${o.signers_signed}/${o.signers_total} signiert, Status ${o.status}`);
  say(`  Vertrag vollständig signiert, ${m.minutes} Minuten Bearbeitungszeit; archiviert (${objs.length} Objekte), aufzubewahren bis ${ret.bis}`);
  const { rows: items } = await admin.query(
    'SELECT kind, state FROM qes_sign.work_items WHERE request_id = $1 ORDER BY id', [requestId]);
  say(`  Arbeitsaufträge des Workers: ${items.map((i) => `${i.kind} ${i.state}`).join(', ')}`);
  const tail = tl.slice(-3).map((e) => e.event).join(',');
  const problems = [];
  if (o.status !== 'archiviert') problems.push(`Status ${o.status}`);
  if (m.minutes !== 38) problems.push(`${m.minutes} Minuten`);
  for (const s of off) problems.push(`Signierzeit ${s.name}: qes_sign ${s.signed_at.toISOString()}, ${P.name} ${theirs[s.email]}`);
  if (!chain[0].audit_chain_ok) problems.push('Audit-Kette gebrochen');
  if (objs.length !== 4 || objs.some((x) => !x.verified_at)) problems.push(`${objs.length} Archivobjekte`);
  if (!downloadOk) problems.push('Download nicht verifiziert');
  if (tail !== 'archived,status_archiviert,downloaded' || tl[tl.length - 1].actor !== 'hv_portal') {
    problems.push(`Timeline endet mit ${tl.slice(-3).map((e) => `${e.event} (${e.actor})`).join(', ')}`);
  }
  if (problems.length) throw new DemoFailure(`unerwartetes Ende: ${problems.join('; ')}`);
}

/* diagnose prints what the worker has queued, for a run that got stuck. */
async function diagnose() {
  try {
    if (requestId) {
      const { rows: r } = await admin.query(
        `SELECT status, provider_id, provider_status, sent_at, synced_at FROM qes_sign.signatur_anfragen WHERE id = $1`, [requestId]);
      say('signatur_anfragen:');
      table(r);
    }
    const { rows: w } = await admin.query(
      `SELECT id, kind, state, attempts, due_at, last_error FROM qes_sign.work_items ORDER BY id`);
    say('work_items:');
    table(w);
    const { rows: a } = await admin.query(
      `SELECT pid, backend_type, state, wait_event, left(query, 60) AS query FROM pg_stat_activity
        WHERE backend_type NOT IN ('client backend', 'checkpointer', 'walwriter', 'background writer',
                                   'autovacuum launcher', 'logical replication launcher')`);
    say('Hintergrundprozesse (pg_stat_activity):');
    table(a);
    say(`${P.name}-Double: ${JSON.stringify(await control('GET', '/stats'))}`);
    say(`S3-Server: ${JSON.stringify(await s3stats())}`);
  } catch (e) {
    say(`(Diagnose unvollständig: ${e.message})`);
  }
}

main().then(async () => {
  for (const c of [admin, portal, listener]) await c.end();
}, async (e) => {
  process.stdout.write('\n');
  process.stderr.write(`demo: FEHLER: ${e instanceof DemoFailure ? e.message : e.stack}\n`);
  await notifications().catch(() => {});
  await diagnose();
  process.exit(1);
});
