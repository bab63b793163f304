-- GET /v1/runs lists a tenant's run.requested events newest first. Without an index
-- for it, Postgres walked every request backwards and filtered by tenant: on a log of
-- 1,026,667 events (140,000 runs), 350 ms for a quarter-of-the-runs tenant with a
-- category filter. This partial index (one entry per run) gives the order and the
-- tenant at once: 7-9 ms for the same query, generic plan included.
CREATE INDEX IF NOT EXISTS events_run_requests_by_tenant ON events ((metadata->>'tenant'), global_position)
    WHERE event_type = 'run.requested';
