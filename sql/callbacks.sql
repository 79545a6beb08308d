--
-- callbacks: qes_sign signs the callback URLs it hands to Skribble
-- (HMAC-SHA-256 over request id and type); receive_callback verifies them in
-- constant time.  An accepted callback only records that something changed
-- (deduplicated) for the worker; a rejected one raises 28000 and leaves no
-- row, no status change and no audit entry.
--
SELECT regress.request(regress.uuid(41));
SELECT regress.request(regress.uuid(42));

-- the three URLs of a request, placeholders left in for Skribble
SELECT key, value FROM jsonb_each_text(qes_sign.callback_urls(regress.uuid(41))) ORDER BY key;

-- the MAC is HMAC-SHA-256(secret, "qes_sign-callback-v1:<id>:<type>") in
-- base64url: recomputed here independently with pgcrypto
SELECT split_part(split_part(qes_sign.callback_url(regress.uuid(41), 'update'), '?', 1), '/', 8) =
       rtrim(translate(encode(hmac('qes_sign-callback-v1:' || regress.uuid(41) || ':update',
                                   'regress-callback-secret', 'sha256'), 'base64'), '+/', '-_'), '=') AS mac_matches;

CREATE VIEW regress.inbox AS
SELECT request_id = regress.uuid(41) AS r41, callback_type, source, signature_request_id,
       document_id, signature_id, processed_at IS NOT NULL AS processed
  FROM qes_sign.callback_inbox ORDER BY id;
CREATE TABLE regress.counts AS SELECT name, value FROM qes_sign.counters();

-- Accepted: the URL as Skribble calls it, placeholders replaced
SELECT request_id = regress.uuid(41) AS r41, callback_type, duplicate FROM qes_sign.receive_callback(
    replace(replace(replace(qes_sign.callback_url(regress.uuid(41), 'update'),
        'SKRIBBLE_SIGNATURE_REQUEST_ID', 'b54821fc-231a-ff71-bc25-390e9b89c1c9'),
        'SKRIBBLE_DOCUMENT_ID', '20c535e0-4260-f52a-b2ba-a45eb280d9a3'),
        'SKRIBBLE_SIGNATURE_ID', '7ca98f98-22bb-7d2d-6f37-89d1473f4fe7'));
-- the same callback again (Skribble retries) is stored once
SELECT duplicate FROM qes_sign.receive_callback(
    replace(replace(replace(qes_sign.callback_url(regress.uuid(41), 'update'),
        'SKRIBBLE_SIGNATURE_REQUEST_ID', 'b54821fc-231a-ff71-bc25-390e9b89c1c9'),
        'SKRIBBLE_DOCUMENT_ID', '20c535e0-4260-f52a-b2ba-a45eb280d9a3'),
        'SKRIBBLE_SIGNATURE_ID', '7ca98f98-22bb-7d2d-6f37-89d1473f4fe7'));
-- only path and query, as a portal behind a proxy sees it; another host;
-- a trailing slash; placeholders not replaced (stored as NULL)
SELECT duplicate FROM qes_sign.receive_callback(
    substring(qes_sign.callback_url(regress.uuid(41), 'success') FROM '^https?://[^/]+(/.*)$'));
SELECT duplicate FROM qes_sign.receive_callback(
    replace(qes_sign.callback_url(regress.uuid(41), 'error'), 'https://portal.example', 'http://10.0.0.7:8080'));
SELECT callback_type, duplicate FROM qes_sign.receive_callback(
    regexp_replace(qes_sign.callback_url(regress.uuid(42), 'update'), '\?.*$', '/'));
SELECT * FROM regress.inbox;

-- once the worker has processed a callback, the same URL counts again
-- (a later change of the same signer reuses it)
UPDATE qes_sign.callback_inbox SET processed_at = now();
SELECT duplicate FROM qes_sign.receive_callback(
    substring(qes_sign.callback_url(regress.uuid(41), 'success') FROM '^https?://[^/]+(/.*)$'));

-- Rejected: each call raises 28000 and stores nothing
CREATE TABLE regress.bad_urls (label text, url text);
INSERT INTO regress.bad_urls
SELECT 'wrong signature', regexp_replace(u, '/update/[^?]{10}', '/update/AAAAAAAAAA') FROM (SELECT qes_sign.callback_url(regress.uuid(41), 'update') u) x
UNION ALL
SELECT 'signature of another request', replace(qes_sign.callback_url(regress.uuid(42), 'update'), regress.uuid(42)::text, regress.uuid(41)::text)
UNION ALL
SELECT 'signature of another type', replace(qes_sign.callback_url(regress.uuid(41), 'update'), '/update/', '/success/')
UNION ALL
SELECT 'unknown type', replace(qes_sign.callback_url(regress.uuid(41), 'update'), '/update/', '/delete/')
UNION ALL
SELECT 'truncated signature', regexp_replace(qes_sign.callback_url(regress.uuid(41), 'update'), '.\?', '?')
UNION ALL
SELECT 'signature cut off', regexp_replace(qes_sign.callback_url(regress.uuid(41), 'update'), '/[^/?]+\?.*$', '')
UNION ALL
SELECT 'only the host', 'https://portal.example'
UNION ALL
SELECT 'empty', ''
UNION ALL
SELECT 'NULL', NULL
UNION ALL
SELECT 'not a uuid', replace(qes_sign.callback_url(regress.uuid(41), 'update'), regress.uuid(41)::text, 'robert''); DROP TABLE x;--')
UNION ALL
SELECT 'signed with another secret', format('https://portal.example/qes/callback/%s/update/%s', regress.uuid(41),
    rtrim(translate(encode(hmac('qes_sign-callback-v1:' || regress.uuid(41) || ':update', 'another-secret', 'sha256'),
                           'base64'), '+/', '-_'), '='))
UNION ALL
SELECT 'validly signed, unknown request', qes_sign.callback_url(regress.uuid(999), 'update');
SELECT label, regress.try(format('SELECT qes_sign.receive_callback(%L)', url)) AS result FROM regress.bad_urls ORDER BY label;

-- nothing stored, no status moved, no audit entry of the requests
SELECT count(*) AS inbox_rows FROM qes_sign.callback_inbox;
SELECT status, (SELECT count(*) FROM qes_sign.timeline(a.id)) AS entries
  FROM qes_sign.signatur_anfragen a WHERE id IN (regress.uuid(41), regress.uuid(42)) ORDER BY id;

-- the shared-memory counters saw every decision (operators read them in
-- qes_sign.operations)
SELECT c.name, c.value - o.value AS delta FROM qes_sign.counters() c JOIN regress.counts o USING (name)
 WHERE c.name LIKE 'callbacks%' ORDER BY 1;
SELECT metric, value > 0 AS counted FROM qes_sign.operations WHERE metric LIKE 'callbacks%' ORDER BY 1;

-- URLs exist only for the three types Skribble knows
SELECT regress.try($$SELECT qes_sign.callback_url(regress.uuid(41), 'delete')$$);
