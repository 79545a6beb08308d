-- test/reliability/fixtures.sql: what r06 and r07 share (schema rt): a
-- small valid PDF and a Skribble SignatureRequest as the API returns it,
-- with one status code per signer (signer1, signer2, ...), and a
-- fingerprint of every qes_sign table (to show that nothing changed)
CREATE SCHEMA rt;
CREATE FUNCTION rt.pdf() RETURNS bytea LANGUAGE sql AS $$
    SELECT convert_to(E'%PDF-1.4\n1 0 obj << /Type /Page >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n', 'UTF8') $$;
CREATE FUNCTION rt.sr(id uuid, overall text, codes text[], viewed int[] DEFAULT '{}') RETURNS jsonb LANGUAGE sql AS $$
    SELECT jsonb_build_object('id', 'sr-' || id, 'title', 'T', 'document_id', 'doc-1',
        'legislation', 'EIDAS', 'quality', 'QES', 'status_overall', overall, 'custom', id::text,
        'created_at', '2026-03-19T09:15:00.000Z', 'updated_at', '2026-03-19T09:52:00.000Z',
        'signatures', (SELECT jsonb_agg(jsonb_strip_nulls(jsonb_build_object(
            'sid', 'sid-' || i, 'account_email', 'signer' || i || '@example.org',
            'signer_identity_data', jsonb_build_object('email_address', 'signer' || i || '@example.org',
                                                       'first_name', 'V' || i, 'last_name', 'N' || i),
            'sequence', -1, 'status_code', codes[i], 'notify', true,
            'last_viewed_at', CASE WHEN i = ANY (viewed) OR codes[i] = 'SIGNED' THEN '2026-03-19T09:20:00.000Z' END,
            'signed_at', CASE WHEN codes[i] = 'SIGNED' THEN '2026-03-19T09:30:00.000Z' END)) ORDER BY i)
            FROM generate_series(1, array_length(codes, 1)) i)) $$;
CREATE FUNCTION rt.fingerprint() RETURNS TABLE (tbl text, n bigint, digest text) LANGUAGE plpgsql AS $$
DECLARE t text;
BEGIN
    FOR t IN SELECT c.relname FROM pg_class c WHERE c.relnamespace = 'qes_sign'::regnamespace
               AND c.relkind = 'r' ORDER BY 1 LOOP
        tbl := t;
        EXECUTE format('SELECT count(*), md5(coalesce(string_agg(x::text, %L ORDER BY x::text), %L)) FROM qes_sign.%I x',
                       E'\n', '', t) INTO n, digest;
        RETURN NEXT;
    END LOOP;
END $$;
