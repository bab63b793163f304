"""An app on a real Postgres schema, with remote providers replaced by an httpx
MockTransport whose models behave as each test needs."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from litestar.testing import AsyncTestClient

from service.app import create_app
from service.config import Config, parse_config
from service.domain.judging import parse_judge_task
from service.domain.scoring import normalize_answer
from service.settings import Settings
from tests.conftest import TestDatabase

CONFIG_TOML = """
default_preset = "default"

[providers.mock]
base_url = "http://provider.test/v1"
timeout_s = 5.0
max_attempts = 3
backoff_base_s = 0.01
backoff_max_s = 0.05

[models."mock/a"]
provider = "mock"
input_price = 1.0
output_price = 2.0
[models."mock/b"]
provider = "mock"
input_price = 1.0
output_price = 2.0
[models."mock/c"]
provider = "mock"
input_price = 1.0
output_price = 2.0
[models."mock/judge"]
provider = "mock"
input_price = 3.0
output_price = 6.0
[models."mock/badjudge"]
provider = "mock"
[models."mock/slow"]
provider = "mock"
[models."mock/flaky"]
provider = "mock"
[models."mock/garbled"]
provider = "mock"
[models."mock/down"]
provider = "mock"

[presets.default]
panel = ["mock/a", "mock/b", "mock/c"]
judge = { kind = "synthesize", model = "mock/judge", fallback = "vote" }
min_successes = 2
timeout_s = 10.0
member_timeout_s = 0.5

[presets.cheap]
panel = ["mock/a", "mock/b"]
judge = { kind = "vote" }
"""


@dataclass
class MockProviders:
    """The fake remote side: answers per model, and a log of every request."""

    answers: dict[str, str] = field(
        default_factory=lambda: {
            "mock/a": "Let me see.\nAnswer: 4",
            "mock/b": "Answer: 4",
            "mock/c": "Answer: 5",
        }
    )
    requests: list[dict[str, Any]] = field(default_factory=list)
    flaky_calls: int = 0

    async def handle(self, request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/chat/completions"
        body = json.loads(request.content)
        self.requests.append(body)
        model = body["model"]
        text = body["messages"][-1]["content"]
        if model == "mock/slow":
            await asyncio.sleep(30)
        if model == "mock/down":
            return httpx.Response(503, json={"error": {"message": "down"}})
        if model == "mock/flaky":
            self.flaky_calls += 1
            if self.flaky_calls == 1:
                return httpx.Response(
                    429, headers={"Retry-After": "0"}, json={"error": {"message": "slow down"}}
                )
            return _completion("Answer: 4")
        if model == "mock/garbled":
            return httpx.Response(200, content=b"<html>oops</html>")
        if model == "mock/badjudge":
            return _completion("I think B is best, no JSON today.")
        if model == "mock/judge":
            task = parse_judge_task(text)
            assert task is not None, "judge prompt lacks the task block"
            counts: dict[str, int] = {}
            for c in task.candidates:
                counts[normalize_answer(c.answer)] = counts.get(normalize_answer(c.answer), 0) + 1
            best = max(counts, key=lambda k: counts[k])
            chosen = next(c for c in task.candidates if normalize_answer(c.answer) == best)
            reply = {
                "final_answer": f"Answer: {best}",
                "chosen": chosen.label,
                "verdicts": [
                    {"label": c.label, "agrees": normalize_answer(c.answer) == best, "score": 0.9}
                    for c in task.candidates
                ],
                "rationale": "majority and correct",
            }
            return _completion(json.dumps(reply))
        return _completion(self.answers[model])


def _completion(text: str) -> httpx.Response:
    return httpx.Response(
        200,
        json={
            "id": "cmpl-1",
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        },
    )


@pytest.fixture
def config() -> Config:
    return parse_config(CONFIG_TOML)


@pytest.fixture
def providers() -> MockProviders:
    return MockProviders()


@pytest.fixture
async def client(
    database: TestDatabase, config: Config, providers: MockProviders
) -> AsyncIterator[AsyncTestClient[Any]]:
    # The test client runs the app on its own event loop (a portal thread), so the app
    # opens its own pool there; tests read the database through the `pool` fixture.
    http = httpx.MockTransport(providers.handle)
    settings = Settings(database_url=database.url, pool_min_size=1, pool_max_size=10)
    app = create_app(settings, config, http_transport=http, sweeper=False, run_migrations=False)
    async with AsyncTestClient(app=app) as test_client:
        yield test_client
    await http.aclose()


EventTypes = Callable[[str], Any]
