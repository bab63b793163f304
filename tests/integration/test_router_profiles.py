"""The router on a real log: profiles followed in memory, decisions recorded in
panel.selected, and `route explain` reproducing them from the log alone."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator

import asyncpg
import msgspec
import pytest
from structlog.testing import capture_logs

from service.config import Config
from service.domain.events import JudgeDecided, MemberOutcome, OutcomeRecorded
from service.domain.profiles import ProfileBuilder, ProfileFold
from service.domain.routing import ROUTER_VERSION, RouterSettings
from service.orchestration.fusion import FusionRunner
from service.orchestration.profile_loader import load_profile_snapshot
from service.orchestration.route_explain import NotRouted, explain_run, snapshot_at
from service.orchestration.router import (
    Router,
    fold_batch,
    fold_profiles,
    follow_log,
    router_seed,
)
from service.projections import runner as projections
from service.providers.http import create_http_transport
from service.providers.registry import ProviderRegistry
from service.store import Checkpoint, EventStore, NewEvent
from service.store.postgres import START, checkpoint_of
from tests.conftest import RunningSimulator
from tests.integration.replay_fixtures import offline_config, record_runs
from tests.integration.router_world import (
    fuse,
    record_truth,
    routed_config,
    run_events,
    selection,
)


async def log_end(store: EventStore) -> Checkpoint:
    """The checkpoint after the last committed event."""
    end = START
    while batch := await store.read_all(end, 1000):
        end = checkpoint_of(batch[-1])
    return end


async def caught_up(store: EventStore, router: Router) -> Checkpoint:
    """Wait until the router's snapshot reflects the whole log. Gap-safe reading waits
    for every older transaction on the server, other tests' too: allow for that."""
    for _ in range(1200):
        end = await log_end(store)
        if end != START and router.snapshot.checkpoint == str(end):
            return end
        await asyncio.sleep(0.05)
    raise AssertionError(f"router still at {router.snapshot.checkpoint}, log at {end}")


@pytest.fixture
async def routed(
    store: EventStore, simulator: RunningSimulator
) -> AsyncIterator[tuple[FusionRunner, Router, Config]]:
    config = routed_config(simulator)
    router = Router(config)
    async with create_http_transport() as client:
        runner = FusionRunner(
            store, ProviderRegistry(config, client, lambda _: None), router=router
        )
        follower = asyncio.create_task(follow_log(router, store, poll_interval=0.05))
        try:
            yield runner, router, config
        finally:
            follower.cancel()
            await runner.close()


async def test_a_routed_run_is_explained_from_the_log(
    routed: tuple[FusionRunner, Router, Config], store: EventStore, simulator: RunningSimulator
) -> None:
    runner, router, config = routed
    questions = simulator.world.bank.in_category("multiple_choice")[:7]
    for q in questions[:6]:
        run_id, state = await fuse(runner, config, q.prompt)
        await record_truth(store, run_id, state, q.expected)
    await caught_up(store, router)
    run_id, state = await fuse(runner, config, questions[6].prompt)

    selected = await selection(store, run_id)
    decision = selected.router
    assert selected.method == "router" and decision is not None
    assert decision.version == ROUTER_VERSION and decision.k == 3
    assert decision.seed == router_seed(run_id)
    assert decision.profile_checkpoint != "0:0"
    assert [c.model for c in decision.candidates] == list(config.presets["auto"].router.candidates)
    assert len(selected.members) == 3

    explanation = await explain_run(store, config, str(run_id))
    assert explanation.identical, explanation.differences
    assert explanation.category == "multiple_choice"
    assert explanation.seats == [m.model for m in selected.members]
    # Other maths would not reproduce it: the comparison is real.
    other = await explain_run(store, config, str(run_id), RouterSettings(prior_strength=60))
    assert not other.identical

    judged = next(e for e in await run_events(store, run_id) if isinstance(e, JudgeDecided))
    assert judged.judge.weighted and judged.member_weights is not None
    assert set(judged.member_weights) == {m.member_id for m in state.succeeded}
    assert all(0.0 < w < 1.0 for w in judged.member_weights.values())


async def test_a_run_routed_while_every_breaker_rested_is_explained_from_the_log(
    routed: tuple[FusionRunner, Router, Config], store: EventStore, simulator: RunningSimulator
) -> None:
    runner, router, config = routed
    questions = simulator.world.bank.in_category("multiple_choice")[:3]
    for q in questions[:2]:
        run_id, state = await fuse(runner, config, q.prompt)
        await record_truth(store, run_id, state, q.expected)
    await caught_up(store, router)
    pool = config.presets["auto"].router.candidates
    now = time.monotonic()
    router.clock = lambda: now
    for model in pool:  # one provider down: every candidate rests
        while router.breakers([model])[model].state == "closed":
            router.record_call(model, failed=True)
    router.clock = lambda: now + router.breaker_settings.cooldown_s
    run_id, _ = await fuse(runner, config, questions[2].prompt)

    decision = (await selection(store, run_id)).router
    assert decision is not None
    reasons = {c.model: c.reason for c in decision.candidates}
    assert reasons[pool[0]] == "probe: breaker half-open (every candidate resting)"
    explanation = await explain_run(store, config, str(run_id))
    assert explanation.identical, explanation.differences


async def test_the_followed_snapshot_equals_a_rebuild_from_the_log(
    routed: tuple[FusionRunner, Router, Config], store: EventStore, simulator: RunningSimulator
) -> None:
    runner, router, config = routed
    for q in simulator.world.bank.in_category("arithmetic")[:4]:
        run_id, state = await fuse(runner, config, q.prompt, preset="vote")
        await record_truth(store, run_id, state, q.expected)
    end = await caught_up(store, router)
    rebuilt = await snapshot_at(store, end)
    assert router.snapshot.cells == rebuilt.cells and router.snapshot.pairs == rebuilt.pairs
    calls = sum(c.calls for c in rebuilt.cells.values())
    graded = sum(c.right + c.wrong for c in rebuilt.cells.values())
    assert calls == 12 and graded == 12  # 4 runs x 3 members, each graded
    with pytest.raises(NotRouted, match="not chosen by the router"):
        await explain_run(store, config, str(run_id))


async def test_a_budget_the_profiles_say_is_too_small_fails_the_run_on_the_record(
    store: EventStore, simulator: RunningSimulator
) -> None:
    config = routed_config(simulator)
    builder = ProfileBuilder()  # every candidate has written ~100k tokens per answer
    for model in config.presets["auto"].router.candidates:
        builder.record_call(
            model, "arithmetic", failed=False, cost_usd=1.0, latency_ms=1, output_tokens=100_000
        )
    router = Router(config, snapshot=builder.snapshot("1:1"))
    async with create_http_transport() as client:
        runner = FusionRunner(
            store, ProviderRegistry(config, client, lambda _: None), router=router
        )
        prompt = simulator.world.bank.in_category("arithmetic")[0].prompt
        with capture_logs() as logs:
            run_id, state = await fuse(runner, config, prompt, max_cost_usd=0.01)  # planned
            _, normal = await fuse(runner, config, prompt, preset="vote")
    assert state.failed is not None and state.failed.reason == "budget_exceeded"
    assert "cannot pay for 3 seats" in state.failed.message
    types = [type(e).__name__ for e in await run_events(store, run_id)]
    assert types == ["RunRequested", "RunFailed"]
    # Counted and summarised like any other run, once each: the alert sees its reason.
    assert normal.status == "finalized"
    runs = {
        (s.labels["status"], s.labels["reason"]): s.value
        for metric in runner.metrics.registry.collect()
        if metric.name == "fusion_runs"
        for s in metric.samples
        if s.name == "fusion_runs_total"
    }
    assert runs == {("failed", "budget_exceeded"): 1.0, ("finalized", ""): 1.0}
    summaries = [(e["status"], e["reason"]) for e in logs if e["event"] == "run.summary"]
    assert summaries == [("failed", "budget_exceeded"), ("finalized", None)]


async def test_a_fold_holding_few_runs_reads_back_the_context_of_late_outcomes(
    store: EventStore,
) -> None:
    # The follower keeps only the latest runs' category and seats; an outcome recorded
    # long after its run makes it read that run's request and panel back from the log.
    run_ids = await record_runs(store, 5)
    late = OutcomeRecorded(
        source="dataset",
        final_correct=True,
        members=[
            MemberOutcome(member_id="m1", correct=True),
            MemberOutcome(member_id="m2", correct=False),
            MemberOutcome(member_id="m3", correct=True),
        ],
    )
    for run_id in run_ids[:2]:
        meta = {"correlation_id": run_id, "tenant": "default", "actor": "test"}
        await store.append_to_stream(f"run-{run_id}", [NewEvent(late, meta)])
    # A later outcome replaces the first run's (a run's latest outcome is its truth):
    # the fold, which let go of that run, reads back the outcome it takes back too.
    await record_runs(store, 2)
    corrected = msgspec.structs.replace(
        late, members=[MemberOutcome(member_id="m1", correct=False)]
    )
    meta = {"correlation_id": run_ids[0], "tenant": "default", "actor": "test"}
    await store.append_to_stream(f"run-{run_ids[0]}", [NewEvent(corrected, meta)])
    events = await store.read_all(START, 1000)

    everything = ProfileFold()
    fold_profiles(everything, events)
    expected = everything.builder.snapshot("end")
    assert sum(c.right + c.wrong for c in expected.cells.values()) == 4  # the late grades

    few = ProfileFold(max_runs=1)
    for start in range(0, len(events), 4):
        await fold_batch(store, few, events[start : start + 4])
    assert few.builder.snapshot("end") == expected
    assert not few.holds(f"run-{run_ids[2]}")  # it did let go of older runs

    forgetful = ProfileFold(max_runs=1)  # without reading back: the late grades are lost
    for start in range(0, len(events), 4):
        fold_profiles(forgetful, events[start : start + 4])
    assert forgetful.builder.snapshot("end") != expected


async def test_a_start_from_the_read_models_rests_no_model_for_its_past_failures(
    store: EventStore, pool: asyncpg.Pool
) -> None:
    await record_runs(store, 4)
    await projections.run_until_caught_up(pool)
    async with pool.acquire() as conn:
        # 9 failed calls in 10 over the model's lifetime, none of them lately
        failing = await conn.fetchval(
            "UPDATE model_error_profile SET calls = calls + 1000, failures = failures + 900"
            " WHERE model = (SELECT min(model) FROM model_error_profile) RETURNING model"
        )
        start = await load_profile_snapshot(conn)
    router = Router(offline_config())
    follower = asyncio.create_task(follow_log(router, store, poll_interval=0.05))
    try:
        for _ in range(200):
            if router.snapshot.checkpoint == start.checkpoint:
                break
            await asyncio.sleep(0.02)
        assert router.snapshot == start
    finally:
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower
    assert router.breakers([failing])[failing].state == "closed"


async def test_the_follower_starts_from_the_read_models_and_follows_the_log_after_them(
    store: EventStore, pool: asyncpg.Pool
) -> None:
    run_ids = await record_runs(store, 4)
    graded = OutcomeRecorded(
        source="dataset",
        final_correct=True,
        members=[MemberOutcome(member_id="m1", correct=True),
                 MemberOutcome(member_id="m2", correct=True)],
    )  # fmt: skip
    meta = {"correlation_id": run_ids[1], "tenant": "default", "actor": "test"}
    await store.append_to_stream(f"run-{run_ids[1]}", [NewEvent(graded, meta)])
    await projections.run_until_caught_up(pool)  # the read models hold these runs
    async with pool.acquire() as conn:
        # A mark only the read models carry: the follower's counts show where they began.
        marked = await conn.fetchval(
            "UPDATE model_error_profile SET calls = calls + 1000"
            " WHERE model = (SELECT min(model) FROM model_error_profile) RETURNING model"
        )
        start = await load_profile_snapshot(conn)
    assert start.checkpoint == str(await log_end(store))
    router = Router(offline_config())
    follower = asyncio.create_task(follow_log(router, store, poll_interval=0.05))
    try:
        for _ in range(200):  # nothing after the read models' checkpoint: their counts
            if router.snapshot.checkpoint == start.checkpoint:
                break
            await asyncio.sleep(0.02)
        assert router.snapshot == start

        # What comes after: new runs, and a grade for a run from before the checkpoint
        # (whose request the follower never read: it reads it back).
        await record_runs(store, 2)
        late = OutcomeRecorded(
            source="human",
            final_correct=None,
            members=[MemberOutcome(member_id="m1", correct=False)],
        )
        meta = {"correlation_id": run_ids[0], "tenant": "default", "actor": "test"}
        await store.append_to_stream(f"run-{run_ids[0]}", [NewEvent(late, meta)])
        # And a correction of a grade from before the checkpoint: it replaces that one.
        meta = {"correlation_id": run_ids[1], "tenant": "default", "actor": "test"}
        await store.append_to_stream(f"run-{run_ids[1]}", [NewEvent(late, meta)])
        end = await caught_up(store, router)
    finally:
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower
    rebuilt = await snapshot_at(store, end)  # folded from the log's start
    assert set(router.snapshot.cells) == set(rebuilt.cells)
    for key, cell in rebuilt.cells.items():  # sums in another order: floats to 1e-9
        if key[0] == marked:
            cell = dataclasses.replace(cell, calls=cell.calls + 1000)
        got = dataclasses.astuple(router.snapshot.cells[key])
        assert got == pytest.approx(dataclasses.astuple(cell))
    assert router.snapshot.pairs == rebuilt.pairs
    # the late grades counted; the corrected run's first two grades taken back
    assert sum(c.wrong for c in rebuilt.cells.values()) == 2
    assert sum(c.right for c in rebuilt.cells.values()) == 0
    await projections.run_until_caught_up(pool)  # and the read models say the same
    async with pool.acquire() as conn:
        projected = await load_profile_snapshot(conn)
    assert projected.pairs == rebuilt.pairs
    assert {k: (c.right, c.wrong) for k, c in projected.cells.items()} == {
        k: (c.right, c.wrong) for k, c in rebuilt.cells.items()
    }
