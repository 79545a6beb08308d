/* provider-skribble.sql: Skribble (API v2, skribble-api.md) behind the
 * provider boundary.  Everything Skribble-specific of the SQL side: the
 * call each work item needs (_skribble_call_for, _skribble_fetch), what its
 * answers mean (_skribble_answer, _skribble_failure, _skribble_message,
 * apply_signature_request), and its documented rules: only permanent
 * answers end a request, a lost create is found whatever the page
 * numbering, signer changes follow Skribble's rule, its status decides
 * completion, and its deletion date is watched.  The login session is C
 * (src/skribble.c).  Every statement can run again (CREATE OR REPLACE), so
 * a later upgrade script includes this file as it is then.
 */

-------------------------------------------------------------------------------
-- Calls
-------------------------------------------------------------------------------

-- _skribble_call is a call to the Skribble API (path below qes_sign.skribble_url)
CREATE OR REPLACE FUNCTION _skribble_call(w work_items, kind text, method text, path text,
                                          body text DEFAULT NULL, headers text[] DEFAULT NULL) RETURNS api_call
LANGUAGE sql IMMUTABLE AS $$
    SELECT ROW(w.id, w.request_id, kind, 'skribble', method, path, body, NULL, headers, NULL)::qes_sign.api_call
$$;

-- _signer_body is one entry of a create's "signatures" (or a signer added later)
CREATE OR REPLACE FUNCTION _signer_body(s signers, ordered boolean) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_strip_nulls(jsonb_build_object(
        'signer_identity_data', jsonb_build_object(
            'email_address', s.email, 'first_name', s.first_name, 'last_name', s.last_name,
            'mobile_number', s.mobile, 'language', s.language),
        'sequence', CASE WHEN ordered THEN s.sequence END))
$$;

-- _create_body is the POST /signature-requests body of a request: the PDF,
-- its signers, quality and legislation, the signed callback URLs and our own
-- id in "custom" (which makes a lost answer recoverable)
CREATE OR REPLACE FUNCTION _create_body(r signatur_anfragen) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_strip_nulls(jsonb_build_object(
        'title', r.title, 'message', r.message,
        'content', translate(encode(r.document, 'base64'), E'\n', ''),
        'content_type', 'application/pdf',
        'quality', r.quality, 'legislation', r.legislation,
        'signatures', (SELECT jsonb_agg(qes_sign._signer_body(s, r.ordered) ORDER BY s.position)
                         FROM qes_sign.signers s WHERE s.request_id = r.id AND s.status <> 'replaced'),
        'custom', r.id::text,
        'attach_on_success', jsonb_build_array('SIGNED_DOCUMENT', 'SIGNATURE_PROTOCOL')))
        || CASE WHEN current_setting('qes_sign.callback_base_url') <> ''
                THEN qes_sign.callback_urls(r.id) ELSE '{}' END
$$;

-- _skribble_call_for: the call a work item about a Skribble request needs
CREATE OR REPLACE FUNCTION _skribble_call_for(w work_items, r signatur_anfragen) RETURNS api_call
LANGUAGE plpgsql AS $$
DECLARE
    sr text := '/signature-requests/' || _url_escape(coalesce(r.provider_id, ''));
    old_sid text;
    n signers;
BEGIN
    CASE w.kind
    WHEN 'submit' THEN
        IF w.payload ? 'posted' THEN
            -- a create whose outcome is unknown: look for it at once (see
            -- _search_answer), without paging first
            RETURN _skribble_call(w, 'search', 'GET', '/signature-requests?search=' || _url_escape(r.title)
                                  || coalesce('&page_number=' || (w.payload ->> 'page') || '&page_size=100', ''));
        END IF;
        UPDATE work_items SET payload = payload || jsonb_build_object('posted', clock()) WHERE id = w.id;
        RETURN _skribble_call(w, 'create', 'POST', '/signature-requests', _create_body(r)::text);
    WHEN 'refresh' THEN
        RETURN _skribble_call(w, 'get', 'GET', sr);
    WHEN 'remind' THEN
        RETURN _skribble_call(w, 'remind', 'POST', sr || '/remind');
    WHEN 'withdraw', 'expire' THEN
        RETURN _skribble_call(w, 'withdraw', 'POST', sr || '/withdraw', jsonb_build_object('message',
                   CASE w.kind WHEN 'expire' THEN 'expired' ELSE coalesce(w.payload ->> 'reason', 'withdrawn') END)::text);
    WHEN 'replace_signer' THEN
        SELECT s.provider_signer_id INTO old_sid FROM signers s WHERE s.id = (w.payload ->> 'old_signer')::bigint;
        old_sid := coalesce(old_sid, w.payload ->> 'old_sid');
        IF old_sid IS NOT NULL AND NOT w.payload ? 'deleted' THEN
            RETURN _skribble_call(w, 'delete_signer', 'DELETE', sr || '/signatures/' || _url_escape(old_sid));
        END IF;
        SELECT * INTO n FROM signers s WHERE s.id = (w.payload ->> 'new_signer')::bigint;
        RETURN _skribble_call(w, 'add_signer', 'POST', sr || '/signatures', _signer_body(n, r.ordered)::text);
    END CASE;
END
$$;

-- _skribble_fetch: the signed PDF (the request's current document), and
-- the signature protocol as PDF and as JSON
CREATE OR REPLACE FUNCTION _skribble_fetch(w work_items, r signatur_anfragen, obj text) RETURNS api_call
LANGUAGE sql STABLE AS $$
    SELECT CASE obj
        WHEN 'signed_pdf' THEN qes_sign._skribble_call(w, 'fetch:signed_pdf', 'GET',
            '/documents/' || qes_sign._url_escape(r.document_id) || '/content', NULL, '{"Accept: application/pdf"}')
        WHEN 'protocol_pdf' THEN qes_sign._skribble_call(w, 'fetch:protocol_pdf', 'GET',
            '/signature-requests/' || qes_sign._url_escape(r.provider_id) || '/report?type=PDF', NULL,
            '{"Accept: application/pdf"}')
        ELSE qes_sign._skribble_call(w, 'fetch:protocol_json', 'GET',
            '/signature-requests/' || qes_sign._url_escape(r.provider_id) || '/report?type=JSON')
    END
$$;

-------------------------------------------------------------------------------
-- Answers
-------------------------------------------------------------------------------

-- _skribble_failure: an answer other than 2xx, or none.  Only permanent
-- refusals end a call (_final_answer); a lost create is searched for
CREATE OR REPLACE FUNCTION _skribble_failure(w work_items, call_kind text, http_status int, body bytea,
                                             retry_after int, transport_error text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    m record := _skribble_message(body, http_status);
BEGIN
    IF transport_error IS NULL AND call_kind = 'search' AND http_status = 400 AND w.payload ->> 'page' = '0' THEN
        RETURN _again(w.id, '0', '{"page": 1}');        -- pages count from 1 at this Skribble
    ELSIF transport_error IS NULL AND call_kind = 'delete_signer' AND http_status = 404 THEN
        RETURN _again(w.id, '0', '{"deleted": true}');  -- not there (any more): add the new one
    ELSIF transport_error IS NULL AND _final_answer(call_kind, http_status, m.key) THEN
        RETURN _record_final(w, call_kind, http_status, m.message, m.key);
    ELSIF call_kind = 'create' THEN
        -- the outcome is unknown: Skribble may store it even now
        UPDATE work_items SET payload = payload || jsonb_build_object('lost', clock()) WHERE id = w.id;
    END IF;
    RETURN _retry(w, coalesce(transport_error, format('HTTP %s: %s', http_status, m.message)),
                  call_kind, http_status, retry_after);
END
$$;

CREATE OR REPLACE FUNCTION _skribble_message(body bytea, http_status int, OUT message text, OUT key text)
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    t text;
    j jsonb;
BEGIN
    BEGIN
        t := convert_from(body, 'UTF8');
        j := t::jsonb;
        message := j ->> 'message';
        key := _cut(j ->> 'key', 200);
    EXCEPTION WHEN OTHERS THEN
        message := btrim(t);
    END;
    message := coalesce(nullif(_cut(message, 2000), ''), 'HTTP ' || http_status);
END
$$;

CREATE OR REPLACE FUNCTION _apply_signature(p_request uuid, sig jsonb, field text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    s signers;
    v_email text := lower(sig #>> '{signer_identity_data,email_address}');
    viewed timestamptz := _ts(sig ->> 'last_viewed_at', field || '.last_viewed_at');
    signed timestamptz := _ts(sig ->> 'signed_at', field || '.signed_at');
    message text := _cut(sig ->> 'decline_message', 2000);
    new_status signer_status;
BEGIN
    SELECT * INTO s FROM signers x
     WHERE x.request_id = p_request AND x.provider_signer_id = sig ->> 'sid';
    IF NOT FOUND THEN
        -- (by address also when Skribble gave the signer a new sid: it was
        -- taken out and added again there)
        SELECT * INTO s FROM signers x
         WHERE x.request_id = p_request AND x.status <> 'replaced' AND lower(x.email) = v_email;
    END IF;
    IF NOT FOUND THEN
        PERFORM _signer_added(p_request, sig);   -- added at Skribble
        SELECT * INTO s FROM signers x WHERE x.request_id = p_request ORDER BY x.id DESC LIMIT 1;
    ELSIF s.status = 'replaced' THEN
        RETURN;  -- taken out locally: nothing to apply
    END IF;
    new_status := coalesce(_signer_status(sig ->> 'status_code',
                                          viewed IS NOT NULL OR s.viewed_at IS NOT NULL),
                           s.status);
    UPDATE signers x SET
        provider_signer_id = sig ->> 'sid',
        provider_status = sig ->> 'status_code',
        viewed_at       = coalesce(x.viewed_at, viewed),
        signed_at       = coalesce(signed, x.signed_at),
        declined_at     = CASE WHEN new_status = 'declined'
                               THEN coalesce(x.declined_at, clock()) END,
        decline_message = coalesce(message, x.decline_message),
        signed_quality  = coalesce(sig ->> 'signed_quality', x.signed_quality),
        status          = new_status
     WHERE x.id = s.id
       AND (x.provider_signer_id, x.provider_status, x.viewed_at, x.signed_at, x.decline_message,
            x.signed_quality, x.status)
           IS DISTINCT FROM
           (sig ->> 'sid', sig ->> 'status_code', coalesce(x.viewed_at, viewed),
            coalesce(signed, x.signed_at), coalesce(message, x.decline_message),
            coalesce(sig ->> 'signed_quality', x.signed_quality), new_status);
    IF FOUND AND _signer_status(sig ->> 'status_code', true) IS NULL THEN
        PERFORM _emit(p_request, 'unknown_signer_status',
                      jsonb_build_object('signer', s.email, 'status_code', _cut(sig ->> 'status_code', 100)));
    END IF;
END
$$;

-- _final_answer: an answer that retrying cannot change.  Only a refused
-- create ends a request (400 invalid input, 406 corrupt or encrypted PDF,
-- 413, 422); a withdraw or reminder Skribble refuses, and a refused signer
-- change, end that call.  409 and 423 ("being processed, retry later"),
-- 408, 429, 5xx, an expired token, and any 4xx of a refresh, a search or an
-- added signer are retried with backoff, and given up visibly (_give_up).
CREATE OR REPLACE FUNCTION _final_answer(call_kind text, http_status int, key text) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN http_status = 429 THEN call_kind = 'remind' AND key = 'error.rate_limit.reminder'
        WHEN http_status NOT BETWEEN 400 AND 499 OR http_status IN (401, 408, 409, 423) THEN false
        WHEN http_status = 403 AND coalesce(key, '') LIKE 'error.auth.%' THEN false
        WHEN call_kind = 'create' THEN http_status IN (400, 406, 413, 422)
        WHEN call_kind IN ('withdraw', 'remind') THEN http_status IN (400, 403, 404)
        WHEN call_kind = 'delete_signer' THEN http_status IN (400, 403)
        ELSE false
    END
$$;

-- _record_final handles an answer that retrying cannot change (see _final_answer)
CREATE OR REPLACE FUNCTION _record_final(w work_items, call_kind text, http_status int, message text, key text)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    detail jsonb := jsonb_strip_nulls(jsonb_build_object('http_status', http_status, 'message', message, 'key', key));
BEGIN
    PERFORM _finish(w.id, 'failed', format('HTTP %s: %s', http_status, message));
    CASE call_kind
    WHEN 'remind' THEN
        PERFORM _emit(w.request_id, 'remind_failed', detail || jsonb_build_object('reason',
            CASE WHEN key = 'error.rate_limit.reminder' THEN 'reminder limit reached' ELSE message END));
    WHEN 'delete_signer' THEN
        PERFORM _replace_refused(w, detail);
    ELSE
        -- a withdraw, or the request itself (e.g. 406 for a corrupt PDF)
        PERFORM _refused_for_good(w, 'skribble', call_kind = 'withdraw', http_status, message,
                                  detail || CASE WHEN call_kind <> 'withdraw' THEN jsonb_build_object('call', call_kind)
                                              ELSE '{}' END, 'skribble_error');
    END CASE;
    RETURN 'failed';
END
$$;

-- _search_from (1.0) is replaced: the window in which a create whose
-- answer was lost may still be stored at Skribble ends qes_sign.http_timeout
-- after the later of its post and the loss (a create that timed out may be
-- stored after the client gave up)
CREATE OR REPLACE FUNCTION _search_from(payload jsonb) RETURNS timestamptz
LANGUAGE sql STABLE AS $$
    SELECT CASE jsonb_typeof(payload -> 'posted')
           WHEN 'string' THEN greatest((payload ->> 'posted')::timestamptz, (payload ->> 'lost')::timestamptz)
                              + current_setting('qes_sign.http_timeout')::interval
           ELSE '-infinity' END
$$;

-- _search_answer: a search for a create whose answer was lost.  The first
-- search asks without paging (pagination is off unless asked for); an
-- answer of 50 or more (a default page size may have cut it) is read again
-- page by page from page 0 (a 400 for page 0 moves on to page 1: pages
-- count from 1 there) until a page is short.  Not found while Skribble may
-- still be storing the create (qes_sign.http_timeout after it was posted):
-- searched again, 1, 2, 4 ... s later; not found after that: created again.
CREATE OR REPLACE FUNCTION _search_answer(w work_items, answer jsonb) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    hit jsonb := _search_hit(answer, w.request_id);
    n int := CASE jsonb_typeof(answer) WHEN 'array' THEN jsonb_array_length(answer) ELSE 0 END;
    page int := (w.payload ->> 'page')::int;
    first text := answer #>> '{0,id}';
    searches int := coalesce((w.payload ->> 'searches')::int, 0) + 1;
    until timestamptz := _search_from(w.payload);
BEGIN
    IF hit IS NOT NULL THEN
        PERFORM apply_signature_request(w.request_id, hit);
        PERFORM _emit(w.request_id, 'create_recovered', jsonb_build_object('skribble_id', hit ->> 'id',
                                                                           'searches', searches));
        RETURN _finish(w.id, 'done');
    ELSIF page IS NULL AND n >= 50 THEN
        RETURN _again(w.id, '0', '{"page": 0}');
    ELSIF n >= 100 AND page < 1000 AND first IS DISTINCT FROM w.payload ->> 'first' THEN
        RETURN _again(w.id, '0', jsonb_build_object('page', page + 1, 'first', first));
    END IF;
    UPDATE work_items SET payload = payload - 'page' - 'first' WHERE id = w.id;
    IF clock() < until THEN
        RETURN _again(w.id, least(make_interval(secs => power(2, least(searches - 1, 10))), until - clock()),
                      jsonb_build_object('searches', searches));
    END IF;
    -- not created: send it (again)
    UPDATE work_items SET payload = payload - 'posted' - 'searches' - 'lost' WHERE id = w.id;
    RETURN _again(w.id, '0');
END
$$;

-- _skribble_answer applies a 2xx answer to the work item it answers
CREATE OR REPLACE FUNCTION _skribble_answer(w work_items, call_kind text, answer jsonb) RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
    CASE call_kind
    WHEN 'search' THEN
        RETURN _search_answer(w, answer);
    WHEN 'create', 'get', 'withdraw', 'add_signer' THEN
        PERFORM apply_signature_request(w.request_id, answer);
        UPDATE signatur_anfragen SET synced_at = clock() WHERE id = w.request_id;
        IF w.payload ? 'again' THEN
            RETURN _again(w.id, '0');
        END IF;
    WHEN 'remind' THEN
        PERFORM _emit(w.request_id, 'reminded', jsonb_strip_nulls(jsonb_build_object('auto', w.payload -> 'auto')));
    WHEN 'delete_signer' THEN
        RETURN _again(w.id, '0', '{"deleted": true}');
    END CASE;
    RETURN _finish(w.id, 'done');
END
$$;

-- _replace_refused undoes a replacement Skribble refused (someone signed
-- meanwhile): the old signer is back as it was, the new one gone, and the
-- request goes on as before
CREATE OR REPLACE FUNCTION _replace_refused(w work_items, detail jsonb) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    old_id bigint := (w.payload ->> 'old_signer')::bigint;
    new_id bigint := (w.payload ->> 'new_signer')::bigint;
    old_email text := (SELECT email FROM signers WHERE id = old_id);
    new_email text := (SELECT email FROM signers WHERE id = new_id);
BEGIN
    UPDATE signers SET replaced_by = NULL WHERE id = old_id;
    DELETE FROM signers WHERE id = new_id AND provider_signer_id IS NULL;
    UPDATE signers SET status = coalesce((w.payload ->> 'old_status')::signer_status, 'open') WHERE id = old_id;
    PERFORM _emit(w.request_id, 'replace_signer_refused', detail || jsonb_build_object(
        'signer', old_email, 'by', new_email, 'reason', 'Skribble refused the change: ' || (detail ->> 'message')));
    PERFORM _enqueue(w.request_id, 'refresh');
END
$$;

-- _signer_added: a signature Skribble lists that no local signer matches
-- (added in Skribble's web app): recorded, so the trail and the overview
-- show who signed
CREATE OR REPLACE FUNCTION _signer_added(p_request uuid, sig jsonb) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_email text := lower(coalesce(sig #>> '{signer_identity_data,email_address}', sig ->> 'account_email', sig ->> 'sid'));
BEGIN
    INSERT INTO signers (request_id, position, email, first_name, last_name, provider_signer_id, provider_status)
    SELECT p_request, coalesce(max(s.position), -1) + 1, v_email,
           coalesce(sig #>> '{signer_identity_data,first_name}', ''),
           coalesce(sig #>> '{signer_identity_data,last_name}', ''), sig ->> 'sid', NULL
      FROM signers s WHERE s.request_id = p_request;
    PERFORM _emit(p_request, 'signer_added_at_skribble', jsonb_strip_nulls(jsonb_build_object(
        'signer', v_email, 'sid', sig ->> 'sid', 'status_code', sig ->> 'status_code')));
END
$$;

-- _signers_settled: Skribble reports SIGNED, so its list is the truth: a
-- local signer it does not show as signed was taken out there (or never
-- added); the trail records each one
CREATE OR REPLACE FUNCTION _signers_settled(p_request uuid) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    s signers;
BEGIN
    FOR s IN SELECT * FROM signers x WHERE x.request_id = p_request AND x.status NOT IN ('signed', 'replaced') LOOP
        UPDATE signers SET status = 'replaced' WHERE id = s.id;
        PERFORM _emit(p_request, 'signer_not_at_skribble', jsonb_strip_nulls(jsonb_build_object(
            'signer', s.email, 'sid', s.provider_signer_id, 'status', s.status,
            'reason', 'Skribble reports the request signed without this signer')));
    END LOOP;
END
$$;

-- _target_status decides the request's status from Skribble's
-- status_overall and its signers; NULL means no change.  Skribble's SIGNED
-- completes; local signer rows alone never do.
CREATE OR REPLACE FUNCTION _target_status(r signatur_anfragen, overall text, OUT status anfrage_status, OUT reason text)
LANGUAGE plpgsql STABLE AS $$
BEGIN
    WITH s AS (
        SELECT count(*) FILTER (WHERE x.status IN ('viewed', 'signed') OR x.viewed_at IS NOT NULL) AS seen,
               string_agg(x.email || coalesce(': ' || x.decline_message, ''), '; ')
                   FILTER (WHERE x.status = 'declined') AS declined
          FROM qes_sign.signers x WHERE x.request_id = r.id AND x.status <> 'replaced')
    SELECT CASE
             WHEN overall = 'SIGNED'                             THEN 'vollstaendig'
             WHEN s.declined IS NOT NULL OR overall = 'DECLINED' THEN 'abgebrochen'
             WHEN overall IN ('WITHDRAWN', 'EXPIRED', 'ERROR')   THEN 'abgebrochen'
             WHEN s.seen > 0 AND r.status = 'offen'              THEN 'in_signatur'
           END::qes_sign.anfrage_status,
           CASE
             WHEN overall = 'SIGNED'     THEN NULL
             WHEN s.declined IS NOT NULL THEN _cut('declined by ' || s.declined, 4000)
             WHEN overall = 'DECLINED'   THEN 'declined'
             WHEN overall = 'WITHDRAWN'  THEN coalesce(
                 (SELECT CASE w.kind WHEN 'expire' THEN 'expired'
                                     ELSE 'withdrawn' || coalesce(': ' || (w.payload ->> 'reason'), '') END
                    FROM qes_sign.work_items w
                   WHERE w.request_id = r.id AND w.kind IN ('withdraw', 'expire') ORDER BY w.id DESC LIMIT 1),
                 'withdrawn')
             WHEN overall = 'EXPIRED'    THEN 'expired'
             WHEN overall = 'ERROR'      THEN 'error at Skribble'
           END
      FROM s
      INTO status, reason;
END
$$;

CREATE OR REPLACE FUNCTION apply_signature_request(id uuid, sr jsonb) RETURNS anfrage_status
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, qes_sign, pg_temp AS $$
DECLARE
    r signatur_anfragen;
    sig jsonb;
    target record;
    i bigint;
    overall text := _cut(sr ->> 'status_overall', 100);
    deletion date;
BEGIN
    SELECT * INTO r FROM signatur_anfragen a WHERE a.id = apply_signature_request.id FOR UPDATE;
    r.document := NULL;     -- passed on with r: never copied (_call_for)
    IF NOT FOUND THEN
        RAISE EXCEPTION 'signature request % does not exist', id USING ERRCODE = 'P0002';
    END IF;
    IF jsonb_typeof(sr) IS DISTINCT FROM 'object' OR jsonb_typeof(sr -> 'id') IS DISTINCT FROM 'string'
       OR jsonb_typeof(sr -> 'signatures') IS DISTINCT FROM 'array' THEN
        PERFORM _invalid('sr', 'is not a Skribble SignatureRequest',
            'It needs a string "id" and an array "signatures".');
    END IF;
    IF r.provider_id IS DISTINCT FROM sr ->> 'id' AND r.provider_id IS NOT NULL THEN
        PERFORM _invalid('sr.id', 'belongs to another Skribble request',
            format('The request is %s at Skribble, the state is of %s.', r.provider_id, _cut(sr ->> 'id', 200)));
    END IF;
    IF sr ? 'custom' AND sr ->> 'custom' IS DISTINCT FROM r.id::text AND coalesce(sr ->> 'custom', '') <> '' THEN
        PERFORM _invalid('sr.custom', 'names another request', format('custom is %s.', to_jsonb(_cut(sr ->> 'custom', 200))));
    END IF;
    IF r.status IN ('archiviert', 'abgebrochen') THEN
        RETURN r.status;  -- final: later news from Skribble changes nothing
    END IF;
    deletion := _date(sr ->> 'expiration_date', 'sr.expiration_date');

    IF r.provider_id IS NULL THEN
        UPDATE signatur_anfragen a SET provider_id = sr ->> 'id',
               sent_at = coalesce(a.sent_at, _ts(sr ->> 'created_at', 'sr.created_at'), clock())
         WHERE a.id = r.id;
        PERFORM _emit(r.id, 'sent', jsonb_build_object('skribble_id', sr ->> 'id'));
        -- e.g. DEMO for a demo key: signatures without the legal effect asked for
        IF sr ->> 'quality' <> r.quality THEN
            PERFORM _emit(r.id, 'quality_differs', jsonb_build_object(
                'requested', r.quality, 'skribble', _cut(sr ->> 'quality', 100),
                'reason', format('Skribble signs this request as %s, not %s', _cut(sr ->> 'quality', 100), r.quality)));
        END IF;
    END IF;
    -- Skribble deletes the request on its deletion date: nobody can sign
    -- after it, so it expires (is withdrawn) before (_expiry_before_deletion)
    UPDATE signatur_anfragen a SET document_id = sr ->> 'document_id', provider_status = overall,
           deletion_date = coalesce(deletion, a.deletion_date),
           expires_at = CASE WHEN deletion IS NULL THEN a.expires_at
                             ELSE least(a.expires_at, _expiry_before_deletion(deletion)) END
     WHERE a.id = r.id AND (a.document_id, a.provider_status, a.deletion_date)
           IS DISTINCT FROM (sr ->> 'document_id', overall, coalesce(deletion, a.deletion_date));
    IF FOUND AND overall NOT IN ('OPEN', 'SIGNED', 'DECLINED', 'WITHDRAWN', 'ERROR', 'EXPIRED') THEN
        PERFORM _emit(r.id, 'unknown_status', jsonb_build_object('status_overall', overall));
    END IF;

    FOR sig, i IN SELECT * FROM jsonb_array_elements(sr -> 'signatures') WITH ORDINALITY LOOP
        PERFORM _apply_signature(r.id, sig, format('sr.signatures[%s]', i - 1));
    END LOOP;
    IF overall = 'SIGNED' THEN
        PERFORM _signers_settled(r.id);
    END IF;

    SELECT * INTO target FROM _target_status(r, overall);
    RETURN _transition(r.id, target.status, target.reason);
END
$$;

-- _expiry_before_deletion: the latest a request Skribble deletes on that
-- day may stay open: the start of the day before (German time); in its
-- last day an hour before the deletion day begins; a day from now if our
-- clock sees that day begun already (a skewed clock), rather than
-- cancelling a request Skribble still has
CREATE OR REPLACE FUNCTION _expiry_before_deletion(deletion date) RETURNS timestamptz LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN (deletion - 1)::timestamp AT TIME ZONE 'Europe/Berlin' > qes_sign.clock()
                THEN (deletion - 1)::timestamp AT TIME ZONE 'Europe/Berlin'
                WHEN deletion::timestamp AT TIME ZONE 'Europe/Berlin' > qes_sign.clock()
                THEN greatest(qes_sign.clock(), deletion::timestamp AT TIME ZONE 'Europe/Berlin' - interval '1 hour')
                ELSE qes_sign.clock() + interval '1 day' END
$$;
