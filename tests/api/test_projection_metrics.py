"""/metrics over time: run counts rise as fusions happen; projection lag appears while
the worker cannot advance and drains once it can (the worker runs inside the app)."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import asyncpg
from litestar.testing import AsyncTestClient

NAMES = ("runs", "model_stats")


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one Prometheus sample (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(name) + (r"\{" + re.escape(wanted) + r"\}" if wanted else "")
    found = re.search(rf"^{pattern} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def runs_total(text: str) -> float:
    return sum(float(v) for v in re.findall(r"^fusion_runs_total\{[^}]*\} (\S+)$", text, re.M))


async def test_metrics_move_with_runs_and_lag_drains(
    client: AsyncTestClient[Any], pool: asyncpg.Pool
) -> None:
    scraped = await client.get("/metrics")
    # One charset parameter: a repeated one fails strict parsers (Prometheus 3's).
    assert scraped.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    before = scraped.text
    async with pool.acquire() as holder:
        # Hold the runs projection's checkpoint row: its worker cannot take a step.
        await holder.execute("INSERT INTO projection_checkpoints (name) VALUES ('runs') "
                             "ON CONFLICT DO NOTHING")  # fmt: skip
        async with holder.transaction():
            await holder.fetchrow(
                "SELECT * FROM projection_checkpoints WHERE name = 'runs' FOR UPDATE"
            )
            for _ in range(3):
                response = await client.post("/v1/fusions", json={"prompt": "What is 2+2?"})
                assert response.status_code == 200
            during = (await client.get("/metrics")).text
            assert runs_total(during) == runs_total(before) + 3
            assert sample(during, "fusion_projection_lag_events", projection="runs") >= 3 * 7
            assert sample(during, "fusion_projection_lag_seconds", projection="runs") > 0
    for _ in range(600):  # released: the worker catches up (longer on a busy machine)
        after = (await client.get("/metrics")).text
        lags = [sample(after, "fusion_projection_lag_events", projection=p) for p in NAMES]
        if not any(lags):
            break
        await asyncio.sleep(0.05)
    for name in NAMES:  # one worker steps its projections in turn: both drain
        assert sample(after, "fusion_projection_lag_events", projection=name) == 0
