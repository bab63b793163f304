"""Append throughput of the event store against raw asyncpg, in the same run.

The service's shape: runs of 6 events of about 1 KB, one transaction (one
``append_to_stream`` call, expected version NO_STREAM) per run, 8 concurrent writers.
The baseline inserts the same rows into an identical plain table (no triggers, no
hash chain, no stream bookkeeping) with ``executemany`` in the same transaction shape,
and ``copy_records_to_table`` gives the physical ceiling. Rounds interleave the modes
and the ratio is the median of per-round ratios, because these machines are noisy.

    python ops/bench/append_throughput.py --database-url postgresql://... [--runs 3000]

Prints one JSON object. Works in a scratch schema that is dropped afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import msgspec
from scratch import add_database_url, check_database_url, scratch_schema

from service.domain.events import Attempt, PanelCallSucceeded
from service.store import NO_STREAM, EventStore, NewEvent
from service.store.database import create_pool

TARGET = 0.6
EVENTS_PER_RUN = 6
WARMUP_RUNS = 100
COLUMNS = (
    "stream_id",
    "stream_version",
    "event_id",
    "event_type",
    "schema_version",
    "data",
    "metadata",
    "prev_hash",
    "hash",
)
RAW_INSERT = """
INSERT INTO raw_events (stream_id, stream_version, event_id, event_type, schema_version,
                        data, metadata, prev_hash, hash)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
"""
# LIKE copies columns, defaults, the identity and the indexes (primary key, the unique
# constraints, commit-order index); it copies no triggers.
CREATE_PLAIN_TABLES = """
CREATE TABLE raw_events (LIKE events INCLUDING DEFAULTS INCLUDING IDENTITY INCLUDING INDEXES);
CREATE TABLE copy_events (LIKE events INCLUDING DEFAULTS INCLUDING IDENTITY INCLUDING INDEXES);
"""

Row = tuple[Any, ...]


@dataclass(frozen=True)
class Workload:
    """One mode's runs for one round: fresh stream and event ids, same payloads."""

    streams: list[str]
    runs: list[list[NewEvent]]
    rows: list[list[Row]]


def sample_event(event_bytes: int) -> PanelCallSucceeded:
    """A panel answer whose stored data is about ``event_bytes`` long."""
    event = PanelCallSucceeded(
        member_id="m1",
        model="gpt-4o-mini",
        provider="openai",
        text="",
        finish_reason="stop",
        input_tokens=412,
        output_tokens=180,
        cost_usd=0.000183,
        latency_ms=812.5,
        attempts=[Attempt(number=1, outcome="ok", latency_ms=812.5, http_status=200)],
        provider_response_id="chatcmpl-0123456789abcdef",
    )
    overhead = len(msgspec.json.encode(event))
    filler = "The answer is four, because two plus two is four. "
    text = (filler * (event_bytes // len(filler) + 1))[: max(event_bytes - overhead, 0)]
    return msgspec.structs.replace(event, text=text)


def workload(event: PanelCallSucceeded, runs: int) -> Workload:
    data = msgspec.json.encode(event).decode()
    metadata = json.dumps({"correlation_id": str(uuid.uuid4()), "tenant": "bench"})
    fake_hash = hashlib.sha256(b"bench").digest()
    streams, new_events, rows = [], [], []
    for _ in range(runs):
        stream = f"run-{uuid.uuid4()}"
        batch = [NewEvent(event, metadata={"tenant": "bench"}) for _ in range(EVENTS_PER_RUN)]
        streams.append(stream)
        new_events.append(batch)
        rows.append(
            [
                (stream, i + 1, uuid.uuid4(), event.type, 1, data, metadata, fake_hash, fake_hash)
                for i in range(EVENTS_PER_RUN)
            ]
        )
    return Workload(streams, new_events, rows)


async def run_writers(
    writers: int, jobs: Sequence[Any], work: Callable[[Any], Awaitable[None]]
) -> float:
    """Seconds for ``writers`` concurrent tasks to work through ``jobs``."""
    queue: Iterator[Any] = iter(jobs)

    async def writer() -> None:
        for job in queue:  # one shared iterator: each job is taken exactly once
            await work(job)

    started = time.perf_counter()
    await asyncio.gather(*(writer() for _ in range(writers)))
    return time.perf_counter() - started


async def bench_store(store: EventStore, load: Workload, writers: int) -> float:
    async def append(i: int) -> None:
        await store.append_to_stream(load.streams[i], load.runs[i], NO_STREAM)

    return await run_writers(writers, range(len(load.runs)), append)


async def bench_raw(pool: asyncpg.Pool, load: Workload, writers: int) -> float:
    async def insert(rows: list[Row]) -> None:
        async with pool.acquire() as conn, conn.transaction():
            await conn.executemany(RAW_INSERT, rows)

    return await run_writers(writers, load.rows, insert)


async def bench_copy(pool: asyncpg.Pool, load: Workload, writers: int) -> float:
    # The ceiling: each writer sends its whole share in one binary COPY (on a pool with
    # asyncpg's own jsonb codec: binary COPY cannot use the store's text codec).
    flat = [row for rows in load.rows for row in rows]
    shares = [flat[i::writers] for i in range(writers)]

    async def copy(rows: list[Row]) -> None:
        async with pool.acquire() as conn:
            await conn.copy_records_to_table("copy_events", records=rows, columns=COLUMNS)

    return await run_writers(writers, shares, copy)


async def main(url: str, runs: int, writers: int, rounds: int, event_bytes: int) -> dict[str, Any]:
    async with scratch_schema(url, CREATE_PLAIN_TABLES) as (scoped, server):
        pool = await create_pool(scoped, min_size=writers, max_size=writers)
        copy_pool = await asyncpg.create_pool(scoped, min_size=writers, max_size=writers)
        assert copy_pool is not None
        try:
            return await measure(pool, copy_pool, server, runs, writers, rounds, event_bytes)
        finally:
            await copy_pool.close()
            await pool.close()


async def measure(
    pool: asyncpg.Pool,
    copy_pool: asyncpg.Pool,
    server: str,
    runs: int,
    writers: int,
    rounds: int,
    event_bytes: int,
) -> dict[str, Any]:
    store = EventStore(pool)
    event = sample_event(event_bytes)
    modes: dict[str, Callable[[Workload], Awaitable[float]]] = {
        "store": lambda load: bench_store(store, load, writers),
        "raw_executemany": lambda load: bench_raw(pool, load, writers),
        "copy": lambda load: bench_copy(copy_pool, load, writers),
    }
    for bench in modes.values():  # warm connections and prepared statements
        await bench(workload(event, WARMUP_RUNS))
    per_round: list[dict[str, float]] = []
    names = list(modes)
    for r in range(rounds):
        rates: dict[str, float] = {}
        for name in names[r % len(names) :] + names[: r % len(names)]:  # rotate the order
            load = workload(event, runs)
            seconds = await modes[name](load)
            rates[name] = runs * EVENTS_PER_RUN / seconds
        rates["ratio_store_to_raw"] = rates["store"] / rates["raw_executemany"]
        per_round.append({k: round(v, 3 if k.startswith("ratio") else 0) for k, v in rates.items()})

    def median(key: str) -> float:
        return statistics.median(r[key] for r in per_round)

    ratio = median("ratio_store_to_raw")
    return {
        "benchmark": "append_throughput",
        "postgres": server,
        "writers": writers,
        "runs": runs,
        "events_per_run": EVENTS_PER_RUN,
        "event_bytes": len(msgspec.json.encode(event)),
        "rounds": rounds,
        "store_events_per_s": round(median("store")),
        "raw_executemany_events_per_s": round(median("raw_executemany")),
        "copy_events_per_s": round(median("copy")),
        "ratio_store_to_raw": round(ratio, 3),
        "target": TARGET,
        "pass": ratio >= TARGET,
        "per_round": per_round,
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_database_url(parser)
    parser.add_argument("--runs", type=int, default=3000, help="runs per mode per round")
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    parser.add_argument("--event-bytes", type=int, default=1024)
    args = parser.parse_args(argv)
    check_database_url(parser, args)
    return args


if __name__ == "__main__":
    options = parse_args()
    result = asyncio.run(
        main(
            options.database_url,
            options.runs,
            options.writers,
            options.rounds,
            options.event_bytes,
        )
    )
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
