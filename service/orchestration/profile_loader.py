"""Load a ProfileSnapshot from the profile read models: one query per read model.

The read models are kept by the ``model_stats`` projection
(service/projections/definitions.py, schema/migrations/0030_projections.sql), with the
same counts as ``ProfileFold`` (tests hold them equal). Rows are per tenant; the router
learns about models from every tenant's runs, so the loader sums over tenants. The
reads run in one repeatable-read transaction, so they agree with each other and with
the checkpoint they report.
"""

from __future__ import annotations

from service.domain.profiles import START_CHECKPOINT, CellStats, PairStats, ProfileSnapshot
from service.store.database import Connection

PROFILE_PROJECTION = "model_stats"

# In the order a rebuild drops them (definitions.MODEL_STATS.tables): no lock-order cycle.
LOCK_SQL = "LOCK TABLE model_error_profile, co_failure IN ACCESS SHARE MODE"

CHECKPOINT_SQL = """
SELECT transaction_id, global_position FROM projection_checkpoints WHERE name = $1
"""

PROFILE_SQL = """
SELECT model, category, sum(gt_right)::bigint AS gt_right, sum(gt_wrong)::bigint AS gt_wrong,
       sum(judge_agree)::bigint AS judge_agree, sum(judge_disagree)::bigint AS judge_disagree,
       sum(calls)::bigint AS calls, sum(failures)::bigint AS failures, sum(cost_usd) AS cost_usd,
       sum(latency_ms) AS latency_ms, sum(output_tokens)::bigint AS output_tokens
FROM model_error_profile
GROUP BY model, category
"""

CO_FAILURE_SQL = """
SELECT category, model_a, model_b, sum(both_wrong)::bigint AS both_wrong,
       sum(one_wrong)::bigint AS one_wrong, sum(both_right)::bigint AS both_right
FROM co_failure
GROUP BY category, model_a, model_b
"""


async def load_profile_snapshot(
    conn: Connection, projection: str = PROFILE_PROJECTION
) -> ProfileSnapshot:
    """The profiles as the read models hold them, labelled with their checkpoint."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        # Before the snapshot (LOCK takes none): a rebuild's swap replaces these tables
        # by DDL, which snapshots do not isolate; locked first, the reads below see the
        # swapped tables with their checkpoint, or the old ones with theirs, never a mix.
        await conn.execute(LOCK_SQL)
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
