"""Load a ProfileSnapshot from the profile read models: one query per read model.

The read models belong to the projections (issue 4), which are not in the repository
yet; until they are, the service builds the same snapshot by following the log
(``router.follow_log``). These queries name the tables and columns the router needs,
as DESIGN.md describes them, and are the contract to align with when they land:

    projection_checkpoints (name text PRIMARY KEY, transaction_id bigint,
                            global_position bigint)
    model_error_profile    (model text, category text, gt_right bigint, gt_wrong bigint,
                            judge_agree bigint, judge_disagree bigint, calls bigint,
                            failures bigint, cost_usd float8, latency_ms float8,
                            output_tokens bigint)             -- one row per (model, category)
    co_failure             (category text, model_a text, model_b text,   -- model_a <= model_b
                            both_wrong bigint, one_wrong bigint, both_right bigint)

The three reads run in one repeatable-read transaction, so they agree with each other
and with the checkpoint they report.
"""

from __future__ import annotations

import asyncpg

from service.domain.profiles import START_CHECKPOINT, CellStats, PairStats, ProfileSnapshot

PROFILE_PROJECTION = "model_error_profile"

CHECKPOINT_SQL = """
SELECT transaction_id, global_position FROM projection_checkpoints WHERE name = $1
"""

PROFILE_SQL = """
SELECT model, category, gt_right, gt_wrong, judge_agree, judge_disagree, calls, failures,
       cost_usd, latency_ms, output_tokens
FROM model_error_profile
"""

CO_FAILURE_SQL = """
SELECT category, model_a, model_b, both_wrong, one_wrong, both_right FROM co_failure
"""


async def load_profile_snapshot(
    conn: asyncpg.Connection, projection: str = PROFILE_PROJECTION
) -> ProfileSnapshot:
    """The profiles as the read models hold them, labelled with their checkpoint."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        mark = await conn.fetchrow(CHECKPOINT_SQL, projection)
        profiles = await conn.fetch(PROFILE_SQL)
        pairs = await conn.fetch(CO_FAILURE_SQL)
    checkpoint = (
        START_CHECKPOINT if mark is None else f"{mark['transaction_id']}:{mark['global_position']}"
    )
    cells = {
        (r["model"], r["category"]): CellStats(
            right=r["gt_right"],
            wrong=r["gt_wrong"],
            agree=r["judge_agree"],
            disagree=r["judge_disagree"],
            calls=r["calls"],
            failures=r["failures"],
            cost_usd=r["cost_usd"],
            latency_ms=r["latency_ms"],
            output_tokens=r["output_tokens"],
        )
        for r in profiles
    }
    co_failures = {
        (r["category"], r["model_a"], r["model_b"]): PairStats(
            both_wrong=r["both_wrong"], one_wrong=r["one_wrong"], both_right=r["both_right"]
        )
        for r in pairs
    }
    return ProfileSnapshot(checkpoint, cells, co_failures)
