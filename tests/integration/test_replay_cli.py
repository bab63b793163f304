"""``fusion-ledger replay`` against a real HTTP server (uvicorn in its own thread) on
runs made against the simulator: the report table, --json, --run, and errors."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from click.testing import CliRunner, Result

from service.cli import main
from service.cli_replay import parse_moment
from service.domain.events import OutcomeRecorded
from service.domain.scoring import answers_match
from service.store import EventStore, NewEvent
from tests.conftest import RunningSimulator


@pytest.fixture(autouse=True)
def own_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the command remembers the batches it submitted: this test's own."""
    monkeypatch.setenv("FUSION_LEDGER_DATA_DIR", str(tmp_path / "data"))


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


async def fused_runs(service_url: str, simulator: RunningSimulator, n: int) -> list[str]:
    """n arithmetic runs through the API (a vote: no judge to pay)."""
    async with httpx.AsyncClient(base_url=service_url, timeout=60) as http:
        return [
            (await http.post("/v1/fusions", json={"prompt": q.prompt, "preset": "vote"})).json()[
                "run_id"
            ]
            for q in simulator.world.bank.in_category("arithmetic")[:n]
        ]


async def batch_streams(pool: asyncpg.Pool) -> list[str]:
    rows = await pool.fetch("SELECT stream_id FROM streams WHERE stream_id LIKE 'batch-%'")
    return [r["stream_id"].removeprefix("batch-") for r in rows]


async def replay(*args: str) -> Result:
    cli = CliRunner(env={"COLUMNS": "200"})
    return await asyncio.to_thread(cli.invoke, main, ["replay", *args, "--poll", "0.05"])


def report_of(result: Result) -> dict[str, Any]:
    assert result.exit_code == 0, result.output
    # the server shares this process: its log lines land in the same stdout
    report: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return report


async def test_the_same_batch_command_twice_submits_one_batch(
    service_url: str, simulator: RunningSimulator, pool: asyncpg.Pool
) -> None:
    await fused_runs(service_url, simulator, 3)
    since = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    command = ["--url", service_url, "--since", since, "--judge", "vote", "--json"]

    first = await replay(*command)
    batch_id = report_of(first)["batch_id"]
    # named on stderr (the JSON on stdout stays the report alone), with where to find it
    assert f"batch {batch_id} accepted: 3 runs" in first.stderr
    assert f"{service_url}/v1/replays/{batch_id}" in first.stderr
    assert "accepted:" not in first.stdout

    again = await replay(*command[:-1])  # as a table this time
    assert again.exit_code == 0, again.output
    assert f"batch {batch_id} submitted before" in again.stderr
    assert f"batch {batch_id}: 3 of 3 runs replayed" in again.stdout
    assert await batch_streams(pool) == [batch_id]


async def test_batch_reports_an_existing_batch_without_submitting(
    service_url: str, simulator: RunningSimulator, pool: asyncpg.Pool
) -> None:
    await fused_runs(service_url, simulator, 3)
    async with httpx.AsyncClient(base_url=service_url, timeout=60) as http:
        accepted = await http.post("/v1/replays", json={"judge": {"kind": "vote"}})
    assert accepted.status_code == 202, accepted.text
    batch_id = accepted.json()["batch_id"]

    attached = await replay("--url", service_url, "--batch", batch_id, "--json")
    report = report_of(attached)
    assert (report["batch_id"], report["status"], report["replayed"]) == (batch_id, "completed", 3)
    table = await replay("--url", service_url, "--batch", batch_id)
    assert table.exit_code == 0, table.output
    assert f"batch {batch_id}: 3 of 3 runs replayed with vote" in table.stdout
    assert await batch_streams(pool) == [batch_id]  # nothing new was submitted

    unknown = await replay("--url", service_url, "--batch", str(uuid.uuid4()))
    assert unknown.exit_code == 2
    assert "Batch not found" in unknown.stderr
    for args, says in (
        (["--batch", "../runs"], "not a batch id"),
        (["--batch", batch_id, "--run", "r1"], "--batch"),
        ([], "--judge"),
    ):
        refused = await replay("--url", service_url, *args)
        assert refused.exit_code == 2, refused.output
        assert says in refused.stderr
    assert await batch_streams(pool) == [batch_id]
