"""Apply schema/migrations/*.sql in order, once each, with a recorded checksum.

Safe to run twice and from several processes at once (an advisory lock serialises
migrators); refuses to run when an applied migration's file has changed.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from service.store.database import Connection

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

CREATE_LEDGER_SQL = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""
# One lock per schema, so isolated test schemas migrate independently.
LOCK_SQL = "SELECT pg_advisory_lock(hashtext('fusion_ledger.migrate.' || current_schema()))"
UNLOCK_SQL = "SELECT pg_advisory_unlock(hashtext('fusion_ledger.migrate.' || current_schema()))"
LEDGER_EXISTS_SQL = "SELECT to_regclass('schema_migrations') IS NOT NULL"
APPLIED_SQL = "SELECT version, name, checksum FROM schema_migrations ORDER BY version"
RECORD_SQL = "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)"


class MigrationError(Exception):
    """The database and the migration files disagree; nothing was applied."""


@dataclass(frozen=True, slots=True)
class Migration:
    """One numbered SQL file."""

    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        """sha256 of the file's text."""
        return hashlib.sha256(self.sql.encode()).hexdigest()


def schema_dir() -> Path:
    """schema/ in a source checkout, else the copy packaged inside the wheel."""
    source = Path(__file__).resolve().parents[2] / "schema"
    return source if source.is_dir() else Path(__file__).resolve().parents[1] / "_schema"


def load_migrations(directory: Path | None = None) -> list[Migration]:
    """The migration files, in version order."""
    folder = directory or schema_dir() / "migrations"
    found: list[Migration] = []
    for path in sorted(folder.glob("*.sql")):
        match = _NAME.match(path.name)
        if match is None:
            raise MigrationError(f"bad migration file name {path.name!r} (want NNNN_name.sql)")
        found.append(Migration(int(match[1]), match[2], path.read_text()))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"duplicate migration numbers in {folder}")
    return found


async def is_up_to_date(
    conn: Connection, wanted: list[Migration], *, newer_ok: bool = False
) -> bool:
    """True when every migration is applied unchanged; reads only (no DDL, no lock),
    so a service running as a role without CREATE can start on a migrated database.

    ``newer_ok``: migrations of a newer release may be applied too. Each keeps the
    release before it serving (ops/k8s/README.md), so that release's API pods restarting
    during a rollout, or brought back by a rollback, start on the migrated database.
    What writes read models (worker, rebuild) keeps the strict check: by an older
    release's rules it would undo the newer one's rebuild."""
    if not await conn.fetchval(LEDGER_EXISTS_SQL):
        return False
    applied = {r["version"]: r["checksum"] for r in await conn.fetch(APPLIED_SQL)}
    known = all(applied.get(m.version) == m.checksum for m in wanted)
    return known and (newer_ok or set(applied) <= {m.version for m in wanted})


async def migrate(
    conn: Connection, migrations: list[Migration] | None = None, *, newer_ok: bool = False
) -> list[str]:
    """Apply pending migrations; returns the names applied (empty when up to date).
    ``newer_ok`` as for is_up_to_date (the API's start); else a newer release's
    migrations are refused ("upgrade the code")."""
    wanted = migrations if migrations is not None else load_migrations()
    if await is_up_to_date(conn, wanted, newer_ok=newer_ok):
        return []
    await conn.execute(LOCK_SQL)
    try:
        await conn.execute(CREATE_LEDGER_SQL)
        applied = {r["version"]: r for r in await conn.fetch(APPLIED_SQL)}
        known = {m.version for m in wanted}
        unknown = sorted(set(applied) - known)
        if unknown:
            raise MigrationError(
                f"database has migrations this code does not know: {unknown}; upgrade the code"
            )
        for m in wanted:
            row = applied.get(m.version)
            if row is not None and row["checksum"] != m.checksum:
                raise MigrationError(
                    f"migration {m.version:04d}_{m.name}.sql changed after it was applied "
                    f"(recorded checksum {row['checksum'][:12]}, file {m.checksum[:12]}); "
                    "write a new migration instead of editing an applied one"
                )
        done: list[str] = []
        for m in wanted:
            if m.version in applied:
                continue
            async with conn.transaction():
                await conn.execute(m.sql)
                await conn.execute(RECORD_SQL, m.version, m.name, m.checksum)
            done.append(f"{m.version:04d}_{m.name}")
        return done
    finally:
        await conn.execute(UNLOCK_SQL)
