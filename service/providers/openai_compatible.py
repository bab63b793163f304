"""One call to an OpenAI chat-completions endpoint, with retries and classified failures.

``complete`` never raises for a provider's problem (only ``asyncio.CancelledError``
propagates): every outcome is a ``CallSucceeded`` or a ``CallFailed`` whose
``error_kind`` is one of DESIGN.md's closed list, with every attempt kept for
attribution. ``timeout_s`` bounds the whole call, retries and backoff included.
API keys never leave this module: every text a provider sent is redacted of the key
(``redact_key``: the answer, its finish_reason and id) and every error message is
scrubbed of it and of anything that looks like a bearer token (``scrub``), here,
before anything else sees them or they are logged.
"""

from __future__ import annotations

import asyncio
import functools
import math
import random
from collections.abc import Sequence
from typing import Annotated, NamedTuple

import httpx
import msgspec
import structlog

from service.config import ModelConfig, ProviderConfig
from service.domain.events import Attempt, ErrorKind, GenerationParams, Message
from service.providers.outcomes import (
    CallFailed,
    CallOutcome,
    CallSucceeded,
    classify_status,
    error_text,
    redact_key,
    retry_after_s,
    scrub,
)

# The outcome types are re-exported: orchestration imports them from here.
__all__ = ["RETRYABLE", "CallFailed", "CallOutcome", "CallSucceeded", "complete"]

log = structlog.get_logger(__name__)

RETRYABLE: frozenset[ErrorKind] = frozenset({"rate_limited", "server_error", "connection"})


Count = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]  # beyond 64 bits: malformed


class _Usage(msgspec.Struct, frozen=True):
    prompt_tokens: Count | None = None
    completion_tokens: Count | None = None


class _ReplyMessage(msgspec.Struct, frozen=True):
    content: str | None  # required: a reply without it is malformed; null is empty


class _Choice(msgspec.Struct, frozen=True):
    message: _ReplyMessage
    finish_reason: str | None = None


class _Completion(msgspec.Struct, frozen=True):
    choices: list[_Choice]
    id: str | None = None
    usage: _Usage | None = None


_DECODER = msgspec.json.Decoder(_Completion)
_ENCODER = msgspec.json.Encoder()
_HEADERS = {
    "accept": "application/json",
    # What httpx decodes without extra packages (aiohttp's default may add zstd).
    "accept-encoding": "gzip, deflate",
    "content-type": "application/json",
    "user-agent": "fusion-ledger",
}


class _Reply(NamedTuple):
    status: int
    text: str
    finish_reason: str | None
    response_id: str | None
    usage: _Usage | None


class _Failure(NamedTuple):
    kind: ErrorKind
    status: int | None
    message: str
    retry_after_s: float | None = None


async def complete(
    transport: httpx.AsyncBaseTransport,
    provider: ProviderConfig,
    model: ModelConfig,
    messages: list[Message],
    params: GenerationParams,
    *,
    api_key: str | None,
    timeout_s: float,
    seed: int | None = None,
) -> CallOutcome:
    """Ask ``model`` at ``provider`` for one chat completion within ``timeout_s`` seconds."""
    url = _endpoint(provider.base_url)
    headers = (_HEADERS | {"authorization": f"Bearer {api_key}"}) if api_key else _HEADERS
    body = _ENCODER.encode(_request_body(model, messages, params, seed))
    loop = asyncio.get_running_loop()
    start = loop.time()
    deadline = start + timeout_s
    attempts: list[Attempt] = []
    for number in range(1, max(1, provider.max_attempts) + 1):
        began = loop.time()
        result = await _attempt(transport, url, headers, body, deadline - began)
        outcome = "ok" if isinstance(result, _Reply) else result.kind
        attempts.append(
            Attempt(
                number=number,
                outcome=outcome,
                latency_ms=(loop.time() - began) * 1000,
                http_status=result.status,
            )
        )
        if isinstance(result, _Reply):
            latency_ms = (loop.time() - start) * 1000
            return _succeeded(result, model, messages, attempts, latency_ms, api_key)
        failure = result
        if failure.kind not in RETRYABLE or number == provider.max_attempts:
            break
        delay = _backoff_s(provider, number, failure.retry_after_s)
        if loop.time() + delay >= deadline:
            note = f"no retry: waiting {delay:.3g}s would pass the deadline; "
            failure = failure._replace(message=note + failure.message)
            break
        log.debug(
            "provider.retry", model=model.upstream, attempt=number, error_kind=failure.kind,
            http_status=failure.status, delay_s=round(delay, 3),
            message=scrub(failure.message, api_key),
        )  # fmt: skip
        await asyncio.sleep(delay)
    message = scrub(failure.message, api_key)
    log.debug(
        "provider.call.failed", model=model.upstream, error_kind=failure.kind,
        attempts=len(attempts), message=message,
    )  # fmt: skip
    return CallFailed(
        error_kind=failure.kind,
        http_status=failure.status,
        attempts=attempts,
        latency_ms=(loop.time() - start) * 1000,
        message=message,
    )


def _request_body(
    model: ModelConfig, messages: Sequence[Message], params: GenerationParams, seed: int | None
) -> dict[str, object]:
    body: dict[str, object] = {"model": model.upstream, "messages": messages}
    chosen = {
        "temperature": params.temperature,
        "max_tokens": params.max_tokens,
        "top_p": params.top_p,
        "seed": seed if seed is not None else params.seed,
    }
    body.update({k: v for k, v in chosen.items() if v is not None})
    return body


@functools.lru_cache(maxsize=64)
def _endpoint(base_url: str) -> httpx.URL:
    """The chat-completions URL of a provider, parsed once."""
    return httpx.URL(base_url.rstrip("/") + "/chat/completions")


async def _attempt(
    transport: httpx.AsyncBaseTransport,
    url: httpx.URL,
    headers: dict[str, str],
    body: bytes,
    budget_s: float,
) -> _Reply | _Failure:
    if budget_s <= 0:
        return _Failure("timeout", None, "no time left for another attempt")
    request = httpx.Request(
        "POST", url, headers=headers, content=body,
        extensions={"timeout": httpx.Timeout(budget_s).as_dict()},
    )  # fmt: skip
    try:
        # asyncio.timeout is the hard bound: transports apply httpx's timeouts per read.
        async with asyncio.timeout(budget_s):
            response = await transport.handle_async_request(request)
            try:
                await response.aread()
            finally:
                await response.aclose()
    except (TimeoutError, httpx.TimeoutException):
        return _Failure("timeout", None, f"no complete response within {budget_s:.3g}s")
    except httpx.HTTPError as exc:
        return _Failure("connection", None, f"{type(exc).__name__}: {exc}")
    return _interpret(response)


def _interpret(response: httpx.Response) -> _Reply | _Failure:
    status = response.status_code
    kind = classify_status(status, response.content)
    if kind is not None:
        message = f"HTTP {status}: {error_text(response.content)}"
        return _Failure(kind, status, message, retry_after_s(response.headers))
    try:
        completion = _DECODER.decode(response.content)
    except msgspec.DecodeError as exc:  # also msgspec.ValidationError: wrong shape or types
        return _Failure("malformed_response", status, f"unexpected response body: {exc}")
    if not completion.choices:
        return _Failure("malformed_response", status, "response has no choices")
    choice = completion.choices[0]
    text = (choice.message.content or "").replace("\x00", "")  # jsonb cannot store NUL
    if choice.finish_reason == "content_filter":
        return _Failure(
            "content_filter", status, "the provider's content filter stopped the answer"
        )
    if not text.strip():
        return _Failure("empty_response", status, "the answer is blank")
    return _Reply(
        status, text, _no_nul(choice.finish_reason), _no_nul(completion.id), completion.usage
    )


def _succeeded(
    reply: _Reply,
    model: ModelConfig,
    messages: list[Message],
    attempts: list[Attempt],
    latency_ms: float,
    api_key: str | None,
) -> CallSucceeded:
    """The outcome of a reply, every text of it redacted of the key: a provider may echo
    it, and events (which keep these texts) can never be purged of it."""
    usage = reply.usage or _Usage()
    input_tokens = usage.prompt_tokens
    output_tokens = usage.completion_tokens
    if input_tokens is None:
        input_tokens = math.ceil(sum(len(m.content) for m in messages) / 4)
    if output_tokens is None:
        output_tokens = math.ceil(len(reply.text) / 4)
    return CallSucceeded(
        text=redact_key(reply.text, api_key),
        finish_reason=_redacted(reply.finish_reason, api_key),
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cost_usd=model.price.cost_usd(input_tokens, output_tokens),
        latency_ms=latency_ms,
        attempts=attempts,
        provider_response_id=_redacted(reply.response_id, api_key),
        usage_estimated=usage.prompt_tokens is None or usage.completion_tokens is None,
    )


def _backoff_s(provider: ProviderConfig, number: int, retry_after: float | None) -> float:
    """Retry-After when the provider sent one, else full jitter: U(0, min(max, base * 2^n))."""
    if retry_after is not None:
        return retry_after
    cap = min(provider.backoff_max_s, provider.backoff_base_s * 2 ** (number - 1))
    return random.uniform(0, cap)


def _redacted(value: str | None, api_key: str | None) -> str | None:
    return None if value is None else redact_key(value, api_key)


def _no_nul(value: str | None) -> str | None:
    return None if value is None else value.replace("\x00", "")
