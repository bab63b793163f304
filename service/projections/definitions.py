"""The projections: which read-model tables each keeps, and the SQL that keeps them.

Every statement is set-based and takes the same four parameters, a half-open range of
the log in gap-safe commit order: ``(transaction_id, global_position)`` greater than
($1, $2) and at most ($3, $4). Applied in order over consecutive ranges they add each
event exactly once; applied over (start, P] they build the read models as of P. The
runner (runner.py) uses them for the live tables, for a rebuild into shadow tables and
for ``as_of`` answers in temporary tables: one definition, three uses.

Statements never look at a read model to find an event's context (a call's category,
a seat's model): they take it from the run's own ``run.requested`` and
``panel.selected`` events, read with the range when it holds them (always, for a range
from the log's beginning: a stream's first events come first in commit order), else
looked up by stream. That keeps each projection independent of the others, so each can
be rebuilt alone.

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

# True unless the range starts at the log's beginning, where it holds every stream's
# first events: a constant condition, so Postgres skips what it guards without running it.
AFTER_START = "$2::bigint > 0"

# A judge's identity as one text: kind[:model][+weighted][+informed].
JUDGE_KEY = """(e.data->'judge'->>'kind') || coalesce(':' || (e.data->'judge'->>'model'), '')
    || CASE WHEN coalesce((e.data->'judge'->>'weighted')::boolean, false)
            THEN '+weighted' ELSE '' END
    || CASE WHEN coalesce((e.data->'judge'->>'informed')::boolean, false)
            THEN '+informed' ELSE '' END"""


_REQUEST = "type IN ('run.requested', 'replay.requested')"
_JUDGE = "type IN ('judge.decided', 'judge.failed')"
_TERMINAL = "type IN ('answer.finalized', 'run.failed')"
_STATUS = "CASE type WHEN 'answer.finalized' THEN 'finalized' ELSE 'failed' END"


def _one(value: str, where: str) -> str:
    """The value of a stream's one event that matches ``where`` (a stream has one
    request, one judge event and one end), in a GROUP BY: no sort needed. (Over a
    position it is also the latest of several events: positions grow in a stream.)"""
    return f"max({value}) FILTER (WHERE {where})"


@dataclass(frozen=True, slots=True)
class Projection:
    """A named set of read-model tables, kept by ``statements`` applied in order."""

    name: str
    tables: tuple[str, ...]
    statements: tuple[str, ...]
    planner: str = ""  # SET LOCAL statements for its transactions, after PLANNER_SETTINGS


# The source runs a range touches: their judge statistics change (a new judge answer,
# a new truth, or a new replay to compare with).
_AFFECTED = f"""affected AS (
    SELECT DISTINCT coalesce(
        s.source_stream_id,
        CASE e.event_type WHEN 'replay.requested' THEN 'run-' || (e.data->>'source_run_id')
                          ELSE e.stream_id END) AS source
    FROM events e LEFT JOIN run_summary s ON s.stream_id = e.stream_id
    WHERE e.event_type IN ('run.requested', 'replay.requested', 'judge.decided',
                           'judge.failed', 'answer.finalized', 'run.failed',
                           'outcome.recorded')
      AND {IN_RANGE}
)"""

# What the affected source runs add to judge_profile, from run_summary as it stands.
# Every judged row counts towards runs, replays, fallbacks, failures, cost and latency
# (what the judge did and cost). Accuracy and agreement count each source run once per
# judge, so judges are ranked on the same runs however often one was replayed: the
# deciding row is the original run's own judge, else the latest replay.
# A judge that failed gave no answer (whatever a fallback then gave): it is graded
# wrong where the run has a truth, and its row agrees with no other judge (as the
# batch replay report counts it: a judge cannot look better by failing).
# Grading: the expected answer when the latest outcome gives one; else its label: the
# run's own judge gets it, a replay with the same answer too, a replay with another
# answer is wrong where the original was right and ungraded where it was wrong.
_CONTRIBUTION = f"""judged_rows AS (  -- the affected source runs' judged rows (all, from the start)
    SELECT j.* FROM run_summary j WHERE NOT {AFTER_START} AND j.judge IS NOT NULL
    UNION ALL  -- by index from each affected source, not by a scan of every run
    SELECT j.* FROM affected a JOIN run_summary j ON j.source_stream_id = a.source
    WHERE {AFTER_START} AND j.judge IS NOT NULL
),
ranked AS (
    SELECT j.*, CASE WHEN j.judge_decided THEN j.answer_normalized END AS judge_answer,
           row_number() OVER (PARTITION BY j.source_stream_id, j.judge
                              ORDER BY j.kind = 'run' DESC, j.requested_at DESC,
                                       j.stream_id DESC) = 1 AS deciding
    FROM judged_rows j
),
judged AS (
    SELECT j.*,
           -- compared: the other judges' answers on the same source run; agreed: those
           -- equal to this row's answer (deciding rows only: one per judge and run)
           CASE WHEN NOT j.deciding THEN 0 ELSE
               count(j.judge_answer) FILTER (WHERE j.deciding)
                   OVER (PARTITION BY j.source_stream_id)
               - (j.judge_answer IS NOT NULL)::int
           END AS compared,
           CASE WHEN NOT j.deciding OR j.judge_answer IS NULL THEN 0 ELSE
               count(*) FILTER (WHERE j.deciding)
                   OVER (PARTITION BY j.source_stream_id, j.judge_answer) - 1
           END AS agreed
    FROM ranked j
),
contribution AS (
    SELECT j.tenant, j.judge, j.category, count(*) AS runs,
           count(*) FILTER (WHERE j.kind = 'replay') AS replays,
           count(*) FILTER (WHERE NOT j.judge_decided) AS fallbacks,
           count(*) FILTER (WHERE j.status = 'failed') AS failed,
           count(g.correct) FILTER (WHERE j.deciding) AS graded,
           count(*) FILTER (WHERE j.deciding AND g.correct) AS right_,
           sum(j.compared) AS compared, sum(j.agreed) AS agreed,
           coalesce(sum(j.judge_cost_usd), 0) AS cost_usd,
           coalesce(sum(j.judge_latency_ms), 0) AS latency_ms
    FROM judged j
    JOIN run_summary src ON src.stream_id = j.source_stream_id
    CROSS JOIN LATERAL (SELECT CASE
        WHEN src.expected_normalized IS NULL AND src.final_correct IS NULL THEN NULL
        WHEN j.judge_answer IS NULL THEN false
        WHEN src.expected_normalized IS NOT NULL
            THEN j.judge_answer = src.expected_normalized
        WHEN j.stream_id = src.stream_id OR j.judge_answer = src.answer_normalized
            THEN src.final_correct
        WHEN src.final_correct THEN false
        ELSE NULL END AS correct) AS g
    GROUP BY j.tenant, j.judge, j.category
)"""


def _add_contribution(sign: str) -> str:
    return f"""
WITH {_AFFECTED},
{_CONTRIBUTION}
INSERT INTO judge_profile AS p (tenant, judge, category, runs, replays, fallbacks, failed,
                                graded, right_, compared, agreed, cost_usd, latency_ms)
SELECT tenant, judge, category, {sign}runs, {sign}replays, {sign}fallbacks, {sign}failed,
       {sign}graded, {sign}right_, {sign}compared, {sign}agreed, {sign}cost_usd,
       {sign}latency_ms
FROM contribution
ON CONFLICT (tenant, judge, category) DO UPDATE
SET runs = p.runs + excluded.runs, replays = p.replays + excluded.replays,
    fallbacks = p.fallbacks + excluded.fallbacks, failed = p.failed + excluded.failed,
    graded = p.graded + excluded.graded, right_ = p.right_ + excluded.right_,
    compared = p.compared + excluded.compared, agreed = p.agreed + excluded.agreed,
    cost_usd = p.cost_usd + excluded.cost_usd, latency_ms = p.latency_ms + excluded.latency_ms
"""


# Every run and replay stream the range touches, folded to one row in one scan: its
# request (only in the range that holds it; other rows exist already), its judge, its
# end (one of each per stream, as the writers guarantee) and its outcomes (counted;
# the latest one is the truth).
RUNS = Projection(
    name="runs",
    tables=("run_summary", "judge_profile"),
    statements=(
        _add_contribution("-"),  # the affected source runs' old judge statistics out
        f"""
WITH batch AS (
    SELECT e.stream_id, e.global_position AS pos, e.event_type AS type, e.recorded_at,
           e.metadata->>'tenant' AS tenant, e.data->>'category' AS category,
           e.data->>'preset' AS preset, e.data->>'source_run_id' AS source_run_id,
           CASE WHEN e.event_type IN ('judge.decided', 'judge.failed') THEN {JUDGE_KEY} END
               AS judge,
           (e.data->>'cost_usd')::float8 AS cost_usd,
           (e.data->>'latency_ms')::float8 AS latency_ms,
           e.data->>'reason' AS reason, e.data->>'answer_normalized' AS answer
    FROM events e
    WHERE e.event_type IN ('run.requested', 'replay.requested', 'judge.decided',
                           'judge.failed', 'answer.finalized', 'run.failed',
                           'outcome.recorded')
      AND {IN_RANGE}
),
streams AS (
    SELECT stream_id,
        {_one("type", _REQUEST)} AS request,
        {_one("tenant", _REQUEST)} AS tenant,
        {_one("category", _REQUEST)} AS category,
        {_one("preset", _REQUEST)} AS preset,
        {_one("source_run_id", _REQUEST)} AS source_run_id,
        {_one("recorded_at", _REQUEST)} AS requested_at,
        {_one("judge", _JUDGE)} AS judge,
        bool_or(type = 'judge.decided') FILTER (WHERE {_JUDGE}) AS judge_decided,
        {_one("cost_usd", _JUDGE)} AS judge_cost_usd,
        {_one("latency_ms", _JUDGE)} AS judge_latency_ms,
        {_one(_STATUS, _TERMINAL)} AS status,
        {_one("reason", _TERMINAL)} AS failure_reason,
        {_one("recorded_at", _TERMINAL)} AS finished_at,
        {_one("latency_ms", _TERMINAL)} AS latency_ms,
        {_one("cost_usd", _TERMINAL)} AS cost_usd,
        {_one("answer", _TERMINAL)} AS answer_normalized,
        count(*) FILTER (WHERE type = 'outcome.recorded') AS outcomes,
        {_one("pos", "type = 'outcome.recorded'")} AS truth
    FROM batch GROUP BY stream_id
)
INSERT INTO run_summary AS s (
    stream_id, kind, tenant, category, preset, source_stream_id, requested_at, judge,
    judge_decided, judge_cost_usd, judge_latency_ms, status, failure_reason, finished_at,
    latency_ms, cost_usd, answer_normalized, outcomes, expected_normalized, final_correct)
SELECT t.stream_id,
       CASE t.request WHEN 'replay.requested' THEN 'replay' ELSE 'run' END,
       coalesce(t.tenant, 'default'),
       CASE WHEN t.source_run_id IS NULL THEN t.category
            ELSE (SELECT src.data->>'category' FROM events src
                  WHERE src.stream_id = 'run-' || t.source_run_id
                    AND src.stream_version = 1) END,
       CASE WHEN t.source_run_id IS NULL THEN t.preset
            ELSE (SELECT src.data->>'preset' FROM events src
                  WHERE src.stream_id = 'run-' || t.source_run_id
                    AND src.stream_version = 1) END,
       coalesce('run-' || t.source_run_id, t.stream_id),
       coalesce(t.requested_at, now()), t.judge, t.judge_decided, t.judge_cost_usd,
       t.judge_latency_ms, coalesce(t.status, 'open'), t.failure_reason, t.finished_at,
       t.latency_ms, t.cost_usd, t.answer_normalized, t.outcomes, truth.expected,
       truth.final_correct
FROM streams t
LEFT JOIN LATERAL (  -- the stream's latest outcome, by position (few streams have one)
    SELECT o.data->>'expected_normalized' AS expected,
           (o.data->>'final_correct')::boolean AS final_correct
    FROM events o WHERE o.global_position = t.truth
) AS truth ON true
-- A stream's request comes before its other events in commit order: a stream without
-- its request in this range has its row already (the placeholders above are not used).
WHERE t.request IS NOT NULL OR EXISTS (SELECT 1 FROM run_summary x
                                       WHERE x.stream_id = t.stream_id)
ON CONFLICT (stream_id) DO UPDATE SET
    judge = coalesce(excluded.judge, s.judge),
    judge_decided = coalesce(excluded.judge_decided, s.judge_decided),
    judge_cost_usd = coalesce(excluded.judge_cost_usd, s.judge_cost_usd),
    judge_latency_ms = coalesce(excluded.judge_latency_ms, s.judge_latency_ms),
    status = CASE excluded.status WHEN 'open' THEN s.status ELSE excluded.status END,
    failure_reason = coalesce(excluded.failure_reason, s.failure_reason),
    finished_at = coalesce(excluded.finished_at, s.finished_at),
    latency_ms = coalesce(excluded.latency_ms, s.latency_ms),
    cost_usd = coalesce(excluded.cost_usd, s.cost_usd),
    answer_normalized = coalesce(excluded.answer_normalized, s.answer_normalized),
    outcomes = s.outcomes + excluded.outcomes,
    expected_normalized = CASE WHEN excluded.outcomes > 0 THEN excluded.expected_normalized
                               ELSE s.expected_normalized END,
    final_correct = CASE WHEN excluded.outcomes > 0 THEN excluded.final_correct
                         ELSE s.final_correct END
""",
        _add_contribution(""),  # and their new ones in
    ),
)

# Model statistics in one statement: the calls, verdicts and outcomes of run streams in
# the range, each with its run's context (tenant, category, seats) read once per run,
# feed four tables. The counts are those of service.domain.profiles.ProfileFold,
# which the router uses in memory; tests hold the two equal.
#
# Each kind of event is read by its own narrow scan rather than all of them into one
# wide materialised CTE: writing 886,667 wide rows into a CTE and reading them back
# cost more than the extra scans (a full pass 9.4 -> 7.7 s on 1M events). The error
# profile's call counts come from the call-statistics groups (tens of thousands of
# rows), not from the calls again. Context missing from the range is looked up per
# stream with LATERAL ... LIMIT 1, an index lookup whatever the planner settings.
MODEL_STATS = Projection(
    name="model_stats",
    tables=("model_call_stats", "model_call_totals", "model_error_profile", "co_failure"),
    # The CTEs' row estimates are guesses; on them Postgres joined the range's calls to
    # their runs by nested loops with a join filter (a 5,000-event range: 1.0-1.6 s;
    # hashed: 45-50 ms) and grouped by sorting. The lookups above stay index lookups.
    planner="SET LOCAL enable_nestloop = off; SET LOCAL enable_sort = off;",
    statements=(
        f"""
WITH heads AS MATERIALIZED (  -- the runs' requests and panels in the range
    SELECT e.stream_id, e.event_type AS type, e.metadata->>'tenant' AS tenant,
           e.data->>'category' AS category,
           CASE e.event_type WHEN 'panel.selected' THEN e.data->'members' END AS members
    FROM events e
    WHERE e.event_type IN ('run.requested', 'panel.selected')
      AND e.stream_id LIKE 'run-%' AND {IN_RANGE}
),
calls_in AS NOT MATERIALIZED (  -- the panel calls in the range
    SELECT e.stream_id, e.event_type AS type, e.recorded_at, e.data->>'model' AS model,
           e.data->>'error_kind' AS error_kind,
           (e.data->>'latency_ms')::float8 AS latency_ms,
           (e.data->>'input_tokens')::bigint AS input_tokens,
           (e.data->>'output_tokens')::bigint AS output_tokens,
           (e.data->>'cost_usd')::float8 AS cost_usd
    FROM events e
    WHERE e.event_type IN ('panel.call.succeeded', 'panel.call.failed')
      AND e.stream_id LIKE 'run-%' AND {IN_RANGE}
),
outcomes_in AS MATERIALIZED (  -- the outcomes in the range
    SELECT e.stream_id, e.stream_version AS version, e.global_position AS event,
           e.data->'members' AS marks
    FROM events e
    WHERE e.event_type = 'outcome.recorded' AND e.stream_id LIKE 'run-%' AND {IN_RANGE}
),
marks_in AS NOT MATERIALIZED (  -- the verdicts and graded outcomes in the range, signed
    SELECT e.stream_id, e.global_position AS event, e.event_type AS type, 1 AS sign,
           e.data->'verdicts' AS marks
    FROM events e
    WHERE e.event_type = 'judge.decided' AND e.stream_id LIKE 'run-%' AND {IN_RANGE}
    -- A run's latest outcome is its truth: over a range, a run's outcomes add up to its
    -- latest one in the range, less the latest one before the range (looked up only
    -- when the range does not start at the log's start); the ones between cancel out.
    UNION ALL
    SELECT o.stream_id, o.event, 'outcome.recorded', 1, o.marks
    FROM outcomes_in o
    WHERE NOT EXISTS (SELECT 1 FROM outcomes_in n
                      WHERE n.stream_id = o.stream_id AND n.version > o.version)
    UNION ALL
    SELECT o.stream_id, p.global_position, 'outcome.recorded', -1, p.data->'members'
    FROM outcomes_in o
    CROSS JOIN LATERAL (SELECT * FROM events p
                        WHERE p.stream_id = o.stream_id AND p.stream_version < o.version
                          AND p.event_type = 'outcome.recorded'
                        ORDER BY p.stream_version DESC LIMIT 1) AS p
    WHERE {AFTER_START}
      AND NOT EXISTS (SELECT 1 FROM outcomes_in n
                      WHERE n.stream_id = o.stream_id AND n.version < o.version)
),
context AS MATERIALIZED (  -- from the range when it holds the run's request, else looked up
    SELECT stream_id, coalesce(tenant, 'default') AS tenant, category
    FROM heads WHERE type = 'run.requested'
    UNION ALL
    SELECT r.stream_id, coalesce(r.metadata->>'tenant', 'default'), r.data->>'category'
    FROM (SELECT stream_id FROM calls_in UNION SELECT stream_id FROM marks_in
          EXCEPT SELECT stream_id FROM heads WHERE type = 'run.requested') AS missing
    CROSS JOIN LATERAL (SELECT * FROM events r
                        WHERE r.stream_id = missing.stream_id AND r.stream_version = 1
                          AND r.event_type = 'run.requested' LIMIT 1) AS r
    WHERE {AFTER_START}
),
seats AS MATERIALIZED (  -- likewise each seat's model, for the runs with verdicts or grades
    SELECT p.stream_id, m->>'member_id' AS member_id, m->>'model' AS model
    FROM (SELECT stream_id, members FROM heads WHERE type = 'panel.selected'
          UNION ALL
          SELECT ps.stream_id, ps.data->'members'
          FROM (SELECT stream_id FROM marks_in
                EXCEPT SELECT stream_id FROM heads WHERE type = 'panel.selected') AS missing
          CROSS JOIN LATERAL (SELECT * FROM events ps
                              WHERE ps.stream_id = missing.stream_id
                                AND ps.event_type = 'panel.selected' LIMIT 1) AS ps
          WHERE {AFTER_START}) AS p
    CROSS JOIN LATERAL jsonb_array_elements(p.members) AS m
),
call_groups AS MATERIALIZED (  -- model_call_stats' rows for the range
    SELECT c.tenant, b.model, c.category, (b.recorded_at AT TIME ZONE 'UTC')::date AS day,
           CASE b.type WHEN 'panel.call.succeeded' THEN 'ok' ELSE b.error_kind END AS outcome,
           width_bucket(b.latency_ms, $5::float8[]) AS latency_bucket, count(*) AS calls,
           sum(b.latency_ms) AS latency_ms, coalesce(sum(b.input_tokens), 0) AS input_tokens,
           coalesce(sum(b.output_tokens), 0) AS output_tokens,
           coalesce(sum(b.cost_usd), 0) AS cost_usd
    FROM calls_in b JOIN context c USING (stream_id)
    GROUP BY 1, 2, 3, 4, 5, 6
),
votes AS MATERIALIZED (  -- each verdict and graded seat in the range
    SELECT b.stream_id, b.event, b.type, b.sign, m.ord, m.value->>'member_id' AS member_id,
           CASE b.type WHEN 'judge.decided' THEN (m.value->>'agrees')::boolean
                       ELSE (m.value->>'correct')::boolean END AS ok
    FROM marks_in b
    CROSS JOIN LATERAL jsonb_array_elements(b.marks) WITH ORDINALITY AS m(value, ord)
    WHERE b.marks IS NOT NULL
      AND (b.type = 'judge.decided' OR jsonb_typeof(m.value->'correct') = 'boolean')
),
marks AS (  -- a verdict or a graded seat, with the seat's model
    SELECT v.event, v.type, v.sign, v.ord, c.tenant, c.category, seat.model, v.ok
    FROM votes v JOIN context c USING (stream_id)
    JOIN seats seat ON seat.stream_id = v.stream_id AND seat.member_id = v.member_id
),
call_stats AS (
    INSERT INTO model_call_stats AS s (tenant, model, category, day, outcome,
                                       latency_bucket, calls, latency_ms, input_tokens,
                                       output_tokens, cost_usd)
    SELECT * FROM call_groups
    ON CONFLICT (tenant, model, category, day, outcome, latency_bucket) DO UPDATE
    SET calls = s.calls + excluded.calls, latency_ms = s.latency_ms + excluded.latency_ms,
        input_tokens = s.input_tokens + excluded.input_tokens,
        output_tokens = s.output_tokens + excluded.output_tokens,
        cost_usd = s.cost_usd + excluded.cost_usd
),
call_totals AS (  -- the same rows without the day
    INSERT INTO model_call_totals AS t (tenant, model, category, outcome, latency_bucket,
                                        calls, latency_ms, input_tokens, output_tokens,
                                        cost_usd)
    SELECT tenant, model, category, outcome, latency_bucket, sum(calls), sum(latency_ms),
           sum(input_tokens), sum(output_tokens), sum(cost_usd)
    FROM call_groups GROUP BY 1, 2, 3, 4, 5
    ON CONFLICT (tenant, model, category, outcome, latency_bucket) DO UPDATE
    SET calls = t.calls + excluded.calls, latency_ms = t.latency_ms + excluded.latency_ms,
        input_tokens = t.input_tokens + excluded.input_tokens,
        output_tokens = t.output_tokens + excluded.output_tokens,
        cost_usd = t.cost_usd + excluded.cost_usd
),
profile AS (
    INSERT INTO model_error_profile AS p (tenant, model, category, gt_right, gt_wrong,
                                          judge_agree, judge_disagree, calls, failures,
                                          cost_usd, latency_ms, output_tokens)
    SELECT tenant, model, category, sum(gt_right), sum(gt_wrong), sum(agree),
           sum(disagree), sum(calls), sum(failures), sum(cost_usd), sum(latency_ms),
           sum(output_tokens)
    FROM (  -- each part grouped on its own first: few groups, hashed
        SELECT tenant, model, category, 0 AS gt_right, 0 AS gt_wrong, 0 AS agree,
               0 AS disagree, sum(calls) AS calls,
               coalesce(sum(calls) FILTER (WHERE outcome <> 'ok'), 0) AS failures,
               coalesce(sum(cost_usd) FILTER (WHERE outcome = 'ok'), 0) AS cost_usd,
               sum(latency_ms) AS latency_ms,
               coalesce(sum(output_tokens) FILTER (WHERE outcome = 'ok'), 0) AS output_tokens
        FROM call_groups GROUP BY 1, 2, 3
        UNION ALL
        SELECT tenant, model, category,
               coalesce(sum(sign) FILTER (WHERE type = 'outcome.recorded' AND ok), 0),
               coalesce(sum(sign) FILTER (WHERE type = 'outcome.recorded' AND NOT ok), 0),
               count(*) FILTER (WHERE type = 'judge.decided' AND ok),
               count(*) FILTER (WHERE type = 'judge.decided' AND NOT ok),
               0, 0, 0, 0, 0
        FROM marks GROUP BY 1, 2, 3
    ) AS parts
    GROUP BY 1, 2, 3
    ON CONFLICT (tenant, model, category) DO UPDATE
    SET gt_right = p.gt_right + excluded.gt_right, gt_wrong = p.gt_wrong + excluded.gt_wrong,
        judge_agree = p.judge_agree + excluded.judge_agree,
        judge_disagree = p.judge_disagree + excluded.judge_disagree,
        calls = p.calls + excluded.calls, failures = p.failures + excluded.failures,
        cost_usd = p.cost_usd + excluded.cost_usd,
        latency_ms = p.latency_ms + excluded.latency_ms,
        output_tokens = p.output_tokens + excluded.output_tokens
),
pairs AS (
    INSERT INTO co_failure AS c (tenant, category, model_a, model_b, both_wrong, one_wrong,
                                 both_right)
    -- the pair in code-point order, as ProfileFold's pair_key, whatever the database's
    -- collation (en_US puts 'sim/model-b' before 'sim/Model-c'; code points do not)
    SELECT a.tenant, a.category, least(a.model COLLATE "C", b.model COLLATE "C"),
           greatest(a.model COLLATE "C", b.model COLLATE "C"),
           coalesce(sum(a.sign) FILTER (WHERE NOT a.ok AND NOT b.ok), 0),
           coalesce(sum(a.sign) FILTER (WHERE a.ok <> b.ok), 0),
           coalesce(sum(a.sign) FILTER (WHERE a.ok AND b.ok), 0)
    FROM marks a JOIN marks b ON a.event = b.event AND a.sign = b.sign AND a.ord < b.ord
    WHERE a.type = 'outcome.recorded'
    GROUP BY 1, 2, 3, 4
    ON CONFLICT (tenant, category, model_a, model_b) DO UPDATE
    SET both_wrong = c.both_wrong + excluded.both_wrong,
        one_wrong = c.one_wrong + excluded.one_wrong,
        both_right = c.both_right + excluded.both_right
)
SELECT 1
""",
    ),
)

PROJECTIONS: tuple[Projection, ...] = (RUNS, MODEL_STATS)
BY_NAME: dict[str, Projection] = {p.name: p for p in PROJECTIONS}


def statement_args(statement: str) -> tuple[object, ...]:
    """Parameters after the range that a statement takes ($5: the latency bounds)."""
    return (list(LATENCY_BOUNDS_MS),) if "$5" in statement else ()
