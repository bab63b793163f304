"""Reading the whole log: gap-safe commit order, and subscriptions (NOTIFY and polling).

Sequence values are taken before commit, so a transaction that took a lower
global_position can commit after one that took a higher one. These tests hold such a
slow transaction open and show that a reader neither skips it nor runs ahead of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from service.api.runs import LIST_RUNS_SQL
from service.domain.events import RunFailed
from service.store import NO_STREAM, START, Checkpoint, EventStore, NewEvent, RecordedEvent
from service.store import postgres as store_module
from service.store.postgres import READ_ALL_SQL, checkpoint_of
from service.store.verify import EXTENDS_SQL

# Generous: only a hung reader or a lost wake-up takes this long.
PATIENCE_S = 20.0
# The channel append_to_stream notifies (schema/migrations/0001_event_log.sql).
CHANNEL = "fusion_ledger_events"


def failed(note: str = "deadline passed") -> NewEvent:
    return NewEvent(RunFailed(reason="timeout", message=note))


async def read_until(store: EventStore, after: Checkpoint, count: int) -> list[RecordedEvent]:
    """read_all until ``count`` events are visible.

    The snapshot filter is cluster-wide: any short transaction elsewhere on the server
    (another test run, autovacuum) can hold back visibility for a moment, so wait.
    """
    async with asyncio.timeout(PATIENCE_S):
        while True:
            events = await store.read_all(after)
            if len(events) >= count:
                return events
            await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def open_transaction(store: EventStore) -> AsyncIterator[asyncpg.Connection]:
    """A connection inside a transaction that the caller commits or abandons."""
    async with store.pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        try:
            yield conn
        except BaseException:
            await tx.rollback()
            raise
        else:
            await tx.commit()


@contextlib.asynccontextmanager
async def subscribed(
    store: EventStore, poll_interval: float
) -> AsyncIterator[asyncio.Queue[list[RecordedEvent]]]:
    """Run a subscription in the background; its batches arrive on the queue."""
    batches: asyncio.Queue[list[RecordedEvent]] = asyncio.Queue()

    async def consume() -> None:
        async for batch in store.subscribe(poll_interval=poll_interval):
            batches.put_nowait(batch)

    task = asyncio.create_task(consume())
    try:
        yield batches
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_reader_waits_for_a_slow_transaction_and_does_not_skip_it(
    store: EventStore,
) -> None:
    earlier = await store.append_to_stream(f"run-{uuid.uuid4()}", [failed()], NO_STREAM)
    [first] = await read_until(store, START, 1)
    assert first.global_position == earlier.first_position
    checkpoint = checkpoint_of(first)

    slow_stream, fast_stream = f"run-{uuid.uuid4()}", f"run-{uuid.uuid4()}"
    async with open_transaction(store) as slow_conn:
        slow = await store.append_to_stream(
            slow_stream, [failed("slow"), failed("slow")], NO_STREAM, connection=slow_conn
        )
        fast = await store.append_to_stream(fast_stream, [failed("fast")], NO_STREAM)
        assert slow.last_position < fast.first_position, "the slow one took lower positions"
        # The fast event is committed and a naive "position > N" reader would see it...
        naive = await store.pool.fetchval(
            "SELECT count(*) FROM events WHERE global_position > $1", first.global_position
        )
        assert naive == 1
        # ...but the gap-safe reader returns nothing past the checkpoint while the slow
        # transaction is open, so the checkpoint cannot move past its events.
        assert await store.read_all(checkpoint) == []
        assert await store.read_all(START) == [first]

    after_commit = await read_until(store, checkpoint, 3)
    assert [(e.stream_id, e.stream_version) for e in after_commit] == [
        (slow_stream, 1),
        (slow_stream, 2),
        (fast_stream, 1),
    ]
    assert [e.global_position for e in after_commit] == [
        slow.first_position,
        slow.last_position,
        fast.first_position,
    ]
    assert checkpoint_of(after_commit[-1]) > checkpoint_of(after_commit[0]) > checkpoint


async def test_rolled_back_transaction_leaves_no_gap_for_readers(store: EventStore) -> None:
    fast_stream = f"run-{uuid.uuid4()}"
    with pytest.raises(RuntimeError):
        async with open_transaction(store) as conn:
            await store.append_to_stream(
                f"run-{uuid.uuid4()}", [failed("abandoned")], NO_STREAM, connection=conn
            )
            await store.append_to_stream(fast_stream, [failed("fast")], NO_STREAM)
            assert await store.read_all() == []
            raise RuntimeError("abandon the slow append")
    events = await read_until(store, START, 1)
    assert [e.stream_id for e in events] == [fast_stream]


async def test_concurrent_writers_each_event_read_exactly_once_in_commit_order(
    store: EventStore,
) -> None:
    writers, runs_each = 6, 15
    seen: list[RecordedEvent] = []
    done = asyncio.Event()

    async def writer() -> None:
        for _ in range(runs_each):
            await store.append_to_stream(f"run-{uuid.uuid4()}", [failed(), failed()], NO_STREAM)

    async def follow() -> None:
        checkpoint = START
        while True:
            finished = done.is_set()
            batch = await store.read_all(checkpoint, limit=7)
            seen.extend(batch)
            if batch:
                checkpoint = checkpoint_of(batch[-1])
            elif finished and len(seen) >= writers * runs_each * 2:
                return
            else:
                await asyncio.sleep(0.005)

    reader = asyncio.create_task(follow())
    await asyncio.gather(*(writer() for _ in range(writers)))
    done.set()
    async with asyncio.timeout(PATIENCE_S):
        await reader

    stored = await store.pool.fetch("SELECT event_id FROM events")
    assert sorted(e.event_id for e in seen) == sorted(r["event_id"] for r in stored)
    assert len({e.event_id for e in seen}) == len(seen), "an event was delivered twice"
    order = [checkpoint_of(e) for e in seen]
    assert order == sorted(order)


async def test_subscription_wakes_on_notify(store: EventStore) -> None:
    first = await store.append_to_stream(f"run-{uuid.uuid4()}", [failed()], NO_STREAM)
    # An hour between polls: only a NOTIFY can deliver the second event in time.
    async with subscribed(store, poll_interval=3600) as batches:
        async with asyncio.timeout(PATIENCE_S):
            batch = await batches.get()
        assert [e.global_position for e in batch] == [first.first_position]

        second = await store.append_to_stream(f"run-{uuid.uuid4()}", [failed()], NO_STREAM)
        async with asyncio.timeout(PATIENCE_S):
            while True:
                try:
                    batch = await asyncio.wait_for(batches.get(), 1.0)
                    break
                except TimeoutError:
                    # The append's own NOTIFY came while an unrelated transaction
                    # elsewhere on the server still hid the event: wake the reader
                    # again, still by NOTIFY, never by a poll.
                    await store.pool.execute("SELECT pg_notify($1, 'test')", CHANNEL)
        assert [e.global_position for e in batch] == [second.first_position]


async def test_append_wakes_listeners_with_the_logs_schema(store: EventStore) -> None:
    received: asyncio.Queue[str] = asyncio.Queue()
    schema = await store.pool.fetchval("SELECT current_schema()")
    async with store.pool.acquire() as listener:
        await listener.add_listener(CHANNEL, lambda *args: received.put_nowait(args[3]))
        await store.append_to_stream(f"run-{uuid.uuid4()}", [failed()], NO_STREAM)
        async with asyncio.timeout(PATIENCE_S):
            # The channel is server-wide: other schemas' appends may notify it too.
            while (payload := await received.get()) != schema:
                pass
        assert payload == schema
        await listener.reset()


async def test_subscription_delivers_by_polling_when_no_notify_arrives(
    store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The subscriber listens on a channel nobody notifies: as if every NOTIFY were lost.
    monkeypatch.setattr(store_module, "NOTIFY_CHANNEL", f"silent_{uuid.uuid4().hex}")
    async with subscribed(store, poll_interval=0.05) as batches:
        await asyncio.sleep(0.2)  # let it find the log empty and go to sleep
        assert batches.empty()
        streams = [f"run-{uuid.uuid4()}" for _ in range(3)]
        for stream in streams:
            await store.append_to_stream(stream, [failed()], NO_STREAM)
        delivered: list[RecordedEvent] = []
        async with asyncio.timeout(PATIENCE_S):
            while len(delivered) < len(streams):
                delivered.extend(await batches.get())
    assert [e.stream_id for e in delivered] == streams


@pytest.mark.parametrize("sql", [READ_ALL_SQL, EXTENDS_SQL], ids=["read_all", "digest"])
async def test_commit_order_reads_walk_the_index_without_sorting(
    pool: asyncpg.Pool, sql: str
) -> None:
    # ORDER BY transaction_id once named the bigint output alias, not the column: every
    # read of the log sorted the whole table (0.5 s a batch at a million events).
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL enable_seqscan = off; SET LOCAL enable_sort = off")
        args: tuple[object, ...] = ("0", 0, 1000) if sql is READ_ALL_SQL else ("0", 0)
        plan = "\n".join(r[0] for r in await conn.fetch(f"EXPLAIN {sql}", *args))
    assert "events_commit_order" in plan and "Sort" not in plan, plan


async def test_listing_a_tenants_runs_walks_its_own_index(pool: asyncpg.Pool) -> None:
    # GET /v1/runs: newest run requests of one tenant, without reading other tenants'
    # (350 ms at 140,000 runs when it walked every request; 7-9 ms with the index).
    for status in (None, "run.failed"):  # a status filter walks the same index
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SET LOCAL enable_seqscan = off; SET LOCAL enable_sort = off")
            rows = await conn.fetch(f"EXPLAIN {LIST_RUNS_SQL}", "t", "code", None, None, 50, status)
        plan = "\n".join(r[0] for r in rows)
        assert "events_run_requests_by_tenant" in plan and "Sort" not in plan, plan
