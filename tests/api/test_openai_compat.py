"""The official openai package against /v1: normal and streamed completions."""

from __future__ import annotations

from typing import Any

import asyncpg
import openai
import pytest
from litestar.testing import AsyncTestClient

from service.config import parse_config
from tests.api.conftest import CONFIG_TOML

# A preset whose deadline cuts mock/slow off (it needs both members to answer).
HURRIED = parse_config(
    CONFIG_TOML
    + """
[presets.hurried]
panel = ["mock/a", "mock/slow"]
judge = { kind = "vote" }
min_successes = 2
timeout_s = 0.3
"""
)


def sdk(client: AsyncTestClient[Any]) -> openai.AsyncOpenAI:
    # AsyncTestClient is an httpx.AsyncClient that talks to the app in process.
    return openai.AsyncOpenAI(
        base_url=f"{client.base_url}/v1", api_key="unused", http_client=client, max_retries=0
    )


async def test_openai_client_gets_a_completion(
    client: AsyncTestClient[Any], pool: asyncpg.Pool
) -> None:
    raw = await sdk(client).chat.completions.with_raw_response.create(
        model="fusion", messages=[{"role": "user", "content": "What is 2+2?"}]
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "Answer: 4"
    assert completion.choices[0].finish_reason == "stop"
    run_id = raw.headers["x-fusion-run-id"]
    extra = completion.model_extra or {}
    assert extra["fusion"]["run_id"] == run_id
    assert [m["model"] for m in extra["fusion"]["panel"]] == ["mock/a", "mock/b", "mock/c"]
    assert extra["fusion"]["judge"]["model"] == "mock/judge"
    assert completion.usage is not None and completion.usage.total_tokens == 3 * 15 + 15
    assert (
        await pool.fetchval("SELECT count(*) FROM events WHERE stream_id = $1", f"run-{run_id}")
        == 7
    )


async def test_openai_client_streams(client: AsyncTestClient[Any]) -> None:
    stream = await sdk(client).chat.completions.create(
        model="fusion/cheap", messages=[{"role": "user", "content": "What is 2+2?"}], stream=True
    )
    parts: list[str] = []
    finish = None
    async for chunk in stream:
        if chunk.choices:
            parts.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
    assert "".join(parts) == "4"
    assert finish == "stop"


async def test_a_reused_key_with_another_request_is_refused(client: AsyncTestClient[Any]) -> None:
    headers = {"Idempotency-Key": "chat-7"}
    body = {"model": "fusion/cheap", "messages": [{"role": "user", "content": "2+2?"}]}
    first = await client.post("/v1/chat/completions", json=body, headers=headers)
    assert first.status_code == 200, first.text
    retry = await client.post("/v1/chat/completions", json=body, headers=headers)
    assert retry.status_code == 200, retry.text
    assert retry.headers["x-fusion-run-id"] == first.headers["x-fusion-run-id"]
    other = await client.post(
        "/v1/chat/completions", json={**body, "temperature": 0.5}, headers=headers
    )
    assert other.status_code == 422, other.text
    assert other.json()["title"] == "Idempotency-Key reused"


@pytest.mark.parametrize("config", [HURRIED])
async def test_a_run_out_of_time_is_a_504(client: AsyncTestClient[Any]) -> None:
    body = {"model": "fusion/hurried", "messages": [{"role": "user", "content": "2+2?"}]}
    response = await client.post("/v1/chat/completions", json=body)
    assert response.status_code == 504, response.text
    assert response.json()["error"]["code"] == "timeout"


@pytest.mark.parametrize("config", [HURRIED])
async def test_the_official_client_does_not_rerun_a_failed_run(
    client: AsyncTestClient[Any], pool: asyncpg.Pool
) -> None:
    # With its default retries the client made three paid runs of one failed request.
    retrying = openai.AsyncOpenAI(
        base_url=f"{client.base_url}/v1", api_key="unused", http_client=client, max_retries=2
    )
    with pytest.raises(openai.APIStatusError) as failed:
        await retrying.chat.completions.create(
            model="fusion/hurried", messages=[{"role": "user", "content": "2+2?"}]
        )
    assert failed.value.status_code == 504
    runs = await pool.fetchval("SELECT count(*) FROM events WHERE event_type = 'run.requested'")
    assert runs == 1


async def test_models_and_unknown_model(client: AsyncTestClient[Any]) -> None:
    models = await sdk(client).models.list()
    assert {m.id for m in models.data} == {"fusion", "fusion/default", "fusion/cheap"}
    # models.retrieve was a 404 for every listed model (no such route).
    for listed in models.data:
        assert (await sdk(client).models.retrieve(listed.id)).id == listed.id
    with pytest.raises(openai.NotFoundError):
        await sdk(client).models.retrieve("fusion/none-such")
    asked = {"model": "fusion", "n": None, "messages": [{"role": "user", "content": "hi"}]}
    assert (await client.post("/v1/chat/completions", json=asked)).status_code == 200
    with pytest.raises(openai.BadRequestError, match="one choice"):  # one came back before
        await sdk(client).chat.completions.create(
            model="fusion", n=2, messages=[{"role": "user", "content": "hi"}]
        )
    with pytest.raises(openai.NotFoundError):
        await sdk(client).chat.completions.create(
            model="gpt-unknown", messages=[{"role": "user", "content": "hi"}]
        )
    # a preset that does not exist is a model /v1/models does not list: the same 404
    with pytest.raises(openai.NotFoundError) as raised:
        await sdk(client).chat.completions.create(
            model="fusion/nope", messages=[{"role": "user", "content": "hi"}]
        )
    assert raised.value.code == "model_not_found"
    # The client shows the service's reason, as it does for OpenAI's own errors.
    assert "use 'fusion' or 'fusion/<preset>'" in raised.value.message
    assert raised.value.type == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as bad:
        await sdk(client).chat.completions.create(
            model="fusion", messages=[{"role": "user", "content": "hi"}], temperature=5
        )
    assert "temperature" in bad.value.message


async def test_health_and_schema(client: AsyncTestClient[Any], pool: asyncpg.Pool) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    # A schema behind the code (a migration undone, say) is not ready: it said "ready"
    # whatever version the database held.
    row = await pool.fetchrow("SELECT * FROM schema_migrations ORDER BY version DESC LIMIT 1")
    await pool.execute("DELETE FROM schema_migrations WHERE version = $1", row["version"])
    try:
        behind = await client.get("/readyz")
    finally:
        columns = ", ".join(row.keys())
        values = ", ".join(f"${i}" for i in range(1, len(row) + 1))
        await pool.execute(f"INSERT INTO schema_migrations ({columns}) VALUES ({values})", *row)
    assert behind.status_code == 503 and behind.json()["status"] == "not migrated"
    schema = (await client.get("/schema/openapi.json")).json()
    assert "/v1/fusions" in schema["paths"]


async def test_metrics_change_as_runs_happen(client: AsyncTestClient[Any]) -> None:
    def value(text: str, prefix: str) -> float:
        return sum(
            float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix)
        )

    before = (await client.get("/metrics")).text
    await client.post("/v1/fusions", json={"prompt": "2+2?"})
    after = (await client.get("/metrics")).text
    runs = 'fusion_runs_total{reason="",status="finalized"}'
    assert value(after, runs) == value(before, runs) + 1
    appended = "fusion_events_appended_total"
    assert value(after, appended) == value(before, appended) + 7
    assert value(after, "fusion_orchestration_overhead_seconds_count") == 1
    assert 'route="/v1/fusions"' in after
