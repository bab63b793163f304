"""The router on a real log: profiles followed in memory, decisions recorded in
panel.selected, and `route explain` reproducing them from the log alone."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator

import asyncpg
import msgspec
import pytest
from structlog.testing import capture_logs

from service.config import Config
from service.domain.events import JudgeDecided, MemberOutcome, OutcomeRecorded
from service.domain.profiles import DEFAULT_TENANT, ProfileBuilder, ProfileFold, TenantProfiles
from service.domain.routing import ROUTER_VERSION, RouterSettings, member_weights
from service.orchestration.fusion import FusionRunner
from service.orchestration.profile_loader import load_profiles
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
from service.store import NO_STREAM, EventStore, NewEvent
from service.store.postgres import START
from tests.conftest import RunningSimulator
from tests.integration.replay_fixtures import offline_config, record_runs, recorded_run
from tests.integration.router_world import (
    caught_up,
    fuse,
    log_end,
    record_truth,
    routed_config,
    run_events,
    selection,
)


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


async def test_each_tenants_runs_are_routed_weighted_and_explained_on_its_own_profiles(
    routed: tuple[FusionRunner, Router, Config], store: EventStore, simulator: RunningSimulator
) -> None:
    runner, router, config = routed
    questions = simulator.world.bank.in_category("multiple_choice")[:12]
    for q in questions[:4]:
        run_id, state = await fuse(runner, config, q.prompt, tenant="b")
        await record_truth(store, run_id, state, q.expected)
    await caught_up(store, router)
    b_profiles = router.snapshot("b")
    assert b_profiles.cells and not router.snapshot("a").cells
    for q in questions[4:10]:  # tenant a: every answer graded wrong
        run_id, state = await fuse(runner, config, q.prompt, tenant="a")
        await record_truth(store, run_id, state, "-1")
    await caught_up(store, router)
    assert router.snapshot("b") is b_profiles  # a's runs changed nothing of b's

    b_run, b_state = await fuse(runner, config, questions[10].prompt, tenant="b")
    a_run, _ = await fuse(runner, config, questions[11].prompt, tenant="a")
    decision = (await selection(store, b_run)).router
    assert decision is not None
    assert decision.profile_checkpoint == b_profiles.checkpoint  # a's activity not in it
    judged = next(e for e in await run_events(store, b_run) if isinstance(e, JudgeDecided))
    members = [(m.member_id, m.model) for m in b_state.succeeded]
    assert judged.member_weights == member_weights(b_profiles, "multiple_choice", members)
    ours = router.member_weights("multiple_choice", members, tenant="b")
    theirs = router.member_weights("multiple_choice", members, tenant="a")
    assert all(theirs[m] < ours[m] for m, _ in members)  # a's truth is a's alone

    for run_id, tenant in ((b_run, "b"), (a_run, "a")):
        explanation = await explain_run(store, config, str(run_id))
        assert explanation.tenant == tenant
        assert explanation.identical, explanation.differences


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
    rebuilt = await snapshot_at(store, end, DEFAULT_TENANT)
    followed = router.snapshot(DEFAULT_TENANT)
    assert followed.cells == rebuilt.cells and followed.pairs == rebuilt.pairs
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
    router = Router(
        config, profiles=TenantProfiles("1:1", {DEFAULT_TENANT: builder.snapshot("1:1")})
    )
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
    expected = everything.profiles("end")
    graded = expected.of(DEFAULT_TENANT).cells.values()
    assert sum(c.right + c.wrong for c in graded) == 4  # the late grades

    few = ProfileFold(max_runs=1)
    for start in range(0, len(events), 4):
        await fold_batch(store, few, events[start : start + 4])
    assert few.profiles("end") == expected
    assert not few.holds(f"run-{run_ids[2]}")  # it did let go of older runs

    forgetful = ProfileFold(max_runs=1)  # without reading back: the late grades are lost
    for start in range(0, len(events), 4):
        fold_profiles(forgetful, events[start : start + 4])
    assert forgetful.profiles("end") != expected


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
        start = await load_profiles(conn)
    router = Router(offline_config())
    follower = asyncio.create_task(follow_log(router, store, poll_interval=0.05))
    try:
        for _ in range(200):
            if router.profiles.checkpoint == start.checkpoint:
                break
            await asyncio.sleep(0.02)
        assert router.profiles == start
    finally:
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower
    assert router.breakers([failing])[failing].state == "closed"


async def record_tenant_runs(store: EventStore, count: int, tenant: str) -> list[str]:
    """Append ``count`` finalized runs of the tenant; returns their ids, oldest first."""
    run_ids = []
    for n in range(count):
        run_id = uuid.uuid4()
        answers = ("ABCD"[n % 2], "ABCD"[n % 4], "ABCD"[n % 3])
        meta = {"correlation_id": str(run_id), "tenant": tenant, "actor": "test"}
        events = [NewEvent(e, meta) for e in recorded_run(run_id, answers)]
        await store.append_to_stream(f"run-{run_id}", events, NO_STREAM)
        run_ids.append(str(run_id))
    return run_ids


async def grade(store: EventStore, run_id: str, *marks: bool) -> None:
    """Append an outcome grading the run's first seats (m1, m2, ...)."""
    outcome = OutcomeRecorded(
        source="human",
        final_correct=None,
        members=[MemberOutcome(member_id=f"m{i + 1}", correct=m) for i, m in enumerate(marks)],
    )
    meta = {"correlation_id": run_id, "tenant": "whoever", "actor": "test"}  # the run's counts
    await store.append_to_stream(f"run-{run_id}", [NewEvent(outcome, meta)])


async def test_the_follower_starts_from_the_read_models_and_follows_the_log_after_them(
    store: EventStore, pool: asyncpg.Pool
) -> None:
    # Two tenants, the same models: each tenant's profiles count its own runs only.
    run_ids = await record_runs(store, 4)  # the tenant "default"
    other = await record_tenant_runs(store, 3, "t2")
    await grade(store, run_ids[1], True, True)
    await grade(store, other[0], False, False, True)
    await projections.run_until_caught_up(pool)  # the read models hold these runs
    async with pool.acquire() as conn:
        # A mark only the read models carry: the follower's counts show where they began.
        marked = await conn.fetchval(
            "UPDATE model_error_profile SET calls = calls + 1000 WHERE tenant = 'default'"
            " AND model = (SELECT min(model) FROM model_error_profile) RETURNING model"
        )
        start = await load_profiles(conn)
    assert start.checkpoint == str(await log_end(store))
    assert set(start.tenants) == {DEFAULT_TENANT, "t2"}
    router = Router(offline_config())
    follower = asyncio.create_task(follow_log(router, store, poll_interval=0.05))
    try:
        for _ in range(200):  # nothing after the read models' checkpoint: their counts
            if router.profiles.checkpoint == start.checkpoint:
                break
            await asyncio.sleep(0.02)
        assert router.profiles == start

        # What comes after: new runs, and grades for runs from before the checkpoint
        # (whose requests the follower never read: it reads them back, tenant and all).
        await record_runs(store, 2)
        newer = await record_tenant_runs(store, 2, "t2")
        await grade(store, run_ids[0], False)
        await grade(store, other[1], True, False)
        await grade(store, newer[0], True, True, True)
        # And corrections of grades from before the checkpoint: they replace those.
        await grade(store, run_ids[1], False)
        await grade(store, other[0], True)
        end = await caught_up(store, router)
    finally:
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower
    await projections.run_until_caught_up(pool)  # and the read models say the same
    async with pool.acquire() as conn:
        projected = await load_profiles(conn)
    assert set(router.profiles.tenants) == set(projected.tenants) == {DEFAULT_TENANT, "t2"}
    for tenant in (DEFAULT_TENANT, "t2"):
        rebuilt = await snapshot_at(store, end, tenant)  # folded from the log's start
        followed = router.snapshot(tenant)
        assert set(followed.cells) == set(rebuilt.cells)
        for key, cell in rebuilt.cells.items():  # sums in another order: floats to 1e-9
            if key[0] == marked and tenant == DEFAULT_TENANT:
                cell = dataclasses.replace(cell, calls=cell.calls + 1000)
            got = dataclasses.astuple(followed.cells[key])
            assert got == pytest.approx(dataclasses.astuple(cell))
        assert followed.pairs == rebuilt.pairs
        loaded = projected.of(tenant)
        assert loaded.pairs == rebuilt.pairs
        assert {k: (c.right, c.wrong) for k, c in loaded.cells.items()} == {
            k: (c.right, c.wrong) for k, c in rebuilt.cells.items()
        }
    # the late grades counted, each for its run's tenant; corrected grades taken back
    ours, theirs = [await snapshot_at(store, end, t) for t in (DEFAULT_TENANT, "t2")]
    assert sum(c.right for c in ours.cells.values()) == 0
    assert sum(c.wrong for c in ours.cells.values()) == 2
    assert sum(c.right for c in theirs.cells.values()) == 1 + 1 + 3
    assert sum(c.wrong for c in theirs.cells.values()) == 1
