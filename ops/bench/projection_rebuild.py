"""Projection rebuild throughput against one SQL aggregate, and statistics query latency.

Generates a log of about 1,000,000 events (about 136,000 runs: request, panel, three
calls of which ~12% fail with assorted error kinds, judge, final answer, and ground
truth for one run in three; spread over 30 days, 5 categories, 8 models, 2 tenants)
with the catalog's own event types, loaded with COPY into a scratch schema. Then, in
the same run:

- baseline: ONE SQL aggregate over the events table that computes the failure counts
  by model x category x day x outcome (the same counts model_call_stats holds);
- rebuild: `runner.rebuild` of every projection from position zero (shadow tables,
  swap), i.e. all read models: runs, model call stats, error profiles, co-failures;
- queries: every statistics query (profiles, failures by several groupings,
  co-failures, judges) repeated with varied filters: p50 / p95 in ms.

Targets (issue 4): full rebuild within 3x of the single aggregate and under 60 s;
statistics queries under 50 ms p95.

    python ops/bench/projection_rebuild.py --database-url postgresql://... [--events 1000000]

The generated log's hashes are random bytes, not a chain (`verify` would reject it):
only the projections are measured. Prints one JSON object; the schema is dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import statistics
import sys
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import structlog
from scratch import add_database_url, check_database_url, scratch_schema

from service.domain.events import (
    AnswerFinalized,
    Attempt,
    Event,
    JudgeDecided,
    JudgeIdentity,
    JudgeSpec,
    MemberOutcome,
    Message,
    OutcomeRecorded,
    PanelCallFailed,
    PanelCallSucceeded,
    PanelMember,
    PanelRequest,
    PanelSelected,
    RunRequested,
    Verdict,
)
from service.projections import runner
from service.projections.definitions import PROJECTIONS
from service.projections.queries import Query, Window, answer
from service.store.codec import encode_event, encode_json
from service.store.database import create_pool

MODELS = [f"sim/model-{c}" for c in "abcdehjk"]
CATEGORIES = ["arithmetic", "multiple_choice", "two_choice", "code", "short_fact"]
ERRORS = ["timeout", "rate_limited", "server_error", "malformed_response", "connection"]
COLUMNS = [
    "stream_id", "stream_version", "event_id", "event_type", "schema_version", "data",
    "metadata", "recorded_at", "prev_hash", "hash",
]  # fmt: skip
START = datetime(2026, 10, 1, tzinfo=UTC)

AGGREGATE_SQL = """
SELECT e.data->>'model' AS model, r.data->>'category' AS category,
       (e.recorded_at AT TIME ZONE 'UTC')::date AS day,
       CASE e.event_type WHEN 'panel.call.succeeded' THEN 'ok'
            ELSE e.data->>'error_kind' END AS outcome,
       count(*) AS calls
FROM events e
JOIN events r ON r.stream_id = e.stream_id AND r.stream_version = 1
WHERE e.event_type IN ('panel.call.succeeded', 'panel.call.failed')
GROUP BY 1, 2, 3, 4
"""


def run_events(rng: random.Random, i: int) -> tuple[str, datetime, list[Event]]:
    """One run's events, in stream order."""
    run_id = str(uuid.UUID(int=rng.getrandbits(128)))
    category = CATEGORIES[i % len(CATEGORIES)]
    models = rng.sample(MODELS, 3)
    judge = JudgeSpec(kind="vote") if i % 2 else JudgeSpec(kind="synthesize", model="sim/judge")
    members = [PanelMember(member_id=f"m{k}", model=m) for k, m in enumerate(models)]
    events: list[Event] = [
        RunRequested(
            run_id=run_id,
            messages=[Message(role="user", content=f"Question {i}: what is {i} + {i % 97}?")],
            category=category,
            panel=[PanelRequest(model=m) for m in models],
            judge=judge,
        ),
        PanelSelected(members=members, method="fixed"),
    ]
    answers = {}
    for member in members:
        latency = rng.lognormvariate(6.0, 0.6)
        if rng.random() < 0.12:
            events.append(
                PanelCallFailed(
                    member_id=member.member_id,
                    model=member.model,
                    provider="sim",
                    error_kind=rng.choice(ERRORS),
                    http_status=500,
                    attempts=[Attempt(number=1, outcome="server_error", latency_ms=latency)],
                    latency_ms=latency,
                    message="HTTP 500 (generated)",
                )
            )
        else:
            text = str(2 * i if rng.random() < 0.8 else i)
            answers[member.member_id] = text
            events.append(
                PanelCallSucceeded(
                    member_id=member.member_id,
                    model=member.model,
                    provider="sim",
                    text=f"The answer is {text}",
                    finish_reason="stop",
                    input_tokens=40,
                    output_tokens=12,
                    cost_usd=0.00002,
                    latency_ms=latency,
                    attempts=[Attempt(number=1, outcome="ok", latency_ms=latency)],
                )
            )
    final = max(answers.values(), key=list(answers.values()).count) if answers else "none"
    events.append(
        JudgeDecided(
            judge=JudgeIdentity(kind=judge.kind, model=judge.model, prompt_version="v1"),
            final_answer=final,
            verdicts=[Verdict(member_id=m, agrees=a == final) for m, a in answers.items()],
            latency_ms=5.0,
        )
    )
    events.append(
        AnswerFinalized(
            answer=final,
            answer_sha256=hashlib.sha256(final.encode()).hexdigest(),
            decided_by="judge",
            latency_ms=900.0,
            cost_usd=0.00006,
            answer_normalized=final,
        )
    )
    if i % 3 == 0:
        expected = str(2 * i)
        events.append(
            OutcomeRecorded(
                source="dataset",
                expected=expected,
                expected_normalized=expected,
                final_correct=final == expected,
                members=[
                    MemberOutcome(
                        member_id=m.member_id,
                        correct=answers[m.member_id] == expected
                        if m.member_id in answers
                        else None,
                    )
                    for m in members
                ],
            )
        )
    moment = START + timedelta(seconds=i * 30 * 86400 / 140_000)
    return f"run-{run_id}", moment, events


def rows_of(rng: random.Random, first: int, count: int) -> list[tuple[Any, ...]]:
    rows = []
    for i in range(first, first + count):
        stream, moment, events = run_events(rng, i)
        tenant = "default" if i % 4 else "acme"
        meta = encode_json({"correlation_id": stream[4:], "tenant": tenant, "actor": "bench"})
        for version, event in enumerate(events, 1):
            rows.append(
                (stream, version, uuid.uuid4(), event.type, event.schema_version,
                 encode_event(event), meta, moment, rng.randbytes(32), rng.randbytes(32))
            )  # fmt: skip
    return rows


async def generate(conn: asyncpg.Connection, events: int, seed: int) -> tuple[int, int, float]:
    """Load about ``events`` events; returns (events, runs, seconds)."""
    rng = random.Random(seed)
    started = time.perf_counter()
    written = runs = 0
    while written < events:
        rows = rows_of(rng, runs, 5000)
        async with conn.transaction():
            await conn.copy_records_to_table("events", records=rows, columns=COLUMNS)
        written += len(rows)
        runs += 5000
    await conn.execute("ANALYZE events")
    return written, runs, time.perf_counter() - started


async def timed(coro: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    result = await coro
    return result, time.perf_counter() - started


def queries() -> list[Query]:
    window = Window(START + timedelta(days=3), START + timedelta(days=10))
    out = []
    for tenant in ("default", "acme"):
        out += [
            Query("profiles", tenant),
            Query("profiles", tenant, model=MODELS[1]),
            Query("failures", tenant, group_by=("model",)),
            Query("failures", tenant, group_by=("model", "category", "error_kind")),
            Query("failures", tenant, group_by=("day",), window=window),
            Query("failures", tenant, group_by=("model", "day"), category="code"),
            Query("co-failures", tenant),
            Query("co-failures", tenant, model=MODELS[2], category="code"),
            Query("judges", tenant),
            Query("judges", tenant, category="arithmetic"),
        ]
    return out


async def measure(
    url: str, pool: asyncpg.Pool, events: int, seed: int, repeats: int, rebuild_batch: int
) -> dict[str, Any]:
    loader = await asyncpg.connect(url)  # asyncpg's own jsonb codec: binary COPY
    try:
        written, runs, load_s = await generate(loader, events, seed)
    finally:
        await loader.close()
    async with pool.acquire() as conn:
        server = await conn.fetchval("SHOW server_version")
        await conn.fetch(AGGREGATE_SQL)  # warm the cache the same way for both
        aggregates = []
        for _ in range(2):
            _, seconds = await timed(conn.fetch(AGGREGATE_SQL))
            aggregates.append(seconds)
    aggregate_s = min(aggregates)
    # Every projection at once, as `fusion-ledger projections rebuild` does: wall time.
    results, rebuild_s = await timed(
        asyncio.gather(
            *(runner.rebuild(pool, p.name, batch_events=rebuild_batch) for p in PROJECTIONS)
        )
    )
    per_projection = {r.name: round(r.seconds, 3) for r in results}
    latencies: dict[str, list[float]] = {}
    async with pool.acquire() as conn:
        for q in queries():  # warm-up
            await answer(conn, q)
        for _ in range(repeats):
            for q in queries():
                _, seconds = await timed(answer(conn, q))
                latencies.setdefault(q.kind, []).append(seconds * 1000)
    every = sorted(x for xs in latencies.values() for x in xs)

    def p95(xs: list[float]) -> float:
        xs = sorted(xs)
        return round(xs[min(len(xs) - 1, int(0.95 * len(xs)))], 2)

    ratio = rebuild_s / aggregate_s
    return {
        "benchmark": "projection_rebuild",
        "postgres": server,
        "events": written,
        "runs": runs,
        "load_seconds": round(load_s, 2),
        "aggregate_seconds": round(aggregate_s, 3),
        "aggregate_events_per_s": round(written / aggregate_s),
        "rebuild_seconds": round(rebuild_s, 3),
        "rebuild_events_per_s": round(written / rebuild_s),
        "rebuild_seconds_by_projection": per_projection,
        "ratio_rebuild_to_aggregate": round(ratio, 2),
        "query_ms": {
            kind: {"p50": round(statistics.median(xs), 2), "p95": p95(xs), "n": len(xs)}
            for kind, xs in latencies.items()
        },
        "query_p95_ms": p95(every),
        "targets": {"ratio_max": 3.0, "rebuild_seconds_max": 60, "query_p95_ms_max": 50},
        "pass": ratio <= 3.0 and rebuild_s < 60 and p95(every) < 50,
    }


async def main(
    url: str, events: int, seed: int, repeats: int, rebuild_batch: int
) -> dict[str, Any]:
    async with scratch_schema(url) as (scoped, _):
        pool = await create_pool(scoped, min_size=1, max_size=2)
        try:
            return await measure(scoped, pool, events, seed, repeats, rebuild_batch)
        finally:
            await pool.close()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_database_url(parser)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=10, help="rounds of every query")
    parser.add_argument(
        "--rebuild-batch",
        type=int,
        default=runner.REBUILD_BATCH_EVENTS,
        help="events per rebuild transaction",
    )
    args = parser.parse_args(argv)
    check_database_url(parser, args)
    return args


if __name__ == "__main__":
    options = parse_args()
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))  # stdout: JSON
    result = asyncio.run(
        main(
            options.database_url,
            options.events,
            options.seed,
            options.repeats,
            options.rebuild_batch,
        )
    )
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
