"""Load every tenant's profiles from the profile read models: one query per read model.

The read models are kept by the ``model_stats`` projection
(service/projections/definitions.py, schema/migrations/0030_projections.sql), with the
same counts as ``ProfileFold`` (tests hold them equal). Rows are per tenant, and so are
the profiles: a tenant's routing and judge weights learn from its own runs only. The
reads run in one repeatable-read transaction, so they agree with each other and with
the checkpoint they report.
"""

from __future__ import annotations

from service.domain.profiles import (
    START_CHECKPOINT,
    CellStats,
    PairStats,
    ProfileSnapshot,
    TenantProfiles,
)
from service.store.database import Connection

PROFILE_PROJECTION = "model_stats"

# In the order a rebuild drops them (definitions.MODEL_STATS.tables): no lock-order cycle.
LOCK_SQL = "LOCK TABLE model_error_profile, co_failure IN ACCESS SHARE MODE"

CHECKPOINT_SQL = """
SELECT transaction_id, global_position FROM projection_checkpoints WHERE name = $1
"""

PROFILE_SQL = """
SELECT tenant, model, category, gt_right, gt_wrong, judge_agree, judge_disagree, calls,
       failures, cost_usd, latency_ms, output_tokens
FROM model_error_profile
"""

CO_FAILURE_SQL = """
SELECT tenant, category, model_a, model_b, both_wrong, one_wrong, both_right
FROM co_failure
"""


async def load_profiles(conn: Connection, projection: str = PROFILE_PROJECTION) -> TenantProfiles:
    """Every tenant's profiles as the read models hold them, labelled with their checkpoint."""
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
    cells: dict[str, dict[tuple[str, str], CellStats]] = {}
    for r in profiles:
        cells.setdefault(r["tenant"], {})[(r["model"], r["category"])] = CellStats(
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
    co_failures: dict[str, dict[tuple[str, str, str], PairStats]] = {}
    for r in pairs:
        key = (r["category"], r["model_a"], r["model_b"])
        co_failures.setdefault(r["tenant"], {})[key] = PairStats(
            both_wrong=r["both_wrong"], one_wrong=r["one_wrong"], both_right=r["both_right"]
        )
    tenants = {
        tenant: ProfileSnapshot(checkpoint, cells.get(tenant, {}), co_failures.get(tenant, {}))
        for tenant in cells.keys() | co_failures.keys()
    }
    return TenantProfiles(checkpoint, tenants)
