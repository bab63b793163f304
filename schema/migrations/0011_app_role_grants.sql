-- Grant the service role what it reads at start (readiness reads schema_migrations),
-- also where 0002 could not create the role but an operator created it by hand.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'fusion_ledger_app') THEN
        EXECUTE format('GRANT USAGE ON SCHEMA %I TO fusion_ledger_app', current_schema());
        GRANT SELECT, INSERT ON events TO fusion_ledger_app;
        GRANT SELECT, INSERT, UPDATE ON streams TO fusion_ledger_app;
        GRANT SELECT ON schema_migrations TO fusion_ledger_app;
    END IF;
END $$;
