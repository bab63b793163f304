-- Read models: tables the projections (service/projections/) keep from the log, and
-- their checkpoints. They hold nothing the log does not: any of them can be dropped
-- and rebuilt from position zero (`fusion-ledger projections rebuild`). Every row
-- carries the tenant of the events it counts, so every read can be limited to one.

-- One row per projection: the last event it has counted, in gap-safe commit order.
-- Advanced in the same transaction as the read-model rows (exactly once).
CREATE TABLE projection_checkpoints (
    name            text        PRIMARY KEY,
    transaction_id  bigint      NOT NULL DEFAULT 0,
    global_position bigint      NOT NULL DEFAULT 0,
    events          bigint      NOT NULL DEFAULT 0,  -- events counted so far
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- runs: one row per run and per replay, for listing, search and grading judges.
CREATE TABLE run_summary (
    stream_id           text        PRIMARY KEY,
    kind                text        NOT NULL,          -- run | replay
    tenant              text        NOT NULL,
    category            text,
    preset              text,
    source_stream_id    text        NOT NULL,          -- the run itself, or a replay's source
    judge               text,                          -- kind[:model][+weighted][+informed]
    judge_decided       boolean,                       -- false: the judge failed, a fallback decided
    status              text        NOT NULL DEFAULT 'open',  -- open | finalized | failed
    failure_reason      text,
    requested_at        timestamptz NOT NULL,
    finished_at         timestamptz,
    latency_ms          float8,
    cost_usd            float8,
    judge_cost_usd      float8,
    judge_latency_ms    float8,
    answer_normalized   text,
    outcomes            integer     NOT NULL DEFAULT 0,
    expected_normalized text,                          -- from the latest outcome
    final_correct       boolean                        -- from the latest outcome
);
CREATE INDEX run_summary_source ON run_summary (source_stream_id);
CREATE INDEX run_summary_tenant_time ON run_summary (tenant, requested_at);

-- model call stats: model x category x day (UTC) x outcome ('ok' or an error kind) x
-- latency bucket. Quantiles come from the buckets (LATENCY_BOUNDS_MS in
-- service/projections/definitions.py); every measure is a plain sum, so a batch of
-- events adds to the rows it touches and nothing else.
CREATE TABLE model_call_stats (
    tenant         text        NOT NULL,
    model          text        NOT NULL,
    category       text        NOT NULL,
    day            date        NOT NULL,
    outcome        text        NOT NULL,
    latency_bucket smallint    NOT NULL,
    calls          bigint      NOT NULL,
    latency_ms     float8      NOT NULL,
    input_tokens   bigint      NOT NULL,
    output_tokens  bigint      NOT NULL,
    cost_usd       float8      NOT NULL,
    PRIMARY KEY (tenant, model, category, day, outcome, latency_bucket)
);

-- model error profile: model x category. What the router reads (profile_loader.py).
CREATE TABLE model_error_profile (
    tenant         text   NOT NULL,
    model          text   NOT NULL,
    category       text   NOT NULL,
    gt_right       bigint NOT NULL DEFAULT 0,   -- ground truth: the member was right
    gt_wrong       bigint NOT NULL DEFAULT 0,
    judge_agree    bigint NOT NULL DEFAULT 0,   -- the run's judge agreed with the member
    judge_disagree bigint NOT NULL DEFAULT 0,
    calls          bigint NOT NULL DEFAULT 0,
    failures       bigint NOT NULL DEFAULT 0,
    cost_usd       float8 NOT NULL DEFAULT 0,   -- over successful calls
    latency_ms     float8 NOT NULL DEFAULT 0,   -- over all calls
    output_tokens  bigint NOT NULL DEFAULT 0,   -- over successful calls
    PRIMARY KEY (tenant, model, category)
);

-- co-failure: two graded seats of the same run (model_a <= model_b).
CREATE TABLE co_failure (
    tenant     text   NOT NULL,
    category   text   NOT NULL,
    model_a    text   NOT NULL,
    model_b    text   NOT NULL,
    both_wrong bigint NOT NULL DEFAULT 0,
    one_wrong  bigint NOT NULL DEFAULT 0,
    both_right bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, category, model_a, model_b)
);

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'fusion_ledger_app') THEN
        GRANT SELECT, INSERT, UPDATE ON projection_checkpoints, run_summary,
            model_call_stats, model_error_profile, co_failure TO fusion_ledger_app;
    END IF;
END $$;
