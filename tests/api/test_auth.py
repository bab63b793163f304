"""API keys: 401 without or with a revoked key, 403 without the scope, 404 across
tenants, 429 past the rate; every event carries the key's tenant."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from litestar.testing import AsyncTestClient

from service.app import create_app
from service.auth import create_key, revoke_key
from service.config import Config
from service.settings import Settings
from tests.api.conftest import MockProviders
from tests.conftest import TestDatabase


@pytest.fixture
async def secured(
    database: TestDatabase, config: Config, providers: MockProviders
) -> AsyncIterator[AsyncTestClient[Any]]:
    http = httpx.MockTransport(providers.handle)
    settings = Settings(
        database_url=database.url, pool_min_size=1, pool_max_size=5, auth_required=True
    )
    app = create_app(settings, config, http_transport=http, sweeper=False, run_migrations=False)
    async with AsyncTestClient(app=app) as client:
        yield client
    await http.aclose()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_keys_scopes_and_tenants(secured: AsyncTestClient[Any], pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        _, fuser_a = await create_key(conn, "tenant-a", ["fuse", "read"])
        _, reader_a = await create_key(conn, "tenant-a", ["read"])
        _, fuser_b = await create_key(conn, "tenant-b", ["fuse", "read"])
        revoked_id, revoked = await create_key(conn, "tenant-a", ["fuse", "read"])
        assert await revoke_key(conn, revoked_id)
    body = {"prompt": "2+2?"}

    missing = await secured.post("/v1/fusions", json=body)
    assert missing.status_code == 401
    assert missing.headers["content-type"].startswith("application/problem+json")
    assert (
        await secured.post("/v1/fusions", json=body, headers=bearer("fl_nope"))
    ).status_code == 401
    assert (
        await secured.post("/v1/fusions", json=body, headers=bearer(revoked))
    ).status_code == 401
    tampered = fuser_a[:-2] + ("AA" if not fuser_a.endswith("AA") else "BB")
    assert (
        await secured.post("/v1/fusions", json=body, headers=bearer(tampered))
    ).status_code == 401
    forbidden = await secured.post("/v1/fusions", json=body, headers=bearer(reader_a))
    assert forbidden.status_code == 403 and "fuse" in forbidden.json()["detail"]
    assert await pool.fetchval("SELECT count(*) FROM events") == 0

    made = await secured.post("/v1/fusions", json=body, headers=bearer(fuser_a))
    assert made.status_code == 200, made.text
    run_id = made.json()["run_id"]
    tenants = {
        json.loads(r["metadata"])["tenant"]
        for r in await pool.fetch(
            "SELECT metadata FROM events WHERE stream_id = $1", f"run-{run_id}"
        )
    }
    assert tenants == {"tenant-a"}

    assert (await secured.get(f"/v1/runs/{run_id}", headers=bearer(reader_a))).status_code == 200
    other = await secured.get(f"/v1/runs/{run_id}", headers=bearer(fuser_b))
    assert other.status_code == 404
    # exactly what a run that does not exist answers: nothing is learnt
    absent = "00000000-0000-0000-0000-000000000001"
    nothing = await secured.get(f"/v1/runs/{absent}", headers=bearer(fuser_b))
    assert other.json() == {
        **nothing.json(),
        "detail": nothing.json()["detail"].replace(absent, run_id),
    }
    listing = (await secured.get("/v1/runs", headers=bearer(fuser_b))).json()
    assert listing["runs"] == []
    mine = (await secured.get("/v1/runs", headers=bearer(reader_a))).json()
    assert [r["run_id"] for r in mine["runs"]] == [run_id]
    assert (await secured.get("/healthz")).status_code == 200


async def test_rate_limit_per_key(secured: AsyncTestClient[Any], pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        _, slow = await create_key(conn, "t", ["read"], rate_per_minute=6)
        _, other = await create_key(conn, "t", ["read"], rate_per_minute=6)
    assert (await secured.get("/v1/runs", headers=bearer(slow))).status_code == 200
    limited = await secured.get("/v1/runs", headers=bearer(slow))
    assert limited.status_code == 429
    assert int(limited.headers["retry-after"]) >= 1
    assert (await secured.get("/v1/runs", headers=bearer(other))).status_code == 200
    # One bucket per key, whatever the route (it was one per key and route).
    assert (await secured.get("/v1/profiles", headers=bearer(slow))).status_code == 429
    assert (await secured.get("/v1/stats/judges", headers=bearer(slow))).status_code == 429
