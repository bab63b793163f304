"""The log's bulk append of new streams (batch replays write through it): the same
events, versions and hash chains as append_to_stream, all or nothing."""

from __future__ import annotations

import asyncio
import uuid
from itertools import pairwise
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from service.domain.events import JudgeDecided, JudgeIdentity, RunFailed, Verdict
from service.store import (
    NO_STREAM,
    EventIdConflict,
    EventStore,
    NewEvent,
    UnstorableEvent,
    WrongExpectedVersion,
)
from service.store.bulk_append import append_new_streams
from service.store.database import connect
from service.store.verify import verify_chains
from tests.conftest import TestDatabase


def events(n: int) -> list[NewEvent]:
    judged = JudgeDecided(
        judge=JudgeIdentity(kind="vote", model=None, prompt_version="vote-v1"),
        final_answer="B",
        verdicts=[Verdict(member_id="m1", agrees=True)],
        member_weights={"m1": 1e16},  # jsonb rewrites this number: the chain must not care
    )
    made = [NewEvent(judged, {"tenant": "default", "n": i}) for i in range(n - 1)]
    return [*made, NewEvent(RunFailed(reason="abandoned", message="é\n\"'"), {"a": None})]


async def test_new_streams_get_the_same_chains_as_single_appends(
    store: EventStore, pool: asyncpg.Pool
) -> None:
    streams = [(f"replay-{uuid.uuid4()}", events(n)) for n in (1, 3, 2, 3)]
    assert await append_new_streams(store, streams) == 4
    positions = []
    for stream_id, written in streams:
        stored = await store.read_stream(stream_id)
        assert [r.event_id for r in stored] == [e.event_id for e in written]
        assert [r.decode() for r in stored] == [e.event for e in written]
        assert [r.stream_version for r in stored] == list(range(1, len(written) + 1))
        assert all(b.prev_hash == a.hash for a, b in pairwise(stored))
        positions += [r.global_position for r in stored]
        row = await pool.fetchrow(
            "SELECT version, last_hash, category FROM streams WHERE stream_id = $1", stream_id
        )
        assert row is not None
        assert (row["version"], row["last_hash"], row["category"]) == (
            len(written),
            stored[-1].hash,
            "replay",
        )
    assert positions == sorted(positions)  # in the order given
    single = f"replay-{uuid.uuid4()}"
    await store.append_to_stream(single, events(3))
    async with pool.acquire() as conn:
        report = await verify_chains(conn)  # recomputed in Python, not trusting SQL
    assert report.ok, report.problems
    assert report.streams == 5


async def test_an_existing_stream_fails_the_whole_call(
    store: EventStore, pool: asyncpg.Pool
) -> None:
    existing = f"replay-{uuid.uuid4()}"
    await store.append_to_stream(existing, events(1))
    before = await pool.fetchval("SELECT count(*) FROM events")
    fresh = f"replay-{uuid.uuid4()}"
    with pytest.raises(WrongExpectedVersion):
        await append_new_streams(store, [(fresh, events(2)), (existing, events(1))])
    assert await pool.fetchval("SELECT count(*) FROM events") == before
    assert await store.read_stream(fresh) == []

    taken = events(1)
    await append_new_streams(store, [(f"replay-{uuid.uuid4()}", taken)])
    with pytest.raises(EventIdConflict):
        await append_new_streams(store, [(f"replay-{uuid.uuid4()}", taken)])


async def test_the_error_names_a_stream_that_exists(store: EventStore) -> None:
    existing = f"replay-{uuid.uuid4()}"
    await store.append_to_stream(existing, events(1))
    streams = [(f"replay-{uuid.uuid4()}", events(1)), (existing, events(2))]
    with pytest.raises(WrongExpectedVersion) as raised:
        await append_new_streams(store, streams)
    assert raised.value.stream_id == existing
    assert await store.read_stream(streams[0][0]) == []
    await append_new_streams(store, [streams[0]])
    with pytest.raises(WrongExpectedVersion):  # re-sending a call is not a no-op
        await append_new_streams(store, [streams[0]])


async def test_an_unstorable_event_is_named_and_nothing_is_written(
    store: EventStore, pool: asyncpg.Pool
) -> None:
    before = await pool.fetchval("SELECT count(*) FROM events")
    weights = JudgeDecided(
        judge=JudgeIdentity(kind="vote", model=None, prompt_version="vote-v1"),
        final_answer="B",
        verdicts=[],
        member_weights={"m1": float("nan")},
    )
    nul = RunFailed(reason="abandoned", message="a NUL \x00 here")
    undecodable = RunFailed(reason="no such reason", message="x")  # type: ignore[arg-type]
    for bad, says in [
        (weights, "judge.decided.member_weights.m1"),
        (nul, "NUL"),
        (undecodable, "run.failed would not decode"),
    ]:
        streams = [
            (f"replay-{uuid.uuid4()}", events(2)),
            (f"replay-{uuid.uuid4()}", [NewEvent(bad)]),
        ]
        with pytest.raises(UnstorableEvent, match=says):
            await append_new_streams(store, streams)
    assert await pool.fetchval("SELECT count(*) FROM events") == before


async def wait_until_blocked(pool: asyncpg.Pool, pid: int) -> None:
    """Until the backend ``pid`` waits for a lock (another transaction holds it)."""
    for _ in range(500):
        waiting = await pool.fetchval(
            "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", pid
        )
        if waiting:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the second writer never waited for the first")


@pytest.mark.parametrize("first_commits", [True, False])
async def test_a_writer_waits_for_a_concurrent_creator_of_the_same_stream(
    store: EventStore, pool: asyncpg.Pool, first_commits: bool
) -> None:
    shared, mine, theirs = (f"replay-{uuid.uuid4()}" for _ in range(3))
    first = [(theirs, events(2)), (shared, events(3))]
    second = [(shared, events(1)), (mine, events(2))]
    async with pool.acquire() as conn_a, pool.acquire() as conn_b:
        tx = conn_a.transaction()
        await tx.start()
        await append_new_streams(store, first, connection=conn_a)
        racing = asyncio.create_task(append_new_streams(store, second, connection=conn_b))
        await wait_until_blocked(pool, conn_b.get_server_pid())
        if first_commits:
            await tx.commit()
            with pytest.raises(WrongExpectedVersion) as raised:
                await racing
            assert raised.value.stream_id == shared
        else:
            await tx.rollback()
            assert await racing == 2
    winner = first if first_commits else second
    loser = second if first_commits else first
    for stream_id, written in winner:
        assert [r.event_id for r in await store.read_stream(stream_id)] == [
            e.event_id for e in written
        ]
    for stream_id, _ in loser:
        if stream_id != shared:
            assert await store.read_stream(stream_id) == []
    async with pool.acquire() as conn:
        assert (await verify_chains(conn)).ok


async def test_the_service_role_may_bulk_append_and_still_not_rewrite(
    database: TestDatabase, store: EventStore
) -> None:
    role = f"fl_app_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(database.admin_url)
    try:
        if not await admin.fetchval("SELECT 1 FROM pg_roles WHERE rolname = 'fusion_ledger_app'"):
            pytest.skip(
                "fusion_ledger_app does not exist on this server (0002 could not create it)"
            )
        try:
            await admin.execute(f'CREATE ROLE "{role}" LOGIN IN ROLE fusion_ledger_app')
        except asyncpg.InsufficientPrivilegeError:
            pytest.skip("this server's test role may not create roles")
        parts = urlsplit(database.url)
        netloc = f"{role}@{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")
        conn = await connect(urlunsplit(parts._replace(netloc=netloc)))
        try:
            stream_id = f"replay-{uuid.uuid4()}"
            assert await append_new_streams(store, [(stream_id, events(3))], connection=conn) == 1
            assert len(await store.read_stream(stream_id)) == 3
            single = f"run-{uuid.uuid4()}"  # and the one-stream append
            await store.append_to_stream(single, events(2), NO_STREAM, connection=conn)
            assert len(await store.read_stream(single)) == 2
            with pytest.raises(asyncpg.PostgresError, match=r"immutable|permission denied"):
                await conn.execute("UPDATE events SET data = '{}'")
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute("DELETE FROM streams")
            # Only through the functions: a row inserted directly could carry any time
            # and transaction id behind a correct hash (a backdated event verify accepts).
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(
                    "INSERT INTO events (stream_id, stream_version, event_id, event_type,"
                    " schema_version, data, metadata, recorded_at, prev_hash, hash)"
                    " SELECT stream_id, 99, gen_random_uuid(), event_type, schema_version,"
                    " data, metadata, '2020-01-01', hash, hash FROM events LIMIT 1"
                )
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute("UPDATE streams SET version = version + 1")
        finally:
            await conn.close()
    finally:
        await admin.execute(f'DROP OWNED BY "{role}"')
        await admin.execute(f'DROP ROLE IF EXISTS "{role}"')
        await admin.close()


async def test_a_stream_given_twice_is_refused_and_nothing_is_written(
    store: EventStore, pool: asyncpg.Pool
) -> None:
    first, second = f"replay-{uuid.uuid4()}", f"replay-{uuid.uuid4()}"
    before = await pool.fetchval("SELECT count(*) FROM events")
    with pytest.raises(ValueError, match="given twice"):
        await append_new_streams(
            store, [(first, events(1)), (second, events(1)), (first, events(1))]
        )
    # The function refuses it too (a caller that bypasses the document check).
    interleaved = [first, second, first]
    with pytest.raises(asyncpg.PostgresError, match="adjacent") as raised:
        await pool.fetchval(
            "SELECT append_new_streams($1::text[], $2::uuid[], $3::text[], $4::smallint[],"
            " $5::jsonb[], $6::jsonb[])",
            interleaved,
            [uuid.uuid4() for _ in interleaved],
            ["run.failed"] * 3,
            [1] * 3,
            ['{"reason": "abandoned", "message": "x"}'] * 3,
            ["{}"] * 3,
        )
    assert getattr(raised.value, "sqlstate", None) == "FL400"
    assert await pool.fetchval("SELECT count(*) FROM events") == before
