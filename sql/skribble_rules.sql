--
-- skribble_rules: Skribble's documented rules and ambiguities
-- (skribble-api.md, "Rules and ambiguities"), fed to the worker's rules as
-- recorded answers: 1. a lost create is found whatever the page numbering;
-- 2. only permanent answers end a request; 3. signer changes only while
-- nobody signed, and a refused one is undone; 4. Skribble's SIGNED decides
-- completion; 5. the deletion date is kept and archiving beats it;
-- 6. input Skribble would refuse is refused at once.
--
-- (earlier files' work is settled, so that only this file's is claimed)
UPDATE qes_sign.work_items SET state = 'done' WHERE state = 'pending';

-- regress.others: a search answer of n requests that are not ours
CREATE FUNCTION regress.others(n int, tag text) RETURNS text LANGUAGE sql AS $$
    SELECT coalesce(jsonb_agg(jsonb_build_object('id', tag || '-' || i, 'custom', 'another portal',
                                                 'signatures', '[]'::jsonb) ORDER BY i), '[]')::text
      FROM generate_series(1, n) i
$$;
-- regress.reply: an answer to the pending work item of one kind of a request
CREATE FUNCTION regress.reply(p_id uuid, p_kind text, call_kind text, status int, body text) RETURNS text
LANGUAGE sql AS $$
    SELECT qes_sign._record_result(
        (SELECT w.id FROM qes_sign.work_items w WHERE w.request_id = p_id AND w.kind = p_kind
            AND w.state = 'pending' ORDER BY w.id LIMIT 1),
        call_kind, status, convert_to(body, 'UTF8'), 0, NULL)
$$;
-- regress.sent: a request at Skribble in a status, its own work settled
CREATE FUNCTION regress.sent(p_id uuid, target qes_sign.anfrage_status) RETURNS void LANGUAGE sql AS $$
    SELECT regress.drive(p_id, target);
    UPDATE qes_sign.work_items SET state = 'done' WHERE request_id = p_id AND state = 'pending';
$$;
-- regress.lost: a request whose create answer was lost, due for its search
CREATE FUNCTION regress.lost(p_id uuid) RETURNS void LANGUAGE sql AS $$
    SELECT regress.request(p_id);
    SELECT count(*) FROM regress.claim();
    SELECT regress.reply(p_id, 'submit', 'create', 0, '');
    UPDATE qes_sign.work_items SET due_at = now() - interval '1 second' WHERE request_id = p_id;
$$;

-- 1. A lost create is looked up without paging first (pagination is off
-- unless asked for); an answer of 50 or more may have been cut by a
-- default page size, so the pages are read from 0: a Skribble counting
-- from 1 refuses page 0 (400), then page 1 is read, and so on until a
-- short page
SELECT regress.lost(regress.uuid(701));
SELECT path FROM regress.claim();
SELECT regress.reply(regress.uuid(701), 'submit', 'search', 200, regress.others(50, 'a'));
SELECT path FROM regress.claim();
SELECT regress.reply(regress.uuid(701), 'submit', 'search', 400,
    '{"type": "https://api.skribble.com/problem/constraint-violation", "status": 400, "message": "page_number must be at least 1"}');
SELECT path FROM regress.claim();
SELECT regress.reply(regress.uuid(701), 'submit', 'search', 200, regress.others(100, 'b'));
SELECT path FROM regress.claim();
SELECT regress.reply(regress.uuid(701), 'submit', 'search', 200,
    '[' || regress.sr(regress.uuid(701), 'OPEN', '{OPEN,OPEN}')::text || ']');
SELECT status, provider_id FROM qes_sign.signatur_anfragen WHERE id = regress.uuid(701);
SELECT event, detail FROM qes_sign.timeline(regress.uuid(701)) WHERE event = 'create_recovered';
-- a Skribble counting from 0 answers page 0; one that ignores the paging
-- (the same page again) ends the reading instead of looping
SELECT regress.lost(regress.uuid(702));
SELECT count(*) FROM regress.claim();
SELECT regress.reply(regress.uuid(702), 'submit', 'search', 200, regress.others(60, 'c'));
SELECT path FROM regress.claim();
SELECT regress.reply(regress.uuid(702), 'submit', 'search', 200, regress.others(100, 'd'));
SELECT path FROM regress.claim();
SELECT regress.reply(regress.uuid(702), 'submit', 'search', 200, regress.others(100, 'd'));
SELECT kind, payload - 'posted' AS payload FROM regress.work(regress.uuid(702));

-- 2. Only permanent answers end a request: 409, 423 ("being processed,
-- retry later"), 404 and 5xx on a refresh are retried, and the request
-- stays as it is
SELECT regress.sent(regress.uuid(711), 'in_signatur');
INSERT INTO qes_sign.work_items (request_id, kind) VALUES (regress.uuid(711), 'refresh');
SELECT regress.reply(regress.uuid(711), 'refresh', 'get', s,
    format('{"type": "https://api.skribble.com/problem/problem-with-message", "status": %s, "message": "%s"}',
           s, m)) AS outcome, s AS http_status
  FROM (VALUES (409, 'Conflict'), (423, 'The resource is being processed, retry later'),
               (404, 'SignatureRequest not found'), (500, 'Internal Server Error')) v(s, m);
SELECT status, cancel_reason FROM qes_sign.signatur_anfragen WHERE id = regress.uuid(711);
SELECT kind, state, failures FROM regress.work(regress.uuid(711)) WHERE kind = 'refresh';
-- ... until qes_sign.retry_max_attempts failures in a row: then given up
-- visibly, in request_errors and the trail; the request still stands
UPDATE qes_sign.work_items SET failures = current_setting('qes_sign.retry_max_attempts')::int - 1
 WHERE request_id = regress.uuid(711) AND kind = 'refresh';
SELECT regress.reply(regress.uuid(711), 'refresh', 'get', 404,
    '{"type": "https://api.skribble.com/problem/entity-not-found", "status": 404, "message": "SignatureRequest not found"}');
SELECT status FROM qes_sign.signatur_anfragen WHERE id = regress.uuid(711);
SELECT kind, state, last_error, deletion_date FROM qes_sign.request_errors WHERE request_id = regress.uuid(711);
SELECT event, detail ->> 'call' AS call FROM qes_sign.timeline(regress.uuid(711)) WHERE event = 'call_failed';
-- a create Skribble refuses for its input ends the request; a 409, 423 or
-- 403 without an auth key on a create is retried
SELECT regress.request(regress.uuid(712));
SELECT count(*) FROM regress.claim();
SELECT regress.reply(regress.uuid(712), 'submit', 'create', 423, '{"status": 423, "message": "Locked"}');
SELECT regress.reply(regress.uuid(712), 'submit', 'search', 403,
    '{"type": "https://api.skribble.com/problem/feature-not-enabled", "status": 403, "message": "Feature not enabled"}');
SELECT status FROM qes_sign.signatur_anfragen WHERE id = regress.uuid(712);
UPDATE qes_sign.work_items SET payload = payload - 'posted' WHERE request_id = regress.uuid(712);
SELECT regress.reply(regress.uuid(712), 'submit', 'create', 400,
    '{"type": "https://api.skribble.com/problem/constraint-violation", "status": 400, "message": "ALL signers must be in a real number sequence starting with 1"}');
SELECT status, cancel_reason FROM qes_sign.signatur_anfragen WHERE id = regress.uuid(712);
SELECT qes_sign._final_answer(k, s, key) AS final, k AS call_kind, s AS http_status, key
  FROM (VALUES ('create', 400, NULL), ('create', 406, NULL), ('create', 409, NULL), ('create', 423, NULL),
               ('create', 403, 'error.auth.token_expired'), ('get', 400, NULL), ('get', 404, NULL),
               ('search', 400, NULL), ('add_signer', 400, NULL), ('delete_signer', 400, NULL),
               ('withdraw', 400, NULL), ('remind', 429, 'error.rate_limit.reminder'),
               ('remind', 429, 'error.rate_limit.exceeded')) v(k, s, key);

-- 3. A signer change Skribble refuses anyway (somebody signed meanwhile)
-- is undone: the old signer is back as before, the new one gone, a trail
-- entry names the refusal, and the request goes on
SELECT regress.sent(regress.uuid(721), 'in_signatur');
SELECT qes_sign.replace_signer(regress.uuid(721), 'signer2@example.org',
    '{"first_name": "Neu", "last_name": "Zwei", "email": "neu2@example.org"}');
SELECT path FROM regress.claim();
SELECT regress.reply(regress.uuid(721), 'replace_signer', 'delete_signer', 400,
    '{"type": "https://api.skribble.com/problem/problem-with-message", "status": 400, "message": "The signature request cannot be changed: a signer has signed"}');
SELECT email, status, replaced_by FROM qes_sign.signers WHERE request_id = regress.uuid(721) ORDER BY id;
SELECT event, detail ->> 'signer' AS signer, detail ->> 'by' AS by FROM qes_sign.timeline(regress.uuid(721))
 WHERE event IN ('signer_replaced', 'replace_signer_refused') ORDER BY seq;
SELECT kind, state FROM regress.work(regress.uuid(721)) WHERE kind <> 'submit';
-- a signature already gone at Skribble (404) is no obstacle: the new one
-- is added; a refused add is retried, never left half done
SELECT regress.sent(regress.uuid(722), 'in_signatur');
SELECT qes_sign.replace_signer(regress.uuid(722), 'signer2@example.org',
    '{"first_name": "Neu", "last_name": "Zwei", "email": "neu2@example.org"}');
SELECT count(*) FROM regress.claim();
SELECT regress.reply(regress.uuid(722), 'replace_signer', 'delete_signer', 404, '{"status": 404, "message": "Signature not found"}');
UPDATE qes_sign.work_items SET due_at = now() - interval '1 second' WHERE request_id = regress.uuid(722);
SELECT path FROM regress.claim();
SELECT regress.reply(regress.uuid(722), 'replace_signer', 'add_signer', 400, '{"status": 400, "message": "Bad Request"}');
SELECT kind, state, failures FROM regress.work(regress.uuid(722)) WHERE kind = 'replace_signer';

-- 4. Skribble's status decides completion: SIGNED completes although one
-- of our signers is not in its list and it lists one we never had (both
-- recorded in the trail) ...
SELECT regress.sent(regress.uuid(731), 'in_signatur');
SELECT qes_sign.apply_signature_request(regress.uuid(731),
    regress.sr(regress.uuid(731), 'SIGNED', '{SIGNED}')
    || jsonb_build_object('signatures', (regress.sr(regress.uuid(731), 'SIGNED', '{SIGNED}') -> 'signatures')
        || jsonb_build_array(jsonb_build_object('sid', 'sid-web', 'status_code', 'SIGNED',
               'signed_at', '2026-03-19T09:40:00.000Z',
               'signer_identity_data', jsonb_build_object('email_address', 'Dritte@example.org',
                                                          'first_name', 'Dora', 'last_name', 'Dritte')))));
SELECT email, status, provider_signer_id AS sid FROM qes_sign.signers WHERE request_id = regress.uuid(731) ORDER BY id;
SELECT event, detail ->> 'signer' AS signer FROM qes_sign.timeline(regress.uuid(731))
 WHERE event IN ('signer_added_at_skribble', 'signer_not_at_skribble', 'status_vollstaendig') ORDER BY seq;
-- ... and our rows alone never complete a request Skribble reports OPEN
SELECT regress.sent(regress.uuid(732), 'in_signatur');
SELECT qes_sign.apply_signature_request(regress.uuid(732), regress.sr(regress.uuid(732), 'OPEN', '{SIGNED,SIGNED}'));

-- 5. Skribble deletes a request on its expiration_date: kept and shown;
-- the request expires the day before at the latest; archiving a request
-- that Skribble deletes within a day goes first and raises an alarm once
SET qes_sign.test_clock = '2026-03-19 10:00+01';
SELECT regress.sent(regress.uuid(741), 'in_signatur');
SELECT qes_sign.apply_signature_request(regress.uuid(741),
    regress.sr(regress.uuid(741), 'OPEN', '{OPEN,OPEN}', viewed => '{1}') || '{"expiration_date": "2026-03-24"}');
SELECT deletion_date, expires_at AT TIME ZONE 'Europe/Berlin' AS expires FROM qes_sign.signatur_anfragen
 WHERE id = regress.uuid(741);
SELECT status, deletion_date FROM qes_sign.overview WHERE id = regress.uuid(741);
-- a deletion date our clock already sees past (a skewed clock): a day
-- from now, not a cancelled request Skribble still has
SELECT regress.sent(regress.uuid(744), 'in_signatur');
SELECT qes_sign.apply_signature_request(regress.uuid(744),
    regress.sr(regress.uuid(744), 'OPEN', '{OPEN,OPEN}', viewed => '{1}') || '{"expiration_date": "2026-03-01"}');
SELECT status, expires_at AT TIME ZONE 'Europe/Berlin' AS expires FROM qes_sign.signatur_anfragen
 WHERE id = regress.uuid(744);
SELECT regress.try($$SELECT qes_sign.apply_signature_request(regress.uuid(741),
    regress.sr(regress.uuid(741), 'OPEN', '{OPEN,OPEN}') || '{"expiration_date": "soon"}')$$);
-- two completed requests wait for archiving; the one deleted sooner goes first
SELECT regress.sent(regress.uuid(742), 'in_signatur'), regress.sent(regress.uuid(743), 'in_signatur');
SELECT qes_sign.apply_signature_request(i, regress.sr(i, 'SIGNED', '{SIGNED,SIGNED}') || jsonb_build_object('expiration_date', d))
  FROM (VALUES (regress.uuid(742), '2026-04-30'), (regress.uuid(743), '2026-03-20')) v(i, d);
UPDATE qes_sign.work_items SET due_at = CASE request_id WHEN regress.uuid(742) THEN timestamptz '2026-03-19 09:00+01'
                                                        ELSE timestamptz '2026-03-19 09:30+01' END
 WHERE request_id IN (regress.uuid(742), regress.uuid(743));
SELECT c.request_id = regress.uuid(743) AS deleted_sooner FROM qes_sign._claim(1) c;
SELECT qes_sign._tick();
SELECT qes_sign._tick();
SELECT request_id = regress.uuid(743) AS deleted_sooner, event, detail ->> 'deletion_date' AS deletion_date
  FROM qes_sign.audit_log WHERE event = 'deletion_imminent' AND request_id IN (regress.uuid(742), regress.uuid(743));
SELECT value > 0 AS counted FROM qes_sign.operations WHERE metric = 'archive_pending_before_deletion';
RESET qes_sign.test_clock;

-- 6. Input Skribble would refuse is refused at once: signing steps run
-- 1..k without gaps (groups share a number); mobile numbers are stored as
-- Skribble's examples write them, country code and digits
SELECT s AS sequences, regress.try(format($$SELECT qes_sign.create_request('hv-eppendorf', 't', regress.pdf(),
           (SELECT jsonb_agg(jsonb_build_object('first_name', 'V', 'last_name', 'N',
                             'email', 'seq' || i || '@example.org', 'sequence', x) ORDER BY i)
              FROM unnest(%L::int[]) WITH ORDINALITY u(x, i)), ordered => true)$$, s)) AS outcome
  FROM (VALUES ('{2,3}'), ('{1,3}'), ('{1,1,2}'), ('{2,1}')) v(s);
SELECT m AS given, regress.try(format($$SELECT qes_sign.create_request('hv-eppendorf', 't', regress.pdf(),
           '[{"first_name": "V", "last_name": "N", "email": "m@example.org", "mobile": %s}]', id => %L)$$,
           to_jsonb(m), regress.uuid(760 + n))) AS outcome
  FROM (VALUES (1, '+49 151 1234-5678'), (2, '0049 (151) 12345678'), (3, '41791234567'),
               (4, '0151 12345678'), (5, '+49 151'), (6, 'call me')) v(n, m);
SELECT request_id = regress.uuid(761) AS first, mobile AS stored FROM qes_sign.signers
 WHERE request_id IN (regress.uuid(761), regress.uuid(762), regress.uuid(763)) ORDER BY request_id;
