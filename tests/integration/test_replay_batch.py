"""Batch replays through the HTTP API, on runs made against the built-in simulator (a
test double of remote providers): a stronger judge shows up as higher accuracy, the
report equals an independent computation, and a batch stopped midway completes after
a restart with every run replayed exactly once."""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest
from litestar.testing import AsyncTestClient

from service.app import create_app
from service.domain.events import OutcomeRecorded
from service.domain.scoring import answers_match
from service.settings import Settings
from service.store import ANY, EventStore, NewEvent
from tests.conftest import RunningSimulator, TestDatabase
from tests.integration.replay_fixtures import ScriptedJudge

Client = AsyncTestClient[Any]
REPLAYS_OF_BATCH_SQL = """
SELECT e.stream_id, e.data->>'source_run_id' AS source_run_id
FROM events e
WHERE e.event_type = 'replay.requested' AND e.data->>'batch_id' = $1
"""


@asynccontextmanager
async def app_client(
    database: TestDatabase, config: Any, caller: Any = None
) -> AsyncIterator[Client]:
    settings = Settings(database_url=database.url, pool_min_size=1, pool_max_size=10)
    app = create_app(settings, config, caller=caller, sweeper=False, run_migrations=False)
    async with AsyncTestClient(app=app) as client:
        yield client


async def fuse(
    client: Client, prompt: str, judge: dict[str, Any] | None = None, panel: Any = None
) -> Any:
    body: dict[str, Any] = {"prompt": prompt}
    if judge is not None:
        body["judge"] = judge
    if panel is not None:
        body["panel"] = panel
    # An Idempotency-Key from the prompt: fixed run ids, so the simulator's draws (seeded
    # by the request) are the same on every run of a test, and so are its numbers.
    key = hashlib.sha256(prompt.encode()).hexdigest()
    response = await client.post("/v1/fusions", json=body, headers={"Idempotency-Key": key})
    assert response.status_code == 200, response.text
    return response.json()


async def record_truth(store: EventStore, run_id: str, answer: str, expected: str) -> None:
    """Ground truth, as the outcomes endpoint will record it."""
    outcome = OutcomeRecorded(
        source="dataset",
        recorded_by="test",
        expected=expected,
        final_correct=answers_match(answer, expected),
    )
    meta = {"correlation_id": run_id, "causation_id": None, "tenant": "default", "actor": "test"}
    await store.append_to_stream(f"run-{run_id}", [NewEvent(outcome, meta)], ANY)


async def wait_for(client: Client, batch_id: str, done: int | None = None) -> Any:
    """Poll the batch until it completed (or reached ``done`` replays)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        response = await client.get(f"/v1/replays/{batch_id}")
        assert response.status_code == 200, response.text
        body = response.json()
        if body["status"] == "completed" or (done is not None and body["done"] >= done):
            return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"batch {batch_id} did not finish: {body}")


def wilson(successes: int, n: int) -> tuple[float, float]:
    z = 1.959963984540054
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


async def test_a_stronger_judge_scores_higher_on_the_same_runs(
    database: TestDatabase, simulator: RunningSimulator, pool: asyncpg.Pool
) -> None:
    store = EventStore(pool)
    world = simulator.world
    questions = world.bank.in_category("multiple_choice")[:60]
    weak = {"kind": "synthesize", "model": "sim/judge-weak"}
    # A panel that often disagrees (accuracy 0.58-0.66 here), so the judge matters.
    panel = ["sim/model-g", "sim/model-h", "sim/model-j"]
    async with app_client(database, simulator.config()) as client:
        runs: dict[str, Any] = {}
        for q in questions:
            body = await fuse(client, q.prompt, weak, panel)
            runs[body["run_id"]] = q
            await record_truth(store, body["run_id"], body["answer"], q.expected)
        for q in world.bank.in_category("arithmetic")[:3]:  # other category: left out
            body = await fuse(client, q.prompt, weak, panel)
            await record_truth(store, body["run_id"], body["answer"], q.expected)
        for q in world.bank.in_category("multiple_choice")[60:63]:  # no truth: left out
            await fuse(client, q.prompt, weak, panel)
        for q in world.bank.in_category("multiple_choice")[63:66]:  # other panel: left out
            body = await fuse(client, q.prompt, weak)
            await record_truth(store, body["run_id"], body["answer"], q.expected)

        accepted = await client.post(
            "/v1/replays",
            json={
                "filter": {
                    "category": "multiple_choice",
                    "has_ground_truth": True,
                    "model": "sim/model-h",
                },
                "judge": {"kind": "synthesize", "model": "sim/judge-strong"},
                "concurrency": 4,
            },
        )
        assert accepted.status_code == 202, accepted.text
        batch_id = accepted.json()["batch_id"]
        assert accepted.json()["runs"] == len(questions)
        report_body = await wait_for(client, batch_id)

    # Independently: every replay of the batch, scored against the question bank.
    replays = await pool.fetch(REPLAYS_OF_BATCH_SQL, batch_id)
    assert sorted(r["source_run_id"] for r in replays) == sorted(runs)  # each exactly once
    original_right = replay_right = agreed = 0
    judge_cost = 0.0
    for row in replays:
        q = runs[row["source_run_id"]]
        source = {
            r.event_type: r.decode() for r in await store.read_stream(f"run-{row['source_run_id']}")
        }
        replayed = {r.event_type: r.decode() for r in await store.read_stream(row["stream_id"])}
        original, new = source["answer.finalized"].answer, replayed["answer.finalized"].answer  # type: ignore[attr-defined]
        original_right += answers_match(original, q.expected)
        replay_right += answers_match(new, q.expected)
        agreed += answers_match(new, original)
        judge = replayed.get("judge.decided") or replayed["judge.failed"]
        judge_cost += judge.cost_usd  # type: ignore[attr-defined]
    n = len(questions)
    assert replay_right > original_right  # judge skill 0.9 against 0.55

    report = report_body["report"]
    assert report_body["done"] == report_body["replayed"] == report["replayed"] == n
    truth = report["ground_truth"]
    assert (truth["n"], truth["original"]["successes"], truth["replay"]["successes"]) == (
        n,
        original_right,
        replay_right,
    )
    assert truth["replay"]["rate"] == pytest.approx(replay_right / n)
    assert truth["difference"] == pytest.approx((replay_right - original_right) / n)
    for side, right in (("original", original_right), ("replay", replay_right)):
        low, high = wilson(right, n)
        assert truth[side]["ci_low"] == pytest.approx(low)
        assert truth[side]["ci_high"] == pytest.approx(high)
    assert [row["category"] for row in report["by_category"]] == ["multiple_choice"]
    assert report["by_category"][0]["replay"] == truth["replay"]
    assert report["agreement"]["successes"] == agreed
    assert report["replay_judge"]["cost"]["total_usd"] == pytest.approx(judge_cost)
    assert report["replay_judge"]["cost"]["total_usd"] > 0  # an LLM judge is paid for


async def test_a_batch_stopped_midway_completes_after_a_restart_exactly_once(
    database: TestDatabase, simulator: RunningSimulator, pool: asyncpg.Pool
) -> None:
    config = simulator.config()
    async with app_client(database, config) as client:
        for q in simulator.world.bank.in_category("arithmetic")[:30]:
            await fuse(client, q.prompt, {"kind": "vote"})

    judge = {"kind": "select", "model": "sim/judge-strong"}
    hanging = ScriptedJudge(allow=10)
    async with app_client(database, config, hanging) as client:
        accepted = await client.post(
            "/v1/replays", json={"filter": {}, "judge": judge, "concurrency": 2}
        )
        assert accepted.status_code == 202, accepted.text
        batch_id = accepted.json()["batch_id"]
        midway = await wait_for(client, batch_id, done=10)
        await asyncio.sleep(0.2)  # the two workers are stuck inside the judge
        assert (await client.get(f"/v1/replays/{batch_id}")).json()["done"] == 10
    # the app is gone mid-batch: its workers were cancelled inside the judge call
    assert midway["status"] == "running"
    assert (
        await pool.fetchval("SELECT version FROM streams WHERE stream_id = $1", f"batch-{batch_id}")
        == 1
    )
    assert len(await pool.fetch(REPLAYS_OF_BATCH_SQL, batch_id)) == 10

    resumed = ScriptedJudge()
    async with app_client(database, config, resumed) as client:  # resumes on start
        report = await wait_for(client, batch_id)
    assert report["done"] == report["replayed"] == report["finalized"] == 30
    assert resumed.calls == 20  # only the runs without a replay were judged
    assert set(hanging.models) | set(resumed.models) == {"sim/judge-strong"}

    replays = await pool.fetch(REPLAYS_OF_BATCH_SQL, batch_id)
    sources = [r["source_run_id"] for r in replays]
    assert len(sources) == len(set(sources)) == 30
    terminals = await pool.fetchval(
        """SELECT count(*) FROM events WHERE event_type = 'answer.finalized'
           AND stream_id = ANY($1::text[])""",
        [r["stream_id"] for r in replays],
    )
    assert terminals == 30
    assert (
        await pool.fetchval("SELECT version FROM streams WHERE stream_id = $1", f"batch-{batch_id}")
        == 2
    )


async def test_batch_requests_that_cannot_run_are_refused(
    database: TestDatabase, simulator: RunningSimulator, pool: asyncpg.Pool
) -> None:
    async with app_client(database, simulator.config()) as client:
        q = simulator.world.bank.in_category("arithmetic")[0]
        await fuse(client, q.prompt, {"kind": "vote"})
        written = await pool.fetchval("SELECT count(*) FROM events")
        cases = [
            ({"filter": {"category": "poetry"}, "judge": {"kind": "vote"}}, "filter"),
            ({"judge": {"kind": "select"}}, "judge.model"),
            ({"judge": {"kind": "vote"}, "concurrency": 0}, "concurrency"),
            # beyond what UTC holds: no query could use them
            (
                {"filter": {"since": "0001-01-01T00:00:00+14:00"}, "judge": {"kind": "vote"}},
                "filter.since",
            ),
            (
                {"filter": {"until": "9999-12-31T23:59:59-12:00"}, "judge": {"kind": "vote"}},
                "filter.until",
            ),
            (
                {"judge": {"kind": "synthesize", "model": "sim/model-b"}},  # on the panel
                "judge.model",
            ),
        ]
        for body, field in cases:
            response = await client.post("/v1/replays", json=body)
            assert response.status_code == 422, response.text
            assert response.json()["field"] == field
        assert await pool.fetchval("SELECT count(*) FROM events") == written
        assert (await client.get(f"/v1/replays/{uuid.uuid4()}")).status_code == 404
        assert (await client.get("/v1/replays/nope")).status_code == 404

        headers = {"Idempotency-Key": "nightly-1"}
        body = {"judge": {"kind": "vote"}}
        first = await client.post("/v1/replays", json=body, headers=headers)
        again = await client.post("/v1/replays", json=body, headers=headers)
        assert first.status_code == again.status_code == 202
        assert first.json()["batch_id"] == again.json()["batch_id"]
        assert again.json()["existing"] is True
        other = await client.post(
            "/v1/replays", json={"judge": {"kind": "vote", "weighted": True}}, headers=headers
        )
        assert other.status_code == 422
        report = await wait_for(client, first.json()["batch_id"])
    assert report["report"]["agreement"]["rate"] == 1.0  # a vote replaying a vote
