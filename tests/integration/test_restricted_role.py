"""The service can start as a role that may not create tables, once migrated."""

from __future__ import annotations

import asyncpg
import pytest

from service.store.database import connect
from service.store.migrations import migrate


async def test_up_to_date_database_needs_no_ddl(ungranted_url: str) -> None:
    conn = await connect(ungranted_url)
    try:
        assert await migrate(conn) == []
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("CREATE TABLE nope (x int)")
    finally:
        await conn.close()
