"""POST /v1/fusions tells the client where its time went (Server-Timing), and the
overhead histogram counts each fusion once."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import httpx
import pytest
from litestar.testing import AsyncTestClient

from tests.api.conftest import MockProviders

TIMING = re.compile(r"^overhead;dur=(\d+\.\d{3}), providers;dur=(\d+\.\d{3})$")
PROVIDER_DELAY_S = 0.05


class SlowProviders(MockProviders):
    """Every provider call takes PROVIDER_DELAY_S, so provider time is known."""

    async def handle(self, request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(PROVIDER_DELAY_S)
        return await super().handle(request)


@pytest.fixture
def providers() -> MockProviders:
    return SlowProviders()


def overhead_count(metrics: str) -> float:
    found = re.search(r"^fusion_orchestration_overhead_seconds_count (\S+)$", metrics, re.M)
    return float(found[1]) if found else 0.0


async def test_fusion_reports_overhead_and_provider_time(client: AsyncTestClient[Any]) -> None:
    before = overhead_count((await client.get("/metrics")).text)
    sent = time.perf_counter()
    response = await client.post("/v1/fusions", json={"prompt": "What is 2+2?"})
    elapsed_ms = (time.perf_counter() - sent) * 1000
    assert response.status_code == 200, response.text
    match = TIMING.match(response.headers["server-timing"])
    assert match is not None, response.headers["server-timing"]
    overhead_ms, providers_ms = float(match[1]), float(match[2])
    members = response.json()["members"]
    # the provider critical path is the slowest member, then the judge
    assert providers_ms >= max(m["latency_ms"] for m in members) + 1000 * PROVIDER_DELAY_S
    # the split covers the server's time, which the client's time contains
    assert overhead_ms > 0 and overhead_ms + providers_ms <= elapsed_ms
    assert overhead_count((await client.get("/metrics")).text) == before + 1


async def test_a_repeated_idempotency_key_is_not_a_second_fusion(
    client: AsyncTestClient[Any],
) -> None:
    headers = {"Idempotency-Key": "timing-once"}
    body = {"prompt": "What is 3+3?"}
    first = await client.post("/v1/fusions", json=body, headers=headers)
    assert "server-timing" in first.headers
    count = overhead_count((await client.get("/metrics")).text)
    again = await client.post("/v1/fusions", json=body, headers=headers)
    assert again.json()["run_id"] == first.json()["run_id"]
    # it waited on no provider: no provider split to report, nothing to observe
    assert "server-timing" not in again.headers
    assert overhead_count((await client.get("/metrics")).text) == count
