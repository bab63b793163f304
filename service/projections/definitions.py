"""The projections: which read-model tables each keeps, and the SQL that keeps them.

Every statement is set-based and takes the same four parameters, a half-open range of
the log in gap-safe commit order: ``(transaction_id, global_position)`` greater than
($1, $2) and at most ($3, $4). Applied in order over consecutive ranges they add each
event exactly once; applied over (start, P] they build the read models as of P. The
runner (runner.py) uses them for the live tables, for a rebuild into shadow tables and
for ``as_of`` answers in temporary tables: one definition, three uses.

Statements never look at a read model to find an event's context (a call's category,
a seat's model): they join the run's own ``run.requested`` (stream version 1) and
``panel.selected`` events, by the (stream_id, stream_version) index. That keeps each
projection independent of the others, so each can be rebuilt alone.

Only run streams count towards model profiles and call statistics (a replay re-judges
a run whose calls were already counted); the runs read model holds replays too, which
is what the judge statistics compare.
"""

from __future__ import annotations

from dataclasses import dataclass

# Latency histogram upper bounds (ms) of model_call_stats.latency_bucket: bucket b holds
# latencies in [BOUNDS[b-1], BOUNDS[b]); bucket 0 is below the first bound and bucket
# len(BOUNDS) at or above the last (Postgres width_bucket).
LATENCY_BOUNDS_MS: tuple[float, ...] = (
    5, 10, 20, 35, 50, 75, 100, 150, 200, 300, 500, 750, 1000, 1500, 2000, 3000, 5000,
    7500, 10000, 15000, 20000, 30000, 60000, 120000,
)  # fmt: skip

# The range of the log a statement applies ($1..$4), on the events aliased `e`.
IN_RANGE = """(e.transaction_id, e.global_position) > ($1::text::xid8, $2::bigint)
  AND (e.transaction_id, e.global_position) <= ($3::text::xid8, $4::bigint)"""

TENANT = "coalesce(r.metadata->>'tenant', 'default')"

# A judge's identity as one text: kind[:model][+weighted][+informed].
JUDGE_KEY = """(e.data->'judge'->>'kind') || coalesce(':' || (e.data->'judge'->>'model'), '')
    || CASE WHEN coalesce((e.data->'judge'->>'weighted')::boolean, false)
            THEN '+weighted' ELSE '' END
    || CASE WHEN coalesce((e.data->'judge'->>'informed')::boolean, false)
            THEN '+informed' ELSE '' END"""

# A run stream's request (category, tenant) and its seats (member_id -> model).
RUN_OF_E = """JOIN events r ON r.stream_id = e.stream_id AND r.stream_version = 1
     AND r.event_type = 'run.requested'"""
SEATS_OF_E = """JOIN LATERAL (
        SELECT ps.data->'members' AS members FROM events ps
        WHERE ps.stream_id = e.stream_id AND ps.event_type = 'panel.selected'
        ORDER BY ps.stream_version DESC LIMIT 1) AS seats ON true"""


@dataclass(frozen=True, slots=True)
class Projection:
    """A named set of read-model tables, kept by ``statements`` applied in order."""

    name: str
    tables: tuple[str, ...]
    statements: tuple[str, ...]
    event_types: tuple[str, ...]  # the events it reads (documentation, lag is per log)


RUNS = Projection(
    name="runs",
    tables=("run_summary",),
    event_types=(
        "run.requested",
        "replay.requested",
        "judge.decided",
        "judge.failed",
        "answer.finalized",
        "run.failed",
        "outcome.recorded",
    ),
    statements=(
        f"""
INSERT INTO run_summary (stream_id, kind, tenant, category, preset, source_stream_id,
                         requested_at)
SELECT e.stream_id,
       CASE e.event_type WHEN 'run.requested' THEN 'run' ELSE 'replay' END,
       coalesce(e.metadata->>'tenant', 'default'),
       coalesce(e.data->>'category', src.data->>'category'),
       coalesce(e.data->>'preset', src.data->>'preset'),
       CASE e.event_type WHEN 'run.requested' THEN e.stream_id
            ELSE 'run-' || (e.data->>'source_run_id') END,
       e.recorded_at
FROM events e
LEFT JOIN events src ON e.event_type = 'replay.requested'
     AND src.stream_id = 'run-' || (e.data->>'source_run_id') AND src.stream_version = 1
WHERE e.event_type IN ('run.requested', 'replay.requested') AND {IN_RANGE}
ON CONFLICT (stream_id) DO NOTHING
""",
        f"""
UPDATE run_summary s
SET judge = j.judge, judge_decided = j.decided, judge_cost_usd = j.cost_usd,
    judge_latency_ms = j.latency_ms
FROM (SELECT DISTINCT ON (e.stream_id) e.stream_id, {JUDGE_KEY} AS judge,
             e.event_type = 'judge.decided' AS decided,
             (e.data->>'cost_usd')::float8 AS cost_usd,
             (e.data->>'latency_ms')::float8 AS latency_ms
      FROM events e
      WHERE e.event_type IN ('judge.decided', 'judge.failed') AND {IN_RANGE}
      ORDER BY e.stream_id, e.transaction_id DESC, e.global_position DESC) AS j
WHERE s.stream_id = j.stream_id
""",
        f"""
UPDATE run_summary s
SET status = f.status, failure_reason = f.reason, finished_at = f.recorded_at,
    latency_ms = f.latency_ms, cost_usd = f.cost_usd, answer_normalized = f.answer
FROM (SELECT DISTINCT ON (e.stream_id) e.stream_id,
             CASE e.event_type WHEN 'answer.finalized' THEN 'finalized' ELSE 'failed' END
                 AS status,
             e.data->>'reason' AS reason, e.recorded_at,
             (e.data->>'latency_ms')::float8 AS latency_ms,
             (e.data->>'cost_usd')::float8 AS cost_usd,
             e.data->>'answer_normalized' AS answer
      FROM events e
      WHERE e.event_type IN ('answer.finalized', 'run.failed') AND {IN_RANGE}
      ORDER BY e.stream_id, e.transaction_id DESC, e.global_position DESC) AS f
WHERE s.stream_id = f.stream_id
""",
        f"""
UPDATE run_summary s
SET outcomes = s.outcomes + o.n, expected_normalized = o.expected,
    final_correct = o.final_correct
FROM (SELECT DISTINCT ON (e.stream_id) e.stream_id,
             count(*) OVER (PARTITION BY e.stream_id) AS n,
             e.data->>'expected_normalized' AS expected,
             (e.data->>'final_correct')::boolean AS final_correct
      FROM events e
      WHERE e.event_type = 'outcome.recorded' AND {IN_RANGE}
      ORDER BY e.stream_id, e.transaction_id DESC, e.global_position DESC) AS o
WHERE s.stream_id = o.stream_id
""",
    ),
)

CALL_STATS = Projection(
    name="model_call_stats",
    tables=("model_call_stats",),
    event_types=("panel.call.succeeded", "panel.call.failed"),
    statements=(
        f"""
INSERT INTO model_call_stats AS s (tenant, model, category, day, outcome, latency_bucket,
                                   calls, latency_ms, input_tokens, output_tokens, cost_usd)
SELECT {TENANT}, e.data->>'model', r.data->>'category',
       (e.recorded_at AT TIME ZONE 'UTC')::date,
       CASE e.event_type WHEN 'panel.call.succeeded' THEN 'ok'
            ELSE e.data->>'error_kind' END,
       width_bucket((e.data->>'latency_ms')::float8, $5::float8[]),
       count(*), sum((e.data->>'latency_ms')::float8),
       coalesce(sum((e.data->>'input_tokens')::bigint), 0),
       coalesce(sum((e.data->>'output_tokens')::bigint), 0),
       coalesce(sum((e.data->>'cost_usd')::float8), 0)
FROM events e
{RUN_OF_E}
WHERE e.event_type IN ('panel.call.succeeded', 'panel.call.failed') AND {IN_RANGE}
GROUP BY 1, 2, 3, 4, 5, 6
ON CONFLICT (tenant, model, category, day, outcome, latency_bucket) DO UPDATE
SET calls = s.calls + excluded.calls, latency_ms = s.latency_ms + excluded.latency_ms,
    input_tokens = s.input_tokens + excluded.input_tokens,
    output_tokens = s.output_tokens + excluded.output_tokens,
    cost_usd = s.cost_usd + excluded.cost_usd
""",
    ),
)

# The same counts as service.domain.profiles.ProfileFold, which the router and
# `route explain` use in memory; tests hold the two equal.
ERROR_PROFILE = Projection(
    name="model_error_profile",
    tables=("model_error_profile", "co_failure"),
    event_types=("panel.call.succeeded", "panel.call.failed", "judge.decided", "outcome.recorded"),
    statements=(
        f"""
INSERT INTO model_error_profile AS p (tenant, model, category, calls, failures, cost_usd,
                                      latency_ms, output_tokens)
SELECT {TENANT}, e.data->>'model', r.data->>'category', count(*),
       count(*) FILTER (WHERE e.event_type = 'panel.call.failed'),
       coalesce(sum((e.data->>'cost_usd')::float8)
                FILTER (WHERE e.event_type = 'panel.call.succeeded'), 0),
       sum((e.data->>'latency_ms')::float8),
       coalesce(sum((e.data->>'output_tokens')::bigint)
                FILTER (WHERE e.event_type = 'panel.call.succeeded'), 0)
FROM events e
{RUN_OF_E}
WHERE e.event_type IN ('panel.call.succeeded', 'panel.call.failed') AND {IN_RANGE}
GROUP BY 1, 2, 3
ON CONFLICT (tenant, model, category) DO UPDATE
SET calls = p.calls + excluded.calls, failures = p.failures + excluded.failures,
    cost_usd = p.cost_usd + excluded.cost_usd, latency_ms = p.latency_ms + excluded.latency_ms,
    output_tokens = p.output_tokens + excluded.output_tokens
""",
        f"""
INSERT INTO model_error_profile AS p (tenant, model, category, judge_agree, judge_disagree)
SELECT {TENANT}, m.value->>'model', r.data->>'category',
       count(*) FILTER (WHERE (v.value->>'agrees')::boolean),
       count(*) FILTER (WHERE NOT (v.value->>'agrees')::boolean)
FROM events e
{RUN_OF_E}
{SEATS_OF_E}
CROSS JOIN LATERAL jsonb_array_elements(e.data->'verdicts') AS v
JOIN LATERAL jsonb_array_elements(seats.members) AS m
     ON m.value->>'member_id' = v.value->>'member_id'
WHERE e.event_type = 'judge.decided' AND e.stream_id LIKE 'run-%' AND {IN_RANGE}
GROUP BY 1, 2, 3
ON CONFLICT (tenant, model, category) DO UPDATE
SET judge_agree = p.judge_agree + excluded.judge_agree,
    judge_disagree = p.judge_disagree + excluded.judge_disagree
""",
        f"""
INSERT INTO model_error_profile AS p (tenant, model, category, gt_right, gt_wrong)
SELECT {TENANT}, m.value->>'model', r.data->>'category',
       count(*) FILTER (WHERE (o.value->>'correct')::boolean),
       count(*) FILTER (WHERE NOT (o.value->>'correct')::boolean)
FROM events e
{RUN_OF_E}
{SEATS_OF_E}
CROSS JOIN LATERAL jsonb_array_elements(e.data->'members') AS o
JOIN LATERAL jsonb_array_elements(seats.members) AS m
     ON m.value->>'member_id' = o.value->>'member_id'
WHERE e.event_type = 'outcome.recorded' AND e.stream_id LIKE 'run-%'
  AND jsonb_typeof(o.value->'correct') = 'boolean' AND {IN_RANGE}
GROUP BY 1, 2, 3
ON CONFLICT (tenant, model, category) DO UPDATE
SET gt_right = p.gt_right + excluded.gt_right, gt_wrong = p.gt_wrong + excluded.gt_wrong
""",
        f"""
WITH graded AS (
    SELECT e.global_position AS event, o.ord, {TENANT} AS tenant,
           r.data->>'category' AS category, m.value->>'model' AS model,
           (o.value->>'correct')::boolean AS correct
    FROM events e
    {RUN_OF_E}
    {SEATS_OF_E}
    CROSS JOIN LATERAL jsonb_array_elements(e.data->'members') WITH ORDINALITY AS o(value, ord)
    JOIN LATERAL jsonb_array_elements(seats.members) AS m
         ON m.value->>'member_id' = o.value->>'member_id'
    WHERE e.event_type = 'outcome.recorded' AND e.stream_id LIKE 'run-%'
      AND jsonb_typeof(o.value->'correct') = 'boolean' AND {IN_RANGE}
)
INSERT INTO co_failure AS c (tenant, category, model_a, model_b, both_wrong, one_wrong,
                             both_right)
SELECT a.tenant, a.category, least(a.model, b.model), greatest(a.model, b.model),
       count(*) FILTER (WHERE NOT a.correct AND NOT b.correct),
       count(*) FILTER (WHERE a.correct <> b.correct),
       count(*) FILTER (WHERE a.correct AND b.correct)
FROM graded a JOIN graded b ON a.event = b.event AND a.ord < b.ord
GROUP BY 1, 2, 3, 4
ON CONFLICT (tenant, category, model_a, model_b) DO UPDATE
SET both_wrong = c.both_wrong + excluded.both_wrong,
    one_wrong = c.one_wrong + excluded.one_wrong,
    both_right = c.both_right + excluded.both_right
""",
    ),
)

PROJECTIONS: tuple[Projection, ...] = (RUNS, CALL_STATS, ERROR_PROFILE)
BY_NAME: dict[str, Projection] = {p.name: p for p in PROJECTIONS}


def statement_args(statement: str) -> tuple[object, ...]:
    """Parameters after the range that a statement takes ($5: the latency bounds)."""
    return (list(LATENCY_BOUNDS_MS),) if "$5" in statement else ()
