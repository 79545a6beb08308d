--
-- trust_boundary: what an ordinary portal login can no longer do
-- (version 1.1).  1. shadow extension tables with temporary tables to run
-- code as the extension's owner; 2. act for a tenant its role does not
-- hold, or probe another tenant's ids; 3. read personal data from
-- notifications, or block a request with a long text; 4. fill the inbox
-- through one leaked callback URL; 5. move the audit chain's head.
--
CREATE ROLE regress_attacker LOGIN IN ROLE qes_sign_app;
SELECT qes_sign.grant_tenant('regress_attacker', 'hv-eppendorf');
SELECT regress.drive(regress.uuid(901), 'offen');

-- 1. The temporary-table hijack, against every SECURITY DEFINER function.
-- A shadow of every table and view of the schema is created in this
-- session's pg_temp, each with a trigger that would make the attacker a
-- superuser; then the attacker calls every SECURITY DEFINER function of
-- the schema (read from pg_proc, so a new one is tested without being
-- listed here) with arguments taken by name from regress.hijack_args.
-- Every read or write of a shadow shows in pg_stat_xact_all_tables.
CREATE TABLE regress.hijack_args (name text NOT NULL, expr text NOT NULL, fn text);
INSERT INTO regress.hijack_args (name, expr) VALUES
    ('verwaltung', $$'hv-eppendorf'$$), ('title', $$'Hijack'$$), ('document', 'regress.pdf()'),
    ('signers', 'regress.signers()'), ('id', $$'00000000-0000-0000-0000-000000000385'$$),
    ('reason', $$'hijack'$$), ('old_email', $$'signer1@example.org'$$),
    ('new_signer', $$'{"first_name": "N", "last_name": "M", "email": "new@example.org"}'$$),
    ('kind', $$'signed_pdf'$$), ('body', 'NULL'), ('headers', $$'{}'$$),
    ('url', quote_literal(qes_sign.callback_url(regress.uuid(901), 'update'))),
    ('sr', quote_literal(regress.sr(regress.uuid(901), 'OPEN', '{OPEN,OPEN}'))),
    ('role', $$'regress_attacker'$$), ('message', 'NULL'), ('vorgangstyp', $$'mietvertrag'$$),
    ('ordered', 'false'), ('expires_in', 'NULL'), ('restarted_from', 'NULL'), ('anchors', '20'),
    ('provider', 'NULL');
INSERT INTO regress.hijack_args VALUES ('id', 'NULL', 'create_request');
GRANT SELECT ON regress.hijack_args TO PUBLIC;

CREATE FUNCTION regress.escalate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE 'ALTER ROLE regress_attacker SUPERUSER';   -- runs as whoever fires it
    RETURN NULL;
END
$$;

-- regress.hijack_call: the call of a function with every input argument by name
CREATE FUNCTION regress.hijack_call(f oid) RETURNS text LANGUAGE sql AS $$
    SELECT format('SELECT %s(%s)', f::regproc,
                  string_agg(format('%I => %s::%s', a.name, coalesce(h.expr, 'NULL'), a.type), ', ' ORDER BY a.n))
      FROM pg_proc p,
           unnest(p.proargnames[1:p.pronargs], p.proargtypes::oid[]::regtype[]) WITH ORDINALITY a(name, type, n)
      LEFT JOIN LATERAL (SELECT h.expr FROM regress.hijack_args h
                          WHERE h.name = a.name AND coalesce(h.fn, p.proname::text) = p.proname
                          ORDER BY h.fn NULLS LAST LIMIT 1) h ON true
     WHERE p.oid = f
$$;

-- regress.hijack_all calls each function as the caller, and tells how it ended
CREATE FUNCTION regress.hijack_all() RETURNS TABLE (fn text, outcome text) LANGUAGE plpgsql AS $$
DECLARE
    f record;
    call text;
BEGIN
    FOR f IN SELECT p.oid, p.proname FROM pg_proc p
              WHERE p.pronamespace = 'qes_sign'::regnamespace AND p.prosecdef ORDER BY p.proname LOOP
        fn := f.proname;
        call := regress.hijack_call(f.oid);
        IF EXISTS (SELECT FROM pg_proc p, unnest(p.proargnames[1:p.pronargs]) a
                    WHERE p.oid = f.oid AND a NOT IN (SELECT name FROM regress.hijack_args)) THEN
            RAISE EXCEPTION 'regress.hijack_args has no value for an argument of %', fn;
        END IF;
        call := coalesce(call, format('SELECT %s()', f.oid::regproc));
        outcome := regress.try(call);
        RETURN NEXT;
    END LOOP;
END
$$;

BEGIN;
DO $$
DECLARE
    t text;
BEGIN
    FOR t IN SELECT c.relname FROM pg_class c
              WHERE c.relnamespace = 'qes_sign'::regnamespace AND c.relkind IN ('r', 'v') LOOP
        EXECUTE format('CREATE TEMP TABLE %I (LIKE qes_sign.%I)', t, t);
        EXECUTE format('CREATE TRIGGER escalate BEFORE INSERT OR UPDATE OR DELETE ON pg_temp.%I
                        FOR EACH ROW EXECUTE FUNCTION regress.escalate()', t);
    END LOOP;
END
$$;
CREATE TEMP TABLE hijack_before AS
    SELECT relname, seq_scan + coalesce(idx_scan, 0) + n_tup_ins + n_tup_upd + n_tup_del AS touched
      FROM pg_stat_xact_all_tables WHERE schemaname LIKE 'pg_temp%';
SELECT count(*) AS shadows FROM hijack_before;
SET LOCAL ROLE regress_attacker;
SET LOCAL qes_sign.verwaltung = 'hv-eppendorf';
SELECT * FROM regress.hijack_all();
RESET ROLE;
-- nothing of the extension touched a shadow, and nobody became superuser
SELECT s.relname AS shadow_touched
  FROM pg_stat_xact_all_tables s JOIN hijack_before b USING (relname)
 WHERE s.schemaname LIKE 'pg_temp%'
   AND s.seq_scan + coalesce(s.idx_scan, 0) + s.n_tup_ins + s.n_tup_upd + s.n_tup_del > b.touched;
SELECT rolsuper FROM pg_roles WHERE rolname = 'regress_attacker';
-- the real trail got the request the attacker created past the shadows
SELECT count(*) AS created_by_attacker FROM qes_sign.audit_log
 WHERE event = 'created' AND actor = 'regress_attacker';
ROLLBACK;

-- 2. Tenants are granted to roles, by operators only
SET ROLE regress_attacker;
SELECT regress.try($$SELECT qes_sign.grant_tenant('regress_attacker', 'hv-altona')$$);
SELECT regress.try($$INSERT INTO qes_sign.tenant_grants (role, verwaltung, granted_by) VALUES ('regress_attacker', 'hv-altona', 'me')$$);
SELECT * FROM qes_sign.my_tenants();
-- a session that claims another tenant sees nothing and may do nothing
SET qes_sign.verwaltung = 'hv-altona';
SELECT count(*) AS requests, (SELECT count(*) FROM qes_sign.overview) AS overview,
       (SELECT count(*) FROM qes_sign.audit_log) AS audit FROM qes_sign.signatur_anfragen;
SELECT regress.try($$SELECT qes_sign.create_request('hv-altona', 't', regress.pdf(), regress.signers())$$);
SELECT regress.try($$SELECT qes_sign.withdraw(regress.uuid(62))$$);
SELECT regress.try($$SELECT qes_sign.download(regress.uuid(62))$$);
-- restarted_from: another tenant's request reads exactly like an unknown id
SET qes_sign.verwaltung = 'hv-eppendorf';
SELECT regress.try($$SELECT qes_sign.create_request('hv-eppendorf', 't', regress.pdf(), regress.signers(), restarted_from => regress.uuid(62))$$);
SELECT regress.try($$SELECT qes_sign.create_request('hv-eppendorf', 't', regress.pdf(), regress.signers(), restarted_from => regress.uuid(999))$$);
RESET ROLE;
-- membership counts: a login in a role that holds the tenant acts for it
CREATE ROLE regress_portal_team IN ROLE qes_sign_app;
CREATE ROLE regress_clerk LOGIN IN ROLE regress_portal_team;
SELECT qes_sign.grant_tenant('regress_portal_team', 'hv-altona');
SET ROLE regress_clerk;
SET qes_sign.verwaltung = 'hv-altona';
SELECT DISTINCT verwaltung FROM qes_sign.signatur_anfragen;
RESET ROLE;
SELECT qes_sign.revoke_tenant('regress_portal_team', 'hv-altona');
SET ROLE regress_clerk;
SELECT count(*) AS after_revoke FROM qes_sign.signatur_anfragen;
RESET ROLE;
SELECT event, detail FROM qes_sign.audit_log WHERE event LIKE 'tenant_%' AND detail ->> 'role' = 'regress_portal_team' ORDER BY seq;
-- tenant names stay usable as archive key segments, and "_" is the bucket's own
SELECT regress.try($$SELECT qes_sign.grant_tenant('regress_clerk', '_audit')$$);

-- Connection poolers: the tenant is set per transaction (SET LOCAL or
-- set_config(..., true)), so a pooled connection forgets it at commit
SET ROLE regress_attacker;
RESET qes_sign.verwaltung;
BEGIN;
SET LOCAL qes_sign.verwaltung = 'hv-eppendorf';
SELECT count(*) > 0 AS sees_its_tenant FROM qes_sign.signatur_anfragen;
COMMIT;
SELECT count(*) AS next_transaction_sees FROM qes_sign.signatur_anfragen;
BEGIN;
SELECT set_config('qes_sign.verwaltung', 'hv-eppendorf', true) IS NOT NULL AS set;
SELECT count(*) > 0 AS sees_its_tenant FROM qes_sign.signatur_anfragen;
COMMIT;
SELECT regress.try($$SELECT qes_sign.remind(regress.uuid(901))$$);
RESET ROLE;

-- 3. Texts from Skribble are bounded and never block a transition: a
-- 9,000-character decline message ends the request; 2,000 are kept
SELECT regress.drive(regress.uuid(902), 'offen');
SELECT qes_sign.apply_signature_request(regress.uuid(902),
    regress.sr(regress.uuid(902), 'DECLINED', '{DECLINED,OPEN}')
    #- '{signatures,0,decline_message}'
    || jsonb_build_object('signatures', jsonb_build_array(
           regress.sr(regress.uuid(902), 'DECLINED', '{DECLINED,OPEN}') -> 'signatures' -> 0
           || jsonb_build_object('decline_message', repeat('Nein. ', 1500)),
           regress.sr(regress.uuid(902), 'DECLINED', '{DECLINED,OPEN}') -> 'signatures' -> 1)));
SELECT length(decline_message) AS kept, right(decline_message, 1) AS marked
  FROM qes_sign.signers WHERE request_id = regress.uuid(902) AND status = 'declined';
-- an answer the worker cannot apply is a failed attempt, not a silent loop
SELECT regress.drive(regress.uuid(903), 'in_signatur');
INSERT INTO qes_sign.work_items (request_id, kind) VALUES (regress.uuid(903), 'refresh');
SELECT qes_sign._record_unapplied(w.id, 'get', 'value too long for the index')
  FROM qes_sign.work_items w WHERE w.request_id = regress.uuid(903) AND w.kind = 'refresh' AND w.state = 'pending';
SELECT kind, state, failures, last_error FROM qes_sign.work_items
 WHERE request_id = regress.uuid(903) AND kind = 'refresh';
SELECT kind, last_error FROM qes_sign.request_errors WHERE request_id = regress.uuid(903);

-- every C function of the schema, with NULL for every argument, returns
-- or raises an error: it is STRICT or checks (none crashes the backend)
SELECT p.proname, regress.try(format('SELECT %s(%s)', p.oid::regproc,
           (SELECT string_agg('NULL::' || t::regtype, ', ') FROM unnest(p.proargtypes) t))) AS outcome
  FROM pg_proc p
 WHERE p.pronamespace = 'qes_sign'::regnamespace AND p.prolang = 13 AND p.prorettype <> 'trigger'::regtype
 ORDER BY 1;

-- 4. One leaked callback URL: its query values are unsigned hints, so 30
-- different document= values store one row
SELECT count(*) FILTER (WHERE NOT (r).duplicate) AS stored
  FROM (SELECT qes_sign.receive_callback(replace(qes_sign.callback_url(regress.uuid(901), 'update'),
                                                 'SKRIBBLE_DOCUMENT_ID', 'doc-' || i)) AS r
          FROM generate_series(1, 30) i) x;
SELECT count(*) AS inbox_rows FROM qes_sign.callback_inbox
 WHERE request_id = regress.uuid(901) AND processed_at IS NULL;
-- a body over 64 KB is refused, nothing stored
SELECT regress.try(format($$SELECT qes_sign.receive_callback(%L, %L::bytea)$$,
                          qes_sign.callback_url(regress.uuid(901), 'success'), repeat('x', 65537)));
-- a request that has ended: acknowledged, not stored
SELECT (qes_sign.receive_callback(qes_sign.callback_url(regress.uuid(902), 'update'))).duplicate AS acknowledged_only;
SELECT count(*) AS stored_for_ended FROM qes_sign.callback_inbox WHERE request_id = regress.uuid(902);

-- 5. The head of the audit chain moves only with the chain, for everyone
SELECT regress.try($$UPDATE qes_sign.audit_head SET seq = seq$$);
SELECT regress.try($$INSERT INTO qes_sign.audit_head VALUES (true, 1, '\x00')$$);
SELECT regress.try($$DELETE FROM qes_sign.audit_head$$);
SELECT ok, first_broken FROM qes_sign.verify_audit_chain();
