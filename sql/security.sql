--
-- security: two roles (qes_sign_app for the portal, qes_sign_admin for
-- operators); row-level security on verwaltung: the session's
-- qes_sign.verwaltung selects among the tenants granted to its role; the
-- app changes state only through the API functions; secrets are readable
-- by superusers only.  (trust_boundary.sql: the attacks of version 1.1)
--
SELECT regress.request(regress.uuid(61), 2, 'hv-eppendorf');
SELECT regress.request(regress.uuid(62), 2, 'hv-altona');
CREATE ROLE regress_admin LOGIN IN ROLE qes_sign_admin;
-- regress_portal (member of qes_sign_app) was created in audit.sql and
-- holds hv-eppendorf and hv-altona

-- Tenant separation: the portal session of hv-eppendorf sees only its own
SET ROLE regress_portal;
SET qes_sign.verwaltung = 'hv-eppendorf';
SELECT DISTINCT verwaltung FROM qes_sign.signatur_anfragen;
SELECT DISTINCT verwaltung FROM qes_sign.overview;
SELECT DISTINCT verwaltung FROM qes_sign.audit_log;
SELECT count(*) AS altona_signers FROM qes_sign.signers WHERE request_id = regress.uuid(62);
SELECT count(*) AS altona_timeline FROM qes_sign.timeline(regress.uuid(62));
-- another tenant's request reads as missing, to every action
SELECT regress.try($$SELECT qes_sign.remind(regress.uuid(62))$$);
SELECT regress.try($$SELECT qes_sign.withdraw(regress.uuid(62), 'x')$$);
SELECT regress.try($$SELECT qes_sign.replace_signer(regress.uuid(62), 'signer1@example.org', '{"first_name": "a", "last_name": "b", "email": "c@example.org"}')$$);
SELECT regress.try($$SELECT qes_sign.restart(regress.uuid(62))$$);
-- and it cannot create for another tenant
SELECT regress.try($$SELECT qes_sign.create_request('hv-altona', 't', regress.pdf(), regress.signers())$$);
-- switching among its own tenants switches what it sees
SET qes_sign.verwaltung = 'hv-altona';
SELECT DISTINCT verwaltung FROM qes_sign.signatur_anfragen;
-- a tenant it does not hold selects nothing, and every action is refused
SET qes_sign.verwaltung = 'hv-wandsbek';
SELECT count(*) AS visible FROM qes_sign.signatur_anfragen;
SELECT regress.try($$SELECT qes_sign.create_request('hv-wandsbek', 't', regress.pdf(), regress.signers())$$);
SELECT regress.try($$SELECT qes_sign.remind(regress.uuid(62))$$);
-- without a tenant it sees nothing and may create nothing
RESET qes_sign.verwaltung;
SELECT count(*) AS visible FROM qes_sign.signatur_anfragen;
SELECT regress.try($$SELECT qes_sign.create_request('hv-eppendorf', 't', regress.pdf(), regress.signers())$$);
SET qes_sign.verwaltung = 'hv-eppendorf';

-- The app changes nothing directly
SELECT regress.try($$UPDATE qes_sign.signatur_anfragen SET status = 'abgebrochen' WHERE id = regress.uuid(61)$$);
SELECT regress.try($$UPDATE qes_sign.signers SET status = 'signed' WHERE request_id = regress.uuid(61)$$);
SELECT regress.try($$INSERT INTO qes_sign.audit_log (event) VALUES ('forged')$$);
SELECT regress.try($$DELETE FROM qes_sign.audit_log$$);
SELECT regress.try($$INSERT INTO qes_sign.callback_inbox (source, dedupe_key) VALUES ('callback', 'x')$$);
SELECT regress.try($$INSERT INTO qes_sign.work_items (request_id, kind) VALUES (regress.uuid(61), 'archive')$$);
SELECT regress.try($$UPDATE qes_sign.audit_head SET seq = 0$$);
-- ... nor calls what belongs to the worker and the operators
SELECT regress.try($$SELECT qes_sign.apply_signature_request(regress.uuid(61), '{"id": "x", "status_overall": "SIGNED", "signatures": []}')$$);
SELECT regress.try($$SELECT * FROM qes_sign.verify_audit_chain()$$);
SELECT regress.try($$SELECT qes_sign.callback_urls(regress.uuid(61))$$);
SELECT regress.try($$SELECT * FROM qes_sign.operations$$);
SELECT regress.try($$SELECT qes_sign._transition(regress.uuid(61), 'abgebrochen')$$);
SELECT regress.try($$SELECT qes_sign._emit(regress.uuid(61), 'forged')$$);

-- Secrets: not readable, not listed
SELECT regress.try($$SHOW qes_sign.callback_secret$$);
SELECT regress.try($$SELECT current_setting('qes_sign.webhook_secrets')$$);
SELECT regress.try($$SELECT current_setting('qes_sign.skribble_api_key')$$);
SELECT regress.try($$SELECT current_setting('qes_sign.s3_secret_key')$$);
SELECT name FROM pg_settings WHERE name LIKE 'qes_sign.%secret%' OR name LIKE 'qes_sign.%key%';
-- and not settable by the app
SELECT regress.try($$SET qes_sign.callback_secret = 'mine'$$);
SELECT regress.try($$SET qes_sign.test_clock = '2000-01-01'$$);
-- what the app may read is its tenant's state
SELECT status, signers_signed, signers_total FROM qes_sign.overview WHERE id = regress.uuid(61);
RESET ROLE;

-- The operators see every tenant, the trail and the operator view
SET ROLE regress_admin;
SELECT verwaltung, count(*) FROM qes_sign.signatur_anfragen WHERE id IN (regress.uuid(61), regress.uuid(62)) GROUP BY 1 ORDER BY 1;
SELECT ok FROM qes_sign.verify_audit_chain();
SELECT count(*) > 0 AS has_metrics FROM qes_sign.operations;
SELECT regress.try($$UPDATE qes_sign.signatur_anfragen SET status = 'abgebrochen' WHERE id = regress.uuid(61)$$);
SELECT regress.try($$SHOW qes_sign.callback_secret$$);
RESET ROLE;

-- a superuser does see the secrets (they are set in test/qes_sign.conf)
SELECT current_setting('qes_sign.callback_secret') <> '' AS superuser_sees_secret;

-- Every SECURITY DEFINER function in SQL or plpgsql pins its search_path
-- with pg_temp named last (an unnamed pg_temp is searched first, and any
-- role can create temporary tables); the one in C (receive_callback, the
-- hot path) names every object and operator of its statements with its
-- schema instead, so a caller's search_path cannot redirect them:
SELECT p.proname FROM pg_proc p
 WHERE p.pronamespace = 'qes_sign'::regnamespace AND p.prosecdef AND p.prolang <> 13
   AND NOT coalesce(p.proconfig @> ARRAY['search_path=pg_catalog, qes_sign, pg_temp'], false);
SELECT p.proname, p.prolang = 13 AS in_c FROM pg_proc p
 WHERE p.pronamespace = 'qes_sign'::regnamespace AND p.prosecdef AND p.proconfig IS NULL;
-- and no function of the schema sets a search_path without pg_temp last
SELECT p.proname, c AS setting FROM pg_proc p, unnest(p.proconfig) c
 WHERE p.pronamespace = 'qes_sign'::regnamespace AND c LIKE 'search_path=%'
   AND c !~ '(^search_path=""$|, *pg_temp$)';
CREATE SCHEMA regress_evil;
CREATE FUNCTION regress_evil.eq(uuid, uuid) RETURNS boolean LANGUAGE sql AS 'SELECT true';
CREATE OPERATOR regress_evil.= (LEFTARG = uuid, RIGHTARG = uuid, FUNCTION = regress_evil.eq);
CREATE TABLE regress_evil.callback_inbox (LIKE qes_sign.callback_inbox);
SET search_path = regress_evil, qes_sign, pg_catalog;
SELECT (qes_sign.receive_callback(replace(qes_sign.callback_url(regress.uuid(61), 'error'),
        'SKRIBBLE_DOCUMENT_ID', 'doc-evil'))).duplicate;
SELECT regress.try($$SELECT qes_sign.receive_callback(qes_sign.callback_url('00000000-0000-0000-0000-0000000000ff', 'update'))$$);
RESET search_path;
SELECT count(*) AS stored_in_the_real_inbox FROM qes_sign.callback_inbox WHERE document_id = 'doc-evil';
SELECT count(*) AS stored_elsewhere FROM regress_evil.callback_inbox;
DROP SCHEMA regress_evil CASCADE;
SELECT count(*) AS public_functions FROM pg_proc p
 WHERE p.pronamespace = 'qes_sign'::regnamespace AND has_function_privilege('public', p.oid, 'EXECUTE');
SELECT count(*) AS public_tables FROM pg_class c
 WHERE c.relnamespace = 'qes_sign'::regnamespace AND c.relkind IN ('r', 'v')
   AND has_table_privilege('public', c.oid, 'SELECT');

-- an operator who is no superuser reads every figure of operations (the
-- view's functions run with the reader's rights)
CREATE ROLE regress_operator IN ROLE qes_sign_admin;
SET ROLE regress_operator;
SELECT count(*) > 0 AS figures FROM qes_sign.operations WHERE metric IN ('api_calls', 'archive_pending_before_deletion');
RESET ROLE;
DROP ROLE regress_operator;
