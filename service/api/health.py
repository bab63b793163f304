"""Liveness and readiness."""

from __future__ import annotations

from typing import Any

from litestar import Response, get
from litestar.di import NamedDependency, Provide

from service.api.deps import Services, provide_services
from service.store.migrations import load_migrations


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
    """The database answers and the schema holds every migration this code knows (a
    newer release's too is fine: see migrations.is_up_to_date)."""
    try:
        applied = await services.store.pool.fetchval(
            "SELECT coalesce(array_agg(version), '{}') FROM schema_migrations"
        )
    except Exception as exc:  # any database failure means not ready
        return Response({"status": "unavailable", "detail": type(exc).__name__}, status_code=503)
    version = max(applied, default=None)
    missing = sorted(KNOWN_MIGRATIONS - set(applied))
    if missing:
        body = {"status": "not migrated", "schema_version": version, "missing": missing}
        return Response(body, status_code=503)
    return Response({"status": "ready", "schema_version": version}, status_code=200)


KNOWN_MIGRATIONS = frozenset(m.version for m in load_migrations())
