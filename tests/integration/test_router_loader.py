"""The read-model loader reads what the model_error_profile tables hold, summed over
tenants (the projections fill them; tests/integration/test_projections.py proves the
projection and the router's in-memory fold agree)."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from service.domain.profiles import ProfileBuilder, ProfileSnapshot
from service.domain.routing import PoolModel, RouteQuery, route
from service.orchestration.profile_loader import load_profile_snapshot


def profiles() -> ProfileSnapshot:
    builder = ProfileBuilder()
    for i in range(30):
        builder.record_outcome("code", [("a", i % 3 != 0), ("b", i % 2 == 0), ("b", i % 5 != 0)])
        builder.record_verdicts("math", [("a", i % 4 != 0), ("c", True)])
        builder.record_call(
            "a", "code", failed=i % 7 == 0, cost_usd=0.002, latency_ms=30.0, output_tokens=12
        )
    return builder.snapshot("812:40")


def half(value: Any, first: bool) -> Any:
    """Split a count in two parts that add up to it (a float in two equal halves)."""
    if isinstance(value, float):
        return value / 2
    return value // 2 if first else value - value // 2


async def test_the_loader_reads_what_the_read_models_hold(pool: asyncpg.Pool) -> None:
    expected = profiles()
    async with pool.acquire() as conn:
        await conn.execute("INSERT INTO projection_checkpoints VALUES ('model_stats', 812, 40)")
        await conn.executemany(
            "INSERT INTO model_error_profile (tenant, model, category, gt_right, gt_wrong,"
            " judge_agree, judge_disagree, calls, failures, cost_usd, latency_ms, output_tokens)"
            " VALUES ($12, $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            [  # one half of every count in each of two tenants: the loader adds them up
                (m, c, *(half(v, first) for v in (int(s.right), int(s.wrong), int(s.agree),
                 int(s.disagree), s.calls, s.failures, s.cost_usd, s.latency_ms,
                 int(s.output_tokens))), tenant)
                for (m, c), s in expected.cells.items()
                for first, tenant in ((True, "t1"), (False, "t2"))
            ],
        )  # fmt: skip
        await conn.executemany(
            "INSERT INTO co_failure VALUES ($7, $1, $2, $3, $4, $5, $6)",
            [
                (
                    c,
                    a,
                    b,
                    *(half(int(v), first) for v in (p.both_wrong, p.one_wrong, p.both_right)),
                    tenant,
                )
                for (c, a, b), p in expected.pairs.items()
                for first, tenant in ((True, "t1"), (False, "t2"))
            ],
        )
        loaded = await load_profile_snapshot(conn)
    assert loaded.checkpoint == "812:40"
    assert loaded.cells == expected.cells and loaded.pairs == expected.pairs
    query = RouteQuery("code", (PoolModel("a", 1, 2), PoolModel("b", 1, 2), PoolModel("c")), 2, 9)
    assert route(loaded, query) == route(expected, query)


async def test_before_any_projection_ran_the_snapshot_is_empty(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        loaded = await load_profile_snapshot(conn)
    assert loaded.checkpoint == "0:0" and not loaded.cells and not loaded.pairs


async def test_a_load_during_a_rebuild_swap_sees_one_side_of_it(pool: asyncpg.Pool) -> None:
    # A rebuild swaps the read models by DDL (drop the live table, move the shadow one
    # in, advance the checkpoint, in one transaction). A load whose snapshot predates
    # that commit must not read the new tables under the old checkpoint.
    async with pool.acquire() as conn:
        await conn.execute("INSERT INTO projection_checkpoints VALUES ('model_stats', 5, 50)")
        await conn.execute(
            "INSERT INTO model_error_profile (tenant, model, category, calls)"
            " VALUES ('t', 'a', 'code', 1)"
        )
        schema = await conn.fetchval("SELECT current_schema()")
        shadow = f"{schema}_swap"  # this test's own, beside its own schema
        await conn.execute(
            f'DROP SCHEMA IF EXISTS "{shadow}" CASCADE; CREATE SCHEMA "{shadow}";'
            f' CREATE TABLE "{shadow}".model_error_profile'
            " (LIKE model_error_profile INCLUDING ALL);"
            f' INSERT INTO "{shadow}".model_error_profile (tenant, model, category, calls)'
            " VALUES ('t', 'a', 'code', 2)"
        )
    try:
        async with pool.acquire() as swapper, pool.acquire() as reader:
            swap = swapper.transaction()
            await swap.start()
            await swapper.execute(
                "LOCK TABLE model_error_profile IN ACCESS EXCLUSIVE MODE;"
                " DROP TABLE model_error_profile;"
                f' ALTER TABLE "{shadow}".model_error_profile SET SCHEMA "{schema}";'
                " UPDATE projection_checkpoints SET transaction_id = 6, global_position = 60"
            )
            loading = asyncio.create_task(load_profile_snapshot(reader))
            await asyncio.sleep(0.3)  # the load waits for the swap's lock
            assert not loading.done()
            await swap.commit()
            loaded = await asyncio.wait_for(loading, 10)
    finally:
        async with pool.acquire() as conn:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{shadow}" CASCADE')
    assert (loaded.checkpoint, loaded.cells[("a", "code")].calls) == ("6:60", 2)
