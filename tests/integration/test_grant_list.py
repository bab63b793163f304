"""The grant list the operators apply by hand (ops/runbook.md) and the Kubernetes
migrate Job applies (ops/k8s/40-migrate-job.yaml) is all the service's role needs,
and it still may not write the log except through the append functions."""

from __future__ import annotations

import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from service.domain.events import RunFailed
from service.projections import runner
from service.projections.definitions import PROJECTIONS
from service.store import NO_STREAM, EventStore, NewEvent
from service.store.bulk_append import append_new_streams
from service.store.database import create_pool
from tests.conftest import TestDatabase

JOB = Path(__file__).parents[2] / "ops" / "k8s" / "40-migrate-job.yaml"


def grant_list() -> list[str]:
    """The ConfigMap's grants.sql, statement by statement."""
    lines = JOB.read_text().split("grants.sql: |\n", 1)[1].split("\n---", 1)[0].splitlines()
    sql = "\n".join(line.strip() for line in lines if not line.strip().startswith("--"))
    return [s.strip() for s in sql.split(";") if s.strip()]


def test_the_runbook_lists_the_same_grants() -> None:
    runbook = " ".join((Path(__file__).parents[2] / "ops" / "runbook.md").read_text().split())
    for statement in grant_list():
        assert " ".join(statement.split()) + ";" in runbook, statement


async def test_the_grant_list_is_what_the_service_needs(database: TestDatabase) -> None:
    suffix = uuid.uuid4().hex[:8]
    group, login = f"fl_grants_{suffix}", f"fl_login_{suffix}"
    admin = await asyncpg.connect(database.admin_url)
    try:
        try:
            await admin.execute(f'CREATE ROLE "{group}" NOLOGIN')
        except asyncpg.InsufficientPrivilegeError:
            pytest.skip("this server's test role may not create roles")
        await admin.execute(f'CREATE ROLE "{login}" LOGIN IN ROLE "{group}"')
        await admin.execute(f'SET search_path = "{database.schema}"')
        for statement in grant_list():
            statement = statement.replace("fusion_ledger_app", f'"{group}"')
            await admin.execute(statement.replace("SCHEMA public", f'SCHEMA "{database.schema}"'))
        parts = urlsplit(database.url)
        netloc = f"{login}@{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")
        pool = await create_pool(urlunsplit(parts._replace(netloc=netloc)), 1, 4)
        try:
            store = EventStore(pool)
            failed = RunFailed(reason="abandoned", message="x")
            await store.append_to_stream(
                f"run-{uuid.uuid4()}", [NewEvent(failed, {"tenant": "t"})], NO_STREAM
            )
            replay = [(f"replay-{uuid.uuid4()}", [NewEvent(failed, {"tenant": "t"})])]
            assert await append_new_streams(store, replay) == 1
            applied = await runner.run_until_caught_up(pool)
            assert applied == 2 * len(PROJECTIONS)
            await pool.fetchval("SELECT count(*) FROM api_keys")
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await pool.execute(
                    "INSERT INTO streams (stream_id, category, version, last_hash)"
                    " VALUES ('run-x', 'run', 1, '')"
                )
        finally:
            await pool.close()
    finally:
        await admin.execute(f'DROP OWNED BY "{login}"')
        await admin.execute(f'DROP ROLE IF EXISTS "{login}"')
        await admin.execute(f'DROP OWNED BY "{group}"')
        await admin.execute(f'DROP ROLE IF EXISTS "{group}"')
        await admin.close()


async def test_a_role_without_the_grants_cannot_append(ungranted_url: str) -> None:
    # The append functions run as their owner: were they still everyone's to call (the
    # default for functions), any login with USAGE on the schema could write the log.
    conn = await asyncpg.connect(ungranted_url)
    try:
        for call in (
            "SELECT append_to_stream('run-x', 0, ARRAY[gen_random_uuid()], ARRAY['run.failed'],"
            " ARRAY[1::smallint], ARRAY['{}'::jsonb], ARRAY['{}'::jsonb])",
            "SELECT append_new_streams('[]'::jsonb)",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(call)
    finally:
        await conn.close()
