"""Batch replays under strain: more batches than a small pool could hold at once, a
judge that wants track records the source run never recorded, and a judge that
raises for one run."""

from __future__ import annotations

import asyncio
import uuid

import msgspec
import structlog.testing

from service.config import UnknownModel
from service.domain.events import (
    Event,
    JudgeDecided,
    JudgeIdentity,
    JudgeSpec,
    Message,
    ReplayBatchRequested,
    ReplayFilter,
    RunFailed,
    RunRequested,
    SourceRun,
)
from service.domain.judging import Candidate, vote
from service.domain.profiles import CellStats, ProfileSnapshot, TenantProfiles
from service.orchestration.batch import BatchProgress, BatchReplayer
from service.orchestration.replay import Replayer, batch_replay_id
from service.orchestration.replay_sources import resolve_runs
from service.orchestration.router import Router
from service.providers.outcomes import CallSucceeded
from service.store import NO_STREAM, EventStore, NewEvent
from service.store.database import create_pool
from tests.conftest import TestDatabase
from tests.integration.replay_fixtures import (
    PANEL,
    ScriptedJudge,
    offline_config,
    record_runs,
    recorded_run,
)

SELECT = JudgeSpec(kind="select", model="sim/judge-strong")
CATEGORY = "multiple_choice"  # recorded_run's


async def record_batch(store: EventStore, spec: JudgeSpec, concurrency: int) -> uuid.UUID:
    """A batch over every run, recorded as a stopped process leaves it: not started."""
    runs = await resolve_runs(store, "default", ReplayFilter(), 1000)
    batch_id = uuid.uuid4()
    requested = ReplayBatchRequested(
        batch_id=str(batch_id),
        filter=ReplayFilter(),
        judge=spec,
        concurrency=concurrency,
        runs=[SourceRun(run_id=r.run_id, stream_version=r.stream_version) for r in runs],
    )
    meta = {"correlation_id": str(batch_id), "tenant": "default", "actor": "test"}
    await store.append_to_stream(f"batch-{batch_id}", [NewEvent(requested, meta)], NO_STREAM)
    return batch_id


class GatedJudge(ScriptedJudge):
    """Answers once the gate opens; says when the first call arrived."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()

    async def complete(
        self, model_id: str, messages: list[Message], *args: object, **kwargs: object
    ) -> CallSucceeded:
        self.entered.set()
        await self.gate.wait()
        return await super().complete(model_id, messages, *args, **kwargs)


class BrokenFor(ScriptedJudge):
    """Raises ``error`` when asked about the victim run, answers the others."""

    def __init__(self, victim: str, error: Exception) -> None:
        super().__init__()
        self.victim, self.error = victim, error

    async def complete(
        self, model_id: str, messages: list[Message], *args: object, **kwargs: object
    ) -> CallSucceeded:
        if self.victim in messages[-1].content:
            raise self.error
        return await super().complete(model_id, messages, *args, **kwargs)


async def replay_events(store: EventStore, batch_id: uuid.UUID, run_id: str) -> list[Event]:
    records = await store.read_stream(f"replay-{batch_replay_id(batch_id, run_id)}")
    return [r.decode() for r in records]


async def test_more_batches_than_a_small_pool_holds_complete_and_the_pool_keeps_answering(
    database: TestDatabase,
) -> None:
    small = await create_pool(database.url, min_size=1, max_size=4)
    store = EventStore(small)
    judge = GatedJudge()
    batches = BatchReplayer(store, Replayer(store, judge, offline_config()))
    # Held throughout, as the projection worker's and the router's connections are.
    listeners = [await small.acquire() for _ in range(2)]
    try:
        await record_runs(store, 6)
        batch_ids = [await record_batch(store, SELECT, concurrency=8) for _ in range(4)]
        assert await batches.resume_unfinished() == 4
        # Judging means a batch holds its lock and read its runs: the pool served it.
        await asyncio.wait_for(judge.entered.wait(), 20)
        assert await asyncio.wait_for(small.fetchval("SELECT 1"), 20) == 1
        judge.gate.set()
        for batch_id in batch_ids:
            await asyncio.wait_for(batches.wait(batch_id), 60)
            progress = await batches.progress(batch_id, "default", report=False)
            assert progress.completed is not None
            assert progress.completed.finalized == 6
        assert judge.calls == 4 * 6
    finally:
        await batches.close()
        for conn in listeners:
            await small.release(conn)
        await small.close()


def track_records() -> TenantProfiles:
    """model-e is known to be right in the category; model-b and model-c, wrong (for
    the tenant "default")."""
    right, wrong = CellStats(right=200), CellStats(wrong=200)
    cells = {(PANEL[0], CATEGORY): wrong, (PANEL[1], CATEGORY): wrong, (PANEL[2], CATEGORY): right}
    return TenantProfiles(tenants={"default": ProfileSnapshot(cells=cells)})


async def record_run(store: EventStore, events: list[Event], run_id: uuid.UUID) -> None:
    meta = {"correlation_id": str(run_id), "tenant": "default", "actor": "test"}
    await store.append_to_stream(f"run-{run_id}", [NewEvent(e, meta) for e in events], NO_STREAM)


async def test_weighted_and_informed_replays_of_a_plain_vote_use_the_track_records(
    store: EventStore,
) -> None:
    run_id, answers = uuid.uuid4(), ("B", "B", "A")
    await record_run(store, recorded_run(run_id, answers), run_id)  # the plain vote chose B
    router = Router(offline_config(), profiles=track_records())
    replayer = Replayer(store, ScriptedJudge(), offline_config(), router=router)
    batches = BatchReplayer(store, replayer)
    members = [(f"m{i + 1}", model) for i, model in enumerate(PANEL)]
    expected = router.member_weights(CATEGORY, members, tenant="default")
    assert expected["m3"] > expected["m1"] + expected["m2"]
    # What a live weighted vote decides with these weights:
    candidates = [Candidate(m, f"Answer: {a}") for (m, _), a in zip(members, answers, strict=True)]
    assert vote(candidates, expected).final_answer == "A"

    weighted = JudgeSpec(kind="vote", weighted=True)
    informed = msgspec.structs.replace(SELECT, informed=True)
    for spec in (weighted, informed):
        accepted = await batches.submit(
            ReplayFilter(), spec, concurrency=1, tenant="default", actor="test"
        )
        await batches.wait(accepted.batch_id)
        decided = (await replay_events(store, accepted.batch_id, str(run_id)))[1]
        assert isinstance(decided, JudgeDecided)
        assert decided.member_weights == expected
        if spec is weighted:
            assert decided.final_answer == "A"


async def test_weights_the_original_judge_recorded_are_replayed_as_they_were(
    store: EventStore,
) -> None:
    run_id = uuid.uuid4()
    recorded = {"m1": 0.9, "m2": 0.9, "m3": 0.1}  # the router now says the opposite
    source = recorded_run(run_id, ("B", "B", "A"))
    original = source[-2]
    assert isinstance(original, JudgeDecided)
    source[-2] = msgspec.structs.replace(
        original,
        judge=JudgeIdentity(kind="vote", model=None, prompt_version="vote-v1", weighted=True),
        member_weights=recorded,
    )
    await record_run(store, source, run_id)
    router = Router(offline_config(), profiles=track_records())
    replayer = Replayer(store, ScriptedJudge(), offline_config(), router=router)
    outcome = await replayer.replay(
        run_id, JudgeSpec(kind="vote", weighted=True), tenant="default", actor="test"
    )
    assert outcome.state.judge is not None
    assert outcome.state.judge.member_weights == recorded  # not the router's
    assert outcome.state.finalized is not None and outcome.state.finalized.answer == "B"


async def batch_with_a_broken_judge(
    store: EventStore, runs: int, victim: int, error: Exception, concurrency: int
) -> tuple[list[str], uuid.UUID, BatchProgress]:
    """A select-judge batch over ``runs`` new runs whose judge raises ``error`` for the
    one at index ``victim``: the run ids, the batch id and its progress once it stops."""
    run_ids = await record_runs(store, runs)
    judge = BrokenFor(run_ids[victim], error)
    batches = BatchReplayer(store, Replayer(store, judge, offline_config()))
    accepted = await batches.submit(
        ReplayFilter(), SELECT, concurrency=concurrency, tenant="default", actor="test"
    )
    await asyncio.wait_for(batches.wait(accepted.batch_id), 60)
    return run_ids, accepted.batch_id, await batches.progress(accepted.batch_id, "default")


async def test_a_judge_that_raises_for_one_run_fails_that_replay_and_the_batch_completes(
    store: EventStore,
) -> None:
    error = UnknownModel("sim/judge-strong")
    run_ids, batch_id, progress = await batch_with_a_broken_judge(store, 4, 1, error, 2)
    assert progress.completed is not None
    assert (progress.completed.finalized, progress.completed.failed) == (3, 1)
    assert progress.comparison is not None and progress.comparison.replayed == 4
    events = await replay_events(store, batch_id, run_ids[1])
    assert [e.type for e in events] == ["replay.requested", "run.failed"]
    failed = events[1]
    assert isinstance(failed, RunFailed) and failed.reason == "internal_error"
    assert "unknown model 'sim/judge-strong'" in failed.message


async def test_a_judge_that_times_out_past_its_own_deadline_fails_that_replay_only(
    store: EventStore,
) -> None:
    # TimeoutError is an OSError, as a lost connection's errors are; it is not one.
    run_ids, batch_id, progress = await batch_with_a_broken_judge(store, 3, 2, TimeoutError(), 1)
    assert progress.completed is not None
    assert (progress.completed.finalized, progress.completed.failed) == (2, 1)
    failed = (await replay_events(store, batch_id, run_ids[2]))[-1]
    assert isinstance(failed, RunFailed) and failed.message.startswith("TimeoutError")


async def test_a_database_error_while_judging_leaves_the_run_for_the_next_resume(
    store: EventStore,
) -> None:
    run_ids = await record_runs(store, 3)
    broken = BrokenFor(run_ids[0], ConnectionResetError("the database went away"))
    first = BatchReplayer(store, Replayer(store, broken, offline_config()))
    accepted = await first.submit(
        ReplayFilter(), SELECT, concurrency=1, tenant="default", actor="test"
    )
    await asyncio.wait_for(first.wait(accepted.batch_id), 60)
    assert (await first.progress(accepted.batch_id, "default")).completed is None
    assert await replay_events(store, accepted.batch_id, run_ids[0]) == []

    second = BatchReplayer(store, Replayer(store, ScriptedJudge(), offline_config()))
    assert await second.resume_unfinished() == 1
    await asyncio.wait_for(second.wait(accepted.batch_id), 60)
    progress = await second.progress(accepted.batch_id, "default")
    assert progress.completed is not None
    assert (progress.completed.finalized, progress.completed.failed) == (3, 0)


async def test_a_run_of_a_newer_normaliser_leaves_the_batch_to_an_upgraded_replica(
    store: EventStore,
) -> None:
    before = await record_runs(store, 2)
    newer_id = uuid.uuid4()
    newer = recorded_run(newer_id, ("A", "A", "B"))
    assert isinstance(newer[0], RunRequested)
    newer[0] = msgspec.structs.replace(newer[0], normalizer=99)  # a later release's rule
    await record_run(store, newer, newer_id)
    after = await record_runs(store, 2)
    batches = BatchReplayer(store, Replayer(store, ScriptedJudge(), offline_config()))
    vote = JudgeSpec(kind="vote")
    with structlog.testing.capture_logs() as logs:
        accepted = await batches.submit(
            ReplayFilter(), vote, concurrency=1, tenant="default", actor="test"
        )
        await asyncio.wait_for(batches.wait(accepted.batch_id), 60)

    # The run this replica cannot read is left out; its chunk-mates are replayed.
    assert await replay_events(store, accepted.batch_id, str(newer_id)) == []
    lengths = [len(await replay_events(store, accepted.batch_id, r)) for r in before + after]
    assert lengths == [3, 3, 3, 3]
    progress = await batches.progress(accepted.batch_id, "default")
    assert progress.completed is None
    # Progress says why the batch stays open: one run waits for an upgraded replica.
    assert (progress.done, progress.waiting_for_upgrade) == (4, 1)
    events = [entry["event"] for entry in logs]
    assert "batch.waiting_for_upgrade" in events and "batch.failed" not in events
