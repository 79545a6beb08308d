--
-- install: the extension installs into a fresh database, creates its roles,
-- and the helpers the following test files share are defined here.
--
CREATE EXTENSION qes_sign;
CREATE EXTENSION pgcrypto;   -- tests only: an independent HMAC for forged URLs

SELECT extname, extversion, extnamespace::regnamespace FROM pg_extension WHERE extname = 'qes_sign';
SELECT rolname, rolcanlogin FROM pg_roles WHERE rolname LIKE 'qes_sign%' ORDER BY 1;

-- every table the extension keeps, each with its comment
SELECT c.relname, c.relkind, obj_description(c.oid) IS NOT NULL AS commented
  FROM pg_class c WHERE c.relnamespace = 'qes_sign'::regnamespace AND c.relkind IN ('r', 'v')
 ORDER BY 1;

-- the request types and their rules
SELECT vorgangstyp, min_quality, retention_years FROM qes_sign.vorgangstypen ORDER BY 1;

-- Test helpers (schema regress) -------------------------------------------
CREATE SCHEMA regress;
GRANT USAGE ON SCHEMA regress TO PUBLIC;

-- regress.try runs a statement and reports "ok" or "SQLSTATE: message
-- [field]", with uuids masked, so errors read well in expected output
CREATE FUNCTION regress.try(sql text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    col text;
BEGIN
    EXECUTE sql;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS col = COLUMN_NAME;
    RETURN regexp_replace(SQLSTATE || ': ' || SQLERRM || coalesce(' [' || nullif(col, '') || ']', ''),
                          '[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}', '<id>', 'g');
END
$$;

-- regress.pdf: a small but well-formed PDF of n pages
CREATE FUNCTION regress.pdf(pages int DEFAULT 1) RETURNS bytea LANGUAGE sql AS $$
    SELECT convert_to('%PDF-1.4' || E'\n' ||
        (SELECT string_agg(format('%s 0 obj << /Type /Page >> endobj', p), E'\n')
           FROM generate_series(1, pages) p) ||
        E'\ntrailer << /Root 1 0 R >>\n%%EOF\n', 'UTF8')
$$;

-- regress.signers: n signers signer1@example.org ...
CREATE FUNCTION regress.signers(n int DEFAULT 2) RETURNS jsonb LANGUAGE sql AS $$
    SELECT jsonb_agg(jsonb_build_object('first_name', 'Vorname' || i, 'last_name', 'Nachname' || i,
                                        'email', 'signer' || i || '@example.org') ORDER BY i)
      FROM generate_series(1, n) i
$$;

-- regress.request: a request with a chosen id and n signers
CREATE FUNCTION regress.request(id uuid, n int DEFAULT 2, verwaltung text DEFAULT 'hv-eppendorf')
RETURNS uuid LANGUAGE sql AS $$
    SELECT qes_sign.create_request(verwaltung, 'Mietvertrag Testweg 1', regress.pdf(),
                                   regress.signers(n), id => id)
$$;

-- regress.sr: a SignatureRequest as Skribble returns it, with one status
-- code per signer (signer1, signer2, ...); viewed lists signers who opened
CREATE FUNCTION regress.sr(id uuid, overall text, codes text[], doc text DEFAULT 'doc-1',
                           viewed int[] DEFAULT '{}') RETURNS jsonb LANGUAGE sql AS $$
    SELECT jsonb_build_object(
        'id', 'sr-' || id, 'title', 'Mietvertrag Testweg 1', 'document_id', doc,
        'legislation', 'EIDAS', 'quality', 'QES', 'status_overall', overall, 'custom', id::text,
        'created_at', '2026-03-19T09:15:00.000Z', 'updated_at', '2026-03-19T09:52:00.000Z',
        'signatures', (SELECT jsonb_agg(jsonb_strip_nulls(jsonb_build_object(
            'sid', 'sid-' || i, 'account_email', 'signer' || i || '@example.org',
            'signer_identity_data', jsonb_build_object('email_address', 'signer' || i || '@example.org',
                                                       'first_name', 'Vorname' || i, 'last_name', 'Nachname' || i),
            'sequence', -1, 'status_code', codes[i], 'notify', true,
            'last_viewed_at', CASE WHEN i = ANY (viewed) OR codes[i] = 'SIGNED'
                                   THEN format('2026-03-19T09:%s:00.000Z', 20 + i) END,
            'signed_at', CASE WHEN codes[i] = 'SIGNED' THEN format('2026-03-19T09:%s:00.000Z', 30 + i) END))
            ORDER BY i) FROM generate_series(1, array_length(codes, 1)) i))
$$;

-- regress.archive: the four verified archive objects of a request
CREATE FUNCTION regress.archive(id uuid) RETURNS void LANGUAGE sql AS $$
    INSERT INTO qes_sign.archive_objects (request_id, kind, bucket, key, sha256, size, content_type, verified_at)
    SELECT id, k, 'archive', 'hv/2026/' || id || '/' || k, sha256(k::bytea), 1, 'application/pdf', now()
      FROM unnest(ARRAY['signed_pdf', 'protocol_pdf', 'protocol_json', 'record_json']) k
$$;

-- regress.drive: brings a new request into a status the legitimate way
CREATE FUNCTION regress.drive(id uuid, target qes_sign.anfrage_status) RETURNS qes_sign.anfrage_status
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM regress.request(id);
    CASE target
    WHEN 'offen' THEN NULL;
    WHEN 'in_signatur' THEN
        PERFORM qes_sign.apply_signature_request(id, regress.sr(id, 'OPEN', '{OPEN,OPEN}', viewed => '{1}'));
    WHEN 'vollstaendig' THEN
        PERFORM qes_sign.apply_signature_request(id, regress.sr(id, 'SIGNED', '{SIGNED,SIGNED}'));
    WHEN 'archiviert' THEN
        PERFORM qes_sign.apply_signature_request(id, regress.sr(id, 'SIGNED', '{SIGNED,SIGNED}'));
        PERFORM regress.archive(id);
        UPDATE qes_sign.signatur_anfragen a SET status = 'archiviert', archived_at = now() WHERE a.id = drive.id;
    WHEN 'abgebrochen' THEN
        PERFORM qes_sign.apply_signature_request(id, regress.sr(id, 'DECLINED', '{DECLINED,OPEN}'));
    END CASE;
    RETURN (SELECT status FROM qes_sign.signatur_anfragen a WHERE a.id = drive.id);
END
$$;

-- regress.uuid: readable fixed ids, e.g. regress.uuid(7) = 00000000-...-000000000007
CREATE FUNCTION regress.uuid(n int) RETURNS uuid LANGUAGE sql IMMUTABLE AS $$
    SELECT lpad(to_hex(n), 32, '0')::uuid
$$;
