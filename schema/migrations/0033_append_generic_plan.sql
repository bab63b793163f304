-- append_to_stream runs the same statements on every call, but Postgres planned its
-- INSERT afresh each time: the custom plan knows generate_series's row count and so
-- always looks cheaper than the generic one (measured with pg_stat_statements at 100
-- fusions/s: 30 us of planning per append, a fifth of the INSERT's own time). The
-- generic plan is the same plan. On a micro-benchmark of 6,000 appends over 4
-- connections: 3.08 s -> 2.85-2.97 s.
ALTER FUNCTION append_to_stream(text, integer, uuid[], text[], smallint[], jsonb[], jsonb[])
    SET plan_cache_mode = force_generic_plan;
