-- demo.sql: the article's lease, signed by two tenants and the manager.
-- Run by demo/run.sh in a temporary cluster.  The Skribble states applied
-- here are recorded responses (demo/skribble/*.json); the worker will
-- fetch them from the API itself.
\set ON_ERROR_STOP on
\pset footer off
SET TimeZone = 'Europe/Berlin';
LISTEN qes_sign;

\echo
\echo '== Donnerstag, 19. März 2026, 09:15: der Verwalter erstellt die Signaturanfrage'
\echo '   (Mietvertrag, 7 Seiten + 3 Anlagen als ein PDF; zwei Mieter und die Verwalterin)'
SELECT pg_read_binary_file(:'pdf') AS pdf_bytes \gset
SET ROLE hv_portal;
SET qes_sign.verwaltung = 'hv-eppendorf';
SELECT qes_sign.create_request(
    verwaltung => 'hv-eppendorf',
    title      => 'Mietvertrag Eppendorfer Landstraße 42, 2. OG links',
    document   => :'pdf_bytes'::bytea,
    signers    => '[{"first_name": "Anna",  "last_name": "Becker", "email": "anna.becker@example.org", "language": "de"},
                    {"first_name": "Jonas", "last_name": "Wolf",   "email": "jonas.wolf@example.org",  "language": "de"},
                    {"first_name": "Petra", "last_name": "Hansen", "email": "p.hansen@hv-eppendorf.example", "language": "de"}]',
    message    => 'Bitte prüfen und signieren Sie den Mietvertrag.',
    vorgangstyp => 'mietvertrag') AS id \gset
RESET ROLE;
SELECT id, status, quality, legislation, document_size AS bytes, encode(document_sha256, 'hex') AS sha256
  FROM qes_sign.signatur_anfragen WHERE id = :'id';
\echo 'Work for the worker (it sends the request to Skribble):'
SELECT kind, state FROM qes_sign.work_items WHERE request_id = :'id';
\echo 'Signed callback URLs handed to Skribble:'
SELECT key AS callback, value AS url FROM jsonb_each_text(qes_sign.callback_urls(:'id')) ORDER BY 1;

\echo
\echo '== 09:15 Skribble hat die Anfrage angelegt, drei Einladungen gehen raus'
\set sr `cat skribble/01-created.json`
SELECT qes_sign.apply_signature_request(:'id', replace(:'sr', '{{ID}}', :'id')::jsonb) AS status;

\echo
\echo '== 09:31 Mieterin A öffnet die Signing-Page (Callback "update")'
SELECT (qes_sign.receive_callback(replace(replace(qes_sign.callback_url(:'id', 'update'),
        'https://portal.hv-eppendorf.example', ''), 'SKRIBBLE_SIGNATURE_REQUEST_ID',
        '7f3c2a10-5b8e-4c1d-9e2f-a1b2c3d4e5f6'))).duplicate AS duplicate_callback;
\set sr `cat skribble/02-anna-viewed.json`
SELECT qes_sign.apply_signature_request(:'id', replace(:'sr', '{{ID}}', :'id')::jsonb) AS status;

\echo
\echo '== 09:34 Mieterin A signiert (QES per TAN)'
\set sr `cat skribble/03-anna-signed.json`
SELECT qes_sign.apply_signature_request(:'id', replace(:'sr', '{{ID}}', :'id')::jsonb) AS status;

\echo
\echo '== 09:48 Mieter B signiert'
\set sr `cat skribble/04-jonas-signed.json`
SELECT qes_sign.apply_signature_request(:'id', replace(:'sr', '{{ID}}', :'id')::jsonb) AS status;

\echo
\echo '== 09:52 die Verwalterin signiert selbst: alle drei Signaturen liegen vor'
\set sr `cat skribble/05-petra-signed.json`
SELECT qes_sign.apply_signature_request(:'id', replace(:'sr', '{{ID}}', :'id')::jsonb) AS status;

\echo
\echo '== Timeline (append-only, hash-verkettet)'
\echo '(recorded_at: when qes_sign wrote the entry; at_skribble: the time Skribble reports)'
SELECT seq, to_char(at, 'HH24:MI:SS') AS recorded_at,
       to_char((detail ->> 'at')::timestamptz, 'HH24:MI:SS') AS at_skribble, event, actor,
       concat_ws(' → ', coalesce(detail ->> 'signer', detail ->> 'from'), detail ->> 'to') AS detail
  FROM qes_sign.timeline(:'id');
SELECT ok AS audit_chain_ok, entries FROM qes_sign.verify_audit_chain();

\echo
\echo '== Cockpit'
SELECT title, status, signers_signed || '/' || signers_total AS signed,
       format('Vertrag vollständig signiert, %s Minuten Bearbeitungszeit',
              round(extract(epoch FROM processing_time) / 60)) AS cockpit
  FROM qes_sign.overview WHERE id = :'id';
\echo 'Next for the worker: archive the signed PDF and the protocol, then archiviert:'
SELECT kind, state FROM qes_sign.work_items WHERE request_id = :'id' ORDER BY id;
\echo
\echo 'NOTIFY payloads received on channel qes_sign are printed above as'
\echo '"Asynchronous notification ..." after each step.'
