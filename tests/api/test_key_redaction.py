"""No provider key reaches the event log, the logs or an HTTP body, even when the
provider echoes the key back, in its errors or in its answers, plainly or encoded."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import asyncpg
import httpx
from litestar.testing import AsyncTestClient
from structlog.testing import capture_logs

from service.app import create_app
from service.config import parse_config
from service.providers.outcomes import KEY_REDACTED
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
    assert KEY_REDACTED in stored  # the provider did echo it; it was scrubbed
    assert KEY[:12] not in stored
    for body in bodies:
        assert KEY not in body
    rendered = repr(logs)
    assert "provider" in rendered or logs  # something was logged
    assert KEY not in rendered


ECHO_CONFIG = """
default_preset = "echo"
[providers.echo]
base_url = "http://provider.test/v1"
api_key_env = "ECHO_PROVIDER_KEY"
max_attempts = 1
[models."echo/plain"]
provider = "echo"
[models."echo/spaced"]
provider = "echo"
[models."echo/escaped-error"]
provider = "echo"
[models."echo/base64-error"]
provider = "echo"
[models."echo/judge"]
provider = "echo"
[presets.echo]
panel = ["echo/plain", "echo/spaced", "echo/escaped-error", "echo/base64-error"]
judge = { kind = "synthesize", model = "echo/judge", fallback = "vote" }
min_successes = 2
"""


def echoed_forms(key: str) -> dict[str, str]:
    """The forms in which the fake provider below echoes the key it was sent."""
    return {
        "plain": key,
        "spaced": " ".join(key),
        "escaped": "".join(f"\\u{ord(c):04x}" for c in key),
        "base64": base64.b64encode(f"Bearer {key}".encode()).decode(),
    }


def echoing_provider(request: httpx.Request) -> httpx.Response:
    """A careless provider: every reply and error carries the key back somehow."""
    key = request.headers["authorization"].removeprefix("Bearer ")
    forms = echoed_forms(key)
    model = json.loads(request.content)["model"]
    if model == "echo/escaped-error":  # over 64 KiB: the body is not decoded as JSON
        message = f"invalid key {forms['escaped']}"
        body = f'{{"error": {{"message": "{message}", "pad": "{"x" * 70_000}"}}}}'
        return httpx.Response(500, content=body.encode())
    if model == "echo/base64-error":
        error = f"header {forms['base64']} or key {forms['spaced']} is not valid"
        return httpx.Response(401, json={"error": {"message": error}})
    if model == "echo/judge":  # not the JSON a judge must answer: judge.failed keeps it
        text = f"I judge nothing. {forms['spaced']} {forms['escaped']} {key}"
        return completion(text, finish_reason="stop", response_id="judge-1")
    finish = forms["spaced"] if model == "echo/spaced" else key
    return completion(f"Answer: {key}", finish_reason=finish, response_id=forms["base64"])


def completion(text: str, *, finish_reason: str, response_id: str) -> httpx.Response:
    choice = {"index": 0, "message": {"role": "assistant", "content": text}}
    return httpx.Response(
        200,
        json={
            "id": response_id,
            "choices": [choice | {"finish_reason": finish_reason}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5},
        },
    )


def strings(value: Any) -> Iterator[str]:
    """Every string in a decoded JSON value or a log entry, keys included."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from strings(key)
            yield from strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from strings(item)
    elif value is not None:
        yield str(value)


async def test_a_key_echoed_in_answers_and_errors_is_redacted_everywhere(
    database: TestDatabase, pool: asyncpg.Pool, debug_logs: None
) -> None:
    settings = Settings(
        database_url=database.url, pool_min_size=1, pool_max_size=5,
        environ={"ECHO_PROVIDER_KEY": KEY},
    )  # fmt: skip
    http = httpx.MockTransport(echoing_provider)
    app = create_app(
        settings, parse_config(ECHO_CONFIG), http_transport=http, sweeper=False,
        run_migrations=False,
    )  # fmt: skip
    with capture_logs() as logs:
        async with AsyncTestClient(app=app) as client:
            answer = await client.post("/v1/fusions", json={"prompt": "What is the key?"})
            run = await client.get(f"/v1/runs/{answer.json()['run_id']}")
    await http.aclose()

    assert answer.status_code == 200, answer.text
    assert [entry["event"] for entry in logs].count("provider.call.failed") == 2
    assert KEY_REDACTED in answer.json()["answer"]  # the answer carried the key
    assert answer.json()["judge"]["decided_by"] == "fallback:vote"
    rows = await pool.fetch("SELECT event_type, data::text, metadata::text FROM events")
    events = {row["event_type"]: json.loads(row["data"]) for row in rows}
    assert {"panel.call.succeeded", "panel.call.failed", "judge.failed"} <= events.keys()
    assert KEY_REDACTED in events["judge.failed"]["raw_output"]
    assert KEY_REDACTED in events["answer.finalized"]["answer"]
    texts = [
        *(text for row in rows for text in strings([json.loads(row[1]), json.loads(row[2])])),
        *strings([answer.json(), run.json()]),
        *strings(logs),
        answer.text,
        run.text,
    ]
    for name, form in echoed_forms(KEY).items():
        assert not [text for text in texts if form in text], f"the {name} key leaked"
