"""POST /v1/route, fusions with panel "auto" over HTTP against the simulator, and
`fusion-ledger route explain` reproducing a recorded decision."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from click.testing import CliRunner
from litestar.testing import AsyncTestClient

from service.app import create_app
from service.cli import main
from service.config import Config
from service.domain.events import MemberOutcome, OutcomeRecorded
from service.domain.scoring import answers_match
from service.orchestration.router import Router
from service.settings import Settings
from service.store import EventStore, NewEvent
from tests.conftest import RunningSimulator, TestDatabase
from tests.integration.router_world import SIM_POOL, routed_config

Client = AsyncTestClient[Any]


@pytest.fixture
def config(simulator: RunningSimulator) -> Config:
    return routed_config(simulator)


@pytest.fixture
async def client(database: TestDatabase, config: Config) -> AsyncIterator[Client]:
    settings = Settings(database_url=database.url, pool_min_size=1, pool_max_size=10)
    app = create_app(settings, config, sweeper=False, run_migrations=False)
    async with AsyncTestClient(app=app) as test_client:
        yield test_client


async def event_count(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM events"))


async def test_route_shows_the_panel_and_why_without_running_it(
    client: Client, pool: asyncpg.Pool, simulator: RunningSimulator
) -> None:
    question = simulator.world.bank.in_category("multiple_choice")[0]
    body = {"prompt": question.prompt, "preset": "auto", "seed": 7}
    response = await client.post("/v1/route", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["category"] == "multiple_choice" and answer["category_source"] == "inferred"
    assert len(answer["panel"]) == 3 and set(answer["panel"]) <= set(SIM_POOL)
    router = answer["router"]
    assert router["seed"] == 7 and router["k"] == 3 and router["profile_checkpoint"]
    assert [c["model"] for c in router["candidates"]] == list(SIM_POOL)
    assert all(c["reason"] for c in router["candidates"])
    assert set(answer["breakers"]) == set(SIM_POOL)
    again = await client.post("/v1/route", json=body)
    assert again.json() == answer  # same snapshot, same seed: same decision
    assert await event_count(pool) == 0  # nothing run, nothing written
    schema = (await client.get("/schema/openapi.json")).json()
    assert "/v1/route" in schema["paths"]


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"k": 5}, "k", "pool of 4"),
        ({"pool": ["sim/model-a", "sim/nope"], "k": 1}, "pool[1]", "unknown model 'sim/nope'"),
        ({"max_cost_usd": 1e-9}, "max_cost_usd", "cheapest panel"),
        ({"preset": "nope"}, "preset", "unknown preset"),
        ({"prompt": "  "}, "prompt", "empty"),
    ],
)
async def test_bad_route_requests_get_a_clear_4xx(
    client: Client, pool: asyncpg.Pool, body: dict[str, Any], field: str, words: str
) -> None:
    base = {"prompt": "What is 2 + 2?", "preset": "auto"}
    response = await client.post("/v1/route", json={**base, **body})
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["field"] == field and words in problem["detail"]
    assert response.headers["content-type"].startswith("application/problem+json")
    assert await event_count(pool) == 0


async def test_an_auto_fusion_below_the_cheapest_panel_is_refused(
    client: Client, pool: asyncpg.Pool
) -> None:
    body = {"prompt": "What is 2 + 2?", "panel": "auto", "max_cost_usd": 1e-9}
    response = await client.post("/v1/fusions", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["field"] == "max_cost_usd"
    assert "cannot pay for 3 seats" in response.json()["detail"]
    assert await event_count(pool) == 0


async def record_truth(store: EventStore, fusion: dict[str, Any], expected: str) -> None:
    """Ground truth for a fusion answered over HTTP (as outcome.recorded)."""
    members = [
        MemberOutcome(member_id=m["member_id"], correct=answers_match(m["answer"] or "", expected))
        for m in fusion["members"]
    ]
    final = answers_match(fusion["answer"] or "", expected)
    outcome = OutcomeRecorded(source="dataset", final_correct=final, members=members)
    await store.append_to_stream(f"run-{fusion['run_id']}", [NewEvent(outcome)])


async def test_an_auto_fusion_is_routed_and_explained_by_the_cli(
    client: Client, database: TestDatabase, pool: asyncpg.Pool, simulator: RunningSimulator
) -> None:
    router: Router = client.app.state.services.extras["router"]
    for q in simulator.world.bank.in_category("two_choice")[:3]:
        done = await client.post("/v1/fusions", json={"prompt": q.prompt, "preset": "auto"})
        assert done.status_code == 200, done.text
        await record_truth(EventStore(pool), done.json(), q.expected)
    for _ in range(1200):  # the router follows the log (gap-safe: waits for old xacts)
        if router.profiles.checkpoint != "0:0":
            break
        await asyncio.sleep(0.05)
    question = simulator.world.bank.in_category("two_choice")[3]
    body = {"prompt": question.prompt, "preset": "auto", "panel": "auto"}
    response = await client.post("/v1/fusions", json=body)
    assert response.status_code == 200, response.text
    run_id = response.json()["run_id"]
    assert len(response.json()["members"]) == 3
    run = (await client.get(f"/v1/runs/{run_id}")).json()
    assert "panel.selected" in json.dumps(run)

    cli = CliRunner()
    args = ["--database-url", database.url, "route", "explain", run_id]
    shown = await asyncio.to_thread(cli.invoke, main, args)
    assert shown.exit_code == 0, shown.output
    assert "reproduced: the same decision from the log" in shown.output
    assert "two_choice" in shown.output and "router-v1" in shown.output
    as_json = await asyncio.to_thread(cli.invoke, main, [*args, "--json"])
    explained = json.loads(as_json.output)
    assert explained["identical"] is True
    assert explained["seats"] == [m["model"] for m in response.json()["members"]]
    assert explained["recorded"] == explained["reproduced"]
