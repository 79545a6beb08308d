--
-- audit: the trail is append-only for every role, the owner and superusers
-- included, and each entry is chained to the previous one by SHA-256.
-- verify_audit_chain() finds an edited or deleted entry even when a
-- superuser switched the triggers off to make the change.
--
SELECT ok, entries > 20 AS has_entries, first_broken, problem FROM qes_sign.verify_audit_chain();

-- the chain: each entry's prev_hash is the previous entry's hash, and its
-- hash is recomputable from its fields (audit_hash, implemented in C)
SELECT count(*) > 20 AS has_entries,
       bool_and(prev_hash = coalesce(lag_hash, decode(repeat('00', 32), 'hex'))) AS chained,
       bool_and(hash = qes_sign.audit_hash(prev_hash, seq, at, request_id, verwaltung, event, actor, detail)) AS hashes_ok,
       bool_and(length(hash) = 32) AS sha256
  FROM (SELECT l.*, lag(hash) OVER (ORDER BY seq) AS lag_hash FROM qes_sign.audit_log l) x;

-- whatever the writer puts into seq, at, actor and the hashes is replaced
INSERT INTO qes_sign.audit_log (seq, at, request_id, verwaltung, event, actor, detail, prev_hash, hash)
VALUES (1, '2000-01-01', regress.uuid(1), 'hv-eppendorf', 'note', 'somebody else', '{"note": "forged"}', '\x00', '\x00');
SELECT seq = (SELECT max(seq) FROM qes_sign.audit_log) AS next_seq, at > '2020-01-01' AS real_time,
       actor, length(prev_hash) AS prev_len
  FROM qes_sign.audit_log WHERE event = 'note';

-- append-only, also for the owner (we are superuser here)
SELECT regress.try($$UPDATE qes_sign.audit_log SET event = 'changed' WHERE event = 'note'$$);
SELECT regress.try($$DELETE FROM qes_sign.audit_log WHERE event = 'note'$$);
SELECT regress.try($$TRUNCATE qes_sign.audit_log$$);
SELECT regress.try($$DELETE FROM qes_sign.audit_head$$);
SELECT regress.try($$TRUNCATE qes_sign.audit_head$$);
-- ... and in replication mode (the triggers are ENABLE ALWAYS)
SET session_replication_role = replica;
SELECT regress.try($$UPDATE qes_sign.audit_log SET event = 'changed' WHERE event = 'note'$$);
RESET session_replication_role;
SELECT tgname, tgenabled FROM pg_trigger WHERE tgrelid = 'qes_sign.audit_log'::regclass AND NOT tgisinternal ORDER BY 1;

-- Tampering by a superuser who disables the triggers; each case is rolled
-- back afterwards so the trail stays intact for the next test.
-- (a) an entry's detail edited
BEGIN;
ALTER TABLE qes_sign.audit_log DISABLE TRIGGER USER;
UPDATE qes_sign.audit_log SET detail = '{"note": "harmless"}' WHERE event = 'note';
SELECT ok, first_broken = (SELECT seq FROM qes_sign.audit_log WHERE event = 'note') AS names_it,
       problem ~ '^entry \d+ was altered$' AS reports_altered
  FROM qes_sign.verify_audit_chain();
ROLLBACK;
-- (b) an entry's time moved, its hash recomputed to match
BEGIN;
ALTER TABLE qes_sign.audit_log DISABLE TRIGGER USER;
UPDATE qes_sign.audit_log SET at = at - interval '1 day' WHERE seq = 3;
UPDATE qes_sign.audit_log SET hash = qes_sign.audit_hash(prev_hash, seq, at, request_id, verwaltung, event, actor, detail) WHERE seq = 3;
SELECT ok, problem FROM qes_sign.verify_audit_chain();
ROLLBACK;
-- (c) an entry in the middle deleted
BEGIN;
ALTER TABLE qes_sign.audit_log DISABLE TRIGGER USER;
DELETE FROM qes_sign.audit_log WHERE seq = 5;
SELECT ok, first_broken, problem FROM qes_sign.verify_audit_chain();
ROLLBACK;
-- (d) the newest entry deleted (the chain head remembers it)
BEGIN;
ALTER TABLE qes_sign.audit_log DISABLE TRIGGER USER;
DELETE FROM qes_sign.audit_log WHERE seq = (SELECT max(seq) FROM qes_sign.audit_log);
SELECT ok, problem ~ '^entries \d+ to \d+ are missing$' AS reports_missing FROM qes_sign.verify_audit_chain();
ROLLBACK;
-- (e) the actor rewritten on every entry of one request
BEGIN;
ALTER TABLE qes_sign.audit_log DISABLE TRIGGER USER;
UPDATE qes_sign.audit_log SET actor = 'nobody' WHERE request_id = regress.uuid(21);
SELECT ok, problem ~ '^entry \d+ was altered$' AS reports_altered FROM qes_sign.verify_audit_chain();
ROLLBACK;

-- after the rollbacks the chain verifies again
SELECT ok, problem FROM qes_sign.verify_audit_chain();

-- Restoring a dump: an entry that arrives with its number and the hash of
-- its fields is refused outside restore mode (numbering it anew would
-- rewrite the restored trail); in restore mode (qes_sign.restore, for
-- superusers) it is kept as it was, and a changed one is refused
CREATE TEMP TABLE dumped AS
    SELECT seq + 1000 AS seq, at, request_id, verwaltung, event, actor, detail, hash AS prev_hash,
           qes_sign.audit_hash(hash, seq + 1000, at, request_id, verwaltung, event, actor, detail) AS hash
      FROM qes_sign.audit_log WHERE seq = 3;
SELECT regress.try($$INSERT INTO qes_sign.audit_log SELECT * FROM dumped$$);
BEGIN;
SET LOCAL qes_sign.restore = on;
INSERT INTO qes_sign.audit_log SELECT * FROM dumped;
SELECT l.seq - 1000 AS seq, l.actor, l = d AS kept_as_dumped
  FROM qes_sign.audit_log l JOIN dumped d ON d.seq = l.seq;
SELECT regress.try($$INSERT INTO qes_sign.audit_log SELECT seq + 1, at, request_id, verwaltung, event,
                     'somebody else', detail, prev_hash, hash FROM dumped$$);
ROLLBACK;
CREATE ROLE regress_restorer;
SET ROLE regress_restorer;
SET qes_sign.restore = on;                                   -- superusers only
RESET ROLE;
DROP ROLE regress_restorer;

-- the acting role is the session's, not the SECURITY DEFINER owner's
-- (regress_portal serves two property managers: tenants are granted to roles)
CREATE ROLE regress_portal LOGIN IN ROLE qes_sign_app;
SELECT qes_sign.grant_tenant('regress_portal', 'hv-eppendorf'), qes_sign.grant_tenant('regress_portal', 'hv-altona');
SET ROLE regress_portal;
SET qes_sign.verwaltung = 'hv-eppendorf';
SELECT qes_sign.create_request('hv-eppendorf', 'Stellplatz 7', regress.pdf(), regress.signers(1),
                               vorgangstyp => 'stellplatzvertrag', id => regress.uuid(31));
SELECT event, actor FROM qes_sign.timeline(regress.uuid(31));
RESET ROLE;
SELECT created_by FROM qes_sign.signatur_anfragen WHERE id = regress.uuid(31);
