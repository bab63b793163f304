"""Migrations: applied once each, safe to repeat and to race, refused when files drift."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sys
from pathlib import Path

import asyncpg
import pytest

from service.store.database import connect
from service.store.migrations import (
    Migration,
    MigrationError,
    is_up_to_date,
    load_migrations,
    migrate,
)

CLI = Path(sys.executable).with_name("fusion-ledger")
ALL = [f"{m.version:04d}_{m.name}" for m in load_migrations()]


async def recorded(conn: asyncpg.Connection) -> list[tuple[int, str]]:
    rows = await conn.fetch("SELECT version, checksum FROM schema_migrations ORDER BY version")
    return [(r["version"], r["checksum"]) for r in rows]


async def table_exists(conn: asyncpg.Connection, name: str) -> bool:
    return bool(await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", name))


def extra(version: int, sql: str) -> Migration:
    return Migration(version, f"extra_{version}", sql)


async def test_migrate_twice_applies_once(empty_schema_url: str) -> None:
    conn = await connect(empty_schema_url)
    try:
        assert ALL, "there are migration files"
        assert await migrate(conn) == ALL
        before = await recorded(conn)
        assert await migrate(conn) == []
        assert await recorded(conn) == before
        assert [v for v, _ in before] == [m.version for m in load_migrations()]
        assert await table_exists(conn, "events")
    finally:
        await conn.close()


async def test_concurrent_migrators_both_succeed_and_apply_once(empty_schema_url: str) -> None:
    first, second = await connect(empty_schema_url), await connect(empty_schema_url)
    try:
        results = await asyncio.gather(migrate(first), migrate(second))
        assert sorted(results[0] + results[1]) == ALL, "each migration applied exactly once"
        assert len(await recorded(first)) == len(ALL)
    finally:
        await first.close()
        await second.close()


async def test_changed_applied_migration_is_refused_and_nothing_applied(
    empty_schema_url: str,
) -> None:
    conn = await connect(empty_schema_url)
    try:
        await migrate(conn)
        before = await recorded(conn)
        edited = [
            dataclasses.replace(m, sql=m.sql + "\n-- edited after it was applied\n")
            if i == 0
            else m
            for i, m in enumerate(load_migrations())
        ]
        pending = extra(9000, "CREATE TABLE should_not_exist (id int)")
        with pytest.raises(MigrationError, match="changed after it was applied"):
            await migrate(conn, [*edited, pending])
        assert await recorded(conn) == before
        assert not await table_exists(conn, "should_not_exist")
        # The advisory lock was released: a correct run goes through at once.
        assert await asyncio.wait_for(migrate(conn, [*load_migrations(), pending]), 30) == [
            "9000_extra_9000"
        ]
        assert await table_exists(conn, "should_not_exist")
    finally:
        await conn.close()


async def test_unknown_applied_version_is_refused(empty_schema_url: str) -> None:
    known = load_migrations()
    future = extra(9001, "CREATE TABLE from_the_future (id int)")
    conn = await connect(empty_schema_url)
    try:
        # Applied by newer code than ours, and one of ours is still pending.
        await migrate(conn, [*known[:-1], future])
        before = await recorded(conn)
        with pytest.raises(MigrationError, match="does not know"):
            await migrate(conn, known)
        assert await recorded(conn) == before
        assert known[-1].version not in [v for v, _ in before]
    finally:
        await conn.close()


async def test_failing_migration_leaves_nothing_behind(empty_schema_url: str) -> None:
    broken = extra(9002, "CREATE TABLE half_done (id int);\nSELECT * FROM no_such_table;")
    conn = await connect(empty_schema_url)
    try:
        with pytest.raises(asyncpg.PostgresError):
            await migrate(conn, [*load_migrations(), broken])
        # The good migrations before it stay applied; the broken one left no trace.
        assert [v for v, _ in await recorded(conn)] == [m.version for m in load_migrations()]
        assert not await table_exists(conn, "half_done")
        assert await migrate(conn) == []
    finally:
        await conn.close()


async def test_cli_migrate_twice(empty_schema_url: str) -> None:
    async def run() -> tuple[int, str]:
        command = [str(CLI)] if CLI.exists() else [sys.executable, "-m", "service"]
        process = await asyncio.create_subprocess_exec(
            *command,
            "--database-url",
            empty_schema_url,
            "migrate",
            "--json",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={k: v for k, v in os.environ.items() if k != "DATABASE_URL"},
        )
        out, err = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode == 0, err.decode()
        return process.returncode, out.decode()

    first, second = await asyncio.gather(run(), run())
    applied = json.loads(first[1])["applied"] + json.loads(second[1])["applied"]
    assert sorted(applied) == ALL
    _, third = await run()
    assert json.loads(third)["applied"] == []


async def test_co_failure_pairs_move_to_code_point_order_and_merge(empty_schema_url: str) -> None:
    # Rows a non-C collation ordered the other way (0036): moved, and merged with the
    # row the code-point ordering has written since.
    conn = await connect(empty_schema_url)
    try:
        await migrate(conn)
        await conn.executemany(
            "INSERT INTO co_failure VALUES ('t', 'math', $1, $2, $3, $4, $5)",
            [
                ("sim/model-b", "sim/Model-c", 1, 2, 3),  # the old order (en_US)
                ("sim/Model-c", "sim/model-b", 10, 20, 30),  # the code-point order
                ("sim/model-x", "sim/Model-y", 4, 5, 6),  # old order, no twin
                ("a", "b", 7, 8, 9),  # already in order
            ],
        )
        fix = next(m for m in load_migrations() if m.version == 36)
        await conn.execute(fix.sql)
        rows = await conn.fetch(
            "SELECT model_a, model_b, both_wrong, one_wrong, both_right FROM co_failure"
            ' ORDER BY model_a COLLATE "C"'
        )
    finally:
        await conn.close()
    assert [tuple(r) for r in rows] == [
        ("a", "b", 7, 8, 9),
        ("sim/Model-c", "sim/model-b", 11, 22, 33),
        ("sim/Model-y", "sim/model-x", 4, 5, 6),
    ]


async def test_call_totals_start_from_the_daily_rows(empty_schema_url: str) -> None:
    # 0039 fills the day-less totals from the daily rows a worker kept before it.
    conn = await connect(empty_schema_url)
    try:
        await migrate(conn)
        await conn.executemany(
            "INSERT INTO model_call_stats"
            " VALUES ('t', 'm', 'math', $1::text::date, $2, 3, $3, 10, 2, 5, 0.5)",
            [("2026-11-01", "ok", 4), ("2026-11-02", "ok", 1), ("2026-11-02", "timeout", 2)],
        )
        await conn.execute("DROP TABLE model_call_totals; DROP INDEX model_call_stats_by_day")
        totals = next(m for m in load_migrations() if m.version == 39)
        await conn.execute(totals.sql)
        rows = await conn.fetch(
            "SELECT outcome, latency_bucket, calls, latency_ms, input_tokens, output_tokens,"
            " cost_usd FROM model_call_totals ORDER BY outcome"
        )
    finally:
        await conn.close()
    assert [tuple(r) for r in rows] == [
        ("ok", 3, 5, 20.0, 4, 10, 1.0),
        ("timeout", 3, 2, 10.0, 2, 5, 0.5),
    ]


async def test_code_of_the_release_before_starts_on_a_newer_schema(empty_schema_url: str) -> None:
    # A pod of the previous release restarting mid-rollout, or brought back by a
    # rollback: every migration it knows is applied, and newer ones too. It exited
    # with "not migrated" (and a rollback after `migrate` could not work).
    known = load_migrations()
    future = extra(9003, "CREATE TABLE from_the_next_release (id int)")
    conn = await connect(empty_schema_url)
    try:
        await migrate(conn, [*known, future])
        assert await is_up_to_date(conn, known, newer_ok=True)
        assert await migrate(conn, known, newer_ok=True) == []
        # What writes read models (worker, rebuild) and `migrate` itself stay strict.
        assert not await is_up_to_date(conn, known)
        with pytest.raises(MigrationError, match="does not know"):
            await migrate(conn, known)
    finally:
        await conn.close()
