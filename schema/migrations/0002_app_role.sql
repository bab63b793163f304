-- The service's own role needs only INSERT and SELECT on the log (plus the stream
-- bookkeeping). Created only where the migrating role may create roles; elsewhere
-- the operator grants these by hand (see ops/runbook.md).
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles
                   WHERE rolname = current_user AND (rolsuper OR rolcreaterole)) THEN
        RAISE NOTICE 'fusion_ledger_app not created: % may not create roles', current_user;
        RETURN;
    END IF;
    BEGIN
        CREATE ROLE fusion_ledger_app NOLOGIN;
    EXCEPTION WHEN duplicate_object OR unique_violation THEN
        NULL;  -- created before, or by a concurrent migrator in another schema
    END;
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO fusion_ledger_app', current_schema());
    GRANT SELECT, INSERT ON events TO fusion_ledger_app;
    GRANT SELECT, INSERT, UPDATE ON streams TO fusion_ledger_app;
END $$;
