"""Liveness and readiness."""

from __future__ import annotations

import asyncio
from typing import Any

from litestar import Response, get
from litestar.di import NamedDependency, Provide
from litestar.openapi.datastructures import ResponseSpec

from service.api.deps import Services, provide_services
from service.store.migrations import is_up_to_date, load_migrations

# How long readiness waits for the database: under the probe's own timeout (3 s,
# ops/k8s/50-api.yaml), so the probe reads an answer that says why, not a timeout.
READY_WITHIN_S = 2.0
# How long one check may take before its connection is closed and the check fails: a
# check stuck on a connection that will never answer (half-open after a failover,
# until the kernel gives up: minutes) would keep every probe at 503 meanwhile.
CHECK_GIVES_UP_S = 10.0


@get("/healthz", summary="Liveness")
async def healthz() -> dict[str, str]:
    """The process answers."""
    return {"status": "ok"}


@get(
    "/readyz",
    dependencies={"services": Provide(provide_services, sync_to_thread=False)},
    summary="Readiness",
    responses={503: ResponseSpec(dict[str, Any], description="Not ready: the body says why")},
)
async def readyz(services: NamedDependency[Services]) -> Response[dict[str, Any]]:
    """The database answers within READY_WITHIN_S and the schema holds every migration
    this code knows, unchanged (a newer release's too is fine: the API's start-up check,
    reused)."""
    check = _database_check(services)
    await asyncio.wait([check], timeout=READY_WITHIN_S)  # never cancels the check
    if not check.done():
        detail = f"the database did not answer within {READY_WITHIN_S:g} s"
        return Response({"status": "unavailable", "detail": detail}, status_code=503)
    if (exc := check.exception()) is not None:  # any database failure means not ready
        return Response({"status": "unavailable", "detail": type(exc).__name__}, status_code=503)
    migrated, version = check.result()
    if not migrated:
        return Response({"status": "not migrated", "schema_version": version}, status_code=503)
    return Response({"status": "ready", "schema_version": version}, status_code=200)


def _database_check(services: Services) -> asyncio.Task[tuple[bool, int | None]]:
    """The check in flight, else a new one. One at a time: a database that hangs (a
    network partition that drops packets, a lock, a full pool) holds one check and its
    connection, not one per probe until the pool is exhausted. Probes do not cancel it
    when they give up waiting: cancelling a query on a hung connection waits on that
    connection too."""
    check: asyncio.Task[tuple[bool, int | None]] | None = services.extras.get("readiness")
    if check is None or check.done():
        check = asyncio.create_task(_migrated(services))
        check.add_done_callback(_retrieve)
        services.extras["readiness"] = check
    return check


async def _migrated(services: Services) -> tuple[bool, int | None]:
    async with services.store.pool.acquire() as conn:
        try:
            async with asyncio.timeout(CHECK_GIVES_UP_S):
                migrated = await is_up_to_date(conn, MIGRATIONS, newer_ok=True)
                version: int | None = await conn.fetchval(
                    "SELECT max(version) FROM schema_migrations"
                )
        except TimeoutError:
            conn.terminate()  # at once: giving it back would wait on it
            raise
    return migrated, version


def _retrieve(check: asyncio.Task[Any]) -> None:
    """Read a failure no probe waited for (asyncio would log it as never retrieved)."""
    if not check.cancelled():
        check.exception()


MIGRATIONS = load_migrations()  # read once: the files do not change under a process
