"""Liveness and readiness."""

from __future__ import annotations

from typing import Any

from litestar import Response, get
from litestar.di import NamedDependency, Provide

from service.api.deps import Services, provide_services
from service.store.migrations import is_up_to_date, load_migrations


@get("/healthz", summary="Liveness")
async def healthz() -> dict[str, str]:
    """The process answers."""
    return {"status": "ok"}


@get(
    "/readyz",
    dependencies={"services": Provide(provide_services, sync_to_thread=False)},
    summary="Readiness",
)
async def readyz(services: NamedDependency[Services]) -> Response[dict[str, Any]]:
    """The database answers and the schema holds every migration this code knows,
    unchanged (a newer release's too is fine: the API's start-up check, reused)."""
    try:
        async with services.store.pool.acquire() as conn:
            migrated = await is_up_to_date(conn, MIGRATIONS, newer_ok=True)
            version = await conn.fetchval("SELECT max(version) FROM schema_migrations")
    except Exception as exc:  # any database failure means not ready
        return Response({"status": "unavailable", "detail": type(exc).__name__}, status_code=503)
    if not migrated:
        return Response({"status": "not migrated", "schema_version": version}, status_code=503)
    return Response({"status": "ready", "schema_version": version}, status_code=200)


MIGRATIONS = load_migrations()  # read once: the files do not change under a process
