"""Readiness answers in bounded time while the database does not."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import asyncpg
import pytest
from litestar.testing import AsyncTestClient

from service.api import health
from service.api.health import READY_WITHIN_S
from service.config import Config
from tests.api.conftest import MockProviders
from tests.api.test_database_unavailable import Relay, served_through
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


class HalfOpen(Relay):
    """A relay whose connections of the moment stop answering (half-open, as after a
    failover), while new ones work."""

    def __init__(self, database_url: str) -> None:
        self.silent: set[socket.socket] = set()
        super().__init__(database_url)

    def silence_existing(self) -> None:
        with self.lock:
            self.silent = set(self.sockets)

    def passes(self, source: socket.socket, data: bytes, answers: bool) -> bool:
        return not (answers and source in self.silent)


async def test_readiness_comes_back_when_its_check_hangs_on_a_dead_connection(
    database: TestDatabase, config: Config, providers: MockProviders,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    # A check stuck on a connection that never answers kept every probe at 503 for as
    # long as the kernel kept that connection (minutes), fresh connections working.
    monkeypatch.setattr(health, "CHECK_GIVES_UP_S", 1.0)
    monkeypatch.setattr(health, "READY_WITHIN_S", 0.5)
    relay = HalfOpen(database.url)
    async with served_through(relay, config, providers, pool_min_size=1, pool_max_size=4) as client:
        assert (await client.get("/readyz")).status_code == 200
        relay.silence_existing()
        assert (await client.get("/readyz")).status_code == 503
        statuses = []
        for _ in range(20):  # each check given up closes one silent connection
            statuses.append((await client.get("/readyz")).status_code)
            if statuses[-1] == 200:
                break
            await asyncio.sleep(0.5)
        assert statuses[-1] == 200, statuses
