--
-- yousign_rules: the Yousign provider's rules (sql/install/provider-yousign.sql)
-- fed with answers as Yousign documents them (reference/yousign-v3):
-- 1. create_request refuses what Yousign would; 2. the four create steps;
-- 3. a lost answer is looked up by external_id and continued from the step
-- Yousign reached, never created twice; 4. the status mapping; 5. refusals,
-- retries and the rate limit; 6. actions; 7. webhooks.
--
UPDATE qes_sign.work_items SET state = 'done' WHERE state = 'pending';
CREATE EXTENSION IF NOT EXISTS pgcrypto;
-- (the internal functions run on the worker's and the API's search_path)
SET search_path = pg_catalog, qes_sign, public, pg_temp;

-- regress.ycall: what the worker sends now for one request (ids masked)
CREATE FUNCTION regress.ycall(p_id uuid) RETURNS TABLE (kind text, method text, path text, body jsonb, form text[])
LANGUAGE sql AS $$
    SELECT regexp_replace(c.kind, '^add_signer:[0-9]+$', 'add_signer:<signer>'), c.method, replace(c.path, p_id::text, '<id>'), c.body::jsonb - 'expiration_date', c.form
      FROM qes_sign._claim(10) c WHERE c.request_id = p_id
$$;
-- regress.yreply: an answer to the request's pending work item of a kind
CREATE FUNCTION regress.yreply(p_id uuid, p_kind text, call_kind text, status int, body text,
                               retry_after int DEFAULT 0, headers text DEFAULT NULL) RETURNS text
LANGUAGE sql AS $$
    SELECT qes_sign._record_result(
        (SELECT w.id FROM qes_sign.work_items w WHERE w.request_id = p_id AND w.kind = p_kind
            AND w.state = 'pending' ORDER BY w.id LIMIT 1),
        call_kind, status, convert_to(replace(body, '{{ID}}', p_id::text), 'UTF8'), retry_after,
        CASE WHEN status = 0 THEN 'Operation timed out' END, headers)
$$;
-- regress.ysr: a SignatureRequest as Yousign returns it, one status per signer
CREATE FUNCTION regress.ysr(p_id uuid, status text, codes text[], extra jsonb DEFAULT '{}') RETURNS text
LANGUAGE sql AS $$
    SELECT (jsonb_build_object(
        'id', 'ys-' || ('x' || right(p_id::text, 8))::bit(32)::int, 'status', status, 'name', 'Mietvertrag Testweg 1',
        'delivery_mode', 'email', 'created_at', '2026-03-19T09:15:00+00:00', 'ordered_signers', true,
        'external_id', p_id::text, 'source', 'public_api', 'activated_at', '2026-03-19T09:15:02+00:00',
        'documents', '[{"id": "doc-1", "nature": "signable_document"}]'::jsonb,
        'signers', (SELECT coalesce(jsonb_agg(jsonb_build_object('id', 'sg-' || i, 'status', codes[i]) ORDER BY i), '[]')
                      FROM generate_subscripts(codes, 1) i)) || extra)::text
$$;
-- regress.yrequest: a Yousign request with two QES signers
CREATE FUNCTION regress.yrequest(p_id uuid) RETURNS uuid LANGUAGE sql AS $$
    SELECT qes_sign.create_request('hv-eppendorf', 'Mietvertrag Testweg 1',
        convert_to('%PDF-1.7' || E'\n1 0 obj << /Type /Page >> endobj\n2 0 obj << /Type /Page >> endobj\n%%EOF\n', 'UTF8'),
        '[{"first_name": "Anna", "last_name": "Müller-Lüdenscheidt", "email": "signer1@example.org", "mobile": "+49 151 1111111"},
          {"first_name": "Seán", "last_name": "O''Brien", "email": "signer2@example.org", "mobile": "+353 85 1234567"}]',
        id => p_id, provider => 'yousign')
$$;
-- regress.yactive: a request activated at Yousign (its submit settled)
CREATE FUNCTION regress.yactive(p_id uuid) RETURNS void LANGUAGE sql AS $$
    SELECT regress.yrequest(p_id);
    UPDATE qes_sign.signers SET provider_signer_id = 'sg-' || (position + 1) WHERE request_id = p_id;
    UPDATE qes_sign.work_items SET state = 'done' WHERE request_id = p_id AND state = 'pending';
    SELECT qes_sign._yousign_apply(p_id, regress.ysr(p_id, 'ongoing', '{notified,initiated}')::jsonb);
$$;

-- 1. create_request refuses at once what Yousign would refuse later: a name
-- outside its alphabet, a QES signer without a phone, a long address, an
-- unknown provider; accents, hyphens and apostrophes pass
SELECT regress.try($$SELECT qes_sign.create_request('hv-eppendorf', 'T', regress.pdf(),
    '[{"first_name": "Hans", "last_name": "Dr. Müller", "email": "h@example.org", "mobile": "+4915112345678"}]',
    provider => 'yousign')$$);
SELECT regress.try($$SELECT qes_sign.create_request('hv-eppendorf', 'T', regress.pdf(),
    '[{"first_name": "Hans", "last_name": "Müller", "email": "h@example.org"}]', provider => 'yousign')$$);
SELECT regress.try($$SELECT qes_sign.create_request('hv-eppendorf', 'T', regress.pdf(),
    jsonb_build_array(jsonb_build_object('first_name', 'Hans', 'last_name', 'Müller', 'mobile', '+4915112345678',
                                         'email', repeat('x', 95) || '@example.org')), provider => 'yousign')$$);
SELECT regress.try($$SELECT qes_sign.create_request('hv-eppendorf', 'T', regress.pdf(), regress.signers(1),
    provider => 'docusign')$$);
SELECT count(*) AS stored FROM qes_sign.signatur_anfragen WHERE provider = 'yousign';
-- the default comes from qes_sign.provider
SET qes_sign.provider = 'yousign';
SELECT regress.try($$SELECT qes_sign.create_request('hv-eppendorf', 'T', regress.pdf(), regress.signers(1))$$);
RESET qes_sign.provider;
SELECT regress.yrequest(regress.uuid(801));
SELECT provider, provider_id, status FROM qes_sign.signatur_anfragen WHERE id = regress.uuid(801);

-- 2. The four steps: a draft with our id as external_id (ordered for QES),
-- the PDF as multipart with Smart Anchors parsed, each signer at QES with
-- a field on the last page, then activation
SELECT * FROM regress.ycall(regress.uuid(801));
SELECT regress.yreply(regress.uuid(801), 'submit', 'create', 201,
    '{"id": "ys-801", "status": "draft", "external_id": "{{ID}}", "signers": [], "documents": []}');
SELECT * FROM regress.ycall(regress.uuid(801));
SELECT regress.yreply(regress.uuid(801), 'submit', 'upload', 201,
    '{"id": "doc-1", "nature": "signable_document", "total_pages": 2, "total_anchors": 0}');
SELECT kind, path, body FROM regress.ycall(regress.uuid(801));
SELECT regress.yreply(regress.uuid(801), 'submit',
    (SELECT 'add_signer:' || id FROM qes_sign.signers WHERE request_id = regress.uuid(801) AND position = 0),
    201, '{"id": "sg-1", "status": "initiated"}');
SELECT kind, path, body #> '{fields,0}' AS field FROM regress.ycall(regress.uuid(801));
SELECT regress.yreply(regress.uuid(801), 'submit',
    (SELECT 'add_signer:' || id FROM qes_sign.signers WHERE request_id = regress.uuid(801) AND position = 1),
    201, '{"id": "sg-2", "status": "initiated"}');
SELECT kind, method, path FROM regress.ycall(regress.uuid(801));
SELECT regress.yreply(regress.uuid(801), 'submit', 'activate', 201,
    regress.ysr(regress.uuid(801), 'ongoing', '{notified,initiated}', '{"id": "ys-801"}'));
SELECT status, provider_id, provider_status, sent_at IS NOT NULL AS sent FROM qes_sign.signatur_anfragen
 WHERE id = regress.uuid(801);
SELECT email, status, provider_signer_id, provider_status FROM qes_sign.signers
 WHERE request_id = regress.uuid(801) ORDER BY position;
SELECT event, detail FROM qes_sign.timeline(regress.uuid(801)) WHERE event IN ('sent', 'created');
-- a PDF with Smart Anchors for each signer: no fields of our own
SELECT qes_sign._yousign_anchored(r, 2, 0) AS anchored_first, qes_sign._yousign_anchored(r, 0, 0) AS no_anchors
  FROM qes_sign.signatur_anfragen r WHERE id = regress.uuid(801);

-- 3. Lost answers.  The upload timed out: the next call is the lookup; the
-- draft has the document, so its pages are read and the signers added
SELECT regress.yrequest(regress.uuid(802));
SELECT count(*) FROM regress.ycall(regress.uuid(802));
SELECT regress.yreply(regress.uuid(802), 'submit', 'create', 201,
    '{"id": "ys-802", "status": "draft", "external_id": "{{ID}}"}');
SELECT count(*) FROM regress.ycall(regress.uuid(802));
SELECT regress.yreply(regress.uuid(802), 'submit', 'upload', 0, '');
UPDATE qes_sign.work_items SET due_at = now() WHERE request_id = regress.uuid(802) AND state = 'pending';
SELECT kind, method, path FROM regress.ycall(regress.uuid(802));
SELECT regress.yreply(regress.uuid(802), 'submit', 'lookup', 200,
    '{"meta": {"next_cursor": null}, "data": [{"id": "ys-802", "status": "draft", "external_id": "{{ID}}",
      "documents": [{"id": "doc-2", "nature": "signable_document"}], "signers": []}]}');
SELECT kind, method, path FROM regress.ycall(regress.uuid(802));
SELECT regress.yreply(regress.uuid(802), 'submit', 'document', 200,
    '{"id": "doc-2", "nature": "signable_document", "total_pages": 1, "total_anchors": 0}');
SELECT kind FROM regress.ycall(regress.uuid(802));
-- the first signer was added but its answer lost: the lookup shows one
-- signer, which is matched by address, and only the second is added
SELECT regress.yreply(regress.uuid(802), 'submit',
    (SELECT 'add_signer:' || id FROM qes_sign.signers WHERE request_id = regress.uuid(802) AND position = 0), 502, '');
UPDATE qes_sign.work_items SET due_at = now() WHERE request_id = regress.uuid(802) AND state = 'pending';
SELECT kind FROM regress.ycall(regress.uuid(802));
SELECT regress.yreply(regress.uuid(802), 'submit', 'lookup', 200,
    '{"meta": {"next_cursor": null}, "data": [{"id": "ys-802", "status": "draft", "external_id": "{{ID}}",
      "documents": [{"id": "doc-2", "nature": "signable_document"}], "signers": [{"id": "sg-1", "status": "initiated"}]}]}');
SELECT kind, path FROM regress.ycall(regress.uuid(802));
SELECT regress.yreply(regress.uuid(802), 'submit', 'signers', 200,
    '[{"id": "sg-1", "status": "initiated", "info": {"email": "Signer1@example.org"}}]');
SELECT kind, body #>> '{info,email}' AS email FROM regress.ycall(regress.uuid(802));
SELECT regress.yreply(regress.uuid(802), 'submit',
    (SELECT 'add_signer:' || id FROM qes_sign.signers WHERE request_id = regress.uuid(802) AND position = 1),
    201, '{"id": "sg-2", "status": "initiated"}');
-- the activation's answer is lost too: the lookup finds it ongoing, and
-- that ends the submit (no second activation)
SELECT kind FROM regress.ycall(regress.uuid(802));
SELECT regress.yreply(regress.uuid(802), 'submit', 'activate', 0, '');
UPDATE qes_sign.work_items SET due_at = now() WHERE request_id = regress.uuid(802) AND state = 'pending';
SELECT kind FROM regress.ycall(regress.uuid(802));
SELECT regress.yreply(regress.uuid(802), 'submit', 'lookup', 200,
    '{"meta": {"next_cursor": null}, "data": [' || regress.ysr(regress.uuid(802), 'ongoing', '{notified,initiated}') || ']}');
SELECT status, provider_id FROM qes_sign.signatur_anfragen WHERE id = regress.uuid(802);
SELECT kind, state FROM qes_sign.work_items WHERE request_id = regress.uuid(802) ORDER BY id;
SELECT event, detail - 'lookups' AS detail FROM qes_sign.timeline(regress.uuid(802)) WHERE event = 'create_recovered';

-- a lost create: not found while Yousign may still store it (http_timeout
-- after the loss): looked up again; two drafts found: the furthest is
-- continued, the other discarded (deleted at Yousign)
SELECT regress.yrequest(regress.uuid(803));
SELECT count(*) FROM regress.ycall(regress.uuid(803));
SELECT regress.yreply(regress.uuid(803), 'submit', 'create', 0, '');
UPDATE qes_sign.work_items SET due_at = now() WHERE request_id = regress.uuid(803) AND state = 'pending';
SELECT kind FROM regress.ycall(regress.uuid(803));
SELECT regress.yreply(regress.uuid(803), 'submit', 'lookup', 200, '{"meta": {"next_cursor": null}, "data": []}');
SELECT due_at > now() AS later, payload ? 'posted' AS still_posted FROM qes_sign.work_items
 WHERE request_id = regress.uuid(803) AND state = 'pending';
UPDATE qes_sign.work_items SET due_at = now() WHERE request_id = regress.uuid(803) AND state = 'pending';
SELECT kind FROM regress.ycall(regress.uuid(803));
SELECT regress.yreply(regress.uuid(803), 'submit', 'lookup', 200,
    '{"meta": {"next_cursor": null}, "data": [
      {"id": "ys-a", "status": "draft", "external_id": "{{ID}}", "documents": [], "signers": []},
      {"id": "ys-b", "status": "draft", "external_id": "{{ID}}", "documents": [{"id": "doc-b"}], "signers": []},
      {"id": "ys-c", "status": "draft", "external_id": "another-portal", "documents": [], "signers": []}]}');
SELECT kind, path FROM regress.ycall(regress.uuid(803)) ORDER BY kind;
SELECT kind, payload -> 'drafts' AS drafts FROM qes_sign.work_items
 WHERE request_id = regress.uuid(803) AND kind = 'discard';
-- found nothing once the window has passed: created again
SELECT regress.yrequest(regress.uuid(804));
SELECT count(*) FROM regress.ycall(regress.uuid(804));
SELECT regress.yreply(regress.uuid(804), 'submit', 'create', 503, '{"type": "about:blank", "detail": "unavailable"}');
UPDATE qes_sign.work_items SET due_at = now(), payload = payload || '{"posted": "2026-01-01T00:00:00Z", "lost": "2026-01-01T00:00:00Z"}'
 WHERE request_id = regress.uuid(804) AND state = 'pending';
SELECT kind FROM regress.ycall(regress.uuid(804));
SELECT regress.yreply(regress.uuid(804), 'submit', 'lookup', 200, '{"meta": {"next_cursor": null}, "data": []}');
SELECT kind, method, path FROM regress.ycall(regress.uuid(804));

-- 4. Yousign's status decides: ongoing stays offen until a signer got past
-- the invitation; done completes; declined, canceled, expired, deleted end
-- it with the reason; an unknown status is recorded, nothing else
SELECT regress.yactive(regress.uuid(811));
SELECT qes_sign._yousign_apply(regress.uuid(811), regress.ysr(regress.uuid(811), 'ongoing', '{notified,initiated}')::jsonb);
SELECT qes_sign._yousign_apply(regress.uuid(811), regress.ysr(regress.uuid(811), 'ongoing', '{verified,initiated}')::jsonb);
SELECT qes_sign._yousign_apply(regress.uuid(811), regress.ysr(regress.uuid(811), 'ongoing', '{signed,notified}')::jsonb);
SELECT qes_sign._yousign_apply(regress.uuid(811), regress.ysr(regress.uuid(811), 'done', '{signed,signed}',
    '{"completed_at": "2026-03-19T10:00:00+00:00"}')::jsonb);
SELECT email, status, signed_at IS NOT NULL AS signed FROM qes_sign.signers WHERE request_id = regress.uuid(811) ORDER BY position;
SELECT kind, state FROM qes_sign.work_items WHERE request_id = regress.uuid(811) AND state = 'pending';
SELECT regress.yactive(regress.uuid(812));
SELECT qes_sign._yousign_apply(regress.uuid(812), regress.ysr(regress.uuid(812), 'declined', '{signed,declined}',
    '{"decline_information": {"signer_id": "sg-2", "reason": "Miete zu hoch", "declined_at": "2026-03-19T10:00:00+00:00"}}')::jsonb);
SELECT status, cancel_reason FROM qes_sign.signatur_anfragen WHERE id = regress.uuid(812);
SELECT regress.yactive(regress.uuid(813));
SELECT qes_sign._yousign_apply(regress.uuid(813), regress.ysr(regress.uuid(813), 'expired', '{aborted,aborted}')::jsonb);
SELECT regress.yactive(regress.uuid(814));
SELECT qes_sign._yousign_apply(regress.uuid(814), regress.ysr(regress.uuid(814), 'deleted', '{notified,initiated}')::jsonb);
SELECT regress.yactive(regress.uuid(815));
SELECT qes_sign._yousign_apply(regress.uuid(815), regress.ysr(regress.uuid(815), 'paused', '{notified,initiated}')::jsonb);
SELECT qes_sign._yousign_apply(regress.uuid(815), regress.ysr(regress.uuid(815), 'frozen', '{hibernating,initiated}')::jsonb);
SELECT id, status, provider_status, cancel_reason FROM qes_sign.signatur_anfragen
 WHERE id IN (regress.uuid(813), regress.uuid(814), regress.uuid(815)) ORDER BY id;
SELECT event, detail FROM qes_sign.timeline(regress.uuid(815)) WHERE event LIKE 'unknown%';
-- a state of another request is refused, naming the field
SELECT regress.try($$SELECT qes_sign._yousign_apply(regress.uuid(815), regress.ysr(regress.uuid(815), 'ongoing', '{}',
    '{"external_id": "someone-else"}')::jsonb)$$);
SELECT regress.try($$SELECT qes_sign._yousign_apply(regress.uuid(815), '{"id": "ys-other", "status": "ongoing"}')$$);

-- 5. Refusals and retries: Yousign's validation of a signer ends the
-- request and discards its draft; 5xx and 404 of a refresh are retried;
-- a 429 pauses every Yousign call until Retry-After has passed
SELECT regress.yrequest(regress.uuid(821));
SELECT count(*) FROM regress.ycall(regress.uuid(821));
SELECT regress.yreply(regress.uuid(821), 'submit', 'create', 201, '{"id": "ys-821", "status": "draft", "external_id": "{{ID}}"}');
SELECT count(*) FROM regress.ycall(regress.uuid(821));
SELECT regress.yreply(regress.uuid(821), 'submit', 'upload', 201, '{"id": "doc-1", "total_pages": 1, "total_anchors": 0}');
SELECT count(*) FROM regress.ycall(regress.uuid(821));
SELECT regress.yreply(regress.uuid(821), 'submit',
    (SELECT 'add_signer:' || id FROM qes_sign.signers WHERE request_id = regress.uuid(821) AND position = 0), 400,
    '{"type": "validation.error", "detail": "Invalid request", "invalid_params": [{"name": "info.phone_number", "reason": "This value is not a valid E.164 phone number."}]}');
SELECT status, cancel_reason FROM qes_sign.signatur_anfragen WHERE id = regress.uuid(821);
SELECT kind, method, path FROM regress.ycall(regress.uuid(821));
SELECT regress.yreply(regress.uuid(821), 'discard', 'discard', 204, '');
SELECT event FROM qes_sign.timeline(regress.uuid(821)) WHERE event IN ('provider_error', 'draft_discarded');
SELECT regress.yactive(regress.uuid(822));
SELECT qes_sign.wake() FROM (SELECT qes_sign._enqueue(regress.uuid(822), 'refresh')) e;
SELECT kind, path FROM regress.ycall(regress.uuid(822));
SELECT regress.yreply(regress.uuid(822), 'refresh', 'get', 404, '{"type": "resource.not_found", "detail": "Not found"}');
SELECT state, failures, last_error FROM qes_sign.work_items WHERE request_id = regress.uuid(822) AND kind = 'refresh';
UPDATE qes_sign.work_items SET due_at = now() WHERE request_id = regress.uuid(822) AND state = 'pending';
SELECT count(*) FROM regress.ycall(regress.uuid(822));
SELECT regress.yreply(regress.uuid(822), 'refresh', 'get', 429, '{"message": "API rate limit exceeded"}', 30,
    E'HTTP/1.1 429 Too Many Requests\r\nRetry-After: 30\r\nX-RateLimit-Remaining-Minute: 0\r\n');
SELECT provider, until - now() > interval '25 seconds' AS paused, reason FROM qes_sign.provider_pauses;
UPDATE qes_sign.work_items SET due_at = now() WHERE request_id = regress.uuid(822) AND state = 'pending';
SELECT count(*) AS claimed_while_paused FROM regress.ycall(regress.uuid(822));
SELECT count(*) AS claimed_for_skribble FROM qes_sign._claim(10, '{skribble}');
DELETE FROM qes_sign.provider_pauses;
-- a window used up (remaining 0) pauses until it resets
SELECT count(*) FROM regress.ycall(regress.uuid(822));
SELECT regress.yreply(regress.uuid(822), 'refresh', 'get', 200, regress.ysr(regress.uuid(822), 'ongoing', '{notified,initiated}'),
    0, E'HTTP/1.1 200 OK\r\nX-RateLimit-Remaining-Minute: 0\r\nRateLimit-Reset: 42\r\n');
SELECT provider, round(extract(epoch FROM until - now())) AS seconds, reason FROM qes_sign.provider_pauses;
DELETE FROM qes_sign.provider_pauses;

-- 6. Actions: a reminder to each notified signer; withdraw cancels with
-- reason "other" and our text (at most 500 characters) as the note;
-- signer changes are refused once Yousign has the request
SELECT regress.yactive(regress.uuid(831));
SELECT qes_sign.remind(regress.uuid(831));
SELECT kind, method, path FROM regress.ycall(regress.uuid(831));
SELECT regress.yreply(regress.uuid(831), 'remind', 'remind:sg-1', 201, '');
SELECT count(*) AS more_calls FROM regress.ycall(regress.uuid(831));
SELECT event, detail FROM qes_sign.timeline(regress.uuid(831)) WHERE event LIKE 'remind%';
SELECT regress.try($$SELECT qes_sign.replace_signer(regress.uuid(831), 'signer1@example.org',
    '{"first_name": "Neu", "last_name": "Mann", "email": "neu@example.org", "mobile": "+4915122222222"}')$$);
SELECT qes_sign.withdraw(regress.uuid(831), 'Mieter zieht nicht ein ' || repeat('x', 600));
SELECT kind, path, body ->> 'reason' AS reason, length(body ->> 'custom_note') AS note FROM regress.ycall(regress.uuid(831));
SELECT regress.yreply(regress.uuid(831), 'withdraw', 'withdraw', 201, regress.ysr(regress.uuid(831), 'canceled', '{aborted,aborted}'));
SELECT status, left(cancel_reason, 40) AS reason FROM qes_sign.signatur_anfragen WHERE id = regress.uuid(831);
-- before any call a signer may still be replaced (the draft takes the new one)
SELECT regress.yrequest(regress.uuid(832));
SELECT regress.try($$SELECT qes_sign.replace_signer(regress.uuid(832), 'signer1@example.org',
    '{"first_name": "Neu", "last_name": "Mann", "email": "neu@example.org", "mobile": "+4915122222222"}')$$);

-- 7. Webhooks: X-Yousign-Signature-256 is "sha256=" and the hex HMAC of
-- the raw body with one of the secrets (rotation); a wrong or missing
-- signature is 28000 and stores nothing; an event_id seen is a duplicate;
-- the body only names the request: the worker fetches it
CREATE FUNCTION regress.yhook(body text, secret text DEFAULT 'regress-yousign-secret-0123456789', sig text DEFAULT NULL)
RETURNS text LANGUAGE sql AS $$
    SELECT regress.try(format('SELECT qes_sign.receive_webhook(%L, %L)',
        jsonb_build_object('Content-Type', 'application/json', 'X-Yousign-Signature-256',
                           coalesce(sig, 'sha256=' || encode(hmac(convert_to(body, 'UTF8'), convert_to(secret, 'UTF8'), 'sha256'), 'hex'))),
        convert_to(body, 'UTF8')))
$$;
SELECT regress.yactive(regress.uuid(841));
SELECT count(*) AS inbox_before FROM qes_sign.callback_inbox WHERE request_id = regress.uuid(841);
SELECT regress.yhook('{"event_id": "ev-1", "event_name": "signer.done", "data": {"signature_request": {"id": "ys-841", "status": "done"}}}',
                     sig => 'sha256=' || repeat('0', 64));
SELECT regress.yhook('{"event_id": "ev-1", "event_name": "signer.done", "data": {"signature_request": {"id": "ys-841", "status": "done"}}}',
                     'not-our-secret');
SELECT regress.yhook('{"event_id": "ev-1"}', sig => 'sha256=abc');
SELECT count(*) AS inbox_after_forgeries FROM qes_sign.callback_inbox WHERE request_id = regress.uuid(841);
SELECT regress.yhook('{"event_id": "ev-1", "event_name": "signer.done", "data": {"signature_request": {"id": "ys-841", "status": "done"}}}');
SELECT qes_sign.receive_webhook(jsonb_build_object('x-yousign-signature-256', 'sha256=' ||
           upper(encode(hmac(b, 'second-yousign-secret', 'sha256'), 'hex'))), b)
  FROM convert_to('{"event_id": "ev-1", "event_name": "signer.done", "data": {"signature_request": {"id": "ys-841"}}}', 'UTF8') b;
SELECT request_id = regress.uuid(841) AS ours, callback_type, source, signature_request_id FROM qes_sign.callback_inbox
 WHERE request_id = regress.uuid(841);
SELECT status FROM qes_sign.signatur_anfragen WHERE id = regress.uuid(841);
-- the fields under "metadata" (a third-party fixture set's shape) work too
SELECT regress.yhook('{"metadata": {"event_id": "ev-2", "event_name": "signature_request.done"}, "data": {"signature_request": {"id": "ys-841"}}}');
SELECT regress.yhook('not json at all');

-- 8. The worker claims per provider and target: with no provider ready
-- (no Skribble token, no Yousign key) a request whose provider objects are
-- fetched is still uploaded; one still fetching waits for its provider
SELECT regress.yactive(regress.uuid(851));
SELECT qes_sign._yousign_apply(regress.uuid(851), regress.ysr(regress.uuid(851), 'done', '{signed,signed}')::jsonb);
SELECT count(*) AS claimed_without_providers FROM qes_sign._claim(10, '{}') WHERE request_id = regress.uuid(851);
SELECT kind, path FROM regress.ycall(regress.uuid(851));
SELECT regress.yreply(regress.uuid(851), 'archive', 'fetch:signed_pdf', 200, '%PDF-1.7 signed %%EOF');
SELECT regress.yreply(regress.uuid(851), 'archive', 'fetch:protocol_pdf', 200, '%PDF-1.7 audit trail %%EOF');
SELECT regress.yreply(regress.uuid(851), 'archive', 'fetch:protocol_json', 200,
    '[{"id": "sg-1", "status": "signed", "info": {"email": "signer1@example.org"}}]');
-- (the four objects go up in parallel)
SELECT c.kind, c.target, c.method FROM qes_sign._claim(10, '{}') c WHERE c.request_id = regress.uuid(851) ORDER BY 1;
SELECT jsonb_object_keys(convert_from(content, 'UTF8')::jsonb) AS protocol_json_keys FROM qes_sign.archive_staging
 WHERE request_id = regress.uuid(851) AND kind = 'protocol_json' ORDER BY 1;

-- 9. A signer's time is Yousign's: when a refresh shows a signer's status
-- changed, its signers are read (signed_at) before anything is applied
SELECT regress.yactive(regress.uuid(861));
SELECT count(*) FROM (SELECT qes_sign._enqueue(regress.uuid(861), 'refresh')) e;
SELECT kind FROM regress.ycall(regress.uuid(861));
SELECT regress.yreply(regress.uuid(861), 'refresh', 'get', 200, regress.ysr(regress.uuid(861), 'ongoing', '{signed,notified}'));
SELECT status FROM qes_sign.signers WHERE request_id = regress.uuid(861) ORDER BY position;
SELECT kind, path FROM regress.ycall(regress.uuid(861));
SELECT regress.yreply(regress.uuid(861), 'refresh', 'get_signers', 200,
    '[{"id": "sg-1", "status": "signed", "signed_at": "2026-03-19T09:34:27+00:00", "info": {"email": "signer1@example.org"}},
      {"id": "sg-2", "status": "notified", "signed_at": null, "info": {"email": "signer2@example.org"}}]');
SELECT email, status, signed_at FROM qes_sign.signers WHERE request_id = regress.uuid(861) ORDER BY position;
SELECT a.status, w.state FROM qes_sign.signatur_anfragen a JOIN qes_sign.work_items w ON w.request_id = a.id
 WHERE a.id = regress.uuid(861) AND w.kind = 'refresh';

-- 10. Found activated, but the answers that named its signers were lost (a
-- failover): its signers are read and matched by address before it is applied
SELECT regress.yrequest(regress.uuid(871));
SELECT count(*) FROM regress.ycall(regress.uuid(871));
SELECT regress.yreply(regress.uuid(871), 'submit', 'create', 0, '');
UPDATE qes_sign.work_items SET due_at = now() WHERE request_id = regress.uuid(871) AND state = 'pending';
SELECT kind FROM regress.ycall(regress.uuid(871));
SELECT regress.yreply(regress.uuid(871), 'submit', 'lookup', 200,
    '{"meta": {"next_cursor": null}, "data": [' || regress.ysr(regress.uuid(871), 'ongoing', '{notified,initiated}') || ']}');
SELECT kind, path FROM regress.ycall(regress.uuid(871));
SELECT regress.yreply(regress.uuid(871), 'submit', 'signers', 200,
    '[{"id": "sg-1", "status": "notified", "info": {"email": "signer1@example.org"}},
      {"id": "sg-2", "status": "initiated", "info": {"email": "signer2@example.org"}}]');
SELECT a.status, a.provider_id, w.state FROM qes_sign.signatur_anfragen a JOIN qes_sign.work_items w ON w.request_id = a.id
 WHERE a.id = regress.uuid(871) AND w.kind = 'submit';
SELECT email, status, provider_signer_id FROM qes_sign.signers WHERE request_id = regress.uuid(871) ORDER BY position;
