--
-- worker_rules: the worker's rules in SQL, fed with recorded Skribble
-- answers (test/recorded/): which call a work item needs, what an answer
-- means, retries, Retry-After, final errors, idempotent create, expiry,
-- reconciliation.  The worker itself (C) only carries bytes.
--
\getenv srcdir PG_ABS_SRCDIR
-- (the recordings' deletion date, expiration_date, lies in the past of a
-- later run: it is moved far out here; skribble_rules.sql shows a near one)
SELECT regexp_replace(pg_read_file(:'srcdir' || '/test/recorded/create.json'),
                      '"expiration_date":"[0-9-]+"', '"expiration_date":"2099-12-31"') AS create_json \gset
SELECT regexp_replace(pg_read_file(:'srcdir' || '/test/recorded/withdrawn.json'),
                      '"expiration_date":"[0-9-]+"', '"expiration_date":"2099-12-31"') AS withdrawn_json \gset

-- earlier files left queued work and requests: out of the way
UPDATE qes_sign.work_items SET state = 'done' WHERE state = 'pending';
UPDATE qes_sign.callback_inbox SET processed_at = now() WHERE processed_at IS NULL;
UPDATE qes_sign.signatur_anfragen SET expires_at = now() + interval '1 year',
       synced_at = now() + interval '1 year';

-- regress.claim: what the worker would send now (bodies left out; ids and
-- an anchor's hash, which covers entry times, masked)
CREATE FUNCTION regress.claim() RETURNS TABLE (item bigint, kind text, method text, path text)
LANGUAGE sql AS $$
    SELECT c.item_id, c.kind, c.method,
           regexp_replace(regexp_replace(c.path, '[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}', '<sr>', 'g'),
                          '-[0-9a-f]{16}\.json$', '-<hash>.json')
      FROM qes_sign._claim(10) c ORDER BY c.item_id
$$;

-- regress.answer: hands an answer to the work item of a request
CREATE FUNCTION regress.answer(id uuid, call_kind text, status int, body text,
                               retry_after int DEFAULT 0, err text DEFAULT NULL,
                               headers text DEFAULT NULL) RETURNS text
LANGUAGE sql AS $$
    SELECT qes_sign._record_result(
        (SELECT w.id FROM qes_sign.work_items w WHERE w.request_id = answer.id AND w.state = 'pending'
            AND (w.kind = 'archive') = (call_kind LIKE '%:%') ORDER BY w.id LIMIT 1),
        call_kind, status, convert_to(replace(body, '{{ID}}', id::text), 'UTF8'), retry_after, err, headers)
$$;

-- regress.due: makes a request's pending work due now, a create posted
-- long enough ago to be looked up
CREATE FUNCTION regress.due(id uuid) RETURNS void LANGUAGE sql AS $$
    UPDATE qes_sign.work_items w SET due_at = now() - interval '1 second',
           payload = CASE WHEN w.payload ? 'posted'
                          THEN w.payload || jsonb_build_object('posted', now() - interval '1 hour')
                               || CASE WHEN w.payload ? 'lost'
                                       THEN jsonb_build_object('lost', now() - interval '1 hour') ELSE '{}' END
                          ELSE w.payload END
     WHERE w.request_id = due.id AND w.state = 'pending'
$$;

-- regress.work: a request's work items (when a create was posted or its answer lost shows as true)
CREATE FUNCTION regress.work(id uuid)
RETURNS TABLE (kind text, state text, attempts int, failures int, payload jsonb, last_error text, due_in_s int)
LANGUAGE sql AS $$
    SELECT w.kind, w.state, w.attempts, w.failures,
           w.payload || CASE WHEN w.payload ? 'posted' THEN '{"posted": true}'::jsonb ELSE '{}' END
                     || CASE WHEN w.payload ? 'lost' THEN '{"lost": true}'::jsonb ELSE '{}' END, w.last_error,
           CASE WHEN w.state = 'pending' THEN ceil(extract(epoch FROM w.due_at - now()))::int END
      FROM qes_sign.work_items w WHERE w.request_id = work.id ORDER BY w.id
$$;

-- 1. A new request is created at Skribble with everything it needs
SELECT regress.request(regress.uuid(301));
SELECT * FROM regress.claim();
SELECT b ->> 'title' AS title, b ->> 'quality' AS quality, b ->> 'legislation' AS legislation,
       b ->> 'custom' = regress.uuid(301)::text AS custom_is_our_id,
       b -> 'attach_on_success' AS attach_on_success,
       decode(b ->> 'content', 'base64') = regress.pdf() AS content_is_the_pdf,
       b ->> 'content_type' AS content_type,
       jsonb_array_length(b -> 'signatures') AS signers,
       b #> '{signatures,0,signer_identity_data}' AS first_signer,
       b ->> 'callback_success_url' LIKE 'https://portal.example/qes/callback/%/success/%' AS callbacks_signed
  FROM (SELECT qes_sign._create_body(a)::jsonb AS b FROM qes_sign.signatur_anfragen a
         WHERE a.id = regress.uuid(301)) x;
SELECT * FROM regress.work(regress.uuid(301));   -- posted: the outcome counts from now
SELECT regress.answer(regress.uuid(301), 'create', 200, :'create_json');
SELECT status, provider_id, document_id, synced_at IS NOT NULL AS synced FROM qes_sign.signatur_anfragen
 WHERE id = regress.uuid(301);
SELECT email, status, provider_signer_id AS sid FROM qes_sign.signers WHERE request_id = regress.uuid(301) ORDER BY position;
SELECT * FROM regress.work(regress.uuid(301));

-- 2. A create whose answer was lost is looked up by custom before it is
--    sent again; a hit is taken over, no second create
SELECT regress.request(regress.uuid(302));
SELECT count(*) FROM regress.claim();
SELECT regress.answer(regress.uuid(302), 'create', 0, '', 0, 'Operation timed out after 2000 milliseconds');
SELECT * FROM regress.work(regress.uuid(302));
SELECT regress.due(regress.uuid(302));
SELECT * FROM regress.claim();
SELECT regress.answer(regress.uuid(302), 'search', 200, '[]');          -- not there: create it
SELECT * FROM regress.claim();
SELECT regress.answer(regress.uuid(302), 'create', 502, '<html>Bad Gateway</html>');
SELECT regress.due(regress.uuid(302));
SELECT * FROM regress.claim();
SELECT regress.answer(regress.uuid(302), 'search', 200,
                      '[{"id": "other", "custom": "somebody else", "signatures": []}, ' ||
                      replace(:'create_json', '111b334e', '222b334e') || ']');
SELECT status, provider_id FROM qes_sign.signatur_anfragen WHERE id = regress.uuid(302);
SELECT event FROM qes_sign.timeline(regress.uuid(302));
SELECT * FROM regress.work(regress.uuid(302));

-- 3. Retries: backoff with jitter for 5xx; Retry-After for 429 and 503;
--    an expired token is retried too; after retry_max_attempts, final
SELECT regress.request(regress.uuid(303));
SELECT count(*) FROM regress.claim();
SELECT regress.answer(regress.uuid(303), 'create', 500,
    '{"type":"https://api.skribble.com/problem/problem-with-message","status":500,"message":"Internal error"}');
SELECT kind, attempts, last_error, due_in_s BETWEEN 0 AND 1 AS backoff_about_base FROM regress.work(regress.uuid(303));
SELECT regress.due(regress.uuid(303));
SELECT count(*) FROM regress.claim();
SELECT regress.answer(regress.uuid(303), 'search', 429,
    '{"type":"https://api.skribble.com/problem/limit-exceeded","status":429,"message":"Too many requests","key":"error.rate_limit.exceeded"}', 7);
SELECT kind, attempts, last_error, due_in_s FROM regress.work(regress.uuid(303));
SELECT regress.due(regress.uuid(303));
SELECT count(*) FROM regress.claim();
SELECT regress.answer(regress.uuid(303), 'search', 403,
    '{"type":"https://api.skribble.com/problem/problem-with-message","status":403,"message":"Token expired","key":"error.auth.token_expired"}');
SELECT regress.due(regress.uuid(303));
UPDATE qes_sign.work_items SET failures = 49 WHERE request_id = regress.uuid(303);
SELECT count(*) FROM regress.claim();
SELECT regress.answer(regress.uuid(303), 'search', 503, 'Service Unavailable');
SELECT status, cancel_reason FROM qes_sign.signatur_anfragen WHERE id = regress.uuid(303);

-- 4. A refused create is final: the request ends with Skribble's message
SELECT regress.request(regress.uuid(304));
SELECT count(*) FROM regress.claim();
SELECT regress.answer(regress.uuid(304), 'create', 406,
    '{"type":"https://api.skribble.com/problem/problem-with-message","method":"POST","path":"/v2/signature-requests","status":406,"message":"The document is corrupt or encrypted"}');
SELECT status, cancel_reason FROM qes_sign.signatur_anfragen WHERE id = regress.uuid(304);
SELECT event, detail FROM qes_sign.timeline(regress.uuid(304)) WHERE event <> 'created';
SELECT * FROM regress.work(regress.uuid(304));

-- 5. Reminders: sent once; the hourly limit is reported, not retried
SELECT qes_sign.remind(regress.uuid(301));
SELECT * FROM regress.claim();
SELECT regress.answer(regress.uuid(301), 'remind', 200, '');
SELECT qes_sign.remind(regress.uuid(301));
SELECT count(*) FROM regress.claim();
SELECT regress.answer(regress.uuid(301), 'remind', 429,
    '{"type":"https://api.skribble.com/problem/limit-exceeded","method":"POST","path":"/v2/signature-requests/x/remind","status":429,"message":"The reminder limit for this signature request is reached, try again later","key":"error.rate_limit.reminder"}', 3600);
SELECT event, detail ->> 'reason' AS reason FROM qes_sign.timeline(regress.uuid(301))
 WHERE event LIKE 'remind%';
SELECT kind, state, last_error FROM regress.work(regress.uuid(301)) WHERE kind = 'remind';

-- 6. Callbacks become one refresh per request; one arriving while the
--    refresh is in flight makes it run again
SELECT (qes_sign.receive_callback(replace(qes_sign.callback_url(regress.uuid(301), 'update'),
        'SKRIBBLE_SIGNATURE_REQUEST_ID', '111b334e-d808-e548-7c51-f034167bfa45'))).duplicate;
SELECT * FROM regress.claim();
SELECT (qes_sign.receive_callback(replace(qes_sign.callback_url(regress.uuid(301), 'update'),
        'SKRIBBLE_DOCUMENT_ID', 'doc-2'))).duplicate;
SELECT count(*) FROM regress.claim();                                   -- drains the inbox only
SELECT kind, payload FROM regress.work(regress.uuid(301)) WHERE state = 'pending';
SELECT regress.answer(regress.uuid(301), 'get', 200,
    replace(:'create_json', '"status_code":"OPEN","notify":true,"signing_url":"https://my.skribble.com/view/111b334e-d808-e548-7c51-f034167bfa45/89ce',
                            '"status_code":"OPEN","last_viewed_at":"2026-11-26T22:40:00.000Z","notify":true,"signing_url":"https://my.skribble.com/view/111b334e-d808-e548-7c51-f034167bfa45/89ce'));
SELECT status FROM qes_sign.signatur_anfragen WHERE id = regress.uuid(301);
SELECT * FROM regress.claim();                                          -- the second run
SELECT regress.answer(regress.uuid(301), 'get', 404,
    '{"type":"https://api.skribble.com/problem/entity-not-found","status":404,"message":"SignatureRequest not found"}') IS NOT NULL AS answered;
SELECT status, cancel_reason FROM qes_sign.signatur_anfragen WHERE id = regress.uuid(301);

-- 7. Withdraw: the reason goes to Skribble, and comes back as the
--    cancellation reason once Skribble says WITHDRAWN
SELECT regress.request(regress.uuid(305));
SELECT count(*) FROM regress.claim();
SELECT regress.answer(regress.uuid(305), 'create', 200, replace(:'create_json', '111b334e', '555b334e'));
SELECT qes_sign.withdraw(regress.uuid(305), 'falsche Wohnung');
SELECT c.kind, c.method, c.body FROM qes_sign._claim(10) c;
SELECT regress.answer(regress.uuid(305), 'withdraw', 200, replace(:'withdrawn_json', '111b334e', '555b334e'));
SELECT status, cancel_reason FROM qes_sign.signatur_anfragen WHERE id = regress.uuid(305);

-- 8. Replacing a signer: the old signature is deleted, the new one added
SELECT regress.request(regress.uuid(306));
SELECT count(*) FROM regress.claim();
SELECT regress.answer(regress.uuid(306), 'create', 200, replace(:'create_json', '111b334e', '666b334e'));
SELECT qes_sign.replace_signer(regress.uuid(306), 'signer2@example.org',
    '{"first_name": "Vorname3", "last_name": "Nachname3", "email": "signer3@example.org"}');
SELECT * FROM regress.claim();
SELECT regress.answer(regress.uuid(306), 'delete_signer', 200, '');
SELECT c.kind, c.method, c.body FROM qes_sign._claim(10) c;

-- 9. Expiry: one sent is withdrawn at Skribble ("expired"); one never sent
--    ends here; reconciliation fetches open requests that went quiet
SELECT regress.request(regress.uuid(307));
SELECT count(*) FROM regress.claim();
SELECT regress.answer(regress.uuid(307), 'create', 200, replace(:'create_json', '111b334e', '777b334e'));
SELECT regress.request(regress.uuid(308));
UPDATE qes_sign.work_items SET state = 'done' WHERE state = 'pending' AND request_id <> regress.uuid(308);
UPDATE qes_sign.signatur_anfragen SET expires_at = now() - interval '1 second'
 WHERE id IN (regress.uuid(307), regress.uuid(308));
UPDATE qes_sign.signatur_anfragen SET synced_at = now() - interval '6 minutes' WHERE id = regress.uuid(302);
SELECT qes_sign._tick();
SELECT id = regress.uuid(307) AS sent_one, status, cancel_reason FROM qes_sign.signatur_anfragen
 WHERE id IN (regress.uuid(307), regress.uuid(308)) ORDER BY id;
SELECT w.kind, a.id = regress.uuid(307) AS sent_one, a.id = regress.uuid(302) AS quiet_one
  FROM qes_sign.work_items w JOIN qes_sign.signatur_anfragen a ON a.id = w.request_id
 WHERE w.state = 'pending' AND w.kind <> 'archive' ORDER BY 1;
SELECT c.kind, c.method, c.body FROM qes_sign._claim(10) c WHERE c.kind = 'withdraw';
SELECT qes_sign._record_result((SELECT id FROM qes_sign.work_items WHERE request_id = regress.uuid(307)
                                   AND kind = 'expire'), 'withdraw', 200,
       convert_to(replace(replace(:'withdrawn_json', '111b334e', '777b334e'), '{{ID}}', regress.uuid(307)::text), 'UTF8'),
       0, NULL);
SELECT status, cancel_reason FROM qes_sign.signatur_anfragen WHERE id = regress.uuid(307);

-- 10. A (re)started worker takes back what its predecessor had leased
SELECT regress.request(regress.uuid(309));
SELECT count(*) FROM regress.claim();
SELECT count(*) FROM regress.claim();                                   -- leased: not again
SELECT qes_sign._worker_started();
SELECT regress.due(regress.uuid(309));
SELECT * FROM regress.claim();                                          -- looked up first

-- 11. A lost create is looked up at once; while Skribble may still be
--     storing it (qes_sign.http_timeout after it was posted, or after its
--     answer was lost, whichever is later: a create that timed out may be
--     stored after the client gave up) a search that
--     finds nothing is repeated (1, 2, 4 ... s later), and only a search
--     after that lets the create go out again
SELECT regress.request(regress.uuid(310));
SELECT count(*) FROM regress.claim();
SELECT regress.answer(regress.uuid(310), 'create', 0, '', 0, 'Connection reset by peer');
UPDATE qes_sign.work_items SET due_at = now() - interval '1 second' WHERE request_id = regress.uuid(310);
SELECT * FROM regress.claim();                                          -- looked up at once
SELECT regress.answer(regress.uuid(310), 'search', 200, '[]');          -- not (yet) there
SELECT kind, payload - 'posted' AS payload, due_in_s BETWEEN 0 AND 2 AS soon FROM regress.work(regress.uuid(310));
UPDATE qes_sign.work_items SET due_at = now() - interval '1 second' WHERE request_id = regress.uuid(310);
SELECT * FROM regress.claim();                                          -- looked up again
SELECT regress.answer(regress.uuid(310), 'search', 200, '[]');
SELECT kind, payload - 'posted' AS payload, due_in_s BETWEEN 1 AND 3 AS later FROM regress.work(regress.uuid(310));
UPDATE qes_sign.work_items SET due_at = now() - interval '1 second',
       payload = payload || jsonb_build_object('posted', now() - interval '61 seconds',
                                               'lost', now() - interval '61 seconds')
 WHERE request_id = regress.uuid(310);
SELECT * FROM regress.claim();                                          -- a minute later: the last look
SELECT regress.answer(regress.uuid(310), 'search', 200, '[]');
SELECT * FROM regress.claim();                                          -- not there: created again
--     after a promotion every create not yet answered is looked up first:
--     the old primary may have sent it without this server knowing
SELECT regress.request(regress.uuid(311));
SELECT qes_sign._worker_started(true);
SELECT kind, payload ? 'posted' AS looked_up_first FROM qes_sign.work_items WHERE request_id = regress.uuid(311);
UPDATE qes_sign.work_items SET state = 'done' WHERE request_id = regress.uuid(311);
--     the same on another cluster or timeline than the worker last ran on
--     (a restored dump or backup, point-in-time recovery); on the same, not
SELECT regress.request(regress.uuid(312));
UPDATE qes_sign.worker_home SET timeline = timeline + 1;
SELECT qes_sign._worker_started() >= 0 AS started;
SELECT regress.request(regress.uuid(313));
SELECT qes_sign._worker_started() >= 0 AS started;
SELECT request_id = regress.uuid(312) AS moved_before, payload ? 'posted' AS looked_up_first
  FROM qes_sign.work_items WHERE request_id IN (regress.uuid(312), regress.uuid(313)) ORDER BY 1 DESC;
UPDATE qes_sign.work_items SET state = 'done' WHERE request_id IN (regress.uuid(312), regress.uuid(313));

-- operators see the last error per request
SELECT request_id = regress.uuid(303) AS given_up, kind, attempts, last_error
  FROM qes_sign.request_errors WHERE request_id IN (regress.uuid(302), regress.uuid(303), regress.uuid(309));

-- _url_escape: libcurl's percent-encoding; the empty string stays empty
-- (valgrind found libcurl reading past an empty datum before)
SELECT qes_sign._url_escape(''), qes_sign._url_escape('Mietvertrag Eppendorfer Landstraße 42/2.OG'),
       qes_sign._url_escape('a&b=c?d#e');

-- _next_due: with nothing queued there is no due time (the worker then
-- waits a tick; a 0 had it claim every 10 ms while idle); with an item
-- queued, the milliseconds until it is due
UPDATE qes_sign.work_items SET state = 'done' WHERE state = 'pending';
SELECT qes_sign._next_due() AS nothing_queued;
SELECT regress.request(regress.uuid(314));
UPDATE qes_sign.work_items SET due_at = qes_sign.clock() + interval '2 seconds' WHERE request_id = regress.uuid(314);
SELECT qes_sign._next_due() BETWEEN 1000 AND 2000 AS due_in_2_s;
UPDATE qes_sign.work_items SET state = 'done' WHERE request_id = regress.uuid(314);
