"""as_of answers rebuild a projection from the log's start, in a transaction that holds
back every reader of the log while it lasts: one at a time per process, and bounded."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from litestar.testing import AsyncTestClient

from service.api import stats
from service.app import create_app
from service.settings import Settings
from tests.conftest import RunningSimulator, TestDatabase


@pytest.fixture
async def client(
    database: TestDatabase, simulator: RunningSimulator
) -> AsyncIterator[AsyncTestClient[Any]]:
    settings = Settings(database_url=database.url, pool_min_size=1, pool_max_size=4)
    app = create_app(
        settings, simulator.config(), sweeper=False, run_migrations=False, projections=False
    )
    async with AsyncTestClient(app=app) as test_client:
        body = {"prompt": "What is 2 + 2?", "panel": ["sim/model-a"]}
        assert (await test_client.post("/v1/fusions", json=body)).status_code == 200
        yield test_client


async def test_a_second_as_of_answer_at_once_is_told_to_retry(
    client: AsyncTestClient[Any],
) -> None:
    # A review's 30 concurrent as_of requests from one read-only key starved the pool:
    # another tenant's GET /v1/runs went from 5 ms to 48 s.
    assert (await client.get("/v1/stats/judges?as_of=1")).status_code == 200
    services = client.app.state.services
    async with services.as_of_slot:  # an as_of answer in progress
        busy = await client.get("/v1/stats/failures?as_of=1")
        live = await client.get("/v1/stats/failures")
    assert busy.status_code == 503, busy.text
    assert busy.headers["retry-after"] == str(stats.AS_OF_RETRY_AFTER_S)
    assert "another as_of answer" in busy.json()["detail"]
    assert live.status_code == 200  # answers from the live tables are not held up


async def test_an_as_of_answer_that_takes_too_long_is_stopped(
    client: AsyncTestClient[Any], database: TestDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Held up mid-transaction (its temporary table copies judge_profile, which another
    # session has locked), the answer is stopped at its deadline: rolled back, its
    # connection back in the pool, the slot free.
    monkeypatch.setattr(stats, "AS_OF_TIMEOUT_S", 0.5)
    blocker = await asyncpg.connect(database.url)
    try:
        await blocker.execute("BEGIN; LOCK TABLE judge_profile IN ACCESS EXCLUSIVE MODE")
        slow = await client.get("/v1/stats/judges?as_of=1")
        await blocker.execute("ROLLBACK")
        assert slow.status_code == 503, slow.text
        assert "took over" in slow.json()["detail"]
        stuck = await blocker.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND state LIKE 'idle in transaction%' AND pid <> pg_backend_pid()"
        )
        assert stuck == 0
    finally:
        await blocker.close()
    assert (await client.get("/v1/stats/judges?as_of=1")).status_code == 200
