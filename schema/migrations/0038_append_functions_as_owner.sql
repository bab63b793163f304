-- The service's role writes the log only through the append functions.
--
-- Until now fusion_ledger_app held INSERT on events and INSERT, UPDATE on streams, so
-- whoever held its credentials could insert an event row directly, with a chosen
-- recorded_at and transaction_id and a correctly chained hash: a backdated event that
-- `verify` and a digest check both accepted, and that the live projections skipped
-- while as_of answers counted it. The append functions now run as their owner
-- (SECURITY DEFINER, with a fixed search_path so no caller can substitute a table or
-- function of the same name), and the role keeps only SELECT on the two tables: every
-- event it writes gets the database's own time, transaction id, version and chain.
-- Running as the owner, the functions are no longer everyone's to call (functions are
-- executable by PUBLIC by default): PUBLIC loses EXECUTE whether or not the service's
-- role exists yet (where it does not, the grant list gives it EXECUTE once created;
-- the owner keeps it regardless).
DO $$
BEGIN
    EXECUTE format(
        'ALTER FUNCTION append_to_stream(text, integer, uuid[], text[], smallint[], jsonb[],'
        ' jsonb[]) SECURITY DEFINER SET search_path = %I, pg_temp', current_schema());
    EXECUTE format(
        'ALTER FUNCTION append_new_streams(text[], uuid[], text[], smallint[], jsonb[], jsonb[])'
        ' SECURITY DEFINER SET search_path = %I, pg_temp', current_schema());
    EXECUTE format(
        'ALTER FUNCTION append_new_streams(jsonb) SECURITY DEFINER SET search_path = %I, pg_temp',
        current_schema());
    REVOKE EXECUTE ON FUNCTION
        append_to_stream(text, integer, uuid[], text[], smallint[], jsonb[], jsonb[]),
        append_new_streams(text[], uuid[], text[], smallint[], jsonb[], jsonb[]),
        append_new_streams(jsonb)
        FROM PUBLIC;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'fusion_ledger_app') THEN
        REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON events, streams FROM fusion_ledger_app;
        GRANT SELECT ON events, streams TO fusion_ledger_app;
        GRANT EXECUTE ON FUNCTION
            append_to_stream(text, integer, uuid[], text[], smallint[], jsonb[], jsonb[]),
            append_new_streams(text[], uuid[], text[], smallint[], jsonb[], jsonb[]),
            append_new_streams(jsonb)
            TO fusion_ledger_app;
    END IF;
END $$;
