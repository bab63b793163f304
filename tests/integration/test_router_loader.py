"""The read-model loader, against the tables it expects (the projections of issue 4
are not built yet: this schema is the contract the loader documents)."""

from __future__ import annotations

import asyncpg

from service.domain.profiles import ProfileBuilder, ProfileSnapshot
from service.domain.routing import PoolModel, RouteQuery, route
from service.orchestration.profile_loader import load_profile_snapshot

EXPECTED_TABLES = """
CREATE TABLE projection_checkpoints (
    name text PRIMARY KEY, transaction_id bigint NOT NULL, global_position bigint NOT NULL);
CREATE TABLE model_error_profile (
    model text, category text, gt_right bigint, gt_wrong bigint, judge_agree bigint,
    judge_disagree bigint, calls bigint, failures bigint, cost_usd float8,
    latency_ms float8, output_tokens bigint, PRIMARY KEY (model, category));
CREATE TABLE co_failure (
    category text, model_a text, model_b text, both_wrong bigint, one_wrong bigint,
    both_right bigint, PRIMARY KEY (category, model_a, model_b));
"""


def profiles() -> ProfileSnapshot:
    builder = ProfileBuilder()
    for i in range(30):
        builder.record_outcome("code", [("a", i % 3 != 0), ("b", i % 2 == 0), ("b", i % 5 != 0)])
        builder.record_verdicts("math", [("a", i % 4 != 0), ("c", True)])
        builder.record_call(
            "a", "code", failed=i % 7 == 0, cost_usd=0.002, latency_ms=30.0, output_tokens=12
        )
    return builder.snapshot("812:40")


async def test_the_loader_reads_what_the_read_models_hold(pool: asyncpg.Pool) -> None:
    expected = profiles()
    async with pool.acquire() as conn:
        await conn.execute(EXPECTED_TABLES)
        await conn.execute(
            "INSERT INTO projection_checkpoints VALUES ('model_error_profile', 812, 40)"
        )
        await conn.executemany(
            "INSERT INTO model_error_profile VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            [
                (m, c, int(s.right), int(s.wrong), int(s.agree), int(s.disagree), s.calls,
                 s.failures, s.cost_usd, s.latency_ms, int(s.output_tokens))
                for (m, c), s in expected.cells.items()
            ],
        )  # fmt: skip
        await conn.executemany(
            "INSERT INTO co_failure VALUES ($1, $2, $3, $4, $5, $6)",
            [
                (c, a, b, int(p.both_wrong), int(p.one_wrong), int(p.both_right))
                for (c, a, b), p in expected.pairs.items()
            ],
        )
        loaded = await load_profile_snapshot(conn)
    assert loaded.checkpoint == "812:40"
    assert loaded.cells == expected.cells and loaded.pairs == expected.pairs
    query = RouteQuery("code", (PoolModel("a", 1, 2), PoolModel("b", 1, 2), PoolModel("c")), 2, 9)
    assert route(loaded, query) == route(expected, query)


async def test_before_any_projection_ran_the_snapshot_is_empty(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await conn.execute(EXPECTED_TABLES)
        loaded = await load_profile_snapshot(conn)
    assert loaded.checkpoint == "0:0" and not loaded.cells and not loaded.pairs
