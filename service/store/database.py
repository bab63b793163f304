"""Opening connections and pools, with the jsonb codec the store relies on."""

from __future__ import annotations

import asyncpg
from asyncpg.pool import PoolConnectionProxy

# A plain connection or one borrowed from the pool.
Connection = asyncpg.Connection | PoolConnectionProxy


async def _init_connection(conn: asyncpg.Connection) -> None:
    # jsonb stays text both ways: the store encodes with msgspec, and verify needs
    # jsonb's own text form byte for byte.
    await conn.set_type_codec(
        "jsonb", encoder=lambda s: s, decoder=lambda s: s, schema="pg_catalog", format="text"
    )


async def connect(dsn: str) -> asyncpg.Connection:
    """One connection (CLI commands, migrations)."""
    conn: asyncpg.Connection = await asyncpg.connect(dsn)
    await _init_connection(conn)
    return conn


async def create_pool(dsn: str, min_size: int = 2, max_size: int = 10) -> asyncpg.Pool:
    """The process's one pool."""
    pool = await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, init=_init_connection
    )
    assert pool is not None
    return pool
