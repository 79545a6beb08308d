/* qes_sign--1.0--1.1.sql: the trust boundary
 *
 * - every function that pins search_path names pg_temp last (a temporary
 *   table can no longer stand in for an extension table);
 * - tenants are granted to roles (grant_tenant, revoke_tenant); the setting
 *   qes_sign.verwaltung only selects among them;
 * - notifications carry the request id, event and status, nothing else;
 *   texts from Skribble are cut to a bound and never block a transition;
 *   an answer the worker cannot apply is a failed attempt;
 * - one unprocessed callback per request and type, bodies capped, none
 *   stored for a request that has ended;
 * - the audit chain is anchored in the archive bucket, and its head moves
 *   only with the chain.
 *
 * A fresh CREATE EXTENSION runs qes_sign--1.0.sql and then this script.
 */

\echo Use "ALTER EXTENSION qes_sign UPDATE TO '1.1'" to load this file. \quit

-------------------------------------------------------------------------------
-- Small rules shared below
-------------------------------------------------------------------------------

-- _cut bounds a text that comes from outside (Skribble's decline and error
-- messages): at most n characters, marked where it was cut
CREATE FUNCTION _cut(t text, n int) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN length(t) > n THEN left(t, n - 1) || '…' ELSE t END
$$;

-- _check_verwaltung: a tenant name is the first segment of its requests'
-- archive keys, so no "/", no control characters, no "." or "..", and no
-- leading "_" (reserved for the bucket's own prefixes such as _audit/)
CREATE FUNCTION _check_verwaltung(v text) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF v IS NULL OR btrim(v) = '' THEN
        PERFORM _invalid('verwaltung', 'must be a non-empty string', p_code => '22004');
    END IF;
    IF v ~ '[/[:cntrl:]]' OR v IN ('.', '..') OR v LIKE '\_%' OR length(v) > 200 THEN
        PERFORM _invalid('verwaltung',
            'must not contain "/" or control characters, start with "_", be "." or "..", or exceed 200 characters',
            format('The value is %s.', to_jsonb(v)));
    END IF;
END
$$;

-- wake() in a transaction that queued work wakes the workers again at its
-- commit (before it, they cannot see that work yet)
COMMENT ON FUNCTION wake() IS 'Wakes the background workers now, and again when the calling transaction commits';

-------------------------------------------------------------------------------
-- The provider boundary: each request names its trust service, and the
-- provider's ids and raw statuses live in neutral columns (Skribble's are
-- carried over).  What a provider sends and what its answers mean is in
-- its own file (provider-<name>.sql); the dispatch is in one place here
-- (_provider_call, _provider_answer, _provider_failure, _provider_fetch)
-------------------------------------------------------------------------------
ALTER TABLE signatur_anfragen ADD COLUMN provider text NOT NULL DEFAULT 'skribble'
    CHECK (provider IN ('skribble', 'yousign'));
ALTER TABLE signatur_anfragen RENAME skribble_id TO provider_id;
ALTER TABLE signatur_anfragen RENAME skribble_status TO provider_status;
ALTER TABLE signatur_anfragen ADD COLUMN provider_state jsonb;
-- the SHA-256 of the last state answer applied in full; an identical one
-- only marks the request synced (any audit event clears it: _emit)
ALTER TABLE signatur_anfragen ADD COLUMN answer_sha bytea;
ALTER TABLE signatur_anfragen DROP CONSTRAINT signatur_anfragen_skribble_id_key;
ALTER TABLE signatur_anfragen ADD CONSTRAINT signatur_anfragen_provider_id_key UNIQUE (provider, provider_id);
ALTER TABLE signers RENAME skribble_status TO provider_status;
ALTER TABLE signers RENAME sid TO provider_signer_id;
COMMENT ON COLUMN signatur_anfragen.provider IS 'The trust service: skribble or yousign';
COMMENT ON COLUMN signatur_anfragen.provider_id IS 'The request''s id at its provider, once it exists there (Yousign: activated)';
COMMENT ON COLUMN signatur_anfragen.provider_status IS 'The provider''s last raw status (also unknown values)';
COMMENT ON COLUMN signatur_anfragen.provider_state IS 'The provider''s last request object where the archive needs it (Yousign)';
COMMENT ON COLUMN signatur_anfragen.document_id IS 'The provider''s id of the document (Skribble: the current one)';
COMMENT ON COLUMN signers.provider_signer_id IS 'The signer''s id at the provider (Skribble: sid)';

-- default placement of a signature field per signer where the provider
-- needs one and the PDF has no Smart Anchors (Yousign): page ("last" or a
-- number), the first field's corner (points from the top left), its size,
-- and the step to the next signer's field (columns per row)
ALTER TABLE vorgangstypen ADD COLUMN signature_field jsonb NOT NULL DEFAULT
    '{"page": "last", "x": 60, "y": 620, "width": 180, "height": 60, "dx": 270, "dy": 75, "columns": 2}';

-- a call may be a multipart form (Yousign's upload): "name=value" parts,
-- and "name@filename" for the data
ALTER TYPE api_call ADD ATTRIBUTE form text[];

-- a provider's rate limit reached: its calls wait until then (429 with
-- Retry-After, or a window's remaining budget at 0)
CREATE TABLE provider_pauses (
    provider  text PRIMARY KEY,
    until     timestamptz NOT NULL,
    reason    text
);
COMMENT ON TABLE provider_pauses IS 'Providers whose rate limit is exhausted, and until when';

-- signer events name the signer's id at the provider (the column's new name)
CREATE OR REPLACE FUNCTION _on_signer_change() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, qes_sign, pg_temp AS $$
BEGIN
    IF NEW.status <> 'replaced' THEN
        PERFORM _emit(NEW.request_id, 'signer_' || NEW.status,
                      jsonb_strip_nulls(jsonb_build_object(
                          'signer', NEW.email, 'sid', NEW.provider_signer_id, 'previous', OLD.status,
                          'at', _iso(CASE NEW.status WHEN 'signed' THEN NEW.signed_at
                                                     WHEN 'viewed' THEN NEW.viewed_at
                                                     WHEN 'declined' THEN NEW.declined_at END),
                          'message', NEW.decline_message)));
    END IF;
    RETURN NULL;
END
$$;

-- replaced by the provider files' _skribble_answer and _record_final
DROP FUNCTION _record_success(work_items, text, jsonb);
DROP FUNCTION _record_final(work_items, text, int, text, text, boolean);

-- _provider: the provider of a request created now (the argument, else the
-- setting qes_sign.provider)
CREATE FUNCTION _provider(p text) RETURNS text
LANGUAGE plpgsql STABLE AS $$
BEGIN
    p := coalesce(p, current_setting('qes_sign.provider'));
    IF p NOT IN ('skribble', 'yousign') THEN
        PERFORM _invalid('provider', 'is not a known trust service', format('The value is %s.', to_jsonb(p)),
                         p_hint => 'Use skribble or yousign.');
    END IF;
    RETURN p;
END
$$;

-------------------------------------------------------------------------------
-- Tenants bound to roles
-------------------------------------------------------------------------------
CREATE TABLE tenant_grants (
    role        regrole NOT NULL,
    verwaltung  text NOT NULL,
    granted_by  text NOT NULL,
    granted_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (role, verwaltung)
);
CREATE INDEX ON tenant_grants (verwaltung);
COMMENT ON TABLE tenant_grants IS
    'Which roles may act for which tenant (verwaltung); qes_sign.verwaltung selects among them';
SELECT pg_catalog.pg_extension_config_dump('tenant_grants', '');

-- _tenant_granted: the acting role (the session's role, SET ROLE counts;
-- membership counts) holds a grant for that tenant
CREATE FUNCTION _tenant_granted(p_verwaltung text) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT FROM qes_sign.tenant_grants g
                    WHERE g.verwaltung = p_verwaltung
                      AND pg_catalog.pg_has_role(qes_sign.acting_role(), g.role, 'MEMBER'))
$$;

-- _session_tenant: the tenant the session selected with qes_sign.verwaltung,
-- if the acting role holds it; NULL otherwise.  Row-level security compares
-- with it (as an InitPlan: once per query).
CREATE FUNCTION _session_tenant() RETURNS text
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, qes_sign, pg_temp AS $$
    SELECT v FROM (SELECT nullif(current_setting('qes_sign.verwaltung', true), '') AS v) s
     WHERE _tenant_granted(s.v)
$$;
COMMENT ON FUNCTION _session_tenant() IS
    'The tenant in qes_sign.verwaltung if the acting role holds a grant for it, else NULL';

CREATE FUNCTION grant_tenant(role regrole, verwaltung text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, qes_sign, pg_temp AS $$
BEGIN
    PERFORM _require_admin('grant a tenant');
    IF role IS NULL THEN
        PERFORM _invalid('role', 'must not be null', p_code => '22004');
    END IF;
    PERFORM _check_verwaltung(verwaltung);
    INSERT INTO tenant_grants (role, verwaltung, granted_by) VALUES (role, verwaltung, acting_role())
    ON CONFLICT DO NOTHING;
    IF FOUND THEN
        PERFORM _emit(NULL, 'tenant_granted', jsonb_build_object('role', role::text), verwaltung);
    END IF;
END
$$;
COMMENT ON FUNCTION grant_tenant(regrole, text) IS
    'Lets a role (and its members) act for a tenant; admin only';

CREATE FUNCTION revoke_tenant(role regrole, verwaltung text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, qes_sign, pg_temp AS $$
BEGIN
    PERFORM _require_admin('revoke a tenant');
    DELETE FROM tenant_grants g WHERE g.role = revoke_tenant.role AND g.verwaltung = revoke_tenant.verwaltung;
    IF FOUND THEN
        PERFORM _emit(NULL, 'tenant_revoked', jsonb_build_object('role', role::text), verwaltung);
    END IF;
END
$$;
COMMENT ON FUNCTION revoke_tenant(regrole, text) IS 'Takes a tenant grant back; admin only';

-- my_tenants: what the portal's role may select in qes_sign.verwaltung
CREATE FUNCTION my_tenants() RETURNS SETOF text
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, qes_sign, pg_temp AS $$
    SELECT DISTINCT g.verwaltung FROM tenant_grants g
     WHERE pg_has_role(acting_role(), g.role, 'MEMBER') ORDER BY 1
$$;
COMMENT ON FUNCTION my_tenants() IS 'The tenants the acting role holds (what qes_sign.verwaltung may select)';

-- _require_admin refuses anyone but qes_sign_admin (and superusers)
CREATE FUNCTION _require_admin(p_action text) RETURNS void
LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF NOT _is_admin() THEN
        RAISE EXCEPTION 'only qes_sign_admin may %', p_action USING ERRCODE = '42501';
    END IF;
END
$$;

-- _acts_for: the caller may act for a tenant (operators for all of them)
CREATE OR REPLACE FUNCTION _acts_for(p_verwaltung text) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT _is_admin() OR p_verwaltung = _session_tenant()
$$;

-- _check_session: an application session has selected a tenant its role
-- holds; every API call starts here (42501 otherwise)
CREATE FUNCTION _check_session() RETURNS void
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v text := nullif(current_setting('qes_sign.verwaltung', true), '');
BEGIN
    IF _is_admin() THEN
        RETURN;
    ELSIF v IS NULL THEN
        RAISE EXCEPTION 'qes_sign.verwaltung is not set' USING ERRCODE = '42501',
            HINT = 'The application selects its tenant per transaction: SET LOCAL qes_sign.verwaltung = ''...''.';
    ELSIF NOT _tenant_granted(v) THEN
        RAISE EXCEPTION 'role "%" may not act for verwaltung "%"', acting_role(), v
            USING ERRCODE = '42501', COLUMN = 'verwaltung',
                  HINT = 'An administrator grants tenants: SELECT qes_sign.grant_tenant(role, verwaltung).';
    END IF;
END
$$;

-- _check_tenant: an application session acts only for its own tenant
CREATE OR REPLACE FUNCTION _check_tenant(p_verwaltung text) RETURNS void
LANGUAGE plpgsql STABLE AS $$
BEGIN
    PERFORM _check_session();
    IF NOT _acts_for(p_verwaltung) THEN
        RAISE EXCEPTION 'verwaltung "%" is not the tenant of this session', p_verwaltung
            USING ERRCODE = '42501', COLUMN = 'verwaltung';
    END IF;
END
$$;

-- _lock_request locks a request the caller may act on; another tenant's
-- request reads as missing, and is not even locked (waiting for a lock
-- someone holds on it would tell that it exists)
CREATE OR REPLACE FUNCTION _lock_request(p_id uuid) RETURNS signatur_anfragen
LANGUAGE plpgsql AS $$
DECLARE
    r signatur_anfragen;
BEGIN
    PERFORM _check_session();
    SELECT * INTO r FROM signatur_anfragen a
     WHERE a.id = p_id AND (_is_admin() OR a.verwaltung = _session_tenant())
       FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'signature request % does not exist', p_id
            USING ERRCODE = 'P0002', COLUMN = 'id';
    END IF;
    RETURN r;
END
$$;

-- row-level security: the tenant the session selected and holds
DROP POLICY tenant ON signatur_anfragen;
DROP POLICY tenant ON audit_log;
CREATE POLICY tenant ON signatur_anfragen TO qes_sign_app
    USING (verwaltung = (SELECT qes_sign._session_tenant()));
CREATE POLICY tenant ON audit_log TO qes_sign_app
    USING (verwaltung = (SELECT qes_sign._session_tenant()));
ALTER TABLE tenant_grants ENABLE ROW LEVEL SECURITY;
CREATE POLICY admin ON tenant_grants TO qes_sign_admin USING (true);

-------------------------------------------------------------------------------
-- Notifications: any role may LISTEN, so a payload names the request, the
-- event and the status, and nothing personal; audit entries keep the rest
-------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION _emit(p_id uuid, p_event text, p_detail jsonb DEFAULT '{}',
                                 p_verwaltung text DEFAULT NULL, p_status anfrage_status DEFAULT NULL)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, qes_sign, pg_temp AS $$
BEGIN
    IF p_verwaltung IS NULL AND p_id IS NOT NULL THEN
        SELECT verwaltung, status INTO p_verwaltung, p_status
          FROM signatur_anfragen WHERE id = p_id;
    END IF;
    INSERT INTO audit_log (request_id, verwaltung, event, detail)
    VALUES (p_id, p_verwaltung, p_event, coalesce(p_detail, '{}'));
    IF p_id IS NOT NULL THEN
        PERFORM pg_notify('qes_sign', jsonb_build_object('id', p_id, 'event', p_event, 'status', p_status)::text);
        -- something happened to the request: the next answer is applied in full
        UPDATE signatur_anfragen SET answer_sha = NULL WHERE id = p_id AND answer_sha IS NOT NULL;
    END IF;
END
$$;

-------------------------------------------------------------------------------
-- The API: tenant checks, restarted_from, download
-------------------------------------------------------------------------------
DROP FUNCTION create_request(text, text, bytea, jsonb, text, text, boolean, interval, uuid, uuid);
CREATE FUNCTION create_request(verwaltung text, title text, document bytea, signers jsonb,
                               message text DEFAULT NULL,
                               vorgangstyp text DEFAULT 'mietvertrag',
                               ordered boolean DEFAULT false,
                               expires_in interval DEFAULT NULL,
                               restarted_from uuid DEFAULT NULL,
                               id uuid DEFAULT NULL,
                               provider text DEFAULT NULL)
RETURNS uuid LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, qes_sign, pg_temp AS $$
DECLARE
    t vorgangstypen;
    list jsonb;
    new_id uuid := coalesce(create_request.id, gen_random_uuid());
    -- GUC values with units print as "30d", "720h": valid interval input
    lifetime interval := coalesce(expires_in, current_setting('qes_sign.expiry')::interval);
    digest bytea;
    v_provider text := _provider(create_request.provider);
BEGIN
    PERFORM _check_verwaltung(verwaltung);
    PERFORM _check_tenant(verwaltung);
    IF restarted_from IS NOT NULL THEN
        PERFORM _lock_request(restarted_from);   -- another tenant's reads as unknown
    END IF;
    IF title IS NULL OR btrim(title) = '' THEN
        PERFORM _invalid('title', 'must be a non-empty string', p_code => '22004');
    ELSIF length(title) > 500 THEN
        PERFORM _invalid('title', 'is longer than 500 characters');
    END IF;
    IF length(message) > 5000 THEN
        PERFORM _invalid('message', 'is longer than 5000 characters');
    END IF;
    SELECT * INTO t FROM vorgangstypen v WHERE v.vorgangstyp = create_request.vorgangstyp;
    IF NOT FOUND THEN
        PERFORM _invalid('vorgangstyp', 'is not a known request type',
            format('The value is %s.', to_jsonb(create_request.vorgangstyp)),
            p_hint => (SELECT 'Known types: ' || string_agg(v.vorgangstyp, ', ' ORDER BY 1) FROM vorgangstypen v));
    END IF;
    IF ordered IS NULL THEN
        PERFORM _invalid('ordered', 'must be true or false', p_code => '22004');
    END IF;
    IF lifetime <= interval '0' OR lifetime > interval '365 days' THEN
        PERFORM _invalid('expires_in', 'must be between 0 and 365 days');
    END IF;
    PERFORM _check_document(document);
    digest := sha256(document);             -- once: 1 MB takes a while
    list := _check_signers(signers, ordered);
    PERFORM _provider_check(v_provider, list, t.min_quality);
    -- a caller-chosen id makes a retried call safe: it cannot create twice
    IF EXISTS (SELECT FROM signatur_anfragen a WHERE a.id = new_id) THEN
        PERFORM _invalid('id', 'is already taken by another signature request',
            format('The value is %s.', new_id), '23505');
    END IF;

    INSERT INTO signatur_anfragen (id, verwaltung, vorgangstyp, title, message, document,
                                   document_sha256, document_size, ordered, quality, legislation,
                                   created_by, created_at, expires_at, restarted_from, provider)
    VALUES (new_id, verwaltung, t.vorgangstyp, btrim(title), message, document,
            digest, length(document), ordered, t.min_quality,
            current_setting('qes_sign.legislation'), acting_role(), clock(), clock() + lifetime,
            restarted_from, v_provider);
    INSERT INTO qes_sign.signers (request_id, position, email, first_name, last_name,
                                  language, mobile, sequence)
    SELECT new_id, ord - 1, s ->> 'email', s ->> 'first_name', s ->> 'last_name',
           s ->> 'language', s ->> 'mobile', (s ->> 'sequence')::int
      FROM jsonb_array_elements(list) WITH ORDINALITY AS e(s, ord);

    PERFORM _emit(new_id, 'created', jsonb_strip_nulls(jsonb_build_object(
        'vorgangstyp', t.vorgangstyp, 'title', btrim(title), 'signers', jsonb_array_length(list),
        'document_sha256', encode(digest, 'hex'), 'document_size', length(document),
        'restarted_from', restarted_from, 'provider', v_provider)), verwaltung, 'offen');
    PERFORM _enqueue(new_id, 'submit');
    RETURN new_id;
END
$$;

-- restart: a new request with the document, signers and provider of an
-- abgebrochen one
CREATE OR REPLACE FUNCTION restart(id uuid) RETURNS uuid
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, qes_sign, pg_temp AS $$
DECLARE
    r signatur_anfragen := _lock_request(id);
BEGIN
    PERFORM _require_status(r, 'restart', 'abgebrochen');
    IF r.document IS NULL THEN
        RAISE EXCEPTION 'signature request % has no document any more', r.id USING ERRCODE = '55000';
    END IF;
    RETURN create_request(r.verwaltung, r.title, r.document,
        (SELECT jsonb_agg(jsonb_strip_nulls(jsonb_build_object(
                    'first_name', s.first_name, 'last_name', s.last_name, 'email', s.email,
                    'language', s.language, 'mobile', s.mobile, 'sequence', s.sequence))
                 ORDER BY s.position)
           FROM signers s WHERE s.request_id = r.id AND s.status <> 'replaced'),
        message => r.message, vorgangstyp => r.vorgangstyp, ordered => r.ordered,
        restarted_from => r.id, provider => r.provider);
END
$$;

-- download: an archived object, read back from the bucket and checked
-- against its recorded SHA-256; who fetched what goes into the audit trail.
-- A mismatch names neither digest nor size: the caller learns only that
-- the object is not what was archived.
CREATE OR REPLACE FUNCTION download(id uuid, kind text DEFAULT 'signed_pdf') RETURNS bytea
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, qes_sign, pg_temp AS $$
DECLARE
    r signatur_anfragen := _lock_request(id);
    o archive_objects;
    got record;
BEGIN
    SELECT * INTO o FROM archive_objects a WHERE a.request_id = r.id AND a.kind = download.kind;
    IF NOT FOUND THEN
        IF kind NOT IN ('signed_pdf', 'protocol_pdf', 'protocol_json', 'record_json') THEN
            PERFORM _invalid('kind', 'is not an archive object',
                             format('The value is %s.', to_jsonb(kind)),
                             p_hint => 'Kinds: signed_pdf, protocol_pdf, protocol_json, record_json.');
        END IF;
        RAISE EXCEPTION 'signature request % has no archived %', r.id, kind
            USING ERRCODE = '55000', DETAIL = format('The request is %s.', r.status);
    END IF;
    got := _s3_request('GET', o.bucket, o.key);
    IF got.error IS NOT NULL OR got.status <> 200 THEN
        RAISE EXCEPTION 'could not read archive object %', o.key
            USING ERRCODE = '58030', DETAIL = coalesce(got.error, _s3_message(got.body, got.status));
    END IF;
    IF sha256(got.body) <> o.sha256 THEN
        RAISE EXCEPTION 'archive object % does not match its recorded SHA-256', o.key
            USING ERRCODE = 'XX001',
                  DETAIL = 'The bucket holds other bytes than were archived; nothing was returned.',
                  HINT = 'An operator compares the object with the digest in the audit trail (event archived).';
    END IF;
    PERFORM _emit(r.id, 'downloaded', jsonb_build_object('kind', kind, 'key', o.key,
                                                         'sha256', encode(o.sha256, 'hex')));
    RETURN got.body;
END
$$;

-- purge: only operators (qes_sign_admin) purge; the check now comes first
CREATE OR REPLACE FUNCTION purge(id uuid) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, qes_sign, pg_temp AS $$
DECLARE
    r signatur_anfragen;
    o archive_objects;
    got record;
BEGIN
    PERFORM _require_admin('purge');
    r := _lock_request(id);
    PERFORM _require_status(r, 'purge', 'archiviert');
    IF r.purged_at IS NOT NULL THEN
        RAISE EXCEPTION 'signature request % was purged at %', r.id, r.purged_at USING ERRCODE = '55000';
    END IF;
    IF (clock() AT TIME ZONE 'Europe/Berlin')::date <= r.retention_until THEN
        RAISE EXCEPTION 'signature request % must be kept until %', r.id, to_char(r.retention_until, 'YYYY-MM-DD')
            USING ERRCODE = '55000',
                  DETAIL = (SELECT format('%s: %s years after the year of completion (%s).',
                                          t.bezeichnung, t.retention_years, t.retention_basis)
                              FROM vorgangstypen t WHERE t.vorgangstyp = r.vorgangstyp);
    END IF;
    FOR o IN SELECT * FROM archive_objects a WHERE a.request_id = r.id LOOP
        got := _s3_request('DELETE', o.bucket, o.key);
        IF got.error IS NOT NULL OR got.status NOT IN (200, 204, 404) THEN
            RAISE EXCEPTION 'could not delete archive object %', o.key
                USING ERRCODE = '58030', DETAIL = coalesce(got.error, _s3_message(got.body, got.status));
        END IF;
    END LOOP;
    PERFORM _emit(r.id, 'purged', jsonb_build_object('retention_until', r.retention_until,
        'objects', (SELECT jsonb_agg(a.key ORDER BY a.kind) FROM archive_objects a WHERE a.request_id = r.id)));
    DELETE FROM archive_objects WHERE request_id = r.id;
    UPDATE signers SET first_name = '', last_name = '', email = 'purged-' || signers.id || '@invalid',
           mobile = NULL, decline_message = NULL
     WHERE request_id = r.id;
    UPDATE signatur_anfragen SET title = 'purged', message = NULL, document = NULL, purged_at = clock()
     WHERE signatur_anfragen.id = r.id;
END
$$;

-------------------------------------------------------------------------------
-- S3 calls from a backend: PUT, a query string and headers as well
-------------------------------------------------------------------------------
DROP FUNCTION _s3_request(text, text, text);
CREATE FUNCTION _s3_request(method text, bucket text, key text, query text DEFAULT NULL,
                            data bytea DEFAULT NULL, headers text[] DEFAULT NULL,
                            OUT status int, OUT body bytea, OUT error text)
    LANGUAGE c AS 'MODULE_PATHNAME', 'qes_sign_s3_request';

-------------------------------------------------------------------------------
-- Callbacks: one unprocessed row per request and type, a bounded body, and
-- nothing stored for a request that has ended
-------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION _take_callback(p_source text, p_request uuid, p_type text, p_sr text, p_doc text,
                               p_sig text, p_webhook_id text, p_body bytea)
RETURNS callback_receipt LANGUAGE plpgsql AS $$
DECLARE
    stored boolean;
BEGIN
    INSERT INTO callback_inbox (request_id, callback_type, source, signature_request_id,
                                document_id, signature_id, webhook_id, dedupe_key, body)
    SELECT p_request, p_type, p_source, p_sr, p_doc, p_sig, p_webhook_id,
           coalesce(p_request || '/' || p_type, p_webhook_id), p_body
     WHERE p_request IS NULL
        OR EXISTS (SELECT FROM signatur_anfragen a WHERE a.id = p_request AND a.status IN ('offen', 'in_signatur'))
    ON CONFLICT DO NOTHING;
    stored := FOUND;
    IF stored THEN
        PERFORM _wake_at_commit();
    END IF;
    PERFORM _count(p_source || 's_accepted');
    RETURN ROW(p_request, p_type, NOT stored)::callback_receipt;
END
$$;

-- webhook ids seen: a delivery counts once even when it stored nothing (its
-- request had a callback waiting already, or has ended); kept a day, far
-- beyond qes_sign.webhook_tolerance, after which a replay fails anyway
CREATE TABLE webhook_ids (
    webhook_id   text PRIMARY KEY,
    received_at  timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE webhook_ids IS 'Webhook ids received in the last day (Standard Webhooks replay protection)';
SELECT pg_catalog.pg_extension_config_dump('webhook_ids', '');

CREATE OR REPLACE FUNCTION receive_webhook(headers jsonb, body bytea) RETURNS callback_receipt
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, qes_sign, pg_temp AS $$
DECLARE
    h jsonb;
    payload jsonb;
    rid uuid;
    kind text;
BEGIN
    IF length(body) > 65536 THEN
        PERFORM _count('webhooks_rejected');
        RAISE EXCEPTION 'webhook body is larger than 65536 bytes' USING ERRCODE = '54000',
            DETAIL = 'Callbacks and webhooks carry a few kilobytes at most; nothing was stored.';
    END IF;
    IF jsonb_typeof(headers) IS DISTINCT FROM 'object' THEN
        PERFORM _reject('webhooks_rejected', 'webhook rejected: headers must be a JSON object');
    END IF;
    SELECT jsonb_object_agg(lower(key), value) INTO h FROM jsonb_each_text(headers);
    IF h ? 'x-yousign-signature-256' THEN
        RETURN _yousign_webhook(h, body);
    ELSIF NOT h ? 'webhook-signature' AND NOT h ? 'webhook-id' THEN
        PERFORM _reject('webhooks_rejected',
                        'webhook rejected: no X-Yousign-Signature-256 and no webhook-signature header');
    END IF;
    PERFORM _verify_webhook(h ->> 'webhook-id', h ->> 'webhook-timestamp',
                            h ->> 'webhook-signature', body);
    INSERT INTO webhook_ids (webhook_id) VALUES (h ->> 'webhook-id') ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        RETURN ROW(NULL, NULL, true)::callback_receipt;  -- a replay: seen before
    END IF;
    BEGIN
        payload := convert_from(body, 'UTF8')::jsonb;
    EXCEPTION WHEN OTHERS THEN
        PERFORM _reject('webhooks_rejected', 'webhook rejected: the body is not JSON');
    END;
    IF jsonb_typeof(payload -> 'url') = 'string' THEN
        RETURN _take_signed_url('webhook', payload ->> 'url', h ->> 'webhook-id', body);
    END IF;
    -- otherwise a request named by its Skribble id, if any (else a ping)
    SELECT a.id INTO rid FROM signatur_anfragen a
     WHERE a.provider = 'skribble' AND a.provider_id = payload ->> 'signature_request_id';
    kind := lower(payload ->> 'type');
    RETURN _take_callback('webhook', rid, CASE WHEN kind IN ('success', 'update', 'error') THEN kind END,
                          payload ->> 'signature_request_id', payload ->> 'document_id',
                          payload ->> 'signature_id', h ->> 'webhook-id', body);
END
$$;

-------------------------------------------------------------------------------
-- Answers the worker cannot apply
-------------------------------------------------------------------------------
-- _record_unapplied: the worker could not apply an answer (it raised): a
-- failed attempt like any other, retried with backoff and given up
-- visibly after qes_sign.retry_max_attempts
CREATE FUNCTION _record_unapplied(p_item bigint, call_kind text, error text) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, qes_sign, pg_temp AS $$
DECLARE
    w work_items;
BEGIN
    SELECT * INTO w FROM work_items WHERE id = p_item FOR UPDATE;
    IF NOT FOUND OR w.state <> 'pending' THEN
        RETURN 'stale';
    END IF;
    RETURN _retry(w, 'answer could not be applied: ' || _cut(error, 500), call_kind);
END
$$;

-------------------------------------------------------------------------------
-- Rules of every provider: a call failing again and again is given up
-- visibly, signer changes only before anyone signed, checked input, and
-- the provider's deletion date watched (Skribble's own rules, as
-- documented, are in provider-skribble.sql)
-------------------------------------------------------------------------------

-- _give_up ends a call that failed qes_sign.retry_max_attempts times in a
-- row: visible in request_errors and the audit trail; the request itself
-- stays as it is, for an operator (only the provider's status ends it)
CREATE FUNCTION _give_up(w work_items, call_kind text, failure text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    reason text := format('gave up after %s failed attempts (last: %s)', w.failures + 1, failure);
BEGIN
    PERFORM _finish(w.id, 'failed', reason);
    PERFORM _emit(w.request_id, CASE call_kind WHEN 'remind' THEN 'remind_failed'
                                               WHEN 'withdraw' THEN w.kind || '_failed'
                                               ELSE 'call_failed' END,
                  jsonb_build_object('call', call_kind, 'reason', reason, 'failures', w.failures + 1));
    RETURN 'failed';
END
$$;

CREATE OR REPLACE FUNCTION replace_signer(id uuid, old_email text, new_signer jsonb) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, qes_sign, pg_temp AS $$
DECLARE
    r signatur_anfragen := _lock_request(id);
    prev signers;
    n jsonb;
    new_id bigint;
BEGIN
    PERFORM _require_status(r, 'replace a signer of', 'offen', 'in_signatur');
    PERFORM _provider_replace_check(r);
    IF EXISTS (SELECT FROM signers s WHERE s.request_id = r.id AND s.status = 'signed') THEN
        RAISE EXCEPTION 'cannot replace a signer of signature request % once a signer has signed', r.id
            USING ERRCODE = '55000', COLUMN = 'old_email',
                  HINT = 'Skribble allows signer changes only while nobody has signed: withdraw the request and restart it with the right signers.';
    END IF;
    SELECT * INTO prev FROM signers s
     WHERE s.request_id = r.id AND lower(s.email) = lower(btrim(old_email)) AND s.status <> 'replaced';
    IF NOT FOUND THEN
        PERFORM _invalid('old_email', 'is not a signer of this request',
            format('The value is %s.', to_jsonb(old_email)), 'P0002');
    END IF;
    IF prev.status IN ('signed', 'declined') THEN
        RAISE EXCEPTION 'cannot replace signer % who has already %', prev.email, prev.status
            USING ERRCODE = '55000', COLUMN = 'old_email';
    END IF;
    n := _check_signer(new_signer, 'new_signer', r.ordered);
    UPDATE signers s SET status = 'replaced' WHERE s.id = prev.id;
    IF EXISTS (SELECT FROM signers s WHERE s.request_id = r.id AND s.status <> 'replaced'
               AND lower(s.email) = n ->> 'email') THEN
        PERFORM _invalid('new_signer.email', 'is already a signer of this request',
            format('The value is %s.', to_jsonb(n ->> 'email')), '23505');
    END IF;
    INSERT INTO signers (request_id, position, email, first_name, last_name, language, mobile, sequence)
    VALUES (r.id, prev.position, n ->> 'email', n ->> 'first_name', n ->> 'last_name',
            n ->> 'language', n ->> 'mobile', coalesce((n ->> 'sequence')::int, prev.sequence))
    RETURNING signers.id INTO new_id;
    PERFORM _check_sequences(ARRAY(SELECT s.sequence FROM signers s WHERE s.request_id = r.id
                                     AND s.status <> 'replaced'), r.ordered, 'new_signer.sequence');
    UPDATE signers s SET replaced_by = new_id WHERE s.id = prev.id;
    PERFORM _emit(r.id, 'signer_replaced', jsonb_build_object('signer', prev.email, 'by', n ->> 'email'));
    PERFORM _enqueue(r.id, 'replace_signer', jsonb_build_object('old_signer', prev.id, 'new_signer', new_id,
                                                               'old_sid', prev.provider_signer_id, 'old_status', prev.status));
END
$$;

-- _check_sequences: Skribble wants "a real number sequence starting with
-- 1": the distinct sequences are 1..k (signers sharing one sign in parallel)
CREATE FUNCTION _check_sequences(seqs int[], ordered boolean, field text) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    used int[] := ARRAY(SELECT DISTINCT x FROM unnest(seqs) x WHERE x IS NOT NULL ORDER BY 1);
BEGIN
    IF ordered AND used <> ARRAY(SELECT generate_series(1, cardinality(used))) THEN
        PERFORM _invalid(field, 'must run from 1 without gaps',
            format('The sequences are %s; signers sharing a number sign in parallel.', array_to_string(used, ', ')),
            p_hint => 'Number the signing steps 1, 2, 3, ...');
    END IF;
END
$$;

-- _mobile: a mobile number as Skribble's examples write it, country code
-- and digits (41791234567): "+", "00", spaces, dashes, dots, brackets go;
-- a national number (one leading 0) has no country code and is refused
CREATE FUNCTION _mobile(v text, field text) RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    d text := regexp_replace(btrim(v), '[ ./()-]', '', 'g');
BEGIN
    d := CASE WHEN d LIKE '+%' THEN substr(d, 2) WHEN d LIKE '00%' THEN substr(d, 3) ELSE d END;
    IF d !~ '^[1-9][0-9]{7,14}$' THEN
        PERFORM _invalid(field, 'is not a mobile number with country code',
            format('The value is %s.', to_jsonb(v)),
            p_hint => 'Use international format, e.g. +49 151 12345678 (stored as 4915112345678).');
    END IF;
    RETURN d;
END
$$;

CREATE OR REPLACE FUNCTION _check_signer(s jsonb, field text, ordered boolean) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    k text;
    v text;
BEGIN
    IF jsonb_typeof(s) IS DISTINCT FROM 'object' THEN
        PERFORM _invalid(field, 'must be a JSON object');
    END IF;
    FOR k IN SELECT jsonb_object_keys(s) LOOP
        IF k NOT IN ('first_name', 'last_name', 'email', 'language', 'mobile', 'sequence') THEN
            PERFORM _invalid(field || '.' || k, 'is not a known signer field',
                p_hint => 'Use first_name, last_name, email, language, mobile, sequence.');
        END IF;
    END LOOP;
    FOREACH k IN ARRAY ARRAY['first_name', 'last_name', 'email'] LOOP
        IF jsonb_typeof(s -> k) IS DISTINCT FROM 'string' OR btrim(s ->> k) = '' THEN
            PERFORM _invalid(field || '.' || k, 'must be a non-empty string');
        END IF;
        IF length(s ->> k) > 200 THEN
            PERFORM _invalid(field || '.' || k, 'is longer than 200 characters');
        END IF;
    END LOOP;
    v := btrim(s ->> 'email');
    IF v !~ '^[A-Za-z0-9.!#$%&''*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$'
       OR length(v) > 254 OR v ~ '\.\.' THEN
        PERFORM _invalid(field || '.email', 'is not a valid e-mail address',
            format('The value is %s.', to_jsonb(v)));
    END IF;
    IF s ? 'language' AND (jsonb_typeof(s -> 'language') IS DISTINCT FROM 'string'
                           OR s ->> 'language' NOT IN ('de', 'en', 'fr', 'it')) THEN
        PERFORM _invalid(field || '.language', 'must be one of de, en, fr, it');
    END IF;
    IF s ? 'mobile' AND (jsonb_typeof(s -> 'mobile') IS DISTINCT FROM 'string' OR length(s ->> 'mobile') > 40) THEN
        PERFORM _invalid(field || '.mobile', 'is not a mobile number with country code',
            p_hint => 'Use international format, e.g. +49 151 12345678 (stored as 4915112345678).');
    END IF;
    IF s ? 'sequence' AND (jsonb_typeof(s -> 'sequence') IS DISTINCT FROM 'number'
                           OR s ->> 'sequence' !~ '^[0-9]+$'
                           OR (s ->> 'sequence')::numeric NOT BETWEEN 1 AND 50) THEN
        PERFORM _invalid(field || '.sequence', 'must be an integer from 1 to 50');
    END IF;
    IF ordered AND NOT s ? 'sequence' THEN
        PERFORM _invalid(field || '.sequence', 'is required when ordered is true');
    END IF;
    RETURN jsonb_strip_nulls(jsonb_build_object(
        'first_name', btrim(s ->> 'first_name'), 'last_name', btrim(s ->> 'last_name'),
        'email', lower(v), 'language', s ->> 'language',
        'mobile', CASE WHEN s ? 'mobile' THEN _mobile(s ->> 'mobile', field || '.mobile') END,
        'sequence', (s ->> 'sequence')::int));
END
$$;

CREATE OR REPLACE FUNCTION _check_signers(signers jsonb, ordered boolean) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    result jsonb := '[]';
    s jsonb;
    i int := 0;
    dup text;
BEGIN
    IF jsonb_typeof(signers) IS DISTINCT FROM 'array' THEN
        PERFORM _invalid('signers', 'must be a JSON array of signer objects');
    END IF;
    IF jsonb_array_length(signers) NOT BETWEEN 1 AND 50 THEN
        PERFORM _invalid('signers', 'must list 1 to 50 signers',
            format('%s signers were given.', jsonb_array_length(signers)));
    END IF;
    FOR s IN SELECT * FROM jsonb_array_elements(signers) LOOP
        result := result || jsonb_build_array(
            _check_signer(s, format('signers[%s]', i), ordered));
        i := i + 1;
    END LOOP;
    SELECT e ->> 'email' INTO dup FROM jsonb_array_elements(result) e
     GROUP BY 1 HAVING count(*) > 1 LIMIT 1;
    IF dup IS NOT NULL THEN
        PERFORM _invalid('signers', 'lists an e-mail address twice',
            format('%s appears more than once.', to_jsonb(dup)), '23505');
    END IF;
    PERFORM _check_sequences(ARRAY(SELECT (e ->> 'sequence')::int FROM jsonb_array_elements(result) e),
                             ordered, 'signers.sequence');
    RETURN result;
END
$$;

-- Skribble deletes each request on its expiration_date: kept, shown, and
-- archived before it
ALTER TABLE signatur_anfragen ADD COLUMN deletion_date date;
ALTER TABLE signatur_anfragen ADD COLUMN deletion_alarm_at timestamptz;
COMMENT ON COLUMN signatur_anfragen.deletion_date IS
    'The day the trust service deletes the request (Skribble: expiration_date); archived before it';
CREATE INDEX signatur_anfragen_deletion ON signatur_anfragen (deletion_date) WHERE status = 'vollstaendig';

-- _deletes_soon: archiving is still pending within a day of the deletion
CREATE FUNCTION _deletes_soon(deletion_date date) RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT deletion_date <= (qes_sign.clock() AT TIME ZONE 'Europe/Berlin')::date + 1
$$;

-- _date reads an ISO 8601 date from Skribble's JSON, naming the field if it is bad
CREATE FUNCTION _date(value text, field text) RETURNS date
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN left(value, 10)::date;
EXCEPTION WHEN invalid_datetime_format OR datetime_field_overflow THEN
    PERFORM _invalid(field, 'is not an ISO 8601 date', format('The value is %s.', to_jsonb(_cut(value, 100))));
END
$$;

-------------------------------------------------------------------------------
-- The audit trail: its head moves only with the chain, and the chain is
-- anchored outside the database (the archive bucket, under _audit/)
-------------------------------------------------------------------------------
CREATE FUNCTION _audit_head_guard() RETURNS trigger
    LANGUAGE c AS 'MODULE_PATHNAME', 'qes_sign_audit_head_guard';
CREATE TRIGGER head_guard BEFORE INSERT OR UPDATE ON audit_head
    FOR EACH ROW EXECUTE FUNCTION _audit_head_guard();
ALTER TABLE audit_head ENABLE ALWAYS TRIGGER head_guard;
ALTER TABLE audit_head ENABLE ROW LEVEL SECURITY;
CREATE POLICY admin ON audit_head TO qes_sign_admin USING (true);

CREATE TABLE audit_anchors (
    seq          bigint PRIMARY KEY,
    hash         bytea NOT NULL,
    bucket       text NOT NULL,
    key          text NOT NULL,
    anchored_at  timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE audit_anchors IS
    'Chain heads written to the archive bucket (a local note; verify_audit_chain reads the bucket)';
SELECT pg_catalog.pg_extension_config_dump('audit_anchors', '');

-- work items without a request: the anchor
ALTER TABLE work_items ALTER request_id DROP NOT NULL;
ALTER TABLE work_items DROP CONSTRAINT work_items_kind_check;
ALTER TABLE work_items ADD CONSTRAINT work_items_kind_check CHECK (kind IN
    ('submit', 'refresh', 'remind', 'withdraw', 'replace_signer', 'archive', 'expire', 'anchor', 'discard'));
ALTER TABLE work_items ADD CONSTRAINT work_items_request_check
    CHECK ((request_id IS NULL) = (kind = 'anchor'));
CREATE UNIQUE INDEX work_items_one_anchor ON work_items (kind) WHERE state = 'pending' AND kind = 'anchor';

-- _anchor_prefix: where this database's anchors live in the bucket
CREATE FUNCTION _anchor_prefix() RETURNS text LANGUAGE sql STABLE AS $$
    SELECT '_audit/' || current_database() || '/'
$$;

-- _anchor: the anchor of the current head: its key (newest first in a
-- listing: the number is 2^63 - 1 - seq; the hash in the name keeps an
-- anchor of a rewritten chain from replacing the genuine one of the same
-- entry), and the JSON written there, with
-- the hash of every entry since the previous anchor (at most 10,000, evenly
-- spread, the head always) so that a rewrite is located, not only noticed
CREATE FUNCTION _anchor(OUT seq bigint, OUT hash bytea, OUT key text, OUT body bytea)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    prev audit_anchors;
    step bigint;
BEGIN
    SELECT l.seq, l.hash INTO seq, hash FROM audit_log l ORDER BY l.seq DESC LIMIT 1;
    IF seq IS NULL THEN
        RETURN;
    END IF;
    SELECT * INTO prev FROM audit_anchors a WHERE a.seq < _anchor.seq ORDER BY a.seq DESC LIMIT 1;
    step := greatest(1, ceil((seq - coalesce(prev.seq, 0)) / 10000.0)::bigint);
    key := format('%s%s-%s-%s.json', _anchor_prefix(), lpad((9223372036854775807 - seq)::text, 19, '0'),
                  seq, left(encode(hash, 'hex'), 16));
    body := convert_to(jsonb_build_object(
        'format', 'qes_sign-audit-anchor-v1', 'database', current_database(),
        'seq', seq, 'hash', encode(hash, 'hex'), 'at', _iso(clock()),
        'previous', CASE WHEN prev.seq IS NOT NULL
                         THEN jsonb_build_object('seq', prev.seq, 'hash', encode(prev.hash, 'hex')) END,
        'entries', (SELECT jsonb_agg(jsonb_build_array(l.seq, encode(l.hash, 'hex')) ORDER BY l.seq)
                      FROM audit_log l
                     WHERE l.seq > coalesce(prev.seq, 0) AND l.seq <= _anchor.seq
                       AND (_anchor.seq - l.seq) % step = 0))::text, 'UTF8');
END
$$;

-- _anchor_headers: JSON, and object lock until the longest retention ends
CREATE FUNCTION _anchor_headers() RETURNS text[] LANGUAGE sql STABLE AS $$
    SELECT ARRAY['Content-Type: application/json']
        || CASE WHEN current_setting('qes_sign.s3_object_lock') <> 'off' THEN ARRAY[
               'x-amz-object-lock-mode: ' || upper(current_setting('qes_sign.s3_object_lock')),
               'x-amz-object-lock-retain-until-date: '
               || to_char(clock() AT TIME ZONE 'UTC'
                          + make_interval(years => (SELECT max(retention_years) + 1 FROM qes_sign.vorgangstypen)),
                          'YYYY-MM-DD') || 'T23:59:59Z']
           ELSE '{}' END
$$;

-- anchor_audit_chain: writes the current head to the bucket now (the worker
-- does the same every qes_sign.audit_anchor_interval and after each
-- archived request); returns the object key
CREATE FUNCTION anchor_audit_chain() RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, qes_sign, pg_temp AS $$
DECLARE
    a record;
    got record;
BEGIN
    PERFORM _require_admin('anchor the audit chain');
    IF NOT _s3_configured() THEN
        RAISE EXCEPTION 'the archive bucket is not configured' USING ERRCODE = '55000',
            HINT = 'Set qes_sign.s3_endpoint, qes_sign.s3_bucket and the S3 credentials, then reload.';
    END IF;
    LOCK TABLE audit_anchors IN SHARE ROW EXCLUSIVE MODE;   -- one anchor at a time
    a := _anchor();
    IF a.seq IS NULL THEN
        RAISE EXCEPTION 'the audit trail is empty' USING ERRCODE = '55000';
    END IF;
    got := _s3_request('PUT', current_setting('qes_sign.s3_bucket'), a.key, NULL, a.body, _anchor_headers());
    IF got.error IS NOT NULL OR got.status NOT BETWEEN 200 AND 299 THEN
        RAISE EXCEPTION 'could not write the audit anchor %', a.key
            USING ERRCODE = '58030', DETAIL = coalesce(got.error, _s3_message(got.body, got.status));
    END IF;
    INSERT INTO audit_anchors (seq, hash, bucket, key) VALUES (a.seq, a.hash, current_setting('qes_sign.s3_bucket'), a.key)
    ON CONFLICT (seq) DO UPDATE SET anchored_at = now();
    RETURN a.key;
END
$$;
COMMENT ON FUNCTION anchor_audit_chain() IS
    'Writes the head of the audit chain (and the entries since the last anchor) to the bucket under _audit/; admin';

-- _enqueue_anchor asks the worker for an anchor; one already in flight runs
-- again when it is done, since it anchored an older head
CREATE FUNCTION _enqueue_anchor() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO work_items AS x (request_id, kind) VALUES (NULL, 'anchor')
    ON CONFLICT (kind) WHERE state = 'pending' AND kind = 'anchor'
    DO UPDATE SET payload = x.payload || '{"again": true}' WHERE x.leased_until IS NOT NULL;
    PERFORM _wake_at_commit();
END
$$;

-- _anchor_call: the worker's PUT of the current head (NULL and done when
-- the head is anchored already)
CREATE FUNCTION _anchor_call(w work_items) RETURNS api_call LANGUAGE plpgsql AS $$
DECLARE
    a record := _anchor();
BEGIN
    IF a.seq IS NULL OR a.seq <= (SELECT coalesce(max(seq), 0) FROM audit_anchors) THEN
        PERFORM _finish(w.id, 'done');
        RETURN NULL;
    END IF;
    UPDATE work_items SET payload = payload || jsonb_build_object('seq', a.seq, 'hash', encode(a.hash, 'hex'),
                                                                  'key', a.key)
     WHERE id = w.id;
    RETURN ROW(w.id, NULL, 'put:anchor', 's3', 'PUT', a.key, NULL, a.body, _anchor_headers(), NULL)::api_call;
END
$$;

-- _anchor_stored records a PUT the bucket took
CREATE FUNCTION _anchor_stored(w work_items) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO audit_anchors (seq, hash, bucket, key)
    VALUES ((w.payload ->> 'seq')::bigint, decode(w.payload ->> 'hash', 'hex'),
            current_setting('qes_sign.s3_bucket'), w.payload ->> 'key')
    ON CONFLICT (seq) DO NOTHING;
    IF w.payload ? 'again' THEN
        RETURN _again(w.id, '0', '{}');
    END IF;
    RETURN _finish(w.id, 'done');
END
$$;

-- _anchor_keys lists the newest anchors in the bucket, newest first: at
-- most depth of them, every one for depth 0 (page by page)
CREATE FUNCTION _anchor_keys(depth int, OUT keys text[], OUT error text)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    got record;
    page text[];
    want int;
BEGIN
    keys := '{}';
    LOOP
        want := CASE WHEN depth > 0 THEN least(1000, depth - cardinality(keys)) ELSE 1000 END;
        EXIT WHEN want <= 0;
        -- the query in SigV4's canonical order: names sorted, values encoded
        got := _s3_request('GET', current_setting('qes_sign.s3_bucket'), '',
                           format('list-type=2&max-keys=%s&prefix=%s', want, _url_escape(_anchor_prefix()))
                           || coalesce('&start-after=' || _url_escape(keys[cardinality(keys)]), ''));
        IF got.error IS NOT NULL OR got.status <> 200 THEN
            error := coalesce(got.error, _s3_message(got.body, got.status));
            RETURN;
        END IF;
        page := xpath('//*[local-name()="Contents"]/*[local-name()="Key"]/text()',
                      convert_from(got.body, 'UTF8')::xml)::text[];
        keys := keys || page;
        EXIT WHEN cardinality(page) < want;
    END LOOP;
END
$$;

-- _anchor_check compares the chain with anchors in the bucket (see
-- _anchor_keys): an entry whose hash differs from an anchor's was
-- rewritten; an anchor beyond the last entry means the trail was cut
CREATE FUNCTION _anchor_check(depth int, OUT first_broken bigint, OUT problem text,
                              OUT anchored_seq bigint, OUT anchor_check text)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    listed record;
    got record;
    k text;
    anchor jsonb;
    n bigint;
    last_seq bigint := (SELECT max(seq) FROM audit_log);
    bad bigint;
    read int := 0;
BEGIN
    IF NOT _s3_configured() THEN
        anchor_check := 'not checked: the archive bucket is not configured';
        RETURN;
    END IF;
    listed := _anchor_keys(depth);
    IF listed.error IS NOT NULL THEN
        anchor_check := 'not checked: the anchors could not be listed: ' || listed.error;
        RETURN;
    END IF;
    FOREACH k IN ARRAY listed.keys LOOP
        got := _s3_request('GET', current_setting('qes_sign.s3_bucket'), k);
        CONTINUE WHEN got.error IS NOT NULL OR got.status <> 200 OR NOT _is_json(got.body);
        anchor := convert_from(got.body, 'UTF8')::jsonb;
        n := (anchor ->> 'seq')::bigint;
        read := read + 1;
        anchored_seq := greatest(anchored_seq, n);
        IF n > coalesce(last_seq, 0) THEN
            bad := coalesce(last_seq, 0) + 1;
        ELSE
            SELECT min((e ->> 0)::bigint) INTO bad
              FROM jsonb_array_elements(anchor -> 'entries') e
              LEFT JOIN audit_log l ON l.seq = (e ->> 0)::bigint
             WHERE l.hash IS DISTINCT FROM decode(e ->> 1, 'hex');
        END IF;
        IF bad < first_broken OR (bad IS NOT NULL AND first_broken IS NULL) THEN
            first_broken := bad;
            problem := CASE WHEN n > coalesce(last_seq, 0)
                            THEN format('entries %s to %s are missing: the trail ends before its anchor %s', bad, n, k)
                            ELSE format('entry %s differs from its anchor %s: the trail was rewritten', bad, k) END;
        END IF;
    END LOOP;
    anchor_check := CASE WHEN read = 0 THEN format('no anchors under %s', _anchor_prefix())
                         ELSE format('checked against %s anchor(s) under %s, the newest of entry %s',
                                     read, _anchor_prefix(), anchored_seq) END;
END
$$;

DROP FUNCTION verify_audit_chain();
CREATE FUNCTION verify_audit_chain(anchors int DEFAULT 20, OUT ok boolean, OUT entries bigint, OUT first_broken bigint,
                                   OUT problem text, OUT anchored_seq bigint, OUT anchor_check text)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, qes_sign, pg_temp AS $$
DECLARE
    head audit_head;
    last audit_log;
    a record;
BEGIN
    SELECT count(*) INTO entries FROM audit_log;
    SELECT b.seq, b.problem INTO first_broken, problem FROM (
        SELECT l.seq,
               CASE
                 WHEN l.seq <> coalesce(lag(l.seq) OVER w, 0) + 1
                     THEN format('entry %s is missing', coalesce(lag(l.seq) OVER w, 0) + 1)
                 WHEN l.prev_hash <> coalesce(lag(l.hash) OVER w, '\x'::bytea || decode(repeat('00', 32), 'hex'))
                     THEN format('entry %s does not chain to entry %s', l.seq, l.seq - 1)
                 WHEN l.hash IS DISTINCT FROM audit_hash(l.prev_hash, l.seq, l.at, l.request_id,
                                                         l.verwaltung, l.event, l.actor, l.detail)
                     THEN format('entry %s was altered', l.seq)
               END AS problem
          FROM audit_log l WINDOW w AS (ORDER BY l.seq)) b
     WHERE b.problem IS NOT NULL ORDER BY b.seq LIMIT 1;
    IF first_broken IS NULL THEN
        SELECT * INTO head FROM audit_head;
        SELECT * INTO last FROM audit_log ORDER BY seq DESC LIMIT 1;
        IF coalesce(head.seq, 0) <> coalesce(last.seq, 0) THEN
            first_broken := coalesce(last.seq, 0) + 1;
            problem := format('entries %s to %s are missing', first_broken, head.seq);
        ELSIF head.hash IS DISTINCT FROM last.hash THEN
            first_broken := last.seq;
            problem := format('entry %s is not the head of the chain', last.seq);
        END IF;
    END IF;
    -- a chain that is consistent in itself may still have been recomputed:
    -- the anchors outside the database tell
    a := _anchor_check(coalesce(anchors, 20));
    anchored_seq := a.anchored_seq;
    anchor_check := a.anchor_check;
    IF first_broken IS NULL AND a.first_broken IS NOT NULL THEN
        first_broken := a.first_broken;
        problem := a.problem;
    END IF;
    ok := first_broken IS NULL;
END
$$;
COMMENT ON FUNCTION verify_audit_chain(int) IS
    'Checks the hash chain of the whole audit trail and the newest anchors in the bucket (0: all of them); names the first broken entry';

-------------------------------------------------------------------------------
-- The worker: anchors, and answers it cannot apply
-------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION _archive_finish(w work_items, r signatur_anfragen) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO archive_objects AS o (request_id, kind, bucket, key, sha256, size, content_type,
                                      stored_at, verified_at)
    SELECT g.request_id, g.kind, current_setting('qes_sign.s3_bucket'), g.key, g.sha256,
           g.size, g.content_type, g.stored_at, g.verified_at
      FROM archive_staging g WHERE g.request_id = r.id
    ON CONFLICT (request_id, kind) DO UPDATE
       SET bucket = excluded.bucket, key = excluded.key, sha256 = excluded.sha256, size = excluded.size,
           content_type = excluded.content_type, stored_at = excluded.stored_at,
           verified_at = excluded.verified_at;
    PERFORM _emit(r.id, 'archived', jsonb_build_object(
        'bucket', current_setting('qes_sign.s3_bucket'), 'retention_until', r.retention_until,
        'objects', (SELECT jsonb_agg(jsonb_build_object('kind', g.kind, 'key', g.key,
                        'sha256', encode(g.sha256, 'hex'), 'size', g.size) ORDER BY g.kind)
                      FROM archive_staging g WHERE g.request_id = r.id)));
    PERFORM _transition(r.id, 'archiviert');
    DELETE FROM archive_staging WHERE request_id = r.id;
    PERFORM _finish(w.id, 'done');
    PERFORM _enqueue_anchor();
END
$$;

-- _retry: archiving and anchoring are never given up (a signed contract,
-- the evidence of the trail): the auditors are told, the worker keeps trying
CREATE OR REPLACE FUNCTION _retry(w work_items, failure text, call_kind text DEFAULT NULL, http_status int DEFAULT 0,
                       retry_after int DEFAULT 0) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    keeps_trying boolean := w.kind IN ('archive', 'anchor');
BEGIN
    IF keeps_trying AND w.failures + 1 = current_setting('qes_sign.retry_max_attempts')::int THEN
        PERFORM _emit(w.request_id, w.kind || '_failing', jsonb_build_object(
            'reason', failure, 'failures', w.failures + 1));
    ELSIF NOT keeps_trying AND w.failures + 1 >= current_setting('qes_sign.retry_max_attempts')::int THEN
        RETURN _give_up(w, call_kind, failure);
    END IF;
    RETURN _again(w.id, CASE WHEN http_status IN (429, 503) AND retry_after > 0
                             THEN make_interval(secs => retry_after) ELSE _backoff(w.failures + 1) END,
                  '{}', failure, 'retry');
END
$$;

-- _record_same: the state answers of one step of the worker that equal
-- the last state applied in full (answer_sha): each only marks its request
-- synced and its refresh done, in one statement for all of them (the steady
-- state of reconciliation).  Not for a refresh asked to run again, nor for
-- a Yousign answer that says a rate-limit window is used up.  Returns the
-- work items it settled; the worker records the others one by one.
CREATE FUNCTION _record_same(items bigint[], bodies bytea[]) RETURNS SETOF bigint
LANGUAGE plpgsql SET search_path = pg_catalog, qes_sign, pg_temp AS $$
DECLARE
    item bigint;
    body bytea;
    rid uuid;
BEGIN
    FOR item, body IN SELECT * FROM unnest(items, bodies) LOOP
        SELECT w.request_id INTO rid FROM work_items w
         WHERE w.id = item AND w.state = 'pending' AND w.kind = 'refresh' AND NOT w.payload ? 'again';
        CONTINUE WHEN NOT FOUND;
        UPDATE signatur_anfragen a SET synced_at = clock()
         WHERE a.id = rid AND a.provider <> 'yousign' AND a.answer_sha = sha256(body);
        CONTINUE WHEN NOT FOUND;
        UPDATE work_items w SET state = 'done', last_error = NULL, failures = 0, leased_until = NULL,
               finished_at = clock()
         WHERE w.id = item;
        RETURN NEXT item;
    END LOOP;
END
$$;

CREATE OR REPLACE FUNCTION _record_result(p_item bigint, call_kind text, http_status int, body bytea,
                               retry_after int, transport_error text, headers text DEFAULT NULL)
RETURNS text LANGUAGE plpgsql SET search_path = pg_catalog, qes_sign, pg_temp AS $$
DECLARE
    w work_items;
    provider text;
    answer jsonb;
    outcome text;
    ok boolean := transport_error IS NULL AND http_status BETWEEN 200 AND 299;
BEGIN
    SELECT * INTO w FROM work_items WHERE id = p_item FOR UPDATE;
    IF NOT FOUND OR w.state <> 'pending' THEN
        RETURN 'stale';
    END IF;
    SELECT a.provider INTO provider FROM signatur_anfragen a WHERE a.id = w.request_id;
    IF call_kind NOT LIKE 'put:%' AND call_kind NOT LIKE 'head:%' AND w.kind <> 'anchor' THEN
        PERFORM _provider_limits(provider, http_status, retry_after, headers);
    END IF;
    IF w.kind IN ('archive', 'anchor') THEN
        IF w.kind = 'archive' AND call_kind ~ '^(put|head):' THEN
            UPDATE archive_staging SET leased_until = NULL
             WHERE request_id = w.request_id AND kind = split_part(call_kind, ':', 2);
        END IF;
        -- nothing about archiving is final: the request stays vollstaendig
        IF ok THEN
            RETURN CASE w.kind WHEN 'anchor' THEN _anchor_stored(w)
                               ELSE _archive_answer(w, call_kind, body, headers) END;
        ELSIF call_kind LIKE 'head:%' AND http_status = 404 THEN
            UPDATE archive_staging SET stored_at = NULL
             WHERE request_id = w.request_id AND kind = split_part(call_kind, ':', 2);
        END IF;
        RETURN _retry(w, coalesce(transport_error, CASE WHEN call_kind LIKE 'fetch:%'
                                  THEN format('%s: HTTP %s: %s', initcap(provider), http_status,
                                              (_provider_message(provider, body, http_status)).message)
                                  ELSE 'S3: ' || _s3_message(body, http_status) END),
                      call_kind, http_status, retry_after);
    END IF;
    IF ok AND call_kind = 'get' AND NOT w.payload ? 'again' THEN
        -- the same state as the last one applied: nothing to apply
        UPDATE signatur_anfragen a SET synced_at = clock()
         WHERE a.id = w.request_id AND a.answer_sha = sha256(body);
        IF FOUND THEN
            RETURN _finish(w.id, 'done');
        END IF;
    END IF;
    IF ok THEN
        BEGIN
            answer := CASE WHEN length(body) > 0 THEN convert_from(body, 'UTF8')::jsonb END;
        EXCEPTION WHEN OTHERS THEN
            transport_error := 'answer is not JSON: ' || _cut(SQLERRM, 200);
        END;
        IF transport_error IS NULL THEN
            outcome := _provider_answer(provider, w, call_kind, answer);
            IF call_kind = 'get' AND outcome = 'done' THEN
                UPDATE signatur_anfragen a SET answer_sha = sha256(body) WHERE a.id = w.request_id;
            END IF;
            RETURN outcome;
        END IF;
    END IF;
    RETURN _provider_failure(provider, w, call_kind, http_status, body, retry_after, transport_error);
END
$$;

CREATE OR REPLACE FUNCTION _call_for(w work_items) RETURNS api_call
LANGUAGE plpgsql AS $$
DECLARE
    r signatur_anfragen;
BEGIN
    IF w.kind = 'anchor' THEN
        RETURN _anchor_call(w);
    END IF;
    SELECT * INTO r FROM signatur_anfragen WHERE id = w.request_id;
    IF w.kind <> 'submit' THEN
        -- only a submit sends the document; passed on as part of r, a
        -- 40 MB PDF would be read and copied by every call that takes r
        r.document := NULL;
    END IF;
    RETURN _provider_call(w, r);
END
$$;

-- _claimable: a due item the worker may take now.  Archive and anchor need
-- the bucket; a provider's calls need it ready (Skribble: a session token;
-- Yousign: an API key) and not paused by its rate limit, and calls about a
-- request need it to exist there.  Archiving whose provider objects are
-- all fetched is S3 work only, and never waits for the provider.
CREATE FUNCTION _claimable(kind text, provider text, provider_id text, ready text[], fetched boolean)
RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN kind IN ('archive', 'anchor') AND NOT qes_sign._s3_configured() THEN false
                WHEN kind = 'anchor' OR (kind = 'archive' AND fetched) THEN true
                WHEN NOT provider = ANY (ready) THEN false
                ELSE kind IN ('submit', 'archive', 'discard') OR provider_id IS NOT NULL END
$$;

-- _ready: the providers the worker can call now, less those paused
CREATE FUNCTION _ready(ready text[]) RETURNS text[]
LANGUAGE sql STABLE AS $$
    SELECT ARRAY(SELECT unnest(ready) EXCEPT
                 SELECT p.provider FROM qes_sign.provider_pauses p WHERE p.until > qes_sign.clock())
$$;

-- _fetched: every object of the provider is staged for the archive
CREATE FUNCTION _fetched(request_id uuid) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT count(*) = 3 FROM qes_sign.archive_staging g
     WHERE g.request_id = _fetched.request_id AND g.kind IN ('signed_pdf', 'protocol_pdf', 'protocol_json')
$$;

DROP FUNCTION _claim(int);
CREATE FUNCTION _claim(n int, ready text[] DEFAULT '{skribble,yousign}') RETURNS SETOF api_call
LANGUAGE plpgsql SET search_path = pg_catalog, qes_sign, pg_temp AS $$
DECLARE
    item work_items;
    call api_call;
    ids bigint[];
    reserve int;
    spare int;
    taken int;
BEGIN
    ready := _ready(ready);
    -- verified callbacks become one refresh per request; one already in
    -- flight runs again when it is done, since it may have read older state
    WITH d AS (UPDATE callback_inbox SET processed_at = clock()
                WHERE processed_at IS NULL AND request_id IS NOT NULL RETURNING request_id)
    INSERT INTO work_items AS x (request_id, kind)
    SELECT DISTINCT d.request_id, 'refresh' FROM d
      JOIN signatur_anfragen a ON a.id = d.request_id AND a.status IN ('offen', 'in_signatur')
    ON CONFLICT (request_id, kind) WHERE state = 'pending' AND kind <> 'replace_signer'
    DO UPDATE SET payload = x.payload || '{"again": true}' WHERE x.leased_until IS NOT NULL;
    UPDATE callback_inbox SET processed_at = clock() WHERE processed_at IS NULL AND request_id IS NULL;

    -- archiving a request that Skribble deletes within a day goes first
    ids := ARRAY(SELECT w.id FROM signatur_anfragen a JOIN work_items w ON w.request_id = a.id
                  WHERE a.status = 'vollstaendig' AND _deletes_soon(a.deletion_date)
                    AND w.kind = 'archive' AND w.state = 'pending' AND w.due_at <= clock()
                    AND (w.leased_until IS NULL OR w.leased_until < clock()) AND _s3_configured()
                    AND _archive_open(w.request_id)
                  ORDER BY a.deletion_date, w.id LIMIT n
                    FOR UPDATE OF w SKIP LOCKED);
    -- calls about a request's state go before archiving, so that a
    -- completion never waits behind uploads; archiving keeps a quarter of
    -- the room while it is due (it never starves)
    reserve := CASE WHEN cardinality(ids) < n AND EXISTS (
                        SELECT FROM work_items w WHERE w.state = 'pending' AND w.kind = 'archive'
                           AND w.due_at <= clock() AND (w.leased_until IS NULL OR w.leased_until < clock())
                           AND _archive_open(w.request_id))
                    THEN greatest(1, (n - cardinality(ids)) / 4) ELSE 0 END;
    ids := ids || ARRAY(SELECT w.id FROM work_items w LEFT JOIN signatur_anfragen a ON a.id = w.request_id
                         WHERE w.state = 'pending' AND w.kind <> 'archive' AND w.due_at <= clock()
                           AND (w.leased_until IS NULL OR w.leased_until < clock())
                           AND _claimable(w.kind, a.provider, a.provider_id, ready, false)
                         ORDER BY w.due_at, w.id LIMIT greatest(n - cardinality(ids) - reserve, 0)
                           FOR UPDATE OF w SKIP LOCKED);
    ids := ids || ARRAY(SELECT w.id FROM work_items w JOIN signatur_anfragen a ON a.id = w.request_id
                         WHERE w.state = 'pending' AND w.kind = 'archive' AND w.due_at <= clock()
                           AND (w.leased_until IS NULL OR w.leased_until < clock())
                           AND _claimable(w.kind, a.provider, a.provider_id, ready, _fetched(w.request_id))
                           AND _archive_open(w.request_id) AND w.id <> ALL (ids)
                         ORDER BY w.due_at, w.id LIMIT n - cardinality(ids)
                           FOR UPDATE OF w SKIP LOCKED);
    -- room left by the items claimed goes to uploading a request's objects in parallel
    spare := n - cardinality(ids);
    FOR item IN
        UPDATE work_items x SET leased_until = clock() + interval '10 minutes', attempts = x.attempts + 1
         WHERE x.id = ANY (ids)
        RETURNING x.*
    LOOP
        IF item.kind = 'archive' THEN
            taken := 0;
            -- (after a failure, one object at a time until S3 answers again)
            FOR call IN SELECT * FROM _archive_calls(item, CASE WHEN item.failures > 0 THEN 1 ELSE 1 + spare END) LOOP
                RETURN NEXT call;
                taken := taken + 1;
            END LOOP;
            spare := spare - greatest(taken - 1, 0);
            CONTINUE;
        END IF;
        call := _call_for(item);
        IF call.item_id IS NOT NULL THEN
            RETURN NEXT call;
        END IF;
    END LOOP;
END
$$;

DROP FUNCTION _next_due();
CREATE FUNCTION _next_due(ready text[] DEFAULT '{skribble,yousign}') RETURNS double precision
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, qes_sign, pg_temp AS $$
DECLARE
    calls timestamptz;
    archive timestamptz;
BEGIN
    -- the first claimable item of each queue in due order: index scans that
    -- stop early, not an aggregate over the whole queue
    ready := _ready(ready);
    SELECT w.due_at INTO calls FROM work_items w LEFT JOIN signatur_anfragen a ON a.id = w.request_id
     WHERE w.state = 'pending' AND w.kind <> 'archive'
       AND (w.leased_until IS NULL OR w.leased_until < clock())
       AND _claimable(w.kind, a.provider, a.provider_id, ready, false)
     ORDER BY w.due_at, w.id LIMIT 1;
    SELECT w.due_at INTO archive FROM work_items w JOIN signatur_anfragen a ON a.id = w.request_id
     WHERE w.state = 'pending' AND w.kind = 'archive'
       AND (w.leased_until IS NULL OR w.leased_until < clock())
       AND _claimable(w.kind, a.provider, a.provider_id, ready, _fetched(w.request_id))
       AND _archive_open(w.request_id)
     ORDER BY w.due_at, w.id LIMIT 1;
    IF calls IS NULL AND archive IS NULL THEN
        RETURN NULL;    -- nothing queued: the worker waits a tick (greatest(0, NULL) is 0)
    END IF;
    RETURN greatest(0, extract(epoch FROM least(calls, archive) - clock()) * 1000);
END
$$;

-- _anchor_due: the head moved since the last anchor, and that anchor is
-- older than qes_sign.audit_anchor_interval (every second: index lookups only)
CREATE FUNCTION _anchor_due() RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT qes_sign._s3_configured()
       AND coalesce((SELECT max(seq) FROM qes_sign.audit_log), 0)
           > coalesce((SELECT max(seq) FROM qes_sign.audit_anchors), 0)
       AND coalesce((SELECT anchored_at FROM qes_sign.audit_anchors ORDER BY seq DESC LIMIT 1), '-infinity')
           < qes_sign.clock() - current_setting('qes_sign.audit_anchor_interval')::interval
$$;

CREATE INDEX work_items_polls ON work_items (created_at) WHERE kind = 'refresh' AND payload ? 'poll';
-- the worker's scans, index-backed so that they cost the same at any depth:
-- its two queues (calls, archiving) in due order, reconciliation, expiry,
-- and the clean-up of finished items, processed callbacks and webhook ids
CREATE INDEX work_items_due_calls ON work_items (due_at, id) WHERE state = 'pending' AND kind <> 'archive';
CREATE INDEX work_items_due_archive ON work_items (due_at, id) WHERE state = 'pending' AND kind = 'archive';
CREATE INDEX work_items_finished ON work_items (finished_at) WHERE state <> 'pending';
CREATE INDEX signatur_anfragen_unsynced ON signatur_anfragen (provider, (coalesce(synced_at, sent_at)))
    WHERE status IN ('offen', 'in_signatur') AND provider_id IS NOT NULL;
CREATE INDEX signatur_anfragen_expiry ON signatur_anfragen (expires_at) WHERE status IN ('offen', 'in_signatur');
CREATE INDEX callback_inbox_processed ON callback_inbox (processed_at) WHERE processed_at IS NOT NULL;
CREATE INDEX webhook_ids_received ON webhook_ids (received_at);

-- _poll_budget: reconciliation refreshes a provider may still get this
-- minute: its hourly budget (qes_sign.yousign_poll_budget) spread over the
-- hour, less the polls of the last minute.  Webhooks make polls rare.
CREATE FUNCTION _poll_budget(p_provider text) RETURNS int
LANGUAGE sql STABLE AS $$
    SELECT greatest(0, ceil(current_setting('qes_sign.' || p_provider || '_poll_budget')::int / 60.0)::int
                       - (SELECT count(*) FROM qes_sign.work_items w JOIN qes_sign.signatur_anfragen a ON a.id = w.request_id
                           WHERE w.kind = 'refresh' AND w.payload ? 'poll' AND a.provider = p_provider
                             AND w.created_at > qes_sign.clock() - interval '1 minute')::int)
$$;

CREATE OR REPLACE FUNCTION _tick() RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, qes_sign, pg_temp AS $$
DECLARE
    r signatur_anfragen;
    schedule text[] := string_to_array(replace(current_setting('qes_sign.auto_remind'), ' ', ''), ',');
BEGIN
    -- lost callbacks only delay: fetch every open request now and then,
    -- within the provider's polling budget (_poll_budget)
    INSERT INTO work_items (request_id, kind, payload)
    SELECT a.id, 'refresh', '{"poll": true}' FROM signatur_anfragen a
     WHERE a.status IN ('offen', 'in_signatur') AND a.provider_id IS NOT NULL AND a.provider = 'skribble'
       AND coalesce(a.synced_at, a.sent_at) < clock() - current_setting('qes_sign.reconcile_interval')::interval
    ON CONFLICT (request_id, kind) WHERE state = 'pending' AND kind <> 'replace_signer' DO NOTHING;
    INSERT INTO work_items (request_id, kind, payload)
    SELECT x.id, 'refresh', '{"poll": true}'
      FROM (SELECT a.id FROM signatur_anfragen a
             WHERE a.status IN ('offen', 'in_signatur') AND a.provider_id IS NOT NULL AND a.provider = 'yousign'
               AND coalesce(a.synced_at, a.sent_at) < clock() - current_setting('qes_sign.reconcile_interval')::interval
             ORDER BY coalesce(a.synced_at, a.sent_at) LIMIT _poll_budget('yousign')) x
    ON CONFLICT (request_id, kind) WHERE state = 'pending' AND kind <> 'replace_signer' DO NOTHING;

    FOR r IN SELECT * FROM signatur_anfragen a
              WHERE a.status IN ('offen', 'in_signatur') AND a.expires_at <= clock()
                AND NOT EXISTS (SELECT FROM work_items w WHERE w.request_id = a.id AND w.kind = 'expire')
                FOR UPDATE SKIP LOCKED LOOP
        IF r.provider_id IS NOT NULL THEN
            PERFORM _enqueue(r.id, 'expire');
        ELSIF NOT EXISTS (SELECT FROM work_items w WHERE w.request_id = r.id AND w.kind = 'submit'
                            AND w.state = 'pending' AND (w.payload ? 'posted' OR w.leased_until IS NOT NULL)) THEN
            PERFORM _transition(r.id, 'abgebrochen', 'expired');  -- never reached Skribble
        END IF;
    END LOOP;

    IF array_length(schedule, 1) = 3 THEN
        INSERT INTO work_items (request_id, kind, payload)
        SELECT a.id, 'remind', '{"auto": true}' FROM signatur_anfragen a
         CROSS JOIN LATERAL (SELECT count(*) AS n FROM work_items w
                              WHERE w.request_id = a.id AND w.kind = 'remind' AND w.payload ? 'auto') k
         WHERE a.status IN ('offen', 'in_signatur') AND a.provider_id IS NOT NULL
           AND k.n < schedule[3]::int
           AND clock() >= a.sent_at + schedule[1]::interval + schedule[2]::interval * k.n
        ON CONFLICT (request_id, kind) WHERE state = 'pending' AND kind <> 'replace_signer' DO NOTHING;
    END IF;

    IF _anchor_due() THEN
        PERFORM _enqueue_anchor();
    END IF;

    -- archiving still pending within a day of Skribble's deletion: an alarm, once
    FOR r IN SELECT * FROM signatur_anfragen a
              WHERE a.status = 'vollstaendig' AND _deletes_soon(a.deletion_date) AND a.deletion_alarm_at IS NULL
                FOR UPDATE SKIP LOCKED LOOP
        UPDATE signatur_anfragen SET deletion_alarm_at = clock() WHERE id = r.id;
        PERFORM _emit(r.id, 'deletion_imminent', jsonb_build_object('deletion_date', r.deletion_date,
            'reason', 'archiving is still pending within a day of Skribble deleting the request'));
    END LOOP;

    -- clean-up once a minute (the first tick of each): with a large queue
    -- the planner cannot tell how few finished rows are old, and a scan of
    -- all of them every second cost the worker a third of its time
    IF date_trunc('minute', clock()) > clock() - interval '1 second' THEN
        DELETE FROM work_items WHERE state <> 'pending' AND finished_at < clock() - interval '30 days';
        DELETE FROM callback_inbox WHERE processed_at < clock() - interval '30 days';
        DELETE FROM webhook_ids WHERE received_at < clock() - interval '1 day';
    END IF;
END
$$;

-------------------------------------------------------------------------------
-- Archive: the same objects, keys and checks whatever the provider; the
-- provider only says how to fetch its three objects (_provider_fetch)
-------------------------------------------------------------------------------

-- A request's objects are uploaded in parallel: each staged object has its
-- own lease while its PUT or HEAD is in flight, and the work item is free
-- again as soon as its calls are out.  Its digests are taken once, when it
-- is staged: they go with the PUT (Content-MD5, x-amz-checksum-sha256,
-- x-amz-content-sha256), so S3 checks the bytes it receives against what
-- was fetched, and the worker reads the content itself, straight from
-- TOAST (a 40 MB PDF is not copied through plpgsql).
ALTER TABLE archive_staging ADD COLUMN md5 bytea;
ALTER TABLE archive_staging ADD COLUMN leased_until timestamptz;
COMMENT ON COLUMN archive_staging.md5 IS 'MD5 of the content (Content-MD5 of the PUT; NULL if staged by 1.0)';
COMMENT ON COLUMN archive_staging.leased_until IS 'A PUT or HEAD of the object is in flight until then';

-- _stage keeps one object of a request for upload, with its digests
-- (plpgsql: its INSERT is planned once, not with the content as a constant)
CREATE OR REPLACE FUNCTION _stage(r signatur_anfragen, p_kind text, p_content bytea, p_type text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO archive_staging (request_id, kind, key, content, content_type, sha256, md5, size)
    VALUES (r.id, p_kind, _archive_key(r, p_kind), p_content, p_type, sha256(p_content),
            decode(md5(p_content), 'hex'), length(p_content))
    ON CONFLICT (request_id, kind) DO NOTHING;
END
$$;

-- _archive_open: archiving the request has a step to take now: an object
-- to upload or check that is not in flight, or none in flight at all (a
-- fetch from the provider, or the end)
CREATE FUNCTION _archive_open(request_id uuid) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT FROM qes_sign.archive_staging g
                    WHERE g.request_id = _archive_open.request_id AND g.verified_at IS NULL
                      AND (g.leased_until IS NULL OR g.leased_until < qes_sign.clock()))
        OR NOT EXISTS (SELECT FROM qes_sign.archive_staging g
                        WHERE g.request_id = _archive_open.request_id AND g.verified_at IS NULL
                          AND g.leased_until >= qes_sign.clock())
$$;

-- _archive_calls: the next steps of archiving, at most room of them: fetch
-- from the provider what is not staged (one at a time; the record of the
-- request is staged with the last), then PUT or HEAD each object not in
-- flight; once all are verified the request is archived without another
-- call.  A PUT's data is left NULL: the worker reads the
-- staged content itself (worker.c, claim).
CREATE FUNCTION _archive_calls(w work_items, room int) RETURNS SETOF api_call
LANGUAGE plpgsql AS $$
DECLARE
    r signatur_anfragen;
    g record;
    next_kind text;
    staged text[] := ARRAY(SELECT kind FROM archive_staging WHERE request_id = w.request_id);
BEGIN
    SELECT * INTO r FROM signatur_anfragen WHERE id = w.request_id;
    r.document := NULL;     -- not needed, and never copied (_call_for)
    SELECT k INTO next_kind FROM unnest(ARRAY['signed_pdf', 'protocol_pdf', 'protocol_json']) k
     WHERE NOT k = ANY (staged) LIMIT 1;
    IF FOUND THEN
        RETURN NEXT _provider_fetch(w, r, next_kind);
        RETURN;
    ELSIF NOT 'record_json' = ANY (staged) THEN
        -- (staged by 1.0 without it; the worker reads a PUT's content in
        -- the claim's snapshot, so it goes up from the next claim on)
        PERFORM _stage(r, 'record_json', _archive_record(r), 'application/json');
        PERFORM _again(w.id, '0');
        RETURN;
    END IF;
    IF NOT EXISTS (SELECT FROM archive_staging WHERE request_id = r.id AND verified_at IS NULL) THEN
        PERFORM _archive_finish(w, r);
        RETURN;
    END IF;
    -- the objects' leases stand for the item's: it may be claimed again for
    -- another object; not after a failure (one probe at a time)
    IF w.failures = 0 THEN
        UPDATE work_items SET leased_until = NULL WHERE id = w.id;
    END IF;
    FOR g IN UPDATE archive_staging x SET leased_until = clock() + interval '10 minutes'
              WHERE (x.request_id, x.kind) IN (
                    SELECT y.request_id, y.kind FROM archive_staging y
                     WHERE y.request_id = r.id AND y.verified_at IS NULL
                       AND (y.leased_until IS NULL OR y.leased_until < clock())
                     -- the largest first; a probe after a failure is the smallest
                     ORDER BY CASE WHEN w.failures > 0 THEN y.size ELSE -y.size END, y.kind
                     LIMIT greatest(room, 1))
             RETURNING x.kind, x.key, x.content_type, x.stored_at IS NOT NULL AS stored,
                       x.sha256, coalesce(x.md5, decode(md5(x.content), 'hex')) AS md5 LOOP
        IF g.stored THEN
            RETURN NEXT ROW(w.id, r.id, 'head:' || g.kind, 's3', 'HEAD', g.key, NULL, NULL, NULL, NULL)::api_call;
        ELSE
            RETURN NEXT ROW(w.id, r.id, 'put:' || g.kind, 's3', 'PUT', g.key, NULL, NULL,
                            _put_headers(r, g.content_type) || _put_digests(g.sha256, g.md5), NULL)::api_call;
        END IF;
    END LOOP;
END
$$;
DROP FUNCTION _archive_call(work_items, signatur_anfragen);

-- _put_digests: an upload's digests, as S3 checks them against the bytes
CREATE FUNCTION _put_digests(sha256 bytea, md5 bytea) RETURNS text[]
LANGUAGE sql IMMUTABLE AS $$
    SELECT ARRAY['Content-MD5: ' || encode(md5, 'base64'),
                 'x-amz-checksum-sha256: ' || encode(sha256, 'base64'),
                 'x-amz-content-sha256: ' || encode(sha256, 'hex'),
                 'x-amz-meta-sha256: ' || encode(sha256, 'hex')]
$$;

-- _archive_answer: a successful answer to a step of archiving.  A fetched
-- object is checked (a PDF is a PDF, JSON is JSON) after the provider made
-- it the archived object (_provider_object: Yousign's protocol.json joins
-- the request and its signers)
CREATE OR REPLACE FUNCTION _archive_answer(w work_items, call_kind text, body bytea, headers text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    r signatur_anfragen;
    step text := split_part(call_kind, ':', 1);
    obj text := split_part(call_kind, ':', 2);
    g record;
BEGIN
    SELECT * INTO r FROM signatur_anfragen WHERE id = w.request_id;
    r.document := NULL;     -- not needed, and never copied (_call_for)
    SELECT key, size, sha256 INTO g FROM archive_staging WHERE request_id = r.id AND kind = obj;
    CASE step
    WHEN 'fetch' THEN
        body := _provider_object(r, obj, body);
        IF obj LIKE '%pdf' AND substring(body FROM 1 FOR 5) IS DISTINCT FROM '\x255044462d'::bytea THEN
            RETURN _retry(w, format('%s''s %s is not a PDF', initcap(r.provider), obj));
        ELSIF obj LIKE '%json' AND NOT _is_json(body) THEN
            RETURN _retry(w, format('%s''s %s is not JSON', initcap(r.provider), obj));
        END IF;
        PERFORM _stage(r, obj, body, CASE WHEN obj LIKE '%pdf' THEN 'application/pdf' ELSE 'application/json' END);
        IF _fetched(r.id) THEN
            -- the record of the request, with the digests of the other three
            PERFORM _stage(r, 'record_json', _archive_record(r), 'application/json');
        END IF;
    WHEN 'put' THEN
        -- S3 checked the bytes against Content-MD5 and x-amz-checksum-sha256
        -- when it took them; an answer that confirms the digest (the checksum
        -- echoed, or the ETag of a single PUT: its MD5) needs no HEAD
        UPDATE archive_staging x SET stored_at = clock(),
               verified_at = CASE WHEN _header(headers, 'x-amz-checksum-sha256') = encode(g.sha256, 'base64')
                                    OR btrim(_header(headers, 'etag'), '"') = coalesce(encode(x.md5, 'hex'), md5(x.content))
                                  THEN clock() END
         WHERE x.request_id = r.id AND x.kind = obj;
    WHEN 'head' THEN
        -- size and digest as stored (S3 checked the bytes against Content-MD5
        -- and x-amz-checksum-sha256 when it took them)
        IF _header(headers, 'content-length') IS DISTINCT FROM g.size::text
           OR _header(headers, 'x-amz-meta-sha256') IS DISTINCT FROM encode(g.sha256, 'hex') THEN
            -- never accepted: upload it again
            UPDATE archive_staging SET stored_at = NULL WHERE request_id = r.id AND kind = obj;
            RETURN _retry(w, format('archive object %s does not match after upload (size %s, sha256 %s)',
                                    g.key, _header(headers, 'content-length'),
                                    coalesce(_header(headers, 'x-amz-meta-sha256'), 'missing')));
        END IF;
        UPDATE archive_staging SET verified_at = clock() WHERE request_id = r.id AND kind = obj;
    ELSE
        RETURN _again(w.id, '0');   -- a provider's intermediate step (_provider_object kept it)
    END CASE;
    RETURN _again(w.id, '0');
END
$$;

-- _archive_record: the request as an auditor reads it years later: data,
-- its provider and ids there, signers, digests of the other objects, and
-- its audit entries
CREATE OR REPLACE FUNCTION _archive_record(r signatur_anfragen) RETURNS bytea
LANGUAGE sql STABLE SET search_path = pg_catalog, qes_sign, pg_temp AS $$
    SELECT convert_to(jsonb_pretty(jsonb_build_object(
        'format', 'qes_sign-record-v1',
        'request', jsonb_strip_nulls(jsonb_build_object(
            'id', r.id, 'verwaltung', r.verwaltung, 'vorgangstyp', r.vorgangstyp, 'title', r.title,
            'quality', r.quality, 'legislation', r.legislation, 'provider', r.provider,
            'provider_id', r.provider_id,
            'document_id', r.document_id, 'document_sha256', encode(r.document_sha256, 'hex'),
            'document_size', r.document_size, 'created_by', r.created_by,
            'created_at', _iso(r.created_at), 'sent_at', _iso(r.sent_at),
            'first_viewed_at', _iso(r.first_viewed_at), 'completed_at', _iso(r.completed_at),
            'retention_until', r.retention_until)),
        'signers', (SELECT jsonb_agg(jsonb_strip_nulls(jsonb_build_object(
                        'email', s.email, 'first_name', s.first_name, 'last_name', s.last_name,
                        'status', s.status, 'provider_signer_id', s.provider_signer_id,
                        'viewed_at', _iso(s.viewed_at),
                        'signed_at', _iso(s.signed_at), 'signed_quality', s.signed_quality))
                        ORDER BY s.position, s.id)
                      FROM signers s WHERE s.request_id = r.id),
        'objects', (SELECT jsonb_object_agg(g.kind, jsonb_build_object(
                        'key', g.key, 'sha256', encode(g.sha256, 'hex'), 'size', g.size))
                      FROM archive_staging g WHERE g.request_id = r.id),
        'audit', (SELECT jsonb_agg(jsonb_build_object(
                      'seq', l.seq, 'at', _iso(l.at), 'event', l.event, 'actor', l.actor,
                      'detail', l.detail, 'hash', encode(l.hash, 'hex')) ORDER BY l.seq)
                    FROM audit_log l WHERE l.request_id = r.id))), 'UTF8')
$$;

-- _refused_for_good: a provider refused a call for good; the caller has
-- finished the work item.  A withdraw: most likely the request is no longer
-- open there, and its state tells what happened.  Any other call about the
-- request itself (a create, a corrupt PDF) ends it, with the provider's
-- reason in the audit trail (event).
CREATE FUNCTION _refused_for_good(w work_items, provider text, withdrawing boolean, http_status int,
                                  message text, detail jsonb, event text) RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
    IF withdrawing THEN
        PERFORM _emit(w.request_id, w.kind || '_failed', detail);
        PERFORM _enqueue(w.request_id, 'refresh');
    ELSE
        PERFORM _emit(w.request_id, event, detail);
        PERFORM _transition(w.request_id, 'abgebrochen',
                            format('rejected by %s: %s (HTTP %s)', initcap(provider), message, http_status));
    END IF;
    RETURN 'failed';
END
$$;

-------------------------------------------------------------------------------
-- Provider dispatch: the only place that names every provider.  A provider
-- <p> gives, in provider-<p>.sql: _<p>_call_for (the call a work item needs),
-- _<p>_answer (a 2xx answer), _<p>_failure (any other outcome),
-- _<p>_fetch (an archive object), _<p>_message (an error body as text),
-- _<p>_check (create_request's extra rules), _<p>_replace_check, and,
-- where it needs them, _<p>_object and _<p>_limits.
-------------------------------------------------------------------------------
CREATE FUNCTION _provider_call(w work_items, r signatur_anfragen) RETURNS api_call
LANGUAGE plpgsql AS $$
BEGIN
    RETURN CASE r.provider WHEN 'skribble' THEN _skribble_call_for(w, r)
                           WHEN 'yousign' THEN _yousign_call_for(w, r) END;
END
$$;

CREATE FUNCTION _provider_answer(provider text, w work_items, call_kind text, answer jsonb) RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
    RETURN CASE provider WHEN 'skribble' THEN _skribble_answer(w, call_kind, answer)
                         WHEN 'yousign' THEN _yousign_answer(w, call_kind, answer) END;
END
$$;

CREATE FUNCTION _provider_failure(provider text, w work_items, call_kind text, http_status int, body bytea,
                                  retry_after int, transport_error text) RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
    RETURN CASE provider
        WHEN 'skribble' THEN _skribble_failure(w, call_kind, http_status, body, retry_after, transport_error)
        WHEN 'yousign' THEN _yousign_failure(w, call_kind, http_status, body, retry_after, transport_error) END;
END
$$;

CREATE FUNCTION _provider_fetch(w work_items, r signatur_anfragen, obj text) RETURNS api_call
LANGUAGE plpgsql AS $$
BEGIN
    RETURN CASE r.provider WHEN 'skribble' THEN _skribble_fetch(w, r, obj)
                           WHEN 'yousign' THEN _yousign_fetch(w, r, obj) END;
END
$$;

CREATE FUNCTION _provider_object(r signatur_anfragen, obj text, body bytea) RETURNS bytea
LANGUAGE plpgsql AS $$
BEGIN
    RETURN CASE r.provider WHEN 'yousign' THEN _yousign_object(r, obj, body) ELSE body END;
END
$$;

CREATE FUNCTION _provider_message(provider text, body bytea, http_status int, OUT message text, OUT key text)
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF provider = 'yousign' THEN
        SELECT * INTO message, key FROM _yousign_message(body, http_status);
    ELSE
        SELECT * INTO message, key FROM _skribble_message(body, http_status);
    END IF;
END
$$;

CREATE FUNCTION _provider_check(provider text, signers jsonb, quality text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF provider = 'yousign' THEN
        PERFORM _yousign_check(signers, quality);
    END IF;
END
$$;

CREATE FUNCTION _provider_replace_check(r signatur_anfragen) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF r.provider = 'yousign' THEN
        PERFORM _yousign_replace_check(r);
    END IF;
END
$$;

-- _provider_moved: after a promotion or on another cluster, each provider
-- makes its creates in progress look before they go on (Skribble: the
-- generic "posted" mark of _worker_started is enough)
CREATE FUNCTION _provider_moved() RETURNS bigint
LANGUAGE plpgsql AS $$
BEGIN
    RETURN _yousign_moved();
END
$$;

-- _worker_started (1.0) also asks the providers (_provider_moved)
CREATE OR REPLACE FUNCTION _worker_started(promoted boolean DEFAULT false) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, qes_sign, pg_temp AS $$
DECLARE
    n bigint;
    home worker_home;
    here worker_home;
    moved boolean;
BEGIN
    -- the timeline from the name of the current WAL segment (its first 8 hex digits)
    SELECT true, s.system_identifier,
           ('x' || substr(pg_walfile_name(pg_current_wal_insert_lsn()), 1, 8))::bit(32)::int, clock()
      INTO here FROM pg_control_system() s;
    SELECT * INTO home FROM worker_home;
    moved := FOUND AND (home.system_identifier, home.timeline) IS DISTINCT FROM (here.system_identifier, here.timeline);
    IF promoted OR moved THEN
        UPDATE work_items SET payload = payload || jsonb_build_object('posted', clock())
         WHERE kind = 'submit' AND state = 'pending' AND NOT payload ? 'posted';
        GET DIAGNOSTICS n = ROW_COUNT;
        n := n + _provider_moved();
        IF n > 0 THEN
            RAISE LOG 'qes_sign: % creates not yet answered will be looked up at their provider before they are sent: '
                      'this database may not know every create sent from where it ran before (%)', n,
                      CASE WHEN promoted THEN 'a promotion' WHEN home.system_identifier <> here.system_identifier
                           THEN 'another cluster' ELSE 'another timeline' END;
        END IF;
    END IF;
    INSERT INTO worker_home VALUES (here.*) ON CONFLICT (singleton) DO UPDATE
       SET system_identifier = excluded.system_identifier, timeline = excluded.timeline, since = excluded.since
     WHERE (worker_home.system_identifier, worker_home.timeline)
           IS DISTINCT FROM (excluded.system_identifier, excluded.timeline);
    UPDATE archive_staging SET leased_until = NULL WHERE leased_until IS NOT NULL;
    UPDATE work_items SET leased_until = NULL WHERE state = 'pending' AND leased_until IS NOT NULL;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;

CREATE FUNCTION _provider_limits(provider text, http_status int, retry_after int, headers text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF provider = 'yousign' THEN
        PERFORM _yousign_limits(http_status, retry_after, headers);
    END IF;
END
$$;

-------------------------------------------------------------------------------
-- Operator view: the anchor's lag
-------------------------------------------------------------------------------
CREATE OR REPLACE VIEW operations AS
SELECT 'queue_' || kind AS metric, count(*)::bigint AS value
  FROM work_items WHERE state = 'pending' GROUP BY kind
UNION ALL
SELECT 'inbox_unprocessed', count(*) FROM callback_inbox WHERE processed_at IS NULL
UNION ALL
SELECT 'audit_unanchored_entries',
       coalesce((SELECT max(seq) FROM audit_log), 0) - coalesce((SELECT max(seq) FROM audit_anchors), 0)
UNION ALL
SELECT 'archive_pending_before_deletion', count(*) FROM signatur_anfragen
 WHERE status = 'vollstaendig' AND _deletes_soon(deletion_date)
UNION ALL
SELECT name, value FROM counters();
COMMENT ON VIEW operations IS
    'Operator metrics: queue depth by kind, unprocessed callbacks, audit entries not yet anchored, archives pending within a day of deletion, API calls, retries and calls in flight';

CREATE OR REPLACE VIEW overview WITH (security_invoker = true) AS
SELECT a.id, a.verwaltung, a.vorgangstyp, a.title, a.status,
       count(*) FILTER (WHERE s.status = 'signed') AS signers_signed,
       count(s.id) AS signers_total,
       a.created_at, a.sent_at, a.completed_at, a.archived_at, a.cancelled_at, a.cancel_reason,
       a.completed_at - coalesce(a.sent_at, a.created_at) AS processing_time,
       a.deletion_date
  FROM signatur_anfragen a
  LEFT JOIN signers s ON s.request_id = a.id AND s.status <> 'replaced'
 GROUP BY a.id;
COMMENT ON VIEW overview IS
    'One row per request for the portal: signers signed/total, processing time (sending to last signature), the day Skribble deletes it';

CREATE OR REPLACE VIEW request_errors AS
SELECT DISTINCT ON (w.request_id)
       w.request_id, a.verwaltung, a.status, w.kind, w.state, w.attempts, w.due_at,
       w.last_error, coalesce(w.finished_at, w.created_at) AS at, a.deletion_date
  FROM work_items w JOIN signatur_anfragen a ON a.id = w.request_id
 WHERE w.last_error IS NOT NULL AND w.last_error NOT LIKE 'cancelled:%'
 ORDER BY w.request_id, w.id DESC;

