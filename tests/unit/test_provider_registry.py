"""The registry: model ids to providers, keys from the environment, concurrency limits."""

from __future__ import annotations

import asyncio
import json

import httpx
import msgspec
import pytest

from service.config import Config, Price, UnknownModel, parse_config
from service.domain.events import GenerationParams, Message
from service.providers import CallFailed, CallSucceeded, ProviderRegistry

CONFIG = """
[providers.keyed]
base_url = "http://keyed.test/v1"
api_key_env = "KEYED_API_KEY"

[providers.open]
base_url = "http://open.test/v1"
max_concurrency = 2
timeout_s = 5.0

[models."keyed/a"]
provider = "keyed"
upstream = "a-2024"
input_price = 1.0
output_price = 2.0

[models."open/b"]
provider = "open"

[presets.default]
panel = ["open/b"]
judge = { kind = "vote" }
"""
MESSAGES = [Message(role="user", content="hi")]
OK = {"choices": [{"message": {"content": "hello"}, "finish_reason": "stop"}]}


def registry(
    handler: httpx.MockTransport | None = None,
    secrets: dict[str, str] | None = None,
    config: Config | None = None,
) -> ProviderRegistry:
    transport = handler or httpx.MockTransport(lambda request: httpx.Response(200, json=OK))
    return ProviderRegistry(config or parse_config(CONFIG), transport, (secrets or {}).get)


def test_it_lists_models_providers_and_prices() -> None:
    reg = registry()
    assert reg.models() == ["keyed/a", "open/b"]
    assert reg.provider_of("keyed/a") == "keyed"
    assert reg.price("keyed/a") == Price(1.0, 2.0)
    with pytest.raises(UnknownModel):
        reg.provider_of("nope/c")


async def test_an_unknown_model_id_raises_unknown_model() -> None:
    with pytest.raises(UnknownModel):
        await registry().complete("nope/c", MESSAGES, GenerationParams(), timeout_s=1.0)


async def test_the_key_comes_from_the_named_variable_and_the_upstream_name_is_sent() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.host == "keyed.test"
        assert request.headers["authorization"] == "Bearer secret-value-1"
        assert json.loads(request.content)["model"] == "a-2024"
        return httpx.Response(200, json=OK)

    reg = registry(httpx.MockTransport(handler), secrets={"KEYED_API_KEY": "secret-value-1"})
    outcome = await reg.complete("keyed/a", MESSAGES, GenerationParams(), timeout_s=1.0)
    assert isinstance(outcome, CallSucceeded) and outcome.text == "hello"


async def test_a_missing_key_fails_as_client_error_naming_the_variable_without_calling() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError("no request may be sent without the key")

    reg = registry(httpx.MockTransport(handler), secrets={})
    outcome = await reg.complete("keyed/a", MESSAGES, GenerationParams(), timeout_s=1.0)
    assert isinstance(outcome, CallFailed)
    assert outcome.error_kind == "client_error"
    assert "KEYED_API_KEY" in outcome.message
    assert outcome.attempts == []


async def test_a_model_built_in_code_without_upstream_sends_its_id() -> None:
    config = parse_config(CONFIG)
    model = config.models["open/b"]
    config = msgspec.structs.replace(
        config, models={"open/b": msgspec.structs.replace(model, upstream="")}
    )

    def handler(request: httpx.Request) -> httpx.Response:
        assert json.loads(request.content)["model"] == "open/b"
        return httpx.Response(200, json=OK)

    reg = registry(httpx.MockTransport(handler), config=config)
    outcome = await reg.complete("open/b", MESSAGES, GenerationParams(), timeout_s=1.0)
    assert isinstance(outcome, CallSucceeded)


async def test_calls_to_one_provider_never_exceed_its_concurrency_limit() -> None:
    in_flight = 0
    peak = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        return httpx.Response(200, json=OK)

    reg = registry(httpx.MockTransport(handler))
    outcomes = await asyncio.gather(
        *(reg.complete("open/b", MESSAGES, GenerationParams(), timeout_s=5.0) for _ in range(8))
    )
    assert all(isinstance(o, CallSucceeded) for o in outcomes)
    assert peak == 2  # max_concurrency of provider "open"


async def test_waiting_for_a_slot_counts_against_the_timeout() -> None:
    release = asyncio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        await release.wait()
        return httpx.Response(200, json=OK)

    reg = registry(httpx.MockTransport(handler))
    holders = [
        asyncio.create_task(reg.complete("open/b", MESSAGES, GenerationParams(), timeout_s=5.0))
        for _ in range(2)
    ]
    await asyncio.sleep(0)  # let both take the two slots
    queued = await reg.complete("open/b", MESSAGES, GenerationParams(), timeout_s=0.05)
    release.set()
    await asyncio.gather(*holders)

    assert isinstance(queued, CallFailed)
    assert queued.error_kind == "timeout"
    assert "no free slot" in queued.message and "max_concurrency=2" in queued.message
    assert queued.attempts == []


async def test_the_providers_timeout_bounds_a_longer_call_timeout() -> None:
    config = parse_config(CONFIG.replace("timeout_s = 5.0", "timeout_s = 0.05"))

    async def handler(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(30)
        return httpx.Response(200, json=OK)

    reg = registry(httpx.MockTransport(handler), config=config)
    outcome = await reg.complete("open/b", MESSAGES, GenerationParams(), timeout_s=60.0)
    assert isinstance(outcome, CallFailed) and outcome.error_kind == "timeout"
