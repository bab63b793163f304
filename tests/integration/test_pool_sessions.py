"""The pool skips asyncpg's session reset on release; ``stateful`` connections get it.

What must hold: a connection that took an advisory lock, listened or changed a setting
through ``stateful`` goes back to the pool without any of it, and a plain borrower's
unfinished transaction is rolled back.
"""

from __future__ import annotations

import asyncio

import pytest

from service.projections.runner import ProjectionWorker
from service.store.database import create_pool, keep_running, stateful
from tests.conftest import TestDatabase

SESSION_SQL = """
SELECT (SELECT count(*) FROM pg_locks
        WHERE locktype = 'advisory' AND pid = pg_backend_pid()) AS locks,
       (SELECT count(*) FROM pg_listening_channels()) AS channels,
       current_setting('work_mem') AS work_mem,
       pg_backend_pid() AS pid
"""


async def test_stateful_connections_come_back_clean(database: TestDatabase) -> None:
    single = await create_pool(database.url, min_size=1, max_size=1)  # one session
    try:
        async with single.acquire() as conn:
            clean = await conn.fetchrow(SESSION_SQL)
        async with stateful(single) as conn:
            await conn.fetchval("SELECT pg_advisory_lock(4242)")
            await conn.add_listener("pool_sessions_test", lambda *_: None)
            await conn.execute("SET work_mem = '77MB'")
            dirty = await conn.fetchrow(SESSION_SQL)
        assert (dirty["locks"], dirty["channels"], dirty["work_mem"]) == (1, 1, "77MB")
        async with single.acquire() as conn:
            after = await conn.fetchrow(SESSION_SQL)
        assert after["pid"] == dirty["pid"]  # the same session, reset
        assert (after["locks"], after["channels"], after["work_mem"]) == (
            0,
            0,
            clean["work_mem"],
        )
    finally:
        await single.close()


async def test_plain_release_rolls_back_an_open_transaction(database: TestDatabase) -> None:
    single = await create_pool(database.url, min_size=1, max_size=1)
    try:
        async with single.acquire() as conn:
            await conn.execute("CREATE TEMP TABLE pool_sessions_probe (x int)")
            transaction = conn.transaction()
            await transaction.start()
            await conn.execute("INSERT INTO pool_sessions_probe VALUES (1)")
            # released without commit or rollback
        async with single.acquire() as conn:
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SELECT count(*) FROM pool_sessions_probe") == 0
    finally:
        await single.close()


async def test_the_projection_worker_ends_when_its_pool_is_closed(
    database: TestDatabase,
) -> None:
    # Shutdown must not rely on the cancellation reaching it: a lost one (asyncio.wait_for
    # in Python 3.11 can swallow it) left the worker retrying against a closed pool.
    own = await create_pool(database.url, min_size=1, max_size=3)
    worker = ProjectionWorker(own, poll_interval=0.05)
    task = asyncio.create_task(worker.run())
    await asyncio.wait_for(worker.caught_up.wait(), 10)
    own.terminate()
    await asyncio.wait_for(task, 10)  # returns by itself, not cancelled
    assert not task.cancelled()


async def test_a_background_loop_retries_failures_and_ends_with_its_pool(
    database: TestDatabase,
) -> None:
    own = await create_pool(database.url, min_size=1, max_size=2)
    calls: list[int] = []

    async def work() -> None:
        calls.append(await own.fetchval("SELECT 1"))  # fails once the pool is closed
        if len(calls) == 1:
            raise RuntimeError("a failure costs a pause, not the loop")

    loop = asyncio.create_task(keep_running(own, work, pause_s=0.01, failure="test.failed"))
    for _ in range(500):
        if len(calls) >= 3:
            break
        await asyncio.sleep(0.01)
    assert len(calls) >= 3  # ran again after the failure, and again after a success
    own.terminate()
    await asyncio.wait_for(loop, 10)  # the closed pool ends it
    assert not loop.cancelled()

    other = await create_pool(database.url, min_size=1, max_size=1)
    try:

        async def broken() -> None:
            raise KeyError("not retried")

        with pytest.raises(KeyError):  # only what retry_on names is retried
            await keep_running(other, broken, pause_s=0.01, failure="x", retry_on=(OSError,))
    finally:
        await other.close()
