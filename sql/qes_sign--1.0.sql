/* qes_sign--1.0.sql: install script */

\echo Use "CREATE EXTENSION qes_sign" to load this file. \quit

-------------------------------------------------------------------------------
-- Roles: the application (portal backend) and the operators.  Roles are
-- cluster-wide, so a second database reuses them.
-------------------------------------------------------------------------------
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'qes_sign_app') THEN
        CREATE ROLE qes_sign_app NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'qes_sign_admin') THEN
        CREATE ROLE qes_sign_admin NOLOGIN;
    END IF;
END
$$;
COMMENT ON ROLE qes_sign_app IS
    'qes_sign: create, remind, withdraw and read the requests of the tenant in qes_sign.verwaltung';
COMMENT ON ROLE qes_sign_admin IS
    'qes_sign: operators; every tenant, operator views, administrative functions';

GRANT USAGE ON SCHEMA qes_sign TO qes_sign_app, qes_sign_admin;

-------------------------------------------------------------------------------
-- Types and reference data
-------------------------------------------------------------------------------
CREATE TYPE anfrage_status AS ENUM
    ('offen', 'in_signatur', 'vollstaendig', 'archiviert', 'abgebrochen');
COMMENT ON TYPE anfrage_status IS 'Status of a signature request (see qes_sign.transitions)';

-- open: invited; waiting: an earlier signer in the sequence has not signed;
-- viewed: opened the signing page; replaced: taken out by replace_signer;
-- error: Skribble reported ERROR for the signature.
CREATE TYPE signer_status AS ENUM
    ('open', 'waiting', 'viewed', 'signed', 'declined', 'withdrawn', 'replaced', 'error');
COMMENT ON TYPE signer_status IS 'Status of one signer of a request';

CREATE TABLE vorgangstypen (
    vorgangstyp      text PRIMARY KEY CHECK (vorgangstyp ~ '^[a-z][a-z0-9_]*$'),
    bezeichnung      text NOT NULL,
    min_quality      text NOT NULL CHECK (min_quality IN ('QES', 'AES', 'AES_MINIMAL', 'SES')),
    retention_years  int  NOT NULL CHECK (retention_years BETWEEN 0 AND 100),
    retention_basis  text NOT NULL
);
COMMENT ON TABLE vorgangstypen IS
    'Request types: minimum signature quality and retention rule (years after the end of the calendar year of completion)';

INSERT INTO vorgangstypen VALUES
    ('mietvertrag',        'Mietvertrag',          'QES', 10, '§ 550, § 126a BGB; § 257 Abs. 4, 5 HGB, § 147 Abs. 3, 4 AO'),
    ('weg_beschluss',      'WEG-Beschluss',        'QES', 10, '§ 24 Abs. 6 WEG; § 257 HGB'),
    ('hausmeistervertrag', 'Hausmeistervertrag',   'QES',  6, '§ 257 Abs. 1 Nr. 2, 3, Abs. 4 HGB (Handelsbrief)'),
    ('aufhebungsvertrag',  'Aufhebungsvertrag',    'QES', 10, '§ 550, § 126a BGB; § 257 HGB'),
    ('stellplatzvertrag',  'Stellplatzvertrag',    'QES', 10, '§ 257 Abs. 4 HGB, § 147 AO (Mietzahlungen)');

-------------------------------------------------------------------------------
-- Requests and signers
-------------------------------------------------------------------------------
CREATE TABLE signatur_anfragen (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    verwaltung       text NOT NULL CHECK (verwaltung <> ''),
    vorgangstyp      text NOT NULL REFERENCES vorgangstypen,
    title            text NOT NULL,
    message          text,
    document         bytea,                   -- NULL once purged
    document_sha256  bytea NOT NULL,
    document_size    int  NOT NULL,
    ordered          boolean NOT NULL DEFAULT false,
    quality          text NOT NULL,
    legislation      text NOT NULL,
    status           anfrage_status NOT NULL DEFAULT 'offen',
    skribble_id      text UNIQUE,
    document_id      text,                    -- Skribble's current document
    skribble_status  text,                    -- last status_overall seen
    created_by       text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    sent_at          timestamptz,
    first_viewed_at  timestamptz,
    completed_at     timestamptz,             -- the last signature
    archived_at      timestamptz,
    cancelled_at     timestamptz,
    cancel_reason    text,
    expires_at       timestamptz NOT NULL,
    retention_until  date,
    restarted_from   uuid REFERENCES signatur_anfragen,
    synced_at        timestamptz,             -- last state fetched from Skribble
    purged_at        timestamptz,             -- archive and personal data deleted
    CHECK ((status = 'abgebrochen') = (cancelled_at IS NOT NULL))
);
CREATE INDEX ON signatur_anfragen (verwaltung, created_at);
-- PDFs come compressed: TOAST's pglz would only burn CPU trying
ALTER TABLE signatur_anfragen ALTER document SET STORAGE EXTERNAL;
CREATE INDEX ON signatur_anfragen (status) WHERE status IN ('offen', 'in_signatur', 'vollstaendig');
-- the worker's tick scans the open requests for reconciliation and expiry
CREATE INDEX signatur_anfragen_open ON signatur_anfragen (synced_at)
    WHERE status IN ('offen', 'in_signatur');
COMMENT ON TABLE signatur_anfragen IS 'One row per signature request; status changes are checked by qes_sign_status_guard';

CREATE TABLE signers (
    id               bigserial PRIMARY KEY,
    request_id       uuid NOT NULL REFERENCES signatur_anfragen,
    position         int  NOT NULL,           -- order given by the caller
    email            text NOT NULL,
    first_name       text NOT NULL,
    last_name        text NOT NULL,
    language         text CHECK (language IN ('de', 'en', 'fr', 'it')),
    mobile           text,
    sequence         int,
    status           signer_status NOT NULL DEFAULT 'open',
    skribble_status  text,                    -- raw status_code, also unknown ones
    sid              text,
    viewed_at        timestamptz,
    signed_at        timestamptz,
    declined_at      timestamptz,
    decline_message  text,
    signed_quality   text,
    replaced_by      bigint REFERENCES signers
);
CREATE UNIQUE INDEX signers_current_email ON signers (request_id, lower(email))
    WHERE status <> 'replaced';
CREATE INDEX ON signers (request_id);
COMMENT ON TABLE signers IS 'Signers of a request; replaced signers stay, marked replaced';

-------------------------------------------------------------------------------
-- Work for the background worker, and what the portal hands in
-------------------------------------------------------------------------------
CREATE TABLE work_items (
    id               bigserial PRIMARY KEY,
    request_id       uuid NOT NULL REFERENCES signatur_anfragen,
    kind             text NOT NULL CHECK (kind IN
                        ('submit', 'refresh', 'remind', 'withdraw', 'replace_signer', 'archive', 'expire')),
    payload          jsonb NOT NULL DEFAULT '{}',
    state            text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'done', 'failed')),
    attempts         int  NOT NULL DEFAULT 0,     -- calls made
    failures         int  NOT NULL DEFAULT 0,     -- failed calls in a row (backoff)
    due_at           timestamptz NOT NULL DEFAULT now(),
    leased_until     timestamptz,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz
);
-- one pending item per request and kind (replacements may queue up)
CREATE UNIQUE INDEX work_items_one_pending ON work_items (request_id, kind)
    WHERE state = 'pending' AND kind <> 'replace_signer';
CREATE INDEX work_items_due ON work_items (due_at) WHERE state = 'pending';
COMMENT ON TABLE work_items IS 'Queue of the background worker (logged; claimed with FOR UPDATE SKIP LOCKED)';

-- where the worker last ran: another cluster (a restored dump, a clone) or
-- timeline (a promotion, point-in-time recovery) means this copy may not
-- know every create the worker sent (see _worker_started)
CREATE TABLE worker_home (
    singleton          boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    system_identifier  bigint NOT NULL,
    timeline           int NOT NULL,
    since              timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE worker_home IS 'The cluster and timeline the worker last ran on';

CREATE TABLE callback_inbox (
    id                   bigserial PRIMARY KEY,
    request_id           uuid,                -- NULL for a webhook that names none
    callback_type        text,
    source               text NOT NULL CHECK (source IN ('callback', 'webhook')),
    signature_request_id text,
    document_id          text,
    signature_id         text,
    webhook_id           text UNIQUE,
    dedupe_key           text NOT NULL,
    body                 bytea,
    received_at          timestamptz NOT NULL DEFAULT now(),
    processed_at         timestamptz
);
-- a callback repeated before the worker looked at it is stored once
CREATE UNIQUE INDEX callback_inbox_dedupe ON callback_inbox (dedupe_key)
    WHERE processed_at IS NULL;
COMMENT ON TABLE callback_inbox IS 'Verified callbacks and webhooks: hints that make the worker fetch the state';

CREATE TABLE archive_objects (
    request_id       uuid NOT NULL REFERENCES signatur_anfragen,
    kind             text NOT NULL CHECK (kind IN ('signed_pdf', 'protocol_pdf', 'protocol_json', 'record_json')),
    bucket           text NOT NULL,
    key              text NOT NULL,
    sha256           bytea NOT NULL,
    size             bigint NOT NULL,
    content_type     text NOT NULL,
    stored_at        timestamptz NOT NULL DEFAULT now(),
    verified_at      timestamptz,
    PRIMARY KEY (request_id, kind)
);
COMMENT ON TABLE archive_objects IS 'Objects of a request stored in the archive bucket, with their digests';

CREATE TABLE archive_staging (
    request_id       uuid NOT NULL REFERENCES signatur_anfragen,
    kind             text NOT NULL CHECK (kind IN ('signed_pdf', 'protocol_pdf', 'protocol_json', 'record_json')),
    key              text NOT NULL,
    content          bytea NOT NULL,
    content_type     text NOT NULL,
    sha256           bytea NOT NULL,
    size             bigint NOT NULL,
    stored_at        timestamptz,             -- the PUT was answered 2xx
    verified_at      timestamptz,             -- a HEAD showed its size and digest
    PRIMARY KEY (request_id, kind)
);
-- PDFs come compressed: no second compression, and reads by slice stay cheap
ALTER TABLE archive_staging ALTER content SET STORAGE EXTERNAL;
COMMENT ON TABLE archive_staging IS
    'Archive objects of a request on their way to the bucket; emptied when the request is archiviert';

-------------------------------------------------------------------------------
-- Audit trail: append-only, hash-chained (see src/audit.c)
-------------------------------------------------------------------------------
CREATE TABLE audit_log (
    seq              bigint PRIMARY KEY,
    at               timestamptz NOT NULL,
    request_id       uuid,
    verwaltung       text,
    event            text NOT NULL,
    actor            text NOT NULL,
    detail           jsonb NOT NULL DEFAULT '{}',
    prev_hash        bytea NOT NULL,
    hash             bytea NOT NULL
);
CREATE INDEX ON audit_log (request_id, seq);
COMMENT ON TABLE audit_log IS
    'Append-only audit trail; each entry''s hash chains to the previous one (qes_sign.verify_audit_chain)';

CREATE TABLE audit_head (
    singleton        boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    seq              bigint NOT NULL,
    hash             bytea NOT NULL
);
COMMENT ON TABLE audit_head IS 'Head of the audit chain; its row lock orders concurrent writers';

CREATE FUNCTION _audit_chain() RETURNS trigger
    LANGUAGE c AS 'MODULE_PATHNAME', 'qes_sign_audit_chain';
CREATE FUNCTION _append_only() RETURNS trigger
    LANGUAGE c AS 'MODULE_PATHNAME', 'qes_sign_append_only';

CREATE TRIGGER audit_chain BEFORE INSERT ON audit_log
    FOR EACH ROW EXECUTE FUNCTION _audit_chain();
CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION _append_only();
CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION _append_only();
CREATE TRIGGER head_no_truncate BEFORE TRUNCATE OR DELETE ON audit_head
    FOR EACH STATEMENT EXECUTE FUNCTION _append_only();
ALTER TABLE audit_log ENABLE ALWAYS TRIGGER audit_chain;
ALTER TABLE audit_log ENABLE ALWAYS TRIGGER audit_append_only;
ALTER TABLE audit_log ENABLE ALWAYS TRIGGER audit_no_truncate;
ALTER TABLE audit_head ENABLE ALWAYS TRIGGER head_no_truncate;

CREATE FUNCTION audit_hash(prev_hash bytea, seq bigint, at timestamptz, request_id uuid,
                           verwaltung text, event text, actor text, detail jsonb)
    RETURNS bytea LANGUAGE c IMMUTABLE PARALLEL SAFE
    AS 'MODULE_PATHNAME', 'qes_sign_audit_hash';
COMMENT ON FUNCTION audit_hash IS 'The hash an audit entry must carry, given the previous hash and its fields';

-------------------------------------------------------------------------------
-- Small C helpers
-------------------------------------------------------------------------------
CREATE FUNCTION clock() RETURNS timestamptz
    LANGUAGE c STABLE AS 'MODULE_PATHNAME', 'qes_sign_clock';
COMMENT ON FUNCTION clock() IS 'qes_sign''s clock: now(), or qes_sign.test_clock when a superuser set it';

CREATE FUNCTION acting_role() RETURNS text
    LANGUAGE c STABLE AS 'MODULE_PATHNAME', 'qes_sign_acting_role';
COMMENT ON FUNCTION acting_role() IS 'The role a call acts for (the session''s role, not a SECURITY DEFINER owner)';

CREATE FUNCTION wake() RETURNS void
    LANGUAGE c AS 'MODULE_PATHNAME', 'qes_sign_wake';
COMMENT ON FUNCTION wake() IS 'Wakes the background workers now';

CREATE FUNCTION _wake_at_commit() RETURNS void
    LANGUAGE c AS 'MODULE_PATHNAME', 'qes_sign_wake_at_commit';

CREATE FUNCTION counters(OUT name text, OUT value bigint) RETURNS SETOF record
    LANGUAGE c AS 'MODULE_PATHNAME', 'qes_sign_counters';

CREATE FUNCTION transitions_c(OUT from_status text, OUT to_status text, OUT requires text)
    RETURNS SETOF record LANGUAGE c IMMUTABLE AS 'MODULE_PATHNAME', 'qes_sign_transitions';
CREATE VIEW transitions AS
    SELECT from_status::anfrage_status, to_status::anfrage_status, requires FROM transitions_c();
COMMENT ON VIEW transitions IS 'The status machine: every allowed transition and its prerequisite';

CREATE FUNCTION callback_url(id uuid, type text) RETURNS text
    LANGUAGE c STRICT AS 'MODULE_PATHNAME', 'qes_sign_callback_url';
CREATE FUNCTION _verify_callback(url text,
        OUT request_id uuid, OUT callback_type text, OUT signature_request_id text,
        OUT document_id text, OUT signature_id text)
    LANGUAGE c AS 'MODULE_PATHNAME', 'qes_sign_verify_callback';
CREATE FUNCTION _verify_webhook(webhook_id text, webhook_timestamp text,
                                webhook_signature text, body bytea) RETURNS void
    LANGUAGE c AS 'MODULE_PATHNAME', 'qes_sign_verify_webhook';

-------------------------------------------------------------------------------
-- Status machine and signer events
-------------------------------------------------------------------------------
CREATE FUNCTION _status_guard() RETURNS trigger
    LANGUAGE c AS 'MODULE_PATHNAME', 'qes_sign_status_guard';
CREATE TRIGGER status_guard BEFORE INSERT OR UPDATE OF status ON signatur_anfragen
    FOR EACH ROW EXECUTE FUNCTION _status_guard();
ALTER TABLE signatur_anfragen ENABLE ALWAYS TRIGGER status_guard;

-- _iso: a time as the audit trail writes it, UTC with milliseconds, like Skribble
CREATE FUNCTION _iso(t timestamptz) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
$$;

-- _emit writes an audit entry for a request and notifies channel qes_sign;
-- both take effect at commit, or not at all.
CREATE FUNCTION _emit(p_id uuid, p_event text, p_detail jsonb DEFAULT '{}',
                      p_verwaltung text DEFAULT NULL, p_status anfrage_status DEFAULT NULL)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, qes_sign AS $$
BEGIN
    IF p_verwaltung IS NULL THEN
        SELECT verwaltung, status INTO p_verwaltung, p_status
          FROM signatur_anfragen WHERE id = p_id;
    END IF;
    INSERT INTO audit_log (request_id, verwaltung, event, detail)
    VALUES (p_id, p_verwaltung, p_event, coalesce(p_detail, '{}'));
    PERFORM pg_notify('qes_sign', (jsonb_build_object(
        'id', p_id, 'verwaltung', p_verwaltung, 'status', p_status, 'event', p_event)
        || jsonb_strip_nulls(jsonb_build_object(
            'signer', p_detail -> 'signer', 'reason', p_detail -> 'reason')))::text);
END
$$;

CREATE FUNCTION _on_status_change() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, qes_sign AS $$
BEGIN
    PERFORM _emit(NEW.id, 'status_' || NEW.status,
                  jsonb_build_object('from', OLD.status, 'to', NEW.status)
                  || jsonb_strip_nulls(jsonb_build_object('reason', NEW.cancel_reason)),
                  NEW.verwaltung, NEW.status);
    RETURN NULL;
END
$$;
CREATE TRIGGER status_events AFTER UPDATE OF status ON signatur_anfragen
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION _on_status_change();
ALTER TABLE signatur_anfragen ENABLE ALWAYS TRIGGER status_events;

-- every change of a signer's status is an event (replacements are told by
-- replace_signer itself, with both addresses)
CREATE FUNCTION _on_signer_change() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, qes_sign AS $$
BEGIN
    IF NEW.status <> 'replaced' THEN
        PERFORM _emit(NEW.request_id, 'signer_' || NEW.status,
                      jsonb_strip_nulls(jsonb_build_object(
                          'signer', NEW.email, 'sid', NEW.sid, 'previous', OLD.status,
                          'at', _iso(CASE NEW.status WHEN 'signed' THEN NEW.signed_at
                                                     WHEN 'viewed' THEN NEW.viewed_at
                                                     WHEN 'declined' THEN NEW.declined_at END),
                          'message', NEW.decline_message)));
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER signer_events AFTER UPDATE OF status ON signers
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION _on_signer_change();
ALTER TABLE signers ENABLE ALWAYS TRIGGER signer_events;

-------------------------------------------------------------------------------
-- Validation (SQL holds the rules; errors name the field in COLUMN)
-------------------------------------------------------------------------------
CREATE FUNCTION _invalid(p_field text, p_message text, p_detail text DEFAULT NULL,
                         p_code text DEFAULT '22023', p_hint text DEFAULT NULL)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    msg text := p_field || ' ' || p_message;
BEGIN
    -- RAISE takes no NULL options, hence the four shapes
    IF p_detail IS NULL AND p_hint IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = p_code, COLUMN = p_field, MESSAGE = msg;
    ELSIF p_hint IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = p_code, COLUMN = p_field, MESSAGE = msg, DETAIL = p_detail;
    ELSIF p_detail IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = p_code, COLUMN = p_field, MESSAGE = msg, HINT = p_hint;
    ELSE
        RAISE EXCEPTION USING ERRCODE = p_code, COLUMN = p_field, MESSAGE = msg,
            DETAIL = p_detail, HINT = p_hint;
    END IF;
END
$$;

CREATE FUNCTION _check_document(p_document bytea) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    n int := length(p_document);
BEGIN
    IF p_document IS NULL OR n = 0 THEN
        PERFORM _invalid('document', 'is empty', p_code => '22004');
    ELSIF n > 40 * 1024 * 1024 THEN
        PERFORM _invalid('document', 'is too large',
            format('The document has %s bytes; Skribble accepts at most 40 MB (41943040 bytes).', n),
            '54000');
    ELSIF substring(p_document FROM 1 FOR 5) <> '\x255044462d'::bytea THEN
        PERFORM _invalid('document', 'is not a PDF', 'A PDF starts with "%PDF-".');
    ELSIF position('\x2525454f46'::bytea IN substring(p_document FROM greatest(1, n - 1023))) = 0 THEN
        PERFORM _invalid('document', 'is not a complete PDF',
            'No "%%EOF" marker in the last 1024 bytes: the file is truncated.');
    END IF;
END
$$;

-- _check_signer validates one signer object and returns it normalised
-- (trimmed names, lower-case address).
CREATE FUNCTION _check_signer(s jsonb, field text, ordered boolean) RETURNS jsonb
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
    IF s ? 'mobile' AND (jsonb_typeof(s -> 'mobile') IS DISTINCT FROM 'string'
                         OR s ->> 'mobile' !~ '^\+?[0-9][0-9 ]{5,19}$') THEN
        PERFORM _invalid(field || '.mobile', 'is not a valid mobile number',
            p_hint => 'Use international format, e.g. +49 151 12345678.');
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
        'mobile', s ->> 'mobile', 'sequence', (s ->> 'sequence')::int));
END
$$;

CREATE FUNCTION _check_signers(signers jsonb, ordered boolean) RETURNS jsonb
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
    RETURN result;
END
$$;

-------------------------------------------------------------------------------
-- Access: tenant of the session, and locating a request for an action
-------------------------------------------------------------------------------
CREATE FUNCTION _is_admin() RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT pg_has_role(acting_role(), 'qes_sign_admin', 'MEMBER')
$$;

-- _acts_for: the caller may act for a tenant (operators for all of them)
CREATE FUNCTION _acts_for(p_verwaltung text) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT _is_admin() OR p_verwaltung = current_setting('qes_sign.verwaltung', true)
$$;

-- _check_tenant: an application session acts only for its own tenant
CREATE FUNCTION _check_tenant(p_verwaltung text) RETURNS void
LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF _acts_for(p_verwaltung) THEN
        RETURN;
    END IF;
    IF coalesce(current_setting('qes_sign.verwaltung', true), '') = '' THEN
        RAISE EXCEPTION 'qes_sign.verwaltung is not set' USING ERRCODE = '42501',
            HINT = 'The application sets its tenant with SET qes_sign.verwaltung = ''...''.';
    END IF;
    RAISE EXCEPTION 'verwaltung "%" is not the tenant of this session', p_verwaltung
        USING ERRCODE = '42501', COLUMN = 'verwaltung';
END
$$;

-- _lock_request locks a request the caller may act on; another tenant's
-- request reads as missing
CREATE FUNCTION _lock_request(p_id uuid) RETURNS signatur_anfragen
LANGUAGE plpgsql AS $$
DECLARE
    r signatur_anfragen;
BEGIN
    SELECT * INTO r FROM signatur_anfragen WHERE id = p_id FOR UPDATE;
    IF NOT FOUND OR NOT _acts_for(r.verwaltung) THEN
        RAISE EXCEPTION 'signature request % does not exist', p_id
            USING ERRCODE = 'P0002', COLUMN = 'id';
    END IF;
    RETURN r;
END
$$;

CREATE FUNCTION _require_status(r signatur_anfragen, p_action text, VARIADIC p_allowed anfrage_status[])
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF NOT r.status = ANY (p_allowed) THEN
        RAISE EXCEPTION 'cannot % signature request % in status "%"', p_action, r.id, r.status
            USING ERRCODE = '55000',
                  DETAIL = format('%s needs status %s.', p_action, array_to_string(p_allowed, ' or '));
    END IF;
END
$$;

CREATE FUNCTION _enqueue(p_id uuid, p_kind text, p_payload jsonb DEFAULT '{}')
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    queued boolean;
BEGIN
    INSERT INTO work_items (request_id, kind, payload) VALUES (p_id, p_kind, p_payload)
    ON CONFLICT (request_id, kind) WHERE state = 'pending' AND kind <> 'replace_signer'
    DO NOTHING;
    queued := FOUND;
    IF queued THEN
        PERFORM _wake_at_commit();
    END IF;
    RETURN queued;
END
$$;

-------------------------------------------------------------------------------
-- The API
-------------------------------------------------------------------------------
CREATE FUNCTION create_request(verwaltung text, title text, document bytea, signers jsonb,
                               message text DEFAULT NULL,
                               vorgangstyp text DEFAULT 'mietvertrag',
                               ordered boolean DEFAULT false,
                               expires_in interval DEFAULT NULL,
                               restarted_from uuid DEFAULT NULL,
                               id uuid DEFAULT NULL)
RETURNS uuid LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, qes_sign AS $$
DECLARE
    t vorgangstypen;
    list jsonb;
    new_id uuid := coalesce(create_request.id, gen_random_uuid());
    -- GUC values with units print as "30d", "720h": valid interval input
    lifetime interval := coalesce(expires_in, current_setting('qes_sign.expiry')::interval);
    digest bytea;
BEGIN
    IF verwaltung IS NULL OR btrim(verwaltung) = '' THEN
        PERFORM _invalid('verwaltung', 'must be a non-empty string', p_code => '22004');
    END IF;
    IF verwaltung ~ '[/[:cntrl:]]' OR verwaltung IN ('.', '..') THEN
        -- it is the first segment of the request's archive keys
        PERFORM _invalid('verwaltung', 'must not contain "/" or control characters, nor be "." or ".."',
                         format('The value is %s.', to_jsonb(verwaltung)));
    END IF;
    PERFORM _check_tenant(verwaltung);
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
    -- a caller-chosen id makes a retried call safe: it cannot create twice
    IF EXISTS (SELECT FROM signatur_anfragen a WHERE a.id = new_id) THEN
        PERFORM _invalid('id', 'is already taken by another signature request',
            format('The value is %s.', new_id), '23505');
    END IF;

    INSERT INTO signatur_anfragen (id, verwaltung, vorgangstyp, title, message, document,
                                   document_sha256, document_size, ordered, quality, legislation,
                                   created_by, created_at, expires_at, restarted_from)
    VALUES (new_id, verwaltung, t.vorgangstyp, btrim(title), message, document,
            digest, length(document), ordered, t.min_quality,
            current_setting('qes_sign.legislation'), acting_role(), clock(), clock() + lifetime,
            restarted_from);
    INSERT INTO qes_sign.signers (request_id, position, email, first_name, last_name,
                                  language, mobile, sequence)
    SELECT new_id, ord - 1, s ->> 'email', s ->> 'first_name', s ->> 'last_name',
           s ->> 'language', s ->> 'mobile', (s ->> 'sequence')::int
      FROM jsonb_array_elements(list) WITH ORDINALITY AS e(s, ord);

    PERFORM _emit(new_id, 'created', jsonb_strip_nulls(jsonb_build_object(
        'vorgangstyp', t.vorgangstyp, 'title', btrim(title), 'signers', jsonb_array_length(list),
        'document_sha256', encode(digest, 'hex'), 'document_size', length(document),
        'restarted_from', restarted_from)), verwaltung, 'offen');
    PERFORM _enqueue(new_id, 'submit');
    RETURN new_id;
END
$$;
COMMENT ON FUNCTION create_request IS
    'Creates a signature request (status offen) and queues it for Skribble; validates document and signers';

CREATE FUNCTION remind(id uuid) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, qes_sign AS $$
DECLARE
    r signatur_anfragen := _lock_request(id);
BEGIN
    PERFORM _require_status(r, 'remind', 'offen', 'in_signatur');
    IF NOT EXISTS (SELECT FROM signers s WHERE s.request_id = r.id
                   AND s.status IN ('open', 'waiting', 'viewed')) THEN
        RAISE EXCEPTION 'signature request % has nobody left to remind', r.id USING ERRCODE = '55000';
    END IF;
    IF _enqueue(r.id, 'remind') THEN
        PERFORM _emit(r.id, 'remind_requested');
    END IF;
END
$$;
COMMENT ON FUNCTION remind(uuid) IS 'Queues a manual reminder to the signers who have not signed';

CREATE FUNCTION withdraw(id uuid, reason text DEFAULT NULL) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, qes_sign AS $$
DECLARE
    r signatur_anfragen := _lock_request(id);
BEGIN
    PERFORM _require_status(r, 'withdraw', 'offen', 'in_signatur');
    IF length(reason) > 2048 THEN
        PERFORM _invalid('reason', 'is longer than 2048 characters');
    END IF;
    IF NOT _enqueue(r.id, 'withdraw', jsonb_strip_nulls(jsonb_build_object('reason', reason))) THEN
        RAISE EXCEPTION 'signature request % is already being withdrawn', r.id USING ERRCODE = '55000';
    END IF;
    PERFORM _emit(r.id, 'withdraw_requested', jsonb_strip_nulls(jsonb_build_object('reason', reason)));
END
$$;
COMMENT ON FUNCTION withdraw(uuid, text) IS
    'Queues the withdrawal at Skribble; the request becomes abgebrochen once Skribble confirms';

CREATE FUNCTION replace_signer(id uuid, old_email text, new_signer jsonb) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, qes_sign AS $$
DECLARE
    r signatur_anfragen := _lock_request(id);
    prev signers;
    n jsonb;
    new_id bigint;
BEGIN
    PERFORM _require_status(r, 'replace a signer of', 'offen', 'in_signatur');
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
    UPDATE signers s SET replaced_by = new_id WHERE s.id = prev.id;
    PERFORM _emit(r.id, 'signer_replaced', jsonb_build_object('signer', prev.email, 'by', n ->> 'email'));
    PERFORM _enqueue(r.id, 'replace_signer', jsonb_build_object('old_signer', prev.id, 'new_signer', new_id,
                                                               'old_sid', prev.sid));
END
$$;
COMMENT ON FUNCTION replace_signer(uuid, text, jsonb) IS
    'Replaces a signer who has not signed (e.g. a wrong address); queued for Skribble';

CREATE FUNCTION restart(id uuid) RETURNS uuid
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, qes_sign AS $$
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
        restarted_from => r.id);
END
$$;
COMMENT ON FUNCTION restart(uuid) IS 'Creates a new request with the document and signers of an abgebrochen one';

-------------------------------------------------------------------------------
-- Applying Skribble's state (a SignatureRequest exactly as the API returns it)
-------------------------------------------------------------------------------

-- _ts reads an ISO 8601 time from Skribble's JSON, naming the field if it is bad
CREATE FUNCTION _ts(value text, field text) RETURNS timestamptz
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN value::timestamptz;
EXCEPTION WHEN invalid_datetime_format OR datetime_field_overflow THEN
    PERFORM _invalid(field, 'is not an ISO 8601 time', format('The value is %s.', to_jsonb(value)));
END
$$;

-- _signer_status maps a Skribble status_code to a signer status; NULL for a
-- code this version does not know (it is recorded, not fatal)
CREATE FUNCTION _signer_status(status_code text, viewed boolean) RETURNS signer_status
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE status_code
        WHEN 'OPEN'      THEN CASE WHEN viewed THEN 'viewed' ELSE 'open' END
        WHEN 'WAITING'   THEN 'waiting'
        WHEN 'SIGNED'    THEN 'signed'
        WHEN 'DECLINED'  THEN 'declined'
        WHEN 'WITHDRAWN' THEN 'withdrawn'
        WHEN 'ERROR'     THEN 'error'
    END::signer_status
$$;

-- _apply_signature updates the local signer matching one Skribble signature
-- (by sid, else by signer_identity_data.email_address; never account_email)
CREATE FUNCTION _apply_signature(p_request uuid, sig jsonb, field text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    s signers;
    v_email text := lower(sig #>> '{signer_identity_data,email_address}');
    viewed timestamptz := _ts(sig ->> 'last_viewed_at', field || '.last_viewed_at');
    signed timestamptz := _ts(sig ->> 'signed_at', field || '.signed_at');
    new_status signer_status;
BEGIN
    SELECT * INTO s FROM signers x
     WHERE x.request_id = p_request AND x.sid = sig ->> 'sid';
    IF NOT FOUND THEN
        SELECT * INTO s FROM signers x
         WHERE x.request_id = p_request AND x.status <> 'replaced'
           AND lower(x.email) = v_email AND x.sid IS NULL;
    END IF;
    IF NOT FOUND OR s.status = 'replaced' THEN
        RETURN;  -- not ours (or taken out locally): nothing to apply
    END IF;
    new_status := coalesce(_signer_status(sig ->> 'status_code',
                                          viewed IS NOT NULL OR s.viewed_at IS NOT NULL),
                           s.status);
    UPDATE signers x SET
        sid             = sig ->> 'sid',
        skribble_status = sig ->> 'status_code',
        viewed_at       = coalesce(x.viewed_at, viewed),
        signed_at       = coalesce(signed, x.signed_at),
        declined_at     = CASE WHEN new_status = 'declined'
                               THEN coalesce(x.declined_at, clock()) END,
        decline_message = coalesce(sig ->> 'decline_message', x.decline_message),
        signed_quality  = coalesce(sig ->> 'signed_quality', x.signed_quality),
        status          = new_status
     WHERE x.id = s.id
       AND (x.sid, x.skribble_status, x.viewed_at, x.signed_at, x.decline_message,
            x.signed_quality, x.status)
           IS DISTINCT FROM
           (sig ->> 'sid', sig ->> 'status_code', coalesce(x.viewed_at, viewed),
            coalesce(signed, x.signed_at),
            coalesce(sig ->> 'decline_message', x.decline_message),
            coalesce(sig ->> 'signed_quality', x.signed_quality), new_status);
    IF FOUND AND _signer_status(sig ->> 'status_code', true) IS NULL THEN
        PERFORM _emit(p_request, 'unknown_signer_status',
                      jsonb_build_object('signer', s.email, 'status_code', sig ->> 'status_code'));
    END IF;
END
$$;

-- _target_status decides the request's status from its signers and
-- Skribble's status_overall; NULL means no change
CREATE FUNCTION _target_status(r signatur_anfragen, overall text, OUT status anfrage_status, OUT reason text)
LANGUAGE plpgsql STABLE AS $$
BEGIN
    WITH s AS (
        SELECT count(*) AS total,
               count(*) FILTER (WHERE x.status = 'signed') AS signed,
               count(*) FILTER (WHERE x.status IN ('viewed', 'signed') OR x.viewed_at IS NOT NULL) AS seen,
               string_agg(x.email || coalesce(': ' || x.decline_message, ''), '; ')
                   FILTER (WHERE x.status = 'declined') AS declined
          FROM qes_sign.signers x WHERE x.request_id = r.id AND x.status <> 'replaced')
    SELECT CASE
             WHEN s.declined IS NOT NULL OR overall = 'DECLINED' THEN 'abgebrochen'
             WHEN overall IN ('WITHDRAWN', 'EXPIRED', 'ERROR')   THEN 'abgebrochen'
             WHEN s.total > 0 AND s.signed = s.total             THEN 'vollstaendig'
             WHEN s.seen > 0 AND r.status = 'offen'              THEN 'in_signatur'
           END::qes_sign.anfrage_status,
           CASE
             WHEN s.declined IS NOT NULL THEN 'declined by ' || s.declined
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

CREATE FUNCTION apply_signature_request(id uuid, sr jsonb) RETURNS anfrage_status
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, qes_sign AS $$
DECLARE
    r signatur_anfragen;
    sig jsonb;
    target record;
    i bigint;
    overall text := sr ->> 'status_overall';
BEGIN
    SELECT * INTO r FROM signatur_anfragen a WHERE a.id = apply_signature_request.id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'signature request % does not exist', id USING ERRCODE = 'P0002';
    END IF;
    IF jsonb_typeof(sr) IS DISTINCT FROM 'object' OR jsonb_typeof(sr -> 'id') IS DISTINCT FROM 'string'
       OR jsonb_typeof(sr -> 'signatures') IS DISTINCT FROM 'array' THEN
        PERFORM _invalid('sr', 'is not a Skribble SignatureRequest',
            'It needs a string "id" and an array "signatures".');
    END IF;
    IF r.skribble_id IS DISTINCT FROM sr ->> 'id' AND r.skribble_id IS NOT NULL THEN
        PERFORM _invalid('sr.id', 'belongs to another Skribble request',
            format('The request is %s at Skribble, the state is of %s.', r.skribble_id, sr ->> 'id'));
    END IF;
    IF sr ? 'custom' AND sr ->> 'custom' IS DISTINCT FROM r.id::text AND coalesce(sr ->> 'custom', '') <> '' THEN
        PERFORM _invalid('sr.custom', 'names another request', format('custom is %s.', to_jsonb(sr ->> 'custom')));
    END IF;
    IF r.status IN ('archiviert', 'abgebrochen') THEN
        RETURN r.status;  -- final: later news from Skribble changes nothing
    END IF;

    IF r.skribble_id IS NULL THEN
        UPDATE signatur_anfragen a SET skribble_id = sr ->> 'id',
               sent_at = coalesce(a.sent_at, _ts(sr ->> 'created_at', 'sr.created_at'), clock())
         WHERE a.id = r.id;
        PERFORM _emit(r.id, 'sent', jsonb_build_object('skribble_id', sr ->> 'id'));
        -- e.g. DEMO for a demo key: signatures without the legal effect asked for
        IF sr ->> 'quality' <> r.quality THEN
            PERFORM _emit(r.id, 'quality_differs', jsonb_build_object(
                'requested', r.quality, 'skribble', sr ->> 'quality',
                'reason', format('Skribble signs this request as %s, not %s', sr ->> 'quality', r.quality)));
        END IF;
    END IF;
    UPDATE signatur_anfragen a SET document_id = sr ->> 'document_id', skribble_status = overall
     WHERE a.id = r.id AND (a.document_id, a.skribble_status)
           IS DISTINCT FROM (sr ->> 'document_id', overall);
    IF FOUND AND overall NOT IN ('OPEN', 'SIGNED', 'DECLINED', 'WITHDRAWN', 'ERROR', 'EXPIRED') THEN
        PERFORM _emit(r.id, 'unknown_status', jsonb_build_object('status_overall', overall));
    END IF;

    FOR sig, i IN SELECT * FROM jsonb_array_elements(sr -> 'signatures') WITH ORDINALITY LOOP
        PERFORM _apply_signature(r.id, sig, format('sr.signatures[%s]', i - 1));
    END LOOP;

    SELECT * INTO target FROM _target_status(r, overall);
    RETURN _transition(r.id, target.status, target.reason);
END
$$;
COMMENT ON FUNCTION apply_signature_request(uuid, jsonb) IS
    'Applies a Skribble SignatureRequest (as GET /signature-requests/{id} returns it); idempotent';

-- _transition moves a request to a new status with its timestamps, and
-- queues what follows (archive after completion)
CREATE FUNCTION _transition(p_id uuid, p_to anfrage_status, p_reason text DEFAULT NULL)
RETURNS anfrage_status LANGUAGE plpgsql AS $$
DECLARE
    r signatur_anfragen;
BEGIN
    SELECT * INTO r FROM signatur_anfragen WHERE id = p_id;
    IF p_to IS NULL OR p_to = r.status THEN
        RETURN r.status;
    END IF;
    UPDATE signatur_anfragen a SET
        status          = p_to,
        first_viewed_at = CASE WHEN p_to = 'in_signatur' THEN coalesce(a.first_viewed_at,
                              (SELECT min(coalesce(viewed_at, signed_at)) FROM signers
                                WHERE request_id = p_id), clock()) ELSE a.first_viewed_at END,
        completed_at    = CASE WHEN p_to = 'vollstaendig' THEN coalesce(
                              (SELECT max(signed_at) FROM signers
                                WHERE request_id = p_id AND status = 'signed'), clock())
                              ELSE a.completed_at END,
        cancelled_at    = CASE WHEN p_to = 'abgebrochen' THEN clock() ELSE a.cancelled_at END,
        cancel_reason   = CASE WHEN p_to = 'abgebrochen' THEN p_reason ELSE a.cancel_reason END,
        archived_at     = CASE WHEN p_to = 'archiviert' THEN clock() ELSE a.archived_at END
     WHERE a.id = p_id;
    IF p_to = 'vollstaendig' THEN
        UPDATE signatur_anfragen a SET retention_until = retention_until(a.vorgangstyp, a.completed_at)
         WHERE a.id = p_id;
    END IF;
    -- nothing is left to do at Skribble once all signed or it ended
    IF p_to IN ('vollstaendig', 'abgebrochen') THEN
        UPDATE work_items SET state = 'done', last_error = 'cancelled: request is ' || p_to,
               leased_until = NULL, finished_at = clock()
         WHERE request_id = p_id AND state = 'pending' AND kind <> 'archive';
    END IF;
    IF p_to = 'vollstaendig' THEN
        PERFORM _enqueue(p_id, 'archive');
    END IF;
    RETURN p_to;
END
$$;

-------------------------------------------------------------------------------
-- Callbacks and webhooks (verification in C: src/callbacks.c, src/webhook.c)
-------------------------------------------------------------------------------
CREATE FUNCTION callback_urls(id uuid) RETURNS jsonb
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, qes_sign AS $$
    SELECT jsonb_build_object(
        'callback_success_url', callback_url(id, 'success'),
        'callback_update_url',  callback_url(id, 'update'),
        'callback_error_url',   callback_url(id, 'error'))
$$;
COMMENT ON FUNCTION callback_urls(uuid) IS
    'The three signed callback URLs handed to Skribble for a request (placeholders left in)';

CREATE FUNCTION _count(p_counter text) RETURNS void
    LANGUAGE c AS 'MODULE_PATHNAME', 'qes_sign_count';
CREATE FUNCTION _reject(p_counter text, p_message text) RETURNS void
    LANGUAGE c AS 'MODULE_PATHNAME', 'qes_sign_reject';

CREATE TYPE callback_receipt AS (request_id uuid, callback_type text, duplicate boolean);

-- _take_callback stores a verified callback (once while unprocessed) and
-- wakes the worker at commit
CREATE FUNCTION _take_callback(p_source text, p_request uuid, p_type text, p_sr text, p_doc text,
                               p_sig text, p_webhook_id text, p_body bytea)
RETURNS callback_receipt LANGUAGE plpgsql AS $$
DECLARE
    stored boolean;
BEGIN
    INSERT INTO callback_inbox (request_id, callback_type, source, signature_request_id,
                                document_id, signature_id, webhook_id, dedupe_key, body)
    VALUES (p_request, p_type, p_source, p_sr, p_doc, p_sig, p_webhook_id,
            coalesce(p_webhook_id, concat_ws('/', p_request, p_type, p_sr, p_doc, p_sig)),
            p_body)
    ON CONFLICT DO NOTHING;
    stored := FOUND;
    IF stored THEN
        PERFORM _wake_at_commit();
    END IF;
    PERFORM _count(p_source || 's_accepted');
    RETURN ROW(p_request, p_type, NOT stored)::callback_receipt;
END
$$;

-- _take_signed_url verifies a signed callback URL, however it arrived,
-- and stores it for its request
CREATE FUNCTION _take_signed_url(p_source text, p_url text, p_webhook_id text, p_body bytea)
RETURNS callback_receipt LANGUAGE plpgsql AS $$
DECLARE
    v record := _verify_callback(p_url);
BEGIN
    IF NOT EXISTS (SELECT FROM signatur_anfragen a WHERE a.id = v.request_id) THEN
        PERFORM _reject('callbacks_rejected', p_source || ' names an unknown request');
    END IF;
    RETURN _take_callback(p_source, v.request_id, v.callback_type, v.signature_request_id,
                          v.document_id, v.signature_id, p_webhook_id, p_body);
END
$$;

-- receive_callback is the portal's hot path, so it is C (src/callbacks.c):
-- the same verification, and one INSERT into the inbox (unique dedupe_key)
-- if the request exists; no SET search_path, its statements name every
-- object and operator with its schema
CREATE FUNCTION receive_callback(url text, body bytea DEFAULT NULL) RETURNS callback_receipt
LANGUAGE c SECURITY DEFINER AS 'MODULE_PATHNAME', 'qes_sign_receive_callback';
COMMENT ON FUNCTION receive_callback(text, bytea) IS
    'Verifies a Skribble callback by its signed URL and records it for the worker; rejects with 28000';

CREATE FUNCTION receive_webhook(headers jsonb, body bytea) RETURNS callback_receipt
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, qes_sign AS $$
DECLARE
    h jsonb;
    payload jsonb;
    rid uuid;
    kind text;
BEGIN
    IF jsonb_typeof(headers) IS DISTINCT FROM 'object' THEN
        PERFORM _reject('webhooks_rejected', 'webhook rejected: headers must be a JSON object');
    END IF;
    SELECT jsonb_object_agg(lower(key), value) INTO h FROM jsonb_each_text(headers);
    PERFORM _verify_webhook(h ->> 'webhook-id', h ->> 'webhook-timestamp',
                            h ->> 'webhook-signature', body);
    IF EXISTS (SELECT FROM callback_inbox WHERE webhook_id = h ->> 'webhook-id') THEN
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
     WHERE a.skribble_id = payload ->> 'signature_request_id';
    kind := lower(payload ->> 'type');
    RETURN _take_callback('webhook', rid, CASE WHEN kind IN ('success', 'update', 'error') THEN kind END,
                          payload ->> 'signature_request_id', payload ->> 'document_id',
                          payload ->> 'signature_id', h ->> 'webhook-id', body);
END
$$;
COMMENT ON FUNCTION receive_webhook(jsonb, bytea) IS
    'Verifies a Standard Webhooks delivery (webhook-id/-timestamp/-signature) and records it; rejects with 28000';

-------------------------------------------------------------------------------
-- The worker's side (src/worker.c does the I/O; these functions hold the
-- rules: which call a work item needs, and what an answer means)
-------------------------------------------------------------------------------
CREATE FUNCTION _url_escape(value text) RETURNS text
    LANGUAGE c IMMUTABLE STRICT AS 'MODULE_PATHNAME', 'qes_sign_url_escape';

-- a Skribble API call, as the worker sends it (path below qes_sign.skribble_url)
CREATE TYPE api_call AS (item_id bigint, request_id uuid, kind text, target text, method text,
                         path text, body text, data bytea, headers text[]);
COMMENT ON TYPE api_call IS
    'A call of the worker: target skribble (path below skribble_url, JSON body) or s3 (path = object key, data)';

-- _skribble_call is a call to the Skribble API
CREATE FUNCTION _skribble_call(w work_items, kind text, method text, path text,
                               body text DEFAULT NULL, headers text[] DEFAULT NULL) RETURNS api_call
LANGUAGE sql IMMUTABLE AS $$
    SELECT ROW(w.id, w.request_id, kind, 'skribble', method, path, body, NULL, headers)::qes_sign.api_call
$$;

-- _signer_body is one entry of a create's "signatures" (or a signer added later)
CREATE FUNCTION _signer_body(s signers, ordered boolean) RETURNS jsonb
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
CREATE FUNCTION _create_body(r signatur_anfragen) RETURNS jsonb
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

-------------------------------------------------------------------------------
-- Archive (S3): the rules; src/http.c signs and sends
-------------------------------------------------------------------------------

-- retention_until: the last day a request of this type must be kept when
-- completed at that time: N years after the end of the calendar year of
-- completion, in German time (§ 257 Abs. 5 HGB, § 147 Abs. 4 AO)
CREATE FUNCTION retention_until(vorgangstyp text, completed_at timestamptz) RETURNS date
LANGUAGE sql STABLE SET search_path = pg_catalog, qes_sign AS $$
    SELECT (date_trunc('year', completed_at AT TIME ZONE 'Europe/Berlin')
            + make_interval(years => t.retention_years + 1) - interval '1 day')::date
      FROM vorgangstypen t WHERE t.vorgangstyp = retention_until.vorgangstyp
$$;
COMMENT ON FUNCTION retention_until(text, timestamptz) IS
    'Last day of the retention period: the type''s years after the end of the year of completion';

CREATE FUNCTION _s3_configured() RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT current_setting('qes_sign.s3_endpoint') <> '' AND current_setting('qes_sign.s3_bucket') <> ''
$$;

-- _s3_request: one S3 call from the calling backend (download, purge)
CREATE FUNCTION _s3_request(method text, bucket text, key text,
                            OUT status int, OUT body bytea, OUT error text)
    LANGUAGE c AS 'MODULE_PATHNAME', 'qes_sign_s3_request';

-- _archive_key: <verwaltung>/<year of completion>/<request id>/<file>
CREATE FUNCTION _archive_key(r signatur_anfragen, kind text) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT format('%s/%s/%s/%s', r.verwaltung,
                  extract(year FROM r.completed_at AT TIME ZONE 'Europe/Berlin'), r.id,
                  CASE kind WHEN 'signed_pdf' THEN 'signed.pdf' WHEN 'protocol_pdf' THEN 'protocol.pdf'
                            WHEN 'protocol_json' THEN 'protocol.json' ELSE 'record.json' END)
$$;

-- _archive_record: the request as an auditor reads it years later: data,
-- signers, digests of the other objects, and its audit entries
CREATE FUNCTION _archive_record(r signatur_anfragen) RETURNS bytea
LANGUAGE sql STABLE SET search_path = pg_catalog, qes_sign AS $$
    SELECT convert_to(jsonb_pretty(jsonb_build_object(
        'format', 'qes_sign-record-v1',
        'request', jsonb_strip_nulls(jsonb_build_object(
            'id', r.id, 'verwaltung', r.verwaltung, 'vorgangstyp', r.vorgangstyp, 'title', r.title,
            'quality', r.quality, 'legislation', r.legislation, 'skribble_id', r.skribble_id,
            'document_id', r.document_id, 'document_sha256', encode(r.document_sha256, 'hex'),
            'document_size', r.document_size, 'created_by', r.created_by,
            'created_at', _iso(r.created_at), 'sent_at', _iso(r.sent_at),
            'first_viewed_at', _iso(r.first_viewed_at), 'completed_at', _iso(r.completed_at),
            'retention_until', r.retention_until)),
        'signers', (SELECT jsonb_agg(jsonb_strip_nulls(jsonb_build_object(
                        'email', s.email, 'first_name', s.first_name, 'last_name', s.last_name,
                        'status', s.status, 'sid', s.sid, 'viewed_at', _iso(s.viewed_at),
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

-- _stage keeps one object of a request for upload
CREATE FUNCTION _stage(r signatur_anfragen, p_kind text, p_content bytea, p_type text) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO qes_sign.archive_staging (request_id, kind, key, content, content_type, sha256, size)
    VALUES (r.id, p_kind, qes_sign._archive_key(r, p_kind), p_content, p_type, sha256(p_content),
            length(p_content))
    ON CONFLICT (request_id, kind) DO NOTHING
$$;

-- _put_headers: the content type, and object lock when it is configured
CREATE FUNCTION _put_headers(r signatur_anfragen, content_type text) RETURNS text[]
LANGUAGE sql STABLE AS $$
    SELECT ARRAY['Content-Type: ' || content_type]
        || CASE WHEN current_setting('qes_sign.s3_object_lock') <> 'off' THEN ARRAY[
               'x-amz-object-lock-mode: ' || upper(current_setting('qes_sign.s3_object_lock')),
               'x-amz-object-lock-retain-until-date: ' || to_char(r.retention_until, 'YYYY-MM-DD') || 'T23:59:59Z']
           ELSE '{}' END
$$;

-- _archive_call: the next step of archiving: fetch from Skribble what is
-- not staged, then PUT and HEAD each object; once all are verified the
-- request is archived without another call (NULL)
CREATE FUNCTION _archive_call(w work_items, r signatur_anfragen) RETURNS api_call
LANGUAGE plpgsql AS $$
DECLARE
    sr text := '/signature-requests/' || _url_escape(r.skribble_id);
    next_kind text;
    next_key text;
    next_type text;
    stored boolean;
    staged text[] := ARRAY(SELECT kind FROM archive_staging WHERE request_id = r.id);
BEGIN
    IF NOT 'signed_pdf' = ANY (staged) THEN
        RETURN _skribble_call(w, 'fetch:signed_pdf', 'GET',
                              '/documents/' || _url_escape(r.document_id) || '/content', NULL,
                              '{"Accept: application/pdf"}');
    ELSIF NOT 'protocol_pdf' = ANY (staged) THEN
        RETURN _skribble_call(w, 'fetch:protocol_pdf', 'GET', sr || '/report?type=PDF', NULL,
                              '{"Accept: application/pdf"}');
    ELSIF NOT 'protocol_json' = ANY (staged) THEN
        RETURN _skribble_call(w, 'fetch:protocol_json', 'GET', sr || '/report?type=JSON');
    ELSIF NOT 'record_json' = ANY (staged) THEN
        PERFORM _stage(r, 'record_json', _archive_record(r), 'application/json');
    END IF;
    -- (the content is read only for a PUT: a 10 MB PDF is not copied around)
    SELECT kind, key, content_type, stored_at IS NOT NULL INTO next_kind, next_key, next_type, stored
      FROM archive_staging WHERE request_id = r.id AND verified_at IS NULL ORDER BY kind LIMIT 1;
    IF FOUND AND NOT stored THEN
        RETURN ROW(w.id, r.id, 'put:' || next_kind, 's3', 'PUT', next_key, NULL,
                   (SELECT content FROM archive_staging WHERE request_id = r.id AND kind = next_kind),
                   _put_headers(r, next_type))::api_call;
    ELSIF FOUND THEN
        RETURN ROW(w.id, r.id, 'head:' || next_kind, 's3', 'HEAD', next_key, NULL, NULL, NULL)::api_call;
    END IF;
    PERFORM _archive_finish(w, r);
    RETURN NULL;
END
$$;

-- _archive_finish: in one transaction the archive rows, the audit entry
-- with keys and digests, and the transition to archiviert
CREATE FUNCTION _archive_finish(w work_items, r signatur_anfragen) RETURNS void
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
END
$$;

-- _header: one header of an answer (raw header lines), case-insensitive
CREATE FUNCTION _header(raw text, name text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT btrim(substring(raw FROM '(?in)^' || name || ':\s*([^\r\n]*)'))
$$;

-- _archive_answer: a successful answer to a step of archiving
CREATE FUNCTION _archive_answer(w work_items, call_kind text, body bytea, headers text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    r signatur_anfragen;
    step text := split_part(call_kind, ':', 1);
    obj text := split_part(call_kind, ':', 2);
    g record;
BEGIN
    SELECT * INTO r FROM signatur_anfragen WHERE id = w.request_id;
    SELECT key, size, sha256 INTO g FROM archive_staging WHERE request_id = r.id AND kind = obj;
    CASE step
    WHEN 'fetch' THEN
        IF obj LIKE '%pdf' AND substring(body FROM 1 FOR 5) IS DISTINCT FROM '\x255044462d'::bytea THEN
            RETURN _retry(w, format('Skribble''s %s is not a PDF', obj));
        ELSIF obj LIKE '%json' AND NOT _is_json(body) THEN
            RETURN _retry(w, format('Skribble''s %s is not JSON', obj));
        END IF;
        PERFORM _stage(r, obj, body, CASE WHEN obj LIKE '%pdf' THEN 'application/pdf' ELSE 'application/json' END);
    WHEN 'put' THEN
        UPDATE archive_staging SET stored_at = clock() WHERE request_id = r.id AND kind = obj;
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
    END CASE;
    RETURN _again(w.id, '0');
END
$$;

CREATE FUNCTION _is_json(body bytea) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    PERFORM convert_from(body, 'UTF8')::jsonb;
    RETURN true;
EXCEPTION WHEN OTHERS THEN
    RETURN false;
END
$$;

-- download: an archived object, read back from the bucket and checked
-- against its recorded SHA-256; who fetched what goes into the audit trail
CREATE FUNCTION download(id uuid, kind text DEFAULT 'signed_pdf') RETURNS bytea
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, qes_sign AS $$
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
                  DETAIL = format('Recorded %s, the bucket holds %s (%s bytes).', encode(o.sha256, 'hex'),
                                  encode(sha256(got.body), 'hex'), length(got.body));
    END IF;
    PERFORM _emit(r.id, 'downloaded', jsonb_build_object('kind', kind, 'key', o.key,
                                                         'sha256', encode(o.sha256, 'hex')));
    RETURN got.body;
END
$$;
COMMENT ON FUNCTION download(uuid, text) IS
    'Reads an archived object back from the bucket, verifies its SHA-256, and records the download';

-- purge: after the retention period, the archive objects and the personal
-- data of a request go; its skeleton and an audit entry stay
CREATE FUNCTION purge(id uuid) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, qes_sign AS $$
DECLARE
    r signatur_anfragen := _lock_request(id);
    o archive_objects;
    got record;
BEGIN
    IF NOT _is_admin() THEN
        RAISE EXCEPTION 'only qes_sign_admin may purge' USING ERRCODE = '42501';
    END IF;
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
COMMENT ON FUNCTION purge(uuid) IS
    'After the retention period: deletes the archive objects and personal data of an archiviert request';

-- _s3_message: S3's error code and message from its XML answer
CREATE FUNCTION _s3_message(body bytea, http_status int) RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    x xml;
BEGIN
    x := convert_from(body, 'UTF8')::xml;
    RETURN format('HTTP %s: %s: %s', http_status, (xpath('/Error/Code/text()', x))[1],
                  (xpath('/Error/Message/text()', x))[1]);
EXCEPTION WHEN OTHERS THEN
    RETURN 'HTTP ' || http_status;
END
$$;

-- _config_reloaded: after a reload (a fixed key, say) failed work is due now
CREATE FUNCTION _config_reloaded() RETURNS void
LANGUAGE sql SET search_path = pg_catalog, qes_sign AS $$
    UPDATE work_items SET due_at = clock() WHERE state = 'pending' AND failures > 0
$$;

-- _search_from: when a create posted at payload.posted may be looked up:
-- qes_sign.http_timeout later, when it is stored at Skribble or failed
CREATE FUNCTION _search_from(payload jsonb) RETURNS timestamptz
LANGUAGE sql STABLE AS $$
    SELECT CASE jsonb_typeof(payload -> 'posted')
           WHEN 'string' THEN (payload ->> 'posted')::timestamptz
                              + current_setting('qes_sign.http_timeout')::interval
           ELSE '-infinity' END
$$;

-- _call_for decides the HTTP call a claimed work item needs now (NULL:
-- none; the item was settled without one)
CREATE FUNCTION _call_for(w work_items) RETURNS api_call
LANGUAGE plpgsql AS $$
DECLARE
    r signatur_anfragen;
    sr text;
    old_sid text;
    n signers;
    search_from timestamptz;
BEGIN
    SELECT * INTO r FROM signatur_anfragen WHERE id = w.request_id;
    sr := '/signature-requests/' || _url_escape(coalesce(r.skribble_id, ''));
    CASE w.kind
    WHEN 'submit' THEN
        IF w.payload ? 'posted' THEN
            -- a create whose outcome is unknown: look for it before sending
            -- again, but only once Skribble has had the time a call may take
            -- to store it (a search that comes first finds nothing)
            search_from := _search_from(w.payload);
            IF clock() < search_from THEN
                UPDATE work_items SET due_at = search_from, leased_until = NULL,
                       attempts = attempts - 1
                 WHERE id = w.id;
                RETURN NULL;
            END IF;
            RETURN _skribble_call(w, 'search', 'GET', format('/signature-requests?search=%s&page_size=100&page_number=%s',
                                  _url_escape(r.title), coalesce(w.payload ->> 'page', '1')));
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
        SELECT s.sid INTO old_sid FROM signers s WHERE s.id = (w.payload ->> 'old_signer')::bigint;
        old_sid := coalesce(old_sid, w.payload ->> 'old_sid');
        IF old_sid IS NOT NULL AND NOT w.payload ? 'deleted' THEN
            RETURN _skribble_call(w, 'delete_signer', 'DELETE', sr || '/signatures/' || _url_escape(old_sid));
        END IF;
        SELECT * INTO n FROM signers s WHERE s.id = (w.payload ->> 'new_signer')::bigint;
        RETURN _skribble_call(w, 'add_signer', 'POST', sr || '/signatures', _signer_body(n, r.ordered)::text);
    WHEN 'archive' THEN
        RETURN _archive_call(w, r);
    END CASE;
END
$$;

-- _claim hands the worker up to n due work items, leased so that no other
-- worker takes them; items of other kinds than submit wait for the request
-- to exist at Skribble
CREATE FUNCTION _claim(n int) RETURNS SETOF api_call
LANGUAGE plpgsql SET search_path = pg_catalog, qes_sign AS $$
DECLARE
    item work_items;
    call api_call;
BEGIN
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

    FOR item IN
        WITH c AS (
            SELECT w.id FROM work_items w JOIN signatur_anfragen a ON a.id = w.request_id
             WHERE w.state = 'pending' AND w.due_at <= clock()
               AND (w.leased_until IS NULL OR w.leased_until < clock())
               AND (w.kind <> 'archive' OR _s3_configured())
               AND (w.kind = 'submit' OR a.skribble_id IS NOT NULL)
             ORDER BY w.due_at, w.id
             LIMIT n
               FOR UPDATE OF w SKIP LOCKED)
        UPDATE work_items x SET leased_until = clock() + interval '10 minutes', attempts = x.attempts + 1
          FROM c WHERE x.id = c.id
        RETURNING x.*
    LOOP
        call := _call_for(item);
        IF call.item_id IS NOT NULL THEN
            RETURN NEXT call;
        END IF;
    END LOOP;
END
$$;

-- _next_due: milliseconds until the next work item is due (NULL: none)
CREATE FUNCTION _next_due() RETURNS double precision
LANGUAGE sql STABLE SET search_path = pg_catalog, qes_sign AS $$
    SELECT greatest(0, extract(epoch FROM min(w.due_at) - clock()) * 1000)
      FROM work_items w JOIN signatur_anfragen a ON a.id = w.request_id
     WHERE w.state = 'pending' AND (w.kind <> 'archive' OR _s3_configured())
       AND (w.leased_until IS NULL OR w.leased_until < clock())
       AND (w.kind = 'submit' OR a.skribble_id IS NOT NULL)
$$;

-- _skribble_message reads Skribble's error text: the problem JSON's message,
-- or an old-style text/plain body
CREATE FUNCTION _skribble_message(body bytea, http_status int, OUT message text, OUT key text)
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    t text;
    j jsonb;
BEGIN
    BEGIN
        t := convert_from(body, 'UTF8');
        j := t::jsonb;
        message := j ->> 'message';
        key := j ->> 'key';
    EXCEPTION WHEN OTHERS THEN
        message := left(btrim(t), 500);
    END;
    message := coalesce(nullif(message, ''), 'HTTP ' || http_status);
END
$$;

-- _backoff: exponential with equal jitter, capped by qes_sign.retry_max_delay
CREATE FUNCTION _backoff(attempts int) RETURNS interval
LANGUAGE sql VOLATILE AS $$
    SELECT least(current_setting('qes_sign.retry_max_delay')::interval,
                 current_setting('qes_sign.retry_base_delay')::interval * power(2, least(attempts - 1, 30)))
           * (0.5 + random() / 2)
$$;

-- _finish closes a work item (done or failed)
-- (the worker's hot helpers are plpgsql: its plans are kept, while a
-- LANGUAGE sql function that cannot be inlined is parsed on every call)
CREATE FUNCTION _finish(p_item bigint, p_state text, p_error text DEFAULT NULL) RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE qes_sign.work_items SET state = p_state,
           last_error = CASE WHEN p_state = 'done' THEN NULL ELSE coalesce(p_error, last_error) END,
           failures = CASE WHEN p_state = 'done' THEN 0 ELSE failures END,
           leased_until = NULL, finished_at = qes_sign.clock()
     WHERE id = p_item;
    RETURN p_state;
END
$$;

-- _again puts a work item back in the queue, due after p_delay
CREATE FUNCTION _again(p_item bigint, p_delay interval, p_payload jsonb DEFAULT '{}',
                       p_error text DEFAULT NULL, p_outcome text DEFAULT 'again') RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
    -- an immediate next step keeps its place in the queue (first in, first out)
    UPDATE qes_sign.work_items SET due_at = CASE WHEN p_delay > '0' THEN qes_sign.clock() + p_delay
                                                 ELSE least(due_at, qes_sign.clock()) END,
           leased_until = NULL,
           payload = (payload || p_payload) - 'again', last_error = coalesce(p_error, last_error),
           failures = CASE WHEN p_outcome = 'retry' THEN failures + 1 ELSE 0 END
     WHERE id = p_item;
    RETURN p_outcome;
END
$$;

-- _search_hit finds our request in a search answer by its custom field
CREATE FUNCTION _search_hit(answer jsonb, p_id uuid) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT e FROM jsonb_array_elements(CASE jsonb_typeof(answer) WHEN 'array' THEN answer ELSE '[]' END) e
     WHERE e ->> 'custom' = p_id::text LIMIT 1
$$;

-- _record_success applies a 2xx answer to the work item it answers
CREATE FUNCTION _record_success(w work_items, call_kind text, answer jsonb) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    hit jsonb;
BEGIN
    CASE call_kind
    WHEN 'search' THEN
        hit := _search_hit(answer, w.request_id);
        IF hit IS NOT NULL THEN
            PERFORM apply_signature_request(w.request_id, hit);
            PERFORM _emit(w.request_id, 'create_recovered', jsonb_build_object('skribble_id', hit ->> 'id'));
            RETURN _finish(w.id, 'done');
        ELSIF jsonb_array_length(answer) >= 100 THEN
            RETURN _again(w.id, '0', jsonb_build_object('page', coalesce((w.payload ->> 'page')::int, 1) + 1));
        END IF;
        -- not created: send it (again)
        UPDATE work_items SET payload = payload - 'posted' - 'page' WHERE id = w.id;
        RETURN _again(w.id, '0');
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

-- _record_final handles an answer that retrying cannot change (a 4xx)
CREATE FUNCTION _record_final(w work_items, call_kind text, http_status int, message text, key text,
                              gave_up boolean DEFAULT false)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    detail jsonb := jsonb_strip_nulls(jsonb_build_object('http_status', http_status, 'message', message, 'key', key));
    reason text;
BEGIN
    PERFORM _finish(w.id, 'failed', CASE WHEN gave_up THEN message
                                         ELSE format('HTTP %s: %s', http_status, message) END);
    CASE
    WHEN call_kind = 'remind' THEN
        reason := CASE WHEN key = 'error.rate_limit.reminder' THEN 'reminder limit reached' ELSE message END;
        PERFORM _emit(w.request_id, 'remind_failed', detail || jsonb_build_object('reason', reason));
    WHEN call_kind = 'withdraw' THEN
        -- most likely no longer open at Skribble: its state tells what happened
        PERFORM _emit(w.request_id, w.kind || '_failed', detail);
        PERFORM _enqueue(w.request_id, 'refresh');
    WHEN call_kind IN ('delete_signer', 'add_signer') THEN
        PERFORM _emit(w.request_id, 'replace_signer_failed', detail || jsonb_build_object('reason', message));
    ELSE
        -- the request itself was refused (e.g. 406 for a corrupt PDF) or is gone
        reason := CASE WHEN gave_up THEN message
                       ELSE format('rejected by Skribble: %s (HTTP %s)', message, http_status) END;
        PERFORM _emit(w.request_id, 'skribble_error', detail || jsonb_build_object('call', call_kind));
        PERFORM _transition(w.request_id, 'abgebrochen', reason);
    END CASE;
    RETURN 'failed';
END
$$;

-- _retry schedules a failed call again, with backoff (or Retry-After);
-- after retry_max_attempts failures in a row it gives up
CREATE FUNCTION _retry(w work_items, failure text, call_kind text DEFAULT NULL, http_status int DEFAULT 0,
                       retry_after int DEFAULT 0) RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
    IF w.kind = 'archive' AND w.failures + 1 = current_setting('qes_sign.retry_max_attempts')::int THEN
        -- a signed contract is never given up: tell the auditors, keep trying
        PERFORM _emit(w.request_id, 'archive_failing', jsonb_build_object(
            'reason', failure, 'failures', w.failures + 1));
    ELSIF w.kind <> 'archive' AND w.failures + 1 >= current_setting('qes_sign.retry_max_attempts')::int THEN
        RETURN _record_final(w, call_kind, http_status,
                             format('gave up after %s failed attempts (last: %s)', w.failures + 1, failure),
                             NULL, true);
    END IF;
    RETURN _again(w.id, CASE WHEN http_status IN (429, 503) AND retry_after > 0
                             THEN make_interval(secs => retry_after) ELSE _backoff(w.failures + 1) END,
                  '{}', failure, 'retry');
END
$$;

-- _record_result is what the worker calls with every answer (or transport
-- error): success, final failure, or a retry with backoff or Retry-After
CREATE FUNCTION _record_result(p_item bigint, call_kind text, http_status int, body bytea,
                               retry_after int, transport_error text, headers text DEFAULT NULL)
RETURNS text LANGUAGE plpgsql SET search_path = pg_catalog, qes_sign AS $$
DECLARE
    w work_items;
    m record;
    answer jsonb;
    ok boolean := transport_error IS NULL AND http_status BETWEEN 200 AND 299;
BEGIN
    SELECT * INTO w FROM work_items WHERE id = p_item FOR UPDATE;
    IF NOT FOUND OR w.state <> 'pending' THEN
        RETURN 'stale';
    END IF;
    IF w.kind = 'archive' THEN
        -- nothing about archiving is final: the request stays vollstaendig
        IF ok THEN
            RETURN _archive_answer(w, call_kind, body, headers);
        ELSIF call_kind LIKE 'head:%' AND http_status = 404 THEN
            UPDATE archive_staging SET stored_at = NULL
             WHERE request_id = w.request_id AND kind = split_part(call_kind, ':', 2);
        END IF;
        RETURN _retry(w, coalesce(transport_error, CASE WHEN call_kind LIKE 'fetch:%'
                                  THEN 'Skribble: HTTP ' || http_status || ': ' || (_skribble_message(body, http_status)).message
                                  ELSE 'S3: ' || _s3_message(body, http_status) END),
                      call_kind, http_status, retry_after);
    END IF;
    IF ok THEN
        BEGIN
            answer := CASE WHEN length(body) > 0 THEN convert_from(body, 'UTF8')::jsonb END;
        EXCEPTION WHEN OTHERS THEN
            transport_error := 'answer is not JSON: ' || SQLERRM;
        END;
        IF transport_error IS NULL THEN
            RETURN _record_success(w, call_kind, answer);
        END IF;
    END IF;
    m := _skribble_message(body, http_status);
    IF http_status = 429 AND m.key = 'error.rate_limit.reminder' OR
       transport_error IS NULL AND http_status BETWEEN 400 AND 499
       AND http_status NOT IN (401, 403, 408, 429) OR
       http_status = 403 AND coalesce(m.key, '') NOT LIKE 'error.auth.%' THEN
        RETURN _record_final(w, call_kind, http_status, m.message, m.key);
    END IF;
    RETURN _retry(w, coalesce(transport_error, format('HTTP %s: %s', http_status, m.message)),
                  call_kind, http_status, retry_after);
END
$$;

-- _tick is the worker's timer: reconciliation, expiry, own reminders, pruning
CREATE FUNCTION _tick() RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, qes_sign AS $$
DECLARE
    r signatur_anfragen;
    schedule text[] := string_to_array(replace(current_setting('qes_sign.auto_remind'), ' ', ''), ',');
BEGIN
    -- lost callbacks only delay: fetch every open request now and then
    INSERT INTO work_items (request_id, kind)
    SELECT a.id, 'refresh' FROM signatur_anfragen a
     WHERE a.status IN ('offen', 'in_signatur') AND a.skribble_id IS NOT NULL
       AND coalesce(a.synced_at, a.sent_at) < clock() - current_setting('qes_sign.reconcile_interval')::interval
    ON CONFLICT (request_id, kind) WHERE state = 'pending' AND kind <> 'replace_signer' DO NOTHING;

    FOR r IN SELECT * FROM signatur_anfragen a
              WHERE a.status IN ('offen', 'in_signatur') AND a.expires_at <= clock()
                AND NOT EXISTS (SELECT FROM work_items w WHERE w.request_id = a.id AND w.kind = 'expire')
                FOR UPDATE SKIP LOCKED LOOP
        IF r.skribble_id IS NOT NULL THEN
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
         WHERE a.status IN ('offen', 'in_signatur') AND a.skribble_id IS NOT NULL
           AND k.n < schedule[3]::int
           AND clock() >= a.sent_at + schedule[1]::interval + schedule[2]::interval * k.n
        ON CONFLICT (request_id, kind) WHERE state = 'pending' AND kind <> 'replace_signer' DO NOTHING;
    END IF;

    DELETE FROM work_items WHERE state <> 'pending' AND finished_at < clock() - interval '30 days';
    DELETE FROM callback_inbox WHERE processed_at < clock() - interval '30 days';
END
$$;

-- _worker_started: a (re)started worker takes back what its predecessor had
-- leased; a create in flight then is looked up before it is sent again.
-- After a promotion, or on another cluster or timeline than the worker ran
-- on before (a restored dump or backup, point-in-time recovery), creates
-- may have been sent whose "posted" mark this copy never got: every create
-- not yet answered is looked up first.
CREATE FUNCTION _worker_started(promoted boolean DEFAULT false) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, qes_sign AS $$
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
        IF n > 0 THEN
            RAISE LOG 'qes_sign: % creates not yet answered will be looked up at Skribble before they are sent: '
                      'this database may not know every create sent from where it ran before (%)', n,
                      CASE WHEN promoted THEN 'a promotion' WHEN home.system_identifier <> here.system_identifier
                           THEN 'another cluster' ELSE 'another timeline' END;
        END IF;
    END IF;
    INSERT INTO worker_home VALUES (here.*) ON CONFLICT (singleton) DO UPDATE
       SET system_identifier = excluded.system_identifier, timeline = excluded.timeline, since = excluded.since
     WHERE (worker_home.system_identifier, worker_home.timeline)
           IS DISTINCT FROM (excluded.system_identifier, excluded.timeline);
    UPDATE work_items SET leased_until = NULL WHERE state = 'pending' AND leased_until IS NOT NULL;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;

-------------------------------------------------------------------------------
-- Reading: timeline, chain verification, overview, operator view
-------------------------------------------------------------------------------
CREATE FUNCTION timeline(id uuid)
RETURNS TABLE (seq bigint, at timestamptz, event text, actor text, detail jsonb)
LANGUAGE sql STABLE SET search_path = pg_catalog, qes_sign AS $$
    SELECT l.seq, l.at, l.event, l.actor, l.detail FROM audit_log l
     WHERE l.request_id = timeline.id ORDER BY l.seq
$$;
COMMENT ON FUNCTION timeline(uuid) IS 'The audit entries of a request, oldest first (row-level security applies)';

CREATE FUNCTION verify_audit_chain(OUT ok boolean, OUT entries bigint, OUT first_broken bigint,
                                   OUT problem text)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, qes_sign AS $$
DECLARE
    head audit_head;
    last audit_log;
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
    ok := first_broken IS NULL;
END
$$;
COMMENT ON FUNCTION verify_audit_chain() IS
    'Checks the hash chain of the whole audit trail; names the first broken entry';

CREATE VIEW overview WITH (security_invoker = true) AS
SELECT a.id, a.verwaltung, a.vorgangstyp, a.title, a.status,
       count(*) FILTER (WHERE s.status = 'signed') AS signers_signed,
       count(s.id) AS signers_total,
       a.created_at, a.sent_at, a.completed_at, a.archived_at, a.cancelled_at, a.cancel_reason,
       a.completed_at - coalesce(a.sent_at, a.created_at) AS processing_time
  FROM signatur_anfragen a
  LEFT JOIN signers s ON s.request_id = a.id AND s.status <> 'replaced'
 GROUP BY a.id;
COMMENT ON VIEW overview IS
    'One row per request for the portal: signers signed/total and processing time (sending to last signature)';

CREATE VIEW operations AS
SELECT 'queue_' || kind AS metric, count(*)::bigint AS value
  FROM work_items WHERE state = 'pending' GROUP BY kind
UNION ALL
SELECT 'inbox_unprocessed', count(*) FROM callback_inbox WHERE processed_at IS NULL
UNION ALL
SELECT name, value FROM counters();
COMMENT ON VIEW operations IS
    'Operator metrics: queue depth by kind, unprocessed callbacks, API calls, retries and calls in flight';

CREATE VIEW request_errors AS
SELECT DISTINCT ON (w.request_id)
       w.request_id, a.verwaltung, a.status, w.kind, w.state, w.attempts, w.due_at,
       w.last_error, coalesce(w.finished_at, w.created_at) AS at
  FROM work_items w JOIN signatur_anfragen a ON a.id = w.request_id
 WHERE w.last_error IS NOT NULL AND w.last_error NOT LIKE 'cancelled:%'
 ORDER BY w.request_id, w.id DESC;
COMMENT ON VIEW request_errors IS
    'The last error of the worker''s calls per request (pending retries and failed work)';

-------------------------------------------------------------------------------
-- Row-level security and privileges
-------------------------------------------------------------------------------
ALTER TABLE signatur_anfragen ENABLE ROW LEVEL SECURITY;
ALTER TABLE signers ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_log ENABLE ROW LEVEL SECURITY;
ALTER TABLE archive_objects ENABLE ROW LEVEL SECURITY;

CREATE POLICY tenant ON signatur_anfragen TO qes_sign_app
    USING (verwaltung = current_setting('qes_sign.verwaltung', true));
CREATE POLICY tenant ON signers TO qes_sign_app
    USING (EXISTS (SELECT FROM signatur_anfragen a WHERE a.id = request_id));
CREATE POLICY tenant ON audit_log TO qes_sign_app
    USING (verwaltung = current_setting('qes_sign.verwaltung', true));
CREATE POLICY tenant ON archive_objects TO qes_sign_app
    USING (EXISTS (SELECT FROM signatur_anfragen a WHERE a.id = request_id));
CREATE POLICY admin ON signatur_anfragen TO qes_sign_admin USING (true);
CREATE POLICY admin ON signers TO qes_sign_admin USING (true);
CREATE POLICY admin ON audit_log TO qes_sign_admin USING (true);
CREATE POLICY admin ON archive_objects TO qes_sign_admin USING (true);

REVOKE ALL ON ALL TABLES IN SCHEMA qes_sign FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA qes_sign FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA qes_sign FROM PUBLIC;

GRANT SELECT ON signatur_anfragen, signers, audit_log, archive_objects, vorgangstypen,
                overview, transitions TO qes_sign_app;
GRANT EXECUTE ON FUNCTION create_request(text, text, bytea, jsonb, text, text, boolean, interval, uuid, uuid),
                          remind(uuid), withdraw(uuid, text), replace_signer(uuid, text, jsonb),
                          restart(uuid), receive_callback(text, bytea), receive_webhook(jsonb, bytea),
                          timeline(uuid), wake(), clock(), acting_role(), transitions_c(),
                          download(uuid, text), retention_until(text, timestamptz)
    TO qes_sign_app;

GRANT qes_sign_app TO qes_sign_admin;
GRANT SELECT ON ALL TABLES IN SCHEMA qes_sign TO qes_sign_admin;
GRANT EXECUTE ON FUNCTION verify_audit_chain(), callback_urls(uuid), counters(), purge(uuid),
                          audit_hash(bytea, bigint, timestamptz, uuid, text, text, text, jsonb)
    TO qes_sign_admin;

-- everything the extension stores goes into pg_dump (request types: those
-- added after installation)
SELECT pg_catalog.pg_extension_config_dump('vorgangstypen',
    $$WHERE vorgangstyp NOT IN ('mietvertrag', 'weg_beschluss', 'hausmeistervertrag', 'aufhebungsvertrag', 'stellplatzvertrag')$$);
SELECT pg_catalog.pg_extension_config_dump('signatur_anfragen', '');
SELECT pg_catalog.pg_extension_config_dump('signers', '');
SELECT pg_catalog.pg_extension_config_dump('signers_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('work_items', '');
SELECT pg_catalog.pg_extension_config_dump('work_items_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('callback_inbox', '');
SELECT pg_catalog.pg_extension_config_dump('callback_inbox_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('archive_objects', '');
SELECT pg_catalog.pg_extension_config_dump('archive_staging', '');
SELECT pg_catalog.pg_extension_config_dump('audit_log', '');
SELECT pg_catalog.pg_extension_config_dump('audit_head', '');
SELECT pg_catalog.pg_extension_config_dump('worker_home', '');
