"""What batch replays read from the log: the runs a filter selects, source runs in
chunks, which replay streams exist, and what a judge comparison needs.

Until the runs read model exists these read the events table directly (as
service/api/runs.py does); every per-run lookup goes through the unique
(stream_id, stream_version) index.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import msgspec

from service.domain.events import Event, ReplayFilter, SourceRun
from service.domain.judge_comparison import JudgedRun
from service.store import EventStore
from service.store.codec import decode_event

RESOLVE_RUNS_SQL = """
SELECT r.stream_id, s.version,
       ARRAY(SELECT jsonb_array_elements(p.data->'members')->>'model') AS panel
FROM events r
JOIN streams s ON s.stream_id = r.stream_id
JOIN events p ON p.stream_id = r.stream_id AND p.stream_version = 2
              AND p.event_type = 'panel.selected'
WHERE r.event_type = 'run.requested' AND s.category = 'run'
  AND r.metadata->>'tenant' = $1
  AND ($2::timestamptz IS NULL OR r.recorded_at >= $2)
  AND ($3::timestamptz IS NULL OR r.recorded_at < $3)
  AND ($4::text IS NULL OR r.data->>'category' = $4)
  AND ($5::text IS NULL OR r.data->>'preset' = $5)
  AND ($6::text IS NULL
       OR p.data->'members' @> jsonb_build_array(jsonb_build_object('model', $6::text)))
  AND EXISTS (SELECT 1 FROM events f
              WHERE f.stream_id = r.stream_id AND f.event_type = 'answer.finalized')
  AND ($7::boolean IS NULL OR $7 = EXISTS (
        SELECT 1 FROM events o
        WHERE o.stream_id = r.stream_id AND o.event_type = 'outcome.recorded'
          AND o.data->>'expected' IS NOT NULL))
ORDER BY r.global_position
LIMIT $8
"""

READ_SOURCES_SQL = """
SELECT e.stream_id, e.event_type, e.schema_version, e.data
FROM unnest($1::text[], $2::int[]) AS s(stream_id, up_to)
JOIN events e ON e.stream_id = s.stream_id AND e.stream_version <= s.up_to
ORDER BY e.stream_id, e.stream_version
"""

EXISTING_STREAMS_SQL = "SELECT stream_id FROM streams WHERE stream_id = ANY($1::text[])"

UNFINISHED_BATCHES_SQL = """
SELECT stream_id FROM streams WHERE category = 'batch' AND version = 1 ORDER BY created_at
"""

# Prompts stay in the database: run.requested contributes its category only.
COMPARISON_SQL = """
SELECT e.stream_id, e.event_type,
       CASE WHEN e.event_type = 'run.requested'
            THEN jsonb_build_object('category', e.data->'category',
                                    'normalizer', coalesce(e.data->'normalizer', '1'))
            ELSE e.data END AS data
FROM unnest($1::text[]) AS s(stream_id)
JOIN events e ON e.stream_id = s.stream_id
WHERE e.event_type IN ('run.requested', 'judge.decided', 'judge.failed',
                       'answer.finalized', 'run.failed', 'outcome.recorded')
ORDER BY e.stream_id, e.stream_version
"""


@dataclass(frozen=True, slots=True)
class ResolvedRun:
    """A run a filter selected: where its replay reads up to, and who sat on its panel."""

    run_id: str
    stream_version: int
    panel: tuple[str, ...]


async def resolve_runs(
    store: EventStore, tenant: str, selection: ReplayFilter, limit: int
) -> list[ResolvedRun]:
    """Finalized runs of the tenant matching the filter, oldest first, at most limit."""
    rows = await store.pool.fetch(
        RESOLVE_RUNS_SQL,
        tenant,
        _moment(selection.since),
        _moment(selection.until),
        selection.category,
        selection.preset,
        selection.model,
        selection.has_ground_truth,
        limit,
    )
    return [
        ResolvedRun(r["stream_id"].removeprefix("run-"), r["version"], tuple(r["panel"]))
        for r in rows
    ]


def _moment(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


async def read_sources(store: EventStore, runs: Sequence[SourceRun]) -> dict[str, list[Event]]:
    """The events of several runs, each up to its recorded version, in one query."""
    rows = await store.pool.fetch(
        READ_SOURCES_SQL,
        [f"run-{r.run_id}" for r in runs],
        [r.stream_version for r in runs],
    )
    events: dict[str, list[Event]] = {}
    for row in rows:
        decoded = decode_event(row["event_type"], row["schema_version"], row["data"])
        events.setdefault(row["stream_id"].removeprefix("run-"), []).append(decoded)
    return events


# Per run of a batch: is its replay stream there; if not, did a newer release record
# the run (a normaliser version not in $3), so that only an upgraded replica can
# replay it. The run's request is looked up only for runs still to do.
BATCH_STATE_SQL = """
SELECT count(s.stream_id) AS done,
       count(r.stream_id) FILTER (
           WHERE coalesce((r.data->>'normalizer')::int, 1) <> ALL($3::int[])) AS waiting
FROM unnest($1::text[], $2::text[]) AS b(run, replay)
LEFT JOIN streams s ON s.stream_id = b.replay
LEFT JOIN events r ON s.stream_id IS NULL AND r.stream_id = b.run AND r.stream_version = 1
                  AND r.event_type = 'run.requested'
"""


async def batch_state(
    store: EventStore, pairs: Sequence[tuple[str, uuid.UUID]], known: Sequence[int]
) -> tuple[int, int]:
    """(runs replayed, runs left that only a release knowing another answer normaliser
    version than ``known`` can replay) of a batch's (run id, replay id) pairs."""
    row = await store.pool.fetchrow(
        BATCH_STATE_SQL,
        [f"run-{run}" for run, _ in pairs],
        [f"replay-{replay}" for _, replay in pairs],
        list(known),
    )
    assert row is not None
    return int(row["done"]), int(row["waiting"])


async def existing_streams(store: EventStore, stream_ids: Sequence[str]) -> set[str]:
    """Which of these streams exist."""
    rows = await store.pool.fetch(EXISTING_STREAMS_SQL, list(stream_ids))
    return {r["stream_id"] for r in rows}


TERMINAL_COUNTS_SQL = """
SELECT count(*) FILTER (WHERE e.event_type = 'answer.finalized') AS finalized,
       count(*) FILTER (WHERE e.event_type = 'run.failed') AS failed
FROM unnest($1::text[]) AS s(stream_id)
JOIN events e ON e.stream_id = s.stream_id
WHERE e.event_type IN ('answer.finalized', 'run.failed')
"""


async def terminal_counts(store: EventStore, stream_ids: Sequence[str]) -> tuple[int, int]:
    """How many of these replay streams ended in answer.finalized, and in run.failed."""
    row = await store.pool.fetchrow(TERMINAL_COUNTS_SQL, list(stream_ids))
    assert row is not None
    return int(row["finalized"]), int(row["failed"])


async def unfinished_batches(store: EventStore) -> list[str]:
    """Stream ids of batches without replay.batch.completed."""
    return [r["stream_id"] for r in await store.pool.fetch(UNFINISHED_BATCHES_SQL)]


class _Request(msgspec.Struct):
    category: str
    normalizer: int = 1


class _Judged(msgspec.Struct):
    cost_usd: float = 0.0
    latency_ms: float = 0.0
    fallback: str | None = None  # judge.failed: the policy its run then followed


class _Final(msgspec.Struct):
    answer: str


class _Outcome(msgspec.Struct):
    expected: str | None = None


@dataclass(slots=True)
class _Facts:
    category: str = ""
    normalizer: int = 1
    judge_cost: float = 0.0
    judge_latency: float = 0.0
    fell_back: bool = False
    answer: str | None = None
    closed: bool = False
    expected: str | None = None


async def judged_runs(store: EventStore, pairs: Sequence[tuple[str, str]]) -> list[JudgedRun]:
    """(source run id, replay id) pairs whose replay is recorded, as comparison input.

    Ground truth is the run's latest outcome.recorded, read now (outcomes recorded
    after the replay still count), when it names an expected answer: a latest outcome
    of labels only grades the run's own answer, not another judge's, so the run is
    left out of the accuracy rows (the judge statistics use such labels as far as
    they go).
    """
    ids = [f"run-{run}" for run, _ in pairs] + [f"replay-{replay}" for _, replay in pairs]
    facts: dict[str, _Facts] = {}
    for row in await store.pool.fetch(COMPARISON_SQL, ids):
        _absorb(facts.setdefault(row["stream_id"], _Facts()), row["event_type"], row["data"])
    judged: list[JudgedRun] = []
    for run, replay in pairs:
        original, new = facts.get(f"run-{run}"), facts.get(f"replay-{replay}")
        if original is None or new is None or not new.closed or original.answer is None:
            continue
        judged.append(
            JudgedRun(
                category=original.category,
                original_answer=original.answer,
                replay_answer=new.answer,
                expected=original.expected,
                original_judge_cost_usd=original.judge_cost,
                original_judge_latency_ms=original.judge_latency,
                replay_judge_cost_usd=new.judge_cost,
                replay_judge_latency_ms=new.judge_latency,
                replay_fell_back=new.fell_back,
                normalizer=original.normalizer,
            )
        )
    return judged


def _absorb(facts: _Facts, event_type: str, data: str) -> None:
    match event_type:
        case "run.requested":
            request = msgspec.json.decode(data, type=_Request)
            facts.category, facts.normalizer = request.category, request.normalizer
        case "judge.decided" | "judge.failed":
            judged = msgspec.json.decode(data, type=_Judged)
            facts.judge_cost, facts.judge_latency = judged.cost_usd, judged.latency_ms
            # A fallback answered only if the policy was one ("fail" ends the run).
            facts.fell_back = event_type == "judge.failed" and judged.fallback != "fail"
        case "answer.finalized":
            facts.answer, facts.closed = msgspec.json.decode(data, type=_Final).answer, True
        case "run.failed":
            facts.closed = True
        case "outcome.recorded":  # the latest is the truth, as in every statistic
            facts.expected = msgspec.json.decode(data, type=_Outcome).expected
