"""The command line against a real database and a real service: a database that is
not migrated is one line and exit 2 for every command that reads it (verify keeps
exit 1 for tampering), and `fuse` and `replay` get through a service that wants
API keys."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import uuid
from collections.abc import AsyncIterator, Iterator

import asyncpg
import httpx
import pytest
import uvicorn

from service.app import create_app
from service.domain.events import RunFailed
from service.settings import Settings
from service.store import NO_STREAM, EventStore, NewEvent
from tests.conftest import RunningSimulator, TestDatabase, with_search_path
from tests.unit.test_cli_errors import one_error_line, run_cli

NOT_MIGRATED = "the database is not migrated: run `fusion-ledger migrate`"


@pytest.fixture
async def unmigrated(postgres_url: str) -> AsyncIterator[str]:
    """The URL of an empty schema: a database nobody migrated."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(postgres_url)
    await admin.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield with_search_path(postgres_url, schema)
    finally:
        await admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await admin.close()


@pytest.mark.parametrize(
    "command",
    [
        ["verify"],
        ["digest"],
        ["projections", "status"],
        ["projections", "rebuild"],
        ["stats", "failures"],
        ["profile"],
        ["keys", "list"],
        ["keys", "revoke", "k1"],
        ["route", "explain", "00000000-0000-4000-8000-000000000001"],
        ["worker", "--once"],
    ],
    ids=" ".join,
)
async def test_an_unmigrated_database_is_one_line_and_exit_2(
    unmigrated: str, command: list[str]
) -> None:
    done = await asyncio.to_thread(run_cli, "--database-url", unmigrated, *command)
    assert done.returncode == 2, done.stderr
    assert one_error_line(done.stderr) == NOT_MIGRATED
    # and nothing was made meanwhile: no table, no rebuild's shadow schema
    admin = await asyncpg.connect(unmigrated)
    try:
        made = await admin.fetch(
            "SELECT nspname AS name FROM pg_namespace WHERE starts_with(nspname, $1 || '__') "
            "UNION ALL SELECT tablename FROM pg_tables WHERE schemaname = $1",
            await admin.fetchval("SELECT current_schema()"),
        )
    finally:
        await admin.close()
    assert made == []


async def test_verify_still_exits_1_for_tampering_only(
    database: TestDatabase, store: EventStore
) -> None:
    stream = f"run-{uuid.uuid4()}"
    events = [NewEvent(RunFailed(reason="timeout", message=f"passed ({i})")) for i in range(3)]
    await store.append_to_stream(stream, events, NO_STREAM)

    intact = await asyncio.to_thread(run_cli, "--database-url", database.url, "verify")
    assert intact.returncode == 0, intact.stderr
    assert "OK" in intact.stdout

    conn = await asyncpg.connect(database.url)
    try:
        if not await conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"):
            pytest.skip("tampering needs a superuser connection")
        await conn.execute("ALTER TABLE events DISABLE TRIGGER ALL")
        await conn.execute(
            "UPDATE events SET data = jsonb_set(data, '{message}', '\"passes (1)\"') "
            "WHERE event_id = $1",
            events[1].event_id,
        )
    finally:
        await conn.close()
    tampered = await asyncio.to_thread(run_cli, "--database-url", database.url, "verify")
    assert tampered.returncode == 1, tampered.stderr
    assert "TAMPERED" in tampered.stdout


# --- a service that wants keys ------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def secured_url(database: TestDatabase, simulator: RunningSimulator) -> Iterator[str]:
    """The service with API keys required (as `serve` runs it), on a real port."""
    settings = Settings(
        database_url=database.url, pool_min_size=1, pool_max_size=5, auth_required=True
    )
    app = create_app(settings, simulator.config(), sweeper=False, run_migrations=False)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, name="secured-service", daemon=True)
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


async def test_fuse_and_replay_get_through_with_an_api_key(
    database: TestDatabase, secured_url: str
) -> None:
    created = await asyncio.to_thread(
        run_cli, "--database-url", database.url,
        "keys", "create", "--tenant", "default", "--scopes", "fuse,read", "--json",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    key = json.loads(created.stdout)["key"]
    prompt = "What is 17 + 25 * 2? Reply with the number."

    refused = await asyncio.to_thread(run_cli, "fuse", prompt, "--url", secured_url)
    assert refused.returncode == 2
    assert one_error_line(refused.stderr).startswith("Unauthorized")

    fused = await asyncio.to_thread(
        run_cli, "fuse", prompt, "--url", secured_url, "--api-key", key, "--json"
    )
    assert fused.returncode == 0, fused.stderr
    run_id = json.loads(fused.stdout)["run_id"]

    replayed = await asyncio.to_thread(
        run_cli, "replay", "--url", secured_url, "--run", run_id, "--judge", "vote", "--json",
        env={"FUSION_LEDGER_API_KEY": key},
    )  # fmt: skip
    assert replayed.returncode == 0, replayed.stderr
    assert json.loads(replayed.stdout)["source_run_id"] == run_id
