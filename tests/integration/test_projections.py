"""Projections: after a known mix of simulated runs, outcomes and replays, every
statistic equals what this test computes on its own from the events; rebuilds,
crashes mid-batch and competing workers change nothing; ``as_of`` answers with the
earlier numbers; bad filters are 4xx."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from litestar.testing import AsyncTestClient

from service.app import create_app
from service.domain.events import (
    AnswerFinalized,
    JudgeDecided,
    JudgeFailed,
    OutcomeRecorded,
    PanelCallFailed,
    PanelCallSucceeded,
    PanelSelected,
    ReplayRequested,
    RunFailed,
    RunRequested,
)
from service.domain.profiles import ProfileFold
from service.domain.scoring import answers_match, normalize_answer
from service.orchestration.profile_loader import load_profiles
from service.projections import runner
from service.projections.definitions import PROJECTIONS
from service.settings import Settings
from service.store import EventStore, NewEvent
from service.store.codec import RecordedEvent
from tests.conftest import RunningSimulator, TestDatabase

PANELS: list[Any] = [
    ["sim/model-a", "sim/model-b", "sim/model-c"],
    ["sim/model-b", "sim/fault-server-error", "sim/model-d"],
    [{"model": "sim/model-e", "samples": 2}, "sim/fault-malformed"],
]
JUDGES: list[Any] = [{"kind": "vote"}, {"kind": "synthesize", "model": "sim/judge-strong"}]
CATEGORIES = ["arithmetic", "multiple_choice", "two_choice"]
# What a client sees when its session is terminated mid-transaction (which one depends
# on where the protocol was when the connection closed).
KILLED = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError)


@pytest.fixture
async def service(
    database: TestDatabase, simulator: RunningSimulator
) -> AsyncIterator[tuple[AsyncTestClient[Any], Any]]:
    settings = Settings(database_url=database.url, pool_min_size=1, pool_max_size=10)
    app = create_app(
        settings, simulator.config(), sweeper=False, run_migrations=False, projections=False
    )
    async with AsyncTestClient(app=app) as client:
        yield client, simulator.world


async def fuse_mix(client: AsyncTestClient[Any], world: Any, n: int) -> list[str]:
    """n runs over panels, judges and categories; ground truth for two in three."""
    run_ids = []
    for i in range(n):
        category = CATEGORIES[i % len(CATEGORIES)]
        question = world.bank.in_category(category)[i // len(CATEGORIES)]
        body = {
            "prompt": question.prompt,
            "category": category,
            "panel": PANELS[i % len(PANELS)],
            "judge": JUDGES[i % len(JUDGES)],
        }
        response = await client.post("/v1/fusions", json=body)
        assert response.status_code in (200, 502), response.text
        run_id = response.json()["run_id"]
        run_ids.append(run_id)
        if i % 3 != 2:
            await record_truth(client, run_id, question.expected)
    return run_ids


async def correct_some(client: AsyncTestClient[Any], run_ids: list[str]) -> None:
    """Outcomes that replace earlier ones: a corrected expected answer, and labels
    after an expected answer (a run's latest outcome is its truth everywhere)."""
    for run_id in run_ids[:2]:
        await record_truth(client, run_id, "a different answer altogether")
    run = (await client.get(f"/v1/runs/{run_ids[3]}")).json()
    member = run["events"][1]["data"]["members"][0]["member_id"]
    body = {"final_correct": False, "members": {member: True}, "source": "human"}
    response = await client.post(f"/v1/runs/{run_ids[3]}/outcomes", json=body)
    assert response.status_code == 201, response.text


async def record_truth(client: AsyncTestClient[Any], run_id: str, expected: str) -> None:
    """Ground truth for a run, through the outcomes endpoint (which grades each seat)."""
    body = {"expected": expected, "source": "dataset"}
    response = await client.post(f"/v1/runs/{run_id}/outcomes", json=body)
    assert response.status_code == 201, response.text


async def all_events(store: EventStore) -> list[RecordedEvent]:
    out: list[RecordedEvent] = []
    while batch := await store.read_all(runner.Checkpoint(*_last(out)), 1000):
        out += batch
    return out


def _last(events: list[RecordedEvent]) -> tuple[int, int]:
    return (events[-1].transaction_id, events[-1].global_position) if events else (0, 0)


# --- the statistics, computed here from the events alone ------------------------------


def judge_key(identity: Any) -> str:
    key = identity.kind + (f":{identity.model}" if identity.model else "")
    return (
        key
        + ("+weighted" if identity.weighted else "")
        + ("+informed" if identity.informed else "")
    )


def expected_stats(events: list[RecordedEvent]) -> dict[str, Any]:
    category: dict[str, str] = {}
    seats: dict[str, dict[str, str]] = {}
    calls: Counter[tuple[str, str]] = Counter()
    spent: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)  # tokens, cost, ms
    failures: Counter[tuple[str, str, str]] = Counter()
    agree: Counter[tuple[str, str]] = Counter()
    disagree: Counter[tuple[str, str]] = Counter()
    judged: dict[str, dict[str, Any]] = {}  # stream -> judge, category, answer, source
    truth: dict[str, OutcomeRecorded] = {}  # a run's latest outcome: its ground truth
    for record in events:
        event, stream = record.decode(), record.stream_id
        match event:
            case RunRequested():
                category[stream] = event.category
            case ReplayRequested():
                category[stream] = category[f"run-{event.source_run_id}"]
                judged[stream] = {"source": f"run-{event.source_run_id}"}
            case PanelSelected():
                seats[stream] = {m.member_id: m.model for m in event.members}
            case PanelCallSucceeded() | PanelCallFailed():
                calls[(event.model, category[stream])] += 1
                spent[(event.model, category[stream])]["latency_ms"] += event.latency_ms
                if isinstance(event, PanelCallSucceeded):
                    spent[(event.model, category[stream])].update(
                        input_tokens=event.input_tokens or 0,
                        output_tokens=event.output_tokens or 0,
                        cost_usd=event.cost_usd or 0,
                    )
                if isinstance(event, PanelCallFailed):
                    failures[(event.model, category[stream], event.error_kind)] += 1
            case JudgeDecided() | JudgeFailed():
                entry = judged.setdefault(stream, {"source": stream})
                entry["judge"] = judge_key(event.judge)
                entry["decided"] = isinstance(event, JudgeDecided)
                if isinstance(event, JudgeDecided) and stream.startswith("run-"):
                    for v in event.verdicts:
                        key = (seats[stream][v.member_id], category[stream])
                        (agree if v.agrees else disagree)[key] += 1
            case AnswerFinalized():
                judged.setdefault(stream, {"source": stream})["answer"] = event.answer
            case RunFailed():
                pass
            case OutcomeRecorded():
                truth[stream] = event
    right: Counter[tuple[str, str]] = Counter()
    wrong: Counter[tuple[str, str]] = Counter()
    pairs: dict[tuple[str, str, str], Counter[str]] = defaultdict(Counter)
    for stream, outcome in truth.items():  # the latest outcome only: earlier ones replaced
        graded = [
            (seats[stream][o.member_id], o.correct)
            for o in outcome.members
            if o.correct is not None
        ]
        for model, correct in graded:
            (right if correct else wrong)[(model, category[stream])] += 1
        for i, (a, a_ok) in enumerate(graded):
            for b, b_ok in graded[i + 1 :]:
                key = (category[stream], min(a, b), max(a, b))
                kind = "both_right" if a_ok and b_ok else "one_wrong"
                pairs[key]["both_wrong" if not a_ok and not b_ok else kind] += 1
    return {
        "calls": calls,
        "spent": spent,
        "failures": failures,
        "right": right,
        "wrong": wrong,
        "agree": agree,
        "disagree": disagree,
        "pairs": pairs,
        "judges": expected_judges(judged, truth, category),
    }


def expected_judges(
    judged: dict[str, dict[str, Any]], truth: dict[str, OutcomeRecorded], category: dict[str, str]
) -> dict[tuple[str, str], Counter[str]]:
    """Per judge and category: every judged row counts as a run; accuracy and agreement
    count one row per judge and source run (the original's, else the latest replay's);
    a judge that failed has no answer of its own: wrong where there is a truth."""
    rows = {stream: j for stream, j in judged.items() if "judge" in j}
    deciding: dict[tuple[str, str], str] = {}  # (source, judge) -> stream, in log order
    for stream, j in rows.items():
        key = (j["source"], j["judge"])
        if key not in deciding or not deciding[key].startswith("run-"):
            deciding[key] = stream
    judges: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    for stream, j in rows.items():
        counts = judges[(j["judge"], category[stream])]
        counts["runs"] += 1
        if deciding[(j["source"], j["judge"])] != stream:
            continue
        mine = j.get("answer") if j["decided"] else None
        correct = graded_answer(stream, j["source"], mine, rows, truth)
        if correct is not None:
            counts["graded"] += 1
            counts["right"] += correct
        for (source, judge), other_stream in deciding.items():  # other judges, same run
            other = rows[other_stream]
            theirs = other.get("answer") if other["decided"] else None
            if source != j["source"] or judge == j["judge"] or theirs is None:
                continue
            counts["compared"] += 1
            counts["agreed"] += mine is not None and normalize_answer(theirs) == normalize_answer(
                mine
            )
    return judges


def graded_answer(
    stream: str,
    source: str,
    answer: str | None,
    rows: dict[str, dict[str, Any]],
    truth: dict[str, OutcomeRecorded],
) -> bool | None:
    """A judge's answer against the source run's latest outcome: its expected answer;
    else its label, which the run's own answer (and the same answer) gets."""
    outcome = truth.get(source)
    if outcome is None or (outcome.expected is None and outcome.final_correct is None):
        return None
    if answer is None:
        return False
    if outcome.expected is not None:
        return answers_match(answer, outcome.expected)
    original = rows.get(source, {}).get("answer")
    if stream == source or (
        original is not None and normalize_answer(answer) == normalize_answer(original)
    ):
        return outcome.final_correct
    return False if outcome.final_correct else None


def check_answers(expected: dict[str, Any], got: dict[str, Any]) -> None:
    profiles = {(r["model"], r["category"]): r for r in got["profiles"]}
    assert set(profiles) == set(expected["calls"]) | set(expected["agree"]) | set(
        expected["disagree"]
    )
    for key, row in profiles.items():
        assert row["calls"] == expected["calls"][key], key
        assert row["right"] == expected["right"][key], key
        assert row["wrong"] == expected["wrong"][key], key
        assert row["judged"] == expected["agree"][key] + expected["disagree"][key], key
        fails = sum(n for (m, c, _), n in expected["failures"].items() if (m, c) == key)
        assert row["failures"] == fails, key
    by_kind = {(r["model"], r["category"], r["error_kind"]): r for r in got["failures"]}
    assert {k: r["failures"] for k, r in by_kind.items()} == dict(expected["failures"])
    for (model, cat, _), row in by_kind.items():
        assert row["calls"] == expected["calls"][(model, cat)]
    totals = {(r["model"], r["category"]): r for r in got["failure_totals"]}
    assert {k: r["calls"] for k, r in totals.items()} == dict(expected["calls"])
    for key, row in totals.items():
        fails = sum(n for (m, c, _), n in expected["failures"].items() if (m, c) == key)
        assert row["failures"] == fails and row["successes"] == row["calls"] - fails, key
        assert row["latency_p50_ms"] is not None and row["latency_p95_ms"] >= row["latency_p50_ms"]
        spent = expected["spent"][key]
        assert row["input_tokens"] == spent["input_tokens"], key
        assert row["output_tokens"] == spent["output_tokens"], key
        assert row["cost_usd"] == pytest.approx(spent["cost_usd"]), key
        assert row["mean_latency_ms"] == pytest.approx(spent["latency_ms"] / row["calls"]), key
    # Both tables of call statistics answer alike (sums added in another order).
    for name in ("failures", "failure_totals"):
        daily = [{k: _exact(v) for k, v in row.items()} for row in got[f"{name}_daily"]]
        assert daily == [{k: _exact(v) for k, v in row.items()} for row in got[name]]
    pairs = {(r["category"], r["model_a"], r["model_b"]): r for r in got["co_failures"]}
    assert set(pairs) == set(expected["pairs"])
    for key, counts in expected["pairs"].items():
        for measure in ("both_wrong", "one_wrong", "both_right"):
            assert pairs[key][measure] == counts[measure], (key, measure)
    judges = {(r["judge"], r["category"]): r for r in got["judges"]}
    assert set(judges) == set(expected["judges"])
    for key, counts in expected["judges"].items():
        assert judges[key]["runs"] == counts["runs"], key
        assert judges[key]["graded"] == counts["graded"], key
        assert judges[key]["right"] == counts["right"], key
        assert judges[key]["compared"] == counts["compared"], key
        assert judges[key]["agreement"] == (
            counts["agreed"] / counts["compared"] if counts["compared"] else None
        ), key


async def ask_all(client: AsyncTestClient[Any], as_of: str | None = None) -> dict[str, Any]:
    suffix = f"&as_of={as_of}" if as_of else ""
    got = {}
    for name, path in (
        ("profiles", "/v1/profiles?"),
        ("failures", "/v1/stats/failures?group_by=model,category,error_kind"),
        ("failure_totals", "/v1/stats/failures?group_by=model,category"),
        # The same questions over a window read the daily rows, not the totals.
        (
            "failures_daily",
            "/v1/stats/failures?group_by=model,category,error_kind&since=2000-01-01",
        ),
        ("failure_totals_daily", "/v1/stats/failures?group_by=model,category&since=2000-01-01"),
        ("co_failures", "/v1/stats/co-failures?"),
        ("judges", "/v1/stats/judges?"),
    ):
        response = await client.get(path + suffix)
        assert response.status_code == 200, response.text
        got[name] = response.json()["rows"]
    return got


def _exact(value: Any) -> Any:
    """Floats to 10 significant digits: sums over other batches add in another order."""
    return float(f"{value:.10g}") if isinstance(value, float) else value


async def dump(pool: asyncpg.Pool) -> dict[str, list[tuple[Any, ...]]]:
    tables = [t for p in PROJECTIONS for t in p.tables]
    out = {}
    async with pool.acquire() as conn:
        for table in tables:
            rows = await conn.fetch(f"SELECT * FROM {table}")
            out[table] = sorted(tuple(map(_exact, r.values())) for r in rows)
        cps = await conn.fetch(
            "SELECT name, transaction_id, global_position, events FROM projection_checkpoints"
        )
        out["checkpoints"] = sorted(tuple(r.values()) for r in cps)
    return out


# --- tests ----------------------------------------------------------------------------


async def test_every_statistic_equals_the_count_from_the_events(
    service: tuple[AsyncTestClient[Any], Any], store: EventStore, pool: asyncpg.Pool
) -> None:
    client, world = service
    run_ids = await fuse_mix(client, world, 18)
    await correct_some(client, run_ids)
    replays = [{"kind": "vote", "weighted": True}, {"kind": "vote", "weighted": True}]
    broken = {"kind": "synthesize", "model": "sim/judge-broken", "fallback": "vote"}
    for run_id in run_ids[:4]:  # replays with other judges count for the judges: the
        for judge in [*replays, broken]:  # same one twice (forced) on one source run
            response = await client.post(
                f"/v1/runs/{run_id}/replays", json={"judge": judge, "force": True}
            )
            assert response.status_code == 201, response.text
    applied = await runner.run_until_caught_up(pool)
    events = await all_events(store)
    assert applied == len(events) * len(PROJECTIONS)
    expected = expected_stats(events)
    assert sum(expected["failures"].values()) > 0 and expected["pairs"]  # the mix has both
    got = await ask_all(client)
    check_answers(expected, got)

    # What the router loads from the read models is what it folds from the log (every
    # run here is the tenant "default"'s).
    fold = ProfileFold()
    for record in events:
        fold.apply(record.stream_id, record.decode())
    async with pool.acquire() as conn:
        loaded = (await load_profiles(conn)).of("default")
    folded = fold.builder("default").snapshot(loaded.checkpoint)
    assert set(loaded.cells) == set(folded.cells)
    for key, cell in folded.cells.items():  # sums in another order: floats to 1e-9
        assert dataclasses.astuple(loaded.cells[key]) == pytest.approx(dataclasses.astuple(cell))
    assert loaded.pairs == folded.pairs
    assert loaded.checkpoint == f"{events[-1].transaction_id}:{events[-1].global_position}"

    # CSV carries the same rows.
    response = await client.get("/v1/profiles", headers={"accept": "text/csv"})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    lines = response.text.strip().splitlines()
    assert lines[0].startswith("model,category,n,") and len(lines) == len(got["profiles"]) + 1
    assert response.headers["x-projection-lag-events"] == "0"
    # An empty answer still names its columns (it was a bare newline), the same ones.
    csv = {"accept": "text/csv"}
    for path in ("/v1/profiles", "/v1/stats/failures?group_by=model,error_kind",
                 "/v1/stats/failures?group_by=day,category", "/v1/stats/co-failures",
                 "/v1/stats/judges"):  # fmt: skip
        joined = "&" if "?" in path else "?"
        rows = (await client.get(path)).json()["rows"]
        assert rows, path  # the mix above gives every question rows
        full = (await client.get(path, headers=csv)).text.splitlines()[0]
        empty = (await client.get(f"{path}{joined}category=none-such", headers=csv)).text
        assert full == ",".join(rows[0]) == empty.strip(), path


async def test_rebuild_crash_and_two_workers_change_nothing(
    service: tuple[AsyncTestClient[Any], Any], store: EventStore, pool: asyncpg.Pool
) -> None:
    client, world = service
    # Corrections too, applied live in ranges of 7 events: the outcome a correction
    # replaces lies in an earlier range (the rebuild below does it all in one pass).
    await correct_some(client, await fuse_mix(client, world, 9))
    await runner.run_until_caught_up(pool, batch_events=7)
    before = await dump(pool)
    indexes = "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema()"
    indexes_before = set(await pool.fetch(indexes))

    # Rebuild from zero into shadow tables and swap: identical read models, and the
    # same indexes under the same names (the secondary ones are built after the rows).
    logged = len(await all_events(store))
    for projection in PROJECTIONS:
        for batch in (7, 10_000):  # in many ranges, and in one up to the head
            seen: list[tuple[int, int]] = []
            result = await runner.rebuild(
                pool,
                projection.name,
                batch_events=batch,
                progress=lambda done, total, into=seen: into.append((done, total)),
            )
            assert result.events == logged
            # progress counts up to the log's size, which it knew from the start
            assert [total for _, total in seen] == [logged] * len(seen)
            assert [done for done, _ in seen] == sorted({done for done, _ in seen})
            assert seen[-1][0] == logged and len(seen) == (1 if batch > logged else -(-logged // 7))
    assert await dump(pool) == before
    assert set(await pool.fetch(indexes)) == indexes_before

    # A worker killed mid-batch: read models and checkpoint written, not yet committed.
    await fuse_mix(client, world, 6)
    async with pool.acquire() as killer, pool.acquire() as victim:
        pid = victim.get_server_pid()

        async def kill() -> None:
            await killer.fetchval("SELECT pg_terminate_backend($1)", pid)

        with pytest.raises(KILLED):
            await runner.step(victim, runner.BY_NAME["model_stats"], 10_000, before_commit=kill)
    await runner.run_until_caught_up(pool)
    expected = expected_stats(await all_events(store))
    check_answers(expected, await ask_all(client))

    # Two workers: one owns each projection, the other waits, then takes over.
    first = runner.ProjectionWorker(pool, poll_interval=0.05)
    second = runner.ProjectionWorker(pool, poll_interval=0.05)
    tasks = [asyncio.create_task(first.run()), asyncio.create_task(second.run())]
    try:
        await asyncio.wait_for(asyncio.gather(first.caught_up.wait(), second.caught_up.wait()), 10)
        assert first.owned.isdisjoint(second.owned)
        assert first.owned | second.owned == {p.name for p in PROJECTIONS}
        owner, waiter = (first, second) if first.owned else (second, first)
        tasks[[first, second].index(owner)].cancel()
        await fuse_mix(client, world, 3)
        for _ in range(200):
            if waiter.owned == {p.name for p in PROJECTIONS} and waiter.caught_up.is_set():
                lag = await lag_of(pool)
                if lag == 0:
                    break
            await asyncio.sleep(0.05)
        assert waiter.owned == {p.name for p in PROJECTIONS}
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
    expected = expected_stats(await all_events(store))
    check_answers(expected, await ask_all(client))


async def lag_of(pool: asyncpg.Pool) -> int:
    async with pool.acquire() as conn:
        return sum(s.lag.events for s in await runner.status(conn))


async def test_as_of_answers_with_the_earlier_numbers(
    service: tuple[AsyncTestClient[Any], Any], store: EventStore, pool: asyncpg.Pool
) -> None:
    client, world = service
    await fuse_mix(client, world, 6)
    await runner.run_until_caught_up(pool)
    earlier = await ask_all(client)
    checkpoint = (await client.get("/v1/profiles")).json()["checkpoint"]
    position = checkpoint.split(":")[1]
    await fuse_mix(client, world, 6)
    await runner.run_until_caught_up(pool)
    now = await ask_all(client)
    assert now != earlier
    assert await ask_all(client, as_of=checkpoint) == earlier
    assert await ask_all(client, as_of=position) == earlier
    answer = (await client.get(f"/v1/profiles?as_of={checkpoint}")).json()
    assert answer["as_of"] == checkpoint and answer["lag"]["events"] > 0
    # The live read models were not touched by answering as of then.
    assert await ask_all(client) == now


async def test_a_window_to_the_last_day_there_is_answers(
    service: tuple[AsyncTestClient[Any], Any],
) -> None:
    client, _ = service
    response = await client.get("/v1/stats/failures?group_by=day&until=9999-12-31")
    assert response.status_code == 200, response.text
    # Calls are counted per UTC day: a time inside one is refused, not widened to it;
    # midnight UTC in another offset is a whole day.
    inside = await client.get("/v1/stats/failures?until=2026-11-29T16:00:00Z")
    assert inside.status_code == 400
    assert "not a whole day" in inside.json()["detail"]
    assert "such as 2026-11-30" in inside.json()["detail"]  # until: through that day
    midnight = await client.get("/v1/stats/failures?since=2026-11-29T02:00:00%2B02:00")
    assert midnight.status_code == 200, midnight.text


@pytest.mark.parametrize(
    ("path", "needle"),
    [
        ("/v1/stats/failures?group_by=model,colour", "colour"),
        ("/v1/stats/failures?since=2026-02-01&until=2026-01-01", "not before"),
        ("/v1/stats/failures?since=yesterday-ish", "ISO 8601"),
        ("/v1/stats/failures?error_kind=gremlins", "gremlins"),
        ("/v1/profiles?as_of=last-tuesday", "ISO 8601"),
        ("/v1/stats/judges?as_of=12:ab", "ISO 8601"),
        ("/v1/stats/co-failures?min_n=-1", "min_n"),
        ("/v1/stats/failures?as_of=99999999999999999999", "beyond any position"),
        ("/v1/profiles?as_of=%C2%B2", "ISO 8601"),  # a digit to str.isdigit, not to int
        ("/v1/stats/failures?until=9999-12-31T23:00-05:00", "out of range"),
        ("/v1/stats/failures?model=a%00b", "model: holds the NUL"),
        ("/v1/stats/failures?since=2026-02-01T12:00:00Z", "not a whole day"),
        # A misspelt or repeated parameter was answered as if absent (or the last kept).
        ("/v1/stats/judges?foo=bar", "unknown query parameter foo"),
        ("/v1/runs?categry=x", "unknown query parameter categry"),
        ("/v1/stats/failures?group_by=model&group_by=day", "group_by given more than once"),
    ],
)
async def test_bad_filters_are_4xx(
    service: tuple[AsyncTestClient[Any], Any], path: str, needle: str
) -> None:
    client, _ = service
    response = await client.get(path)
    assert 400 <= response.status_code < 500, response.text
    assert needle in response.text


async def test_runs_read_model_lists_runs_and_replays(
    service: tuple[AsyncTestClient[Any], Any], store: EventStore, pool: asyncpg.Pool
) -> None:
    client, world = service
    run_ids = await fuse_mix(client, world, 3)
    replay = await client.post(f"/v1/runs/{run_ids[0]}/replays", json={"judge": {"kind": "vote"}})
    assert replay.status_code == 201
    await runner.run_until_caught_up(pool)
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT * FROM run_summary ORDER BY requested_at")
    assert [r["kind"] for r in rows] == ["run", "run", "run", "replay"]
    assert rows[3]["source_stream_id"] == f"run-{run_ids[0]}"
    assert rows[3]["category"] == rows[0]["category"]
    assert all(r["status"] in ("finalized", "failed") for r in rows)
    assert rows[0]["outcomes"] == 1 and rows[2]["outcomes"] == 0
    assert uuid.UUID(rows[0]["stream_id"].removeprefix("run-"))


async def test_a_worker_whose_connection_dies_reconnects_and_catches_up(
    service: tuple[AsyncTestClient[Any], Any], store: EventStore, pool: asyncpg.Pool
) -> None:
    client, world = service
    worker = runner.ProjectionWorker(pool, poll_interval=0.05)
    task = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(worker.caught_up.wait(), 10)
        first = worker.server_pid
        assert first is not None
        await pool.fetchval("SELECT pg_terminate_backend($1)", first)
        await fuse_mix(client, world, 3)
        for _ in range(400):
            if worker.server_pid != first and worker.caught_up.is_set() and not await lag_of(pool):
                break
            await asyncio.sleep(0.05)
        assert worker.server_pid != first and not await lag_of(pool)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    check_answers(expected_stats(await all_events(store)), await ask_all(client))


async def test_a_rebuild_beside_a_growing_log_counts_every_event_once(
    service: tuple[AsyncTestClient[Any], Any], store: EventStore, pool: asyncpg.Pool
) -> None:
    # `projections rebuild` runs beside a serving service: the log grows while the
    # rebuild reads it, chases its head a bounded number of times, and swaps.
    client, world = service
    await fuse_mix(client, world, 6)
    await runner.run_until_caught_up(pool)
    before = await dump(pool)
    stop = asyncio.Event()
    appended = 0

    async def keep_appending() -> None:  # events no read model counts, back to back
        nonlocal appended
        noise = RunFailed(reason="abandoned", message="not a run")
        while not stop.is_set():
            await store.append_to_stream(f"noise-{uuid.uuid4()}", [NewEvent(noise)])
            appended += 1

    appender = asyncio.create_task(keep_appending())
    try:
        await asyncio.sleep(0.2)
        for projection in PROJECTIONS:
            seen = appended
            result = await asyncio.wait_for(
                runner.rebuild(pool, projection.name, batch_events=50), 30
            )
            assert appended > seen  # the log grew during the rebuild
            async with pool.acquire() as conn:
                (status,) = await runner.status(conn, [projection.name])
                # the checkpoint's count is exactly the events up to the checkpoint
                counted = await runner.count_range(conn, runner.START, status.checkpoint)
            assert status.events == result.events == counted
    finally:
        stop.set()
        await appender
    await runner.run_until_caught_up(pool)
    after = await dump(pool)
    assert {k: v for k, v in after.items() if k != "checkpoints"} == {
        k: v for k, v in before.items() if k != "checkpoints"
    }


async def test_csv_cells_a_spreadsheet_would_run_are_made_inert(
    service: tuple[AsyncTestClient[Any], Any], pool: asyncpg.Pool
) -> None:
    # A client's category reaches every statistics export; in a spreadsheet a cell
    # starting with "=" is a formula (=HYPERLINK can send the sheet's data anywhere).
    client, _ = service
    formula = '=HYPERLINK("http://example.invalid/","x")'
    body = {"prompt": "What is 2 + 2?", "category": formula, "panel": ["sim/model-a"]}
    assert (await client.post("/v1/fusions", json=body)).status_code == 200
    await runner.run_until_caught_up(pool)
    csv = {"accept": "text/csv"}
    response = await client.get("/v1/stats/failures?group_by=category", headers=csv)
    assert response.status_code == 200, response.text
    cells = response.text.splitlines()[1]
    assert cells.startswith("\"'=HYPERLINK(") and "\n=" not in response.text
    # JSON carries the value as it is; numbers in CSV are not touched.
    rows = (await client.get("/v1/stats/failures?group_by=category")).json()["rows"]
    assert rows[0]["category"] == formula
    assert cells.endswith(",".join(str(v) for v in list(rows[0].values())[-1:]))
