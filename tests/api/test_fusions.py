"""POST /v1/fusions end to end on a real Postgres: events, failures, idempotency, 4xx."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import asyncpg
import httpx
import pytest
from litestar.testing import AsyncTestClient
from structlog.testing import capture_logs

from service.app import create_app
from service.config import Config
from service.domain.events import Message
from service.orchestration.fusion import FusionRunner
from service.orchestration.planning import FusionAsk, plan_fusion
from service.providers.registry import ProviderRegistry
from service.settings import Settings
from service.store import EventStore
from service.store.verify import verify_chains
from tests.api.conftest import MockProviders
from tests.conftest import TestDatabase


async def events_of(pool: asyncpg.Pool, run_id: str) -> list[str]:
    rows = await pool.fetch(
        "SELECT event_type FROM events WHERE stream_id = $1 ORDER BY stream_version",
        f"run-{run_id}",
    )
    return [r["event_type"] for r in rows]


async def count(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM events"))


async def test_fusion_records_the_catalog_in_order(
    client: AsyncTestClient[Any], pool: asyncpg.Pool, providers: MockProviders
) -> None:
    response = await client.post("/v1/fusions", json={"prompt": "What is 2+2?"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "finalized"
    assert body["answer"] == "Answer: 4"
    assert response.headers["x-fusion-run-id"] == body["run_id"]
    assert [m["status"] for m in body["members"]] == ["succeeded"] * 3
    assert body["judge"] == {
        "kind": "synthesize",
        "model": "mock/judge",
        "fallback": None,
        "decided_by": "judge",
        "error": None,
    }
    types = await events_of(pool, body["run_id"])
    assert types[:2] == ["run.requested", "panel.selected"]
    assert sorted(types[2:5]) == ["panel.call.succeeded"] * 3
    assert types[5:] == ["judge.decided", "answer.finalized"]
    # cost includes the judge: 3 members at (10*1 + 5*2)/1e6, judge at (10*3 + 5*6)/1e6
    assert body["cost_usd"] == pytest.approx(3 * 20e-6 + 60e-6)
    async with pool.acquire() as conn:
        report = await verify_chains(conn)
    assert report.ok and report.events == 7
    judge_calls = [r for r in providers.requests if r["model"] == "mock/judge"]
    assert len(judge_calls) == 1
    # candidates are anonymised: no model id reaches the judge
    assert "mock/" not in judge_calls[0]["messages"][-1]["content"]


async def test_metadata_links_events(client: AsyncTestClient[Any], pool: asyncpg.Pool) -> None:
    body = (await client.post("/v1/fusions", json={"prompt": "2+2?"})).json()
    store = EventStore(pool)
    records = await store.read_stream(f"run-{body['run_id']}")
    metas = [r.metadata_dict() for r in records]
    assert {m["correlation_id"] for m in metas} == {body["run_id"]}
    selected = str(records[1].event_id)
    assert all(m["causation_id"] == selected for m in metas[2:6])
    assert metas[6]["causation_id"] == str(records[5].event_id)


async def test_member_failures_are_attributed(
    client: AsyncTestClient[Any], pool: asyncpg.Pool
) -> None:
    response = await client.post(
        "/v1/fusions",
        json={
            "prompt": "2+2?",
            "panel": ["mock/slow", "mock/flaky", "mock/garbled", "mock/a"],
            "min_successes": 2,
        },
    )
    assert response.status_code == 200, response.text
    members = {m["model"]: m for m in response.json()["members"]}
    assert members["mock/slow"]["error_kind"] == "timeout"
    assert members["mock/flaky"]["status"] == "succeeded"
    assert members["mock/flaky"]["attempts"] == 2
    assert members["mock/garbled"]["error_kind"] == "malformed_response"
    assert members["mock/a"]["status"] == "succeeded"
    rows = await pool.fetch(
        "SELECT data FROM events WHERE event_type = 'panel.call.succeeded' "
        "AND data->>'model' = 'mock/flaky'"
    )
    import json

    attempts = json.loads(rows[0]["data"])["attempts"]
    assert [a["outcome"] for a in attempts] == ["rate_limited", "ok"]


async def test_quorum_not_met_fails_the_run(
    client: AsyncTestClient[Any], pool: asyncpg.Pool
) -> None:
    response = await client.post(
        "/v1/fusions",
        json={
            "prompt": "2+2?",
            "panel": ["mock/down", "mock/garbled", "mock/a"],
            "min_successes": 2,
        },
    )
    assert response.status_code == 502
    body = response.json()
    assert body["status"] == "failed" and body["failure_reason"] == "quorum_not_met"
    types = await events_of(pool, body["run_id"])
    assert types[-1] == "run.failed"
    assert "judge.decided" not in types


async def test_invalid_judge_output_takes_recorded_fallback(
    client: AsyncTestClient[Any], pool: asyncpg.Pool
) -> None:
    response = await client.post(
        "/v1/fusions",
        json={"prompt": "2+2?", "judge": {"kind": "synthesize", "model": "mock/badjudge"}},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["judge"]["fallback"] == "vote"
    assert body["judge"]["decided_by"] == "fallback:vote"
    assert body["answer"] == "4"
    types = await events_of(pool, body["run_id"])
    assert types[-2:] == ["judge.failed", "answer.finalized"]
    row = await pool.fetchrow(
        "SELECT data->>'error_kind' AS kind, data->>'raw_output' AS raw FROM events "
        "WHERE event_type = 'judge.failed'"
    )
    assert row["kind"] == "malformed_output" and "no JSON" in row["raw"]


async def test_same_idempotency_key_makes_one_run(
    client: AsyncTestClient[Any], pool: asyncpg.Pool
) -> None:
    headers = {"Idempotency-Key": "order-42"}
    first = await client.post("/v1/fusions", json={"prompt": "2+2?"}, headers=headers)
    second = await client.post("/v1/fusions", json={"prompt": "2+2?"}, headers=headers)
    assert first.status_code == second.status_code == 200
    assert first.json()["run_id"] == second.json()["run_id"]
    assert (
        await pool.fetchval("SELECT count(*) FROM events WHERE event_type = 'run.requested'") == 1
    )
    other = await client.post("/v1/fusions", json={"prompt": "3+3?"}, headers=headers)
    assert other.status_code == 422
    assert (
        await pool.fetchval("SELECT count(*) FROM events WHERE event_type = 'run.requested'") == 1
    )
    # An empty or overlong key is refused on every route that takes one, the
    # OpenAI-compatible one included, and writes nothing.
    chat = {"model": "fusion", "messages": [{"role": "user", "content": "2+2?"}]}
    for key in ("", "k" * 201):
        for path, body in (("/v1/fusions", {"prompt": "2+2?"}), ("/v1/chat/completions", chat)):
            refused = await client.post(path, json=body, headers={"Idempotency-Key": key})
            assert refused.status_code == 400, (path, key, refused.text)
            assert "idempotency" in refused.json()["detail"].lower()
    assert await pool.fetchval("SELECT count(*) FROM events") == 7


@pytest.mark.parametrize(
    "change",
    [
        {"min_successes": 3},
        {"params": {"temperature": 0.5}},
        {"timeout_s": 9},
        {"tags": ["vip"]},
        {"max_cost_usd": 1.0},
    ],
)
async def test_a_reused_key_with_other_settings_is_refused_after_its_run_closed(
    client: AsyncTestClient[Any], pool: asyncpg.Pool, change: dict[str, Any]
) -> None:
    headers = {"Idempotency-Key": "order-42"}
    body = {"prompt": "2+2?", "min_successes": 2}
    first = await client.post("/v1/fusions", json=body, headers=headers)
    assert first.status_code == 200, first.text
    # a retry may come from another client library: who asks is not the request
    again = {**headers, "User-Agent": "retrier/2"}
    retry = await client.post("/v1/fusions", json=body, headers=again)
    assert retry.status_code == 200, retry.text
    assert retry.json()["run_id"] == first.json()["run_id"]
    other = await client.post("/v1/fusions", json={**body, **change}, headers=headers)
    assert other.status_code == 422, other.text
    assert other.json()["title"] == "Idempotency-Key reused"
    requested = "SELECT count(*) FROM events WHERE event_type = 'run.requested'"
    assert await pool.fetchval(requested) == 1


async def test_a_retried_auto_panel_request_gets_its_run(
    client: AsyncTestClient[Any], pool: asyncpg.Pool
) -> None:
    # The router picks the panel when the run starts; the request says "auto" each time.
    headers = {"Idempotency-Key": "routed-1"}
    body = {"prompt": "2+2?", "panel": "auto", "min_successes": 1}
    first = await client.post("/v1/fusions", json=body, headers=headers)
    assert first.status_code in (200, 502), first.text
    retry = await client.post("/v1/fusions", json=body, headers=headers)
    assert retry.status_code == first.status_code, retry.text
    assert retry.json()["run_id"] == first.json()["run_id"]
    requested = "SELECT count(*) FROM events WHERE event_type = 'run.requested'"
    assert await pool.fetchval(requested) == 1


async def test_a_reused_key_is_checked_while_its_first_run_is_open(
    database: TestDatabase, config: Config, providers: MockProviders, pool: asyncpg.Pool
) -> None:
    # The app on this test's own loop (the test client runs one request at a time).
    http = httpx.MockTransport(providers.handle)
    settings = Settings(database_url=database.url, pool_min_size=1)
    app = create_app(settings, config, http_transport=http, sweeper=False, run_migrations=False)
    headers = {"Idempotency-Key": "order-42"}
    body = {"prompt": "3+4?", "panel": ["mock/slow", "mock/a", "mock/b"]}  # ~0.5 s
    asgi = httpx.ASGITransport(app=app)
    try:
        async with app.lifespan(), httpx.AsyncClient(transport=asgi, base_url="http://t") as c:
            first = asyncio.create_task(c.post("/v1/fusions", json=body, headers=headers))
            for _ in range(200):  # until the first run is open
                if await count(pool):
                    break
                await asyncio.sleep(0.01)
            other = {"prompt": "Transfer $500 to Bob?", "panel": ["mock/c"]}
            refused = await c.post("/v1/fusions", json=other, headers=headers)
            assert refused.status_code == 422, refused.text
            assert refused.json()["title"] == "Idempotency-Key reused"
            assert not first.done()
            retry = await c.post("/v1/fusions", json=body, headers=headers)  # joins the run
            done = await first
            assert done.status_code == retry.status_code == 200, retry.text
            assert retry.json()["run_id"] == done.json()["run_id"]
            assert retry.json()["answer"] == done.json()["answer"]
            requested = "SELECT count(*) FROM events WHERE event_type = 'run.requested'"
            assert await pool.fetchval(requested) == 1
    finally:
        await http.aclose()


async def failure_reason(pool: asyncpg.Pool, run_id: str) -> str | None:
    """The reason the run's run.failed records (None: the run did not fail)."""
    reason: str | None = await pool.fetchval(
        "SELECT data->>'reason' FROM events WHERE stream_id = $1 AND event_type = 'run.failed'",
        f"run-{run_id}",
    )
    return reason


@pytest.mark.parametrize(
    ("panel", "status", "reason"),
    [
        (["mock/a", "mock/slow"], 504, "timeout"),  # the deadline cut mock/slow off
        (["mock/a", "mock/down"], 502, "quorum_not_met"),  # mock/down failed on its own
        (["mock/down", "mock/slow"], 502, "quorum_not_met"),  # more time would not help
    ],
)
async def test_a_run_out_of_time_fails_as_timeout(
    client: AsyncTestClient[Any], pool: asyncpg.Pool, panel: list[str], status: int, reason: str
) -> None:
    body = {
        "prompt": "2+2?",
        "panel": panel,
        "min_successes": 2,
        "judge": {"kind": "vote"},
        "timeout_s": 0.3,
    }
    response = await client.post("/v1/fusions", json=body)
    assert response.status_code == status, response.text
    assert response.json()["failure_reason"] == reason
    assert await failure_reason(pool, response.json()["run_id"]) == reason


@pytest.mark.parametrize(
    ("judge", "timeout_s", "status", "reason"),
    [
        ("mock/slow", 0.3, 504, "timeout"),  # the deadline left the judge no more time
        # the judge failed on its own (with time to spare on a loaded machine: under
        # 0.3 s this case once ran out of time first)
        ("mock/badjudge", 10.0, 502, "judge_failed"),
    ],
)
async def test_a_judge_out_of_time_fails_the_run_as_timeout(
    client: AsyncTestClient[Any],
    pool: asyncpg.Pool,
    judge: str,
    timeout_s: float,
    status: int,
    reason: str,
) -> None:
    body = {
        "prompt": "2+2?",
        "panel": ["mock/a", "mock/b"],
        "judge": {"kind": "synthesize", "model": judge, "fallback": "fail"},
        "timeout_s": timeout_s,
    }
    response = await client.post("/v1/fusions", json=body)
    assert response.status_code == status, response.text
    assert response.json()["failure_reason"] == reason
    assert await failure_reason(pool, response.json()["run_id"]) == reason


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({}, 422, "prompt"),
        ({"prompt": ""}, 422, "empty"),
        ({"prompt": "x", "preset": "nope"}, 422, "unknown preset"),
        ({"prompt": "x", "panel": ["mock/a", "nope/model"]}, 422, "unknown model"),
        ({"prompt": "x", "panel": []}, 422, "empty"),
        ({"prompt": "x", "max_cost_usd": -1}, 400, "max_cost_usd"),
        ({"prompt": "x" * 300_000}, 413, "limit"),
        ({"prompt": 42}, 400, "prompt"),
        ({"prompt": "x", "panel": "everyone"}, 400, "panel"),
        ({"prompt": "x", "judge": {"kind": "oracle"}}, 400, "kind"),
        ({"prompt": "x", "judge": {"kind": "synthesize"}}, 422, "needs a model"),
        ({"prompt": "x", "judge": {"kind": "vote", "model": "mock/judge"}}, 422, "no model"),
        ({"prompt": "x", "judge": {"kind": "select", "model": "mock/a"}}, 422, "panel"),
        ({"prompt": "x", "timeout_s": 0}, 400, "timeout_s"),
        ({"prompt": "x", "surprise": True}, 400, "surprise"),
        ({"prompt": "x", "messages": [{"role": "user", "content": "y"}]}, 422, "not both"),
        ({"prompt": "x", "category": "a\u0000b"}, 422, "U+0000"),
        ({"prompt": "x", "tags": ["ok", "a\u0000"]}, 422, "U+0000"),
        # Labels reach terminals and spreadsheets: no escape sequences, no line breaks.
        ({"prompt": "x", "category": "\u001b[2Jred"}, 422, "U+001B"),
        ({"prompt": "x", "tags": ["a\nb"]}, 422, "U+000A"),
        ({"prompt": "x", "tags": ["t"] * 33}, 422, "the limit is 32"),
        ({"messages": [{"role": "user", "content": "y"}] * 1001}, 422, "the limit is 1000"),
        ({"prompt": "x", "params": {"temperature": -5}}, 400, "temperature"),
        # A budget the panel's input alone exceeds at list prices: refused, not run and
        # then overspent 3,750 times (the judge swapped for a vote without a word).
        ({"prompt": "x" * 4000, "max_cost_usd": 1e-7}, 422, "cannot pay for this panel"),
        ({"prompt": "x", "params": {"max_tokens": 0}}, 400, "max_tokens"),
        ({"prompt": "x", "params": {"temprature": 0.5}}, 400, "temprature"),
        ({"prompt": "x", "panel": [{"model": "mock/a", "params": {"top_p": 2}}]}, 400, "top_p"),
        # Beyond 64 bits an integer cannot be recorded: refused, not a 500.
        ({"prompt": "x", "params": {"seed": 10**23}}, 400, "seed"),
        (
            {"prompt": "x", "panel": [{"model": "mock/a", "params": {"max_tokens": 10**23}}]},
            400,
            "max_tokens",
        ),
    ],
)
async def test_bad_bodies_get_problem_details_and_write_nothing(
    client: AsyncTestClient[Any],
    pool: asyncpg.Pool,
    body: dict[str, Any],
    status: int,
    needle: str,
) -> None:
    response = await client.post("/v1/fusions", json=body)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert needle in response.json()["detail"]
    assert not response.json()["detail"].startswith("data:")  # the handler's name for it
    assert await count(pool) == 0


async def test_malformed_json_is_400(client: AsyncTestClient[Any], pool: asyncpg.Pool) -> None:
    response = await client.post(
        "/v1/fusions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert await count(pool) == 0


@pytest.mark.parametrize("path", ["/v1/fusions", "/v1/chat/completions"])
async def test_json_nested_too_deep_is_400(
    client: AsyncTestClient[Any], pool: asyncpg.Pool, path: str
) -> None:
    # It was a 500 (the decoder's RecursionError) with a traceback in the log.
    deep = b'{"prompt": "x", "extra": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    response = await client.post(path, content=deep, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert "nested too deeply" in response.json()["detail"]
    assert await count(pool) == 0


async def test_run_provenance_and_listing(client: AsyncTestClient[Any]) -> None:
    run_id = (await client.post("/v1/fusions", json={"prompt": "2+2?", "category": "math"})).json()[
        "run_id"
    ]
    detail = (await client.get(f"/v1/runs/{run_id}")).json()
    assert [e["stream_version"] for e in detail["events"]] == list(range(1, 8))
    assert detail["events"][1]["prev_hash"] == detail["events"][0]["hash"]
    assert detail["events"][0]["data"]["category"] == "math"
    listing = (await client.get("/v1/runs", params={"category": "math"})).json()
    assert [r["run_id"] for r in listing["runs"]] == [run_id]
    assert listing["runs"][0]["status"] == "finalized"
    assert (await client.get("/v1/runs/not-a-uuid")).status_code == 404
    missing = await client.get("/v1/runs/00000000-0000-0000-0000-000000000000")
    assert missing.status_code == 404
    assert (await client.get("/v1/runs", params={"limit": 0})).status_code == 400
    nul = await client.get("/v1/runs", params={"category": "a\x00b"})
    assert nul.status_code == 400 and "category: holds the NUL" in nul.json()["detail"]
    for params, needle in (
        ({"before": 10**20}, "before"),  # beyond any position
        ({"since": "0001-01-01T00:00:00+14:00"}, "out of range"),  # before year 1 in UTC
    ):
        refused = await client.get("/v1/runs", params=params)
        assert refused.status_code == 400, refused.text
        assert needle in refused.json()["detail"]


async def test_a_status_filter_fills_the_page_before_the_limit(
    client: AsyncTestClient[Any],
) -> None:
    failed = await client.post("/v1/fusions", json={"prompt": "2+2?", "panel": ["mock/down"]})
    assert failed.status_code == 502, failed.text
    finalized = [(await client.post("/v1/fusions", json={"prompt": "2+2?"})).json()["run_id"]]
    finalized += [(await client.post("/v1/fusions", json={"prompt": "3+3?"})).json()["run_id"]]
    finalized += [(await client.post("/v1/fusions", json={"prompt": "4+4?"})).json()["run_id"]]
    page = (await client.get("/v1/runs", params={"status": "failed", "limit": 2})).json()
    assert [r["run_id"] for r in page["runs"]] == [failed.json()["run_id"]]
    assert page["next_before"] is None
    page = (await client.get("/v1/runs", params={"status": "finalized", "limit": 2})).json()
    assert [r["run_id"] for r in page["runs"]] == finalized[:0:-1]  # newest first
    after = {"status": "finalized", "limit": 2, "before": page["next_before"]}
    rest = (await client.get("/v1/runs", params=after)).json()
    assert [r["run_id"] for r in rest["runs"]] == finalized[:1]
    running = (await client.get("/v1/runs", params={"status": "running"})).json()
    assert running["runs"] == []


async def test_past_the_open_runs_bound_a_fusion_gets_503_and_writes_nothing(
    database: TestDatabase, config: Config, providers: MockProviders, pool: asyncpg.Pool
) -> None:
    # The app on this test's own loop (the test client runs one request at a time).
    http = httpx.MockTransport(providers.handle)
    settings = Settings(database_url=database.url, pool_min_size=1, max_open_runs=1)
    app = create_app(settings, config, http_transport=http, sweeper=False, run_migrations=False)
    slow = {"prompt": "2+2?", "panel": ["mock/slow", "mock/a", "mock/b"]}  # ~0.5 s
    asgi = httpx.ASGITransport(app=app)
    try:
        async with app.lifespan(), httpx.AsyncClient(transport=asgi, base_url="http://t") as c:
            first = asyncio.create_task(c.post("/v1/fusions", json=slow))
            for _ in range(200):  # until the first run is open
                if await count(pool):
                    break
                await asyncio.sleep(0.01)
            refused = await c.post("/v1/fusions", json={"prompt": "3+3?"})
            assert not first.done()
            assert refused.status_code == 503, refused.text
            assert refused.headers["retry-after"] == "1"
            assert refused.json()["title"] == "Overloaded"
            question = "SELECT count(*) FROM events WHERE data->'messages'->0->>'content' = $1"
            assert await pool.fetchval(question, "3+3?") == 0
            assert (await first).status_code == 200  # the open run went on and finished
            again = await c.post("/v1/fusions", json={"prompt": "3+3?"})
            assert again.status_code == 200, again.text
            assert await pool.fetchval(question, "3+3?") == 1
            metrics = (await c.get("/metrics")).text
            assert "fusion_requests_shed_total 1.0" in metrics
    finally:
        await http.aclose()


async def test_the_server_app_freezes_what_it_built_at_startup(
    database: TestDatabase, config: Config, providers: MockProviders
) -> None:
    # serve() builds its app with freeze_heap: the full collections of a running
    # server then skip everything that lives as long as the process.
    http = httpx.MockTransport(providers.handle)
    settings = Settings(database_url=database.url, pool_min_size=1)
    plain = create_app(settings, config, http_transport=http, sweeper=False, run_migrations=False)
    frozen = create_app(
        settings, config, http_transport=http, sweeper=False, run_migrations=False, freeze_heap=True
    )
    try:
        gc.unfreeze()
        async with plain.lifespan():
            assert gc.get_freeze_count() == 0
        async with frozen.lifespan():
            assert gc.get_freeze_count() > 10_000  # modules, the app, its pools
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=frozen), base_url="http://t"
            ) as client:
                assert (await client.get("/healthz")).status_code == 200
    finally:
        gc.unfreeze()  # the rest of the test session collects as usual
        await http.aclose()


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in a /metrics text (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}} "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_judge_model_calls_count_in_the_provider_metrics(
    client: AsyncTestClient[Any],
) -> None:
    # A judge whose provider is down: the run falls back to the vote, and the judge's
    # failed call is a provider error of its model like a member's would be.
    down = {"kind": "synthesize", "model": "mock/down", "fallback": "vote"}
    response = await client.post(
        "/v1/fusions", json={"prompt": "2+2?", "panel": ["mock/a", "mock/b"], "judge": down}
    )
    assert response.status_code == 200, response.text
    assert response.json()["judge"]["decided_by"] == "fallback:vote"
    text = (await client.get("/metrics")).text
    errors = "fusion_provider_call_errors_total"
    assert sample(text, errors, model="mock/down", error_kind="server_error") == 1
    durations = "fusion_provider_call_duration_seconds_count"
    assert sample(text, durations, model="mock/down", outcome="server_error") == 1
    # A judge that answers shows in the call duration histogram.
    assert (await client.post("/v1/fusions", json={"prompt": "2+2?"})).status_code == 200
    text = (await client.get("/metrics")).text
    assert sample(text, durations, model="mock/judge", outcome="ok") == 1
    assert sample(text, durations, model="mock/a", outcome="ok") == 2  # members as before


async def test_a_run_cancelled_on_shutdown_is_counted_with_its_reason(
    store: EventStore, config: Config, providers: MockProviders
) -> None:
    async with httpx.MockTransport(providers.handle) as http:
        runner = FusionRunner(store, ProviderRegistry(config, http, lambda _: None))
        ask = FusionAsk(messages=[Message(role="user", content="2+2?")], panel=["mock/slow"])
        plan = plan_fusion(config, ask)
        with capture_logs() as logs:
            run = asyncio.create_task(runner.fuse(plan))
            for _ in range(200):  # until the slow member is being called
                if providers.requests:
                    break
                await asyncio.sleep(0.01)
            await runner.close()
            closed = await run  # the recorded end, for the request to answer with
    assert closed.failed is not None and closed.failed.reason == "shutdown"
    runs = runner.metrics.registry.get_sample_value
    assert runs("fusion_runs_total", {"status": "failed", "reason": "shutdown"}) == 1
    summaries = [(e["status"], e["reason"]) for e in logs if e["event"] == "run.summary"]
    assert summaries == [("failed", "shutdown")]


async def test_a_panel_that_reaches_the_budget_is_judged_by_a_free_vote(
    client: AsyncTestClient[Any],
) -> None:
    # Within the budget by list prices (the prompt's 4 tokens: 1.2e-05 USD for three
    # seats), but the three answers cost 6e-05: the preset's paid judge is not called.
    response = await client.post("/v1/fusions", json={"prompt": "2+2?", "max_cost_usd": 3e-5})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["judge"]["kind"] == "vote"  # said in the answer and in judge.decided
    assert body["cost_usd"] == pytest.approx(6e-5)


async def test_the_query_string_is_checked_against_what_the_route_takes(
    client: AsyncTestClient[Any], pool: asyncpg.Pool
) -> None:
    # The Idempotency-Key is a header: as a query parameter it was taken silently and
    # ignored (the check read it as one of the route's query parameters).
    response = await client.post("/v1/fusions?idempotency_key=k", json={"prompt": "2+2?"})
    assert response.status_code == 400 and "idempotency_key" in response.json()["detail"]
    assert await count(pool) == 0
    # Litestar's own OPTIONS answers are not the API's to check.
    assert (await client.options("/v1/runs?category=x")).status_code < 400
