-- judge profile: judge x category, replays included, kept by the runs projection.
-- A judge's answer on a run is graded against its source run's latest ground truth,
-- and compared with every other judge's answer on the same source run. Both change
-- when a later outcome or replay arrives, so the projection subtracts the affected
-- source runs' old contribution and adds their new one (see definitions.py).
CREATE TABLE judge_profile (
    tenant     text   NOT NULL,
    judge      text   NOT NULL,                -- kind[:model][+weighted][+informed]
    category   text   NOT NULL,
    runs       bigint NOT NULL DEFAULT 0,      -- runs and replays this judge decided or failed
    replays    bigint NOT NULL DEFAULT 0,
    fallbacks  bigint NOT NULL DEFAULT 0,      -- the judge failed, a fallback decided
    failed     bigint NOT NULL DEFAULT 0,      -- no final answer
    graded     bigint NOT NULL DEFAULT 0,      -- with ground truth that can grade it
    right_     bigint NOT NULL DEFAULT 0,
    compared   bigint NOT NULL DEFAULT 0,      -- answers of other judges on the same runs
    agreed     bigint NOT NULL DEFAULT 0,
    cost_usd   float8 NOT NULL DEFAULT 0,
    latency_ms float8 NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, judge, category)
);

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'fusion_ledger_app') THEN
        GRANT SELECT, INSERT, UPDATE ON judge_profile TO fusion_ledger_app;
    END IF;
END $$;
