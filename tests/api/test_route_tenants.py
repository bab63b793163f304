"""Profiles are per tenant: one tenant's runs and outcomes neither show in another's
POST /v1/route answers nor move its routing or its weighted judge's member weights."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from litestar.testing import AsyncTestClient

from service.app import create_app
from service.auth import create_key
from service.config import Config
from service.orchestration.router import Router
from service.settings import Settings
from service.store import EventStore
from tests.conftest import RunningSimulator, TestDatabase
from tests.integration.router_world import SIM_POOL, caught_up, routed_config

Client = AsyncTestClient[Any]
CATEGORY = "multiple_choice"
FIXED = list(SIM_POOL[:3])  # model-a, model-b, model-c


@pytest.fixture
def config(simulator: RunningSimulator) -> Config:
    return routed_config(simulator)


@pytest.fixture
async def secured(database: TestDatabase, config: Config) -> AsyncIterator[Client]:
    settings = Settings(
        database_url=database.url, pool_min_size=1, pool_max_size=10, auth_required=True
    )
    app = create_app(settings, config, sweeper=False, run_migrations=False)
    async with AsyncTestClient(app=app) as client:
        yield client


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def fuse_and_grade(client: Client, key: str, body: dict[str, Any], expected: str) -> str:
    """A fusion of the key's tenant, then its ground truth; returns the run id."""
    done = await client.post("/v1/fusions", json=body, headers=bearer(key))
    assert done.status_code == 200, done.text
    run_id: str = done.json()["run_id"]
    graded = await client.post(
        f"/v1/runs/{run_id}/outcomes", json={"expected": expected}, headers=bearer(key)
    )
    assert graded.status_code == 201, graded.text
    return run_id


async def route(client: Client, key: str, prompt: str) -> dict[str, Any]:
    body = {"prompt": prompt, "preset": "auto", "category": CATEGORY, "seed": 7}
    response = await client.post("/v1/route", json=body, headers=bearer(key))
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def recorded_weights(client: Client, key: str, run_id: str) -> dict[str, float]:
    """The member weights a run's judge recorded, read back over the API."""
    run = await client.get(f"/v1/runs/{run_id}", headers=bearer(key))
    assert run.status_code == 200, run.text
    decided = next(e for e in run.json()["events"] if e["event_type"] == "judge.decided")
    weights: dict[str, float] = decided["data"]["member_weights"]
    return weights


async def test_one_tenants_outcomes_neither_show_in_nor_move_anothers_routing(
    secured: Client, pool: asyncpg.Pool, simulator: RunningSimulator
) -> None:
    async with pool.acquire() as conn:
        _, alice = await create_key(conn, "tenant-a", ["fuse", "read", "label"])
        _, bob = await create_key(conn, "tenant-b", ["fuse", "read", "label"])
        _, bob_reader = await create_key(conn, "tenant-b", ["read"])
        _, carol_reader = await create_key(conn, "tenant-c", ["read"])
    router: Router = secured.app.state.services.extras["router"]
    store = EventStore(pool)
    questions = simulator.world.bank.in_category(CATEGORY)
    prompt = questions[0].prompt
    no_history = await route(secured, bob_reader, prompt)

    for q in questions[1:5]:  # tenant b's own history, graded truthfully
        body = {"prompt": q.prompt, "panel": FIXED, "judge": {"kind": "vote"}}
        await fuse_and_grade(secured, bob, body, q.expected)
    await caught_up(store, router)
    before = await route(secured, bob_reader, prompt)
    assert before != no_history  # b's own outcomes move b's scores
    members = [(f"m{i + 1}", model) for i, model in enumerate(FIXED)]
    weights = router.member_weights(CATEGORY, members, tenant="tenant-b")

    for q in questions[5:17]:  # tenant a: every member graded wrong
        body = {"prompt": q.prompt, "panel": FIXED, "judge": {"kind": "vote"}}
        await fuse_and_grade(secured, alice, body, "-1")
    await caught_up(store, router)

    # b's answer is the one it had before a's runs existed: scores, expected costs,
    # the profile checkpoint (b's own), the breakers (shared; every call answered here)
    assert await route(secured, bob_reader, prompt) == before
    assert router.member_weights(CATEGORY, members, tenant="tenant-b") == weights
    theirs = await route(secured, alice, prompt)  # a's own outcomes do count for a
    scores = {c["model"]: c["score"] for c in theirs["router"]["candidates"]}
    ours = {c["model"]: c["score"] for c in before["router"]["candidates"]}
    assert all(scores[m] < ours[m] for m in FIXED)
    # a tenant with no history routes on the prior, as b did before its first run
    assert await route(secured, carol_reader, prompt) == no_history

    # b's weighted judge weighs b's members by b's track records only
    body = {
        "prompt": questions[17].prompt,
        "panel": FIXED,
        "judge": {"kind": "vote", "weighted": True},
    }
    done = await secured.post("/v1/fusions", json=body, headers=bearer(bob))
    assert done.status_code == 200, done.text
    run_id = done.json()["run_id"]
    answered = {m["member_id"] for m in done.json()["members"] if m["answer"] is not None}
    assert await recorded_weights(secured, bob, run_id) == {m: weights[m] for m in answered}
