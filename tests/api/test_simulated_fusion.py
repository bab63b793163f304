"""A fusion through the HTTP API against the built-in simulator (a test double of
remote providers, served over real HTTP): the log holds exactly the catalog's events."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from litestar.testing import AsyncTestClient

from service.app import create_app
from service.domain.scoring import answers_match
from service.settings import Settings
from service.store import EventStore
from service.store.verify import verify_chains
from tests.conftest import RunningSimulator, TestDatabase


@pytest.fixture
async def simulated(
    database: TestDatabase, simulator: RunningSimulator
) -> AsyncIterator[tuple[AsyncTestClient[Any], Any]]:
    settings = Settings(database_url=database.url, pool_min_size=1, pool_max_size=10)
    app = create_app(settings, simulator.config(), sweeper=False, run_migrations=False)
    async with AsyncTestClient(app=app) as client:
        yield client, simulator.world


async def test_fusion_against_the_simulator(
    simulated: tuple[AsyncTestClient[Any], Any], pool: asyncpg.Pool
) -> None:
    client, world = simulated
    question = world.bank.in_category("arithmetic")[0]
    response = await client.post("/v1/fusions", json={"prompt": question.prompt})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["category"] == "arithmetic"  # inferred by the simulator config's rules
    assert [m["model"] for m in body["members"]] == ["sim/model-b", "sim/model-c", "sim/model-e"]
    assert body["judge"]["model"] == "sim/judge-strong"
    records = await EventStore(pool).read_stream(f"run-{body['run_id']}")
    types = [r.event_type for r in records]
    assert types == [
        "run.requested",
        "panel.selected",
        *["panel.call.succeeded"] * 3,
        "judge.decided",
        "answer.finalized",
    ]
    assert [r.stream_version for r in records] == list(range(1, 8))
    async with pool.acquire() as conn:
        assert (await verify_chains(conn)).ok
    final = records[-1].decode()
    assert final.answer == body["answer"]  # type: ignore[attr-defined]
    assert final.cost_usd == pytest.approx(body["cost_usd"])  # type: ignore[attr-defined]


async def test_simulated_fusion_beats_chance(simulated: tuple[AsyncTestClient[Any], Any]) -> None:
    client, world = simulated
    questions = world.bank.in_category("multiple_choice")[:12]
    right = 0
    for q in questions:
        body = (await client.post("/v1/fusions", json={"prompt": q.prompt})).json()
        right += answers_match(body["answer"], q.expected)
    assert right >= 6  # four options: chance is 3 of 12; the panel is ~85% accurate


async def test_broken_judge_falls_back(simulated: tuple[AsyncTestClient[Any], Any]) -> None:
    client, world = simulated
    q = world.bank.in_category("arithmetic")[1]
    body = (
        await client.post(
            "/v1/fusions",
            json={"prompt": q.prompt, "judge": {"kind": "synthesize", "model": "sim/judge-broken"}},
        )
    ).json()
    assert body["status"] == "finalized"
    assert body["judge"]["decided_by"] == "fallback:vote"
