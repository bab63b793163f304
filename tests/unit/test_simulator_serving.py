"""Where `serve` starts the in-process simulator: on 127.0.0.1 whatever the API's host.

The simulator's admin endpoints (/_sim/world, /_sim/models/{name}) have no
authentication; the API's `--host 0.0.0.0` must not publish them. serve_simulator is
replaced by a fake that records the address and stops, so no port is opened.
"""

from __future__ import annotations

import pytest

from service import serving
from service.config import Config
from service.providers import simulator
from service.providers.simulator import World, default_world
from service.settings import Settings


class _Stop(Exception):
    pass


@pytest.fixture
def bound_hosts(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    hosts: list[str] = []

    async def fake_serve_simulator(world: World, host: str = "", port: int = 0) -> None:
        hosts.append(host)
        raise _Stop

    monkeypatch.setattr(simulator, "serve_simulator", fake_serve_simulator)
    return hosts


@pytest.mark.parametrize("api_host", ["0.0.0.0", "::", "10.1.2.3", "127.0.0.1"])
async def test_serve_binds_the_simulator_to_loopback_whatever_the_api_host(
    bound_hosts: list[str], api_host: str
) -> None:
    with pytest.raises(_Stop):
        await serving.serve(Settings(), Config(), host=api_host, port=0, simulator_port=0)
    assert bound_hosts == ["127.0.0.1"]


async def test_configured_providers_start_no_simulator(bound_hosts: list[str]) -> None:
    names = sorted(default_world().models)
    prices = {name: (1.0, 2.0) for name in names}
    config = serving.simulator_config(names, prices, "http://provider.internal:8001/v1")
    async with serving.providers_or_simulator(config, 0) as running:
        assert running.simulator_url is None and running.config is config
    assert bound_hosts == []
