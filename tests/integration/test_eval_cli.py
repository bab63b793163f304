"""``fusion-ledger eval`` against a real HTTP server (uvicorn in its own thread) and
the simulator: an interrupted evaluation resumes without a second run or outcome,
and the summary equals what the recorded events say, computed here independently."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from click.testing import CliRunner, Result

from service.cli import main
from service.domain.scoring import answers_match
from tests.conftest import RunningSimulator


def dataset_lines(simulator: RunningSimulator) -> list[dict[str, Any]]:
    """12 bank questions over four categories; every third line has no id."""
    rows: list[dict[str, Any]] = []
    for category in ("arithmetic", "multiple_choice", "two_choice", "short_fact"):
        for q in simulator.world.bank.in_category(category)[:3]:
            row = {"id": q.id, "prompt": q.prompt, "category": category, "expected": q.expected}
            if len(rows) % 3 == 2:
                del row["id"]  # keyed by a hash of its content instead
            rows.append(row)
    return rows


def write(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


async def invoke(*args: str) -> Result:
    cli = CliRunner(env={"COLUMNS": "200"})
    return await asyncio.to_thread(cli.invoke, main, ["eval", *args])


def last_json(result: Result) -> dict[str, Any]:
    assert result.exit_code == 0, result.output
    # the server shares this process: its log lines may land in the same stdout
    report: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return report


async def events_by_run(pool: asyncpg.Pool) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    rows = await pool.fetch(
        "SELECT stream_id, event_type, data FROM events WHERE stream_id LIKE 'run-%' "
        "ORDER BY stream_id, stream_version"
    )
    runs: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for r in rows:
        runs.setdefault(r["stream_id"].removeprefix("run-"), []).append(
            (r["event_type"], json.loads(r["data"]))
        )
    return runs


def summary_from_events(
    runs: dict[str, list[tuple[str, dict[str, Any]]]], expected: dict[str, str]
) -> dict[str, dict[str, Any]]:
    """The summary's numbers from the log alone; correctness re-scored from answers."""
    tallies: dict[str, dict[str, Any]] = {}

    def add(system: str, right: bool, failed: bool, cost: float, latency: float | None) -> None:
        t = tallies.setdefault(system, {"n": 0, "correct": 0, "failed": 0, "cost": 0.0, "lat": []})
        t["n"] += 1
        t["correct"] += right
        t["failed"] += failed
        t["cost"] += cost
        if latency is not None:
            t["lat"].append(latency)

    for run_id, events in runs.items():
        data = {kind: d for kind, d in events}
        truth = expected[run_id]
        end = data.get("answer.finalized") or data["run.failed"]
        final = data.get("answer.finalized")
        right = final is not None and answers_match(final["answer"], truth)
        add("final", right, final is None, end["cost_usd"], end["latency_ms"])
        calls = {
            d["member_id"]: (kind, d)
            for kind, d in events
            if kind in ("panel.call.succeeded", "panel.call.failed")
        }
        for seat in data["panel.selected"]["members"]:
            kind, call = calls.get(seat["member_id"], ("pending", {}))
            ok = kind == "panel.call.succeeded"
            add(
                seat["model"],
                ok and answers_match(call["text"], truth),
                not ok,
                call.get("cost_usd", 0.0),
                call.get("latency_ms"),
            )
    return {
        system: {
            "n": t["n"],
            "correct": t["correct"],
            "failed": t["failed"],
            "accuracy": t["correct"] / t["n"],
            "mean_cost_usd": t["cost"] / t["n"],
            "mean_latency_ms": sum(t["lat"]) / len(t["lat"]) if t["lat"] else None,
        }
        for system, t in tallies.items()
    }


async def test_an_interrupted_eval_resumes_and_its_summary_matches_the_log(
    service_url: str, simulator: RunningSimulator, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    rows = dataset_lines(simulator)
    dataset = write(tmp_path / "bank.jsonl", rows)
    common = [str(dataset), "--url", service_url, "--preset", "default"]

    # no service there: one line, nothing run (it asks first whether the key may label)
    unreachable = await invoke(str(dataset), "--url", "http://127.0.0.1:9")
    assert unreachable.exit_code == 2, unreachable.output
    assert "cannot reach the service" in unreachable.output
    assert "Traceback" not in unreachable.output
    # a bad line anywhere: refused before anything runs, naming the line
    broken = write(tmp_path / "broken.jsonl", [*rows[:2], {"prompt": "2+2?", "category": "x"}])
    refused = await invoke(str(broken), "--url", service_url)
    assert refused.exit_code == 2
    assert "line 3" in refused.output and "expected" in refused.output
    # a line the service refuses stops the evaluation, naming the line
    unknown = await invoke(
        str(dataset), "--url", service_url, "--preset", "nope", "--concurrency", "1"
    )
    # refused as it is, so again on a re-run: exit 2, one line, no advice to resume
    assert unknown.exit_code == 2
    assert "line 1" in unknown.output and "nope" in unknown.output
    assert "resume" not in unknown.output
    assert await pool.fetchval("SELECT count(*) FROM events") == 0

    first = last_json(await invoke(*common, "--limit", "5", "--concurrency", "3", "--json"))
    assert (first["lines"], first["outcomes_recorded"], first["outcomes_existing"]) == (5, 5, 0)

    full = last_json(await invoke(*common, "--json"))
    assert (full["lines"], full["outcomes_recorded"], full["outcomes_existing"]) == (12, 7, 5)
    assert [i["run_id"] for i in full["items"][:5]] == [i["run_id"] for i in first["items"]]
    assert [i["line"] for i in full["items"]] == list(range(1, 13))

    runs = await events_by_run(pool)
    assert set(runs) == {i["run_id"] for i in full["items"]}  # one run per line, no more
    for item, row in zip(full["items"], rows, strict=True):
        events = runs[item["run_id"]]
        assert (
            next(d for k, d in events if k == "run.requested")["messages"][-1]["content"]
            == (row["prompt"])
        )
        outcomes = [d for k, d in events if k == "outcome.recorded"]
        assert len(outcomes) == 1, item
        assert (outcomes[0]["source"], outcomes[0]["expected"]) == ("dataset", row["expected"])
        assert outcomes[0]["final_correct"] == item["final_correct"]

    expected = {i["run_id"]: r["expected"] for i, r in zip(full["items"], rows, strict=True)}
    independent = summary_from_events(runs, expected)
    reported = {r["system"]: r for r in full["summary"]}
    assert next(iter(reported)) == "final"
    panel = {"sim/model-b", "sim/model-c", "sim/model-e"}  # the simulator's default preset
    assert set(reported) == set(independent) == {"final", *panel}
    for system, numbers in independent.items():
        row = reported[system]
        for measure in ("n", "correct", "failed"):
            assert row[measure] == numbers[measure], (system, measure)
        for measure in ("accuracy", "mean_cost_usd", "mean_latency_ms"):
            assert row[measure] == pytest.approx(numbers[measure]), (system, measure)
    assert reported["final"]["n"] == 12
    assert sum(r["n"] for s, r in reported.items() if s != "final") == 36

    # A corrected line under the same name asks another question of the same run: one
    # line and exit 2, saying how to run it (another --name), nothing written.
    count = await pool.fetchval("SELECT count(*) FROM events")
    changed = write(tmp_path / "bank.jsonl", [{**rows[0], "prompt": rows[0]["prompt"] + " "}])
    refused = await invoke(str(changed), "--url", service_url, "--preset", "default")
    assert refused.exit_code == 2, refused.output
    assert "give another --name" in refused.output
    assert await pool.fetchval("SELECT count(*) FROM events") == count
    write(tmp_path / "bank.jsonl", rows)

    # once more, as a table: everything comes back, nothing new is written
    again = await invoke(*common)
    assert again.exit_code == 0, again.output
    assert "12 lines, 0 outcomes recorded now, 12 recorded before" in again.output
    assert await pool.fetchval("SELECT count(*) FROM events") == count
    table = [line for line in again.stdout.splitlines() if "│" in line or "┃" in line]
    header = next(line for line in table if "accuracy" in line)
    final = next(line for line in table if line.strip("│┃ ").startswith("final"))
    assert len(final) == len(header)  # aligned columns
    final_row = reported["final"]
    assert f"{final_row['accuracy']:.1%}" in final
    assert f"{final_row['mean_cost_usd']:.6f}" in final
