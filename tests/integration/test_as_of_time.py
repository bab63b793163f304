"""``as_of`` a time or a position when appends interleave.

An event's recorded_at is its transaction's start, its place in the log (the order
readers and the read models apply it) is its transaction id, taken at the first write,
and its global position comes from a sequence at insert: three orders that concurrent
appends can make disagree. These tests hold a transaction open to create each
interleaving on purpose, then ask the failures statistics (one failed call per append,
each with its own model) which appends an answer counts.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime

import asyncpg
import pytest

from service.domain.events import JudgeSpec, Message, PanelCallFailed, PanelRequest, RunRequested
from service.projections.queries import BadQuery, StatsAnswer, answer, failures_query
from service.projections.runner import head
from service.store import NO_STREAM, START, Checkpoint, EventStore, NewEvent
from service.store.database import Connection

PATIENCE_S = 20.0  # the snapshot filter is cluster-wide: other sessions delay it a moment

APPENDED_SQL = """
SELECT transaction_id::text::bigint AS xid, global_position AS pos, recorded_at
FROM events WHERE stream_id = $1 ORDER BY stream_version DESC LIMIT 1
"""


def failed_call(model: str) -> list[NewEvent]:
    """A run whose one panel call (to ``model``) failed: one row of the failures answer."""
    run_id = str(uuid.uuid4())
    meta = {"correlation_id": run_id, "tenant": "default", "actor": "test"}
    events = [
        RunRequested(run_id=run_id, messages=[Message(role="user", content="2+2?")],
                     category="arithmetic", panel=[PanelRequest(model=model)],
                     judge=JudgeSpec(kind="vote")),
        PanelCallFailed(member_id="m0", model=model, provider="x", error_kind="timeout",
                        http_status=None, attempts=[], latency_ms=1000.0, message="timed out"),
    ]  # fmt: skip
    return [NewEvent(e, meta) for e in events]


async def append_call(store: EventStore, model: str, conn: Connection | None = None) -> str:
    """Append a failed call to ``model`` (on ``conn``'s transaction if given); the stream."""
    stream = f"run-{model.replace('/', '-')}-{uuid.uuid4()}"
    await store.append_to_stream(stream, failed_call(model), NO_STREAM, connection=conn)
    return stream


async def appended(pool: asyncpg.Pool, stream: str) -> tuple[Checkpoint, datetime]:
    """The checkpoint just after a stream's last event, and when it was recorded."""
    row = await pool.fetchrow(APPENDED_SQL, stream)
    assert row is not None
    return Checkpoint(row["xid"], row["pos"]), row["recorded_at"]


async def settled(pool: asyncpg.Pool, checkpoint: Checkpoint) -> Checkpoint:
    """Wait until the gap-safe head has reached ``checkpoint``; the head."""
    async with asyncio.timeout(PATIENCE_S), pool.acquire() as conn:
        while True:
            last = await head(conn)
            if last >= checkpoint:
                return last
            await asyncio.sleep(0.02)


async def ask(pool: asyncpg.Pool, as_of: str) -> StatsAnswer:
    async with pool.acquire() as conn:
        q = failures_query("default", group_by="model", model=None, category=None,
                           error_kind=None, since=None, until=None, as_of=as_of)  # fmt: skip
        return await answer(conn, q)


async def models_as_of(pool: asyncpg.Pool, as_of: str) -> set[str]:
    return {row["model"] for row in (await ask(pool, as_of)).rows}


async def test_a_time_leaves_out_an_append_that_began_after_it_but_came_first_in_the_log(
    store: EventStore, pool: asyncpg.Pool
) -> None:
    before, _ = await appended(pool, await append_call(store, "x/before"))
    await settled(pool, before)
    async with pool.acquire() as slow_conn, slow_conn.transaction():
        # The slow append's transaction has begun (its events will be recorded at t)
        # but has written nothing, so it has no transaction id yet.
        t = await slow_conn.fetchval("SELECT now()")
        assert await slow_conn.fetchval("SELECT pg_current_xact_id_if_assigned()") is None
        late = await append_call(store, "x/late")  # begins after t, commits first
        slow = await append_call(store, "x/slow", slow_conn)  # now takes a later xid
    (late_at, late_time), (slow_at, slow_time) = [await appended(pool, s) for s in (late, slow)]
    assert slow_time == t < late_time, "the late append was recorded after t"
    assert late_at < slow_at, "the late append comes first in the log"
    await settled(pool, slow_at)

    # As of t: nothing recorded after t, and (the log being read in order) nothing
    # after the late append either; x/slow, though recorded at t, was invisible then.
    at_t = await ask(pool, t.isoformat())
    assert {row["model"] for row in at_t.rows} == {"x/before"}
    assert at_t.as_of == str(before)
    assert await models_as_of(pool, str(before)) == {"x/before"}
    # As of the late append's time everything was recorded, so everything counts.
    everything = {"x/before", "x/late", "x/slow"}
    assert await models_as_of(pool, late_time.isoformat()) == everything


async def test_a_time_counts_every_append_recorded_by_then_and_none_after(
    store: EventStore, pool: asyncpg.Pool
) -> None:
    first, first_time = await appended(pool, await append_call(store, "x/first"))
    second, second_time = await appended(pool, await append_call(store, "x/second"))
    third, third_time = await appended(pool, await append_call(store, "x/third"))
    assert first_time < second_time < third_time
    await settled(pool, third)

    assert await models_as_of(pool, second_time.isoformat()) == {"x/first", "x/second"}
    assert (await ask(pool, second_time.isoformat())).as_of == str(second)
    assert await models_as_of(pool, third_time.isoformat()) == {"x/first", "x/second", "x/third"}
    before_all = await ask(pool, "2000-01-01T00:00:00Z")
    assert before_all.rows == [] and before_all.as_of == str(START)
    assert first < second < third


async def test_a_time_waits_for_an_open_transaction_that_began_before_it(
    store: EventStore, pool: asyncpg.Pool
) -> None:
    before, _ = await appended(pool, await append_call(store, "x/before"))
    last = await settled(pool, before)
    async with pool.acquire() as slow_conn, slow_conn.transaction():
        slow = await append_call(store, "x/slow", slow_conn)  # recorded now, still open
        fast, fast_time = await appended(pool, await append_call(store, "x/fast"))
        # Both were recorded by fast_time, but the open slow append comes first in the
        # log and may yet add more: the answer stops where every reader stops.
        while_open = await ask(pool, fast_time.isoformat())
        assert {row["model"] for row in while_open.rows} == {"x/before"}
        assert while_open.as_of == str(last)
    await settled(pool, fast)
    slow_at, slow_time = await appended(pool, slow)
    assert slow_time < fast_time and slow_at < fast
    assert await models_as_of(pool, fast_time.isoformat()) == {"x/before", "x/slow", "x/fast"}


async def test_a_position_means_up_to_that_event_in_log_order_not_lower_positions(
    store: EventStore, pool: asyncpg.Pool
) -> None:
    before, _ = await appended(pool, await append_call(store, "x/before"))
    last = await settled(pool, before)
    async with pool.acquire() as slow_conn, slow_conn.transaction():
        await slow_conn.execute("SELECT pg_current_xact_id()")  # first in the log order...
        fast, _ = await appended(pool, await append_call(store, "x/fast"))
        # ...while open, a position after it answers up to where readers stop.
        while_open = await ask(pool, str(fast.global_position))
        assert {row["model"] for row in while_open.rows} == {"x/before"}
        assert while_open.as_of == str(last)
        slow_stream = await append_call(store, "x/slow", slow_conn)  # ...but higher positions
    slow, _ = await appended(pool, slow_stream)
    assert slow.global_position > fast.global_position and slow < fast
    await settled(pool, fast)

    # The slow append's position is above the fast one's, but it comes first in the
    # log: as of it, the statistics stood without the fast append.
    assert await models_as_of(pool, str(slow.global_position)) == {"x/before", "x/slow"}
    assert (await ask(pool, str(slow.global_position))).as_of == str(slow)
    everything = {"x/before", "x/slow", "x/fast"}
    assert await models_as_of(pool, str(fast.global_position)) == everything
    assert await models_as_of(pool, str(fast)) == everything


async def test_a_position_nobody_holds_below_a_stored_one_is_refused(
    store: EventStore, pool: asyncpg.Pool
) -> None:
    before, _ = await appended(pool, await append_call(store, "x/before"))
    await settled(pool, before)
    async with pool.acquire() as slow_conn, slow_conn.transaction():
        await slow_conn.execute("SELECT pg_current_xact_id()")  # first in the log order
        fast, _ = await appended(pool, await append_call(store, "x/fast"))
        async with pool.acquire() as abandoned:
            tx = abandoned.transaction()
            await tx.start()
            gap = (await store.append_to_stream(
                f"run-{uuid.uuid4()}", failed_call("x/abandoned"), NO_STREAM, connection=abandoned
            )).last_position  # fmt: skip
            await tx.rollback()
        slow_stream = await append_call(store, "x/slow", slow_conn)
    slow, _ = await appended(pool, slow_stream)
    last = await settled(pool, fast)
    # The head is the fast append (last in log order) and the abandoned position lies
    # between its position and the slow append's: answering "the head" for it would
    # count an event at a higher position.
    assert last == fast and fast.global_position < gap < slow.global_position
    with pytest.raises(BadQuery, match=f"no event at position {gap}"):
        await ask(pool, str(gap))
    assert (await ask(pool, str(slow.global_position + 10))).as_of == str(last)
