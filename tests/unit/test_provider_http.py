"""The shared client (httpx over aiohttp) against tiny loopback servers.

MockTransport never reaches the aiohttp transport, whose exception map differs from
httpcore's (it reports a refused connection as ``httpx.ConnectTimeout``); these tests
prove that, through the real transport, each network failure still gets the right
error kind. They use 127.0.0.1 sockets only and take well under a second.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from service.config import ModelConfig, ProviderConfig
from service.domain.events import GenerationParams, Message
from service.providers import (
    CallFailed,
    CallOutcome,
    CallSucceeded,
    complete,
    create_http_transport,
)

Serve = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
MODEL = ModelConfig(provider="local", upstream="m", input_price=1.0, output_price=1.0)
MESSAGES = [Message(role="user", content="hi")]


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncBaseTransport]:
    http = create_http_transport(max_connections=4)
    yield http
    await http.aclose()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length")
    )
    return await reader.readexactly(length)


async def serving(serve: Serve) -> tuple[asyncio.Server, ProviderConfig]:
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    provider = ProviderConfig(
        base_url=f"http://127.0.0.1:{port}/v1", max_attempts=2, backoff_base_s=0.001
    )
    return server, provider


async def call(
    client: httpx.AsyncBaseTransport, provider: ProviderConfig, timeout_s: float = 5.0
) -> CallOutcome:
    """``complete``, with a hang turned into a failure (asyncio.TimeoutError) after 10 s."""
    return await asyncio.wait_for(
        complete(client, provider, MODEL, MESSAGES, GenerationParams(), api_key="k-123",
                 timeout_s=timeout_s),
        timeout=10,
    )  # fmt: skip


async def test_a_completion_round_trips_through_the_aiohttp_transport(
    client: httpx.AsyncBaseTransport,
) -> None:
    requests: list[dict[str, object]] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        requests.append(json.loads(await read_request(reader)))
        body = json.dumps(
            {
                "choices": [{"message": {"content": "hello"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 1},
            }
        ).encode()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))  # fmt: skip
        await writer.drain()
        writer.close()

    server, provider = await serving(serve)
    async with server:
        outcome = await call(client, provider)
    assert isinstance(outcome, CallSucceeded)
    assert (outcome.text, outcome.input_tokens, outcome.output_tokens) == ("hello", 3, 1)
    assert requests[0]["model"] == "m"


async def test_a_refused_connection_is_connection_not_timeout(client: httpx.AsyncClient) -> None:
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    provider = ProviderConfig(
        base_url=f"http://127.0.0.1:{port}/v1", max_attempts=2, backoff_base_s=0.001
    )
    outcome = await call(client, provider)
    assert isinstance(outcome, CallFailed)
    assert outcome.error_kind == "connection"
    assert [a.outcome for a in outcome.attempts] == ["connection", "connection"]


async def test_a_server_that_hangs_up_is_connection(client: httpx.AsyncClient) -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.close()

    server, provider = await serving(serve)
    async with server:
        outcome = await call(client, provider)
    assert isinstance(outcome, CallFailed) and outcome.error_kind == "connection"


async def test_a_garbled_status_line_is_connection_and_does_not_raise(
    client: httpx.AsyncBaseTransport,
) -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTX/9 200 OK\r\n\r\n")
        await writer.drain()
        writer.close()

    server, provider = await serving(serve)
    async with server:
        outcome = await call(client, provider)
    assert isinstance(outcome, CallFailed) and outcome.error_kind == "connection"


async def test_a_server_that_never_answers_is_timeout(client: httpx.AsyncClient) -> None:
    done = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await done.wait()
        writer.close()

    server, provider = await serving(serve)
    async with server:
        outcome = await call(client, provider, timeout_s=0.2)
        done.set()
    assert isinstance(outcome, CallFailed) and outcome.error_kind == "timeout"


async def test_a_body_that_drips_past_the_deadline_is_timeout(client: httpx.AsyncClient) -> None:
    """aiohttp's read timeout is per read: only the call's own deadline stops a drip."""
    done = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
        while not done.is_set():
            writer.write(b" ")
            await writer.drain()
            await asyncio.sleep(0.02)
        writer.close()

    server, provider = await serving(serve)
    async with server:
        outcome = await call(client, provider, timeout_s=0.3)
        done.set()
    assert isinstance(outcome, CallFailed) and outcome.error_kind == "timeout"
