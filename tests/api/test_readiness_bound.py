"""Readiness answers in bounded time while the database does not."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
from litestar.testing import AsyncTestClient

from service.api.health import READY_WITHIN_S
from tests.conftest import TestDatabase

HELD_S = 6.0  # the server itself lets go: the test's loop is blocked while a request runs
LOCKED_SQL = """
SELECT count(*) FROM pg_locks
WHERE relation = 'schema_migrations'::regclass AND mode = 'AccessExclusiveLock' AND granted
"""


async def test_readiness_says_unavailable_while_the_database_does_not_answer(
    client: AsyncTestClient[Any], database: TestDatabase
) -> None:
    # A session holds schema_migrations (a lock wait stands in for a hung server or a
    # dropped network, which keep a statement waiting just the same): /readyz waited
    # as long, past the probe's timeout, each probe holding a pooled connection.
    holder = await asyncpg.connect(database.url)
    try:
        held = asyncio.ensure_future(
            holder.execute(
                "BEGIN; LOCK TABLE schema_migrations IN ACCESS EXCLUSIVE MODE; "
                f"SELECT pg_sleep({HELD_S}); COMMIT"
            )
        )
        watcher = await asyncpg.connect(database.url)
        try:
            for _ in range(500):
                if await watcher.fetchval(LOCKED_SQL):
                    break
                await asyncio.sleep(0.01)
        finally:
            await watcher.close()
        started = time.monotonic()
        waiting = await client.get("/readyz")
        answered_in = time.monotonic() - started
        assert waiting.status_code == 503
        assert waiting.json() == {
            "status": "unavailable",
            "detail": f"the database did not answer within {READY_WITHIN_S:g} s",
        }
        assert answered_in < HELD_S - 1
        await held
        for _ in range(50):  # the check still in flight ends once the lock is gone
            ready = await client.get("/readyz")
            if ready.status_code == 200:
                break
            await asyncio.sleep(0.05)
        assert ready.json()["status"] == "ready"
    finally:
        await holder.close()
