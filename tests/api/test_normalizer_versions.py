"""Normaliser versions end to end: a run recorded before versions existed keeps being
graded and replayed with version 1, a new run records and uses the current version, a
retry across the upgrade finds its run, and a run of a newer release is not graded here."""

from __future__ import annotations

import dataclasses
import json
import uuid
from typing import Any

import asyncpg
import httpx
import msgspec
from litestar.testing import AsyncTestClient

from service.app import create_app
from service.config import Config
from service.domain.events import (
    AnswerFinalized,
    Event,
    JudgeDecided,
    JudgeSpec,
    Message,
    PanelCallSucceeded,
    PanelMember,
    PanelRequest,
    PanelSelected,
    RunRequested,
    Verdict,
)
from service.domain.scoring import CURRENT_NORMALIZER, NORMALIZERS
from service.orchestration.judge import identity
from service.orchestration.plan import IDEMPOTENCY_NAMESPACE
from service.settings import Settings
from service.store import NO_STREAM, EventStore, NewEvent
from tests.api.conftest import MockProviders
from tests.conftest import TestDatabase

Client = AsyncTestClient[Any]
NEWER = max(NORMALIZERS) + 1  # a version only a later release knows
# ".5", "5", "0.5": version 1 reads two fives (".5" loses its point), versions 2 and 3 two
# halves.
HALVES = {"mock/a": "Answer: .5", "mock/b": "Answer: 5", "mock/c": "Answer: 0.5"}


async def _record_old_run(pool: asyncpg.Pool, normalizer: int = 1) -> str:
    """A vote run as the service wrote it before versions existed (version 1 throughout)."""
    run_id = str(uuid.uuid4())
    models = list(HALVES)
    members = [PanelMember(member_id=f"m{i}", model=m) for i, m in enumerate(models, 1)]
    events: list[Event] = [
        RunRequested(
            run_id=run_id,
            messages=[Message(role="user", content="Half of one?")],
            category="arithmetic",
            panel=[PanelRequest(model=m) for m in models],
            judge=JudgeSpec(kind="vote"),
            normalizer=normalizer,
        ),
        PanelSelected(members=members, method="fixed"),
        *(
            PanelCallSucceeded(
                member_id=s.member_id,
                model=s.model,
                provider="mock",
                text=HALVES[s.model],
                finish_reason="stop",
                input_tokens=10,
                output_tokens=5,
                cost_usd=0.0,
                latency_ms=1.0,
                attempts=[],
            )
            for s in members
        ),
        JudgeDecided(
            judge=identity(JudgeSpec(kind="vote")),
            final_answer="5",
            verdicts=[
                Verdict(member_id="m1", agrees=True),
                Verdict(member_id="m2", agrees=True),
                Verdict(member_id="m3", agrees=False),
            ],
            rationale="2 of 3 members answered '5'",
        ),
        AnswerFinalized(
            answer="5",
            answer_sha256="ef2d127de37b942baad06145e54b0c619a1f22327b2ebbcfbec78f5564afe39d",
            answer_normalized="5",
            decided_by="judge",
            latency_ms=3.0,
            cost_usd=0.0,
        ),
    ]
    meta = {"correlation_id": run_id, "tenant": "default", "actor": "test"}
    await EventStore(pool).append_to_stream(
        f"run-{run_id}", [NewEvent(e, meta) for e in events], NO_STREAM
    )
    return run_id


async def _data(pool: asyncpg.Pool, stream_id: str, event_type: str) -> dict[str, Any]:
    text = await pool.fetchval(
        "SELECT data::text FROM events WHERE stream_id = $1 AND event_type = $2",
        stream_id,
        event_type,
    )
    assert text is not None, (stream_id, event_type)
    data: dict[str, Any] = json.loads(text)
    return data


async def _fuse_halves(client: Client) -> str:
    """A vote fusion of HALVES' panel through ``client``; its run id."""
    fused = await client.post(
        "/v1/fusions",
        json={"prompt": "Half of one?", "panel": list(HALVES), "judge": {"kind": "vote"}},
    )
    assert fused.status_code == 200, fused.text
    run_id: str = fused.json()["run_id"]
    return run_id


def _correct(body: dict[str, Any]) -> list[bool | None]:
    return [m["correct"] for m in sorted(body["members"], key=lambda m: m["member_id"])]


async def test_an_old_run_keeps_grading_and_replaying_with_version_1(
    client: Client, pool: asyncpg.Pool
) -> None:
    run_id = await _record_old_run(pool)

    graded = await client.post(f"/v1/runs/{run_id}/outcomes", json={"expected": "5"})
    assert graded.status_code == 201, graded.text
    body = graded.json()
    # version 1's reading (".5" is 5), so the SQL comparing expected_normalized with
    # the stored answer_normalized "5" compares like with like
    assert (body["final_correct"], _correct(body)) == (True, [True, True, False])
    assert body["expected_normalized"] == "5"

    replayed = await client.post(f"/v1/runs/{run_id}/replays", json={"judge": {"kind": "vote"}})
    assert replayed.status_code == 201, replayed.text
    stream = f"replay-{replayed.json()['replay_id']}"
    original = await _data(pool, f"run-{run_id}", "judge.decided")
    assert await _data(pool, stream, "judge.decided") == original  # the very same vote
    finalized = await _data(pool, stream, "answer.finalized")
    assert (finalized["answer"], finalized["answer_normalized"]) == ("5", "5")


async def test_a_new_run_records_the_current_version_and_is_graded_with_it(
    client: Client, providers: MockProviders, pool: asyncpg.Pool
) -> None:
    providers.answers.update(HALVES)
    run_id = await _fuse_halves(client)
    assert (await _data(pool, f"run-{run_id}", "run.requested"))["normalizer"] == CURRENT_NORMALIZER
    finalized = await _data(pool, f"run-{run_id}", "answer.finalized")
    assert (finalized["answer"], finalized["answer_normalized"]) == (".5", "0.5")

    graded = await client.post(f"/v1/runs/{run_id}/outcomes", json={"expected": "5"})
    assert graded.status_code == 201, graded.text
    body = graded.json()
    assert (body["final_correct"], _correct(body)) == (False, [False, True, False])
    half = await client.post(f"/v1/runs/{run_id}/outcomes", json={"expected": "0.50"})
    assert (half.json()["final_correct"], _correct(half.json())) == (True, [True, False, True])
    assert half.json()["expected_normalized"] == "0.5"


async def test_a_retry_across_the_upgrade_finds_the_run_its_first_request_made(
    client: Client, pool: asyncpg.Pool
) -> None:
    body = {"prompt": "2+2?", "min_successes": 2}
    first = await client.post("/v1/fusions", json=body, headers={"Idempotency-Key": "probe"})
    assert first.status_code == 200, first.text
    # The same request under another key, recorded as a release before versions did.
    store = EventStore(pool)
    records = await store.read_stream(f"run-{first.json()['run_id']}")
    run_id = uuid.uuid5(IDEMPOTENCY_NAMESPACE, "default\norder-7")
    events = [r.decode() for r in records]
    requested = events[0]
    assert isinstance(requested, RunRequested) and requested.normalizer == CURRENT_NORMALIZER
    events[0] = msgspec.structs.replace(
        requested, run_id=str(run_id), idempotency_key="order-7", normalizer=1
    )
    meta = {"correlation_id": str(run_id), "tenant": "default", "actor": "anonymous"}
    await store.append_to_stream(f"run-{run_id}", [NewEvent(e, meta) for e in events], NO_STREAM)

    retry = await client.post("/v1/fusions", json=body, headers={"Idempotency-Key": "order-7"})
    assert retry.status_code == 200, retry.text
    assert retry.json()["run_id"] == str(run_id)
    requested_count = "SELECT count(*) FROM events WHERE event_type = 'run.requested'"
    assert await pool.fetchval(requested_count) == 2


async def test_a_run_of_a_newer_normaliser_is_not_graded_here(
    client: Client, pool: asyncpg.Pool
) -> None:
    run_id = await _record_old_run(pool, normalizer=NEWER)
    before = await pool.fetchval("SELECT count(*) FROM events")
    response = await client.post(f"/v1/runs/{run_id}/outcomes", json={"expected": "5"})
    assert response.status_code == 503, response.text
    assert f"version {NEWER}" in response.json()["detail"]
    assert await pool.fetchval("SELECT count(*) FROM events") == before


async def test_a_run_of_a_newer_normaliser_is_not_replayed_here(
    client: Client, pool: asyncpg.Pool
) -> None:
    run_id = await _record_old_run(pool, normalizer=NEWER)
    before = await pool.fetchval("SELECT count(*) FROM events")
    response = await client.post(f"/v1/runs/{run_id}/replays", json={"judge": {"kind": "vote"}})
    assert response.status_code == 503, response.text
    assert f"version {NEWER}" in response.json()["detail"]
    assert await pool.fetchval("SELECT count(*) FROM events") == before


async def test_new_runs_record_the_configured_normaliser_during_an_upgrade(
    database: TestDatabase, config: Config, providers: MockProviders, pool: asyncpg.Pool
) -> None:
    # FUSION_LEDGER_ANSWER_NORMALIZER=1 while replicas of a release without versions
    # still run: they grade every run by version 1, so new runs must mean that too.
    providers.answers.update(HALVES)
    settings = Settings.from_env(
        {"DATABASE_URL": database.url, "FUSION_LEDGER_ANSWER_NORMALIZER": "1"}
    )
    settings = dataclasses.replace(settings, auth_required=False, pool_min_size=1)
    app = create_app(
        settings,
        config,
        http_transport=httpx.MockTransport(providers.handle),
        sweeper=False,
        run_migrations=False,
    )
    async with AsyncTestClient(app=app) as upgrading:
        run_id = await _fuse_halves(upgrading)
    assert (await _data(pool, f"run-{run_id}", "run.requested"))["normalizer"] == 1
    finalized = await _data(pool, f"run-{run_id}", "answer.finalized")
    assert finalized["answer_normalized"] == "5"  # version 1: ".5" and "5" vote together
