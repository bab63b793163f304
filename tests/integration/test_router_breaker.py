"""A model switched to 100% errors in the simulator (through its admin endpoint, at run
time) is rested within a bounded number of runs, probed after the cool-down, and
back on panels once it answers again."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator

import httpx
import pytest

from service.config import Config
from service.domain.breaker import BreakerSettings
from service.domain.profiles import DEFAULT_TENANT, ProfileBuilder, TenantProfiles
from service.orchestration.fusion import FusionRunner
from service.orchestration.router import Router
from service.providers.http import create_http_transport
from service.providers.registry import ProviderRegistry
from service.store import EventStore
from tests.conftest import RunningSimulator
from tests.integration.router_world import fuse, routed_config, selection

FAILING, HEALTHY = "sim/model-a", "sim/model-b"
BREAKER = BreakerSettings(window=10, min_calls=3, open_at_failure_rate=0.5, cooldown_s=30.0)


class Clock:
    """Time the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def world(
    store: EventStore, simulator: RunningSimulator
) -> AsyncIterator[tuple[FusionRunner, Router, Config, Clock, httpx.AsyncClient]]:
    config = routed_config(simulator, pool=(FAILING, HEALTHY), k=2)
    # Profiles that make the failing model the clear favourite, so it is seated every run.
    builder = ProfileBuilder()
    for i in range(200):
        builder.record_outcome("multiple_choice", [(FAILING, True), (HEALTHY, i % 2 == 0)])
    clock = Clock()
    profiles = TenantProfiles("1:1", {DEFAULT_TENANT: builder.snapshot("1:1")})
    router = Router(config, breaker=BREAKER, clock=clock, profiles=profiles)
    async with httpx.AsyncClient() as client, create_http_transport() as transport:
        runner = FusionRunner(
            store, ProviderRegistry(config, transport, lambda _: None), router=router
        )
        try:
            yield runner, router, config, clock, client
        finally:
            await runner.close()


async def switch(client: httpx.AsyncClient, simulator: RunningSimulator, rate: float) -> None:
    """Change the failing model's server error rate in the running simulator."""
    url = f"{simulator.root_url.rstrip('/')}/_sim/models/{FAILING.removeprefix('sim/')}"
    response = await client.post(url, json={"server_error_rate": rate})
    assert response.status_code == 200, response.text


async def test_a_failing_model_is_rested_then_probed_then_trusted_again(
    world: tuple[FusionRunner, Router, Config, Clock, httpx.AsyncClient],
    store: EventStore,
    simulator: RunningSimulator,
) -> None:
    runner, router, config, clock, client = world
    prompts = iter(q.prompt for q in simulator.world.bank.in_category("multiple_choice"))

    async def reasons() -> dict[str, str]:
        run_id, _ = await fuse(runner, config, next(prompts))
        decision = (await selection(store, run_id)).router
        assert decision is not None
        return {c.model: c.reason for c in decision.candidates}

    assert (await reasons())[FAILING].startswith("top score")
    await switch(client, simulator, 1.0)
    bound = math.ceil(BREAKER.window * BREAKER.open_at_failure_rate)  # its calls, not runs
    runs = 0
    while (await reasons())[FAILING] != "resting: breaker open":
        runs += 1
        assert runs <= bound, f"still seated after {runs} runs of 100% errors"
    seen = await reasons()  # resting holds until the cool-down is over
    assert seen[FAILING] == "resting: breaker open"
    assert seen[HEALTHY] == "top score (2 seats: self-fusion)"

    clock.now += BREAKER.cooldown_s
    assert (await reasons())[FAILING] == "probe: breaker half-open"
    assert (await reasons())[FAILING] == "resting: breaker open"  # the probe failed
    clock.now += BREAKER.cooldown_s
    assert (await reasons())[FAILING] == "resting: breaker open"  # it now rests twice as long

    await switch(client, simulator, 0.0)
    clock.now += BREAKER.cooldown_s
    assert (await reasons())[FAILING] == "probe: breaker half-open"
    assert (await reasons())[FAILING].startswith("top score")  # the probe answered
    assert router.breakers([FAILING])[FAILING].state == "closed"
