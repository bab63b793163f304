"""The read-model loader reads what the model_error_profile tables hold, per tenant
(the projections fill them; tests/integration/test_projections.py proves the
projection and the router's in-memory fold agree)."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from service.domain.profiles import ProfileBuilder, ProfileSnapshot
from service.domain.routing import PoolModel, RouteQuery, route
from service.orchestration.profile_loader import load_profiles


def profiles(flip: bool = False) -> ProfileSnapshot:
    """Counts of three models; ``flip`` makes a the worse of a and b (another tenant)."""
    builder = ProfileBuilder()
    for i in range(30):
        a_right = (i % 3 != 0) != flip
        builder.record_outcome("code", [("a", a_right), ("b", i % 2 == 0), ("b", i % 5 != 0)])
        builder.record_verdicts("math", [("a", i % 4 != 0), ("c", True)])
        builder.record_call(
            "a", "code", failed=i % 7 == 0, cost_usd=0.002, latency_ms=30.0, output_tokens=12
        )
    return builder.snapshot("812:40")


def rows(tenant: str, snapshot: ProfileSnapshot) -> tuple[list[Any], list[Any]]:
    """The snapshot as model_error_profile and co_failure rows of the tenant."""
    cells = [
        (tenant, m, c, int(s.right), int(s.wrong), int(s.agree), int(s.disagree), s.calls,
         s.failures, s.cost_usd, s.latency_ms, int(s.output_tokens))
        for (m, c), s in snapshot.cells.items()
    ]  # fmt: skip
    pairs = [
        (tenant, c, a, b, int(p.both_wrong), int(p.one_wrong), int(p.both_right))
        for (c, a, b), p in snapshot.pairs.items()
    ]
    return cells, pairs


async def test_the_loader_reads_each_tenants_profiles_apart(pool: asyncpg.Pool) -> None:
    ours, theirs = profiles(), profiles(flip=True)
    async with pool.acquire() as conn:
        await conn.execute("INSERT INTO projection_checkpoints VALUES ('model_stats', 812, 40)")
        for tenant, snapshot in (("t1", ours), ("t2", theirs)):
            cells, pairs = rows(tenant, snapshot)
            await conn.executemany(
                "INSERT INTO model_error_profile (tenant, model, category, gt_right, gt_wrong,"
                " judge_agree, judge_disagree, calls, failures, cost_usd, latency_ms,"
                " output_tokens) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
                cells,
            )
            await conn.executemany(
                "INSERT INTO co_failure (tenant, category, model_a, model_b, both_wrong,"
                " one_wrong, both_right) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                pairs,
            )
        loaded = await load_profiles(conn)
    assert loaded.checkpoint == "812:40" and set(loaded.tenants) == {"t1", "t2"}
    for tenant, expected in (("t1", ours), ("t2", theirs)):
        got = loaded.of(tenant)
        assert got.checkpoint == "812:40"
        assert got.cells == expected.cells and got.pairs == expected.pairs
    query = RouteQuery("code", (PoolModel("a", 1, 2), PoolModel("b", 1, 2), PoolModel("c")), 2, 9)
    assert route(loaded.of("t1"), query) == route(ours, query)
    assert route(loaded.of("t2"), query) == route(theirs, query)
    assert route(loaded.of("t1"), query) != route(loaded.of("t2"), query)
    # a tenant without rows has no history: the prior, as before any run
    assert not loaded.of("t3").cells and not loaded.of("t3").pairs


async def test_before_any_projection_ran_the_profiles_are_empty(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        loaded = await load_profiles(conn)
    assert loaded.checkpoint == "0:0" and not loaded.tenants
    assert not loaded.of("default").cells and not loaded.of("default").pairs


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
            loading = asyncio.create_task(load_profiles(reader))
            await asyncio.sleep(0.3)  # the load waits for the swap's lock
            assert not loading.done()
            await swap.commit()
            loaded = await asyncio.wait_for(loading, 10)
    finally:
        async with pool.acquire() as conn:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{shadow}" CASCADE')
    assert (loaded.checkpoint, loaded.of("t").cells[("a", "code")].calls) == ("6:60", 2)
