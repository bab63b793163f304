"""POST /v1/runs/{run_id}/outcomes on a real Postgres: grading against the expected
answer, explicit labels, metadata, idempotent retries, and every refusal writing
nothing."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from litestar.testing import AsyncTestClient

from service.app import create_app
from service.auth import create_key
from service.config import Config
from service.domain.events import (
    AnswerFinalized,
    JudgeSpec,
    Message,
    PanelMember,
    PanelRequest,
    PanelSelected,
    RunRequested,
)
from service.settings import Settings
from service.store import EventStore, NewEvent
from tests.api.conftest import MockProviders
from tests.conftest import TestDatabase


async def fuse(client: AsyncTestClient[Any], **body: Any) -> dict[str, Any]:
    response = await client.post("/v1/fusions", json={"prompt": "What is it?", **body})
    assert response.status_code in (200, 502), response.text
    result: dict[str, Any] = response.json()
    return result


async def outcome_rows(pool: asyncpg.Pool, run_id: str) -> list[asyncpg.Record]:
    return list(
        await pool.fetch(
            "SELECT global_position, stream_version, event_id, data, metadata FROM events "
            "WHERE stream_id = $1 AND event_type = 'outcome.recorded' ORDER BY stream_version",
            f"run-{run_id}",
        )
    )


async def event_id_of(pool: asyncpg.Pool, run_id: str, event_type: str) -> str:
    value = await pool.fetchval(
        "SELECT event_id FROM events WHERE stream_id = $1 AND event_type = $2",
        f"run-{run_id}",
        event_type,
    )
    return str(value)


def correct_by_member(body: dict[str, Any]) -> dict[str, bool | None]:
    return {m["member_id"]: m["correct"] for m in body["members"]}


async def test_expected_answer_grades_the_final_answer_and_each_member(
    client: AsyncTestClient[Any], pool: asyncpg.Pool
) -> None:
    run = await fuse(client)  # a "Let me see.\nAnswer: 4", b "Answer: 4", c "Answer: 5"
    response = await client.post(f"/v1/runs/{run['run_id']}/outcomes", json={"expected": "4"})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["final_correct"] is True
    assert correct_by_member(body) == {"m1": True, "m2": True, "m3": False}
    assert {m["model"] for m in body["members"]} == {"mock/a", "mock/b", "mock/c"}
    assert (body["source"], body["recorded_by"], body["existing"]) == ("human", "anonymous", False)

    [row] = await outcome_rows(pool, run["run_id"])
    data, metadata = json.loads(row["data"]), json.loads(row["metadata"])
    assert data == {
        "source": "human",
        "recorded_by": "anonymous",
        "expected": "4",
        "expected_normalized": "4",
        "label": None,
        "final_correct": True,
        "members": [
            {"member_id": "m1", "correct": True},
            {"member_id": "m2", "correct": True},
            {"member_id": "m3", "correct": False},
        ],
    }
    assert metadata == {
        "correlation_id": run["run_id"],
        "causation_id": await event_id_of(pool, run["run_id"], "answer.finalized"),
        "tenant": "default",
        "actor": "anonymous",
    }
    assert (body["position"], body["version"]) == (row["global_position"], row["stream_version"])
    assert body["event_id"] == str(row["event_id"])
    # the run's provenance shows it, and the chain still verifies
    detail = (await client.get(f"/v1/runs/{run['run_id']}")).json()
    assert detail["events"][-1]["event_type"] == "outcome.recorded"


@pytest.mark.parametrize(
    ("answers", "expected", "judged"),
    [
        # a choice letter in a sentence, in brackets, lower case, against a bare letter
        ({"mock/a": "The answer is (b).", "mock/b": "B", "mock/c": "Answer: C"}, "B", "B"),
        # thousands separators and a float spelling of an integer
        ({"mock/a": "1,000", "mock/b": "Answer: 1000", "mock/c": "999"}, "1000.0", "1000"),
    ],
)
async def test_normalised_answers_count_as_right(
    client: AsyncTestClient[Any],
    providers: MockProviders,
    answers: dict[str, str],
    expected: str,
    judged: str,
) -> None:
    providers.answers = answers
    run = await fuse(client)
    assert run["answer"] == f"Answer: {judged}"
    response = await client.post(f"/v1/runs/{run['run_id']}/outcomes", json={"expected": expected})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["final_correct"] is True
    by_model = {m["model"]: m["correct"] for m in body["members"]}
    assert by_model == {"mock/a": True, "mock/b": True, "mock/c": False}


async def test_failed_members_and_failed_runs_are_unknown_not_wrong(
    client: AsyncTestClient[Any], pool: asyncpg.Pool
) -> None:
    partial = await fuse(client, panel=["mock/a", "mock/down", "mock/c"])
    assert partial["status"] == "finalized"
    body = (
        await client.post(f"/v1/runs/{partial['run_id']}/outcomes", json={"expected": "4"})
    ).json()
    by_model = {m["model"]: m["correct"] for m in body["members"]}
    assert by_model == {"mock/a": True, "mock/down": None, "mock/c": False}

    failed = await fuse(
        client, panel=["mock/down", "mock/a"], judge={"kind": "vote"}, min_successes=2
    )
    assert failed["status"] == "failed"
    response = await client.post(f"/v1/runs/{failed['run_id']}/outcomes", json={"expected": "4"})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["final_correct"] is None
    assert {m["model"]: m["correct"] for m in body["members"]} == {
        "mock/down": None,
        "mock/a": True,
    }
    [row] = await outcome_rows(pool, failed["run_id"])
    assert json.loads(row["metadata"])["causation_id"] == await event_id_of(
        pool, failed["run_id"], "run.failed"
    )


async def test_explicit_labels_leave_unlabelled_members_unknown(
    client: AsyncTestClient[Any], pool: asyncpg.Pool
) -> None:
    run = await fuse(client)
    body = {
        "final_correct": False,
        "members": {"m2": True},
        "source": "evaluator",
        "label": "spot check",
    }
    response = await client.post(f"/v1/runs/{run['run_id']}/outcomes", json=body)
    assert response.status_code == 201, response.text
    result = response.json()
    assert result["final_correct"] is False
    assert correct_by_member(result) == {"m1": None, "m2": True, "m3": None}
    [row] = await outcome_rows(pool, run["run_id"])
    data = json.loads(row["data"])
    assert (data["source"], data["label"], data["expected"]) == ("evaluator", "spot check", None)

    # a failed run has no final answer: its members can be labelled, with final null
    failed = await fuse(client, panel=["mock/down", "mock/a"], judge={"kind": "vote"})
    assert failed["status"] == "failed"
    labels = {"final_correct": None, "members": {"m2": False}}
    response = await client.post(f"/v1/runs/{failed['run_id']}/outcomes", json=labels)
    assert response.status_code == 201, response.text
    assert correct_by_member(response.json()) == {"m1": None, "m2": False}


async def _open_run(store: EventStore, tenant: str, *, closed: bool) -> str:
    run_id = str(uuid.uuid4())
    requested = RunRequested(
        run_id=run_id,
        messages=[Message(role="user", content="2+2?")],
        category="arithmetic",
        panel=[PanelRequest(model="mock/a")],
        judge=JudgeSpec(kind="vote"),
    )
    selected = PanelSelected(members=[PanelMember(member_id="m1", model="mock/a")], method="fixed")
    events = [requested, selected]
    if closed:
        events.append(
            AnswerFinalized(
                answer="4", answer_sha256="x", decided_by="vote", latency_ms=1.0, cost_usd=0.0
            )
        )
    meta = {"correlation_id": run_id, "tenant": tenant, "actor": "test"}
    await store.append_to_stream(f"run-{run_id}", [NewEvent(e, meta) for e in events])
    return run_id


async def test_refusals_are_problems_and_write_nothing(
    client: AsyncTestClient[Any], pool: asyncpg.Pool
) -> None:
    store = EventStore(pool)
    run = (await fuse(client))["run_id"]
    failed = (await fuse(client, panel=["mock/down", "mock/a"], judge={"kind": "vote"}))["run_id"]
    partial = (await fuse(client, panel=["mock/a", "mock/down"], judge={"kind": "vote"}))["run_id"]
    still_open = await _open_run(store, "default", closed=False)
    elsewhere = await _open_run(store, "tenant-b", closed=True)
    cases: list[tuple[str, Any, int, str]] = [
        (str(uuid.uuid4()), {"expected": "4"}, 404, "no run"),
        ("not-a-uuid", {"expected": "4"}, 404, "not a run id"),
        (elsewhere, {"expected": "4"}, 404, "no run"),  # another tenant's run
        (run, {"final_correct": True, "members": {"m9": True, "m1": False}}, 422, "m9"),
        (run, {}, 422, "either expected"),
        (run, {"source": "dataset"}, 422, "either expected"),
        (run, {"expected": "4", "final_correct": True}, 422, "either expected"),
        (run, {"expected": "4", "members": {"m1": True}}, 422, "members are graded"),
        (still_open, {"expected": "4"}, 409, "still open"),
        (still_open, {"final_correct": True}, 409, "still open"),
        (partial, {"final_correct": True, "members": {"m2": True}}, 422, "m2"),
        (failed, {"final_correct": True}, 422, "no final answer"),
        (run, {"expected": "4", "source": "oracle"}, 400, "source"),
        (run, {"expected": ""}, 400, "expected"),
        (run, {"expected": "4", "color": "red"}, 400, "color"),
        (run, {"expected": "4\u0000"}, 422, "NUL"),
        (run, {"expected": "   "}, 422, "blank"),  # would mark every answer wrong
        (run, {"expected": "."}, 422, "blank"),
    ]
    before = await pool.fetchval("SELECT count(*) FROM events")
    for run_id, body, status, says in cases:
        response = await client.post(f"/v1/runs/{run_id}/outcomes", json=body)
        assert response.status_code == status, (body, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
        assert says in response.json()["detail"], (body, response.json())
        assert await pool.fetchval("SELECT count(*) FROM events") == before, body


async def test_an_idempotency_key_records_once(
    client: AsyncTestClient[Any], pool: asyncpg.Pool
) -> None:
    run = (await fuse(client))["run_id"]
    headers = {"Idempotency-Key": "eval:gsm:line-7"}
    first = await client.post(f"/v1/runs/{run}/outcomes", json={"expected": "4"}, headers=headers)
    again = await client.post(f"/v1/runs/{run}/outcomes", json={"expected": "4"}, headers=headers)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json() == {**first.json(), "existing": True}
    changed = await client.post(f"/v1/runs/{run}/outcomes", json={"expected": "5"}, headers=headers)
    assert changed.status_code == 422
    assert len(await outcome_rows(pool, run)) == 1
    # without a key, each request is a new outcome (a second opinion, a correction)
    await client.post(f"/v1/runs/{run}/outcomes", json={"expected": "5"})
    assert len(await outcome_rows(pool, run)) == 2


@pytest.fixture
async def secured(
    database: TestDatabase, config: Config, providers: MockProviders
) -> AsyncIterator[AsyncTestClient[Any]]:
    http = httpx.MockTransport(providers.handle)
    settings = Settings(
        database_url=database.url, pool_min_size=1, pool_max_size=5, auth_required=True
    )
    app = create_app(settings, config, http_transport=http, sweeper=False, run_migrations=False)
    async with AsyncTestClient(app=app) as test_client:
        yield test_client
    await http.aclose()


async def test_the_key_names_who_recorded_and_bounds_the_tenant(
    secured: AsyncTestClient[Any], pool: asyncpg.Pool
) -> None:
    async with pool.acquire() as conn:
        _, fuser = await create_key(conn, "tenant-a", ["fuse"])
        labeller_id, labeller = await create_key(conn, "tenant-a", ["label"])
        _, stranger = await create_key(conn, "tenant-b", ["label"])
    fused = await secured.post(
        "/v1/fusions", json={"prompt": "2+2?"}, headers={"Authorization": f"Bearer {fuser}"}
    )
    run = fused.json()["run_id"]
    path, body = f"/v1/runs/{run}/outcomes", {"expected": "4"}
    refused = await secured.post(path, json=body, headers={"Authorization": f"Bearer {fuser}"})
    assert refused.status_code == 403
    hidden = await secured.post(path, json=body, headers={"Authorization": f"Bearer {stranger}"})
    assert hidden.status_code == 404
    assert await outcome_rows(pool, run) == []
    ok = await secured.post(path, json=body, headers={"Authorization": f"Bearer {labeller}"})
    assert ok.status_code == 201, ok.text
    assert ok.json()["recorded_by"] == f"key:{labeller_id}"
    [row] = await outcome_rows(pool, run)
    metadata = json.loads(row["metadata"])
    assert (metadata["tenant"], metadata["actor"]) == ("tenant-a", f"key:{labeller_id}")


async def test_the_endpoint_is_in_the_openapi_document(client: AsyncTestClient[Any]) -> None:
    schema = (await client.get("/schema/openapi.json")).json()
    operation = schema["paths"]["/v1/runs/{run_id}/outcomes"]["post"]
    assert "201" in operation["responses"]
    body = json.dumps(operation["requestBody"]) + json.dumps(schema["components"])
    assert "final_correct" in body and "expected" in body
