"""Fixtures the integration tests share: the API on a real port, for CLI commands that
talk to it over HTTP."""

from __future__ import annotations

import contextlib
import socket
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
import uvicorn

from service.app import create_app
from service.config import Config
from service.settings import Settings
from tests.conftest import RunningSimulator, TestDatabase, with_search_path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def served(settings: Settings, config: Config) -> Iterator[str]:
    """The app for these settings served by uvicorn in a thread; its base URL."""
    app = create_app(settings, config, sweeper=False, run_migrations=False)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, name="service-for-cli", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            threading.Event().wait(0.05)
        else:
            raise RuntimeError(f"the service at {url} did not become healthy")
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=20)


@pytest.fixture
def service_url(database: TestDatabase, simulator: RunningSimulator) -> Iterator[str]:
    """The service (against the simulator) on a real port; its base URL."""
    settings = Settings(database_url=database.url, pool_min_size=1, pool_max_size=5)
    with served(settings, simulator.config()) as url:
        yield url


@pytest.fixture
async def empty_schema_url(postgres_url: str) -> AsyncIterator[str]:
    """The URL of an empty schema (nothing migrated), dropped afterwards."""
    schema = f"m_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(postgres_url)
    await admin.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield with_search_path(postgres_url, schema)
    finally:
        await admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await admin.close()


@pytest.fixture
async def ungranted_url(database: TestDatabase) -> AsyncIterator[str]:
    """The URL of a role that may log in and see that the schema is migrated (the
    read-only check `serve` makes first), and nothing more."""
    role = f"fl_none_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(database.admin_url)
    try:
        await admin.execute(f'CREATE ROLE "{role}" LOGIN')
    except asyncpg.InsufficientPrivilegeError:
        await admin.close()
        pytest.skip("this server's test role may not create roles")
    try:
        await admin.execute(f'GRANT USAGE ON SCHEMA "{database.schema}" TO "{role}"')
        await admin.execute(f'GRANT SELECT ON "{database.schema}".schema_migrations TO "{role}"')
        parts = urlsplit(database.url)
        netloc = f"{role}@{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")
        yield urlunsplit(parts._replace(netloc=netloc))
    finally:
        await admin.execute(f'DROP OWNED BY "{role}"')
        await admin.execute(f'DROP ROLE "{role}"')
        await admin.close()
