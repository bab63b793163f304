"""The provider test double over real HTTP: a started server on an ephemeral port."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import httpx
import openai
import pytest

from service.domain.scoring import answers_match
from service.providers.simulator import SimulatorHandle, World, default_world, serve_simulator


@pytest.fixture
async def simulator() -> AsyncIterator[SimulatorHandle]:
    handle = await serve_simulator(default_world(fixed_latency_ms=5), "127.0.0.1", 0)
    try:
        yield handle
    finally:
        await handle.close()


@pytest.fixture
async def client(simulator: SimulatorHandle) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=simulator.root_url, timeout=5) as client:
        yield client


def _chat(model: str, prompt: str, **extra: object) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": prompt}], **extra}


async def test_a_chat_completion_answers_a_bank_question(
    simulator: SimulatorHandle, client: httpx.AsyncClient
) -> None:
    question = simulator.world.bank.in_category("arithmetic")[3]
    response = await client.post("/v1/chat/completions", json=_chat("model-a", question.prompt))
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "chat.completion" and body["model"] == "model-a"
    choice = body["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["content"].splitlines()[-1].startswith("Answer: ")
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0


async def test_the_same_seed_gives_the_same_answer(
    simulator: SimulatorHandle, client: httpx.AsyncClient
) -> None:
    questions = simulator.world.bank.in_category("two_choice")[:30]
    contents = []
    for _ in range(2):
        batch = []
        for q in questions:
            r = await client.post("/v1/chat/completions", json=_chat("model-i", q.prompt, seed=4))
            batch.append(r.json()["choices"][0]["message"]["content"])
        contents.append(batch)
    assert contents[0] == contents[1]
    right = sum(answers_match(c, q.expected) for c, q in zip(contents[0], questions, strict=True))
    assert 0 < right < len(questions)  # model-i is right about half the time here


async def test_fixed_latency_is_honoured(client: httpx.AsyncClient) -> None:
    await client.post("/_sim/world", json={"fixed_latency_ms": 150})
    began = time.perf_counter()
    response = await client.post("/v1/chat/completions", json=_chat("model-b", "Hello?"))
    assert response.status_code == 200
    assert time.perf_counter() - began >= 0.14


@pytest.mark.parametrize(
    ("model", "status"),
    [("fault-rate-limited", 429), ("fault-server-error", 500), ("no-such-model", 404)],
)
async def test_failing_models_answer_with_openai_style_errors(
    client: httpx.AsyncClient, model: str, status: int
) -> None:
    response = await client.post("/v1/chat/completions", json=_chat(model, "Hi"))
    assert response.status_code == status
    assert response.json()["error"]["message"]
    if status == 429:
        assert float(response.headers["Retry-After"]) > 0


async def test_a_malformed_body_is_not_a_chat_completion(client: httpx.AsyncClient) -> None:
    for _ in range(6):  # both kinds of malformed body
        response = await client.post("/v1/chat/completions", json=_chat("fault-malformed", "Hi"))
        assert response.status_code == 200
        try:
            body = response.json()
        except ValueError:
            continue
        assert "choices" not in body


async def test_rate_limited_once_then_answers(client: httpx.AsyncClient) -> None:
    statuses = [
        (
            await client.post("/v1/chat/completions", json=_chat("fault-rate-limited-once", "Hi"))
        ).status_code
        for _ in range(4)
    ]
    assert statuses == [429, 200, 429, 200]


async def test_a_timeout_hangs_until_the_client_gives_up(client: httpx.AsyncClient) -> None:
    with pytest.raises(httpx.ReadTimeout):
        await client.post("/v1/chat/completions", json=_chat("fault-timeout", "Hi"), timeout=0.3)


async def test_the_admin_endpoint_switches_a_model_to_errors_and_back(
    client: httpx.AsyncClient,
) -> None:
    ok = await client.post("/v1/chat/completions", json=_chat("model-c", "Hi"))
    assert ok.status_code == 200
    changed = await client.post("/_sim/models/model-c", json={"server_error_rate": 1.0})
    assert changed.json()["server_error_rate"] == 1.0
    for _ in range(5):
        failed = await client.post("/v1/chat/completions", json=_chat("model-c", "Hi"))
        assert failed.status_code == 500
    await client.post("/_sim/models/model-c", json={"server_error_rate": 0.0})
    assert (
        await client.post("/v1/chat/completions", json=_chat("model-c", "Hi"))
    ).status_code == 200
    refused = await client.post("/_sim/models/model-c", json={"timeout_rate": 3})
    assert refused.status_code == 400
    assert (await client.post("/_sim/models/nobody", json={})).status_code == 404


async def test_the_world_endpoint_lists_prices_and_accuracies(client: httpx.AsyncClient) -> None:
    world = (await client.get("/_sim/world")).json()
    assert "test double" in world["label"]
    model_a = next(m for m in world["models"] if m["name"] == "model-a")
    assert model_a["accuracy"]["multiple_choice"] == 0.945
    assert model_a["input_price_per_m"] > 0
    listed = (await client.get("/v1/models")).json()
    assert {"model-a", "judge-strong", "judge-broken"} <= {m["id"] for m in listed["data"]}


async def test_errors_echo_the_key_only_when_the_world_says_so() -> None:
    world: World = default_world(fixed_latency_ms=0)
    world.echo_key_in_errors = True
    handle = await serve_simulator(world, "127.0.0.1", 0)
    try:
        async with httpx.AsyncClient(base_url=handle.base_url) as client:
            headers = {"Authorization": "Bearer sk-secret-123"}
            body = _chat("fault-server-error", "Hi")
            response = await client.post("/chat/completions", json=body, headers=headers)
            assert "sk-secret-123" in response.text
            world.echo_key_in_errors = False
            response = await client.post("/chat/completions", json=body, headers=headers)
            assert "sk-secret-123" not in response.text
    finally:
        await handle.close()


async def test_the_official_openai_client_can_call_it(simulator: SimulatorHandle) -> None:
    question = simulator.world.bank.in_category("short_fact")[0]
    async with openai.AsyncOpenAI(base_url=simulator.base_url, api_key="x") as client:
        completion = await client.chat.completions.create(
            model="model-h", messages=[{"role": "user", "content": question.prompt}], seed=1
        )
        assert completion.choices[0].message.content
        assert completion.usage is not None and completion.usage.completion_tokens > 0
        stream = await client.chat.completions.create(
            model="model-h",
            messages=[{"role": "user", "content": question.prompt}],
            seed=1,
            stream=True,
        )
        streamed = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert streamed == completion.choices[0].message.content
        models = await client.models.list()
        assert "model-h" in [m.id for m in models.data]
        with pytest.raises(openai.NotFoundError):
            await client.chat.completions.create(
                model="nope", messages=[{"role": "user", "content": "Hi"}]
            )
