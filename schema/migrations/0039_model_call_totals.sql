-- model_call_totals: model_call_stats without the day. The failures questions that
-- neither group nor filter by day (the usual "which model fails, how") read it: on a
-- 30-day log a tenant's totals are about 3,000 rows where its daily rows are 34,000,
-- and grouping those took the p95 of the statistics queries over 50 ms (ops/bench).
-- The model_stats projection keeps it in the same statement as model_call_stats, so
-- the two always hold the same calls.
CREATE TABLE model_call_totals (
    tenant         text     NOT NULL,
    model          text     NOT NULL,
    category       text     NOT NULL,
    outcome        text     NOT NULL,
    latency_bucket smallint NOT NULL,
    calls          bigint   NOT NULL,
    latency_ms     float8   NOT NULL,
    input_tokens   bigint   NOT NULL,
    output_tokens  bigint   NOT NULL,
    cost_usd       float8   NOT NULL,
    PRIMARY KEY (tenant, model, category, outcome, latency_bucket)
);

-- The daily rows of a window (say the last week) without reading all the tenant's
-- days: 7.8 -> 3.5 ms for a week of a 30-day log, and it grows with the log's age.
CREATE INDEX model_call_stats_by_day ON model_call_stats (tenant, day);

-- From the daily rows as they stand, at the projection's checkpoint: a worker of the
-- previous release that steps after this does not keep the new table (see the
-- runbook's "Releases that change what a projection computes": rebuild model_stats).
INSERT INTO model_call_totals
SELECT tenant, model, category, outcome, latency_bucket, sum(calls), sum(latency_ms),
       sum(input_tokens), sum(output_tokens), sum(cost_usd)
FROM model_call_stats
GROUP BY tenant, model, category, outcome, latency_bucket;

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'fusion_ledger_app') THEN
        GRANT SELECT, INSERT, UPDATE ON model_call_totals TO fusion_ledger_app;
    END IF;
END $$;
