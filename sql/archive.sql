--
-- archive: retention dates, the archive steps with recorded answers
-- (fetch from Skribble, PUT and HEAD at S3, all recorded in one
-- transaction), S3 errors, download and purge refusals.  The bucket of
-- the regress configuration does not answer; the TAP tests use a real one.
--
UPDATE qes_sign.work_items SET state = 'done' WHERE state = 'pending';
SET datestyle = 'ISO, YMD';

-- Retention: N years after the end of the calendar year of completion,
-- in German time (a lease 10, a Hausmeistervertrag 6)
SELECT t.vorgangstyp, c.completed, qes_sign.retention_until(t.vorgangstyp, c.completed::timestamptz)
  FROM (VALUES ('mietvertrag'), ('hausmeistervertrag')) t(vorgangstyp),
       (VALUES ('2026-03-19 09:52:44+01'), ('2026-01-01 00:30+01'), ('2026-12-31 23:30+01'),
               ('2026-12-31 23:30+00'), ('2028-02-29 12:00+01')) c(completed)
 ORDER BY 1, 2;

-- a completed request gets its retention date and an archive item
SELECT regress.drive(regress.uuid(401), 'vollstaendig');
SELECT completed_at, retention_until FROM qes_sign.signatur_anfragen WHERE id = regress.uuid(401);
SELECT * FROM regress.work(regress.uuid(401)) WHERE kind = 'archive';

-- 1. what the archive fetches from Skribble: the current document and the
--    signature protocol (PDF, JSON)
SELECT c.kind, c.target, c.method, c.path, c.headers FROM qes_sign._claim(10) c;
SELECT regress.answer(regress.uuid(401), 'fetch:signed_pdf', 200, 'not a PDF');
SELECT last_error FROM regress.work(regress.uuid(401)) WHERE kind = 'archive';
SELECT regress.due(regress.uuid(401));
SELECT c.kind FROM qes_sign._claim(10) c;
SELECT regress.answer(regress.uuid(401), 'fetch:signed_pdf', 200, E'%PDF-1.4 signed\n%%EOF\n');
SELECT c.kind, c.path, c.headers FROM qes_sign._claim(10) c;
SELECT regress.answer(regress.uuid(401), 'fetch:protocol_pdf', 200, E'%PDF-1.4 protocol\n%%EOF\n');
SELECT c.kind, c.path, c.headers FROM qes_sign._claim(10) c;
SELECT regress.answer(regress.uuid(401), 'fetch:protocol_json', 200, '{"header": {"id": "sr-x"}, "userList": []}');

-- 2. the record of the request was staged with the last fetch; the four objects go up
--    in parallel, each with the digests taken when it was staged (S3 checks
--    the bytes against them); the worker reads the data from the staging row
SELECT c.kind, c.target, c.method,
       c.path = 'hv-eppendorf/2026/' || g.request_id || '/' || replace(g.kind, '_', '.') AS key_ok,
       c.headers[1] AS content_type,
       c.headers[2:] = ARRAY['Content-MD5: ' || encode(decode(md5(g.content), 'hex'), 'base64'),
                             'x-amz-checksum-sha256: ' || encode(sha256(g.content), 'base64'),
                             'x-amz-content-sha256: ' || encode(sha256(g.content), 'hex'),
                             'x-amz-meta-sha256: ' || encode(sha256(g.content), 'hex')] AS digests_ok,
       c.data IS NULL AS data_from_staging
  FROM qes_sign._claim(10) c JOIN qes_sign.archive_staging g ON 'put:' || g.kind = c.kind
 ORDER BY g.size DESC, g.kind;
-- all four in flight: nothing to claim until an answer comes
SELECT count(*) AS claimed FROM qes_sign._claim(10);
SELECT kind FROM qes_sign.archive_staging WHERE leased_until IS NOT NULL ORDER BY kind;
SELECT kind, key, content_type, encode(sha256, 'hex') = encode(sha256(content), 'hex') AS digest_ok,
       stored_at IS NOT NULL AS stored FROM qes_sign.archive_staging ORDER BY kind;
SELECT r -> 'request' ->> 'title' AS title, jsonb_array_length(r -> 'signers') AS signers,
       r #>> '{signers,0,signed_at}' AS first_signed_at, r -> 'objects' ? 'signed_pdf' AS digests,
       (SELECT array_agg(e ->> 'event') FROM jsonb_array_elements(r -> 'audit') e) AS audit
  FROM (SELECT convert_from(content, 'UTF8')::jsonb AS r FROM qes_sign.archive_staging
         WHERE kind = 'record_json') x;
SELECT regress.answer(regress.uuid(401), 'put:protocol_json', 200, '');
SELECT c.kind, c.method FROM qes_sign._claim(10) c;
-- a HEAD that shows another digest is never accepted: upload again
SELECT regress.answer(regress.uuid(401), 'head:protocol_json', 200, '', 0, NULL,
                      E'HTTP/1.1 200 OK\r\nContent-Length: 42\r\nx-amz-meta-sha256: 00ff\r\n\r\n');
SELECT kind, attempts, failures, last_error FROM regress.work(regress.uuid(401)) WHERE kind = 'archive';
SELECT regress.due(regress.uuid(401));
SELECT c.kind, c.method FROM qes_sign._claim(10) c;

-- 3. S3 refuses (a wrong key): retried, the request stays vollstaendig,
--    the error readable; a reload of the configuration retries at once
SELECT regress.answer(regress.uuid(401), 'put:protocol_json', 403,
    '<?xml version="1.0" encoding="UTF-8"?><Error><Code>SignatureDoesNotMatch</Code><Message>The request signature we calculated does not match the signature you provided.</Message></Error>');
SELECT status FROM qes_sign.signatur_anfragen WHERE id = regress.uuid(401);
SELECT kind, attempts, last_error FROM qes_sign.request_errors WHERE request_id = regress.uuid(401);
-- the other three fail too (S3 unavailable); after a failure one object
-- goes at a time (the smallest), until S3 answers again
SELECT k, regress.answer(regress.uuid(401), 'put:' || k, 503, '')
  FROM unnest(ARRAY['protocol_pdf', 'record_json', 'signed_pdf']) k;
SELECT qes_sign._config_reloaded();
SELECT c.kind FROM qes_sign._claim(10) c;
SELECT count(*) AS claimed_while_the_probe_is_out FROM qes_sign._claim(10);

-- 4. every object up and verified: archived in the same transaction
CREATE FUNCTION regress.upload_all(id uuid) RETURNS SETOF text LANGUAGE plpgsql AS $$
DECLARE
    c qes_sign.api_call;
    g qes_sign.archive_staging;
BEGIN
    LOOP
        SELECT * INTO g FROM qes_sign.archive_staging s WHERE s.request_id = id AND s.verified_at IS NULL
         ORDER BY kind LIMIT 1;
        EXIT WHEN NOT FOUND;
        RETURN NEXT regress.answer(id, 'put:' || g.kind, 200, '');
        RETURN NEXT regress.answer(id, 'head:' || g.kind, 200, '', 0, NULL,
            format(E'HTTP/1.1 200 OK\r\ncontent-length: %s\r\nX-Amz-Meta-Sha256: %s\r\n\r\n',
                   length(g.content), encode(g.sha256, 'hex')));
    END LOOP;
END
$$;
SELECT regress.upload_all(regress.uuid(401));
SELECT count(*) FROM qes_sign._claim(10);
SELECT status, archived_at IS NOT NULL AS archived FROM qes_sign.signatur_anfragen WHERE id = regress.uuid(401);
SELECT kind, bucket, regexp_replace(key, '[0-9a-f-]{36}', '<id>') AS key, size, content_type,
       verified_at IS NOT NULL AS verified FROM qes_sign.archive_objects
 WHERE request_id = regress.uuid(401) ORDER BY kind;
SELECT event, detail -> 'objects' -> 0 ->> 'kind' AS first, jsonb_array_length(detail -> 'objects') AS objects,
       detail ->> 'retention_until' AS retention_until
  FROM qes_sign.timeline(regress.uuid(401)) WHERE event IN ('archived', 'status_archiviert');
SELECT count(*) AS staged_left FROM qes_sign.archive_staging WHERE request_id = regress.uuid(401);
SELECT kind, state FROM regress.work(regress.uuid(401)) WHERE kind = 'archive';

-- 5. download: errors name the object; the app sees only its tenant
SELECT regress.try($$SELECT qes_sign.download(regress.uuid(401), 'contract')$$);
SELECT regress.drive(regress.uuid(402), 'in_signatur');
SELECT regress.try($$SELECT qes_sign.download(regress.uuid(402))$$);
SELECT regexp_replace(regress.try($$SELECT qes_sign.download(regress.uuid(401))$$), '/2026/[^ ]*', '/2026/…');
SET ROLE regress_portal;
SET qes_sign.verwaltung = 'hv-altona';
SELECT regress.try($$SELECT qes_sign.download(regress.uuid(401))$$);
RESET ROLE;

-- 6. purge: operators only, never inside the retention period
SET ROLE regress_portal;
SET qes_sign.verwaltung = 'hv-eppendorf';
SELECT regress.try($$SELECT qes_sign.purge(regress.uuid(401))$$);
RESET ROLE;
SELECT regress.try($$SELECT qes_sign.purge(regress.uuid(401))$$);
SELECT regress.try($$SELECT qes_sign.purge(regress.uuid(402))$$);
SET qes_sign.test_clock = '2036-12-31 23:59+01';
SELECT regress.try($$SELECT qes_sign.purge(regress.uuid(401))$$);
SET qes_sign.test_clock = '2037-01-01 00:00+01';
SELECT regexp_replace(regress.try($$SELECT qes_sign.purge(regress.uuid(401))$$), '/2026/[^ ]*', '/2026/…');
RESET qes_sign.test_clock;
SELECT status, title, purged_at FROM qes_sign.signatur_anfragen WHERE id = regress.uuid(401);

-- the tenant is the first segment of the archive keys: no path tricks
SELECT v, regress.try(format($$SELECT qes_sign.create_request(%L, 't', regress.pdf(), regress.signers())$$, v))
  FROM unnest(ARRAY['..', '.', 'hv-a/../hv-b', E'hv\tb']) v;
