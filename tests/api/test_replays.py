"""POST /v1/runs/{id}/replays against mocked providers: only the judge is called, the
source run stays byte-identical, and every bad request is refused without a write."""

from __future__ import annotations

import json
import uuid
from typing import Any

import asyncpg
import pytest
from litestar.testing import AsyncTestClient

from service.domain.events import JudgeDecided, PanelSelected, RunRequested
from service.domain.judging import parse_judge_task
from service.store import NO_STREAM, EventStore, NewEvent
from service.store.verify import verify_chains
from tests.api.conftest import MockProviders

Client = AsyncTestClient[Any]
SOURCE_ROWS_SQL = """
SELECT global_position, transaction_id::text, stream_version, event_id, event_type,
       schema_version, data::text, metadata::text, recorded_at, prev_hash, hash
FROM events WHERE stream_id = $1 ORDER BY stream_version
"""


async def fuse(client: Client, **body: Any) -> dict[str, Any]:
    response = await client.post("/v1/fusions", json={"prompt": "What is 2 + 2?", **body})
    assert response.status_code in (200, 502), response.text
    result: dict[str, Any] = response.json()
    return result


async def replay(client: Client, run_id: str, judge: dict[str, Any], **extra: Any) -> Any:
    return await client.post(f"/v1/runs/{run_id}/replays", json={"judge": judge, **extra})


async def source_rows(pool: asyncpg.Pool, run_id: str) -> list[tuple[Any, ...]]:
    rows = await pool.fetch(SOURCE_ROWS_SQL, f"run-{run_id}")
    return [tuple(r) for r in rows]


async def event_count(pool: asyncpg.Pool) -> int:
    count: int = await pool.fetchval("SELECT count(*) FROM events")
    return count


async def test_replay_calls_only_the_judge_and_leaves_the_run_untouched(
    client: Client, providers: MockProviders, pool: asyncpg.Pool
) -> None:
    run = await fuse(client)  # panel a, b, c judged by mock/judge
    before = await source_rows(pool, run["run_id"])
    providers.requests.clear()

    voted = await replay(client, run["run_id"], {"kind": "vote"})
    assert voted.status_code == 201, voted.text
    assert providers.requests == []  # the vote needs no model at all

    judged = await replay(client, run["run_id"], {"kind": "select", "model": "mock/judge"})
    assert judged.status_code == 201, judged.text
    assert [r["model"] for r in providers.requests] == ["mock/judge"]  # no panel model

    body = judged.json()
    assert body["source_run_id"] == run["run_id"]
    assert body["source_stream_version"] == len(before)
    assert body["status"] == "finalized"
    assert body["answer"].strip().endswith("4")
    assert body["agrees_with_original"] is True
    assert body["judge"] == {
        "kind": "select",
        "model": "mock/judge",
        "fallback": None,
        "decided_by": "judge",
        "error": None,
    }
    records = await EventStore(pool).read_stream(f"replay-{body['replay_id']}")
    assert [r.event_type for r in records] == [
        "replay.requested",
        "judge.decided",
        "answer.finalized",
    ]
    metas = [r.metadata_dict() for r in records]
    assert metas[1]["causation_id"] == str(records[0].event_id)
    assert metas[2]["causation_id"] == str(records[1].event_id)
    assert await source_rows(pool, run["run_id"]) == before  # byte for byte, hashes too
    async with pool.acquire() as conn:
        assert (await verify_chains(conn)).ok
    # The replay's own provenance, as a run's: its events in order with their hashes.
    shown = await client.get(f"/v1/runs/{body['replay_id']}")
    assert shown.status_code == 200, shown.text
    assert [e["event_type"] for e in shown.json()["events"]] == [r.event_type for r in records]
    assert [e["hash"] for e in shown.json()["events"]] == [r.hash.hex() for r in records]
    assert shown.json()["summary"]["answer"] == body["answer"]
    # Ground truth goes on the source run (it grades every replay); a replay's id said
    # "no run" though GET /v1/runs knows it.
    graded = await client.post(f"/v1/runs/{body['replay_id']}/outcomes", json={"expected": "4"})
    assert graded.status_code == 422 and run["run_id"] in graded.json()["detail"], graded.text


async def test_the_same_judge_twice_returns_the_first_replay_unless_forced(
    client: Client, providers: MockProviders, pool: asyncpg.Pool
) -> None:
    run = await fuse(client)
    judge = {"kind": "synthesize", "model": "mock/judge"}
    first = await replay(client, run["run_id"], judge)
    providers.requests.clear()
    again = await replay(client, run["run_id"], {**judge, "fallback": "vote"})  # the default
    assert again.status_code == 200
    assert again.json()["replay_id"] == first.json()["replay_id"]
    assert again.json()["existing"] is True
    assert providers.requests == []  # nothing was judged again

    forced = await replay(client, run["run_id"], judge, force=True)
    assert forced.status_code == 201
    assert forced.json()["replay_id"] != first.json()["replay_id"]
    assert len(providers.requests) == 1
    replays = await pool.fetchval(
        "SELECT count(*) FROM events WHERE event_type = 'replay.requested'"
    )
    assert replays == 2


async def test_a_vote_replays_bit_identically(client: Client, pool: asyncpg.Pool) -> None:
    run = await fuse(client, preset="cheap")  # panel a, b judged by vote
    response = await replay(client, run["run_id"], {"kind": "vote"})
    assert response.status_code == 201, response.text
    store = EventStore(pool)
    original = {r.event_type: r for r in await store.read_stream(f"run-{run['run_id']}")}
    replayed = {
        r.event_type: r for r in await store.read_stream(f"replay-{response.json()['replay_id']}")
    }
    assert replayed["judge.decided"].data == original["judge.decided"].data
    final, again = original["answer.finalized"].decode(), replayed["answer.finalized"].decode()
    assert (again.answer, again.answer_sha256) == (final.answer, final.answer_sha256)  # type: ignore[attr-defined]


async def test_failed_members_are_left_out(
    client: Client, providers: MockProviders, pool: asyncpg.Pool
) -> None:
    run = await fuse(client, panel=["mock/a", "mock/down", "mock/c"])
    assert [m["status"] for m in run["members"]] == ["succeeded", "failed", "succeeded"]
    providers.requests.clear()
    response = await replay(client, run["run_id"], {"kind": "synthesize", "model": "mock/judge"})
    assert response.status_code == 201, response.text
    [judge_request] = providers.requests
    task = parse_judge_task(judge_request["messages"][-1]["content"])
    assert task is not None
    assert sorted(c.answer for c in task.candidates) == ["Answer: 5", "Let me see.\nAnswer: 4"]
    records = await EventStore(pool).read_stream(f"replay-{response.json()['replay_id']}")
    decided = records[1].decode()
    assert isinstance(decided, JudgeDecided)
    assert sorted(v.member_id for v in decided.verdicts) == ["m1", "m3"]


async def test_unknown_runs_are_404(client: Client, pool: asyncpg.Pool) -> None:
    for run_id in (str(uuid.uuid4()), "not-a-run"):
        response = await replay(client, run_id, {"kind": "vote"})
        assert response.status_code == 404
        assert response.headers["content-type"].startswith("application/problem+json")
    assert await event_count(pool) == 0


async def test_runs_that_never_finalized_are_409(client: Client, pool: asyncpg.Pool) -> None:
    failed = await fuse(client, panel=["mock/down", "mock/down"])
    assert failed["status"] == "failed"
    open_run = uuid.uuid4()
    requested = RunRequested(
        run_id=str(open_run),
        messages=[],
        category="general",
        panel=[],
        judge={"kind": "vote"},  # type: ignore[arg-type]
    )
    meta = {"correlation_id": str(open_run), "tenant": "default", "actor": "test"}
    await EventStore(pool).append_to_stream(
        f"run-{open_run}",
        [NewEvent(requested, meta), NewEvent(PanelSelected(members=[], method="fixed"), meta)],
        NO_STREAM,
    )
    written = await event_count(pool)
    for run_id in (failed["run_id"], str(open_run)):
        response = await replay(client, run_id, {"kind": "vote"})
        assert response.status_code == 409, response.text
        assert "never reached answer.finalized" in response.json()["detail"]
    assert await event_count(pool) == written


@pytest.mark.parametrize(
    ("judge", "field"),
    [
        ({"kind": "oracle"}, "judge.kind"),
        ({"kind": "synthesize"}, "judge.model"),
        ({"kind": "select", "model": "mock/nope"}, "judge.model"),
        ({"kind": "synthesize", "model": "mock/judge", "fallback": "maybe"}, "judge.fallback"),
        ({"kind": "synthesize", "model": "mock/a"}, "judge.model"),  # sat on the panel
    ],
)
async def test_bad_judge_specs_are_422_and_write_nothing(
    client: Client, providers: MockProviders, pool: asyncpg.Pool, judge: dict[str, Any], field: str
) -> None:
    run = await fuse(client)
    written = await event_count(pool)
    providers.requests.clear()
    response = await replay(client, run["run_id"], judge)
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field
    assert await event_count(pool) == written
    assert providers.requests == []


async def test_a_panel_model_may_judge_when_asked_and_its_failure_falls_back(
    client: Client, providers: MockProviders, pool: asyncpg.Pool
) -> None:
    run = await fuse(client, preset="cheap")
    providers.requests.clear()
    judge: dict[str, Any] = {"kind": "synthesize", "model": "mock/a"}
    refused = await replay(client, run["run_id"], judge)
    assert refused.status_code == 422  # and it says how to allow it
    assert "judge.allow_panel_model: true" in refused.json()["detail"]
    judge["allow_panel_model"] = True
    response = await replay(client, run["run_id"], judge)
    assert response.status_code == 201, response.text
    body = response.json()
    assert [r["model"] for r in providers.requests] == ["mock/a"]  # as the judge only
    assert body["judge"]["decided_by"] == "fallback:vote"  # mock/a does not answer in JSON
    assert body["answer"] == run["answer"]
    records = await EventStore(pool).read_stream(f"replay-{body['replay_id']}")
    assert [r.event_type for r in records][1] == "judge.failed"
    assert json.loads(records[1].data)["error_kind"] == "malformed_output"
