"""What the database benchmarks share: a migrated scratch schema that is dropped
afterwards, and the ``--database-url`` option (default: the tests' database)."""

from __future__ import annotations

import argparse
import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlencode, urlsplit, urlunsplit

import asyncpg

from service.store.database import connect
from service.store.migrations import migrate


def with_search_path(url: str, schema: str) -> str:
    """The URL with ``search_path`` set to the schema (asyncpg server settings)."""
    parts = urlsplit(url)
    query = "&".join(q for q in [parts.query, urlencode({"search_path": schema})] if q)
    return urlunsplit(parts._replace(query=query))


@contextlib.asynccontextmanager
async def scratch_schema(url: str, extra_sql: str = "") -> AsyncIterator[tuple[str, str]]:
    """A fresh schema ``bench_<random>`` with every migration applied (then
    ``extra_sql``): yields its URL and the server version; dropped on exit."""
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(url)
    await admin.execute(f'CREATE SCHEMA "{schema}"')
    try:
        scoped = with_search_path(url, schema)
        conn = await connect(scoped)
        try:
            await migrate(conn)
            if extra_sql:
                await conn.execute(extra_sql)
            server = str(await conn.fetchval("SHOW server_version"))
        finally:
            await conn.close()
        yield scoped, server
    finally:
        await admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await admin.close()


def add_database_url(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database-url",
        default=os.environ.get("FUSION_LEDGER_TEST_DATABASE_URL") or os.environ.get("DATABASE_URL"),
        help="default: $FUSION_LEDGER_TEST_DATABASE_URL, else $DATABASE_URL",
    )


def check_database_url(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not args.database_url:
        parser.error("no database: pass --database-url or set FUSION_LEDGER_TEST_DATABASE_URL")
