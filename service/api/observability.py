"""GET /metrics, and the middleware that times every HTTP request by route."""

from __future__ import annotations

import contextlib
import time
from typing import Any

from litestar import Response, get
from litestar.datastructures import State
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from service.metrics import Metrics
from service.projections.runner import status as projection_status


@get("/metrics", summary="Prometheus metrics", include_in_schema=False)
async def metrics_endpoint(state: State) -> Response[bytes]:
    """The Prometheus text exposition of this process's metrics.

    Projection lag is measured here, at scrape time, from the checkpoints in the
    database: it shows even when no worker is running, which is when it matters."""
    metrics: Metrics = state.metrics
    services = getattr(state, "services", None)
    if services is not None:
        with contextlib.suppress(Exception):  # a scrape never fails on the database
            async with services.store.pool.acquire(timeout=2) as conn:
                for s in await projection_status(conn):
                    metrics.projection_lag_events.labels(s.name).set(s.lag.events)
                    metrics.projection_lag_seconds.labels(s.name).set(s.lag.seconds)
    # Litestar adds "; charset=utf-8" to text types itself: named here too, it came
    # twice, which strict parsers (Go's, so Prometheus 3) refuse.
    return Response(metrics.render(), media_type="text/plain; version=0.0.4")


def timing_middleware(app: ASGIApp) -> ASGIApp:
    """Observe request latency by method, route template and status."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        started = time.perf_counter()
        # request.state.received_at: where a fusion's overhead starts (api/fusions.py)
        scope.setdefault("state", {})["received_at"] = started
        status = {"code": 500}

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await app(scope, receive, capture)
        finally:
            metrics: Metrics | None = getattr(scope["app"].state, "metrics", None)
            if metrics is not None:
                route: Any = scope.get("path_template") or "unmatched"
                method = str(scope.get("method", "GET"))
                metrics.http_latency.labels(method, route, str(status["code"])).observe(
                    time.perf_counter() - started
                )

    return middleware
