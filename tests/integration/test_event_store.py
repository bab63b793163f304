"""The event store against a real Postgres: versions, idempotency, immutability."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from service.domain.events import GenerationParams, JudgeSpec, Message, RunFailed, RunRequested
from service.store import (
    ANY,
    NO_STREAM,
    EventIdConflict,
    EventStore,
    NewEvent,
    WrongExpectedVersion,
)
from service.store.bulk_append import APPEND_NEW_STREAMS_SQL, events_document
from service.store.postgres import NOTIFY_CHANNEL, event_columns


def requested(text: str = "2+2?") -> RunRequested:
    return RunRequested(
        run_id=str(uuid.uuid4()),
        messages=[Message(role="user", content=text)],
        category="arithmetic",
        panel="auto",
        judge=JudgeSpec(kind="vote"),
        params=GenerationParams(temperature=0.2),
    )


def failed() -> RunFailed:
    return RunFailed(reason="timeout", message="run deadline passed")


async def count_events(store: EventStore) -> int:
    return int(await store.pool.fetchval("SELECT count(*) FROM events"))


async def test_append_and_read_back(store: EventStore) -> None:
    stream = f"run-{uuid.uuid4()}"
    first = requested()
    result = await store.append_to_stream(stream, [NewEvent(first), NewEvent(failed())], NO_STREAM)
    assert result.stream_version == 2
    assert result.last_position == result.first_position + 1
    assert not result.duplicate
    events = await store.read_stream(stream)
    assert [e.stream_version for e in events] == [1, 2]
    assert events[0].decode() == first
    assert events[1].event_type == "run.failed"
    assert events[1].prev_hash == events[0].hash


async def test_expected_version_is_enforced(store: EventStore) -> None:
    stream = f"run-{uuid.uuid4()}"
    await store.append_to_stream(stream, [NewEvent(requested())], NO_STREAM)
    with pytest.raises(WrongExpectedVersion) as info:
        await store.append_to_stream(stream, [NewEvent(failed())], NO_STREAM)
    assert info.value.actual == "1"
    with pytest.raises(WrongExpectedVersion) as info:
        await store.append_to_stream(stream, [NewEvent(failed())], 5)
    assert info.value.actual == "1"
    with pytest.raises(WrongExpectedVersion):
        await store.append_to_stream(f"run-{uuid.uuid4()}", [NewEvent(failed())], 1)
    ok = await store.append_to_stream(stream, [NewEvent(failed())], 1)
    assert ok.stream_version == 2
    anyway = await store.append_to_stream(stream, [NewEvent(failed())], ANY)
    assert anyway.stream_version == 3
    assert await count_events(store) == 3


async def test_wrong_version_consumes_no_position(store: EventStore) -> None:
    stream = f"run-{uuid.uuid4()}"
    a = await store.append_to_stream(stream, [NewEvent(requested())], NO_STREAM)
    for _ in range(3):
        with pytest.raises(WrongExpectedVersion):
            await store.append_to_stream(stream, [NewEvent(failed())], 7)
    b = await store.append_to_stream(stream, [NewEvent(failed())], 1)
    assert b.first_position == a.last_position + 1


async def test_twenty_concurrent_appends_one_wins(store: EventStore) -> None:
    stream = f"run-{uuid.uuid4()}"
    await store.append_to_stream(stream, [NewEvent(requested())], NO_STREAM)

    async def attempt() -> object:
        try:
            return await store.append_to_stream(stream, [NewEvent(failed()), NewEvent(failed())], 1)
        except WrongExpectedVersion as exc:
            return exc

    results = await asyncio.gather(*(attempt() for _ in range(20)))
    wins = [r for r in results if not isinstance(r, WrongExpectedVersion)]
    assert len(wins) == 1
    assert sum(isinstance(r, WrongExpectedVersion) for r in results) == 19
    versions = [e.stream_version for e in await store.read_stream(stream)]
    assert versions == [1, 2, 3]


async def test_twenty_concurrent_creations_one_wins(store: EventStore) -> None:
    stream = f"run-{uuid.uuid4()}"

    async def attempt() -> object:
        try:
            return await store.append_to_stream(stream, [NewEvent(requested())], NO_STREAM)
        except WrongExpectedVersion as exc:
            return exc

    results = await asyncio.gather(*(attempt() for _ in range(20)))
    assert sum(not isinstance(r, WrongExpectedVersion) for r in results) == 1
    assert [e.stream_version for e in await store.read_stream(stream)] == [1]


async def test_resending_same_event_ids_is_idempotent(store: EventStore) -> None:
    stream = f"run-{uuid.uuid4()}"
    batch = [NewEvent(requested()), NewEvent(failed())]
    original = await store.append_to_stream(stream, batch, NO_STREAM)
    before = await count_events(store)
    again = await store.append_to_stream(stream, batch, NO_STREAM)
    assert again.duplicate
    assert (again.first_position, again.last_position, again.stream_version) == (
        original.first_position,
        original.last_position,
        original.stream_version,
    )
    assert await count_events(store) == before
    concurrent = await asyncio.gather(
        *(store.append_to_stream(stream, batch, ANY) for _ in range(5))
    )
    assert all(r.duplicate for r in concurrent)
    assert await count_events(store) == before


async def test_event_ids_reused_elsewhere_conflict(store: EventStore) -> None:
    event = NewEvent(requested())
    await store.append_to_stream(f"run-{uuid.uuid4()}", [event], NO_STREAM)
    with pytest.raises(EventIdConflict):
        await store.append_to_stream(f"run-{uuid.uuid4()}", [event], NO_STREAM)


async def test_concurrent_first_appends_of_same_ids_write_once(store: EventStore) -> None:
    stream = f"run-{uuid.uuid4()}"
    batch = [NewEvent(requested()), NewEvent(failed())]
    results = await asyncio.gather(
        *(store.append_to_stream(stream, batch, NO_STREAM) for _ in range(10)),
        return_exceptions=True,
    )
    assert all(not isinstance(r, BaseException) for r in results), results
    assert sum(not r.duplicate for r in results) == 1  # type: ignore[union-attr]
    assert await count_events(store) == 2


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE events SET event_type = 'x'",
        "DELETE FROM events",
        "TRUNCATE events",
    ],
)
async def test_log_rejects_changes(store: EventStore, statement: str) -> None:
    await store.append_to_stream(f"run-{uuid.uuid4()}", [NewEvent(requested())], NO_STREAM)
    with pytest.raises(asyncpg.PostgresError, match="immutable"):
        await store.pool.execute(statement)
    assert await count_events(store) == 1
    # session_replication_role = replica does not switch the guard off either
    async with store.pool.acquire() as conn:
        try:
            await conn.execute("SET session_replication_role = replica")
        except asyncpg.InsufficientPrivilegeError:
            return
        try:
            with pytest.raises(asyncpg.PostgresError, match="immutable"):
                await conn.execute(statement)
        finally:
            await conn.execute("RESET session_replication_role")


async def test_killed_connection_mid_append_leaves_all_or_nothing(store: EventStore) -> None:
    stream = f"run-{uuid.uuid4()}"
    await store.append_to_stream(stream, [NewEvent(requested())], NO_STREAM)
    conn = await store.pool.acquire()
    pid = conn.get_server_pid()
    # Hold the stream's row lock elsewhere so the append is stuck mid-flight.
    blocker = await store.pool.acquire()
    tx = blocker.transaction()
    await tx.start()
    await blocker.execute("SELECT 1 FROM streams WHERE stream_id = $1 FOR UPDATE", stream)
    big = [NewEvent(failed()) for _ in range(50)]
    task = asyncio.create_task(store.append_to_stream(stream, big, 1, connection=conn))
    for _ in range(100):
        waiting = await blocker.fetchval(
            "SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1", pid
        )
        if waiting == "Lock":
            break
        await asyncio.sleep(0.02)
    await blocker.execute("SELECT pg_terminate_backend($1)", pid)
    with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, ConnectionError)):
        await task
    await tx.rollback()
    await store.pool.release(blocker)
    await store.pool.release(conn)
    assert [e.stream_version for e in await store.read_stream(stream)] == [1]
    after = await store.append_to_stream(stream, big, 1)
    assert after.stream_version == 51


async def test_readers_are_woken_after_the_commit_not_inside_the_append(
    store: EventStore,
) -> None:
    # A NOTIFY inside an append holds, until the commit is flushed, a lock every other
    # notifying commit waits for: appends committed one at a time (migration 0040).
    # The append functions now send none; the store wakes readers after the commit.
    woken: asyncio.Queue[str] = asyncio.Queue()
    schema = await store.pool.fetchval("SELECT current_schema()")

    def wake(*args: object) -> None:
        if args[3] == schema:  # the channel is server-wide: other tests' appends too
            woken.put_nowait(str(args[3]))

    async with store.pool.acquire() as listener:
        await listener.add_listener(NOTIFY_CHANNEL, wake)
        try:
            async with store.pool.acquire() as conn:
                await conn.fetchrow(
                    "SELECT * FROM append_to_stream($1, 0, $2, $3, $4, $5, $6)",
                    f"run-{uuid.uuid4()}",
                    *event_columns([NewEvent(failed())]),
                )
                document = events_document([(f"run-{uuid.uuid4()}", [NewEvent(failed())])])
                await conn.fetchval(APPEND_NEW_STREAMS_SQL, document)
            with pytest.raises(TimeoutError):  # the functions themselves: silent
                await asyncio.wait_for(woken.get(), 0.5)
            await store.append_to_stream(f"run-{uuid.uuid4()}", [NewEvent(failed())], NO_STREAM)
            assert await asyncio.wait_for(woken.get(), 5) == schema
        finally:
            await listener.remove_listener(NOTIFY_CHANNEL, wake)


async def test_the_append_functions_keep_their_settings(store: EventStore) -> None:
    # Replacing a function's body (0040) resets what 0033 and 0038 set on it.
    rows = await store.pool.fetch(
        "SELECT p.oid::regprocedure::text AS name, p.prosecdef, p.proconfig FROM pg_proc p "
        "WHERE p.proname IN ('append_to_stream', 'append_new_streams') "
        "AND p.pronamespace = current_schema()::regnamespace"
    )
    assert len(rows) == 3
    for row in rows:
        assert row["prosecdef"], row["name"]
        assert any(c.startswith("search_path=") for c in row["proconfig"]), row["name"]
    plan = {r["name"]: r["proconfig"] for r in rows if r["name"].startswith("append_to_stream")}
    assert "plan_cache_mode=force_generic_plan" in next(iter(plan.values()))
