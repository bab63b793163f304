"""The command line against a real database and a real service: a database that is
not migrated is one line and exit 2 for every command that reads it (verify keeps
exit 1 for tampering), and `fuse` and `replay` get through a service that wants
API keys."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from service.domain.events import RunFailed
from service.settings import Settings
from service.store import NO_STREAM, EventStore, NewEvent
from tests.conftest import RunningSimulator, TestDatabase
from tests.integration.conftest import served
from tests.unit.test_cli_errors import one_error_line, run_cli

NOT_MIGRATED = "the database is not migrated: run `fusion-ledger migrate`"


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
    empty_schema_url: str, command: list[str]
) -> None:
    done = await asyncio.to_thread(run_cli, "--database-url", empty_schema_url, *command)
    assert done.returncode == 2, done.stderr
    assert one_error_line(done.stderr) == NOT_MIGRATED
    # and nothing was made meanwhile: no table, no rebuild's shadow schema
    admin = await asyncpg.connect(empty_schema_url)
    try:
        made = await admin.fetch(
            "SELECT nspname AS name FROM pg_namespace WHERE starts_with(nspname, $1 || '__') "
            "UNION ALL SELECT tablename FROM pg_tables WHERE schemaname = $1",
            await admin.fetchval("SELECT current_schema()"),
        )
    finally:
        await admin.close()
    assert made == []


@pytest.mark.parametrize(
    "command",
    [
        ["verify"],
        ["stats", "failures"],
        ["keys", "create", "--tenant", "t", "--scopes", "fuse"],
        ["projections", "rebuild", "runs"],
    ],
    ids=" ".join,
)
async def test_a_role_without_grants_is_one_line_and_exit_2(
    ungranted_url: str, command: list[str]
) -> None:
    # exit 2, "could not check", never verify's exit 1 ("tampered")
    done = await asyncio.to_thread(run_cli, "--database-url", ungranted_url, *command)
    assert done.returncode == 2, done.stderr
    assert "lacks the grants" in one_error_line(done.stderr)


async def test_mistakes_against_a_migrated_database_are_one_line_and_exit_2(
    database: TestDatabase, tmp_path: Path
) -> None:
    # exit 1 is route explain's "not reproduced"; a missing key or run is a mistake
    for command, says in (
        (["keys", "revoke", "k-none"], "no active key k-none"),
        (["route", "explain", "00000000-0000-4000-8000-000000000001"], "no run"),
        (["digest", "-o", str(tmp_path / "missing" / "d.json")], "cannot write the digest"),
    ):
        done = await asyncio.to_thread(run_cli, "--database-url", database.url, *command)
        assert done.returncode == 2, (command, done.stderr)
        assert says in one_error_line(done.stderr)


async def test_a_key_id_is_shown_whole_at_80_columns(database: TestDatabase) -> None:
    # keys revoke needs it; the table used to cut it to "f61943345a…"
    args = ["--database-url", database.url, "keys"]
    made = await asyncio.to_thread(
        run_cli, *args, "create", "--tenant", "a-rather-long-tenant", "--name", "ci", "--json"
    )
    assert made.returncode == 0, made.stderr
    key_id = json.loads(made.stdout)["key_id"]
    listed = await asyncio.to_thread(run_cli, *args, "list")  # COLUMNS=80
    assert listed.returncode == 0, listed.stderr
    assert key_id in listed.stdout


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


@pytest.fixture
def secured_url(database: TestDatabase, simulator: RunningSimulator) -> Iterator[str]:
    """The service with API keys required (as `serve` runs it), on a real port."""
    settings = Settings(
        database_url=database.url, pool_min_size=1, pool_max_size=5, auth_required=True
    )
    with served(settings, simulator.config()) as url:
        yield url


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


async def test_a_key_without_a_needed_scope_is_refused_before_anything_is_paid_for(
    database: TestDatabase, secured_url: str, tmp_path: Path
) -> None:
    # replay needs `read` to follow its batch, eval `label` to grade: each found out
    # only after the batch ran or the fusions were paid for
    created = await asyncio.to_thread(
        run_cli, "--database-url", database.url,
        "keys", "create", "--tenant", "default", "--scopes", "fuse", "--json",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    key = {"FUSION_LEDGER_API_KEY": json.loads(created.stdout)["key"]}
    dataset = tmp_path / "d.jsonl"
    dataset.write_text(json.dumps({"prompt": "2+2?", "category": "arithmetic", "expected": "4"}))
    for command, scope in (
        (["replay", "--judge", "vote", "--since", "1d"], "read"),
        (["eval", str(dataset)], "label"),
    ):
        done = await asyncio.to_thread(run_cli, *command, "--url", secured_url, env=key)
        assert done.returncode == 2, done.stderr
        assert f"lacks the '{scope}' scope" in one_error_line(done.stderr)
    conn = await asyncpg.connect(database.url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM events") == 0  # no batch, no run
    finally:
        await conn.close()
