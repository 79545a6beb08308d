--
-- status_machine: the trigger admits exactly the transitions of SPEC §2, for
-- every role including the owner, checks their prerequisites, and records
-- each one in the audit trail.
--

-- the status machine as data: one C array, shown by this view
SELECT * FROM qes_sign.transitions;

-- Every pair (from, to): drive a fresh request into "from" the legitimate
-- way, then try to UPDATE it to "to" directly, as the owner (superuser).
-- Prerequisites are met (all signers signed for vollstaendig, archive rows
-- for archiviert, cancelled_at for abgebrochen): only the machine decides.
CREATE TABLE regress.matrix (from_status text, to_status text, result text);
DO $$
DECLARE
    f qes_sign.anfrage_status;
    t qes_sign.anfrage_status;
    n int := 100;
    id uuid;
BEGIN
    FOREACH f IN ARRAY enum_range(NULL::qes_sign.anfrage_status) LOOP
        FOREACH t IN ARRAY enum_range(NULL::qes_sign.anfrage_status) LOOP
            n := n + 1;
            id := regress.uuid(n);
            PERFORM regress.drive(id, f);
            IF t = 'vollstaendig' THEN
                UPDATE qes_sign.signers SET status = 'signed', signed_at = now() WHERE request_id = regress.uuid(n);
            END IF;
            IF t = 'archiviert' AND f <> 'archiviert' THEN
                PERFORM regress.archive(id);
            END IF;
            INSERT INTO regress.matrix VALUES (f, t, regress.try(format(
                'UPDATE qes_sign.signatur_anfragen SET status = %L, cancelled_at = CASE WHEN %L = ''abgebrochen'' THEN now() END WHERE id = %L',
                t, t, id)));
        END LOOP;
    END LOOP;
END
$$;
SELECT from_status, to_status, result FROM regress.matrix WHERE from_status <> to_status ORDER BY 1, 2;

-- no change of status is no transition: always allowed, nothing recorded
SELECT DISTINCT result FROM regress.matrix WHERE from_status = to_status;

-- Prerequisites: vollstaendig needs every current signer signed
SELECT regress.request(regress.uuid(1));
SELECT regress.try($$UPDATE qes_sign.signatur_anfragen SET status = 'vollstaendig' WHERE id = regress.uuid(1)$$);
UPDATE qes_sign.signers SET status = 'signed', signed_at = now() WHERE request_id = regress.uuid(1) AND email = 'signer1@example.org';
SELECT regress.try($$UPDATE qes_sign.signatur_anfragen SET status = 'vollstaendig' WHERE id = regress.uuid(1)$$);
UPDATE qes_sign.signers SET status = 'signed', signed_at = now() WHERE request_id = regress.uuid(1);
SELECT regress.try($$UPDATE qes_sign.signatur_anfragen SET status = 'vollstaendig' WHERE id = regress.uuid(1)$$);

-- ... and archiviert needs all four archive objects, verified
INSERT INTO qes_sign.archive_objects (request_id, kind, bucket, key, sha256, size, content_type, verified_at)
SELECT regress.uuid(1), k, 'archive', k, sha256(k::bytea), 1, 'application/pdf', now()
  FROM unnest(ARRAY['signed_pdf', 'protocol_pdf', 'protocol_json']) k;
SELECT regress.try($$UPDATE qes_sign.signatur_anfragen SET status = 'archiviert' WHERE id = regress.uuid(1)$$);
INSERT INTO qes_sign.archive_objects (request_id, kind, bucket, key, sha256, size, content_type)
VALUES (regress.uuid(1), 'record_json', 'archive', 'record', '\x00', 1, 'application/json');
SELECT regress.try($$UPDATE qes_sign.signatur_anfragen SET status = 'archiviert' WHERE id = regress.uuid(1)$$);
UPDATE qes_sign.archive_objects SET verified_at = now() WHERE request_id = regress.uuid(1);
SELECT regress.try($$UPDATE qes_sign.signatur_anfragen SET status = 'archiviert' WHERE id = regress.uuid(1)$$);

-- each transition left exactly one audit entry, in order
SELECT event, detail - 'at' AS detail FROM qes_sign.timeline(regress.uuid(1));

-- a new request must start as offen, whoever inserts it
SELECT regress.try($$INSERT INTO qes_sign.signatur_anfragen (verwaltung, vorgangstyp, title, document_sha256,
    document_size, quality, legislation, created_by, expires_at, status)
    VALUES ('hv', 'mietvertrag', 't', '\x00', 1, 'QES', 'EIDAS', 'x', now(), 'vollstaendig')$$);
-- ... except in restore mode, where pg_restore brings rows that passed the
-- machine in the database they were dumped from
BEGIN;
SET LOCAL qes_sign.restore = on;
SELECT regress.try($$INSERT INTO qes_sign.signatur_anfragen (verwaltung, vorgangstyp, title, document_sha256,
    document_size, quality, legislation, created_by, expires_at, status)
    VALUES ('hv', 'mietvertrag', 't', '\x00', 1, 'QES', 'EIDAS', 'x', now(), 'vollstaendig')$$);
ROLLBACK;

-- the trigger also fires with session_replication_role = replica (ENABLE ALWAYS)
SET session_replication_role = replica;
SELECT regress.try($$UPDATE qes_sign.signatur_anfragen SET status = 'offen' WHERE id = regress.uuid(1)$$);
RESET session_replication_role;

-- and for a role that was granted UPDATE on the table
CREATE ROLE regress_updater;
GRANT USAGE ON SCHEMA qes_sign TO regress_updater;
GRANT SELECT, UPDATE ON qes_sign.signatur_anfragen TO regress_updater;
ALTER TABLE qes_sign.signatur_anfragen DISABLE ROW LEVEL SECURITY;
SET ROLE regress_updater;
SELECT regress.try($$UPDATE qes_sign.signatur_anfragen SET status = 'abgebrochen', cancelled_at = now() WHERE id = regress.uuid(1)$$);
RESET ROLE;
ALTER TABLE qes_sign.signatur_anfragen ENABLE ROW LEVEL SECURITY;
REVOKE ALL ON qes_sign.signatur_anfragen FROM regress_updater;
REVOKE ALL ON SCHEMA qes_sign FROM regress_updater;
DROP ROLE regress_updater;

-- a refused transition leaves no trace: status and trail unchanged
SELECT status, (SELECT count(*) FROM qes_sign.timeline(regress.uuid(1))) AS entries
  FROM qes_sign.signatur_anfragen WHERE id = regress.uuid(1);
