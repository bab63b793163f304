"""The chat-completions client against httpx.MockTransport handlers.

Each handler asserts on the outgoing request or scripts the provider's answers; the
tests check the outcome a caller sees: the text or the error kind, every attempt,
cost, and that keys never leak.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from service.config import ModelConfig, ProviderConfig
from service.domain.events import GenerationParams, Message
from service.providers.openai_compatible import CallFailed, CallOutcome, CallSucceeded, complete
from service.providers.outcomes import KEY_REDACTED

KEY = "sk-test-9f8e7d6c5b4a39281716"
PROVIDER = ProviderConfig(
    base_url="http://provider.test/v1/",
    max_attempts=3,
    backoff_base_s=0.001,
    backoff_max_s=0.002,
)
MODEL = ModelConfig(provider="p", upstream="upstream-model", input_price=10.0, output_price=30.0)
MESSAGES = [Message(role="system", content="Be brief."), Message(role="user", content="2+2?")]

DEFAULT_PARAMS = GenerationParams()
Handler = (
    Callable[[httpx.Request], httpx.Response]
    | Callable[[httpx.Request], Coroutine[None, None, httpx.Response]]
)


def completion(
    content: Any = "4",
    finish_reason: str | None = "stop",
    usage: dict[str, int] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "id": "resp-1",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                     "finish_reason": finish_reason}],
        "usage": usage if usage is not None else {"prompt_tokens": 1000, "completion_tokens": 2000},
        **extra,
    }  # fmt: skip


pytestmark = pytest.mark.usefixtures("debug_logs")


def scripted(*responses: httpx.Response | Exception) -> tuple[Handler, list[httpx.Request]]:
    """A handler answering with ``responses`` in order (the last one repeats)."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = responses[min(len(seen), len(responses)) - 1]
        if isinstance(answer, Exception):
            raise answer
        return answer

    return handler, seen


async def call(
    handler: Handler,
    *,
    provider: ProviderConfig = PROVIDER,
    api_key: str | None = KEY,
    timeout_s: float = 5.0,
    params: GenerationParams = DEFAULT_PARAMS,
    seed: int | None = None,
) -> CallOutcome:
    async with httpx.MockTransport(handler) as client:
        return await complete(
            client,
            provider,
            MODEL,
            MESSAGES,
            params,
            api_key=api_key,
            timeout_s=timeout_s,
            seed=seed,
        )


def failed(outcome: CallOutcome) -> CallFailed:
    assert isinstance(outcome, CallFailed), outcome
    return outcome


def succeeded(outcome: CallOutcome) -> CallSucceeded:
    assert isinstance(outcome, CallSucceeded), outcome
    return outcome


async def test_a_success_sends_the_request_the_provider_expects_and_costs_its_usage() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.method == "POST"
        assert str(request.url) == "http://provider.test/v1/chat/completions"
        assert request.headers["authorization"] == f"Bearer {KEY}"
        assert request.headers["content-type"] == "application/json"
        assert request.headers["content-length"] == str(len(request.content))
        assert request.headers["host"] == "provider.test"
        assert request.headers["user-agent"] == "fusion-ledger"
        assert request.headers["accept-encoding"] == "gzip, deflate"  # what httpx decodes
        assert "timeout" in request.extensions  # the transport's per-request bounds
        body = json.loads(request.content)
        assert body == {
            "model": "upstream-model",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "2+2?"},
            ],
            "temperature": 0.2,
            "max_tokens": 64,
            "seed": 7,  # the seed argument wins over params.seed
        }
        return httpx.Response(200, json=completion())

    params = GenerationParams(temperature=0.2, max_tokens=64, seed=99)
    outcome = succeeded(await call(handler, params=params, seed=7))

    assert outcome.text == "4"
    assert outcome.finish_reason == "stop"
    assert (outcome.input_tokens, outcome.output_tokens) == (1000, 2000)
    assert outcome.cost_usd == pytest.approx((1000 * 10.0 + 2000 * 30.0) / 1e6)
    assert outcome.usage_estimated is False
    assert outcome.provider_response_id == "resp-1"
    assert [(a.number, a.outcome, a.http_status) for a in outcome.attempts] == [(1, "ok", 200)]
    assert outcome.latency_ms >= outcome.attempts[0].latency_ms >= 0


async def test_without_a_key_no_authorization_header_is_sent_and_params_seed_is_used() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert "authorization" not in request.headers
        assert json.loads(request.content)["seed"] == 99
        return httpx.Response(200, json=completion())

    succeeded(await call(handler, api_key=None, params=GenerationParams(seed=99)))


async def test_missing_usage_is_estimated_from_characters_and_flagged() -> None:
    body = completion(content="four!")
    del body["usage"]
    handler, _ = scripted(httpx.Response(200, json=body))
    outcome = succeeded(await call(handler))
    # ceil((9 + 4) / 4) input tokens, ceil(5 / 4) output tokens
    assert (outcome.input_tokens, outcome.output_tokens) == (4, 2)
    assert outcome.usage_estimated is True
    assert outcome.cost_usd == pytest.approx((4 * 10.0 + 2 * 30.0) / 1e6)


async def test_nul_characters_are_stripped_from_the_answer() -> None:
    handler, _ = scripted(httpx.Response(200, json=completion(content="a\x00b")))
    assert succeeded(await call(handler)).text == "ab"


async def test_429_with_retry_after_then_success_is_two_attempts() -> None:
    handler, seen = scripted(
        httpx.Response(429, headers={"retry-after": "0"}, json={"error": {"message": "slow down"}}),
        httpx.Response(200, json=completion()),
    )
    outcome = succeeded(await call(handler))
    assert len(seen) == 2
    assert [(a.number, a.outcome, a.http_status) for a in outcome.attempts] == [
        (1, "rate_limited", 429),
        (2, "ok", 200),
    ]


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[float]]:
    """Records the client's backoff sleeps instead of sleeping."""
    recorded: list[float] = []
    real_sleep = asyncio.sleep

    async def fake_sleep(delay: float) -> None:
        recorded.append(delay)
        await real_sleep(0)

    monkeypatch.setattr(asyncio, "sleep", fake_sleep)
    yield recorded


async def test_retry_after_seconds_is_honoured(sleeps: list[float]) -> None:
    handler, _ = scripted(
        httpx.Response(503, headers={"retry-after": "3"}), httpx.Response(200, json=completion())
    )
    succeeded(await call(handler, timeout_s=10.0))
    assert sleeps == [3.0]


async def test_backoff_is_jittered_and_capped(sleeps: list[float]) -> None:
    provider = ProviderConfig(
        base_url="http://provider.test/v1", max_attempts=6, backoff_base_s=10.0, backoff_max_s=0.5
    )
    handler, _ = scripted(httpx.Response(500))
    failed(await call(handler, provider=provider, timeout_s=60.0))
    assert len(sleeps) == 5
    assert all(0 <= s <= 0.5 for s in sleeps)


async def test_a_retry_after_beyond_the_deadline_ends_the_call_without_waiting(
    sleeps: list[float],
) -> None:
    handler, seen = scripted(httpx.Response(429, headers={"retry-after": "30"}))
    outcome = failed(await call(handler, timeout_s=2.0))
    assert outcome.error_kind == "rate_limited"
    assert outcome.http_status == 429
    assert len(seen) == 1 and sleeps == []
    assert "would pass the deadline" in outcome.message


async def test_three_server_errors_fail_as_server_error_after_max_attempts() -> None:
    handler, seen = scripted(httpx.Response(500, text="upstream exploded"))
    outcome = failed(await call(handler))
    assert len(seen) == PROVIDER.max_attempts == 3
    assert outcome.error_kind == "server_error"
    assert outcome.http_status == 500
    assert [a.outcome for a in outcome.attempts] == ["server_error"] * 3
    assert [a.number for a in outcome.attempts] == [1, 2, 3]
    assert "upstream exploded" in outcome.message


async def test_a_provider_that_never_answers_times_out() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(30)
        return httpx.Response(200, json=completion())

    outcome = failed(await call(handler, timeout_s=0.05))
    assert outcome.error_kind == "timeout"
    assert [a.outcome for a in outcome.attempts] == ["timeout"]
    assert outcome.latency_ms < 5000  # bounded by timeout_s, generously


async def test_a_transport_timeout_is_a_timeout() -> None:
    handler, seen = scripted(httpx.ReadTimeout("read timed out"))
    outcome = failed(await call(handler))
    assert outcome.error_kind == "timeout"
    assert len(seen) == 1  # the whole budget was the attempt's: no retry


async def test_connection_errors_are_retried_then_reported_as_connection() -> None:
    handler, seen = scripted(httpx.ConnectError("connection refused"))
    outcome = failed(await call(handler))
    assert outcome.error_kind == "connection"
    assert outcome.http_status is None
    assert len(seen) == 3
    assert "connection refused" in outcome.message


async def test_a_connection_error_then_success_succeeds() -> None:
    handler, _ = scripted(
        httpx.RemoteProtocolError("peer closed"), httpx.Response(200, json=completion())
    )
    outcome = succeeded(await call(handler))
    assert [a.outcome for a in outcome.attempts] == ["connection", "ok"]


MALFORMED = {
    "not json": httpx.Response(200, text="<html>gateway</html>"),
    "no choices": httpx.Response(200, json={"id": "x", "object": "chat.completion"}),
    "empty choices": httpx.Response(200, json={"choices": []}),
    "no message": httpx.Response(200, json={"choices": [{"finish_reason": "stop"}]}),
    "no content": httpx.Response(200, json={"choices": [{"message": {"role": "assistant"}}]}),
    "content not a string": httpx.Response(200, json=completion(content=42)),
    "negative usage": httpx.Response(
        200, json=completion(usage={"prompt_tokens": -1, "completion_tokens": 1})
    ),
    "a redirect": httpx.Response(301, headers={"location": "http://elsewhere"}),
}


@pytest.mark.parametrize("response", MALFORMED.values(), ids=MALFORMED.keys())
async def test_a_malformed_answer_is_malformed_response_and_not_retried(
    response: httpx.Response,
) -> None:
    handler, seen = scripted(response)
    outcome = failed(await call(handler))
    assert outcome.error_kind == "malformed_response"
    assert len(seen) == 1


@pytest.mark.parametrize("content", ["", "  \n ", None])
async def test_a_blank_answer_is_empty_response(content: str | None) -> None:
    handler, _ = scripted(httpx.Response(200, json=completion(content=content)))
    assert failed(await call(handler)).error_kind == "empty_response"


async def test_finish_reason_content_filter_is_content_filter() -> None:
    handler, _ = scripted(
        httpx.Response(200, json=completion(content="partial", finish_reason="content_filter"))
    )
    assert failed(await call(handler)).error_kind == "content_filter"


async def test_an_error_body_about_the_content_filter_is_content_filter() -> None:
    body = {"error": {"code": "content_filter", "message": "The prompt was filtered."}}
    handler, seen = scripted(httpx.Response(400, json=body))
    outcome = failed(await call(handler))
    assert outcome.error_kind == "content_filter"
    assert outcome.http_status == 400
    assert len(seen) == 1


@pytest.mark.parametrize("status", [400, 401, 404, 422])
async def test_other_4xx_are_client_errors_and_not_retried(status: int) -> None:
    body = {"error": {"message": "model 'upstream-model' does not exist"}}
    handler, seen = scripted(httpx.Response(status, json=body))
    outcome = failed(await call(handler))
    assert outcome.error_kind == "client_error"
    assert outcome.http_status == status
    assert len(seen) == 1
    assert outcome.message == f"HTTP {status}: model 'upstream-model' does not exist"


async def test_a_key_echoed_by_the_provider_never_reaches_results_or_logs() -> None:
    masked = KEY[:12] + "*****" + KEY[-4:]
    echo = (
        f"Invalid API key {KEY}; header was 'Authorization: Bearer {KEY}'; "
        f"did you mean {masked}? " + "x" * 2000
    )
    handler, seen = scripted(
        httpx.Response(500, json={"error": {"message": echo}}),
        httpx.Response(500, text=f"raw {KEY} {json.dumps(KEY)}"),
        httpx.Response(401, text=echo),
    )
    with capture_logs() as logs:
        outcome = failed(await call(handler))

    assert len(seen) == 3 and logs  # the retries were logged
    texts = [outcome.message, *(repr(entry) for entry in logs)]
    for text in texts:
        assert KEY not in text
        assert KEY[:12] not in text and KEY[-12:] not in text
        assert masked not in text
    assert KEY_REDACTED in outcome.message and "[redacted]" in outcome.message  # masked one
    assert len(outcome.message) <= 500


def echoed_key(request: httpx.Request) -> str:
    """The key as the provider received it, which a careless provider echoes back."""
    return request.headers["authorization"].removeprefix("Bearer ")


async def test_a_key_echoed_in_a_successful_reply_is_redacted_from_every_text() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        key = echoed_key(request)
        reply = completion(f"Your key is {key}.\nAnswer: 4", f"stop ({key})", id=f"resp-{key}")
        return httpx.Response(200, json=reply)

    with capture_logs() as logs:
        outcome = succeeded(await call(handler))

    assert outcome.text == f"Your key is {KEY_REDACTED}.\nAnswer: 4"
    assert outcome.finish_reason == f"stop ({KEY_REDACTED})"
    assert outcome.provider_response_id == f"resp-{KEY_REDACTED}"
    assert KEY not in repr(logs)


ODD_KEY = "sk-odd~?>key~?>with~?>chars"  # encodes to "+" and "/", unlike letters and digits


def base64_echo(text: str, *, url_safe: bool, padded: bool) -> str:
    encode = base64.urlsafe_b64encode if url_safe else base64.b64encode
    encoded = encode(text.encode()).decode()
    return encoded if padded else encoded.rstrip("=")


@pytest.mark.parametrize("prefix", ["", "x", "xy"], ids=["aligned", "offset-1", "offset-2"])
@pytest.mark.parametrize("url_safe", [False, True], ids=["standard", "url-safe"])
@pytest.mark.parametrize("padded", [True, False], ids=["padded", "unpadded"])
async def test_a_base64_echo_of_the_authorization_header_is_redacted(
    prefix: str, url_safe: bool, padded: bool
) -> None:
    echoes: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        header = f"{prefix}Bearer {echoed_key(request)}"
        echoes.append(base64_echo(header, url_safe=url_safe, padded=padded))
        return httpx.Response(401, json={"error": {"message": f"bad header {echoes[-1]} sent"}})

    with capture_logs() as logs:
        outcome = failed(await call(handler, api_key=ODD_KEY))

    assert "+" in echoes[0] or "-" in echoes[0]  # the two alphabets differ for this key
    assert outcome.message == f"HTTP 401: bad header {KEY_REDACTED} sent"
    assert echoes[0] not in repr(logs)


def json_escaped(text: str) -> str:
    return "".join(f"\\u{ord(c):04x}" for c in text)


async def test_a_json_escaped_key_in_an_error_body_over_64_kib_is_redacted() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        message = f"invalid key {json_escaped(echoed_key(request))}"
        body = f'{{"error": {{"message": "{message}", "trace": "{"x" * 70_000}"}}}}'
        return httpx.Response(500, content=body.encode(), headers={"content-type": "text/json"})

    with capture_logs() as logs:
        outcome = failed(await call(handler))

    assert outcome.error_kind == "server_error" and len(outcome.attempts) == 3
    assert KEY_REDACTED in outcome.message
    for text in (outcome.message, repr(logs)):
        assert json_escaped(KEY) not in text and json_escaped(KEY[:8]) not in text
        assert KEY not in text


@pytest.mark.parametrize("separator", [" ", "-", ".", "\u200b", " . "])
async def test_a_key_echoed_with_separators_between_its_characters_is_redacted(
    separator: str,
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        spaced = separator.join(echoed_key(request))
        return httpx.Response(403, json={"error": {"message": f"key {spaced} is revoked"}})

    outcome = failed(await call(handler))
    assert outcome.message == f"HTTP 403: key {KEY_REDACTED} is revoked"

    answer = separator.join(KEY)
    handler, _ = scripted(httpx.Response(200, json=completion(f"The key: {answer}. Answer: 4")))
    assert succeeded(await call(handler)).text == f"The key: {KEY_REDACTED}. Answer: 4"


async def test_retries_stop_at_the_overall_deadline() -> None:
    provider = ProviderConfig(
        base_url="http://provider.test/v1", max_attempts=1000, backoff_base_s=0.0, backoff_max_s=0.0
    )

    async def handler(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.05)
        return httpx.Response(503)

    outcome = failed(await call(handler, provider=provider, timeout_s=0.3))
    # each attempt takes at least 50 ms of a 300 ms budget: at most 6, and the last may
    # have been cut short by the deadline
    assert 1 <= len(outcome.attempts) <= 7
    assert outcome.error_kind in ("server_error", "timeout")
    assert outcome.latency_ms < 0.3 * 1000 + 2000  # generous: no tight timing


async def test_cancellation_propagates() -> None:
    entered = asyncio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        entered.set()
        await asyncio.sleep(30)
        return httpx.Response(200, json=completion())

    task = asyncio.create_task(call(handler))
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
