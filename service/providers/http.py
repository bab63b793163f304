"""The process's one HTTP client for provider calls: httpx's API over aiohttp.

Measured while planning: httpcore's connection pool pegged the CPU at about 35
fusions/s (``_assign_requests_to_connections`` scans every connection per request);
the same code over ``httpx_aiohttp.AiohttpTransport`` held 100/s and more.

Two things the aiohttp transport (httpx-aiohttp 0.2) does differently from httpcore,
and what this module does about them:

- Its exception map turns every ``aiohttp.ClientConnectionError`` (connection
  refused, server disconnected) into ``httpx.ConnectTimeout``, so a refused
  connection would look like a timeout. ``_RemappingTransport`` turns a timeout
  whose cause is not a timeout back into ``httpx.ConnectError``.
- Errors outside that map (``aiohttp.ClientResponseError`` for a garbled status
  line) escape as aiohttp exceptions; they become ``httpx.RemoteProtocolError``.
- httpx's ``read`` timeout becomes aiohttp's ``sock_read`` (per read, not per
  response) and ``write`` is ignored, so a slowly dripping body is not bounded by
  the httpx timeout. Callers that need a hard deadline wrap the call in
  ``asyncio.timeout`` (``openai_compatible.complete`` does).

``httpx.MockTransport`` does not go through this module at all: tests build their
own ``httpx.AsyncClient(transport=MockTransport(...))``; it enforces no timeouts.

Proxies from the environment are not used (``trust_env=False``): httpx would mount
its httpcore transport for proxied URLs, silently bypassing aiohttp.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

# Per-request timeouts are normally passed by the caller; these bound anything else.
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=5.0)


def create_http_client(max_connections: int = 200) -> httpx.AsyncClient:
    """A new client for provider calls; the app's lifespan owns it and closes it."""
    limits = httpx.Limits(
        max_connections=max_connections,
        max_keepalive_connections=max_connections,
        keepalive_expiry=30.0,
    )
    return httpx.AsyncClient(
        transport=_RemappingTransport(limits=limits),
        timeout=DEFAULT_TIMEOUT,
        follow_redirects=False,
        trust_env=False,
    )


def _remap(exc: Exception, request: httpx.Request) -> Exception:
    """The httpx exception a caller should see for ``exc``; ``exc`` itself if it is right."""
    if isinstance(exc, aiohttp.ClientError):  # not in the transport's map, e.g. a bad status line
        return httpx.RemoteProtocolError(f"{type(exc).__name__}: {exc}", request=request)
    cause = exc.__cause__
    # A real timeout from aiohttp (ServerTimeoutError and its subclasses) is a TimeoutError.
    if isinstance(exc, httpx.TimeoutException) and not isinstance(cause, TimeoutError | None):
        return httpx.ConnectError(str(exc) or type(cause).__name__, request=request)
    return exc


class _RemappingStream(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, request: httpx.Request) -> None:
        self._inner = inner
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._inner:
                yield chunk
        except (httpx.TransportError, aiohttp.ClientError) as exc:
            mapped = _remap(exc, self._request)
            if mapped is exc:
                raise
            raise mapped from exc

    async def aclose(self) -> None:
        await self._inner.aclose()


class _RemappingTransport(AiohttpTransport):
    """``AiohttpTransport`` reporting connection failures as connection errors."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            response: httpx.Response = await super().handle_async_request(request)
        except (httpx.TransportError, aiohttp.ClientError) as exc:
            mapped = _remap(exc, request)
            if mapped is exc:
                raise
            raise mapped from exc
        assert isinstance(response.stream, httpx.AsyncByteStream)
        response.stream = _RemappingStream(response.stream, request)
        return response
