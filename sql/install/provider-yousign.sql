/* provider-yousign.sql: Yousign (API v3) behind the provider boundary, from
 * reference/yousign-v3/README.md (cited as there: [OAS] Yousign's OpenAPI
 * file, D/x and R/x its developer pages).  The call each work item needs
 * (_yousign_call_for, _yousign_fetch), what the answers mean
 * (_yousign_answer, _yousign_failure, _yousign_apply), the checks of
 * create_request (_yousign_check) and webhooks (_yousign_webhook).  The API
 * key and the webhook HMAC are C (src/yousign.c).  Every statement can run
 * again (CREATE OR REPLACE), so a later upgrade script includes this file.
 *
 * Create, exactly once: Yousign needs four steps (draft, upload, a signer
 * each, activate) and has no idempotency key [R/errors-1].  The submit work
 * item keeps each step's result in its payload (draft, document, signers);
 * any answer lost on the way makes the next call a lookup by
 * external_id[eq] (our uuid) [OAS], which continues from the step the
 * draft reached, takes an activated request as it is, and discards any
 * second draft.  Only a lookup that finds nothing after
 * qes_sign.http_timeout creates again.  A step in flight is marked
 * ("sent") until its answer is recorded: a worker that died meanwhile
 * leaves the mark, and the step is looked up, not sent again.
 */

-------------------------------------------------------------------------------
-- Calls
-------------------------------------------------------------------------------

-- _yousign_call is a call to the Yousign API (path below qes_sign.yousign_url)
CREATE OR REPLACE FUNCTION _yousign_call(w work_items, kind text, method text, path text,
                                         body jsonb DEFAULT NULL, form text[] DEFAULT NULL,
                                         data bytea DEFAULT NULL, headers text[] DEFAULT NULL) RETURNS api_call
LANGUAGE sql IMMUTABLE AS $$
    SELECT ROW(w.id, w.request_id, kind, 'yousign', method, path, body::text, data, headers, form)::qes_sign.api_call
$$;

-- _yousign_sr: the path of a request (its activated id, else the draft's)
CREATE OR REPLACE FUNCTION _yousign_sr(w work_items, r signatur_anfragen) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT '/signature_requests/' || qes_sign._url_escape(coalesce(r.provider_id, w.payload ->> 'draft', ''))
$$;

-- _yousign_level: the signature level of a request's quality [OAS]
CREATE OR REPLACE FUNCTION _yousign_level(quality text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE quality WHEN 'QES' THEN 'qualified_electronic_signature'
                        WHEN 'SES' THEN 'electronic_signature'
                        ELSE 'advanced_electronic_signature' END
$$;

-- _yousign_create_body: the draft.  QES needs ordered signers "even with one
-- signer" [D/qes-capabilities-and-limitations]; the deadline is our expiry,
-- at most a year ahead [OAS]; external_id is our uuid (matches
-- ^[\w\-@.%+]+$) and makes a lost answer recoverable
CREATE OR REPLACE FUNCTION _yousign_create_body(r signatur_anfragen) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'name', left(r.title, 128), 'delivery_mode', 'email',
        'ordered_signers', r.ordered OR r.quality = 'QES', 'timezone', 'Europe/Berlin',
        'expiration_date', to_char(least((r.expires_at AT TIME ZONE 'Europe/Berlin')::date,
                                         (qes_sign.clock() AT TIME ZONE 'Europe/Berlin')::date + 365), 'YYYY-MM-DD'),
        'external_id', r.id::text, 'signers_allowed_to_decline', true)
$$;

-- _yousign_field: the default signature field of the k-th signer (from 0):
-- the request type's placement (vorgangstypen.signature_field) on a
-- document of that many pages [OAS: page >= 1, x, y 0-32767, width
-- 85-2000, height 37-1000]
CREATE OR REPLACE FUNCTION _yousign_field(r signatur_anfragen, document_id text, pages int, k int) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'document_id', document_id, 'type', 'signature',
        'page', CASE WHEN f ->> 'page' = 'last' THEN greatest(pages, 1)
                     ELSE least(greatest((f ->> 'page')::int, 1), greatest(pages, 1)) END,
        'x', least((f ->> 'x')::int + (k % (f ->> 'columns')::int) * (f ->> 'dx')::int, 32767),
        'y', least((f ->> 'y')::int + (k / (f ->> 'columns')::int) * (f ->> 'dy')::int, 32767),
        'width', (f ->> 'width')::int, 'height', (f ->> 'height')::int)
      FROM (SELECT t.signature_field AS f FROM qes_sign.vorgangstypen t WHERE t.vorgangstyp = r.vorgangstyp) t
$$;

-- _yousign_anchored: the PDF carries a Smart Anchor for the k-th signer
-- ({{s<k+1>|signature|...}} [D/document-1]); Yousign made the field.  When
-- Yousign counted anchors that our scan cannot see (compressed streams),
-- they are taken to cover every signer.
CREATE OR REPLACE FUNCTION _yousign_anchored(r signatur_anfragen, anchors int, k int) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT anchors > 0 AND (position(convert_to('{{s' || (k + 1) || '|signature', 'UTF8') IN r.document) > 0
                            OR position(convert_to('{{s', 'UTF8') IN r.document) = 0)
$$;

-- _yousign_signer_body: one signer at the request's level with a field
-- (unless anchored); a QES signer gets no authentication mode
-- [D/specificities-of-the-qes-level]; the phone in E.164 [OAS]
CREATE OR REPLACE FUNCTION _yousign_signer_body(r signatur_anfragen, s signers, p jsonb, k int) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_strip_nulls(jsonb_build_object(
        'info', jsonb_build_object('first_name', s.first_name, 'last_name', s.last_name, 'email', s.email,
                                   'phone_number', '+' || s.mobile, 'locale', coalesce(s.language, 'de')),
        'signature_level', qes_sign._yousign_level(r.quality),
        'signature_authentication_mode', CASE WHEN r.quality <> 'QES' THEN 'otp_email' END,
        'fields', CASE WHEN NOT qes_sign._yousign_anchored(r, coalesce((p ->> 'anchors')::int, 0), k)
                       THEN jsonb_build_array(qes_sign._yousign_field(r, p ->> 'document',
                                                                      coalesce((p ->> 'pages')::int, 1), k)) END))
$$;

-- _yousign_next_signer: the next signer the draft lacks, in signing order
CREATE OR REPLACE FUNCTION _yousign_next_signer(r signatur_anfragen, p jsonb, OUT s signers, OUT k int)
LANGUAGE sql STABLE AS $$
    SELECT x, (n - 1)::int FROM (
        SELECT x, row_number() OVER (ORDER BY x.sequence NULLS LAST, x.position) AS n
          FROM qes_sign.signers x WHERE x.request_id = r.id AND x.status <> 'replaced') o
     WHERE NOT coalesce(p -> 'signers', '{}') ? (o.x).id::text
     ORDER BY n LIMIT 1
$$;

-- _yousign_submit: the next step of creating a request
CREATE OR REPLACE FUNCTION _yousign_submit(w work_items, r signatur_anfragen) RETURNS api_call
LANGUAGE plpgsql AS $$
DECLARE
    p jsonb := w.payload;
    sr text := _yousign_sr(w, r);
    nxt record;
BEGIN
    IF NOT p ? 'lookup' AND (p ? 'sent' OR p ? 'posted' AND NOT p ? 'draft') THEN
        -- a step was sent and its answer never recorded (the worker died,
        -- its lease ran out, or this server was promoted): it may have
        -- happened, so look before doing it again
        UPDATE work_items SET payload = payload - 'sent' || jsonb_build_object('lookup', true, 'lost', clock(),
                                                                            'lost_step', coalesce(p ->> 'sent', 'create'))
         WHERE id = w.id;
        p := p - 'sent' || '{"lookup": true}';
    END IF;
    IF p ? 'lookup' THEN
        RETURN _yousign_call(w, 'lookup', 'GET', '/signature_requests?external_id%5Beq%5D=' || r.id);
    ELSIF p ? 'list_signers' THEN
        RETURN _yousign_call(w, 'signers', 'GET', sr || '/signers');
    ELSIF NOT p ? 'draft' THEN
        UPDATE work_items SET payload = payload || jsonb_build_object('posted', clock(), 'sent', 'create') WHERE id = w.id;
        RETURN _yousign_call(w, 'create', 'POST', '/signature_requests', _yousign_create_body(r));
    ELSIF NOT p ? 'document' THEN
        -- multipart with the PDF as it was handed in [D/document-1]
        UPDATE work_items SET payload = payload || '{"sent": "upload"}' WHERE id = w.id;
        RETURN _yousign_call(w, 'upload', 'POST', sr || '/documents', NULL,
            ARRAY['file@' || r.id || '.pdf', 'nature=signable_document', 'parse_anchors=true'], r.document);
    ELSIF NOT p ? 'pages' THEN
        RETURN _yousign_call(w, 'document', 'GET', sr || '/documents/' || _url_escape(p ->> 'document'));
    END IF;
    SELECT * INTO nxt FROM _yousign_next_signer(r, p);
    IF (nxt.s).id IS NOT NULL THEN
        UPDATE work_items SET payload = payload || '{"sent": "add_signer"}' WHERE id = w.id;
        RETURN _yousign_call(w, 'add_signer:' || (nxt.s).id, 'POST', sr || '/signers',
                             _yousign_signer_body(r, nxt.s, p, nxt.k));
    END IF;
    UPDATE work_items SET payload = payload || '{"sent": "activate"}' WHERE id = w.id;
    RETURN _yousign_call(w, 'activate', 'POST', sr || '/activate', '{}');
END
$$;

-- _yousign_call_for: the call a work item about a Yousign request needs
CREATE OR REPLACE FUNCTION _yousign_call_for(w work_items, r signatur_anfragen) RETURNS api_call
LANGUAGE plpgsql AS $$
DECLARE
    sr text := _yousign_sr(w, r);
    sid text;
BEGIN
    CASE w.kind
    WHEN 'submit' THEN
        RETURN _yousign_submit(w, r);
    WHEN 'refresh' THEN
        IF w.payload ? 'sr' AND EXISTS (SELECT FROM callback_inbox c WHERE c.request_id = r.id
                                          AND c.processed_at >= (w.payload ->> 'sr_at')::timestamptz) THEN
            -- a callback came after the request was read (this item was not
            -- in flight then, so nothing marked it "again"): read it again
            UPDATE work_items SET payload = payload - 'sr' - 'sr_at' - 'again_after' WHERE id = w.id;
        ELSIF w.payload ? 'sr' THEN
            RETURN _yousign_call(w, 'get_signers', 'GET', sr || '/signers');
        END IF;
        RETURN _yousign_call(w, 'get', 'GET', sr);
    WHEN 'remind' THEN
        -- send_reminder only reaches a notified signer [OAS]; one call each
        SELECT s.provider_signer_id INTO sid FROM signers s
         WHERE s.request_id = r.id AND s.provider_status = 'notified' AND s.provider_signer_id IS NOT NULL
           AND NOT coalesce(w.payload -> 'reminded', '[]') ? s.provider_signer_id
         ORDER BY s.position LIMIT 1;
        IF sid IS NOT NULL THEN
            RETURN _yousign_call(w, 'remind:' || sid, 'POST', sr || '/signers/' || _url_escape(sid) || '/send_reminder');
        END IF;
        PERFORM _emit(r.id, CASE WHEN jsonb_array_length(coalesce(w.payload -> 'reminded', '[]')) > 0
                                 THEN 'reminded' ELSE 'remind_failed' END,
                      jsonb_strip_nulls(jsonb_build_object('auto', w.payload -> 'auto',
                          'signers', jsonb_array_length(coalesce(w.payload -> 'reminded', '[]')),
                          'reason', CASE WHEN NOT w.payload ? 'reminded' THEN 'no signer is waiting for the invitation' END)));
        PERFORM _finish(w.id, 'done');
        RETURN NULL;
    WHEN 'withdraw', 'expire' THEN
        RETURN _yousign_call(w, 'withdraw', 'POST', sr || '/cancel', jsonb_build_object('reason', 'other',
                   'custom_note', left(CASE w.kind WHEN 'expire' THEN 'expired'
                                                   ELSE coalesce(w.payload ->> 'reason', 'withdrawn') END, 500)));
    WHEN 'replace_signer' THEN
        -- allowed only before the first call (_yousign_replace_check): the
        -- draft is created with the signers as they are then
        PERFORM _finish(w.id, 'done');
        RETURN NULL;
    WHEN 'discard' THEN
        RETURN _yousign_call(w, 'discard', 'DELETE',
                             '/signature_requests/' || _url_escape(w.payload #>> '{drafts,0}') || '?permanent_delete=true');
    END CASE;
END
$$;

-- _yousign_fetch: the completed document [OAS documents/download], the
-- audit trail merged into one PDF [OAS audit_trails/download], and the
-- signers (joined with the request by _yousign_object)
CREATE OR REPLACE FUNCTION _yousign_fetch(w work_items, r signatur_anfragen, obj text) RETURNS api_call
LANGUAGE sql STABLE AS $$
    SELECT CASE obj
        WHEN 'signed_pdf' THEN qes_sign._yousign_call(w, 'fetch:signed_pdf', 'GET',
            qes_sign._yousign_sr(w, r) || '/documents/download?version=completed', headers => '{"Accept: application/pdf"}')
        WHEN 'protocol_pdf' THEN qes_sign._yousign_call(w, 'fetch:protocol_pdf', 'GET',
            qes_sign._yousign_sr(w, r) || '/audit_trails/download?merge=true', headers => '{"Accept: application/pdf"}')
        ELSE qes_sign._yousign_call(w, 'fetch:protocol_json', 'GET', qes_sign._yousign_sr(w, r) || '/signers')
    END
$$;

-- _yousign_object: protocol.json is Yousign's request as last applied and
-- its signers, as Yousign gave them
CREATE OR REPLACE FUNCTION _yousign_object(r signatur_anfragen, obj text, body bytea) RETURNS bytea
LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF obj <> 'protocol_json' OR NOT _is_json(body) THEN
        RETURN body;
    END IF;
    RETURN convert_to(jsonb_pretty(jsonb_build_object('format', 'qes_sign-yousign-v1',
        'signature_request', r.provider_state, 'signers', convert_from(body, 'UTF8')::jsonb)), 'UTF8');
END
$$;

-------------------------------------------------------------------------------
-- Answers
-------------------------------------------------------------------------------

-- _yousign_message: an error body [R/errors-1]: {"type", "detail",
-- "invalid_params": [{"name", "reason"}]}, or {"message"} (405, 429)
CREATE OR REPLACE FUNCTION _yousign_message(body bytea, http_status int, OUT message text, OUT key text)
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    t text;
    j jsonb;
BEGIN
    BEGIN
        t := convert_from(body, 'UTF8');
        j := t::jsonb;
        message := concat_ws('; ', coalesce(j ->> 'detail', j ->> 'message'),
            (SELECT string_agg(concat(p ->> 'name', ': ', p ->> 'reason'), '; ')
               FROM jsonb_array_elements(CASE jsonb_typeof(j -> 'invalid_params') WHEN 'array'
                                              THEN j -> 'invalid_params' ELSE '[]' END) p));
        key := _cut(j ->> 'type', 200);
    EXCEPTION WHEN OTHERS THEN
        message := btrim(t);
    END;
    message := coalesce(nullif(_cut(message, 2000), ''), 'HTTP ' || http_status);
END
$$;

-- _yousign_step: the submit's payload after an answer (draft, document,
-- pages, the signers added), and on to the next step at once
CREATE OR REPLACE FUNCTION _yousign_step(w work_items, p jsonb) RETURNS text
LANGUAGE sql AS $$
    SELECT qes_sign._again(w.id, '0', p)
$$;

CREATE OR REPLACE FUNCTION _yousign_answer(w work_items, call_kind text, answer jsonb) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    step text := split_part(call_kind, ':', 1);
    arg text := split_part(call_kind, ':', 2);
BEGIN
    IF w.kind = 'submit' AND w.payload ? 'sent' THEN
        UPDATE work_items SET payload = payload - 'sent' WHERE id = w.id;   -- answered
    END IF;
    CASE step
    WHEN 'create' THEN
        IF answer ->> 'external_id' IS DISTINCT FROM w.request_id::text THEN
            PERFORM _invalid('answer.external_id', 'names another request');
        END IF;
        RETURN _yousign_step(w, jsonb_build_object('draft', answer ->> 'id'));
    WHEN 'upload', 'document' THEN
        RETURN _yousign_step(w, jsonb_build_object('document', answer ->> 'id',
            'pages', coalesce((answer ->> 'total_pages')::int, 1), 'anchors', coalesce((answer ->> 'total_anchors')::int, 0)));
    WHEN 'add_signer' THEN
        UPDATE signers SET provider_signer_id = answer ->> 'id', provider_status = answer ->> 'status'
         WHERE id = arg::bigint;
        RETURN _yousign_step(w, jsonb_build_object('signers',
            coalesce(w.payload -> 'signers', '{}') || jsonb_build_object(arg, answer ->> 'id')));
    WHEN 'signers' THEN
        RETURN _yousign_signers_found(w, answer);
    WHEN 'lookup' THEN
        RETURN _yousign_lookup(w, answer);
    WHEN 'get' THEN
        -- a signer's time is only in its own object: read the signers
        -- when one changed, then apply both
        IF _yousign_signers_changed(w.request_id, answer) THEN
            -- (_again drops "again": a callback that came during this GET
            -- must still make the refresh run once more after the signers)
            RETURN _again(w.id, '0', jsonb_build_object('sr', answer, 'sr_at', clock())
                                     || CASE WHEN w.payload ? 'again' THEN '{"again_after": true}'::jsonb ELSE '{}' END);
        END IF;
        PERFORM _yousign_apply(w.request_id, answer);
        UPDATE signatur_anfragen SET synced_at = clock() WHERE id = w.request_id;
        IF w.payload ? 'again' THEN
            RETURN _again(w.id, '0');
        END IF;
    WHEN 'get_signers' THEN
        PERFORM _yousign_apply(w.request_id, jsonb_set(w.payload -> 'sr', '{signers}',
            CASE jsonb_typeof(answer) WHEN 'array' THEN answer ELSE w.payload #> '{sr,signers}' END));
        UPDATE signatur_anfragen SET synced_at = clock() WHERE id = w.request_id;
        UPDATE work_items SET payload = payload - 'sr' - 'sr_at' - 'again_after' WHERE id = w.id;
        IF w.payload ? 'again' OR w.payload ? 'again_after' THEN
            RETURN _again(w.id, '0');
        END IF;
    WHEN 'activate', 'withdraw' THEN
        PERFORM _yousign_apply(w.request_id, answer);
        UPDATE signatur_anfragen SET synced_at = clock() WHERE id = w.request_id;
        IF w.payload ? 'again' THEN
            RETURN _again(w.id, '0');
        END IF;
    WHEN 'remind' THEN
        RETURN _again(w.id, '0', jsonb_build_object('reminded', coalesce(w.payload -> 'reminded', '[]') || to_jsonb(arg)));
    WHEN 'discard' THEN
        PERFORM _emit(w.request_id, 'draft_discarded', jsonb_build_object('draft', w.payload #> '{drafts,0}'));
        IF jsonb_array_length(w.payload -> 'drafts') > 1 THEN
            RETURN _again(w.id, '0', jsonb_build_object('drafts', (w.payload -> 'drafts') - 0));
        END IF;
    END CASE;
    RETURN _finish(w.id, 'done');
END
$$;

-- _yousign_signers_changed: a signer's status in the request differs from
-- ours (its details, such as signed_at, are worth reading)
CREATE OR REPLACE FUNCTION _yousign_signers_changed(p_request uuid, sr jsonb) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT FROM jsonb_array_elements(CASE jsonb_typeof(sr -> 'signers') WHEN 'array'
                                                        THEN sr -> 'signers' ELSE '[]' END) x
                     JOIN qes_sign.signers s ON s.request_id = p_request AND s.provider_signer_id = x ->> 'id'
                    WHERE s.provider_status IS DISTINCT FROM x ->> 'status' AND s.status <> 'replaced')
$$;

-- _yousign_signers_found: the signers of a recovered draft, matched to ours
-- by address, so that the next signer added is one it lacks
CREATE OR REPLACE FUNCTION _yousign_signers_found(w work_items, answer jsonb) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    found jsonb := '{}';
    x jsonb;
    sid bigint;
BEGIN
    FOR x IN SELECT * FROM jsonb_array_elements(CASE jsonb_typeof(answer) WHEN 'array' THEN answer ELSE '[]' END) LOOP
        UPDATE signers s SET provider_signer_id = x ->> 'id', provider_status = x ->> 'status'
         WHERE s.request_id = w.request_id AND s.status <> 'replaced' AND lower(s.email) = lower(x #>> '{info,email}')
        RETURNING s.id INTO sid;
        IF sid IS NOT NULL THEN
            found := found || jsonb_build_object(sid::text, x ->> 'id');
        END IF;
    END LOOP;
    UPDATE work_items SET payload = payload - 'list_signers' - 'lookup' WHERE id = w.id;
    IF w.payload ? 'activated' THEN
        PERFORM _emit(w.request_id, 'create_recovered', jsonb_build_object(
            'provider_id', w.payload #>> '{activated,id}', 'step', 'activated'));
        PERFORM _yousign_apply(w.request_id, w.payload -> 'activated');
        RETURN _finish(w.id, 'done');
    END IF;
    RETURN _yousign_step(w, jsonb_build_object('signers', found));
END
$$;

-- _yousign_lookup: the requests Yousign has under our external_id, after a
-- lost answer.  An activated one is ours: applied, the submit is done.  A
-- draft is continued from the step it reached; any other draft is
-- discarded.  None: looked up again while Yousign may still store the
-- create (_search_from), then created again.
CREATE OR REPLACE FUNCTION _yousign_lookup(w work_items, answer jsonb) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    mine jsonb := coalesce((SELECT jsonb_agg(x ORDER BY x ->> 'status' = 'draft', jsonb_array_length(coalesce(x -> 'signers', '[]')) DESC,
                                                  jsonb_array_length(coalesce(x -> 'documents', '[]')) DESC, x ->> 'created_at')
                              FROM jsonb_array_elements(CASE jsonb_typeof(answer -> 'data') WHEN 'array'
                                                             THEN answer -> 'data' ELSE '[]' END) x
                             WHERE x ->> 'external_id' = w.request_id::text AND x ->> 'status' <> 'deleted'), '[]');
    best jsonb := mine -> 0;
    lookups int := coalesce((w.payload ->> 'lookups')::int, 0) + 1;
    -- the draft's shape (id, documents, signers): found in the shape it
    -- had when last continued, the way on failed without progress (stuck)
    shape text := concat_ws('/', best ->> 'id', jsonb_array_length(coalesce(best -> 'documents', '[]')),
                            jsonb_array_length(coalesce(best -> 'signers', '[]')));
    stuck int := CASE WHEN w.payload ->> 'shape' = shape THEN coalesce((w.payload ->> 'stuck')::int, 0) + 1 ELSE 0 END;
    -- the draft shows what the step whose answer never came did (a step
    -- sent before the worker died, or timed out, may land later)
    seen boolean := CASE w.payload ->> 'lost_step'
        WHEN 'upload' THEN jsonb_array_length(coalesce(best -> 'documents', '[]')) > 0
        WHEN 'add_signer' THEN jsonb_array_length(coalesce(best -> 'signers', '[]'))
                               > (SELECT count(*) FROM jsonb_object_keys(coalesce(w.payload -> 'signers', '{}')))
        WHEN 'activate' THEN false
        WHEN 'unknown' THEN false       -- a step may be on its way (_yousign_moved)
        ELSE true END;
    until timestamptz := _search_from(w.payload);
BEGIN
    IF jsonb_array_length(mine) > 1 THEN
        PERFORM _yousign_discard(w.request_id, (SELECT jsonb_agg(x -> 'id') FROM jsonb_array_elements(mine) x
                                                  WHERE x ->> 'status' = 'draft' AND x ->> 'id' <> best ->> 'id'));
    END IF;
    IF best IS NOT NULL AND best ->> 'status' <> 'draft' AND EXISTS (
           SELECT FROM signers s WHERE s.request_id = w.request_id AND s.status <> 'replaced'
              AND s.provider_signer_id IS NULL) THEN
        -- activated, but the answers naming its signers were lost (a crash,
        -- a failover): read its signers first, then apply it
        UPDATE work_items SET payload = payload - 'lookup' - 'lost' - 'lost_step' WHERE id = w.id;
        RETURN _again(w.id, '0', jsonb_build_object('draft', best ->> 'id', 'list_signers', true,
                                                    'activated', best, 'lookups', lookups));
    ELSIF best IS NOT NULL AND best ->> 'status' <> 'draft' THEN
        PERFORM _emit(w.request_id, 'create_recovered', jsonb_build_object('provider_id', best ->> 'id',
                                                                           'step', 'activated', 'lookups', lookups));
        PERFORM _yousign_apply(w.request_id, best);
        RETURN _finish(w.id, 'done');
    ELSIF best IS NOT NULL AND NOT seen AND clock() < until THEN
        -- not (yet) there: looked up again while Yousign may still do it
        RETURN _again(w.id, least(make_interval(secs => power(2, least(lookups - 1, 10))), until - clock()),
                      jsonb_build_object('lookups', lookups));
    ELSIF best IS NOT NULL AND stuck >= current_setting('qes_sign.retry_max_attempts')::int THEN
        -- continued again and again and never activated (Yousign refuses
        -- the draft as it is, e.g. with a second document): given up
        -- visibly, not looped forever
        RETURN _give_up(w, 'lookup', format('draft %s found %s times as it was and still not activated',
                                             best ->> 'id', stuck + 1));
    ELSIF best IS NOT NULL THEN
        PERFORM _emit(w.request_id, 'create_recovered', jsonb_strip_nulls(jsonb_build_object(
            'provider_id', best ->> 'id', 'step', 'draft', 'lookups', lookups,
            'documents', jsonb_array_length(coalesce(best -> 'documents', '[]')),
            'signers', jsonb_array_length(coalesce(best -> 'signers', '[]')))));
        -- (the pages of a document already read stay known)
        UPDATE work_items SET payload = payload - 'lookup' - 'lost' - 'lost_step' - 'signers'
                                        - CASE WHEN payload ->> 'document' IS DISTINCT FROM best #>> '{documents,0,id}'
                                               THEN ARRAY['document', 'pages', 'anchors'] ELSE '{}' END
         WHERE id = w.id;
        -- continued at once, unless it is stuck: then with backoff (each
        -- lookup is an intermediate success and resets the failures)
        RETURN _again(w.id, CASE WHEN stuck > 0 THEN _backoff(stuck) ELSE '0' END,
            jsonb_strip_nulls(jsonb_build_object('draft', best ->> 'id', 'lookups', lookups,
                'shape', shape, 'stuck', stuck,
                'document', best #>> '{documents,0,id}',
                'list_signers', CASE WHEN jsonb_array_length(coalesce(best -> 'signers', '[]')) > 0 THEN true END)));
    ELSIF clock() < until THEN
        RETURN _again(w.id, least(make_interval(secs => power(2, least(lookups - 1, 10))), until - clock()),
                      jsonb_build_object('lookups', lookups));
    END IF;
    -- not created: create it (again)
    UPDATE work_items SET payload = payload - 'lookup' - 'lost' - 'lost_step' - 'posted' - 'draft' - 'document'
                                    - 'pages' - 'anchors' - 'signers' - 'list_signers'
     WHERE id = w.id;
    RETURN _yousign_step(w, jsonb_build_object('lookups', lookups));
END
$$;

-- _yousign_discard: drafts nobody will continue are deleted at Yousign
CREATE OR REPLACE FUNCTION _yousign_discard(p_request uuid, drafts jsonb) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO qes_sign.work_items AS x (request_id, kind, payload)
    SELECT p_request, 'discard', jsonb_build_object('drafts', drafts) WHERE jsonb_array_length(drafts) > 0
    ON CONFLICT (request_id, kind) WHERE state = 'pending' AND kind <> 'replace_signer'
    DO UPDATE SET payload = jsonb_build_object('drafts', (x.payload -> 'drafts') || excluded.payload -> 'drafts')
$$;

-- _yousign_final_answer: an answer that retrying cannot change.  Only
-- Yousign's validation of a create step ends the request (the input is
-- wrong: 400 on the draft, the upload or a signer); a cancel or reminder
-- it refuses ends that call.  401, 403 (an account setting, e.g. the QES
-- add-on), 404, 429, 5xx and a 400 on activate (maybe activated already:
-- looked up) are retried and given up visibly.
CREATE OR REPLACE FUNCTION _yousign_final_answer(call_kind text, http_status int) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT http_status IN (400, 415) AND split_part(call_kind, ':', 1) IN ('create', 'upload', 'add_signer')
        OR http_status = 400 AND split_part(call_kind, ':', 1) IN ('withdraw', 'remind')
$$;

CREATE OR REPLACE FUNCTION _yousign_failure(w work_items, call_kind text, http_status int, body bytea,
                                            retry_after int, transport_error text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    m record := _yousign_message(body, http_status);
    step text := split_part(call_kind, ':', 1);
    failure text := coalesce(transport_error, format('HTTP %s: %s', http_status, m.message));
BEGIN
    IF w.kind = 'submit' AND w.payload ? 'sent' THEN
        -- answered; a create refused with a 4xx was not stored
        UPDATE work_items SET payload = payload - CASE WHEN step = 'create' AND transport_error IS NULL
                                                            AND http_status BETWEEN 400 AND 499
                                                       THEN ARRAY['sent', 'posted'] ELSE ARRAY['sent'] END
         WHERE id = w.id;
    END IF;
    IF step = 'get_signers' THEN
        -- the state read before may be old by the time of the retry: start
        -- again with the request itself
        UPDATE work_items SET payload = payload - 'sr' - 'sr_at' - 'again_after' WHERE id = w.id;
    END IF;
    IF transport_error IS NULL AND step = 'discard' AND http_status = 404 THEN
        RETURN _yousign_answer(w, call_kind, NULL);            -- gone already
    ELSIF transport_error IS NULL AND _yousign_final_answer(call_kind, http_status) THEN
        RETURN _yousign_refused(w, step, call_kind, http_status, m.message, m.key);
    ELSIF w.kind = 'submit' AND (step = 'activate' OR step IN ('create', 'upload', 'add_signer')
                                 AND (transport_error IS NOT NULL OR http_status >= 500)) THEN
        -- the step may have happened: look the request up before anything
        -- else (with no answer at all, it may even happen later: lost_step)
        UPDATE work_items SET payload = payload || jsonb_build_object('lookup', true, 'lost', clock(),
                   'lost_step', CASE WHEN transport_error IS NOT NULL THEN step END)
         WHERE id = w.id;
    END IF;
    RETURN _retry(w, failure, call_kind, http_status, retry_after);
END
$$;

-- _yousign_refused: Yousign refused a create step, a cancel or a reminder
CREATE OR REPLACE FUNCTION _yousign_refused(w work_items, step text, call_kind text, http_status int,
                                            message text, key text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    detail jsonb := jsonb_strip_nulls(jsonb_build_object('http_status', http_status, 'message', message,
                                                         'key', key, 'call', call_kind));
BEGIN
    CASE step
    WHEN 'remind' THEN      -- this signer is not waiting any more: the next one
        RETURN _again(w.id, '0', jsonb_build_object('reminded',
            coalesce(w.payload -> 'reminded', '[]') || to_jsonb(split_part(call_kind, ':', 2))));
    ELSE                    -- a cancel, or a create step
        PERFORM _finish(w.id, 'failed', format('HTTP %s: %s', http_status, message));
        PERFORM _refused_for_good(w, 'yousign', step = 'withdraw', http_status, message,
                                  detail || CASE WHEN step <> 'withdraw' THEN '{"provider": "yousign"}'::jsonb
                                              ELSE '{}' END, 'provider_error');
        IF step <> 'withdraw' AND w.payload ? 'draft' THEN
            PERFORM _yousign_discard(w.request_id, jsonb_build_array(w.payload -> 'draft'));
        END IF;
    END CASE;
    RETURN 'failed';
END
$$;

-- _yousign_limits: Yousign's rate limits (60/min and 1,200/h in
-- production [D/limits-new]): a 429, or a window with nothing left
-- (x-ratelimit-remaining-*), pauses every Yousign call until it resets
-- (Retry-After, RateLimit-Reset [OAS components/headers])
CREATE OR REPLACE FUNCTION _yousign_limits(http_status int, retry_after int, headers text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    wait int;
BEGIN
    IF http_status = 429 THEN
        wait := greatest(coalesce(nullif(retry_after, 0), 60), 1);
    ELSIF _header(headers, 'x-ratelimit-remaining-minute') = '0' OR _header(headers, 'x-ratelimit-remaining-hour') = '0'
          OR _header(headers, 'ratelimit-remaining') = '0' THEN
        wait := least(greatest(coalesce(substring(_header(headers, 'ratelimit-reset') FROM '^[0-9]{1,6}$')::int, 60), 1), 3600);
    ELSE
        RETURN;
    END IF;
    INSERT INTO provider_pauses AS x (provider, until, reason)
    VALUES ('yousign', clock() + make_interval(secs => wait),
            CASE WHEN http_status = 429 THEN 'HTTP 429' ELSE 'rate limit budget used up' END)
    ON CONFLICT (provider) DO UPDATE SET until = greatest(x.until, excluded.until), reason = excluded.reason;
END
$$;

-------------------------------------------------------------------------------
-- Yousign's state: GET /signature_requests/{id} decides, never a webhook
-------------------------------------------------------------------------------

-- _yousign_signer_status: a Yousign signer status [OAS, D/signer-1] as ours;
-- NULL for one we do not know (recorded, nothing else)
CREATE OR REPLACE FUNCTION _yousign_signer_status(status text, ordered boolean) RETURNS signer_status
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE status
        WHEN 'initiated' THEN CASE WHEN ordered THEN 'waiting' ELSE 'open' END
        WHEN 'notified' THEN 'open'
        WHEN 'verified' THEN 'viewed' WHEN 'consent_given' THEN 'viewed' WHEN 'processing' THEN 'viewed'
        WHEN 'signed' THEN 'signed'
        WHEN 'declined' THEN 'declined'
        WHEN 'aborted' THEN 'withdrawn'
        WHEN 'error' THEN 'error'
    END::qes_sign.signer_status
$$;

-- _yousign_signer applies one entry of the request's signers: {id, status}
-- in a SignatureRequest, a whole Signer (with signed_at) from .../signers;
-- a time Yousign does not give is the time we learnt it
CREATE OR REPLACE FUNCTION _yousign_signer(r signatur_anfragen, sig jsonb, completed timestamptz) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    s signers;
    new_status signer_status;
BEGIN
    SELECT * INTO s FROM signers x
     WHERE x.request_id = r.id AND x.provider_signer_id = sig ->> 'id' AND x.status <> 'replaced';
    IF NOT FOUND THEN
        RETURN;     -- Yousign allows no signer changes after activation [D/signer-1]
    END IF;
    new_status := coalesce(_yousign_signer_status(sig ->> 'status', r.ordered OR r.quality = 'QES'), s.status);
    UPDATE signers x SET
        provider_status = _cut(sig ->> 'status', 100),
        viewed_at       = CASE WHEN new_status IN ('viewed', 'signed', 'declined') THEN coalesce(x.viewed_at, clock())
                               ELSE x.viewed_at END,
        signed_at       = CASE WHEN new_status = 'signed'
                               THEN coalesce(x.signed_at, _ts(sig ->> 'signed_at', 'sr.signers.signed_at'), completed, clock()) END,
        declined_at     = CASE WHEN new_status = 'declined' THEN coalesce(x.declined_at, clock()) END,
        signed_quality  = CASE WHEN new_status = 'signed' THEN r.quality END,
        status          = new_status
     WHERE x.id = s.id AND (x.provider_status, x.status) IS DISTINCT FROM (_cut(sig ->> 'status', 100), new_status);
    IF FOUND AND _yousign_signer_status(sig ->> 'status', true) IS NULL THEN
        PERFORM _emit(r.id, 'unknown_signer_status',
                      jsonb_build_object('signer', s.email, 'status', _cut(sig ->> 'status', 100)));
    END IF;
END
$$;

-- _yousign_target: the request's status from Yousign's [OAS,
-- D/signature-request-2]: ongoing stays offen until a signer got past the
-- invitation (identified, consented, signing, signed); done completes;
-- declined, canceled, expired, deleted and rejected end it with the reason
CREATE OR REPLACE FUNCTION _yousign_target(r signatur_anfragen, sr jsonb, OUT status anfrage_status, OUT reason text)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    decliner text := (SELECT s.email FROM qes_sign.signers s
                       WHERE s.request_id = r.id AND s.provider_signer_id = sr #>> '{decline_information,signer_id}');
BEGIN
    CASE sr ->> 'status'
    WHEN 'done' THEN
        status := 'vollstaendig';
    WHEN 'declined' THEN
        status := 'abgebrochen';
        reason := _cut(concat('declined', ' by ' || decliner, ': ' || (sr #>> '{decline_information,reason}')), 4000);
    WHEN 'canceled' THEN
        status := 'abgebrochen';
        reason := coalesce((SELECT CASE w.kind WHEN 'expire' THEN 'expired'
                                   ELSE 'withdrawn' || coalesce(': ' || (w.payload ->> 'reason'), '') END
                              FROM qes_sign.work_items w
                             WHERE w.request_id = r.id AND w.kind IN ('withdraw', 'expire') ORDER BY w.id DESC LIMIT 1),
                           'canceled at Yousign');
    WHEN 'expired' THEN
        status := 'abgebrochen'; reason := 'expired';
    WHEN 'deleted' THEN
        status := 'abgebrochen'; reason := 'deleted at Yousign';
    WHEN 'rejected' THEN
        status := 'abgebrochen'; reason := 'rejected at Yousign';
    WHEN 'ongoing' THEN
        IF r.status = 'offen' AND EXISTS (SELECT FROM qes_sign.signers s WHERE s.request_id = r.id
                                            AND s.status IN ('viewed', 'signed', 'declined')) THEN
            status := 'in_signatur';
        END IF;
    ELSE
        NULL;   -- draft, approval, paused or unknown: no change
    END CASE;
END
$$;

-- _yousign_apply applies a SignatureRequest exactly as Yousign returns it
CREATE OR REPLACE FUNCTION _yousign_apply(p_id uuid, sr jsonb) RETURNS anfrage_status
LANGUAGE plpgsql AS $$
DECLARE
    r signatur_anfragen;
    sig jsonb;
    target record;
    st text := _cut(sr ->> 'status', 100);
BEGIN
    SELECT * INTO r FROM signatur_anfragen a WHERE a.id = p_id FOR UPDATE;
    r.document := NULL;     -- passed on with r: never copied (_call_for)
    IF jsonb_typeof(sr) IS DISTINCT FROM 'object' OR jsonb_typeof(sr -> 'id') IS DISTINCT FROM 'string'
       OR jsonb_typeof(sr -> 'status') IS DISTINCT FROM 'string' THEN
        PERFORM _invalid('sr', 'is not a Yousign SignatureRequest', 'It needs a string "id" and "status".');
    ELSIF coalesce(sr ->> 'external_id', r.id::text) <> r.id::text THEN
        PERFORM _invalid('sr.external_id', 'names another request',
                         format('external_id is %s.', to_jsonb(_cut(sr ->> 'external_id', 200))));
    ELSIF r.provider_id IS DISTINCT FROM sr ->> 'id' AND r.provider_id IS NOT NULL THEN
        PERFORM _invalid('sr.id', 'belongs to another Yousign request',
            format('The request is %s at Yousign, the state is of %s.', r.provider_id, _cut(sr ->> 'id', 200)));
    END IF;
    IF r.status IN ('archiviert', 'abgebrochen') OR st = 'draft' THEN
        RETURN r.status;  -- final, or not activated yet
    END IF;
    IF r.provider_id IS NULL THEN
        UPDATE signatur_anfragen a SET provider_id = sr ->> 'id',
               sent_at = coalesce(a.sent_at, _ts(sr ->> 'activated_at', 'sr.activated_at'), clock())
         WHERE a.id = r.id;
        PERFORM _emit(r.id, 'sent', jsonb_build_object('provider', 'yousign', 'provider_id', sr ->> 'id'));
    END IF;
    UPDATE signatur_anfragen a SET provider_status = st, provider_state = sr,
           document_id = coalesce(sr #>> '{documents,0,id}', a.document_id)
     WHERE a.id = r.id AND a.provider_state IS DISTINCT FROM sr;
    IF FOUND AND st NOT IN ('draft', 'approval', 'ongoing', 'done', 'declined', 'canceled', 'expired', 'deleted',
                            'rejected', 'paused') THEN
        PERFORM _emit(r.id, 'unknown_status', jsonb_build_object('status', st));
    END IF;
    FOR sig IN SELECT * FROM jsonb_array_elements(CASE jsonb_typeof(sr -> 'signers') WHEN 'array'
                                                       THEN sr -> 'signers' ELSE '[]' END) LOOP
        PERFORM _yousign_signer(r, sig, _ts(sr ->> 'completed_at', 'sr.completed_at'));
    END LOOP;
    SELECT * INTO r FROM signatur_anfragen a WHERE a.id = p_id;
    r.document := NULL;
    SELECT * INTO target FROM _yousign_target(r, sr);
    RETURN _transition(r.id, target.status, target.reason);
END
$$;

-------------------------------------------------------------------------------
-- Input and signer changes
-------------------------------------------------------------------------------

-- _yousign_check: Yousign's rules for signers, at create_request rather
-- than as a cancelled request later: names in its alphabet [OAS
-- HumanName], e-mail at most 100 characters [OAS], and for QES a phone
-- number (help centre article 72059; E.164 from the stored digits)
CREATE OR REPLACE FUNCTION _yousign_check(signers jsonb, quality text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    s jsonb;
    i int := 0;
    k text;
BEGIN
    FOR s IN SELECT * FROM jsonb_array_elements(signers) LOOP
        FOREACH k IN ARRAY ARRAY['first_name', 'last_name'] LOOP
            IF s ->> k !~ '^[A-Za-z0-9\u00C0-\u00D6\u00D8-\u00F6\u00F8-\u017F \-''`()]+$' OR length(s ->> k) > 255 THEN
                PERFORM _invalid(format('signers[%s].%s', i, k), 'has characters Yousign does not accept',
                    format('The value is %s.', to_jsonb(s ->> k)),
                    p_hint => 'Yousign accepts Latin letters with accents, digits, spaces and - '' ` ( ). '
                              || 'For a qualified signature the name must match the ID document: leave titles such as "Dr." out.');
            END IF;
        END LOOP;
        IF length(s ->> 'email') > 100 THEN
            PERFORM _invalid(format('signers[%s].email', i), 'is longer than 100 characters, Yousign''s limit');
        END IF;
        IF quality = 'QES' AND NOT s ? 'mobile' THEN
            PERFORM _invalid(format('signers[%s].mobile', i), 'is required for a qualified signature at Yousign',
                p_hint => 'Give the signer''s mobile number in international format, e.g. +49 151 12345678.');
        END IF;
        i := i + 1;
    END LOOP;
END
$$;

-- _yousign_replace_check: Yousign allows no signer changes once a request
-- is activated [D/signer-1]; qes_sign allows them only before it started
-- creating the draft
CREATE OR REPLACE FUNCTION _yousign_replace_check(r signatur_anfragen) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF r.provider_id IS NOT NULL OR EXISTS (SELECT FROM work_items w WHERE w.request_id = r.id AND w.kind = 'submit'
                                              AND (w.attempts > 0 OR w.state <> 'pending')) THEN
        RAISE EXCEPTION 'cannot replace a signer of signature request % at Yousign', r.id
            USING ERRCODE = '55000', COLUMN = 'old_email',
                  DETAIL = 'Yousign allows no signer changes once a request is on its way.',
                  HINT = 'Withdraw the request and restart it with the right signers.';
    END IF;
END
$$;

-------------------------------------------------------------------------------
-- Webhooks: X-Yousign-Signature-256 verified in C, deduplicated on
-- event_id, and only a hint: the worker fetches the request
-------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION _verify_yousign(signature text, body bytea) RETURNS void
    LANGUAGE c AS 'MODULE_PATHNAME', 'qes_sign_verify_yousign';

-- _yousign_webhook: a delivery [D/use-webhooks-in-your-app]: its fields at
-- the top, or under "metadata" (as a third-party fixture set has them)
CREATE OR REPLACE FUNCTION _yousign_webhook(h jsonb, body bytea) RETURNS callback_receipt
LANGUAGE plpgsql AS $$
DECLARE
    payload jsonb;
    event_id text;
    sr_id text;
    rid uuid;
BEGIN
    PERFORM _verify_yousign(h ->> 'x-yousign-signature-256', body);
    BEGIN
        payload := convert_from(body, 'UTF8')::jsonb;
    EXCEPTION WHEN OTHERS THEN
        PERFORM _reject('webhooks_rejected', 'webhook rejected: the body is not JSON');
    END;
    event_id := _cut(coalesce(payload ->> 'event_id', payload #>> '{metadata,event_id}'), 200);
    IF event_id IS NULL THEN
        PERFORM _reject('webhooks_rejected', 'webhook rejected: no event_id');
    END IF;
    INSERT INTO webhook_ids (webhook_id) VALUES ('yousign:' || event_id) ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        RETURN ROW(NULL, NULL, true)::callback_receipt;  -- delivered again (Yousign retries)
    END IF;
    sr_id := _cut(payload #>> '{data,signature_request,id}', 200);
    SELECT a.id INTO rid FROM signatur_anfragen a
     WHERE a.provider = 'yousign' AND a.provider_id = sr_id;
    IF NOT FOUND THEN   -- activated just now: named by our own id
        SELECT a.id INTO rid FROM signatur_anfragen a
         WHERE a.provider = 'yousign' AND a.id::text = payload #>> '{data,signature_request,external_id}'
           AND a.provider_id IS NULL;
    END IF;
    RETURN _take_callback('webhook', rid, 'update', sr_id, NULL, _cut(payload #>> '{data,signer,id}', 200),
                          'yousign:' || event_id, body);
END
$$;

-------------------------------------------------------------------------------
-- Moved: after a promotion (or on another cluster or timeline) the step a
-- dead primary sent may be unrecorded here and still land at Yousign: every
-- draft in progress is looked up, and continued only once such a step
-- would have landed (qes_sign.http_timeout)
-------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION _yousign_moved() RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    n bigint;
BEGIN
    UPDATE work_items w SET payload = w.payload - 'sent'
               || jsonb_build_object('lookup', true, 'lost', clock(), 'lost_step', 'unknown')
      FROM signatur_anfragen a
     WHERE a.id = w.request_id AND a.provider = 'yousign' AND w.kind = 'submit' AND w.state = 'pending'
       AND w.payload ? 'draft';
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;
