"""The process's one HTTP transport for provider calls: httpx's API over aiohttp.

Measured while planning: httpcore's connection pool pegged the CPU at about 35
fusions/s (``_assign_requests_to_connections`` scans every connection per request);
the same code over ``httpx_aiohttp.AiohttpTransport`` held 100/s and more.

Provider calls send ``httpx.Request`` objects straight to the transport
(``openai_compatible``), not through an ``httpx.AsyncClient``: the client's own work
per request (URL merging, default headers, cookie jar, auth and redirect flows, event
hooks) cost 220 us of a 300 us call against ``httpx.MockTransport``, four to five
calls per fusion, and a provider call uses none of it (no cookies, no redirects, the
key is a header).

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

``httpx.MockTransport`` does not go through this module at all: tests pass their own
``MockTransport(...)`` where this transport would go; it enforces no timeouts.

Proxies from the environment are not used: the transport connects directly.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport
from httpx_aiohttp.transport import map_aiohttp_exceptions


def create_http_transport(max_connections: int = 200) -> httpx.AsyncBaseTransport:
    """A new transport for provider calls; the app's lifespan owns it and closes it.
    Every request names its own timeouts (``openai_compatible``)."""
    limits = httpx.Limits(
        max_connections=max_connections,
        max_keepalive_connections=max_connections,
        keepalive_expiry=30.0,
    )
    return _RemappingTransport(limits=limits)


def _remap(exc: Exception, request: httpx.Request) -> Exception:
    """The httpx exception a caller should see for ``exc``; ``exc`` itself if it is right."""
    if isinstance(exc, aiohttp.ClientError):  # not in the transport's map, e.g. a bad status line
        return httpx.RemoteProtocolError(f"{type(exc).__name__}: {exc}", request=request)
    cause = exc.__cause__
    # A real timeout from aiohttp (ServerTimeoutError and its subclasses) is a TimeoutError.
    if isinstance(exc, httpx.TimeoutException) and not isinstance(cause, TimeoutError | None):
        return httpx.ConnectError(str(exc) or type(cause).__name__, request=request)
    return exc


class _RemappingTransport(AiohttpTransport):
    """``AiohttpTransport`` reporting connection failures as connection errors, and
    answering with the whole body read.

    A provider call reads every response whole, so the body is read here, inside the
    request's context, and the response carries it as its content, instead of the
    library's streamed response (an async iterator per chunk, wrapped again to remap
    its errors, then httpx's ``aread`` over it): a call against the simulator took
    455-489 us of CPU instead of 493-568 us (medians, four alternating runs). Errors
    while the body is read are mapped as errors of the request are: the library's
    exception map, then ``_remap``.
    """

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not isinstance(self.client, aiohttp.ClientSession):
            self.client = self.get_client()
        timeout = request.extensions.get("timeout", {})
        try:
            with map_aiohttp_exceptions():
                async with self.client.request(
                    method=request.method,
                    url=str(request.url),
                    headers=request.headers,
                    data=request.content or None,
                    allow_redirects=False,
                    auto_decompress=False,  # httpx decodes, as for every transport
                    compress=False,
                    timeout=aiohttp.ClientTimeout(
                        sock_connect=timeout.get("connect"),
                        sock_read=timeout.get("read"),
                        connect=timeout.get("pool"),
                    ),
                    server_hostname=request.extensions.get("sni_hostname"),
                ) as response:
                    content = await response.read()
        except (httpx.TransportError, aiohttp.ClientError) as exc:
            mapped = _remap(exc, request)
            if mapped is exc:
                raise
            raise mapped from exc
        extensions: dict[str, Any] = {"http_version": b"HTTP/1.1"}
        if response.reason:
            extensions["reason_phrase"] = response.reason.encode()
        return httpx.Response(
            response.status,
            headers=response.raw_headers,
            content=content,
            request=request,
            extensions=extensions,
        )
