-------------------------------------------------------------------------------
-- Privileges of the new objects
-------------------------------------------------------------------------------
-- (as in 1.0: nothing for PUBLIC, then what each role needs)
REVOKE ALL ON ALL TABLES IN SCHEMA qes_sign FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA qes_sign FROM PUBLIC;
-- row-level security calls it for the application's queries
GRANT EXECUTE ON FUNCTION _session_tenant(), my_tenants() TO qes_sign_app;
-- create_request gained the provider argument
GRANT EXECUTE ON FUNCTION create_request(text, text, bytea, jsonb, text, text, boolean, interval, uuid, uuid, text)
    TO qes_sign_app;
GRANT SELECT ON tenant_grants, audit_anchors, webhook_ids, provider_pauses TO qes_sign_admin;
-- the operations view calls it (a view's functions run with the reader's rights)
GRANT EXECUTE ON FUNCTION _deletes_soon(date) TO qes_sign_admin;
GRANT EXECUTE ON FUNCTION grant_tenant(regrole, text), revoke_tenant(regrole, text),
                          anchor_audit_chain(), verify_audit_chain(int)
    TO qes_sign_admin;

-- an update from 1.0: the portal roles hold no tenant yet; say which to grant
-- (a WARNING: extension scripts run with client_min_messages at least that)
DO $$
DECLARE
    missing text := (SELECT string_agg(DISTINCT a.verwaltung, ', ') FROM signatur_anfragen a);
BEGIN
    IF missing IS NOT NULL THEN
        RAISE WARNING 'qes_sign 1.1 binds tenants to roles; grant each portal role its tenants: %', missing
            USING HINT = 'SELECT qes_sign.grant_tenant(''portal_role'', ''verwaltung''); until then the portal sees no requests.';
    END IF;
END
$$;

-------------------------------------------------------------------------------
-- Last: every function of the schema that pins search_path names pg_temp
-- last; PostgreSQL searches an unnamed pg_temp first, and any role can
-- create temporary tables
-------------------------------------------------------------------------------
DO $$
DECLARE
    f regprocedure;
BEGIN
    -- (the functions 1.0 pinned; the same test as sql/security.sql's)
    FOR f IN SELECT DISTINCT p.oid FROM pg_proc p, unnest(p.proconfig) c
              WHERE p.pronamespace = 'qes_sign'::regnamespace
                AND c LIKE 'search\_path=%' AND c !~ ', *pg_temp$' LOOP
        EXECUTE format('ALTER FUNCTION %s SET search_path = pg_catalog, qes_sign, pg_temp', f);
    END LOOP;
END
$$;
