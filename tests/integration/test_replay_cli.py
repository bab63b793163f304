"""``fusion-ledger replay`` against a real HTTP server (uvicorn in its own thread) on
runs made against the simulator: the report table, --json, --run, and errors."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import asyncpg
import httpx
import pytest
from click.testing import CliRunner

from service.cli import main
from service.cli_replay import parse_moment
from service.domain.events import OutcomeRecorded
from service.domain.scoring import answers_match
from service.store import EventStore, NewEvent
from tests.conftest import RunningSimulator


async def test_replay_command_prints_the_comparison(
    service_url: str, simulator: RunningSimulator, pool: asyncpg.Pool
) -> None:
    store = EventStore(pool)
    run_ids = []
    async with httpx.AsyncClient(base_url=service_url, timeout=60) as http:
        for q in simulator.world.bank.in_category("arithmetic")[:6]:
            body = (
                await http.post("/v1/fusions", json={"prompt": q.prompt, "preset": "vote"})
            ).json()
            run_ids.append(body["run_id"])
            outcome = OutcomeRecorded(
                source="dataset",
                expected=q.expected,
                final_correct=answers_match(body["answer"], q.expected),
            )
            meta = {"correlation_id": body["run_id"], "tenant": "default", "actor": "test"}
            await store.append_to_stream(f"run-{body['run_id']}", [NewEvent(outcome, meta)])

    cli = CliRunner(env={"COLUMNS": "200"})
    base = ["replay", "--url", service_url, "--category", "arithmetic", "--since", "1d"]
    shown = await asyncio.to_thread(
        cli.invoke, main, [*base, "--judge", "select:sim/judge-strong", "--poll", "0.05"]
    )
    assert shown.exit_code == 0, shown.output
    assert "6 of 6 runs replayed with select sim/judge-strong" in shown.output
    assert "accuracy on ground truth (n=6)" in shown.output
    assert "arithmetic" in shown.output  # the by-category table

    as_json = await asyncio.to_thread(
        cli.invoke, main, [*base, "--judge", "vote", "--json", "--poll", "0.05"]
    )
    assert as_json.exit_code == 0, as_json.output
    # the server shares this process: its log lines land in the same stdout
    report = json.loads(as_json.output.strip().splitlines()[-1])
    assert report["status"] == "completed"
    assert report["report"]["agreement"]["successes"] == 6  # a vote replaying a vote

    one = await asyncio.to_thread(
        cli.invoke, main, ["replay", "--url", service_url, "--run", run_ids[0], "--judge", "vote"]
    )
    assert one.exit_code == 0, one.output
    assert "replay" in one.output and "agrees" in one.output

    refused = await asyncio.to_thread(
        cli.invoke, main, ["replay", "--url", service_url, "--judge", "synthesize"]
    )
    assert refused.exit_code == 2
    assert "needs a model" in refused.output


def test_moments_are_iso_or_spans_back_from_now() -> None:
    now = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)
    assert parse_moment("7d", now) == datetime(2025, 3, 3, 12, 0, tzinfo=UTC)
    assert parse_moment("90m", now) == datetime(2025, 3, 10, 10, 30, tzinfo=UTC)
    assert parse_moment("2025-01-02") == datetime(2025, 1, 2, tzinfo=UTC)
    with pytest.raises(Exception, match="ISO date"):
        parse_moment("last tuesday")
