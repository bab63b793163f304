"""The failures question answers alike from the day-less totals and the daily
rows, for every grouping without day and every filter."""

from __future__ import annotations

import itertools
import random
from datetime import date, timedelta

import asyncpg

from service.projections.queries import answer, failures_query

ROLLUP = """
INSERT INTO model_call_totals
SELECT tenant, model, category, outcome, latency_bucket, sum(calls), sum(latency_ms),
       sum(input_tokens), sum(output_tokens), sum(cost_usd)
FROM model_call_stats GROUP BY tenant, model, category, outcome, latency_bucket
"""


async def test_totals_and_daily_rows_answer_alike(pool: asyncpg.Pool) -> None:
    rng = random.Random(7)
    rows = {}
    for _ in range(400):
        key = (
            rng.choice(["default", "other"]),
            rng.choice(["m/a", "m/b", "m/c"]),
            rng.choice(["math", "code"]),
            date(2026, 11, 1) + timedelta(days=rng.randrange(20)),
            rng.choice(["ok", "ok", "ok", "timeout", "rate_limited", "server_error"]),
            rng.randrange(0, 12),
        )
        # exact binary fractions: sums in any order are equal
        rows[key] = (rng.randrange(1, 50), rng.randrange(1, 4000) * 0.5, rng.randrange(99),
                     rng.randrange(99), rng.randrange(1, 64) / 64)  # fmt: skip
    async with pool.acquire() as conn:
        await conn.executemany(
            "INSERT INTO model_call_stats VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11)",
            [(*k, *v) for k, v in rows.items()],
        )
        await conn.execute(ROLLUP)
        dims = ["model", "category", "error_kind"]
        groupings = [",".join(c) for n in range(4) for c in itertools.combinations(dims, n)]
        mismatches = []
        for group_by, model, category, kind in itertools.product(
            groupings, [None, "m/a", "m/z"], [None, "code"], [None, "timeout", "client_error"]
        ):
            ask = dict(group_by=group_by or None, model=model, category=category,
                       error_kind=kind, until=None, as_of=None)  # fmt: skip
            totals = await answer(conn, failures_query("default", since=None, **ask))
            daily = await answer(conn, failures_query("default", since="2000-01-01", **ask))
            if totals.rows != daily.rows:
                mismatches.append((group_by, model, category, kind, totals.rows, daily.rows))
    assert not mismatches, mismatches[:3]
