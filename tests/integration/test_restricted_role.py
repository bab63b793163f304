"""The service can start as a role that may not create tables, once migrated."""

from __future__ import annotations

import uuid
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from service.store.database import connect
from service.store.migrations import migrate
from tests.conftest import TestDatabase


async def test_up_to_date_database_needs_no_ddl(database: TestDatabase) -> None:
    role = f"fl_ro_{uuid.uuid4().hex[:8]}"
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
        conn = await connect(urlunsplit(parts._replace(netloc=netloc)))
        try:
            assert await migrate(conn) == []
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute("CREATE TABLE nope (x int)")
        finally:
            await conn.close()
    finally:
        await admin.execute(f'DROP OWNED BY "{role}"')
        await admin.execute(f'DROP ROLE "{role}"')
        await admin.close()
