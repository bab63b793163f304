"""No provider key reaches the log, the logs or an error body, even when the provider
echoes the key back in its error messages."""

from __future__ import annotations

import asyncpg
import httpx
from litestar.testing import AsyncTestClient
from structlog.testing import capture_logs

from service.app import create_app
from service.config import parse_config
from service.settings import Settings
from tests.conftest import RunningSimulator, TestDatabase

KEY = "sk-live-0123456789abcdefSECRET"


async def test_echoed_provider_key_is_redacted_everywhere(
    database: TestDatabase, simulator: RunningSimulator, pool: asyncpg.Pool
) -> None:
    async with httpx.AsyncClient() as admin:
        changed = await admin.post(
            f"{simulator.root_url}/_sim/world", json={"echo_key_in_errors": True}
        )
        assert changed.status_code == 200
    config = parse_config(f"""
default_preset = "leaky"
[providers.sim]
base_url = "{simulator.base_url}"
api_key_env = "SIM_PROVIDER_KEY"
max_attempts = 2
backoff_base_s = 0.01
[models."sim/fault-server-error"]
provider = "sim"
upstream = "fault-server-error"
[models."sim/fault-rate-limited"]
provider = "sim"
upstream = "fault-rate-limited"
[models."sim/model-b"]
provider = "sim"
upstream = "model-b"
[presets.leaky]
panel = ["sim/fault-server-error", "sim/fault-rate-limited", "sim/model-b"]
judge = {{ kind = "vote" }}
min_successes = 1
[presets.doomed]
panel = ["sim/fault-server-error", "sim/fault-rate-limited"]
judge = {{ kind = "vote" }}
min_successes = 1
""")
    settings = Settings(
        database_url=database.url,
        pool_min_size=1,
        pool_max_size=5,
        environ={"SIM_PROVIDER_KEY": KEY},
    )
    app = create_app(settings, config, sweeper=False, run_migrations=False)
    bodies: list[str] = []
    with capture_logs() as logs:
        async with AsyncTestClient(app=app) as client:
            for preset in ("leaky", "doomed"):
                response = await client.post(
                    "/v1/fusions", json={"prompt": "2+2?", "preset": preset}
                )
                bodies.append(response.text)
                run = (await client.get(f"/v1/runs/{response.json()['run_id']}")).text
                bodies.append(run)
    assert '"status":"finalized"' in bodies[0] and '"status":"failed"' in bodies[2]
    stored = await pool.fetchval("SELECT string_agg(data::text || metadata::text, '') FROM events")
    assert "server_error" in stored and "rate_limited" in stored  # the failures are recorded
    assert KEY not in stored
    assert "[redacted]" in stored  # the provider did echo it; it was scrubbed
    assert KEY[:12] not in stored
    for body in bodies:
        assert KEY not in body
    rendered = repr(logs)
    assert "provider" in rendered or logs  # something was logged
    assert KEY not in rendered
