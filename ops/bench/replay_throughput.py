"""Batch replay throughput with the vote judge, against reading the same runs alone.

10,000 recorded runs (run.requested, panel.selected, three panel answers, a vote,
answer.finalized: 7 events each) are appended with the log's bulk append into a
scratch schema. Then, per round and in alternating order:

- ceiling: the same process reads every run's events, in the batch worker's chunks
  and concurrency, and decodes them into typed events, doing nothing else;
- replay: a whole batch replay through ``BatchReplayer`` (resolve the filter, record
  the batch, re-judge every run, write 10,000 replay streams, close the batch);
- write floor: the same 10,000 replay streams, built beforehand, written alone with
  the same bulk append, chunks and concurrency: what the hash-chained writes cost
  with no reading or judging at all. A replay cannot be faster than this, so
  ``floor_ratio`` (write floor / ceiling) bounds the ratio the replay could reach.

The ratio is the median of per-round ratios (these machines are noisy). The raw
fetch rate (rows only, no decoding) is reported too, as a stricter reference.

    python ops/bench/replay_throughput.py --database-url postgresql://... [--runs 10000]

Prints one JSON object. Works in a scratch schema that is dropped afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import json
import random
import statistics
import sys
import time
import uuid
from collections.abc import Sequence
from typing import Any

import structlog
from scratch import add_database_url, check_database_url, scratch_schema

from service.app import YOUNG_GC_THRESHOLD
from service.config import Config
from service.domain.events import (
    AnswerFinalized,
    Attempt,
    Event,
    GenerationParams,
    JudgeSpec,
    Message,
    PanelCallSucceeded,
    PanelMember,
    PanelRequest,
    PanelSelected,
    ReplayFilter,
    RunRequested,
    SourceRun,
)
from service.domain.judging import Candidate
from service.domain.runs import fold
from service.orchestration.batch import BatchReplayer
from service.orchestration.batch_worker import BATCHES_AT_ONCE, VOTE_CHUNK
from service.orchestration.judge import run_judge
from service.orchestration.replay import Replayer, stamp
from service.orchestration.replay_sources import READ_SOURCES_SQL, read_sources
from service.providers.outcomes import CallFailed
from service.store import EventStore, NewEvent
from service.store.bulk_append import append_new_streams
from service.store.database import create_pool

TARGET = 0.5
EVENTS_PER_RUN = 7
SEED_CALL_RUNS = 200  # runs per bulk append while seeding
MODELS = ("sim/model-b", "sim/model-c", "sim/model-e")


class NoModels:
    """The vote calls no model; a call here would be a bug in the replay."""

    async def complete(self, model_id: str, *_: Any, **__: Any) -> CallFailed:
        raise AssertionError(f"a vote replay called {model_id}")

    def provider_of(self, model_id: str) -> str:
        return "none"


async def recorded_run(run_id: uuid.UUID, rng: random.Random) -> list[Event]:
    """A plausible finalized multiple-choice run judged by a vote."""
    prompt = (
        f"Question {run_id.hex[:8]}: which option is right?\nA) one\nB) two\nC) three\n"
        "D) four\nAnswer with the letter of the correct option."
    )
    members = [PanelMember(member_id=f"m{i + 1}", model=m) for i, m in enumerate(MODELS)]
    answers = [f"Thinking it through step by step.\nAnswer: {rng.choice('ABCD')}" for _ in MODELS]
    calls = [
        PanelCallSucceeded(
            member_id=m.member_id,
            model=m.model,
            provider="sim",
            text=text,
            finish_reason="stop",
            input_tokens=60,
            output_tokens=20,
            cost_usd=0.00002,
            latency_ms=300.0 + rng.random() * 200,
            attempts=[Attempt(number=1, outcome="ok", latency_ms=300.0, http_status=200)],
        )
        for m, text in zip(members, answers, strict=True)
    ]
    spec = JudgeSpec(kind="vote")
    candidates = [Candidate(m.member_id, t) for m, t in zip(members, answers, strict=True)]
    judged = await run_judge(NoModels(), spec, prompt, candidates, seed=0, timeout_s=10)
    assert judged.decision is not None
    final = judged.decision.final_answer
    return [
        RunRequested(
            run_id=str(run_id),
            messages=[Message(role="user", content=prompt)],
            category="multiple_choice",
            preset="vote",
            panel=[PanelRequest(model=m) for m in MODELS],
            judge=spec,
            params=GenerationParams(),
            timeout_s=60.0,
        ),
        PanelSelected(members=members, method="preset"),
        *calls,
        judged.event,
        AnswerFinalized(
            answer=final,
            answer_sha256=hashlib.sha256(final.encode()).hexdigest(),
            decided_by="judge",
            latency_ms=520.0,
            cost_usd=0.00006,
            panel_cost_usd=0.00006,
        ),
    ]


async def seed_runs(store: EventStore, count: int) -> list[SourceRun]:
    """Append ``count`` recorded runs with the log's bulk append (real hash chains)."""
    rng = random.Random(7)
    runs: list[SourceRun] = []
    pending: list[tuple[str, list[NewEvent]]] = []
    for _ in range(count):
        run_id = uuid.uuid4()
        meta = {"correlation_id": str(run_id), "tenant": "default", "actor": "bench"}
        events = await recorded_run(run_id, rng)
        pending.append((f"run-{run_id}", [NewEvent(e, meta) for e in events]))
        runs.append(SourceRun(run_id=str(run_id), stream_version=len(events)))
    for start in range(0, len(pending), SEED_CALL_RUNS):
        await append_new_streams(store, pending[start : start + SEED_CALL_RUNS])
    return runs


async def in_chunks(runs: Sequence[Any], concurrency: int, work: Any) -> float:
    """Seconds for ``concurrency`` tasks to work through the runs in VOTE_CHUNK chunks."""
    chunks = iter([runs[i : i + VOTE_CHUNK] for i in range(0, len(runs), VOTE_CHUNK)])

    async def worker() -> None:
        for chunk in chunks:  # one shared iterator: each chunk is taken once
            await work(chunk)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started


async def read_decoded(store: EventStore, runs: Sequence[SourceRun], concurrency: int) -> float:
    async def work(chunk: Sequence[SourceRun]) -> None:
        await read_sources(store, chunk)

    return await in_chunks(runs, concurrency, work)


async def read_raw(store: EventStore, runs: Sequence[SourceRun], concurrency: int) -> float:
    async def work(chunk: Sequence[SourceRun]) -> None:
        await store.pool.fetch(
            READ_SOURCES_SQL,
            [f"run-{r.run_id}" for r in chunk],
            [r.stream_version for r in chunk],
        )

    return await in_chunks(runs, concurrency, work)


def fresh_writes(built: Sequence[list[Event]]) -> list[tuple[str, list[NewEvent]]]:
    """The built replay streams under new stream and event ids (the log refuses repeats)."""
    writes = []
    for events in built:
        replay_id = uuid.uuid4()
        writes.append((f"replay-{replay_id}", stamp(events, replay_id, "default", "bench", None)))
    return writes


async def write_only(
    store: EventStore, writes: Sequence[tuple[str, list[NewEvent]]], concurrency: int
) -> float:
    async def work(chunk: Sequence[tuple[str, list[NewEvent]]]) -> None:
        await append_new_streams(store, chunk)

    return await in_chunks(writes, concurrency, work)


async def replay_batch(batches: BatchReplayer, concurrency: int) -> tuple[float, int]:
    started = time.perf_counter()
    accepted = await batches.submit(
        ReplayFilter(category="multiple_choice"),
        JudgeSpec(kind="vote"),
        concurrency=concurrency,
        tenant="default",
        actor="bench",
    )
    await batches.wait(accepted.batch_id)
    seconds = time.perf_counter() - started
    progress = await batches.progress(accepted.batch_id, "default", report=False)
    assert progress.completed is not None and progress.done == accepted.runs, "batch unfinished"
    return seconds, accepted.runs


async def main(url: str, runs: int, concurrency: int, rounds: int) -> dict[str, Any]:
    async with scratch_schema(url) as (scoped, server):
        # Batches keep to half the pool: this gives the batch `concurrency` queries, as
        # the reads and writes it is compared with have.
        size = 2 * (concurrency + BATCHES_AT_ONCE)
        pool = await create_pool(scoped, min_size=size, max_size=size)
        try:
            return await measure(EventStore(pool), server, runs, concurrency, rounds)
        finally:
            await pool.close()


async def measure(
    store: EventStore, server: str, runs: int, concurrency: int, rounds: int
) -> dict[str, Any]:
    started = time.perf_counter()
    sources = await seed_runs(store, runs)
    seed_seconds = time.perf_counter() - started
    await store.pool.execute("ANALYZE")
    batches = BatchReplayer(store, Replayer(store, NoModels(), Config()))
    await read_decoded(store, sources[:500], concurrency)  # warm connections and plans
    built = await replay_events(batches.replayer, store, sources)
    # As the server does once started (create_app's freeze_heap): what is alive now
    # stays out of the collector's way, and the youngest generation is collected as
    # rarely as there. Here what is frozen is the benchmark's own set-up (the seeded
    # runs and the prebuilt replay streams), which no service holds; unfrozen, every
    # full collection during the measured phases walked it (over two rounds: 2.2-2.3 s
    # of full collections unfrozen, 1.2-1.3 s frozen).
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_GC_THRESHOLD, *gc.get_threshold()[1:])
    per_round: list[dict[str, float]] = []
    for r in range(rounds):
        rates: dict[str, float] = {}
        order = ["read", "replay", "write"] if r % 2 == 0 else ["write", "replay", "read"]
        for mode in order:
            if mode == "write":
                # Built here, not for the whole round: 30,000 events and their metadata
                # alive during the other phases made each of their collections slower.
                writes = fresh_writes(built)
                rates["write_floor"] = runs / await write_only(store, writes, concurrency)
                del writes
            elif mode == "read":
                rates["raw_fetch"] = runs / await read_raw(store, sources, concurrency)
                cpu = time.process_time()
                rates["ceiling_read"] = runs / await read_decoded(store, sources, concurrency)
                rates["ceiling_python_cpu_s"] = time.process_time() - cpu
            else:
                cpu = time.process_time()
                seconds, replayed = await replay_batch(batches, concurrency)
                rates["replay_python_cpu_s"] = time.process_time() - cpu
                rates["replay"] = replayed / seconds
        rates["ratio"] = rates["replay"] / rates["ceiling_read"]
        rates["ratio_to_raw_fetch"] = rates["replay"] / rates["raw_fetch"]
        rates["floor_ratio"] = rates["write_floor"] / rates["ceiling_read"]
        per_round.append(
            {k: round(v, 3 if "ratio" in k or k.endswith("cpu_s") else 1) for k, v in rates.items()}
        )

    def median(key: str) -> float:
        return statistics.median(p[key] for p in per_round)

    ratio = median("ratio")
    return {
        "benchmark": "replay_throughput",
        "postgres": server,
        "judge": "vote",
        "runs": runs,
        "events_per_run": EVENTS_PER_RUN,
        "concurrency": concurrency,
        "chunk": VOTE_CHUNK,
        "rounds": rounds,
        "seed_runs_per_s": round(runs / seed_seconds, 1),
        "replay_runs_per_s": round(median("replay"), 1),
        "ceiling_read_runs_per_s": round(median("ceiling_read"), 1),
        "raw_fetch_runs_per_s": round(median("raw_fetch"), 1),
        "write_floor_runs_per_s": round(median("write_floor"), 1),
        # This process's CPU time (Python, asyncpg) for one pass over all the runs.
        "ceiling_python_cpu_s": median("ceiling_python_cpu_s"),
        "replay_python_cpu_s": median("replay_python_cpu_s"),
        "ratio_replay_to_ceiling": round(ratio, 3),
        "ratio_replay_to_raw_fetch": round(median("ratio_to_raw_fetch"), 3),
        # The most the ratio could be if reading and judging cost nothing.
        "ratio_write_floor_to_ceiling": round(median("floor_ratio"), 3),
        "target": TARGET,
        "pass": ratio >= TARGET,
        "per_round": per_round,
    }


async def replay_events(
    replayer: Replayer, store: EventStore, sources: Sequence[SourceRun]
) -> list[list[Event]]:
    """Each run's replay events with the vote judge, as the batch would write them."""
    built = []
    for start in range(0, len(sources), VOTE_CHUNK):
        chunk = sources[start : start + VOTE_CHUNK]
        read = await read_sources(store, chunk)
        for run in chunk:
            source = fold(read[run.run_id])
            built.append(
                await replayer.rejudge(
                    uuid.uuid4(), run.run_id, source, JudgeSpec(kind="vote"), tenant="default"
                )
            )
    return built


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_database_url(parser)
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    args = parser.parse_args(argv)
    check_database_url(parser, args)
    return args


if __name__ == "__main__":
    options = parse_args()
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))  # stdout: JSON
    result = asyncio.run(
        main(options.database_url, options.runs, options.concurrency, options.rounds)
    )
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
